"""Streaming kernels with 16-byte (vec4) TMU lookups: the work and instruction mix of the two kernels behind
py-videocore6's published read and copy figures, for calibrating pimoe.qpu.timing.

What the published kernels do (Idein/py-videocore6 examples/summation.py and scopy.py; read for their
behaviour, nothing copied), and what the kernels here do the same way:

- 8 QPUs x 1 thread (thread=8, threading off). The data is a sequence of 256-byte rows (16 lanes x 16
  bytes); QPU q reads rows q, q + 8, q + 16, ... so a lane's address advances 2048 bytes per lookup.
- Every lookup is a vec4: its config byte is 0xfc (per-pixel, regular, vec4 of 32 bits), taken from a
  config word in the uniform stream by a `tmuau` write -- one word configures the next four lookups --
  and at the end of every loop trip the branch moves the uniform stream back by a relative offset (the
  last uniform), so the same config words serve every trip.
- One thread switch before the loop and none inside it: the thread then issues loads without thrsw and
  reads their results with ldtmu as they arrive.
- summation (uint32, 8 vec4 loads per trip): at most 2 vec4 loads in flight (8 results: the thread's
  TMU result FIFO with threading off), each of the 32 results added to a 16-lane sum by the instruction
  that reads the next one; 35 instructions per trip, as the published loop with unroll_shift=2.
- scopy (float32, unroll 1): per trip two vec4 loads of consecutive rows, a prefetch of the next trip's
  first row (config byte 0x80: op 0, no result returned), then each row's 4 results written back as one
  vec4 store (4 tmud writes, then the address); the second store's config comes from a `tmuc` write.
  18 instructions per trip, as the published loop.

    python -m qpu_kernels.vec4_stream      # runs both small and checks them against numpy
"""

from __future__ import annotations

import sys

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from qpu_kernels.emit import emit_load_uniforms, emit_program_end, emit_thread_id
from qpu_kernels.launch import check_equal, check_sum, launch

N_QPUS = 8                   # 1 thread on each QPU
ROW = 256                    # bytes of one vec4 lookup of 16 lanes
STRIDE = ROW * N_QPUS        # bytes between one QPU's rows
CFG_VEC4 = 0xFC              # per-pixel, regular op, vec4 of 32 bits
CFG_PREFETCH = 0x80          # per-pixel, op 0 on a load: prefetch (no result to the QPU)
SUM_LOADS = 8                # vec4 loads per summation trip (two config words)
TMUC_VEC4 = -4               # tmuc word 0xfffffffc as a small immediate: the next lookup vec4, then plain


def _alloc16(drv, n: int, dtype):
    """n elements starting on a 16-byte boundary: a vec4 lookup's 4 words wrap within their 16-byte
    block (as on the hardware), so a row that is not 16-byte aligned would be read and written rotated."""
    buf = drv.alloc(n + 16 // np.dtype(dtype).itemsize, dtype=dtype)
    skip = (-int(buf.addresses()[0]) % 16) // np.dtype(dtype).itemsize
    return buf[skip:skip + n]


def _config_word(*cfg_bytes: int) -> int:
    """One TMU config word: byte i configures the i-th next lookup (0xff = plain 32-bit)."""
    word = 0xFFFFFFFF
    for i, b in enumerate(cfg_bytes):
        word &= ~(0xFF << (8 * i)) & 0xFFFFFFFF
        word |= b << (8 * i)
    return word


@qpu
def _emit_setup(asm, reg_a, reg_b, shift_b: int) -> None:
    """reg_a += 16 * g and reg_b += g << shift_b for this lane's global index g = 16 * qpu + lane;
    r2 = STRIDE (an accumulator, so a loop instruction can read two register-file operands besides it)."""
    emit_thread_id(asm, r0, N_QPUS)      # the QPU number (1 thread per QPU)
    shl(r0, r0, 4)
    eidx(r1)
    add(r0, r0, r1)
    shl(r1, r0, 4)
    shl(r0, r0, shift_b).add(reg_a, reg_a, r1)
    add(reg_b, reg_b, r0)
    mov(r0, 1)
    shl(r2, r0, 11)                      # STRIDE = 2048
    mov(r1, 1)                           # the trip decrement


# ---- summation --------------------------------------------------------------------------------------------

@qpu
def qpu_vec4_sum(asm):
    """partial[16 * qpu + lane] = sum (mod 2^32) of the lane's 4 words of each of its QPU's rows.
    uniforms: src, partial (128 uint32), trips, 2 config words, the rewind offset (-12)."""
    reg_src, reg_dst, reg_trips, reg_sum = rf0, rf1, rf2, rf3
    emit_load_uniforms(asm, reg_src, reg_dst, reg_trips)
    _emit_setup(asm, reg_src, reg_dst, 2)
    nop(sig=thrsw)                       # the one thread switch; afterwards loads need none
    mov(reg_sum, 0)
    sub(reg_trips, reg_trips, r1, cond='pushz')      # the flags the first trip's branch tests
    results = 4 * SUM_LOADS
    with loop as l:
        mov(tmuau, reg_src).add(reg_src, reg_src, r2)            # load 0 (config word 1)
        mov(tmua, reg_src, sig=ldtmu(r0)).add(reg_src, reg_src, r2)   # load 1, result 0
        for j in range(1, results):
            # result j: the add takes result j - 1 (in r0) while r0 receives result j
            if j == results - 2:
                l.b(cond='anyna').unif_addr(absolute=False)     # the last two reads + final add: delay slots
            ins = add(reg_sum, reg_sum, r0, sig=ldtmu(r0))
            load, part = divmod(j, 4)
            nxt = load + 1
            if part == 0 and 2 <= nxt < SUM_LOADS:
                # result 0 of load `load` freed the FIFO entries of load - 1: issue load + 1
                ins.mov(tmuau if nxt % 4 == 0 else tmua, reg_src)
            elif part == 1 and 2 <= nxt < SUM_LOADS:
                ins.add(reg_src, reg_src, r2)
        add(reg_sum, reg_sum, r0).sub(reg_trips, reg_trips, r1, cond='pushz')   # flags for the next trip
    mov(tmud, reg_sum)
    mov(tmua, reg_dst)
    tmuwt()
    barrierid(syncb, sig=thrsw)          # every QPU's loads done before the program ends
    nop()
    nop()
    emit_program_end(asm)


def sum_uniforms(src: int, dst: int, trips: int) -> list[int]:
    words = [_config_word(*[CFG_VEC4] * 4)] * (SUM_LOADS // 4)
    return [src, dst, trips, *words, (-4 * (len(words) + 1)) & 0xFFFFFFFF]


def run_vec4_sum(drv, *, nbytes: int, check: bool = True, seed: int = 0):
    """Sum nbytes of random uint32 on 8 QPUs; returns (counters, host seconds)."""
    per_trip = ROW * SUM_LOADS * N_QPUS
    if nbytes <= 0 or nbytes % per_trip:
        raise PimoeError(f"vec4 summation: {nbytes} bytes must be a positive multiple of {per_trip}")
    code = drv.program(qpu_vec4_sum)
    x = _alloc16(drv, nbytes // 4, np.uint32)
    partial = drv.alloc(16 * N_QPUS, dtype=np.uint32)
    words = sum_uniforms(x.addresses()[0], partial.addresses()[0], nbytes // per_trip)
    unif = drv.alloc(len(words), dtype=np.uint32)
    x[:] = np.random.default_rng(seed).integers(0, 1 << 32, size=len(x), dtype=np.uint32)
    partial[:] = 0
    unif[:] = words
    counters, seconds = launch(drv, code, unif, N_QPUS)
    if check:
        check_sum(partial, x, "vec4 summation")
    return counters, seconds


# ---- scopy ------------------------------------------------------------------------------------------------

@qpu
def qpu_vec4_scopy(asm):
    """y[:] = x[:] (float32) with vec4 loads and stores. uniforms: src, dst, trips, 1 config word
    (load, load, prefetch, store), the rewind offset (-8)."""
    reg_src, reg_dst, reg_trips = rf0, rf1, rf2
    emit_load_uniforms(asm, reg_src, reg_dst, reg_trips)
    _emit_setup(asm, reg_src, reg_dst, 4)
    nop(sig=thrsw)
    nop()
    nop()
    with loop as l:
        mov(tmuau, reg_src).add(reg_src, reg_src, r2)            # row t
        mov(tmua, reg_src).add(reg_src, reg_src, r2)             # row t + 1
        mov(tmua, reg_src)                                       # prefetch row t + 2 (the next trip's)
        # a row's 4 results become a store's 4 tmud writes; a result is readable the instruction after
        # its ldtmu, and (as in the published kernel) the 4th tmud never rides with an ldtmu
        nop(sig=ldtmu(r0))
        mov(tmud, r0, sig=ldtmu(r0))
        mov(tmud, r0, sig=ldtmu(r0))
        mov(tmud, r0)
        nop(sig=ldtmu(r0))
        mov(tmud, r0).sub(reg_trips, reg_trips, r1, cond='pushz')
        mov(tmua, reg_dst).add(reg_dst, reg_dst, r2)             # store row t
        mov(tmuc, TMUC_VEC4)                                     # config of the next lookup (store t + 1)
        nop(sig=ldtmu(r0))
        mov(tmud, r0, sig=ldtmu(r0))
        mov(tmud, r0, sig=ldtmu(r0))
        l.b(cond='anyna').unif_addr(absolute=False)
        mov(tmud, r0, sig=ldtmu(r0))                             # delay slots: the rest of store t + 1
        mov(tmud, r0)
        mov(tmua, reg_dst).add(reg_dst, reg_dst, r2)
    barrierid(syncb, sig=thrsw)
    nop()
    nop()
    emit_program_end(asm)


def scopy_uniforms(src: int, dst: int, trips: int) -> list[int]:
    return [src, dst, trips, _config_word(CFG_VEC4, CFG_VEC4, CFG_PREFETCH, CFG_VEC4), (-8) & 0xFFFFFFFF]


def run_vec4_scopy(drv, *, nbytes: int, check: bool = True, seed: int = 0):
    """Copy nbytes of float32 on 8 QPUs (a trip copies 2 rows per QPU); returns (counters, host seconds).
    The last trip prefetches the row after the end: the source buffer has one spare row per QPU."""
    per_trip = 2 * ROW * N_QPUS
    if nbytes <= 0 or nbytes % per_trip:
        raise PimoeError(f"vec4 scopy: {nbytes} bytes must be a positive multiple of {per_trip}")
    code = drv.program(qpu_vec4_scopy)
    x = _alloc16(drv, (nbytes + STRIDE) // 4, np.float32)
    y = _alloc16(drv, nbytes // 4, np.float32)
    words = scopy_uniforms(x.addresses()[0], y.addresses()[0], nbytes // per_trip)
    unif = drv.alloc(len(words), dtype=np.uint32)
    x[:] = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    y[:] = 0
    unif[:] = words
    counters, seconds = launch(drv, code, unif, N_QPUS)
    if check:
        check_equal(y, x[:len(y)], "vec4 scopy")
    return counters, seconds


def main(argv=None) -> int:
    from pimoe.qpu import open_driver

    with open_driver("emu", data_area_size=1 << 20) as drv:
        c, _ = run_vec4_sum(drv, nbytes=2 * ROW * SUM_LOADS * N_QPUS)
        print(f"vec4 summation: equal to numpy; {c.total_instructions} instructions, {c.tmu_read_bytes} bytes read")
        c, _ = run_vec4_scopy(drv, nbytes=4 * ROW * N_QPUS)
        print(f"vec4 scopy: equal to numpy; {c.total_instructions} instructions, {c.tmu_read_bytes} read, "
              f"{c.tmu_write_bytes} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
