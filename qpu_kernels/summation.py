"""Summation of a large uint32 array on the QPUs: the streaming-read kernel behind the bandwidth figure.

Work split: the array is viewed as rows of 16 elements; thread `id` (0..threads-1) reads rows id,
id + threads, id + 2*threads, ... (one TMU load of 16 lanes x 4 bytes per row), keeps a 16-lane running
sum, and writes it to partial[id]. The host adds the partials (mod 2^32, like the hardware's adds).
Loads are issued `DEPTH` at a time before they are consumed, and the thread yields (thrsw) while its
loads are in flight, so 2 or 4 threads per QPU overlap memory latency. DEPTH = 4 fits the TMU result
FIFO even in 4-thread mode (16 entries / 4 threads).

    python -m qpu_kernels.summation          # checks every thread count against numpy in the emulator

"""

from __future__ import annotations

import functools
import sys

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from qpu_kernels.emit import emit_load_uniforms, emit_program_end, emit_thread_id
from qpu_kernels.launch import check_sum, launch, self_check

DEPTH = 4  # TMU loads in flight per thread
THREAD_COUNTS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)  # 1..8 QPUs x 1 thread, 8 QPUs x 2 and x 4 threads


@qpu
def qpu_summation(asm, *, threads: int, barrier: bool = True):
    # uniforms: src address, partials address, trips (row blocks per thread), stride (bytes between rows)
    reg_src, reg_dst, reg_trips, reg_stride, reg_sum = rf0, rf1, rf2, rf3, rf4
    emit_load_uniforms(asm, reg_src, reg_dst, reg_trips, reg_stride)
    emit_thread_id(asm, r0, threads)
    # r1 = 4 * (16 * id + lane): this lane's byte offset in the first row, and in partials
    shl(r1, r0, 4)
    eidx(r2)
    add(r1, r1, r2)
    shl(r1, r1, 2)
    add(reg_src, reg_src, r1).mov(reg_sum, 0)
    add(reg_dst, reg_dst, r1)
    with loop as l:
        for i in range(DEPTH - 1):
            mov(tmua, reg_src).add(reg_src, reg_src, reg_stride)
        mov(tmua, reg_src, sig=thrsw).add(reg_src, reg_src, reg_stride)  # yield while the loads fly
        sub(reg_trips, reg_trips, 1, cond='pushz')
        nop()
        nop(sig=ldtmu(r0))
        for i in range(DEPTH - 1):
            add(reg_sum, reg_sum, r0, sig=ldtmu(r0))
        l.b(cond='anyna')
        add(reg_sum, reg_sum, r0)  # delay slots
        nop()
        nop()
    mov(tmud, reg_sum)
    mov(tmua, reg_dst)
    tmuwt()
    if barrier:
        # every thread of the dispatch meets here before ending (exercises syncb across QPUs/threads)
        barrierid(syncb, sig=thrsw)
        nop()
        nop()
    emit_program_end(asm)


def summation_reference(x: np.ndarray) -> int:
    """Sum of a uint32 array mod 2^32 (numpy)."""
    return int(np.sum(x, dtype=np.uint64) % (1 << 32))


def run(drv, *, length: int, threads: int = 8, check: bool = True, seed: int = 0, num_qpus: int | None = None):
    """Sum `length` random uint32 on `threads` QPU threads; returns (counters, seconds). length must be a
    multiple of 16 * DEPTH * threads."""
    if num_qpus is not None:
        threads = num_qpus
    if length <= 0 or length % (16 * DEPTH * threads):
        raise PimoeError(f"summation: length {length} must be a positive multiple of 16*{DEPTH}*{threads}")
    code = drv.program(qpu_summation, threads=threads)
    x = drv.alloc(length, dtype=np.uint32)
    partial = drv.alloc((threads, 16), dtype=np.uint32)
    unif = drv.alloc(4, dtype=np.uint32)
    x[:] = np.random.default_rng(seed).integers(0, 1 << 32, size=length, dtype=np.uint32)
    partial[:] = 0
    unif[:] = [x.addresses()[0], partial.addresses()[0, 0], length // (16 * DEPTH * threads), 64 * threads]
    counters, seconds = launch(drv, code, unif, threads)
    if check:
        check_sum(partial, x, f"summation on {threads} threads")
    return counters, seconds


def main(argv=None) -> int:
    lengths = {threads: 16 * DEPTH * threads * 64 for threads in THREAD_COUNTS}
    return self_check((f"summation {n} x uint32 on {t:2d} threads", 4 * n + (1 << 16),
                       functools.partial(run, length=n, threads=t)) for t, n in lengths.items())


if __name__ == "__main__":
    sys.exit(main())
