"""Fused numba kernels against the pure-numpy dequantize-then-matmul reference, every type, odd shapes."""

import numpy as np
import pytest
import gguf.quants as gq
from gguf import GGMLQuantizationType as QT

from pimoe import quant
from pimoe.errors import PimoeError
from pimoe.kernels import actquant, dispatch, fused

ALL_TYPES = sorted(quant.SUPPORTED, key=int)
TYPE_IDS = [t.name for t in ALL_TYPES]


def _rel_err(y, ref):
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("out_rows,in_blocks,T", [(37, 3, 1), (1, 1, 5), (129, 2, 17)])
def test_kernel_equals_reference(qtype, out_rows, in_blocks, T):
    block = quant.formats.BLOCK_SIZES[qtype][0]
    n = in_blocks * block if block > 1 else 96 * in_blocks + 3  # float types: any row length
    rng = np.random.default_rng(int(qtype) * 1000 + out_rows)
    w = quant.random_qtensor("w", qtype, (out_rows, n), rng, std=0.05)
    x = (rng.standard_normal((T, n)) * 2).astype(np.float32)
    ref = quant.matmul_reference(w, x)
    y = dispatch.matmul(qtype, w.data, x)
    assert y.shape == (T, out_rows) and y.dtype == np.float32
    # same integer products and the same activation rounding: only f32 summation order differs
    assert _rel_err(y, ref) < 2e-5
    # and both sit close to gguf's own dequantization times the rounded activations
    xr = actquant.roundtrip(x, qtype)
    ref2 = xr @ gq.dequantize(w.data, qtype).astype(np.float32).T
    assert _rel_err(y, ref2) < 2e-3


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q8_0, QT.Q6_K, QT.F16, QT.Q5_1], ids=lambda t: t.name)
def test_matmul_experts_groups_rows_by_expert(qtype):
    rng = np.random.default_rng(5)
    n = 512
    w = quant.random_qtensor("blk.0.ffn_gate_exps", qtype, (6, 40, n), rng)
    x = rng.standard_normal((11, n)).astype(np.float32)
    ids = np.array([3, 0, 3, 5, 5, 5, 1, 3, 0, 2, 5])
    y = quant.matmul_experts(w, x, ids)
    for i, e in enumerate(ids):
        ref = quant.matmul_reference(w[int(e)], x[i:i + 1])[0]
        assert _rel_err(y[i], ref) < 2e-5
    with pytest.raises(PimoeError, match="out of range"):
        quant.matmul_experts(w, x, np.full(11, 6))
    with pytest.raises(PimoeError, match="expert_ids"):
        quant.matmul_experts(w, x, ids[:5])


def test_matmul_uses_the_fast_path_and_reads_readonly_memmaps(tmp_path):
    rng = np.random.default_rng(9)
    w = quant.random_qtensor("w", QT.Q4_K, (33, 512), rng)
    path = tmp_path / "w.bin"
    w.data.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=w.data.shape)
    wm = quant.QTensor("w", QT.Q4_K, w.shape, mm)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    assert quant.KERNELS == "numba"
    y = quant.matmul(wm, x)
    assert _rel_err(y, quant.matmul_reference(w, x)) < 2e-5


def test_activation_quantizers_numba_equal_numpy():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 1024)) * 3).astype(np.float32)
    x[1, :256] = 0.0  # an all-zero Q8_K block and all-zero Q8_0 blocks
    x[2, 5] = 1e4
    x[3, 40] = -7.0
    d0, qs0 = actquant.quantize_q8_0(x)
    a = dispatch.PreparedActivations(x, QT.Q8_0)
    np.testing.assert_array_equal(a.xq.reshape(qs0.shape), qs0)
    np.testing.assert_array_equal(a.xd, d0.astype(np.float32))
    d1, s1, _ = actquant.quantize_q8_1(x)
    a1 = dispatch.PreparedActivations(x, QT.Q4_1)
    np.testing.assert_array_equal(a1.xs, s1.astype(np.float32))
    dk, qk, bk = actquant.quantize_q8_k(x)
    ak = dispatch.PreparedActivations(x, QT.Q6_K)
    np.testing.assert_array_equal(ak.xq.reshape(qk.shape), qk)
    np.testing.assert_array_equal(ak.xd, dk)
    np.testing.assert_array_equal(ak.xbs.reshape(bk.shape), bk)


def test_f16_weights_special_values():
    # the kernel's f16 decoding (bit moves and a 2^112 rescale) must handle subnormals, zeros, inf
    vals = np.array([0.0, -0.0, 6e-8, -3e-5, 1.0, -2.5, 65504.0, 1e-7, np.inf, 0.33, 6.1e-5], np.float16)
    n = 32
    x = np.ones((1, n), np.float32)
    for i, v in enumerate(vals):
        row = np.zeros(n, np.float16)
        row[(7 * i) % n] = v
        w = quant.QTensor("w", QT.F16, (2, n), np.stack([row, -row]).astype("<f2").view(np.uint8))
        y = dispatch.matmul(QT.F16, w.data, x)[0]
        assert y[0] == np.float32(v) and y[1] == -np.float32(v), (v, y)
    row = np.zeros(n, np.float16)
    row[3] = np.nan
    w = quant.QTensor("w", QT.F16, (1, n), row.astype("<f2").view(np.uint8).reshape(1, -1))
    assert np.isnan(dispatch.matmul(QT.F16, w.data, x)[0, 0])


def test_kernel_rejects_nothing_silently_on_bad_shapes():
    w = quant.random_qtensor("blk.3.attn_output", QT.Q8_0, (8, 64), np.random.default_rng(0))
    with pytest.raises(PimoeError, match="blk.3.attn_output"):
        quant.matmul(w, np.zeros((1, 63), np.float32))


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q8_0], ids=lambda t: t.name)
def test_moe_swiglu_equals_per_expert_reference(qtype, kernels, monkeypatch):
    monkeypatch.setattr(quant, "KERNELS", kernels)
    rng = np.random.default_rng(21)
    E, ff, hidden, T, k = 6, 256, 512, 3, 4
    gate = quant.random_qtensor("g", qtype, (E, ff, hidden), rng, std=0.05)
    up = quant.random_qtensor("u", qtype, (E, ff, hidden), rng, std=0.05)
    down = quant.random_qtensor("d", QT.Q6_K, (E, hidden, ff), rng, std=0.05)
    x = rng.standard_normal((T, hidden)).astype(np.float32)
    ids = np.array([[0, 3, 5, 1], [3, 2, 0, 4], [5, 5 - 1, 1, 0]])
    wts = rng.random((T, k)).astype(np.float32)
    y = quant.moe_swiglu(gate, up, down, x, ids, wts)
    ref = np.zeros((T, hidden), np.float32)
    for t in range(T):
        for j in range(k):
            e = int(ids[t, j])
            g = quant.matmul_reference(gate[e], x[t:t + 1])
            u = quant.matmul_reference(up[e], x[t:t + 1])
            h = g / (1 + np.exp(-g)) * u
            ref[t] += wts[t, j] * quant.matmul_reference(down[e], h)[0]
    assert _rel_err(y, ref) < 1e-4


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q6_K, QT.Q8_0, QT.Q4_1], ids=lambda t: t.name)
def test_non_finite_activations_give_non_finite_outputs_not_errors(qtype):
    # an inf in x makes Q8_K's iscale -0 and d = 1/iscale = -inf (ggml: no trap, NaN/inf logits);
    # numba's Python error model used to raise ZeroDivisionError there
    rng = np.random.default_rng(4)
    w = quant.random_qtensor("w", qtype, (8, 512), rng)
    for bad in (np.inf, -np.inf, np.nan):
        x = rng.standard_normal((2, 512)).astype(np.float32)
        x[0, 300] = bad
        y = quant.matmul(w, x)
        if np.isinf(bad):
            assert not np.isfinite(y[0]).any(), bad
        # (a NaN is skipped by the block maximum and quantized to code 0, as ggml's scalar quantizers do)
        np.testing.assert_allclose(y[1], quant.matmul_reference(w, x[1:2])[0], rtol=2e-5, atol=1e-6)


def test_kernels_release_the_gil():
    # the hybrid backend runs CPU experts in a Python thread while the QPU (emulator) works:
    # every numba kernel is compiled nogil=True
    import numba.core.registry as reg

    from pimoe.kernels import vecops

    kernels = [v for m in (fused, vecops) for v in vars(m).values() if isinstance(v, reg.CPUDispatcher)]
    assert len(kernels) >= 10
    for k in kernels:
        assert k.targetoptions.get("nogil") is True, k.py_func.__name__


@pytest.mark.parametrize("qtype,down_type", [(QT.Q8_0, QT.Q8_0), (QT.Q4_K, QT.Q6_K), (QT.Q6_K, QT.Q4_K),
                                             (QT.Q5_K, QT.Q5_K)], ids=lambda t: t.name)
def test_decode_moe_fused_gate_up_equals_reference(qtype, down_type):
    # one token: every expert serves one pair, so gate, up and silu run in one call (fused.gate_up_silu)
    # for the row-dot types, the unfused calls otherwise; both against the per-expert numpy reference
    rng = np.random.default_rng(8)
    E, ff, hidden, k = 7, 256, 512, 4
    gate = quant.random_qtensor("g", qtype, (E, ff, hidden), rng, std=0.05)
    up = quant.random_qtensor("u", qtype, (E, ff, hidden), rng, std=0.05)
    down = quant.random_qtensor("d", down_type, (E, hidden, ff), rng, std=0.05)
    x = (rng.standard_normal((1, hidden)) * 3).astype(np.float32)
    ids = np.array([[6, 2, 0, 3]])
    wts = rng.random((1, k)).astype(np.float32)
    y = quant.moe_swiglu(gate, up, down, x, ids, wts)
    ref = np.zeros((1, hidden), np.float32)
    for j in range(k):
        e = int(ids[0, j])
        g = quant.matmul_reference(gate[e], x)
        u = quant.matmul_reference(up[e], x)
        ref += wts[0, j] * quant.matmul_reference(down[e], g / (1 + np.exp(-g)) * u)
    assert _rel_err(y, ref) < 1e-4
    pairs = dispatch.moe_pairs(qtype, gate.data, qtype, up.data, down_type, down.data, x, ids)
    for j in range(k):
        e = int(ids[0, j])
        g = dispatch.matmul(qtype, gate.data[e], x)
        u = dispatch.matmul(qtype, up.data[e], x)
        yj = dispatch.matmul(down_type, down.data[e], g / (1 + np.exp(-g)) * u)
        assert _rel_err(pairs[j], yj[0]) < 1e-5


def test_work_queue_kernels_give_the_same_result_at_any_thread_count():
    import numba

    rng = np.random.default_rng(12)
    w = quant.random_qtensor("w", QT.Q4_K, (3, 100, 512), rng)
    x = rng.standard_normal((5, 512)).astype(np.float32)
    ids = np.array([2, 0, 2, 1, 2])
    old = numba.get_num_threads()
    try:
        outs = []
        for nt in sorted({1, old}):
            numba.set_num_threads(nt)
            outs.append(quant.matmul_experts(w, x, ids))
    finally:
        numba.set_num_threads(old)
    for y in outs:   # every item computed by whichever thread took it, the same arithmetic
        np.testing.assert_array_equal(y, outs[0])
    for i, e in enumerate(ids):
        assert _rel_err(y[i], quant.matmul_reference(w[int(e)], x[i:i + 1])[0]) < 2e-5
