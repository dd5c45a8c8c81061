"""Simple quantizers from f32 to the K types (gguf.quants only quantizes the 32-weight types).

These produce valid, reasonably accurate blocks with plain min/max (or abs-max) scaling per
sub-block; they do not search for optimal scales the way llama.cpp's make_qkx2_quants does, so a
tensor quantized here is a little noisier than one quantized by llama-quantize. pimoe uses them
only to write synthetic models from float weights; every reader of the blocks is format-exact.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from pimoe.kernels.randblocks import pack_k_scale_min


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """f32 [n] -> uint8 [n, 2] little-endian f16."""
    return v.astype("<f2").reshape(-1, 1).view(np.uint8)


def _safe_div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0).astype(np.float32)


def _affine_k(x: np.ndarray, sub: int, max_code: int, scale_bits: int):
    """x: [n, 256] -> (d [n], dmin [n], sc [n, S], mn [n, S], q [n, 256]) for value = d*sc*q - dmin*mn."""
    n = x.shape[0]
    xs = x.reshape(n, 256 // sub, sub)
    lo = np.minimum(xs.min(axis=2), 0)  # the format can only subtract a min >= 0
    hi = xs.max(axis=2)
    scale = (hi - lo) / max_code  # [n, S]
    smax = (1 << scale_bits) - 1
    d = scale.max(axis=1) / smax
    dmin = (-lo).max(axis=1) / smax
    d, dmin = d.astype(np.float16).astype(np.float32), dmin.astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, smax).astype(np.uint8)
    mn = np.clip(np.rint(_safe_div(-lo, dmin[:, None])), 0, smax).astype(np.uint8)
    step = d[:, None] * sc  # [n, S]
    offs = dmin[:, None] * mn
    q = np.clip(np.rint(_safe_div(xs + offs[:, :, None], step[:, :, None])), 0, max_code).astype(np.uint8)
    return d, dmin, sc, mn, q.reshape(n, 256)


def _signed_k(x: np.ndarray, sub: int, half_range: int, scale_max: int):
    """x: [n, 256] -> (d [n], sc int [n, S], q int [n, 256]) for value = d*sc*q, q in [-half_range, half_range-1]."""
    n = x.shape[0]
    xs = x.reshape(n, 256 // sub, sub)
    amax = np.abs(xs).max(axis=2)
    scale = amax / half_range
    d = (scale.max(axis=1) / scale_max).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, scale_max).astype(np.int32)
    step = d[:, None] * sc
    q = np.clip(np.rint(_safe_div(xs, step[:, :, None])), -half_range, half_range - 1).astype(np.int32)
    return d, sc, q.reshape(n, 256)


def _q2_k(x):
    n = x.shape[0]
    d, dmin, sc, mn, q = _affine_k(x, 16, 3, 4)
    b = np.empty((n, 84), np.uint8)
    b[:, 0:16] = sc | (mn << 4)
    # weight n*128 + j*32 + l goes to bits 2j of qs[n*32 + l]
    q4 = q.reshape(n, 2, 4, 32)
    b[:, 16:80] = (q4[:, :, 0] | (q4[:, :, 1] << 2) | (q4[:, :, 2] << 4) | (q4[:, :, 3] << 6)).reshape(n, 64)
    b[:, 80:82] = _f16_bytes(d)
    b[:, 82:84] = _f16_bytes(dmin)
    return b


def _q3_k(x):
    n = x.shape[0]
    d, sc, q = _signed_k(x, 16, 4, 31)  # q in -4..3, scales 0..31 (stored as 6-bit value + 32)
    code = (q + 4).astype(np.uint8).reshape(n, 2, 4, 32)  # 0..7: low 2 bits in qs, bit 2 in hmask
    low = code & 3
    b = np.empty((n, 110), np.uint8)
    hb = (code >> 2) & 1  # [n, 2, 4, 32], bit (half*4 + j) of hmask[l]
    b[:, 0:32] = (hb.reshape(n, 8, 32) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)).sum(axis=1).astype(np.uint8)
    b[:, 32:96] = (low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)).reshape(n, 64)
    s6 = (sc + 32).astype(np.uint8)  # [n, 16]
    packed = np.empty((n, 12), np.uint8)
    packed[:, 0:8] = (s6[:, 0:8] & 0x0F) | ((s6[:, 8:16] & 0x0F) << 4)
    hi = s6 >> 4  # 2 bits each; scale i's go to bits 2*(i//4) of byte 8 + i%4
    packed[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    b[:, 96:108] = packed
    b[:, 108:110] = _f16_bytes(d)
    return b


def _affine_k_header(x, qmax, type_size):
    """Q4_K / Q5_K: the codes (0..qmax, 8 sub-blocks of 32) and the blocks with their common head
    filled: d @0, dmin @2, the packed 6-bit scales and mins @4..16."""
    d, dmin, sc, mn, q = _affine_k(x, 32, qmax, 6)
    b = np.empty((x.shape[0], type_size), np.uint8)
    b[:, 0:2] = _f16_bytes(d)
    b[:, 2:4] = _f16_bytes(dmin)
    b[:, 4:16] = pack_k_scale_min(sc, mn)
    return b, q


def _q4_k(x):
    n = x.shape[0]
    b, q = _affine_k_header(x, 15, 144)
    q8 = q.reshape(n, 4, 2, 32)  # chunk c: sub-block 2c in low nibbles, 2c+1 in high
    b[:, 16:144] = (q8[:, :, 0] | (q8[:, :, 1] << 4)).reshape(n, 128)
    return b


def _q5_k(x):
    n = x.shape[0]
    b, q = _affine_k_header(x, 31, 176)
    q8 = q.reshape(n, 8, 32)
    b[:, 16:48] = (((q8 >> 4) & 1) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)).sum(axis=1).astype(np.uint8)
    lo = (q8 & 0x0F).reshape(n, 4, 2, 32)
    b[:, 48:176] = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, 128)
    return b


def _q6_k(x):
    n = x.shape[0]
    d, sc, q = _signed_k(x, 16, 32, 127)
    code = (q + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [n, half, quarter, l]
    lo, hi = code & 0x0F, code >> 4
    b = np.empty((n, 210), np.uint8)
    # ql part 0 holds quarters 0 (low nibble) and 2 (high); part 1 holds quarters 1 and 3
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)  # [n, 2, 2, 32]
    b[:, 0:128] = ql.reshape(n, 128)
    b[:, 128:192] = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    b[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    b[:, 208:210] = _f16_bytes(d)
    return b


_QUANTIZERS = {QT.Q2_K: _q2_k, QT.Q3_K: _q3_k, QT.Q4_K: _q4_k, QT.Q5_K: _q5_k, QT.Q6_K: _q6_k}


def quantize_k(x: np.ndarray, qtype: QT) -> np.ndarray:
    """x: f32 [rows, n] (n % 256 == 0) -> uint8 [rows, n/256 * type_size]."""
    rows, n = x.shape
    blocks = _QUANTIZERS[qtype](np.ascontiguousarray(x, np.float32).reshape(-1, 256))
    return blocks.reshape(rows, -1)
