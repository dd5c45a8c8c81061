"""Valid random blocks of every supported type, for synthetic models and kernel tests.

Quant fields (nibbles, 2/3/5/6-bit codes) are uniform random. Scale fields are chosen so that the
dequantized weights are roughly zero-mean with a requested standard deviation: each block gets a
random positive factor (log-normal, so blocks differ like real ones do), K-type sub-block scales are
random 6-bit (4-bit for Q2_K) codes, and the mins are set to cancel the mean of the unsigned codes.
The overall scale is then calibrated on a sample of the generated blocks, and every f16 scale is
written as a finite f16.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from pimoe.kernels.formats import BLOCK_SIZES, DEQUANTIZERS
from pimoe.kernels.actquant import to_bf16_bits


def pack_k_scale_min(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Inverse of formats.k_scale_min_6bit: (scale, min) uint8 [n, 8] (6-bit) -> uint8 [n, 12]."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _put_f16(blocks: np.ndarray, offset: int, values: np.ndarray) -> None:
    """Write f32 values [n] as little-endian f16 at byte `offset` of each block."""
    blocks[:, offset:offset + 2] = values.astype("<f2").reshape(-1, 1).view(np.uint8)


# Each generator fills blocks [n, type_size] (already random bytes) with scale fields derived from
# `unit` [n] f32 (the block's d); returns nothing.  d/dmin offsets and the min-to-scale ratio per type.

def _gen_plain_d(offset):
    def gen(b, unit, rng):
        _put_f16(b, offset, unit)
    return gen


def _gen_q8_0(b, unit, rng):
    b[:, 2:34] = rng.integers(-127, 128, size=(b.shape[0], 32), dtype=np.int8).view(np.uint8)
    _put_f16(b, 0, unit)


def _gen_affine_32(mean_code):
    # Q4_1 / Q5_1: value = d*q + m; m = -mean_code*d centres the unsigned codes
    def gen(b, unit, rng):
        _put_f16(b, 0, unit)
        _put_f16(b, 2, -mean_code * unit)
    return gen


def _gen_q2_k(b, unit, rng):
    n = b.shape[0]
    sc = rng.integers(1, 16, size=(n, 16), dtype=np.uint8)
    # value = d*sc*q - dmin*mn with q in 0..3 (mean 1.5): dmin = 1.5*d and mn = sc centre it
    b[:, 0:16] = sc | (sc << 4)
    _put_f16(b, 80, unit)
    _put_f16(b, 82, 1.5 * unit)


def _gen_q3_k(b, unit, rng):
    # codes -4..3 and signed 6-bit scales are already roughly zero-mean: random bytes are fine
    _put_f16(b, 108, unit)


def _gen_k_affine(max_code, dmin_ratio):
    # Q4_K / Q5_K: value = d*sc*q - dmin*mn; mn = round(sc * mean(q) / dmin_ratio) centres each sub-block
    def gen(b, unit, rng):
        n = b.shape[0]
        sc = rng.integers(1, 64, size=(n, 8), dtype=np.uint8)
        mn = np.clip(np.rint(sc * (max_code / 2.0) / dmin_ratio), 0, 63).astype(np.uint8)
        b[:, 4:16] = pack_k_scale_min(sc, mn)
        _put_f16(b, 0, unit)
        _put_f16(b, 2, dmin_ratio * unit)
    return gen


def _gen_q6_k(b, unit, rng):
    n = b.shape[0]
    mag = rng.integers(8, 128, size=(n, 16))
    sign = rng.choice(np.array([-1, 1]), size=(n, 16))
    b[:, 192:208] = (mag * sign).astype(np.int8).view(np.uint8)
    _put_f16(b, 208, unit)


_GENERATORS = {
    QT.Q8_0: _gen_q8_0,
    QT.Q4_0: _gen_plain_d(0),
    QT.Q4_1: _gen_affine_32(7.5),
    QT.Q5_0: _gen_plain_d(0),
    QT.Q5_1: _gen_affine_32(15.5),
    QT.Q2_K: _gen_q2_k,
    QT.Q3_K: _gen_q3_k,
    QT.Q4_K: _gen_k_affine(15, 8.0),
    QT.Q5_K: _gen_k_affine(31, 16.0),
    QT.Q6_K: _gen_q6_k,
}

_CHUNK_BLOCKS = 1 << 16


def random_blocks(qtype: QT, n_weights: int, rng: np.random.Generator, std: float) -> np.ndarray:
    """uint8 [n_weights / block_size * type_size] of valid random blocks with dequantized std ~ std."""
    block_size, type_size = BLOCK_SIZES[qtype]
    if qtype == QT.F32:
        return (rng.standard_normal(n_weights, dtype=np.float32) * np.float32(std)).view(np.uint8)
    if qtype == QT.F16:
        return (rng.standard_normal(n_weights, dtype=np.float32) * np.float32(std)).astype("<f2").view(np.uint8)
    if qtype == QT.BF16:
        return to_bf16_bits(rng.standard_normal(n_weights, dtype=np.float32) * np.float32(std)).view(np.uint8)
    n_blocks = n_weights // block_size
    blocks = np.empty((n_blocks, type_size), np.uint8)
    gen = _GENERATORS[qtype]
    # calibration: the std that unit scale 1.0 gives, measured on a sample of this very generator
    sample = rng.integers(0, 256, size=(min(n_blocks, 512), type_size), dtype=np.uint8)
    sample_unit = np.exp(rng.normal(0.0, 0.25, size=sample.shape[0])).astype(np.float32)
    gen(sample, sample_unit, rng)
    unit_std = float(DEQUANTIZERS[qtype](sample).std())
    k = np.float32(std / unit_std) if unit_std > 0 else np.float32(0)
    for start in range(0, n_blocks, _CHUNK_BLOCKS):
        b = blocks[start:start + _CHUNK_BLOCKS]
        b[:] = rng.integers(0, 256, size=b.shape, dtype=np.uint8)
        unit = np.exp(rng.normal(0.0, 0.25, size=b.shape[0])).astype(np.float32) * k
        gen(b, unit, rng)
    return blocks.reshape(-1)
