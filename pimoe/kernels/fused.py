"""Fused dequantize-and-dot CPU kernels (numba), computing directly on the stored GGUF blocks.

Like ggml's CPU backend, the quantized types multiply integer weight codes with integer activation
codes (the activations quantized once per call to Q8_0 / Q8_1 / Q8_K, see actquant) and apply the
float scales once per (sub-)block; F32/F16/BF16 weights are converted to f32 and multiplied with
f32 activations (already rounded to f16/bf16 as ggml does). Results equal the numpy
dequantize-then-matmul reference up to float summation order.

Work layout.  One parallel call serves a whole matmul, or a batch of experts:
    w      uint8 [E, O, row_bytes]         E = 1 for an ordinary weight, E = experts for *_exps
    rows   int64 [N]  activation rows in expert order; groups [G+1] start offsets into rows;
    gexp   int64 [G]  the expert of each group
    out    f32 [N, O]
and prange runs over (group, chunk of output rows). Each worker decodes one weight row at a time into
a small integer buffer (int8 codes plus integer sub-block scales, in L1) and dots it with every
activation row of its group, so a weight row is read from memory once per call however many tokens
use it (prompt processing), and decoding is never materialized beyond one row.

Integer arithmetic is exact, so the only differences from ggml are the float summation order and
ggml's use of FMA; numba is used because it compiles to the same machine code on x86 and on the
Pi's aarch64, with caching (cache=True) so a second start does not recompile.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# weight kinds understood by the integer kernel (codes shared with pimoe.kernels.dispatch)
K_Q8_0, K_Q4_0, K_Q5_0, K_Q4_1, K_Q5_1, K_Q2_K, K_Q3_K, K_Q4_K, K_Q5_K, K_Q6_K = range(10)
# float kinds
K_F32, K_F16, K_BF16 = 0, 1, 2

MULTI_TOKEN = 6  # from this many tokens on one weight row, dequantize the row once (measured crossover ~4-6)
ROW_CHUNK = 8  # output rows per work item: small enough to balance 2..4 threads on 768-row experts


def _f16_table() -> np.ndarray:
    """f32 value of every f16 bit pattern (used for block scales: one lookup per block)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


F16_TABLE = _f16_table()


# --- per-type row dots ---------------------------------------------------------------------------
# Each computes one stored weight row (b: uint8 [row_bytes]) . one activation row, the way ggml's
# vec_dot does, as f32.  Two shapes of loop, chosen by measurement on x86 (numba/LLVM):
#  * 32-weight block types: per-lane f32 accumulators lanes[32] += (d_w*d_x) * (q_w*q_x), one
#    horizontal sum per row (no reduction per block); q_w*q_x is an exact integer in f32.
#  * K types: per-super-block int32 sum of scale*q_w*q_x (exact integers; the explicit np.int32(...)
#    truncation lets LLVM use 32/16-bit vector lanes instead of numba's default 64-bit ints), then
#    one f32 multiply-add per super-block, with the mins through Q8_K's 16-weight sums (bsums).
# Slicing a block first (blk = b[o:o+size]) keeps the inner indexes provably non-negative, which
# numba needs to drop its negative-index wraparound and vectorize the loop.

@njit(cache=True)
def _f16(b, off, lut):
    return lut[np.int64(b[off]) | (np.int64(b[off + 1]) << 8)]


@njit(cache=True)
def _row_q8_0(b, xq, xd, lut):
    lanes = np.zeros(32, np.float32)
    for i in range(xd.shape[0]):
        f = _f16(b, i * 34, lut) * xd[i]
        qs = b[i * 34 + 2:i * 34 + 34]
        xx = xq[i * 32:i * 32 + 32]
        for l in range(32):
            lanes[l] += f * (np.float32(np.int8(qs[l])) * np.float32(xx[l]))
    return lanes.sum()


@njit(cache=True)
def _row_q4_0(b, xq, xd, lut):
    lo = np.zeros(16, np.float32)
    hi = np.zeros(16, np.float32)
    for i in range(xd.shape[0]):
        f = _f16(b, i * 18, lut) * xd[i]
        qs = b[i * 18 + 2:i * 18 + 18]
        xa = xq[i * 32:i * 32 + 16]
        xb = xq[i * 32 + 16:i * 32 + 32]
        for l in range(16):
            v = np.int32(qs[l])
            lo[l] += f * (np.float32((v & 15) - 8) * np.float32(xa[l]))
            hi[l] += f * (np.float32((v >> 4) - 8) * np.float32(xb[l]))
    return lo.sum() + hi.sum()


@njit(cache=True)
def _row_q5_0(b, xq, xd, lut):
    lanes = np.zeros(32, np.float32)
    for i in range(xd.shape[0]):
        blk = b[i * 22:i * 22 + 22]
        f = _f16(blk, 0, lut) * xd[i]
        qh = np.int32(blk[2]) | (np.int32(blk[3]) << 8) | (np.int32(blk[4]) << 16) | (np.int32(blk[5]) << 24)
        qs = blk[6:22]
        xx = xq[i * 32:i * 32 + 32]
        for l in range(16):
            v = np.int32(qs[l])
            q0 = ((v & 15) | (((qh >> l) & 1) << 4)) - 16
            q1 = ((v >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16
            lanes[l] += f * (np.float32(q0) * np.float32(xx[l]))
            lanes[16 + l] += f * (np.float32(q1) * np.float32(xx[16 + l]))
    return lanes.sum()


@njit(cache=True)
def _row_q4_1(b, xq, xd, xs, lut):
    lanes = np.zeros(32, np.float32)
    macc = np.float32(0.0)
    for i in range(xd.shape[0]):
        f = _f16(b, i * 20, lut) * xd[i]
        macc += _f16(b, i * 20 + 2, lut) * xs[i]  # m_w * s_x
        qs = b[i * 20 + 4:i * 20 + 20]
        xx = xq[i * 32:i * 32 + 32]
        for l in range(16):
            v = np.int32(qs[l])
            lanes[l] += f * (np.float32(v & 15) * np.float32(xx[l]))
            lanes[16 + l] += f * (np.float32(v >> 4) * np.float32(xx[16 + l]))
    return lanes.sum() + macc


@njit(cache=True)
def _row_q5_1(b, xq, xd, xs, lut):
    lanes = np.zeros(32, np.float32)
    macc = np.float32(0.0)
    for i in range(xd.shape[0]):
        blk = b[i * 24:i * 24 + 24]
        f = _f16(blk, 0, lut) * xd[i]
        macc += _f16(blk, 2, lut) * xs[i]
        qh = np.int32(blk[4]) | (np.int32(blk[5]) << 8) | (np.int32(blk[6]) << 16) | (np.int32(blk[7]) << 24)
        qs = blk[8:24]
        xx = xq[i * 32:i * 32 + 32]
        for l in range(16):
            v = np.int32(qs[l])
            q0 = (v & 15) | (((qh >> l) & 1) << 4)
            q1 = (v >> 4) | (((qh >> (l + 16)) & 1) << 4)
            lanes[l] += f * (np.float32(q0) * np.float32(xx[l]))
            lanes[16 + l] += f * (np.float32(q1) * np.float32(xx[16 + l]))
    return lanes.sum() + macc


@njit(cache=True)
def _row_q2_k(b, xq, xd, xbs, lut):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        blk = b[i * 84:i * 84 + 84]
        sc = blk[0:16]
        qs = blk[16:80]
        xx = xq[i * 256:i * 256 + 256]
        bs = xbs[i * 16:i * 16 + 16]
        isum = np.int32(0)
        msum = np.int32(0)
        for j in range(16):
            msum = np.int32(msum + (np.int32(sc[j]) >> 4) * np.int32(bs[j]))
        for h in range(2):
            for j in range(4):
                sa = np.int32(sc[h * 8 + 2 * j]) & 15
                sb = np.int32(sc[h * 8 + 2 * j + 1]) & 15
                xo = h * 128 + j * 32
                for l in range(16):
                    qa = (np.int32(qs[h * 32 + l]) >> (2 * j)) & 3
                    qb = (np.int32(qs[h * 32 + 16 + l]) >> (2 * j)) & 3
                    isum = np.int32(isum + sa * (qa * np.int32(xx[xo + l])) + sb * (qb * np.int32(xx[xo + 16 + l])))
        acc += xd[i] * (_f16(blk, 80, lut) * np.float32(isum) - _f16(blk, 82, lut) * np.float32(msum))
    return acc


@njit(cache=True)
def _row_q3_k(b, xq, xd, lut, sc):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        blk = b[i * 110:i * 110 + 110]
        hm = blk[0:32]
        qs = blk[32:96]
        s = blk[96:108]
        for j in range(16):
            lo = np.int32(s[j & 7])
            lo = (lo & 15) if j < 8 else (lo >> 4)
            hi = (np.int32(s[8 + (j & 3)]) >> (2 * (j >> 2))) & 3
            sc[j] = (lo | (hi << 4)) - 32
        xx = xq[i * 256:i * 256 + 256]
        isum = np.int32(0)
        for h in range(2):
            for j in range(4):
                sa = sc[h * 8 + 2 * j]
                sb = sc[h * 8 + 2 * j + 1]
                bit = h * 4 + j
                xo = h * 128 + j * 32
                for l in range(16):
                    qa = ((np.int32(qs[h * 32 + l]) >> (2 * j)) & 3) - 4 + 4 * ((np.int32(hm[l]) >> bit) & 1)
                    qb = ((np.int32(qs[h * 32 + 16 + l]) >> (2 * j)) & 3) - 4 + 4 * ((np.int32(hm[16 + l]) >> bit) & 1)
                    isum = np.int32(isum + sa * (qa * np.int32(xx[xo + l])) + sb * (qb * np.int32(xx[xo + 16 + l])))
        acc += xd[i] * _f16(blk, 108, lut) * np.float32(isum)
    return acc


@njit(cache=True)
def _row_q45_k(b, xq, xd, xbs, lut, five):
    ts = 176 if five else 144
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        blk = b[i * ts:i * ts + ts]
        s = blk[4:16]
        bs = xbs[i * 16:i * 16 + 16]
        msum = np.int32(0)
        for j in range(4):
            m_lo = np.int32(s[4 + j]) & 63
            m_hi = (np.int32(s[8 + j]) >> 4) | ((np.int32(s[4 + j]) >> 6) << 4)
            msum = np.int32(msum + m_lo * (np.int32(bs[2 * j]) + np.int32(bs[2 * j + 1]))
                            + m_hi * (np.int32(bs[8 + 2 * j]) + np.int32(bs[9 + 2 * j])))
        xx = xq[i * 256:i * 256 + 256]
        isum = np.int32(0)
        if five:
            qh = blk[16:48]
            qs = blk[48:176]
        else:
            qh = blk[16:48]  # unused
            qs = blk[16:144]
        for c in range(4):
            j0 = 2 * c
            j1 = 2 * c + 1
            s0 = (np.int32(s[j0]) & 63) if j0 < 4 else ((np.int32(s[j0 + 4]) & 15) | ((np.int32(s[j0 - 4]) >> 6) << 4))
            s1 = (np.int32(s[j1]) & 63) if j1 < 4 else ((np.int32(s[j1 + 4]) & 15) | ((np.int32(s[j1 - 4]) >> 6) << 4))
            if five:
                for l in range(32):
                    v = np.int32(qs[c * 32 + l])
                    h = np.int32(qh[l])
                    q0 = (v & 15) | (((h >> j0) & 1) << 4)
                    q1 = (v >> 4) | (((h >> j1) & 1) << 4)
                    isum = np.int32(isum + s0 * (q0 * np.int32(xx[c * 64 + l])) + s1 * (q1 * np.int32(xx[c * 64 + 32 + l])))
            else:
                for l in range(32):
                    v = np.int32(qs[c * 32 + l])
                    isum = np.int32(isum + s0 * ((v & 15) * np.int32(xx[c * 64 + l])) + s1 * ((v >> 4) * np.int32(xx[c * 64 + 32 + l])))
        acc += xd[i] * (_f16(blk, 0, lut) * np.float32(isum) - _f16(blk, 2, lut) * np.float32(msum))
    return acc


@njit(cache=True)
def _row_q6_k(b, xq, xd, lut):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        blk = b[i * 210:i * 210 + 210]
        xx = xq[i * 256:i * 256 + 256]
        isum = np.int32(0)
        for h in range(2):
            ql = blk[h * 64:h * 64 + 64]
            qh = blk[128 + h * 32:128 + h * 32 + 32]
            for half in range(2):
                so = 192 + h * 8 + half
                s0 = np.int32(np.int8(blk[so]))
                s1 = np.int32(np.int8(blk[so + 2]))
                s2 = np.int32(np.int8(blk[so + 4]))
                s3 = np.int32(np.int8(blk[so + 6]))
                xo = h * 128 + half * 16
                for l in range(16):
                    ll = half * 16 + l
                    a = np.int32(ql[ll])
                    c = np.int32(ql[32 + ll])
                    hh = np.int32(qh[ll])
                    q0 = ((a & 15) | ((hh & 3) << 4)) - 32
                    q1 = ((c & 15) | (((hh >> 2) & 3) << 4)) - 32
                    q2 = ((a >> 4) | (((hh >> 4) & 3) << 4)) - 32
                    q3 = ((c >> 4) | (((hh >> 6) & 3) << 4)) - 32
                    isum = np.int32(isum + s0 * (q0 * np.int32(xx[xo + l])) + s1 * (q1 * np.int32(xx[xo + 32 + l]))
                                    + s2 * (q2 * np.int32(xx[xo + 64 + l])) + s3 * (q3 * np.int32(xx[xo + 96 + l])))
        acc += xd[i] * _f16(blk, 208, lut) * np.float32(isum)
    return acc


# --- row dequantization, for prompts (many tokens per weight row) -------------------------------
# With T tokens on one weight row, converting the row once to f32 and doing T plain f32 dots with the
# rounded activations (x_rt = d_x * q_x, exactly the values ggml's integer dot uses) costs one decode
# instead of T.  Same products as the integer path, summed in another order: equal within f32
# rounding.  The Q4_1/Q5_1 minimum stays on ggml's per-block s_x (returned in mv, added per token).

@njit(cache=True)
def _dequant_row(kind, b, f, mv, lut):
    n = f.shape[0]
    if kind == K_Q8_0:
        for i in range(n // 32):
            d = _f16(b, i * 34, lut)
            qs = b[i * 34 + 2:i * 34 + 34]
            fo = f[i * 32:i * 32 + 32]
            for l in range(32):
                fo[l] = d * np.float32(np.int8(qs[l]))
    elif kind == K_Q4_0 or kind == K_Q4_1:
        ts = 18 if kind == K_Q4_0 else 20
        off = 8 if kind == K_Q4_0 else 0
        for i in range(n // 32):
            d = _f16(b, i * ts, lut)
            if kind == K_Q4_1:
                mv[i] = _f16(b, i * ts + 2, lut)
            qs = b[i * ts + ts - 16:i * ts + ts]
            fo = f[i * 32:i * 32 + 32]
            for l in range(16):
                v = np.int32(qs[l])
                fo[l] = d * np.float32((v & 15) - off)
                fo[16 + l] = d * np.float32((v >> 4) - off)
    elif kind == K_Q5_0 or kind == K_Q5_1:
        ts = 22 if kind == K_Q5_0 else 24
        off = 16 if kind == K_Q5_0 else 0
        for i in range(n // 32):
            blk = b[i * ts:i * ts + ts]
            d = _f16(blk, 0, lut)
            if kind == K_Q5_1:
                mv[i] = _f16(blk, 2, lut)
            h0 = ts - 20
            qh = np.int32(blk[h0]) | (np.int32(blk[h0 + 1]) << 8) | (np.int32(blk[h0 + 2]) << 16) | (np.int32(blk[h0 + 3]) << 24)
            qs = blk[ts - 16:ts]
            fo = f[i * 32:i * 32 + 32]
            for l in range(16):
                v = np.int32(qs[l])
                fo[l] = d * np.float32(((v & 15) | (((qh >> l) & 1) << 4)) - off)
                fo[16 + l] = d * np.float32(((v >> 4) | (((qh >> (l + 16)) & 1) << 4)) - off)
    elif kind == K_Q2_K:
        for i in range(n // 256):
            blk = b[i * 84:i * 84 + 84]
            d = _f16(blk, 80, lut)
            dmin = _f16(blk, 82, lut)
            fo = f[i * 256:i * 256 + 256]
            for h in range(2):
                for j in range(4):
                    for half in range(2):
                        s = np.int32(blk[h * 8 + 2 * j + half])
                        dl = d * np.float32(s & 15)
                        ml = dmin * np.float32(s >> 4)
                        qs = blk[16 + h * 32 + half * 16:16 + h * 32 + half * 16 + 16]
                        base = h * 128 + j * 32 + half * 16
                        for l in range(16):
                            fo[base + l] = dl * np.float32((np.int32(qs[l]) >> (2 * j)) & 3) - ml
    elif kind == K_Q3_K:
        for i in range(n // 256):
            blk = b[i * 110:i * 110 + 110]
            d = _f16(blk, 108, lut)
            s = blk[96:108]
            fo = f[i * 256:i * 256 + 256]
            for h in range(2):
                for j in range(4):
                    bit = h * 4 + j
                    for half in range(2):
                        k = h * 8 + 2 * j + half
                        lo = np.int32(s[k & 7])
                        lo = (lo & 15) if k < 8 else (lo >> 4)
                        hi = (np.int32(s[8 + (k & 3)]) >> (2 * (k >> 2))) & 3
                        dl = d * np.float32((lo | (hi << 4)) - 32)
                        qs = blk[32 + h * 32 + half * 16:32 + h * 32 + half * 16 + 16]
                        hm = blk[half * 16:half * 16 + 16]
                        base = h * 128 + j * 32 + half * 16
                        for l in range(16):
                            q = ((np.int32(qs[l]) >> (2 * j)) & 3) - 4 + 4 * ((np.int32(hm[l]) >> bit) & 1)
                            fo[base + l] = dl * np.float32(q)
    elif kind == K_Q4_K or kind == K_Q5_K:
        five = kind == K_Q5_K
        ts = 176 if five else 144
        for i in range(n // 256):
            blk = b[i * ts:i * ts + ts]
            d = _f16(blk, 0, lut)
            dmin = _f16(blk, 2, lut)
            s = blk[4:16]
            qh = blk[16:48]
            qs = blk[48:176] if five else blk[16:144]
            fo = f[i * 256:i * 256 + 256]
            for j in range(8):
                if j < 4:
                    sc = np.int32(s[j]) & 63
                    mn = np.int32(s[j + 4]) & 63
                else:
                    sc = (np.int32(s[j + 4]) & 15) | ((np.int32(s[j - 4]) >> 6) << 4)
                    mn = (np.int32(s[j + 4]) >> 4) | ((np.int32(s[j]) >> 6) << 4)
                dl = d * np.float32(sc)
                ml = dmin * np.float32(mn)
                c = j >> 1
                sh = 4 * (j & 1)
                q4 = qs[c * 32:c * 32 + 32]
                for l in range(32):
                    q = (np.int32(q4[l]) >> sh) & 15
                    if five:
                        q |= ((np.int32(qh[l]) >> j) & 1) << 4
                    fo[j * 32 + l] = dl * np.float32(q) - ml
    else:  # Q6_K
        for i in range(n // 256):
            blk = b[i * 210:i * 210 + 210]
            d = _f16(blk, 208, lut)
            fo = f[i * 256:i * 256 + 256]
            for h in range(2):
                ql = blk[h * 64:h * 64 + 64]
                qh = blk[128 + h * 32:128 + h * 32 + 32]
                for k in range(4):
                    part = k & 1
                    nib = 4 * (k >> 1)
                    for half in range(2):
                        dl = d * np.float32(np.int8(blk[192 + h * 8 + 2 * k + half]))
                        base = h * 128 + k * 32 + half * 16
                        for l in range(16):
                            ll = half * 16 + l
                            q = ((np.int32(ql[part * 32 + ll]) >> nib) & 15) | (((np.int32(qh[ll]) >> (2 * k)) & 3) << 4)
                            fo[base + l] = dl * np.float32(q - 32)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _fdot(a, b):
    acc = np.float32(0.0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(cache=True, fastmath={"reassoc", "contract"})
def _fdot4(a, b0, b1, b2, b3):
    # four tokens against one row: four independent FMA chains (one chain alone is latency-bound)
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    for i in range(a.shape[0]):
        v = a[i]
        c0 += v * b0[i]
        c1 += v * b1[i]
        c2 += v * b2[i]
        c3 += v * b3[i]
    return c0, c1, c2, c3


@njit(cache=True, parallel=True)
def quant_matmul(kind, w, xq, xd, xs, xbs, xr, rows, groups, gexp, lut, out):
    """Integer-activation matmul over expert groups.

    w uint8 [E, O, rb]; xq int8 [N, n] activation codes;
    xd f32 [N, n/block] activation scales; xs f32 [N, n/32] (Q8_1 sums, else unused);
    xbs int16 [N, n/16] (Q8_K 16-sums, else unused); xr f32 [N, n] the rounded activations
    d_x*q_x (used when a weight row serves MULTI_TOKEN or more tokens); rows/groups/gexp as in the
    module doc; out f32 [N, O].
    """
    O = w.shape[1]
    n_chunks = (O + ROW_CHUNK - 1) // ROW_CHUNK
    G = gexp.shape[0]
    for item in prange(G * n_chunks):
        g = item // n_chunks
        r0 = (item % n_chunks) * ROW_CHUNK
        r1 = min(O, r0 + ROW_CHUNK)
        e = gexp[g]
        sc = np.empty(16, np.int32)
        if groups[g + 1] - groups[g] >= MULTI_TOKEN:
            n = xq.shape[1]
            f = np.empty(n, np.float32)
            mv = np.zeros(n // 32, np.float32)
            affine = kind == K_Q4_1 or kind == K_Q5_1
            k0, k1 = groups[g], groups[g + 1]
            for o in range(r0, r1):
                _dequant_row(kind, w[e, o], f, mv, lut)
                k = k0
                while k + 4 <= k1:
                    t0, t1, t2, t3 = rows[k], rows[k + 1], rows[k + 2], rows[k + 3]
                    v0, v1, v2, v3 = _fdot4(f, xr[t0], xr[t1], xr[t2], xr[t3])
                    out[t0, o] = v0
                    out[t1, o] = v1
                    out[t2, o] = v2
                    out[t3, o] = v3
                    k += 4
                while k < k1:
                    out[rows[k], o] = _fdot(f, xr[rows[k]])
                    k += 1
                if affine:
                    for k in range(k0, k1):
                        out[rows[k], o] += _fdot(mv, xs[rows[k]])
            continue
        for o in range(r0, r1):
            b = w[e, o]
            for k in range(groups[g], groups[g + 1]):
                t = rows[k]
                if kind == K_Q8_0:
                    v = _row_q8_0(b, xq[t], xd[t], lut)
                elif kind == K_Q4_0:
                    v = _row_q4_0(b, xq[t], xd[t], lut)
                elif kind == K_Q5_0:
                    v = _row_q5_0(b, xq[t], xd[t], lut)
                elif kind == K_Q4_1:
                    v = _row_q4_1(b, xq[t], xd[t], xs[t], lut)
                elif kind == K_Q5_1:
                    v = _row_q5_1(b, xq[t], xd[t], xs[t], lut)
                elif kind == K_Q2_K:
                    v = _row_q2_k(b, xq[t], xd[t], xbs[t], lut)
                elif kind == K_Q3_K:
                    v = _row_q3_k(b, xq[t], xd[t], lut, sc)
                elif kind == K_Q4_K:
                    v = _row_q45_k(b, xq[t], xd[t], xbs[t], lut, False)
                elif kind == K_Q5_K:
                    v = _row_q45_k(b, xq[t], xd[t], xbs[t], lut, True)
                else:
                    v = _row_q6_k(b, xq[t], xd[t], lut)
                out[t, o] = v


@njit(cache=True, inline="always")
def _decode_float_row(kind, b, n, f, u):
    if kind == K_F32:
        f[:] = b.view(np.float32)
    elif kind == K_BF16:
        h = b.view(np.uint16)
        for i in range(n):
            u[i] = np.uint32(h[i]) << 16
        f[:] = u.view(np.float32)
    else:  # F16: magnitude bits moved into f32 position, rescaled by 2^112 (exact for normals and
        # subnormals), inf/nan given the all-ones exponent, then the sign
        h = b.view(np.uint16)
        for i in range(n):
            u[i] = (np.uint32(h[i]) & np.uint32(0x7FFF)) << 13
        fv = u.view(np.float32)
        for i in range(n):
            hv = np.uint32(h[i])
            m = fv[i] * np.float32(5.192296858534828e33)  # 2**112
            if (hv & np.uint32(0x7C00)) == np.uint32(0x7C00):
                m = np.float32(np.inf) if (hv & np.uint32(0x3FF)) == 0 else np.float32(np.nan)
            f[i] = -m if (hv & np.uint32(0x8000)) else m


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def float_matmul(kind, w, x, rows, groups, gexp, out):
    """F32/F16/BF16 weights: w uint8 [E, O, rb]; x f32 [N, n] (already rounded); out f32 [N, O]."""
    O = w.shape[1]
    n = x.shape[1]
    n_chunks = (O + ROW_CHUNK - 1) // ROW_CHUNK
    G = gexp.shape[0]
    for item in prange(G * n_chunks):
        g = item // n_chunks
        r0 = (item % n_chunks) * ROW_CHUNK
        r1 = min(O, r0 + ROW_CHUNK)
        e = gexp[g]
        f = np.empty(n, np.float32)
        u = np.empty(n, np.uint32)
        for o in range(r0, r1):
            _decode_float_row(kind, w[e, o], n, f, u)
            for k in range(groups[g], groups[g + 1]):
                t = rows[k]
                xr = x[t]
                acc = np.float32(0.0)
                for i in range(n):
                    acc += f[i] * xr[i]
                out[t, o] = acc


# --- activation quantizers (numba twins of actquant's numpy ones; tested equal) -------------------

@njit(cache=True)
def quantize_rows_q8_0(x, qs, d, s):
    """x f32 [T, n] -> qs int8 [T, n], d f32 [T, n/32] (f32, caller rounds to f16), s f32 sums of qs."""
    T, n = x.shape
    for t in range(T):
        for i in range(n // 32):
            amax = np.float32(0.0)
            for l in range(32):
                a = abs(x[t, i * 32 + l])
                if a > amax:
                    amax = a
            d[t, i] = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            tot = 0
            for l in range(32):
                v = np.rint(x[t, i * 32 + l] * inv)
                v = min(max(v, np.float32(-128.0)), np.float32(127.0))
                qs[t, i * 32 + l] = np.int8(v)
                tot += np.int32(v)
            s[t, i] = np.float32(tot)


@njit(cache=True)
def quantize_rows_q8_k(x, qs, d, bsums):
    """x f32 [T, n] -> qs int8 [T, n], d f32 [T, n/256], bsums int16 [T, n/16] (quantize_row_q8_K_ref)."""
    T, n = x.shape
    for t in range(T):
        for i in range(n // 256):
            o = i * 256
            vmax = np.float32(0.0)
            amax = np.float32(0.0)
            for l in range(256):
                a = abs(x[t, o + l])
                if a > amax:
                    amax = a
                    vmax = x[t, o + l]
            if amax == 0:
                d[t, i] = 0.0
                for l in range(256):
                    qs[t, o + l] = 0
                for j in range(16):
                    bsums[t, i * 16 + j] = 0
                continue
            iscale = np.float32(-127.0) / vmax
            for l in range(256):
                v = min(np.rint(iscale * x[t, o + l]), np.float32(127.0))
                qs[t, o + l] = np.int8(v)
            for j in range(16):
                tot = 0
                for l in range(16):
                    tot += np.int32(qs[t, o + j * 16 + l])
                bsums[t, i * 16 + j] = np.int16(tot)
            d[t, i] = np.float32(1.0) / iscale
