"""The small emitters every kernel in qpu_kernels shares: the uniforms into registers, the thread index,
a lane broadcast, a counted loop's bottom, the skip past the work, and the program end. Each is a @qpu fragment called from inside another kernel (`emit_thread_id(dst, threads)`).
"""

from __future__ import annotations

from pimoe.qpu import qpu


def _imm_shift(n: int) -> int:
    """A shift amount as a small immediate: shifts use the amount mod 32, and only -16..15 exist."""
    return n if n < 16 else n - 32


def thread_id_shift(threads: int) -> int:
    """tidx = qpu << 2 | thread (the thread counted in quarters of the register file), so with 1, 2 or 4
    threads per QPU, tidx >> 2, >> 1 or >> 0 numbers the threads densely."""
    return 2 if threads <= 8 else (1 if threads <= 16 else 0)


@qpu
def emit_load_uniforms(asm, *regs) -> None:
    """The next uniforms into `regs`, one per instruction (an instruction carries at most one signal)."""
    for reg in regs:
        nop(sig=ldunifrf(reg))


@qpu
def emit_thread_id(asm, dst, threads: int) -> None:
    """dst = this thread's index 0..threads-1 (bits 4:shift of tidx)."""
    s = thread_id_shift(threads)
    tidx(dst)
    shl(dst, dst, _imm_shift(27))
    shr(dst, dst, _imm_shift(27 + s))


@qpu
def emit_broadcast(asm, dst, vec, lane: int):
    """dst = vec[lane] in every lane (rotate lane `lane` to lane 0 through r5rep, then read r5)."""
    if lane == 0:
        mov(r5rep, vec)
    else:
        rotate(r5rep, vec, -lane)
    mov(dst, r5)


@qpu
def emit_loop_end(asm, loop_label, counter) -> None:
    """The bottom of a counted loop: counter -= 1, back to `loop_label` while any lane's counter is non-zero,
    and the branch's three delay slots left empty."""
    sub(counter, counter, 1, cond='pushz')
    loop_label.b(cond='anyna')
    nop()
    nop()
    nop()


@qpu
def emit_skip_if_zero(asm, reg, target) -> None:
    """Branch to `target` (a label reference, R.name) when `reg` is zero in every lane -- a thread with no
    work; the branch's three delay slots left empty."""
    mov(null, reg, cond='pushz')
    b(target, cond='alla')
    nop()
    nop()
    nop()


@qpu
def emit_program_end(asm) -> None:
    """The end of a program: the last-thrsw pair, its delay slots, then the final thrsw and its slots."""
    nop(sig=thrsw)
    nop(sig=thrsw)
    nop()
    nop()
    nop(sig=thrsw)
    nop()
    nop()
    nop()
