"""memcpy on the QPUs: 32-bit TMU loads, 4-word vector TMU stores.

Work split: the buffer is a sequence of 256-byte blocks (16 lanes x 16 bytes); thread `id` copies blocks
id, id + threads, ... Lane l of a block moves bytes 16*l .. 16*l + 15: it issues 4 loads (one word each,
all in flight together, the thread yields meanwhile), then writes the 4 words to tmud and one address
to tmua, which the TMU performs as one vec4 store. tmuwt at the end makes the stores complete before
the thread ends.

    python -m qpu_kernels.memcpy             # checks every thread count against numpy in the emulator
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from qpu_kernels.emit import emit_load_uniforms, emit_program_end, emit_thread_id
from qpu_kernels.launch import check_equal, launch, self_check

BLOCK_BYTES = 256
THREAD_COUNTS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


@qpu
def qpu_memcpy(asm, *, threads: int):
    # uniforms: src, dst, trips (blocks per thread), stride (bytes between a thread's blocks)
    reg_src, reg_dst, reg_trips, reg_stride = rf0, rf1, rf2, rf3
    emit_load_uniforms(asm, reg_src, reg_dst, reg_trips, reg_stride)
    emit_thread_id(asm, r0, threads)
    shl(r0, r0, 8)                       # 256 bytes per block
    eidx(r1)
    shl(r1, r1, 4)                       # 16 bytes per lane
    add(r0, r0, r1)
    add(reg_src, reg_src, r0)
    add(reg_dst, reg_dst, r0)
    with loop as l:
        mov(tmua, reg_src).add(r1, reg_src, 4)
        mov(tmua, r1).add(r1, r1, 4)
        mov(tmua, r1).add(r1, r1, 4)
        mov(tmua, r1, sig=thrsw).add(reg_src, reg_src, reg_stride)
        sub(reg_trips, reg_trips, 1, cond='pushz')
        nop()
        nop(sig=ldtmu(r0))               # (ldtmu and a tmud write cannot share an instruction)
        nop(sig=ldtmu(r1))
        nop(sig=ldtmu(r2))
        nop(sig=ldtmu(r3))
        mov(tmud, r0)
        mov(tmud, r1)
        l.b(cond='anyna')
        mov(tmud, r2)                    # delay slots
        mov(tmud, r3)
        mov(tmua, reg_dst).add(reg_dst, reg_dst, reg_stride)
    tmuwt()
    emit_program_end(asm)


def memcpy_reference(src: np.ndarray) -> np.ndarray:
    return src.copy()


def run(drv, *, nbytes: int, threads: int = 8, check: bool = True, seed: int = 0):
    """Copy `nbytes` random bytes on `threads` QPU threads; returns (counters, seconds). nbytes must be a
    multiple of 256 * threads."""
    if nbytes <= 0 or nbytes % (BLOCK_BYTES * threads):
        raise PimoeError(f"memcpy: {nbytes} bytes must be a positive multiple of {BLOCK_BYTES}*{threads}")
    code = drv.program(qpu_memcpy, threads=threads)
    src = drv.alloc(nbytes, dtype=np.uint8)
    dst = drv.alloc(nbytes, dtype=np.uint8)
    unif = drv.alloc(4, dtype=np.uint32)
    src[:] = np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
    dst[:] = 0
    unif[:] = [src.addresses()[0], dst.addresses()[0], nbytes // (BLOCK_BYTES * threads), BLOCK_BYTES * threads]
    counters, seconds = launch(drv, code, unif, threads)
    if check:
        check_equal(dst, memcpy_reference(np.asarray(src)), f"memcpy on {threads} threads (bytes)")
    return counters, seconds


def main(argv=None) -> int:
    sizes = {threads: BLOCK_BYTES * threads * 16 for threads in THREAD_COUNTS}
    return self_check((f"memcpy {n} bytes on {t:2d} threads", 2 * n + (1 << 16),
                       functools.partial(run, nbytes=n, threads=t)) for t, n in sizes.items())


if __name__ == "__main__":
    sys.exit(main())
