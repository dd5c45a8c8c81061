"""Small per-token vector operations of the forward pass as numba kernels.

At decode time each of these works on one row of a few thousand floats; in numpy every one is ~10
array operations of ~5 us of call overhead each, which added up to several percent of a token.
The arithmetic follows the numpy versions in pimoe.model step by step (checked equal in tests).

    rmsnorm_rows(x, weight, eps)   x f32 [R, n], weight f32 [n] -> f32 [R, n]
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _rmsnorm_rows(x, weight, eps, out):
    R, n = x.shape
    for r in range(R):
        ss = 0.0   # float64, as ggml sums the squares in double
        for i in range(n):
            v = np.float64(x[r, i])
            ss += v * v
        mean = ss / n
        scale = np.float32(1.0) / np.float32(np.sqrt(np.float32(mean + eps)))
        for i in range(n):
            out[r, i] = (x[r, i] * scale) * weight[i]


def rmsnorm_rows(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x f32 [R, n] (C-contiguous), weight f32 [n] -> x / sqrt(mean(x^2) + eps) * weight, f32 [R, n]."""
    out = np.empty(x.shape, np.float32)
    _rmsnorm_rows(x, weight, float(eps), out)
    return out
