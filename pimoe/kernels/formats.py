"""GGUF block layouts and numpy dequantizers for the 13 weight types pimoe supports.

Every quantized row is a run of fixed-size blocks; a block holds `block_size` weights in `type_size`
bytes. The byte layouts below are ggml's (ggml-common.h); all multi-byte fields are little-endian.
The dequantizers here are the pure-numpy reference path: the fused kernels are tested against them,
and they are tested against gguf.quants.dequantize.

    type  block  bytes  layout (byte offsets)                          value of weight i
    F32     1      4    f32                                             x
    F16     1      2    f16                                             x
    BF16    1      2    top half of an f32                              x
    Q8_0   32     34    d f16 @0, qs i8[32] @2                          d*qs[i]
    Q4_0   32     18    d @0, qs u8[16] @2 (lo nibble i, hi nibble i+16) d*(q-8)
    Q4_1   32     20    d @0, m @2, qs[16] @4                           d*q + m
    Q5_0   32     22    d @0, qh u32 @2 (bit i = 5th bit of q_i), qs[16] @6  d*(q-16)
    Q5_1   32     24    d @0, m @2, qh u32 @4, qs[16] @8                d*q + m
    Q2_K  256     84    scales[16] @0 (lo: scale, hi: min), qs[64] @16, d @80, dmin @82
    Q3_K  256    110    hmask[32] @0, qs[64] @32, scales[12] @96 (16 x 6 bit), d @108
    Q4_K  256    144    d @0, dmin @2, scales[12] @4 (8 x 6-bit scale + min), qs[128] @16
    Q5_K  256    176    d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48
    Q6_K  256    210    ql[128] @0, qh[64] @128, scales i8[16] @192, d @208
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT

# qtype -> (weights per block, bytes per block) for the types pimoe reads: gguf's own table
BLOCK_SIZES: dict[QT, tuple[int, int]] = {
    qt: GGML_QUANT_SIZES[qt]
    for qt in (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
               QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
}

QK_K = 256  # weights per K-quant super-block


def f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """blocks: uint8 [n, type_size] -> f32 [n, 1] from the little-endian f16 at `offset`."""
    raw = np.ascontiguousarray(blocks[:, offset:offset + 2])
    return raw.view("<f2").astype(np.float32)


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """uint16 bit patterns -> f32 (bf16 is the top 16 bits of an f32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """qs: uint8 [n, 16] -> [n, 32]: low nibbles are weights 0..15, high nibbles weights 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _qh_bits_32(qh4: np.ndarray) -> np.ndarray:
    """qh4: uint8 [n, 4] (a little-endian u32) -> uint8 [n, 32], element i = bit i."""
    qh = np.ascontiguousarray(qh4).view("<u4")  # [n, 1]
    return ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def k_scale_min_6bit(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K packed scales: uint8 [n, 12] -> (scale, min) uint8 [n, 8] each, 6 bits.

    Sub-blocks 0..3 keep their 6 bits in the low bits of bytes 0..3 (scale) and 4..7 (min);
    sub-blocks 4..7 keep the low 4 bits in bytes 8..11 (scale low nibble, min high nibble) and
    their top 2 bits in the top 2 bits of bytes 0..3 (scale) and 4..7 (min).
    """
    s = scales
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def q3k_scales(scales: np.ndarray) -> np.ndarray:
    """Q3_K packed scales: uint8 [n, 12] -> int8 [n, 16] signed scales (6-bit value minus 32).

    Scale i: low 4 bits = nibble (i // 8) of byte i % 8; high 2 bits = bits 2*(i//4).. of byte 8 + i%4.
    """
    s = scales
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)  # [n, 16]
    i = np.arange(16)
    high = (s[:, 8 + i % 4] >> (2 * (i // 4)).astype(np.uint8)) & 3  # [n, 16]
    return ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8)


# --- per-type dequantizers: blocks uint8 [n, type_size] -> f32 [n, block_size] -----------------

def _deq_f32(b):
    return np.ascontiguousarray(b).view("<f4").astype(np.float32)


def _deq_f16(b):
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _deq_bf16(b):
    return bf16_to_f32(np.ascontiguousarray(b).view("<u2"))


def _deq_q8_0(b):
    d = f16_field(b, 0)
    q = np.ascontiguousarray(b[:, 2:34]).view(np.int8)
    return d * q.astype(np.float32)


def _deq_q4_0(b):
    d = f16_field(b, 0)
    q = _nibbles_32(b[:, 2:18]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def _deq_q4_1(b):
    d, m = f16_field(b, 0), f16_field(b, 2)
    q = _nibbles_32(b[:, 4:20])
    return d * q.astype(np.float32) + m


def _deq_q5_0(b):
    d = f16_field(b, 0)
    q = (_nibbles_32(b[:, 6:22]) | (_qh_bits_32(b[:, 2:6]) << 4)).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


def _deq_q5_1(b):
    d, m = f16_field(b, 0), f16_field(b, 2)
    q = _nibbles_32(b[:, 8:24]) | (_qh_bits_32(b[:, 4:8]) << 4)
    return d * q.astype(np.float32) + m


def _deq_q2_k(b):
    n = b.shape[0]
    sc = b[:, 0:16]
    d, dmin = f16_field(b, 80), f16_field(b, 82)
    # weight n*128 + j*32 + l uses bits 2j..2j+1 of qs[n*32 + l]; its scale is scales[weight // 16]
    qs = b[:, 16:80].reshape(n, 2, 1, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    q = ((qs >> shifts) & 3).reshape(n, 16, 16).astype(np.float32)
    dl = (d * (sc & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    return (dl * q - ml).reshape(n, 256)


def _deq_q3_k(b):
    n = b.shape[0]
    d = f16_field(b, 108)
    sc = q3k_scales(b[:, 96:108]).astype(np.float32)  # [n, 16]
    qs = b[:, 32:96].reshape(n, 2, 1, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    low2 = (qs >> shifts) & 3  # [n, 2, 4, 32]
    # hmask bit (n*4 + j) of byte l is the high bit of weight n*128 + j*32 + l; a clear bit subtracts 4
    hm = b[:, 0:32].reshape(n, 1, 1, 32)
    hbit = (hm >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)) & 1
    q = (low2.astype(np.int8) - np.int8(4) * (1 - hbit).astype(np.int8)).reshape(n, 16, 16)
    dl = (d * sc)[:, :, None]
    return (dl * q.astype(np.float32)).reshape(n, 256)


def _deq_q4_k(b):
    n = b.shape[0]
    d, dmin = f16_field(b, 0), f16_field(b, 2)
    sc, mn = k_scale_min_6bit(b[:, 4:16])
    qs = b[:, 16:144].reshape(n, 4, 32)
    # 64-weight chunk c: low nibbles are sub-block 2c, high nibbles sub-block 2c+1
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    dl = (d * sc.astype(np.float32))[:, :, None]
    ml = (dmin * mn.astype(np.float32))[:, :, None]
    return (dl * q - ml).reshape(n, 256)


def _deq_q5_k(b):
    n = b.shape[0]
    d, dmin = f16_field(b, 0), f16_field(b, 2)
    sc, mn = k_scale_min_6bit(b[:, 4:16])
    qh = b[:, 16:48].reshape(n, 1, 32)
    qs = b[:, 48:176].reshape(n, 4, 32)
    low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
    # bit s of qh[l] is the 5th bit of weight l of sub-block s
    high = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    q = (low | (high << 4)).astype(np.float32)
    dl = (d * sc.astype(np.float32))[:, :, None]
    ml = (dmin * mn.astype(np.float32))[:, :, None]
    return (dl * q - ml).reshape(n, 256)


def _deq_q6_k(b):
    n = b.shape[0]
    d = f16_field(b, 208)
    ql = b[:, 0:128].reshape(n, 2, 2, 32)  # [n, half, ql part (0: bytes 0..31, 1: 32..63), l]
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)  # [n, 16]
    # quarter k (0..3) of each 128-weight half: nibble k//2 of ql part k%2, bits 2k..2k+1 of qh
    lo = np.stack([ql & 0x0F, ql >> 4], axis=2)  # [n, half, nibble, part, l] -> quarter = 2*nibble+part
    lo = lo.reshape(n, 2, 4, 32)
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    q = ((lo | (hi << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
    dl = (d * sc)[:, :, None]
    return (dl * q.astype(np.float32)).reshape(n, 256)


DEQUANTIZERS = {
    QT.F32: _deq_f32,
    QT.F16: _deq_f16,
    QT.BF16: _deq_bf16,
    QT.Q8_0: _deq_q8_0,
    QT.Q4_0: _deq_q4_0,
    QT.Q4_1: _deq_q4_1,
    QT.Q5_0: _deq_q5_0,
    QT.Q5_1: _deq_q5_1,
    QT.Q2_K: _deq_q2_k,
    QT.Q3_K: _deq_q3_k,
    QT.Q4_K: _deq_q4_k,
    QT.Q5_K: _deq_q5_k,
    QT.Q6_K: _deq_q6_k,
}


def dequantize_rows(data: np.ndarray, qtype: QT, row_len: int) -> np.ndarray:
    """data: uint8 [..., row_bytes] -> f32 [..., row_len].  Works on chunks of blocks to bound memory."""
    block_size, type_size = BLOCK_SIZES[qtype]
    lead = data.shape[:-1]
    blocks = data.reshape(-1, type_size)
    out = np.empty((blocks.shape[0], block_size), np.float32)
    fn = DEQUANTIZERS[qtype]
    step = max(1, (1 << 22) // block_size)  # ~4 M weights per chunk
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = fn(blocks[start:start + step])
    return out.reshape(*lead, row_len)
