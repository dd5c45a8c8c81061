"""The pairwise multiply-add super-block dots (x86 pmaddubsw/pmaddwd form and the generic-IR form the
Pi's aarch64 uses) against integer sums built from gguf.quants' dequantization."""

import numpy as np
import pytest
import gguf.quants as gq
from gguf import GGMLQuantizationType as QT
from numba import njit

from pimoe import quant
from pimoe.kernels import fused

F16_ONE = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
F16_ZERO = np.zeros(2, np.uint8)


def _spellings(make):
    """make(x86) built both ways: the generic IR (what aarch64 runs) and, on an AVX2 host, the x86 one."""
    out = [("generic", make(False))]
    if fused.USE_X86_MADD:
        out.append(("x86", make(True)))
    return out


VARIANTS = _spellings(fused._make_madd_block_dots)


def _wrappers(dots):
    s8, q4k, q6k, mins = dots

    @njit
    def run_s8(w, x):
        return s8(w, 0, x, 0)

    @njit
    def run_q4k(b, x):
        sc, mn = fused.kquant_scales_mins(b, 0)
        return q4k(b, 16, x, 0, sc)

    @njit
    def run_mins(b, bs):
        sc, mn = fused.kquant_scales_mins(b, 0)
        return mins(mn, bs, 0)

    @njit
    def run_q6k(b, x, bs):
        return q6k(b, 0, x, 0, bs, 0)

    return run_s8, run_q4k, run_mins, run_q6k


def _codes(rng, n, extreme):
    if extreme:  # the largest magnitudes Q8_0/Q8_K activation codes take
        return rng.choice(np.array([-127, 127], np.int8), n)
    return rng.integers(-127, 128, n).astype(np.int8)


def _block(qtype, rng):
    return quant.random_qtensor("w", qtype, (1, quant.formats.BLOCK_SIZES[qtype][0]), rng).data[0].copy()


@pytest.mark.parametrize("name,dots", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("extreme", [False, True])
def test_madd_dots_equal_integer_reference(name, dots, extreme):
    run_s8, run_q4k, run_mins, run_q6k = _wrappers(dots)
    rng = np.random.default_rng(11 + extreme)
    for trial in range(20):
        # Q8_0: plain int8 x int8
        w8 = rng.integers(-128, 128, 32).astype(np.int8)
        x32 = _codes(rng, 32, extreme)
        assert run_s8(w8.view(np.uint8), x32) == int(w8.astype(np.int64) @ x32.astype(np.int64))

        x = _codes(rng, 256, extreme)
        bs = x.astype(np.int64).reshape(16, 16).sum(axis=1).astype(np.int16)
        # Q4_K with d = 1, dmin = 0: gguf's dequantized values are exactly sc_j * q
        b = _block(QT.Q4_K, rng)
        if extreme:
            b[4:16] = 0xFF   # every scale and min 63
            b[16:] = 0xFF    # every code 15
        b[0:2], b[2:4] = F16_ONE, F16_ZERO
        deq = np.rint(gq.dequantize(b[None], QT.Q4_K)[0]).astype(np.int64)
        assert run_q4k(b, x) == int(deq @ x.astype(np.int64))
        # mins: d = 0, dmin = 1 gives -m_j on every weight of sub-block j
        b[0:2], b[2:4] = F16_ZERO, F16_ONE
        deq = np.rint(gq.dequantize(b[None], QT.Q4_K)[0]).astype(np.int64)
        assert run_mins(b, bs) == -int(deq @ x.astype(np.int64))
        # Q6_K with d = 1: sc_g * (q - 32)
        b6 = _block(QT.Q6_K, rng)
        if extreme:
            b6[:192] = 0xFF                              # every code 63
            b6[192:208] = np.uint8(128)                  # every scale -128
        b6[208:210] = F16_ONE
        deq = np.rint(gq.dequantize(b6[None], QT.Q6_K)[0]).astype(np.int64)
        assert run_q6k(b6, x, bs) == int(deq @ x.astype(np.int64))


ROW_VARIANTS = _spellings(fused._make_row_dots)
if fused.USE_X86_VNNI:
    ROW_VARIANTS.append(("x86-vnni", fused._make_row_dots(True, True)))


@pytest.mark.parametrize("name,dots", ROW_VARIANTS, ids=[v[0] for v in ROW_VARIANTS])
@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda t: t.name)
def test_row_dots_equal_reference(name, dots, qtype):
    """Whole-row dots (both spellings) at offsets into [rows, bytes] / [tokens, n] arrays, against the
    numpy dequantize-then-matmul reference with llama.cpp's activation rounding."""
    from pimoe.kernels import dispatch

    row_dot = dots[{QT.Q8_0: 0, QT.Q4_K: 1, QT.Q6_K: 2}[qtype]]

    @njit
    def run(w, xq, xd, xbs, lut, out):
        rb = w.shape[1]
        for t in range(xq.shape[0]):
            for o in range(w.shape[0]):
                out[t, o] = row_dot(w, o * rb, xq, t * xq.shape[1], xd, t * xd.shape[1], xbs, t * xbs.shape[1],
                                    xd.shape[1], lut)

    rng = np.random.default_rng(int(qtype))
    n = 3 * 256
    w = quant.random_qtensor("w", qtype, (7, n), rng, std=0.05)
    x = (rng.standard_normal((3, n)) * 2).astype(np.float32)
    acts = dispatch.PreparedActivations(x, qtype)
    out = np.zeros((3, 7), np.float32)
    run(w.data, acts.xq, acts.xd, acts.xbs, fused.F16_TABLE, out)
    ref = quant.matmul_reference(w, x)
    assert np.abs(out - ref).max() <= 2e-5 * np.abs(ref).max()


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda t: t.name)
def test_token_tiles_equal_reference_and_single_tokens(qtype):
    """Prompts: tiles of 4 and 2 tokens plus single ones (T = 2, 3, 6, 7, 12) give the reference result
    and bit-for-bit the one-token (decode) result for every token."""
    rng = np.random.default_rng(40 + int(qtype))
    n = 512
    w = quant.random_qtensor("w", qtype, (19, n), rng, std=0.05)
    for T in (2, 3, 6, 7, 12):
        x = (rng.standard_normal((T, n)) * 2).astype(np.float32)
        y = quant.matmul(w, x)
        ref = quant.matmul_reference(w, x)
        assert np.abs(y - ref).max() <= 2e-5 * np.abs(ref).max()
        singles = np.concatenate([quant.matmul(w, x[t:t + 1]) for t in range(T)])
        np.testing.assert_array_equal(y, singles)


@pytest.mark.parametrize("name,dots", ROW_VARIANTS, ids=[v[0] for v in ROW_VARIANTS])
def test_q8_0_row_dot_exact_at_the_code_extremes(name, dots):
    """Q8_0 rows of codes -128..127 (d = 1) against activation codes -127..127 (d = 1): every spelling,
    the VNNI one included (it moves the weight's sign onto the activation), gives the exact integer dot."""
    row_dot = dots[0]

    @njit
    def run(w, xq, xd, xbs, lut, out):
        for o in range(w.shape[0]):
            out[o] = row_dot(w, o * w.shape[1], xq, 0, xd, 0, xbs, 0, xd.shape[1], lut)

    rng = np.random.default_rng(7)
    nb = 16
    codes = rng.integers(-128, 128, size=(5, nb, 32)).astype(np.int8)
    codes[0] = -128                                   # the code whose magnitude only fits as unsigned
    blocks = np.empty((5, nb, 34), np.uint8)
    blocks[:, :, 0:2] = F16_ONE
    blocks[:, :, 2:] = codes.view(np.uint8)
    xq = rng.integers(-127, 128, size=(1, nb * 32)).astype(np.int8)
    xq[0, :32] = -127
    xq[0, 32:64] = 127
    out = np.zeros(5, np.float32)
    run(blocks.reshape(5, -1), xq, np.ones((1, nb), np.float32), np.zeros((1, 1), np.int16), fused.F16_TABLE, out)
    expect = codes.reshape(5, -1).astype(np.int64) @ xq[0].astype(np.int64)
    np.testing.assert_array_equal(out.astype(np.int64), expect)


def test_the_x86_spellings_follow_numbas_target_cpu_not_the_host(monkeypatch):
    """NUMBA_CPU_NAME=generic (a portable cache) compiles for a CPU without AVX2: an x86 intrinsic there
    aborts LLVM, so the feature test must read numba's target, not the host."""
    import numba

    from pimoe.kernels import fused

    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    assert not fused._target_has_avx2() and not fused._target_has_vnni()
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+avxvnni")
    assert fused._target_has_avx2() and fused._target_has_vnni()
