"""The elementwise pieces of a MoE layer that every backend and reference shares, written once.

    silu(x)                    x / (1 + e^-x), ggml's SiLU
    swiglu(g, u)               silu(g) * u: an expert's hidden activation from its gate and up projections
    mix_experts(y, weights)    sum_j weights[t, j] * y[t, j], in router order (ggml's order of additions)

They keep the dtype they are given (f32 in the forward pass, f64 in the references), so a backend and its
reference differ only in the precision they choose.
"""

from __future__ import annotations

import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    """x / (1 + e^-x) elementwise, as ggml's silu, in x's dtype. e^-x overflowing to inf (large negative x)
    gives the right limit 0, so that overflow is not reported."""
    x = np.asarray(x)
    with np.errstate(over="ignore"):
        return x / (x.dtype.type(1) + np.exp(-x))


def swiglu(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """silu(g) * u: the SwiGLU hidden activation of an expert from its gate (g) and up (u) projections."""
    return silu(g) * u


def mix_experts(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The router-weighted sum of a layer's expert outputs: y [T, k, hidden] (output of the token's j-th
    chosen expert), weights [T, k] -> [T, hidden] = sum_j weights[t, j] * y[t, j].

    As ggml: each output is scaled by its weight first, then the k products are added one after the other
    in router order (j = 0, 1, ...), which fixes the rounding of a float32 sum. Returns a new array in
    y's dtype; y is not modified."""
    y = np.asarray(y)
    T, k = y.shape[:2]
    if np.shape(weights) != (T, k):
        raise ValueError(f"mix_experts: weights {np.shape(weights)} do not match outputs {y.shape}")
    scaled = y * np.asarray(weights, y.dtype)[:, :, None]
    out = scaled[:, 0].copy()
    for j in range(1, k):
        out += scaled[:, j]
    return out
