"""GEMV on f32 weights (decode, one token): y = W @ x over all 8 QPUs, TMU loads pipelined ahead of use.

Version 1 (qpu_gemv_f32_simple, below): the obvious loop -- per column one TMU load, wait for it (ldtmu),
one broadcast x value, fmul, fadd -- so every weight pays a full memory round trip; kept as the baseline
the pipelined version is measured against.

Version 2: gemv_kernel's block loop with the f32 layout (qpu_kernels.qpu_layout: each row's weights
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
from pimoe.qpu import qpu
from qpu_kernels.gemv_kernel import Scratch, base_address, write_tables
from qpu_kernels.gemv_quant import REAL_SHAPES, QPUGemv, check_real_shapes, describe, run  # noqa: F401  (re-exported launcher)
from qpu_kernels.emit import (emit_broadcast, emit_load_uniforms, emit_loop_end, emit_program_end,
                              emit_skip_if_zero, emit_thread_id)
from qpu_kernels.launch import launch


@qpu
def qpu_gemv_f32_simple(asm, *, threads: int):
    """Version 1. Uniforms: table address, columns, row bytes, x address. Per-thread table rows
    [item count, item list]; items [16-row group address, output address]."""
    reg_tab, reg_cols, reg_rb, reg_x = rf0, rf1, rf2, rf3
    reg_n, reg_items, reg_ptr, reg_out, reg_k, reg_acc, reg_lane4 = rf4, rf5, rf6, rf7, rf8, rf9, rf10
    emit_load_uniforms(asm, reg_tab, reg_cols, reg_rb, reg_x)
    emit_thread_id(asm, r0, threads)
    shl(r0, r0, 6)
    eidx(r1)
    shl(r1, r1, 2)
    mov(reg_lane4, r1)
    add(r0, r0, r1)
    add(tmua, r0, reg_tab)
    nop(sig=ldtmu(r2))
    nop()
    emit_broadcast(asm, reg_n, r2, 0)
    emit_broadcast(asm, reg_items, r2, 1)
    emit_skip_if_zero(asm, reg_n, R.done)
    with loop as item_loop:
        add(tmua, reg_items, reg_lane4)
        nop(sig=ldtmu(r2))
        emit_broadcast(asm, reg_ptr, r2, 0)
        emit_broadcast(asm, reg_out, r2, 1)
        eidx(r0)
        umul24(r0, r0, reg_rb)                      # lane = row: ptr += lane * row bytes
        add(reg_ptr, reg_ptr, r0)
        mov(unifa, reg_x)
        mov(reg_k, reg_cols)
        mov(reg_acc, 0)
        nop()
        with loop as col_loop:
            mov(tmua, reg_ptr).add(reg_ptr, reg_ptr, 4)
            sub(reg_k, reg_k, 1, cond="pushz")
            nop(sig=ldunifa)                        # x[k] -> r5 in every lane
            nop(sig=ldtmu(r1))                      # waits for the load issued two instructions ago
            col_loop.b(cond="anyna")
            nop().fmul(r1, r1, r5)
            fadd(reg_acc, reg_acc, r1)
            nop()
        mov(tmud, reg_acc)
        add(tmua, reg_out, reg_lane4)
        add(reg_items, reg_items, 15)
        add(reg_items, reg_items, 15)
        add(reg_items, reg_items, 15)
        add(reg_items, reg_items, 15)
        add(reg_items, reg_items, 4)
        emit_loop_end(asm, item_loop, reg_n)
    L.done
    tmuwt()
    emit_program_end(asm)


def gemv_f32_simple(drv, w: np.ndarray, x: np.ndarray, threads: int = 8):
    """Version 1 on f32 w [rows, cols] (rows a multiple of 16), x f32 [cols]: returns (y, counters)."""
    rows, cols = w.shape
    if rows % 16:
        raise PimoeError(f"gemv_f32_simple: rows {rows} must be a multiple of 16")
    W = drv.alloc((rows, cols), dtype=np.float32)
    W[:] = w
    scratch = Scratch(drv, 4 * (cols + rows + 64 * (rows // 16 + threads) + 64))
    xs, xaddr = scratch.take(cols)
    xs.view(np.float32)[:] = x
    out, oaddr = scratch.take(rows)
    items = [[base_address(W) + 16 * g * 4 * cols, oaddr + 64 * g] for g in range(rows // 16)]
    table = write_tables(scratch, items, threads)
    unif, uaddr = scratch.take(4)
    unif[:] = [table, cols, 4 * cols, xaddr]
    code = drv.program(qpu_gemv_f32_simple, threads=threads)
    counters, _ = launch(drv, code, uaddr, threads)
    return out.view(np.float32).copy(), counters


def gemv_f32_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """w f32 [rows, cols], x f32 [cols] or [T, cols] -> f64 [rows] / [T, rows]."""
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64).T


def main(argv=None) -> int:
    from gguf import GGMLQuantizationType as QT

    from pimoe.qpu import open_driver

    rng = np.random.default_rng(0)
    for rows, cols in ((768, 2048),):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        x = rng.standard_normal(cols).astype(np.float32)
        with open_driver("emu", data_area_size=16 << 20) as drv:
            y, c = gemv_f32_simple(drv, w, x)
        err = float(np.max(np.abs(y - gemv_f32_reference(w, x))) / np.max(np.abs(gemv_f32_reference(w, x))))
        text = f"{c.total_instructions * 16 / (rows * cols):.2f} instructions per weight"
        try:
            from pimoe.qpu.timing import predict

            p = predict(c, waits="ldtmu")        # each ldtmu right after its load: measured
            text += f"; {p.label}: {p.seconds * 1e3:.3f} ms, {c.tmu_read_bytes / p.seconds / 1e9:.2f} GB/s ({p.bound})"
        except ImportError:
            pass
        print(f"gemv f32 v1 (no pipelining) {rows}x{cols}: rel err {err:.1e}; {text}")
    for threads in (1, 4, 8):
        with open_driver("emu", data_area_size=64 << 20) as drv:
            err, counters, seconds = run(drv, QT.F32, 256, 512, threads=threads)
        print(f"gemv f32 256x512 on {threads} threads: rel err {err:.1e}; "
              f"{describe(counters, 256, 512, 1, QT.F32, seconds)}")
    check_real_shapes((QT.F32,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
