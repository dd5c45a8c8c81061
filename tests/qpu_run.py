"""What the QPU tests share: the py-videocore6-style program pieces their kernels are written with, and one way
to run a kernel on the emulator with its buffers.

The program pieces emit exactly the instructions the tests used to write out by hand (so the words of every
test kernel are unchanged); the program end is the kernels' own `qpu_kernels.emit.emit_program_end`.
"""

from __future__ import annotations

import numpy as np

from pimoe.qpu import EmuDriver, qpu
from qpu_kernels.emit import emit_program_end

__all__ = ["emit_program_end", "lane_addresses", "run_kernel", "store_and_end", "store_row"]


@qpu
def lane_addresses(asm, *regs) -> None:
    """Each reg = the next uniform (a buffer address) + 4 * lane, the py-videocore6 tests' prologue; r0 is
    left holding 4 * lane."""
    eidx(r0, sig=ldunifrf(regs[0]))
    for reg in regs[1:]:
        nop(sig=ldunifrf(reg))
    shl(r0, r0, 2)
    for reg in regs:
        add(reg, reg, r0)


@qpu
def store_row(asm, src, ptr) -> None:
    """Store src's 16 lanes at ptr, wait for the store, and step ptr by r3 (the kernels set r3 = 64: a row)."""
    mov(tmud, src)
    mov(tmua, ptr)
    tmuwt().add(ptr, ptr, r3)


@qpu
def store_and_end(asm, src, addr) -> None:
    """Store src's 16 lanes at addr, wait for the store, end the program."""
    mov(tmud, src)
    mov(tmua, addr)
    tmuwt()
    emit_program_end(asm)


def run_kernel(kernel, *buffers, thread: int = 1, data_area_size: int = 1 << 16, driver_kw=None,
               kernel_kw=None, extra_uniforms=(), **execute_kw):
    """Run `kernel` (with `kernel_kw`) on a fresh EmuDriver, one 16-lane invocation per batch.

    Each of `buffers` (an ndarray: its shape, dtype and initial contents) is copied into GPU memory, and the
    uniforms are their addresses in order, then `extra_uniforms`. Returns (the buffers' contents after the
    dispatch, as plain arrays, the dispatch's EmuCounters)."""
    # check_allocations: pimoe's own programs must stay inside the Arrays they were given (stricter than
    # the Pi, which only faults outside the buffer object): an over-read here is a bug in the kernel
    with EmuDriver(data_area_size=data_area_size, **{"check_allocations": True, **(driver_kw or {})}) as drv:
        code = drv.program(kernel, **(kernel_kw or {}))
        mem = []
        for host in buffers:
            host = np.asarray(host)
            buf = drv.alloc(host.shape, dtype=host.dtype)
            buf[...] = host
            mem.append(buf)
        unif = drv.alloc(max(1, len(mem) + len(extra_uniforms)), dtype=np.uint32)
        unif[:len(mem) + len(extra_uniforms)] = [int(b.addresses().flat[0]) for b in mem] + list(extra_uniforms)
        counters = drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=thread,
                               **execute_kw)
        return [np.array(b) for b in mem], counters
