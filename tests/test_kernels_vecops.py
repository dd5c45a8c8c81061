"""Forward-pass vector kernels (pimoe.kernels.vecops) and the vectorized RoPE tables, bit for bit
against the step-by-step numpy formulas they replace."""

import numpy as np
import pytest

from pimoe import model
from pimoe.kernels.vecops import rmsnorm_rows


def _rmsnorm_numpy(x, weight, eps):
    mean = np.mean(np.square(x.astype(np.float64)), axis=-1, keepdims=True)
    scale = (np.float32(1.0) / np.sqrt((mean + eps).astype(np.float32))).astype(np.float32)
    return (x * scale) * weight


@pytest.mark.parametrize("shape", [(1, 2048), (7, 2048), (3, 32, 128), (2, 96)])
def test_rmsnorm_kernel_equals_numpy(shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1, shape[-1])[0] = 0.0           # an all-zero row: scale = 1/sqrt(eps)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    ref = _rmsnorm_numpy(x, w, 1e-6)
    np.testing.assert_array_equal(model.rmsnorm(x, w, 1e-6), ref)
    np.testing.assert_array_equal(rmsnorm_rows(x.reshape(-1, shape[-1]), w, 1e-6), ref.reshape(-1, shape[-1]))


def test_rope_tables_equal_repeated_multiplication():
    for positions in (np.arange(0, 1), np.arange(0, 300), np.arange(70000, 70005)):
        for n_dims, base, fs in ((128, 1e6, 1.0), (64, 10000.0, 0.25)):
            theta_scale = np.float32(base) ** np.float32(-2.0 / n_dims)
            theta = positions.astype(np.float32)
            angles = np.empty((len(positions), n_dims // 2), np.float32)
            for i in range(n_dims // 2):    # ggml's order: theta *= theta_scale, in f32
                angles[:, i] = theta
                theta = theta * theta_scale
            angles *= np.float32(fs)
            cos, sin = model.rope_tables(positions, n_dims, base, fs)
            np.testing.assert_array_equal(cos, np.cos(angles))
            np.testing.assert_array_equal(sin, np.sin(angles))
