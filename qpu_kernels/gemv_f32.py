"""GEMV on f32 weights (decode, one token): y = W @ x over all 8 QPUs, TMU loads pipelined ahead of use.

The kernel is gemv_kernel's block loop with the f32 layout (qpu_kernels.qpu_layout: each row's weights
contiguous, rows padded to 16): each thread takes 16 rows at a time (lane = row), streams its row's words
with 32-bit TMU loads issued up to 16 ahead of use (across block boundaries; the last block peeled so
nothing is fetched past the row), and receives the x values through the second uniform stream as
broadcast values (ldunifa -> r5), so every weight costs one fmul (mul ALU) + one fadd (add ALU) + one
ldtmu signal + one ldunifa signal: 2 instructions per weight, bound by the one-signal-per-instruction
rule, which is far above what 4-byte weights need to be memory-bound on a Pi 4.
F16/BF16 tensors are widened to f32 at load (exact).

    numpy reference: gemv_f32_reference();  launcher: qpu_kernels.gemv_quant.QPUGemv (same host code);
    python -m qpu_kernels.gemv_f32
"""

from __future__ import annotations

import sys

import numpy as np

from pimoe.errors import PimoeError
from qpu_kernels.gemv_quant import REAL_SHAPES, QPUGemv, describe, run  # noqa: F401  (re-exported launcher)


def gemv_f32_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """w f32 [rows, cols], x f32 [cols] or [T, cols] -> f64 [rows] / [T, rows]."""
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64).T


def main(argv=None) -> int:
    from gguf import GGMLQuantizationType as QT

    from pimoe.qpu import open_driver

    for threads in (1, 4, 8):
        with open_driver("emu", data_area_size=64 << 20) as drv:
            err, counters, seconds = run(drv, QT.F32, 256, 512, threads=threads)
        print(f"gemv f32 256x512 on {threads} threads: rel err {err:.1e}; "
              f"{describe(counters, 256, 512, 1, QT.F32, seconds)}")
    for name, (rows, cols) in REAL_SHAPES.items():
        with open_driver("emu", data_area_size=64 << 20) as drv:
            err, counters, seconds = run(drv, QT.F32, rows, cols)
        if err > 1e-5:
            raise PimoeError(f"gemv f32 {rows}x{cols}: relative error {err:.1e}")
        print(f"gemv f32 {name:22s} {rows}x{cols}: equal to numpy (rel err {err:.1e}); "
              f"{describe(counters, rows, cols, 1, QT.F32, seconds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
