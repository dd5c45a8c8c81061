"""pimoe.ops: SiLU, SwiGLU and the router-order weighted sum, against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pimoe.ops import mix_experts, silu, swiglu


def test_silu_matches_the_formula_in_python_floats():
    x = np.array([-1000.0, -88.0, -20.0, -1.5, -1e-7, 0.0, 1e-7, 0.5, 3.0, 40.0, 1000.0])
    # math.exp overflows for -x > 709: the limit there is 0 (x / inf)
    want = [v / (1.0 + math.exp(-v)) if -v < 709 else 0.0 for v in x]
    np.testing.assert_allclose(silu(x), want, rtol=1e-15, atol=0)
    got32 = silu(x.astype(np.float32))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=2e-7, atol=1e-38)


def test_silu_of_large_negative_f32_is_zero_without_a_warning():
    with np.errstate(over="raise"):
        assert silu(np.float32([-200.0]))[0] == 0.0


def test_swiglu_is_silu_of_gate_times_up():
    g, u = np.array([-2.0, 0.0, 1.0]), np.array([3.0, 5.0, -4.0])
    want = [gv / (1 + math.exp(-gv)) * uv for gv, uv in zip(g, u)]
    np.testing.assert_allclose(swiglu(g, u), want, rtol=1e-15)


def test_mix_experts_weights_then_adds_in_router_order():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3, 4, 5)).astype(np.float32)
    w = rng.random((3, 4)).astype(np.float32)
    got = mix_experts(y, w)
    assert got.dtype == np.float32 and got.shape == (3, 5)
    np.testing.assert_allclose(got, np.einsum("tk,tkh->th", w.astype(np.float64), y.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    # the order of the f32 additions is ggml's (j = 0, 1, 2): (1e8 + 1) rounds to 1e8, so the sum is 0,
    # where adding the last two first would give 1
    y = np.float32([[[1e8], [1.0], [-1e8]]])
    assert mix_experts(y, np.ones((1, 3), np.float32))[0, 0] == 0.0
    assert mix_experts(y[:, ::-1], np.ones((1, 3), np.float32))[0, 0] == 0.0
    assert mix_experts(y[:, [0, 2, 1]], np.ones((1, 3), np.float32))[0, 0] == 1.0


def test_mix_experts_leaves_its_input_alone_and_checks_shapes():
    y = np.ones((2, 2, 3), np.float32)
    mix_experts(y, np.full((2, 2), 0.5, np.float32))
    assert (y == 1).all()
    with pytest.raises(ValueError):
        mix_experts(y, np.ones((2, 3), np.float32))
