"""pimoe.quant: block formats against gguf.quants, activation quantizers against ggml's definitions,
the QTensor contract, and the reference matmul."""

import numpy as np
import pytest
import gguf.quants as gq
from gguf import GGMLQuantizationType as QT

from pimoe import quant
from pimoe.errors import PimoeError
from pimoe.kernels import actquant

ALL_TYPES = sorted(quant.SUPPORTED, key=int)
TYPE_IDS = [t.name for t in ALL_TYPES]


def test_supported_is_the_13_types():
    names = {t.name for t in quant.SUPPORTED}
    assert names == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                     "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


@pytest.mark.parametrize("qtype", [QT.IQ2_XS, QT.Q8_1, QT.TQ1_0, 999])
def test_check_supported_names_tensor_and_type(qtype):
    with pytest.raises(PimoeError) as exc:
        quant.check_supported(qtype, "tensor 'blk.0.ffn_up_exps'")
    msg = str(exc.value)
    assert "blk.0.ffn_up_exps" in msg and "not support" in msg and "Q4_K" in msg
    if qtype != 999:
        assert QT(qtype).name in msg


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=TYPE_IDS)
def test_dequantize_equals_gguf_bit_exact(qtype):
    rng = np.random.default_rng(int(qtype))
    w = quant.random_qtensor("w", qtype, (3, 5, 512), rng, std=0.05)
    mine = w.dequantize()
    ref = gq.dequantize(w.data, qtype).astype(np.float32)
    assert mine.shape == (3, 5, 512) and mine.dtype == np.float32
    np.testing.assert_array_equal(mine, ref)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=TYPE_IDS)
def test_dequantize_arbitrary_bytes_bit_exact(qtype):
    # any byte pattern with finite f16 scales is a valid block: random bytes test every code path
    rng = np.random.default_rng(100 + int(qtype))
    w = quant.random_qtensor("w", qtype, (4, 256), rng)
    data = rng.integers(0, 256, size=w.data.shape, dtype=np.uint8)
    if qtype not in (QT.F32, QT.F16, QT.BF16):
        # keep the f16 fields from the valid tensor so no NaN/inf scale is produced
        raw = rng.integers(0, 256, size=w.data.shape, dtype=np.uint8)
        mask = np.zeros(w.data.shape, bool)
        ts = quant.formats.BLOCK_SIZES[qtype][1]
        f16_offsets = {QT.Q8_0: [0], QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2],
                       QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}[qtype]
        for off in f16_offsets:
            for k in (off, off + 1):
                mask.reshape(-1, ts)[:, k] = True
        data = np.where(mask, w.data, raw)
    else:
        data = w.data  # random float bit patterns would include NaNs
    t = quant.QTensor("w", qtype, w.shape, data)
    np.testing.assert_array_equal(t.dequantize(), gq.dequantize(data, qtype).astype(np.float32))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=TYPE_IDS)
def test_random_qtensor_std_and_validity(qtype):
    rng = np.random.default_rng(7)
    w = quant.random_qtensor("blk.0.ffn_down_exps", qtype, (4, 64, 512), rng, std=0.02)
    assert w.data.dtype == np.uint8 and w.data.shape == (4, 64, w.row_bytes)
    v = w.dequantize()
    assert np.isfinite(v).all()
    assert 0.013 < v.std() < 0.03, v.std()
    assert abs(v.mean()) < 0.005
    # different rows and blocks really differ
    assert not np.array_equal(v[0, 0], v[0, 1])


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=TYPE_IDS)
def test_from_float_round_trip_error(qtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    w = quant.from_float("w", x, qtype)
    err = np.abs(w.dequantize() - x).std() / x.std()
    # rough per-type bounds for Gaussian data (bits per weight decide them)
    bound = {QT.F32: 0, QT.F16: 1e-3, QT.BF16: 5e-3, QT.Q8_0: 0.01, QT.Q6_K: 0.03, QT.Q5_0: 0.05,
             QT.Q5_1: 0.05, QT.Q5_K: 0.05, QT.Q4_0: 0.1, QT.Q4_1: 0.1, QT.Q4_K: 0.1, QT.Q3_K: 0.2,
             QT.Q2_K: 0.3}[qtype]
    assert err <= bound
    if qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.BF16):
        np.testing.assert_array_equal(w.data, np.asarray(gq.quantize(x, qtype)).view(np.uint8))


def test_qtensor_contract_and_indexing():
    rng = np.random.default_rng(0)
    w = quant.random_qtensor("blk.1.ffn_up_exps", QT.Q4_K, (8, 16, 512), rng)
    assert w.row_bytes == 2 * 144 and w.nbytes == 8 * 16 * 288
    e3 = w[3]
    assert e3.shape == (16, 512) and e3.qtype == QT.Q4_K
    assert np.shares_memory(e3.data, w.data)
    np.testing.assert_array_equal(e3.dequantize(), w.dequantize()[3])
    np.testing.assert_array_equal(w[2, 5:9].dequantize(), w.dequantize()[2, 5:9])
    with pytest.raises(PimoeError, match="leading axes"):
        w[0, 0, 0]
    with pytest.raises(PimoeError, match="out of range"):
        w[8]
    with pytest.raises(PimoeError, match="block size"):
        quant.QTensor("bad", QT.Q4_K, (4, 100), np.zeros((4, 56), np.uint8))
    with pytest.raises(PimoeError, match="does not match"):
        quant.QTensor("bad", QT.Q8_0, (4, 64), np.zeros((4, 64), np.uint8))
    with pytest.raises(PimoeError, match="IQ2_XS"):
        quant.random_qtensor("x", QT.IQ2_XS, (4, 256), rng)


# --- activation quantizers against ggml's definitions -------------------------------------------

def test_q8_0_activation_matches_reference_quantizer():
    # ggml's x86 quantize_row_q8_0 and the reference (gguf.quants) differ only on exact rounding ties
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 1024)).astype(np.float32)
    d, qs = actquant.quantize_q8_0(x)
    ref = np.asarray(gq.quantize(x, QT.Q8_0)).view(np.uint8).reshape(5, 32, 34)
    np.testing.assert_array_equal(d.view(np.uint8).reshape(5, 32, 2), ref[:, :, 0:2])
    np.testing.assert_array_equal(qs.view(np.uint8), ref[:, :, 2:])
    # ties: ggml's AVX path rounds half to even (gguf's reference rounds away from zero)
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [127.0, 0.5, 1.5, -2.5]
    _, qs = actquant.quantize_q8_0(x)
    assert qs[0, 0, :4].tolist() == [127, 0, 2, -2]


def test_q8_k_activation_definition():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 768)).astype(np.float32)
    x[1, 300] = -9.0  # a negative maximum: still code -127 (iscale = -127/max), d = 9/127 > 0
    d, q, bsums = actquant.quantize_q8_k(x)
    assert d.dtype == np.float32 and q.dtype == np.int8 and bsums.shape == (3, 3, 16)
    assert q.max() <= 127 and q.min() >= -128
    assert q[1, 1, 300 - 256] == -127 and d[1, 1] > 0
    xb = x.reshape(3, 3, 256)
    for t in range(3):
        for b in range(3):
            k = np.abs(xb[t, b]).argmax()
            assert q[t, b, k] == -127  # the signed maximum always maps to -127
            assert -d[t, b] * 127 == pytest.approx(xb[t, b, k], rel=1e-6)
            assert abs(d[t, b]) == pytest.approx(np.abs(xb[t, b]).max() / 127, rel=1e-6)
    err = np.abs(d[:, :, None] * q - xb)
    assert (err <= np.abs(d)[:, :, None] * 0.5 * (1 + 1e-5)).all()
    np.testing.assert_array_equal(bsums, q.reshape(3, 3, 16, 16).sum(axis=3))
    zero_d, zero_q, _ = actquant.quantize_q8_k(np.zeros((1, 256), np.float32))
    assert zero_d[0, 0] == 0 and not zero_q.any()


def test_q8_1_sum_field():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    d, s, qs = actquant.quantize_q8_1(x)
    d0, qs0 = actquant.quantize_q8_0(x)
    np.testing.assert_array_equal(d, d0)
    np.testing.assert_array_equal(qs, qs0)
    expect = (np.abs(x.reshape(2, 2, 32)).max(axis=2) / np.float32(127) * qs.sum(axis=2)).astype(np.float16)
    np.testing.assert_array_equal(s, expect)


def test_bf16_rounding_matches_gguf():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(4096) * 10).astype(np.float32)
    bits = actquant.to_bf16_bits(x)
    np.testing.assert_array_equal(bits.view(np.uint8), np.asarray(gq.quantize(x, QT.BF16)).view(np.uint8))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=TYPE_IDS)
def test_matmul_reference_close_to_float_product(qtype):
    # activation rounding moves results by well under 1 %; the exact match with llama.cpp is
    # checked by the model's logit tests
    rng = np.random.default_rng(11)
    w = quant.random_qtensor("w", qtype, (37, 768), rng)
    x = rng.standard_normal((3, 768)).astype(np.float32)
    y = quant.matmul(w, x)
    ref = x @ gq.dequantize(w.data, qtype).astype(np.float32).T
    assert y.shape == (3, 37) and y.dtype == np.float32
    tol = {QT.F32: 1e-6, QT.F16: 2e-3, QT.BF16: 1e-2}.get(qtype, 2e-2)
    assert np.abs(y - ref).max() <= tol * np.abs(ref).max()
    if qtype != QT.F32:
        # and the activations really were rounded: the result is not the plain float product
        assert not np.allclose(y, ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_matmul_shape_errors():
    rng = np.random.default_rng(0)
    w = quant.random_qtensor("blk.0.attn_q", QT.Q8_0, (4, 64), rng)
    with pytest.raises(PimoeError, match="blk.0.attn_q"):
        quant.matmul(w, np.zeros((2, 32), np.float32))
    w3 = quant.random_qtensor("exps", QT.Q8_0, (2, 4, 64), rng)
    with pytest.raises(PimoeError, match="2-D"):
        quant.matmul(w3, np.zeros((2, 64), np.float32))
