"""Activation quantizers: what llama.cpp's CPU backend does to x before a dot product with a weight.

ggml's CPU matmul converts src1 (the activations) to the weight type's `vec_dot_type`
(type_traits_cpu in ggml/src/ggml-cpu/ggml-cpu.c) and then runs an integer (or f16/bf16) dot:

    weight type            vec_dot_type   what happens to x
    F32                    F32            nothing
    F16                    F16            rounded to f16 (round-to-nearest-even)
    BF16                   BF16           rounded to bf16 (round-to-nearest-even)
    Q4_0 Q5_0 Q8_0         Q8_0           blocks of 32: d = amax/127, q = rint(x*127/amax)
    Q4_1 Q5_1              Q8_1           as Q8_0, plus s = f16(d * sum(q)) per block
    Q2_K..Q6_K             Q8_K           blocks of 256: max = the signed x of largest |x|,
                                          iscale = -127/max, q = min(127, rint(iscale*x)),
                                          d = 1/iscale kept in f32, plus 16-weight sums of q

Q8_0/Q8_1 follow ggml's x86 AVX path (quantize_row_q8_0 in ggml-cpu/arch/x86/quants.c: scale
127/amax, round half to even, d stored as f16); Q8_K follows quantize_row_q8_K_ref in ggml-quants.c
(the x86 build calls the reference). ARM NEON multiplies by 1/d instead of 127/amax, which can flip a
rounding tie in rare cases; that is below every tolerance pimoe tests with.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

# weight type -> the type its activations are converted to (ggml's vec_dot_type)
VEC_DOT_TYPE: dict[QT, QT] = {
    QT.F32: QT.F32,
    QT.F16: QT.F16,
    QT.BF16: QT.BF16,
    QT.Q8_0: QT.Q8_0,
    QT.Q4_0: QT.Q8_0,
    QT.Q5_0: QT.Q8_0,
    QT.Q4_1: QT.Q8_1,
    QT.Q5_1: QT.Q8_1,
    QT.Q2_K: QT.Q8_K,
    QT.Q3_K: QT.Q8_K,
    QT.Q4_K: QT.Q8_K,
    QT.Q5_K: QT.Q8_K,
    QT.Q6_K: QT.Q8_K,
}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """f32 -> uint16 bf16 bit patterns, round-to-nearest-even; NaN stays a (quiet) NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """f32 -> f32 values exactly representable in bf16 (what ggml's fp32->bf16 keeps)."""
    return (to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: f32 [T, n] (n % 32 == 0) -> (d f16 [T, n/32], qs int8 [T, n/32, 32])."""
    T, n = x.shape
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(T, n // 32, 32)
    amax = np.abs(xb).max(axis=2)  # [T, nb]
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(xb * inv[:, :, None])  # rint = round half to even, like _mm256_round_ps(NEAREST)
    qs = np.clip(q, -128, 127).astype(np.int8)
    return d.astype(np.float16), qs


def quantize_q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: f32 [T, n] -> (d f16 [T, nb], s f16 [T, nb] = f16(d_f32 * sum(qs)), qs int8 [T, nb, 32])."""
    T, n = x.shape
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(T, n // 32, 32)
    amax = np.abs(xb).max(axis=2)
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    qs = np.clip(np.rint(xb * inv[:, :, None]), -128, 127).astype(np.int8)
    s = (d * qs.astype(np.int32).sum(axis=2).astype(np.float32)).astype(np.float16)
    return d.astype(np.float16), s, qs


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: f32 [T, n] (n % 256 == 0) -> (d f32 [T, nb], qs int8 [T, nb, 256], bsums int16 [T, nb, 16])."""
    T, n = x.shape
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(T, n // 256, 256)
    # the signed value with the largest magnitude; on ties the first one wins (strict > in ggml)
    idx = np.abs(xb).argmax(axis=2)
    vmax = np.take_along_axis(xb, idx[:, :, None], axis=2)[:, :, 0]  # [T, nb]
    zero = vmax == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0.0), np.float32(-127.0) / np.where(zero, 1, vmax)).astype(np.float32)
    q = np.minimum(np.rint(xb * iscale[:, :, None]), 127).astype(np.int8)
    with np.errstate(divide="ignore"):
        d = np.where(zero, np.float32(0.0), np.float32(1.0) / np.where(zero, 1, iscale)).astype(np.float32)
    bsums = q.reshape(T, n // 256, 16, 16).astype(np.int16).sum(axis=3, dtype=np.int16)
    return d, q, bsums


def roundtrip(x: np.ndarray, weight_type: QT) -> np.ndarray:
    """x: f32 [T, n] -> f32 [T, n]: the activation values llama.cpp's dot product actually uses."""
    vt = VEC_DOT_TYPE[weight_type]
    x = np.asarray(x, dtype=np.float32)
    T, n = x.shape
    if vt == QT.F32:
        return x
    if vt == QT.F16:
        return x.astype(np.float16).astype(np.float32)
    if vt == QT.BF16:
        return round_bf16(x)
    if vt in (QT.Q8_0, QT.Q8_1):
        d, qs = quantize_q8_0(x)  # Q8_1 has the same d and qs; its extra s is used by matmul
        return (d.astype(np.float32)[:, :, None] * qs.astype(np.float32)).reshape(T, n)
    d, qs, _ = quantize_q8_k(x)
    return (d[:, :, None] * qs.astype(np.float32)).reshape(T, n)
