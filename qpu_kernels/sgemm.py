"""SGEMM on the QPUs: C = alpha * A @ B + beta * C in 16 x 16 tiles (f32, row-major).

One thread computes one 16 x 16 tile of C at a time, its 16 rows accumulated in rf0..rf15 (lane = column).
For every k it loads a column of A (lane r = A[row0 + r, k]) and a row of B (lane c = B[k, col0 + c]),
then for each r broadcasts A[row0 + r, k] to all lanes (rotate into r5rep) and adds that times the B row
to accumulator row r: 2 instructions per multiply-add of 16 lanes. The epilogue loads each C row, scales
and stores it.

Each thread reads its parameters from a table (one 16-word row per thread, indexed by the thread id from
tidx): [tiles, Q, A row stride, B row stride, C row stride, alpha, beta, tile list address]; the tile
list holds (A tile, B tile, C tile) addresses, 4 words per tile. The host deals tiles round-robin.
Registers rf0..rf29: fits 1 or 2 threads per QPU (thread counts 1..8 and 16), not 4.

    python -m qpu_kernels.sgemm              # checks thread counts 1..8, 16 against numpy in the emulator
"""

from __future__ import annotations

import sys

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from qpu_kernels.emit import (emit_broadcast, emit_load_uniforms, emit_loop_end, emit_program_end,
                              emit_skip_if_zero, emit_thread_id)
from qpu_kernels.launch import launch_with_table, param_table

THREAD_COUNTS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
PARAMS = 8  # words per thread in the parameter table (padded to 16)


@qpu
def qpu_sgemm(asm, *, threads: int):
    reg_tiles, reg_q, reg_a_stride, reg_b_stride, reg_c_stride = rf18, rf19, rf20, rf21, rf22
    reg_alpha, reg_beta, reg_list = rf23, rf24, rf25
    reg_a, reg_b, reg_c, reg_k = rf26, rf27, rf28, rf29
    # my row of the parameter table: uniforms are (table address, row bytes)
    emit_thread_id(asm, r0, threads)
    emit_load_uniforms(asm, rf16, rf17)
    umul24(r0, r0, rf17)
    eidx(r1).add(r0, r0, rf16)
    shl(r1, r1, 2)
    add(tmua, r0, r1)
    nop(sig=ldtmu(r2))
    nop()                                       # a rotate source must not be written just before
    for lane, reg in enumerate([reg_tiles, reg_q, reg_a_stride, reg_b_stride, reg_c_stride, reg_alpha, reg_beta,
                                reg_list]):
        emit_broadcast(asm, reg, r2, lane)
    emit_skip_if_zero(asm, reg_tiles, R.done)   # no tile for this thread
    with loop as tile_loop:
        # this tile's (A, B, C) addresses
        eidx(r1)
        shl(r1, r1, 2)
        add(tmua, reg_list, r1).add(reg_list, reg_list, 8)
        nop(sig=ldtmu(r2))
        add(reg_list, reg_list, 8)             # 16 bytes per tile entry
        emit_broadcast(asm, reg_a, r2, 0)
        emit_broadcast(asm, reg_b, r2, 1)
        emit_broadcast(asm, reg_c, r2, 2)
        eidx(r1)
        umul24(r0, r1, reg_a_stride)            # lane r reads row r of the A tile
        add(reg_a, reg_a, r0)
        shl(r1, r1, 2)                          # lane c reads column c of the B tile
        add(reg_b, reg_b, r1)
        add(reg_c, reg_c, r1)
        for i in range(8):
            mov(rf[2 * i], 0.0).mov(rf[2 * i + 1], 0.0)
        mov(reg_k, reg_q)
        with loop as k_loop:
            mov(tmua, reg_a).add(reg_a, reg_a, 4)
            mov(tmua, reg_b, sig=thrsw).add(reg_b, reg_b, reg_b_stride)
            sub(reg_k, reg_k, 1, cond='pushz')
            nop()
            nop(sig=ldtmu(r0))                  # r0: A column (lane = row)
            nop(sig=ldtmu(r1))                  # r1: B row (lane = column)
            mov(r5rep, r0)
            for r in range(16):
                if r == 0:
                    nop().fmul(r3, r5, r1)
                else:
                    fadd(rf[r - 1], rf[r - 1], r3).rotate(r5rep, r0, -r)
                    nop().fmul(r3, r5, r1)
            k_loop.b(cond='anyna')
            fadd(rf15, rf15, r3)                # delay slots
            nop()
            nop()
        # C rows: C = alpha * acc + beta * C
        for r in range(16):
            mov(tmua, reg_c)
            nop(sig=ldtmu(r2))
            nop().fmul(r2, r2, reg_beta)
            nop().fmul(r3, rf[r], reg_alpha)
            fadd(tmud, r3, r2)
            mov(tmua, reg_c).add(reg_c, reg_c, reg_c_stride)
            tmuwt()
        emit_loop_end(asm, tile_loop, reg_tiles)
    L.done
    emit_program_end(asm)


def sgemm_reference(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray) -> np.ndarray:
    return (alpha * (a.astype(np.float64) @ b.astype(np.float64)) + beta * c.astype(np.float64)).astype(np.float32)


def random_operands(drv, p: int, q: int, r: int, seed: int):
    """The published benchmark's operands, random: A [p, q], B [q, r], C [p, r] f32 in driver memory and
    scalars alpha, beta. Returns (a, b, c, c0, alpha, beta), c0 a host copy of C before the kernel runs."""
    rng = np.random.default_rng(seed)
    a = drv.alloc((p, q), dtype=np.float32)
    b = drv.alloc((q, r), dtype=np.float32)
    c = drv.alloc((p, r), dtype=np.float32)
    a[:] = rng.standard_normal((p, q)).astype(np.float32)
    b[:] = rng.standard_normal((q, r)).astype(np.float32)
    c0 = rng.standard_normal((p, r)).astype(np.float32)
    c[:] = c0
    alpha, beta = np.float32(rng.standard_normal()), np.float32(rng.standard_normal())
    return a, b, c, c0, alpha, beta


def check_result(c, a, b, c0, alpha, beta, what: str, check: bool = True) -> float:
    """Max |C - reference| relative to the typical entry magnitude |alpha| sqrt(Q) + |beta|; raises when
    check and it exceeds 1e-5. what: the run, for the message."""
    ref = sgemm_reference(alpha, np.asarray(a), np.asarray(b), beta, c0)
    scale = np.abs(alpha) * np.sqrt(a.shape[1]) + np.abs(beta)
    err = float(np.max(np.abs(np.asarray(c) - ref)) / scale)
    if check and err > 1e-5:
        raise PimoeError(f"{what}: error {err:.2e} relative to the entry scale")
    return err


def run(drv, *, p: int, q: int, r: int, threads: int = 8, check: bool = True, seed: int = 0):
    """C = alpha A B + beta C with random P x Q, Q x R, P x R matrices on `threads` QPU threads;
    returns (counters, seconds, max relative error). P and R must be multiples of 16."""
    if p % 16 or r % 16 or min(p, q, r) <= 0:
        raise PimoeError(f"sgemm: P={p} and R={r} must be positive multiples of 16, Q={q} positive")
    if threads not in THREAD_COUNTS:
        raise PimoeError(f"sgemm: {threads} threads; supported: {THREAD_COUNTS} (4 threads per QPU leave "
                         f"too few registers)")
    code = drv.program(qpu_sgemm, threads=threads)
    a, b, c, c0, alpha, beta = random_operands(drv, p, q, r, seed)
    tiles = [(i, j) for i in range(p // 16) for j in range(r // 16)]
    per_thread = [tiles[t::threads] for t in range(threads)]
    tile_list = drv.alloc((len(tiles), 4), dtype=np.uint32)
    table = param_table(drv, threads)
    row = 0
    for t, mine in enumerate(per_thread):
        for k, (i, j) in enumerate(mine):
            tile_list[row + k, :3] = [a.addresses()[16 * i, 0], b.addresses()[0, 16 * j],
                                      c.addresses()[16 * i, 16 * j]]
        list_addr = tile_list.addresses()[row, 0] if row < len(tiles) else 0
        table[t, :PARAMS] = [len(mine), q, a.strides[0], b.strides[0], c.strides[0],
                             alpha.view(np.uint32), beta.view(np.uint32), list_addr]
        row += len(mine)
    counters, seconds = launch_with_table(drv, code, table, threads)
    err = check_result(c, a, b, c0, alpha, beta, f"sgemm {p}x{q}x{r} on {threads} threads", check)
    return counters, seconds, err


def main(argv=None) -> int:
    from pimoe.qpu import open_driver

    for threads in THREAD_COUNTS:
        with open_driver("emu", data_area_size=1 << 20) as drv:
            counters, seconds, err = run(drv, p=64, q=48, r=64, threads=threads)
        print(f"sgemm 64x48x64 on {threads:2d} threads: matches numpy (max error {err:.1e} of the entry "
              f"scale); {counters.total_instructions} instructions, {seconds:.3f} s emulated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
