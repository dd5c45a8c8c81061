"""memset on the QPUs: fill a uint32 buffer with one value using 16-byte (vec4) TMU stores only.

The work of py-videocore6's examples/memset.py (the 3751 MB/s figure: 64 MiB on 8 QPUs, 1 thread each,
unroll 32): no loads at all, so the time is the TMU/DRAM write path. Work split: the buffer is a sequence
of 256-byte rows (16 lanes x 16 bytes); QPU q writes rows q, q + 8, q + 16, ... Each store is four tmud
writes (the vec4 data) and one tmua write (the address): 5 instructions per 256 bytes per QPU. One loop
trip writes `unroll // 4` rows, so a trip stores 16 * unroll words per QPU, as in the published kernel.

    python -m qpu_kernels.memset             # checks the kernel against numpy in the emulator
"""

from __future__ import annotations

import sys

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from qpu_kernels.emit import emit_program_end
from qpu_kernels.launch import check_equal, launch

N_QPUS = 8          # one thread on each of the 8 QPUs (thread=8), as the published example
ROW_BYTES = 256     # one vec4 store of 16 lanes
DEFAULT_UNROLL = 32  # the published example's unroll_shift=5


@qpu
def qpu_memset(asm, *, unroll: int = DEFAULT_UNROLL):
    # uniforms: dst address, fill value, trips (loop trips per QPU)
    if unroll < 4 or unroll % 4:
        raise PimoeError(f"memset: unroll {unroll} must be a positive multiple of 4 (4 words per vec4 store)")
    reg_dst, reg_fill, reg_trips, reg_stride = rf0, rf1, rf2, rf3
    nop(sig=ldunifrf(reg_dst))
    nop(sig=ldunifrf(reg_fill))
    nop(sig=ldunifrf(reg_trips))
    tidx(r0)
    shr(r0, r0, 2)
    band(r0, r0, 7)                     # QPU number (1 thread per QPU)
    shl(r0, r0, 4)
    eidx(r1)
    add(r0, r0, r1)                     # global lane = 16 * qpu + lane
    shl(r0, r0, 4)                      # 16 bytes per lane
    add(reg_dst, reg_dst, r0)
    mov(r0, 1)
    shl(reg_stride, r0, 11)             # 8 QPUs x 256 bytes between one QPU's rows
    mov(r3, 1)                          # the trip decrement (an accumulator: rf2 already uses raddr_b)
    stores = unroll // 4
    with loop as l:
        for i in range(stores):
            if i == stores - 1:
                # the loop test rides in the last store, its last 3 instructions fill the delay slots
                mov(tmud, reg_fill)
                mov(tmud, reg_fill).sub(reg_trips, reg_trips, r3, cond='pushz')
                l.b(cond='anyna')
                mov(tmud, reg_fill)
                mov(tmud, reg_fill)
                mov(tmua, reg_dst).add(reg_dst, reg_dst, reg_stride)
            else:
                for _ in range(4):
                    mov(tmud, reg_fill)
                mov(tmua, reg_dst).add(reg_dst, reg_dst, reg_stride)
    tmuwt()                             # the stores complete before the program ends
    emit_program_end(asm)


def memset_reference(n: int, fill: int) -> np.ndarray:
    return np.full(n, fill, dtype=np.uint32)


def run(drv, *, nbytes: int, fill: int = 0x5A5A5A5A, unroll: int = DEFAULT_UNROLL, check: bool = True):
    """Fill `nbytes` (a multiple of 64 * unroll * 8) with `fill` on 8 QPUs; returns (counters, seconds)."""
    per_trip = 4 * 16 * unroll * N_QPUS
    if nbytes <= 0 or nbytes % per_trip:
        raise PimoeError(f"memset: {nbytes} bytes must be a positive multiple of {per_trip} "
                         f"(4 bytes x 16 lanes x unroll {unroll} x {N_QPUS} QPUs)")
    code = drv.program(qpu_memset, unroll=unroll)
    x = drv.alloc(nbytes // 4, dtype=np.uint32)
    unif = drv.alloc(3, dtype=np.uint32)
    x[:] = ~np.uint32(fill)
    unif[:] = [x.addresses()[0], fill & 0xFFFFFFFF, nbytes // per_trip]
    counters, seconds = launch(drv, code, unif, N_QPUS)
    if check:
        check_equal(x, memset_reference(len(x), fill), "memset (words)")
    return counters, seconds


def main(argv=None) -> int:
    from pimoe.qpu import open_driver

    nbytes = 64 * 1024
    with open_driver("emu", data_area_size=nbytes + (1 << 16)) as drv:
        counters, seconds = run(drv, nbytes=nbytes)
    print(f"memset {nbytes} bytes on {N_QPUS} QPUs: equal to numpy; {counters.total_instructions} instructions, "
          f"{counters.tmu_write_bytes} bytes written, {seconds:.3f} s emulated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
