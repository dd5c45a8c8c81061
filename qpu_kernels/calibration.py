"""Kernels that do the work of py-videocore6's published benchmarks, for calibrating pimoe.qpu.timing.

py-videocore6's README publishes four Pi 4 figures (V3D at 500 MHz): summation 7241 MB/s, memset
3751 MB/s, scopy 2424 MB/s and sgemm 1024^3 in 0.5546 s. The timing model is fitted to them, so the
kernels emulated here must do the same work in the same way as the published ones -- the same number of
QPUs and threads, the same loads and stores of the same widths, the same loop shape, the same number of
loads in flight and the same places where a thread waits (thrsw, tmuwt). What each published kernel does
(from its source in Idein/py-videocore6 examples/) and what the equivalent here does:

- summation and scopy: qpu_kernels/vec4_stream.py (vec4 loads and stores, as the published kernels).
- memset: qpu_kernels/memset.py (vec4 stores only).
- sgemm (1024^3): 8 QPUs x 1 thread, C split into 2 x 4 blocks of 512 x 256; each block in 16 x 16 tiles;
  per k: a gathered load of an A column (lane r = A[r, k]) and a B row load, each followed by a thrsw,
  then 16 broadcast (rotate into r5rep) multiply-adds on both ALUs: 47 instructions per k; per tile an
  epilogue loading each C row (with a thrsw), scaling alpha/beta, storing it (with a tmuwt).

The code is pimoe's own; only the work done is the published kernels'.

    python -m qpu_kernels.calibration      # runs each kernel small and checks it against numpy
"""

from __future__ import annotations

import sys

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from qpu_kernels.sgemm import check_result, random_operands
from qpu_kernels.emit import emit_broadcast, emit_load_uniforms, emit_loop_end, emit_program_end
from qpu_kernels.launch import launch, launch_with_table, param_table

N_QPUS = 8


# ---- sgemm ------------------------------------------------------------------------------------------------

SGEMM_PARAMS = ("tile_rows", "q", "tile_cols", "a", "a_stride", "b", "b_stride", "c", "c_stride", "alpha", "beta")


@qpu
def qpu_sgemm_blocks(asm):
    """C = alpha A B + beta C, one block of C per thread (8 threads, 1 per QPU), 16 x 16 tiles.
    uniforms: parameter table address, table row bytes; row t = SGEMM_PARAMS of thread t (16 words)."""
    reg_rows, reg_q, reg_cols = rf32, rf33, rf34
    reg_a, reg_a_stride, reg_b, reg_b_stride = rf35, rf36, rf37, rf38
    reg_c, reg_c_stride, reg_alpha, reg_beta = rf39, rf40, rf41, rf42
    reg_a_cur, reg_b_cur, reg_c_cur = rf43, rf44, rf45
    reg_i, reg_j, reg_k = rf46, rf47, rf48
    reg_a_tile, reg_b_tile, reg_c_row = rf49, rf50, rf51
    # this thread's row of the parameter table, lane w = word w, broadcast into registers
    tidx(r0, sig=ldunifrf(rf52))
    nop(sig=ldunifrf(rf53))
    shr(r0, r0, 2)
    band(r0, r0, 7)
    umul24(r0, r0, rf53)
    eidx(r1).add(r0, r0, rf52)
    shl(r1, r1, 2)
    add(tmua, r0, r1, sig=thrsw)
    nop()
    nop()
    nop(sig=ldtmu(r2))
    nop()
    regs = [reg_rows, reg_q, reg_cols, reg_a, reg_a_stride, reg_b, reg_b_stride, reg_c, reg_c_stride,
            reg_alpha, reg_beta]
    for lane, reg in enumerate(regs):
        emit_broadcast(asm, reg, r2, lane)
    for i in range(16):
        mov(rf[i], 0.0).mov(rf[i + 16], 0.0)
    # tile loops: i over the block's tile rows, j over its tile columns
    shr(reg_i, reg_rows, 4)
    mov(reg_a_tile, reg_a)
    mov(reg_c_row, reg_c)
    with loop as li:
        shr(reg_j, reg_cols, 4)
        mov(reg_b_tile, reg_b)
        mov(reg_c_cur, reg_c_row)
        with loop as lj:
            mov(reg_a_cur, reg_a_tile)
            mov(reg_b_cur, reg_b_tile)
            mov(reg_k, reg_q)
            with loop as lk:
                # A column: lane r reads A[row0 + r, k]; B row: lane c reads B[k, col0 + c]
                eidx(r0)
                umul24(r1, r0, reg_a_stride)
                add(r1, r1, reg_a_cur).add(reg_a_cur, reg_a_cur, 4)
                mov(tmua, r1, sig=thrsw)
                shl(r1, r0, 2)
                add(r1, r1, reg_b_cur).add(reg_b_cur, reg_b_cur, reg_b_stride)
                mov(tmua, r1, sig=thrsw)
                nop(sig=ldtmu(r0))
                mov(r5rep, r0)
                nop(sig=ldtmu(r4))
                nop().fmul(r3, r5, r4)
                for r in range(1, 16):
                    rotate(r5rep, r0, -r)
                    fadd(rf[r - 1], rf[r - 1], r3).fmul(r3, r5, r4)
                fadd(rf15, rf15, r3)
                emit_loop_end(asm, lk, reg_k)
            # epilogue: C row r = alpha * acc[r] + beta * C row r (one load + thrsw, one store + tmuwt)
            eidx(r0)
            shl(r0, r0, 2)
            add(r1, reg_c_cur, r0)
            for r in range(16):
                mov(tmua, r1, sig=thrsw)
                nop()
                nop()
                nop(sig=ldtmu(r2))
                nop().fmul(r2, r2, reg_beta)
                nop().fmul(r3, rf[r], reg_alpha)
                fadd(tmud, r3, r2)
                mov(tmua, r1).add(r1, r1, reg_c_stride)
                mov(rf[r], 0.0)
                tmuwt()
            shl(r0, 4, 4)                       # 64 bytes: the next 16 columns
            add(reg_b_tile, reg_b_tile, r0)
            add(reg_c_cur, reg_c_cur, r0)
            emit_loop_end(asm, lj, reg_j)
        shl(r0, reg_a_stride, 4)                 # next 16 rows
        add(reg_a_tile, reg_a_tile, r0)
        shl(r0, reg_c_stride, 4)
        add(reg_c_row, reg_c_row, r0)
        emit_loop_end(asm, li, reg_i)
    emit_program_end(asm)


def sgemm_flops(p: int, q: int, r: int) -> int:
    """The FLOP count py-videocore6's sgemm example divides by: 2PQR + 3PR."""
    return 2 * p * q * r + 3 * p * r


def run_sgemm(drv, *, p: int, q: int, r: int, check: bool = True, seed: int = 0):
    """C = alpha A B + beta C with random P x Q, Q x R, P x R on 8 QPUs, C in 2 x 4 blocks (as published);
    P a multiple of 32, R of 64. Returns (counters, seconds, max error relative to the entry scale)."""
    if p % 32 or r % 64 or q <= 0:
        raise PimoeError(f"sgemm: P={p} must be a multiple of 32, R={r} of 64, Q={q} positive")
    code = drv.program(qpu_sgemm_blocks)
    a, b, c, c0, alpha, beta = random_operands(drv, p, q, r, seed)
    table = param_table(drv, N_QPUS)
    bp, br = p // 2, r // 4
    for t in range(N_QPUS):
        i, j = divmod(t, 4)
        table[t, :len(SGEMM_PARAMS)] = [bp, q, br, a.addresses()[bp * i, 0], a.strides[0], b.addresses()[0, br * j],
                                        b.strides[0], c.addresses()[bp * i, br * j], c.strides[0],
                                        alpha.view(np.uint32), beta.view(np.uint32)]
    counters, seconds = launch_with_table(drv, code, table, N_QPUS)
    err = check_result(c, a, b, c0, alpha, beta, f"sgemm {p}x{q}x{r} (2 x 4 blocks)", check)
    return counters, seconds, err


# ---- naive sgemm (the 2019 figure) ------------------------------------------------------------------------

NAIVE_UNIFORMS = ("a", "b", "c", "alpha", "beta", "p", "q", "r")


@qpu
def qpu_sgemm_naive(asm):
    """C = alpha A B + beta C on ONE thread of one QPU (a single 16-lane batch), one 16-column strip of a C
    row at a time, with one multiply-add per k step: the work of py-videocore6's first sgemm example
    (commit d56ef25, 2019), behind its README's 0.8327 s for 123 x 567 times 567 x 512.
    Per k step (9 instructions): a lookup of A[i, k] (every lane the same address) and a thrsw, the loop
    test, a lookup of B[k, j0 + lane] (64 contiguous bytes) and a thrsw, both results read in the thrsw's
    delay slots, the loop branch, and in its delay slots the multiply, the add and the two pointer steps.
    Per strip: C loaded (thrsw), scaled by alpha and beta, stored, tmuwt.
    uniforms: NAIVE_UNIFORMS (addresses, alpha and beta as f32 bits, P, Q, R; R a multiple of 16)."""
    reg_a_row, reg_b_row, reg_c, reg_alpha, reg_beta, reg_p, reg_q, reg_r = (rf[i] for i in range(8))
    reg_b_col, reg_a_k, reg_b_k, reg_i, reg_j, reg_k, reg_row_a, reg_row_b = (rf[i] for i in range(8, 16))
    reg_strip = rf16
    emit_load_uniforms(asm, reg_a_row, reg_b_row, reg_c, reg_alpha, reg_beta, reg_p, reg_q, reg_r)
    eidx(r0)
    shl(r0, r0, 2)                              # lane c reads and writes column j0 + c
    add(reg_b_row, reg_b_row, r0)
    add(reg_c, reg_c, r0)
    shl(reg_strip, 4, 4)                        # 64 bytes: the next 16 columns
    shl(reg_row_a, reg_q, 2)                    # bytes per A row
    shl(reg_row_b, reg_r, 2)                    # bytes per B row
    mov(reg_i, reg_p)
    with loop as li:
        shr(reg_j, reg_r, 4)
        mov(reg_b_col, reg_b_row)
        with loop as lj:
            mov(reg_a_k, reg_a_row).mov(reg_b_k, reg_b_col)
            mov(r0, 0.0).mov(reg_k, reg_q)
            with loop as lk:
                mov(tmua, reg_a_k, sig=thrsw)               # A[i, k] in every lane
                sub(reg_k, reg_k, 1, cond='pushz')
                mov(tmua, reg_b_k, sig=thrsw)               # B[k, j0 .. j0 + 15]
                nop(sig=ldtmu(r1))
                nop(sig=ldtmu(r2))
                lk.b(cond='anyna')
                nop().fmul(r1, r1, r2)
                fadd(r0, r0, r1).add(reg_a_k, reg_a_k, 4)
                add(reg_b_k, reg_b_k, reg_row_b)
            mov(tmua, reg_c, sig=thrsw)                     # this strip of C
            nop().fmul(r0, r0, reg_alpha)
            sub(reg_j, reg_j, 1, cond='pushz')
            nop(sig=ldtmu(r1))
            nop().fmul(r1, r1, reg_beta)
            lj.b(cond='anyna')
            fadd(tmud, r0, r1).add(reg_b_col, reg_b_col, reg_strip)
            mov(tmua, reg_c).add(reg_c, reg_c, reg_strip)
            tmuwt()
        sub(reg_i, reg_i, 1, cond='pushz')
        li.b(cond='anyna')
        add(reg_a_row, reg_a_row, reg_row_a)
        nop()
        nop()
    emit_program_end(asm)


def naive_features(p: int, q: int, r: int) -> tuple[int, int, int, int]:
    """The naive kernel's loop trips: (1, rows, strips, k steps) -- every counter is linear in them."""
    strips = p * (r // 16)
    return (1, p, strips, strips * q)


def run_sgemm_naive(drv, *, p: int, q: int, r: int, check: bool = True, seed: int = 0):
    """The naive sgemm on one 16-lane batch (one QPU, one thread: the 2019 driver's single-batch dispatch);
    R a multiple of 16. Returns (counters, seconds, max error relative to the entry scale)."""
    if r % 16 or min(p, q, r) <= 0:
        raise PimoeError(f"naive sgemm: R={r} must be a positive multiple of 16, P={p} and Q={q} positive")
    code = drv.program(qpu_sgemm_naive)
    a, b, c, c0, alpha, beta = random_operands(drv, p, q, r, seed)
    unif = drv.alloc(len(NAIVE_UNIFORMS), dtype=np.uint32)
    unif[:] = [a.addresses()[0, 0], b.addresses()[0, 0], c.addresses()[0, 0], alpha.view(np.uint32),
               beta.view(np.uint32), p, q, r]
    counters, seconds = launch(drv, code, unif, 1)
    err = check_result(c, a, b, c0, alpha, beta, f"naive sgemm {p}x{q}x{r} (1 thread)", check)
    return counters, seconds, err


def main(argv=None) -> int:
    from pimoe.qpu import open_driver

    with open_driver("emu", data_area_size=1 << 20) as drv:
        c, s, err = run_sgemm(drv, p=64, q=16, r=128)
        print(f"sgemm 64x16x128: matches numpy (error {err:.1e}); {c.total_instructions} instructions")
        c, s, err = run_sgemm_naive(drv, p=5, q=7, r=32)
        print(f"naive sgemm 5x7x32: matches numpy (error {err:.1e}); {c.total_instructions} instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
