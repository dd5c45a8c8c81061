"""The compiled (numba) interpreter of V3D 4.2 QPU instructions over pre-decoded tables.

State lives in flat numpy arrays so the host can inspect it and re-enter after a budget slice:

    acc   uint32 [CTX, 6, 16]   accumulators r0..r5 of each thread context (CTX = 8 QPUs x 4 slots)
    rf    uint32 [CTX, 64, 16]  register file of each context: a thread may use 64/threads of its QPU's 64
                                registers (rf index checked); beyond that (check off) it gets private ones
    fa/fb uint8  [CTX, 16]      condition flags A and B per lane
    ist   int64  [CTX, N_IST]   scalar state of a context (the I_* columns: pc, uniform pointers, …)
    cnt   int64  [CTX, N_CNT]   counters (the C_* columns)
    tmud  uint32 [CTX, 4, 16]   TMU store data written before the address
    fifo  uint32 [CTX, FIFO_MAX, 16]  TMU load results waiting for ldtmu (a ring)
    rtop  uint32 [CTX, 16]      the multop -> umul24 high-part register
    disp  int64  [N_DISP]       the dispatch (D_* columns)
    bar   int64  [n_supergroups] threads arrived at the barrier of each supergroup
    fault int64  [8]            first fault: code, context, pc, two arguments (host formats it)

A context runs until it yields (thread switch, barrier, end) or its slice is used up; contexts are
visited round-robin, which is how the QPUs' threads interleave for any race-free kernel.
Lane values are handled as int64 inside the loop (masked to 32 bits on store) so numba never mixes
signed/unsigned types; float ops compute in float64 and round once to float32 (correct rounding for
+, -, *), then flush denormals like the hardware.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from pimoe.qpu.emu_decode import (
    F_A_MAGIC, F_A_MUXA, F_A_MUXB, F_A_NSRC, F_A_OP, F_A_PACK, F_A_UNA, F_A_UNB, F_A_WADDR, F_AC, F_APF, F_AUF,
    F_BR_BDI, F_BR_BDU, F_BR_COND, F_BR_LINK, F_BR_OFFSET, F_BR_UB, F_KIND, F_M_MAGIC, F_M_MUXA,
    F_M_MUXB, F_M_NSRC, F_M_OP, F_M_PACK, F_M_UNA, F_M_UNB, F_M_WADDR, F_MC, F_MPF, F_MUF, F_RADDR_A, F_RADDR_B, F_ROT,
    F_SIG, F_SIG_ADDR, F_SIG_MAGIC, F_SMIMM, W_R4, W_R5, W_NOP, W_R5REP, W_UNIFA, W_TMUD, W_SYNC, W_SYNCB,
    W_RECIP, W_RSQRT2, W_TMUA, W_TMUAU, W_TMUC, BD_ABS, BD_REL, BD_LRI, BD_RF, MUX_R5, MUX_A, MUX_B, KIND_BRANCH, KIND_INVALID, S_LDTMU, S_LDUNIF, S_LDUNIFA,
    S_LDUNIFARF, S_LDUNIFRF, S_ROTATE, S_SMIMM, S_THRSW, S_UNSUPPORTED, ADD_OP, MUL_OP, A_UNSUPPORTED,
    M_UNSUPPORTED,
)

N_QPUS = 8
SLOTS = 4
CTX = N_QPUS * SLOTS
FIFO_MAX = 16

# ---- ist columns -----------------------------------------------------------------------------------------
(I_STATUS, I_PC, I_UNIF, I_UNIFA, I_LR, I_ICOUNT, I_SW_LEFT, I_SW_END, I_SW_LAST, I_FINAL, I_BR_LEFT,
 I_BR_TARGET, I_BR_UNIF, I_LAST_SFU, I_LAST_UNIFA, I_TMUD_N, I_FIFO_HEAD, I_FIFO_N, I_BAR_PENDING, I_BATCH,
 I_QPU, I_TFIELD, I_RFBASE, I_NREGS, I_PREVW0, I_PREVW1, I_PREVW2, I_SG, I_FIFO_CAP, I_SW_CHAIN,
 I_PEND_N, I_PEND_HEAD, I_PEND_LO, I_PEND_HI, I_FIFO_T0) = range(35)
# I_FIFO_T0 .. I_FIFO_T0 + FIFO_MAX - 1: per FIFO slot, the thread's instruction count when the load that
# fills it was issued (-1 once the thread has switched out since: the wait is then the thrsw's)
I_TMU_CFG = I_FIFO_T0 + FIFO_MAX  # the TMU config bytes for the next lookups (tmuc / tmuau), low byte first
N_IST = I_TMU_CFG + 1
TMU_CFG_PLAIN = 0xFF
TMU_OP_REGULAR, TMU_OP_PREFETCH = 15, 0  # config byte bits 6:3 (Mesa's V3D_TMU_OP_*)  # per-pixel, regular op, 32-bit: what a lookup uses once the config bytes run out
PEND_MAX = 128  # words of un-waited stores remembered per thread (older ones count as landed)
ST_EMPTY, ST_RUN, ST_WAIT, ST_DONE = 0, 1, 2, 3

# ---- counters --------------------------------------------------------------------------------------------
(C_INSTR, C_TMU_RD, C_TMU_RD_BYTES, C_TMU_WR, C_TMU_WR_BYTES, C_SFU, C_THRSW, C_UNIF, C_TMUWT, C_BRANCH,
 C_BARRIER, C_LDTMU, C_TMU_RD_REQ, C_TMU_WR_REQ, C_TMU_PREFETCH, C_THRSW_LOADS, C_NEAR0) = range(17)
# C_THRSW_LOADS: thread switches (of C_THRSW) that take effect -- after the thrsw's 2 delay slots -- while the
# thread has TMU load results it has not yet taken with ldtmu (a lookup issued, in the delay slots too, whose
# results are not all read, including those read in the delay slots). Only these can make a thread wait for a
# memory round trip when it is next scheduled. Not counted: pending stores (a thread never waits for its
# stores except in tmuwt, counted as C_TMUWT), prefetches (no result), and the program-end switch (the thread
# ends). The timing model charges one round trip per such switch (pimoe.qpu.timing.thread_waits).
# C_TMU_RD_REQ / C_TMU_WR_REQ: per-lane requests (one per active lane of a lookup, 4..16 bytes each, as the
# TMU moves them); C_TMU_RD / C_TMU_WR count lookups (instructions). C_TMU_PREFETCH: prefetch lookups (no
# result returned to the QPU; their lanes count in C_TMU_RD_REQ and their bytes in C_TMU_RD_BYTES).
# Load-to-use distance: C_NEAR0 + k counts the ldtmu whose load this thread issued 4k .. 4k+3 instructions
# earlier with no thread switch between (k < NEAR_BINS; farther ones, and those a thrsw covered, are not
# binned). A thread that reads a result sooner than a memory round trip stalls for the rest of it; the
# timing model (predict(waits="ldtmu")) charges that from these bins, which the counters otherwise hide.
NEAR_BINS, NEAR_WIDTH = 16, 4
N_CNT = C_NEAR0 + NEAR_BINS
COUNTER_NAMES = ("instructions", "tmu_reads", "tmu_read_bytes", "tmu_writes", "tmu_write_bytes", "sfu_ops",
                 "thread_switches", "uniforms_read", "tmuwt", "branches_taken", "barriers", "ldtmu",
                 "tmu_read_requests", "tmu_write_requests", "tmu_prefetches", "thread_switches_with_loads") + tuple(
                 f"ldtmu_near{NEAR_WIDTH * k:02d}" for k in range(NEAR_BINS))

# ---- dispatch --------------------------------------------------------------------------------------------
(D_ENTRY, D_UNIF, D_NBATCH, D_MODE, D_NEXT, D_WGX, D_WGY, D_WGZ, D_WGSIZE, D_WGS_PER_SG, D_BPS, D_NCODE,
 D_SINGLE_SEG, D_REGCHECK, D_CODE_BASE, D_MEM_BASE, D_SLICE, D_IID_SHIFT, D_MEMCHECK, D_NREGS, D_FIFO_CAP,
 D_ADDRCHECK, D_NREGIONS, D_SCRATCH_OFF, D_SCRATCH_HITS, D_SHADOW_AT, D_SHADOW_USED, D_SHADOW_MISSED,
 D_SHADOW_LAST, D_SHADOW_DATA, D_SHADOW_CAP, D_STALE_UNIF) = range(32)
N_DISP = 32  # followed by D_NREGIONS (start, end) address pairs: the buffers an access may touch, then the
# shadow area (shadow_words(); the emulator sizes it, see there)
# Uniform reads do not see the dispatch's own TMU stores (py-videocore6 test_tmu_read_tmu_write_uniform_read:
# a uniform read of a word stored, and waited for, earlier in the dispatch returns the old value): before the
# first store to a 4 KiB page of memory its words are kept in the shadow area, and a uniform read of that page
# reads them. The shadow area: at D_SHADOW_AT a page table (one entry per 4 KiB page of memory: 0, or the
# page's slot + 1), at D_SHADOW_DATA D_SHADOW_CAP slots of PAGE_WORDS words. The emulator gives it a slot for
# every page a store can reach (the allocated buffers, and the scratch page), so no stored page goes
# unshadowed; D_SHADOW_MISSED counts stores to a page that found no free slot (0 unless that sizing is
# wrong: the emulator then warns), D_STALE_UNIF the uniform reads that returned a word the dispatch had
# since overwritten (what the hardware returns; counted so a user can see it happened).
PAGE_WORDS = 1024
# D_MODE: thread slots per QPU (2 with CFG5 THREADING off, 4 with it on); D_NREGS: registers of a thread
# (64 with threading off, 32 with it on); D_FIFO_CAP: TMU result FIFO entries of a thread.

# D_MODE: thread slots per QPU (2 with CFG5 THREADING off, 4 with it on); D_NREGS: registers of a thread
# (64 with threading off, 32 with it on); D_FIFO_CAP: TMU result FIFO entries of a thread.

# ---- faults ----------------------------------------------------------------------------------------------
(FLT_NONE, FLT_INVALID_WORD, FLT_PC_RANGE, FLT_MEM_RANGE, FLT_MEM_ALIGN, FLT_R4_TOO_SOON, FLT_MULTI_UNIT,
 FLT_ROTATE_SRC, FLT_UNIFA_TOO_SOON, FLT_THRSW_IN_BRANCH, FLT_BRANCH_IN_BRANCH, FLT_SFU_IN_THRSW,
 FLT_THRSW_TOO_CLOSE, FLT_LDTMU_EMPTY, FLT_FIFO_OVERFLOW, FLT_TMUD_OVERFLOW, FLT_UNSUPPORTED, FLT_REG_RANGE,
 FLT_BARRIER_DEADLOCK, FLT_BUDGET, FLT_ROTATE_MUX, FLT_BRANCH_TARGET, FLT_R4_WRITE_TOO_SOON, FLT_SFU_TOO_SOON,
 FLT_BRANCH_IN_THRSW, FLT_TWO_LAST_THRSW, FLT_RF_AFTER_END, FLT_LOAD_BEFORE_TMUWT) = range(28)
# FLT_UNSUPPORTED argument 1: what was unsupported
UNS_ADD_OP, UNS_MUL_OP, UNS_SIGNAL, UNS_MAGIC, UNS_TMU_CONFIG, UNS_BRANCH = range(6)

MASK32 = 0xFFFFFFFF
# branch conditions (F_BR_COND: Mesa's order, isa.BRANCH_CONDS)
BR_ALWAYS, BR_A0, BR_NA0, BR_ALLA, BR_ANYNA, BR_ANYA, BR_ALLNA = range(7)

_A = ADD_OP
_M = MUL_OP
# add ops as plain ints for numba
A_NOP, A_FADD, A_FADDNF, A_VFPACK, A_ADD, A_SUB, A_FSUB, A_MIN, A_MAX, A_UMIN, A_UMAX = (
    _A["nop"], _A["fadd"], _A["faddnf"], _A["vfpack"], _A["add"], _A["sub"], _A["fsub"], _A["min"], _A["max"],
    _A["umin"], _A["umax"])
A_SHL, A_SHR, A_ASR, A_ROR, A_FMIN, A_FMAX, A_VFMIN, A_AND, A_OR, A_XOR, A_VADD, A_VSUB = (
    _A["shl"], _A["shr"], _A["asr"], _A["ror"], _A["fmin"], _A["fmax"], _A["vfmin"], _A["and"], _A["or"],
    _A["xor"], _A["vadd"], _A["vsub"])
A_NOT, A_NEG, A_RECIP, A_TIDX, A_EIDX, A_LR, A_VFLA, A_VFLNA, A_VFLB, A_VFLNB, A_BARRIERID, A_TMUWT = (
    _A["not"], _A["neg"], _A["recip"], _A["tidx"], _A["eidx"], _A["lr"], _A["vfla"], _A["vflna"], _A["vflb"],
    _A["vflnb"], _A["barrierid"], _A["tmuwt"])
A_RSQRT, A_EXP, A_LOG, A_SIN, A_RSQRT2, A_FCMP, A_VFMAX, A_FROUND, A_FTOIN, A_FTRUNC, A_FTOIZ = (
    _A["rsqrt"], _A["exp"], _A["log"], _A["sin"], _A["rsqrt2"], _A["fcmp"], _A["vfmax"], _A["fround"],
    _A["ftoin"], _A["ftrunc"], _A["ftoiz"])
A_FFLOOR, A_FTOUZ, A_FCEIL, A_FDX, A_FDY, A_ITOF, A_CLZ, A_UTOF = (
    _A["ffloor"], _A["ftouz"], _A["fceil"], _A["fdx"], _A["fdy"], _A["itof"], _A["clz"], _A["utof"])
A_FLAPUSH, A_FLBPUSH, A_FLPOP = _A["flapush"], _A["flbpush"], _A["flpop"]
M_NOP, M_ADD, M_SUB, M_UMUL24, M_VFMUL, M_SMUL24, M_MULTOP, M_FMOV, M_MOV, M_FMUL = (
    _M["nop"], _M["add"], _M["sub"], _M["umul24"], _M["vfmul"], _M["smul24"], _M["multop"], _M["fmov"],
    _M["mov"], _M["fmul"])

# what an instruction wrote, as remembered for the next one's rotate-source check (I_PREVW*): accumulator n
# as n, register-file register n as WCODE_RF + n
WCODE_RF = 8

# SFU functions by magic waddr 19..24 (and by the add-ALU op codes)
SFU_RECIP, SFU_RSQRT, SFU_EXP, SFU_LOG, SFU_SIN, SFU_RSQRT2 = 0, 1, 2, 3, 4, 5


# ==========================================================================================================
# bit helpers


@njit(cache=True, inline='always')
def _ftz(u):
    """Flush a denormal f32 (as int64 bits) to a zero of the same sign: the QPU does not keep denormals."""
    if (u & 0x7F800000) == 0:
        return u & 0x80000000
    return u


@njit(cache=True)
def f16_to_f32_bits(h):
    """f16 bits -> f32 bits, exact (an f16 denormal becomes a normal f32; inf and NaN keep their class)."""
    sign = (h & 0x8000) << 16
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 31:
        return sign | 0x7F800000 | (frac << 13)
    if exp == 0:
        if frac == 0:
            return sign
        exp = 1
        while (frac & 0x400) == 0:  # normalize: the leading one moves up to the implicit bit
            frac <<= 1
            exp -= 1
        frac &= 0x3FF
    return sign | ((exp + 127 - 15) << 23) | (frac << 13)


@njit(cache=True, inline='always')
def _round_half_even(v, shift):
    """v >> shift, rounded to the nearest integer, ties to even."""
    kept = v >> shift
    rem = v & ((1 << shift) - 1)
    halfway = 1 << (shift - 1)
    if rem > halfway or (rem == halfway and (kept & 1) == 1):
        kept += 1
    return kept


@njit(cache=True)
def f32_to_f16_bits(u):
    """f32 bits -> f16 bits, round to nearest even; NaN stays NaN, overflow goes to inf (a rounding carry
    into the exponent is the right result, up to inf)."""
    sign = (u >> 16) & 0x8000
    exp = (u >> 23) & 0xFF
    frac = u & 0x7FFFFF
    if exp == 255:
        return sign | 0x7C00 | (0x200 if frac != 0 else 0)
    if exp == 0:
        return sign
    e16 = exp - 127 + 15
    if e16 >= 31:
        return sign | 0x7C00
    if e16 <= 0:  # an f16 denormal: the implicit one joins the fraction
        if e16 < -10:
            return sign
        return sign | _round_half_even(frac | 0x800000, 14 - e16)
    return sign | _round_half_even((e16 << 23) | frac, 13)


@njit(cache=True, inline='always')
def _unpack_f32(u, code):
    """Apply an f32 input unpack (0 none, 1 abs, 2 f16 low half, 3 f16 high half) and flush denormals."""
    if code == 1:
        u = u & 0x7FFFFFFF
    elif code == 2:
        u = f16_to_f32_bits(u & 0xFFFF)
    elif code == 3:
        u = f16_to_f32_bits((u >> 16) & 0xFFFF)
    return _ftz(u)


@njit(cache=True)
def _unpack_f16x2(u, code):
    """Apply a 2x16 input unpack (0 none, 4 ff: f32 -> f16 in both halves, 5 ll, 6 hh, 7 swp)."""
    if code == 4:
        h = f32_to_f16_bits(_ftz(u))
        return h | (h << 16)
    if code == 5:
        return (u & 0xFFFF) | ((u & 0xFFFF) << 16)
    if code == 6:
        return (u >> 16) | (u & 0xFFFF0000)
    if code == 7:
        return ((u & 0xFFFF) << 16) | (u >> 16)
    return u


@njit(cache=True, inline='always')
def _bits_f(u, sb, sf):
    sb[0] = u
    return np.float64(sf[0])


@njit(cache=True, inline='always')
def _f_bits(x, sb, sf):
    sf[0] = np.float32(x)
    return _ftz(np.int64(sb[0]))


@njit(cache=True)
def _f16_f(h, sb, sf):
    return _bits_f(f16_to_f32_bits(h), sb, sf)


@njit(cache=True)
def _f_f16(x, sb, sf):
    sf[0] = np.float32(x)
    return f32_to_f16_bits(_ftz(np.int64(sb[0])))


@njit(cache=True)
def _fmin_fmax(x, y, is_max):
    """fmin (is_max False) / fmax of two floats: a NaN loses to the other operand; -0 counts as below +0."""
    if math.isnan(x):
        return y
    if math.isnan(y):
        return x
    if x == y:
        x_neg = math.copysign(1.0, x) < 0
        if is_max:
            return y if x_neg else x
        return x if x_neg else y
    return x if (x > y) == is_max else y


@njit(cache=True)
def _sfu(fn, x):
    """The special-function unit on a float64 input (already an f32 value)."""
    if fn == SFU_RECIP:
        if x == 0.0:
            return math.copysign(math.inf, x)
        return 1.0 / x
    if fn == SFU_RSQRT or fn == SFU_RSQRT2:
        if x == 0.0:
            return math.copysign(math.inf, x)
        if x < 0.0:
            return math.nan
        return 1.0 / math.sqrt(x)
    if fn == SFU_EXP:  # 2^x
        if x > 200.0:
            return math.inf
        return 2.0 ** x
    if fn == SFU_LOG:  # log2
        if x == 0.0:
            return -math.inf
        if x < 0.0:
            return math.nan
        return math.log2(x)
    # SIN: sin(pi x) on [-0.5, 0.5]; outside it the hardware returns -1 / +1 (py-videocore6's test_sfu)
    if math.isnan(x):
        return x
    if x < -0.5:
        return -1.0
    if x > 0.5:
        return 1.0
    return math.sin(math.pi * x)


@njit(cache=True, inline='always')
def _sfu_bits(fn, u, sb, sf):
    """The SFU on a word: read as an f32 (no unpack, denormals flushed), the f32 result's word."""
    return _f_bits(_sfu(fn, _bits_f(_ftz(u), sb, sf)), sb, sf)


@njit(cache=True)
def _f_to_int(x, mode, unsigned):
    """float -> integer bits: mode 0 round half even, 1 truncate; saturating; NaN -> 0."""
    if math.isnan(x):
        return 0
    if mode == 0:
        r = np.rint(x)
    else:
        r = np.trunc(x)
    if unsigned:
        if r <= 0.0:
            return 0
        if r >= 4294967295.0:
            return 0xFFFFFFFF
        return np.int64(r)
    if r <= -2147483648.0:
        return 0x80000000
    if r >= 2147483647.0:
        return 0x7FFFFFFF
    return np.int64(r) & MASK32


@njit(cache=True)
def _s32(u):
    return u - 4294967296 if u & 0x80000000 else u


@njit(cache=True)
def _clz(u):
    if u == 0:
        return 32
    n = 0
    while (u & 0x80000000) == 0:
        u <<= 1
        n += 1
    return n


# ==========================================================================================================
# ALU ops.  Inputs a, b: int64[16] (already muxed, rotated); out int64[16]; carry int64[16].
# Returns 1 when the result is a float (flags use float tests), 0 for an integer result, -1 unsupported.


# Integer add and sub exist on both ALUs with the same semantics (carry = unsigned overflow / borrow).
@njit(cache=True, inline='always')
def _int_add_sub(is_sub, a, b, out, carry):
    for l in range(16):
        if is_sub:
            out[l] = (a[l] - b[l]) & MASK32
            carry[l] = 1 if a[l] < b[l] else 0
        else:
            s = a[l] + b[l]
            out[l] = s & MASK32
            carry[l] = s >> 32


@njit(cache=True, inline='always')
def _add_alu_common(op, a, b, una, unb, out, carry, sb, sf):
    """The frequent add-ALU ops, inlined into the interpreter loop (no call, no array refcounting);
    returns -2 for the others, which _add_alu_rare computes."""
    for l in range(16):
        carry[l] = 0
    if op == A_FADD or op == A_FADDNF or op == A_FSUB or op == A_FMIN or op == A_FMAX or op == A_FCMP:
        for l in range(16):
            x = _bits_f(_unpack_f32(a[l], una), sb, sf)
            y = _bits_f(_unpack_f32(b[l], unb), sb, sf)
            if op == A_FSUB or op == A_FCMP:
                r = x - y
            elif op == A_FMIN or op == A_FMAX:
                r = _fmin_fmax(x, y, op == A_FMAX)
            else:
                r = x + y
            out[l] = _f_bits(r, sb, sf)
        return 1
    if op == A_ADD or op == A_SUB:
        _int_add_sub(op == A_SUB, a, b, out, carry)
        return 0
    if op == A_MIN or op == A_MAX:
        for l in range(16):
            x = _s32(a[l])
            y = _s32(b[l])
            carry[l] = 1 if x > y else 0
            if op == A_MIN:
                out[l] = a[l] if x < y else b[l]
            else:
                out[l] = a[l] if x > y else b[l]
        return 0
    if op == A_UMIN or op == A_UMAX:
        for l in range(16):
            carry[l] = 1 if a[l] > b[l] else 0
            if op == A_UMIN:
                out[l] = a[l] if a[l] < b[l] else b[l]
            else:
                out[l] = a[l] if a[l] > b[l] else b[l]
        return 0
    if op == A_SHL:
        for l in range(16):
            out[l] = (a[l] << (b[l] & 31)) & MASK32
        return 0
    if op == A_SHR:
        for l in range(16):
            out[l] = a[l] >> (b[l] & 31)
        return 0
    if op == A_ASR:
        for l in range(16):
            out[l] = (_s32(a[l]) >> (b[l] & 31)) & MASK32
        return 0
    if op == A_ROR:
        for l in range(16):
            s = b[l] & 31
            out[l] = ((a[l] >> s) | (a[l] << (32 - s))) & MASK32 if s else a[l]
        return 0
    if op == A_AND:
        for l in range(16):
            out[l] = a[l] & b[l]
        return 0
    if op == A_OR:
        for l in range(16):
            out[l] = a[l] | b[l]
        return 0
    if op == A_XOR:
        for l in range(16):
            out[l] = a[l] ^ b[l]
        return 0
    return -2


@njit(cache=True)
def _add_alu_rare(op, a, b, una, unb, out, carry, qpu, tfield, lr, fa, fb, sb, sf, ta, tb):
    for l in range(16):
        carry[l] = 0
    if op == A_NOT:
        for l in range(16):
            out[l] = (~a[l]) & MASK32
        return 0
    if op == A_NEG:
        for l in range(16):
            out[l] = (-a[l]) & MASK32
        return 0
    if op == A_VADD or op == A_VSUB:  # two independent 16-bit lanes, wrapping
        for l in range(16):
            lo_a, hi_a = a[l] & 0xFFFF, a[l] >> 16
            lo_b, hi_b = b[l] & 0xFFFF, b[l] >> 16
            if op == A_VADD:
                lo, hi = lo_a + lo_b, hi_a + hi_b
            else:
                lo, hi = lo_a - lo_b, hi_a - hi_b
            out[l] = (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)
        return 0
    if op == A_VFPACK:
        for l in range(16):
            lo = f32_to_f16_bits(_unpack_f32(a[l], una))
            hi = f32_to_f16_bits(_unpack_f32(b[l], unb))
            out[l] = lo | (hi << 16)
        return 0
    if op == A_VFMIN or op == A_VFMAX:
        for l in range(16):
            x2 = _unpack_f16x2(a[l], una)
            y2 = b[l]
            res = 0
            for half in range(2):
                hx = (x2 >> (16 * half)) & 0xFFFF
                hy = (y2 >> (16 * half)) & 0xFFFF
                x = _f16_f(hx, sb, sf)
                y = _f16_f(hy, sb, sf)
                r = _fmin_fmax(x, y, op == A_VFMAX)
                res |= _f_f16(r, sb, sf) << (16 * half)
            out[l] = res
        return 0
    if op == A_RECIP or op == A_RSQRT or op == A_EXP or op == A_LOG or op == A_SIN or op == A_RSQRT2:
        fn = SFU_RECIP
        if op == A_RSQRT:
            fn = SFU_RSQRT
        elif op == A_EXP:
            fn = SFU_EXP
        elif op == A_LOG:
            fn = SFU_LOG
        elif op == A_SIN:
            fn = SFU_SIN
        elif op == A_RSQRT2:
            fn = SFU_RSQRT2
        for l in range(16):
            out[l] = _sfu_bits(fn, a[l], sb, sf)
        return 1
    if op == A_TIDX:
        for l in range(16):
            out[l] = (qpu << 2) | tfield
        return 0
    if op == A_EIDX:
        for l in range(16):
            out[l] = l
        return 0
    if op == A_LR:
        for l in range(16):
            out[l] = lr & MASK32
        return 0
    if op == A_VFLA or op == A_VFLNA or op == A_VFLB or op == A_VFLNB:
        for l in range(16):
            f = fa[l] if (op == A_VFLA or op == A_VFLNA) else fb[l]
            if op == A_VFLNA or op == A_VFLNB:
                f = 1 - f
            out[l] = f | (f << 16)  # the flag as an int16 in both halves (py-videocore6 test_cond_vflx)
        return 0
    if op == A_FLAPUSH or op == A_FLBPUSH:
        # the value shifted left 2, the flag in the two bits made free (py-videocore6 test_cond_flx)
        for l in range(16):
            f = fa[l] if op == A_FLAPUSH else fb[l]
            out[l] = ((a[l] << 2) & MASK32) | (3 if f != 0 else 0)
        return 0
    if op == A_FLPOP:
        for l in range(16):
            out[l] = a[l] >> 2
        return 0
    if op == A_BARRIERID or op == A_TMUWT:
        for l in range(16):
            out[l] = 0
        return 0
    if op == A_FROUND or op == A_FTRUNC or op == A_FFLOOR or op == A_FCEIL:
        for l in range(16):
            x = _bits_f(_unpack_f32(a[l], una), sb, sf)
            if math.isnan(x) or math.isinf(x):
                r = x
            elif op == A_FROUND:
                r = np.rint(x)
            elif op == A_FTRUNC:
                r = np.trunc(x)
            elif op == A_FFLOOR:
                r = np.floor(x)
            else:
                r = np.ceil(x)
            if r == 0.0:
                r = math.copysign(0.0, x)
            out[l] = _f_bits(r, sb, sf)
        return 1
    if op == A_FDX or op == A_FDY:
        for l in range(16):
            ta[l] = _unpack_f32(a[l], una)
        for l in range(16):
            if op == A_FDX:
                hi_l, lo_l = l | 1, l & ~1
            else:
                hi_l, lo_l = (l & ~3) + 2 + (l & 1), (l & ~3) + (l & 1)
            out[l] = _f_bits(_bits_f(ta[hi_l], sb, sf) - _bits_f(ta[lo_l], sb, sf), sb, sf)
        return 1
    if op == A_FTOIN or op == A_FTOIZ or op == A_FTOUZ:
        for l in range(16):
            x = _bits_f(_unpack_f32(a[l], una), sb, sf)
            out[l] = _f_to_int(x, 0 if op == A_FTOIN else 1, op == A_FTOUZ)
        return 0
    if op == A_ITOF:
        for l in range(16):
            out[l] = _f_bits(np.float64(_s32(a[l])), sb, sf)
        return 1
    if op == A_UTOF:
        for l in range(16):
            out[l] = _f_bits(np.float64(a[l]), sb, sf)
        return 1
    if op == A_CLZ:
        for l in range(16):
            out[l] = _clz(a[l])
        return 0
    return -1


@njit(cache=True, inline='always')
def _add_alu(op, a, b, una, unb, out, carry, qpu, tfield, lr, fa, fb, c, sb, sf, ta, tb):
    """An add-ALU op of context c: the frequent ones inlined, the others in _add_alu_rare (which gets the
    context's flag rows: views, made only on that path). Returns 1 for a float result, 0 for an integer one,
    -1 for an op the emulator does not model."""
    kind = _add_alu_common(op, a, b, una, unb, out, carry, sb, sf)
    if kind == -2:
        kind = _add_alu_rare(op, a, b, una, unb, out, carry, qpu, tfield, lr, fa[c], fb[c], sb, sf, ta, tb)
    return kind


@njit(cache=True, inline='always')
def _mul_alu(op, a, b, una, unb, out, carry, rtop_c, sb, sf):
    for l in range(16):
        carry[l] = 0
    if op == M_ADD or op == M_SUB:
        _int_add_sub(op == M_SUB, a, b, out, carry)
        return 0
    if op == M_MOV:
        for l in range(16):
            out[l] = a[l]
        return 0
    if op == M_FMOV:
        for l in range(16):
            out[l] = _unpack_f32(a[l], una)
        return 1
    if op == M_FMUL:
        for l in range(16):
            x = _bits_f(_unpack_f32(a[l], una), sb, sf)
            y = _bits_f(_unpack_f32(b[l], unb), sb, sf)
            out[l] = _f_bits(x * y, sb, sf)
        return 1
    if op == M_UMUL24:
        for l in range(16):
            out[l] = ((a[l] & 0xFFFFFF) * (b[l] & 0xFFFFFF) + np.int64(rtop_c[l])) & MASK32
            rtop_c[l] = 0
        return 0
    if op == M_SMUL24:
        for l in range(16):
            x = a[l] & 0xFFFFFF
            y = b[l] & 0xFFFFFF
            if x & 0x800000:
                x -= 0x1000000
            if y & 0x800000:
                y -= 0x1000000
            out[l] = (x * y) & MASK32
        return 0
    if op == M_MULTOP:
        # the part of the 32x32 product that umul24 does not compute; umul24 adds it (32-bit imul idiom)
        for l in range(16):
            full = (a[l] * b[l]) & MASK32
            low = ((a[l] & 0xFFFFFF) * (b[l] & 0xFFFFFF)) & MASK32
            rtop_c[l] = (full - low) & MASK32
            out[l] = rtop_c[l]
        return 0
    if op == M_VFMUL:
        return _vfmul(a, b, una, out, sb, sf)
    return -1


@njit(cache=True)
def _vfmul(a, b, una, out, sb, sf):
    """Two f16 multiplies per lane (the a operand unpacked by una)."""
    for l in range(16):
        x2 = _unpack_f16x2(a[l], una)
        y2 = b[l]
        res = 0
        for half in range(2):
            x = _f16_f((x2 >> (16 * half)) & 0xFFFF, sb, sf)
            y = _f16_f((y2 >> (16 * half)) & 0xFFFF, sb, sf)
            res |= _f_f16(x * y, sb, sf) << (16 * half)
        out[l] = res
    return 0


@njit(cache=True, inline='always')
def _lane_on(cond, fa_l, fb_l):
    if cond == 0:
        return True
    if cond == 1:
        return fa_l != 0
    if cond == 2:
        return fb_l != 0
    if cond == 3:
        return fa_l == 0
    return fb_l == 0


@njit(cache=True)
def _flag_update(c, res, is_float, carry, pf, uf, fa, fb, sb, sf):
    """Push (pf 1..3: B <- A, A <- Z/N/C) or update (uf 1..12: A <- A and/nor F) the flags from a result."""
    for l in range(16):
        r = res[l]
        if is_float == 1:
            x = _bits_f(r, sb, sf)
            z = 1 if x == 0.0 else 0
            n = 1 if x < 0.0 else 0
            cf = 1 if x <= 0.0 else 0
        else:
            z = 1 if r == 0 else 0
            n = 1 if (r & 0x80000000) != 0 else 0
            cf = 1 if carry[l] != 0 else 0
        if pf != 0:
            fb[c, l] = fa[c, l]
            fa[c, l] = z if pf == 1 else (n if pf == 2 else cf)
        else:
            k = (uf - 1) // 4
            j = (uf - 1) % 4
            f = z if k == 0 else (n if k == 1 else cf)
            a_old = fa[c, l]
            if j == 0:
                v = a_old & f
            elif j == 1:
                v = a_old & (1 - f)
            elif j == 2:
                v = (1 - a_old) & f
            else:
                v = (1 - a_old) & (1 - f)
            fa[c, l] = v


# ==========================================================================================================
# memory


@njit(cache=True)
def _mem_check(addr, nbytes, align, mem8, disp, fault, c, pc, lane):
    """Byte offset in mem8 of an access, or -1 after recording a fault.

    The access must lie in one of the dispatch's regions (disp[N_DISP:], D_NREGIONS (start, end) pairs
    sorted by start: the allocated buffers) or, with no regions, in mem8. Outside them: with D_ADDRCHECK a
    fault; without, the v3d MMU's behaviour: the access goes to the scratch page (offset D_SCRATCH_OFF, 4 KiB;
    reads see whatever it holds, writes land there), counted in D_SCRATCH_HITS."""
    if align > 1 and (addr % align) != 0:
        _fault(fault, FLT_MEM_ALIGN, c, pc, addr, align)
        return -1
    off = addr - disp[D_MEM_BASE]
    ok = off >= 0 and off + nbytes <= mem8.shape[0]
    nreg = disp[D_NREGIONS]
    if ok and nreg > 0:
        lo = 0
        hi = nreg - 1
        k = -1
        while lo <= hi:  # the last region starting at or below addr
            mid = (lo + hi) // 2
            if disp[N_DISP + 2 * mid] <= addr:
                k = mid
                lo = mid + 1
            else:
                hi = mid - 1
        ok = k >= 0 and addr + nbytes <= disp[N_DISP + 2 * k + 1]
    if ok:
        return off
    if disp[D_ADDRCHECK] == 0:
        disp[D_SCRATCH_HITS] += 1
        return disp[D_SCRATCH_OFF] + ((addr & 0xFFF) & ~(align - 1) if align > 1 else (addr & 0xFFF) & 0xFF0)
    _fault(fault, FLT_MEM_RANGE, c, pc, addr, lane)
    return -1


@njit(cache=True, inline='always')
def _before_store(off, mem32, disp):
    """Keep the words of the page at byte offset `off` before the dispatch's first store to it (the
    uniform reads' view, see D_SHADOW_AT)."""
    page = off >> 12
    if page == disp[D_SHADOW_LAST]:
        return
    disp[D_SHADOW_LAST] = page
    entry = disp[D_SHADOW_AT] + page
    if disp[entry] != 0:
        return
    k = disp[D_SHADOW_USED]
    if k >= disp[D_SHADOW_CAP]:
        disp[D_SHADOW_MISSED] += 1
        return
    disp[entry] = k + 1
    base = disp[D_SHADOW_DATA] + k * PAGE_WORDS
    w0 = page * PAGE_WORDS
    for i in range(min(PAGE_WORDS, mem32.shape[0] - w0)):
        disp[base + i] = mem32[w0 + i]
    disp[D_SHADOW_USED] = k + 1


@njit(cache=True)
def _read_unif(c, ptr_col, ist, mem8, mem32, disp, fault, cnt, pc):
    """The next word of a uniform stream: memory as the dispatch found it (not its own TMU stores)."""
    addr = ist[c, ptr_col]
    off = _mem_check(addr, 4, 4, mem8, disp, fault, c, pc, -1)
    if off < 0:
        return 0
    ist[c, ptr_col] = addr + 4
    cnt[c, C_UNIF] += 1
    if disp[D_SHADOW_USED] > 0:
        k = disp[disp[D_SHADOW_AT] + (off >> 12)] - 1
        if k >= 0:
            old = disp[disp[D_SHADOW_DATA] + k * PAGE_WORDS + ((off >> 2) & (PAGE_WORDS - 1))]
            if old != mem32[off >> 2]:
                disp[D_STALE_UNIF] += 1
            return old
    return np.int64(mem32[off >> 2])


# ==========================================================================================================
# writes


@njit(cache=True)
def _fault(fault, code, c, pc, a1, a2):
    if fault[0] == 0:
        fault[0] = code
        fault[1] = c
        fault[2] = pc
        fault[3] = a1
        fault[4] = a2


@njit(cache=True)
def _merge_pack(old, v, pack):
    """Output pack: 1 = f16 into the low half (high kept), 2 = f16 into the high half (low kept)."""
    h = f32_to_f16_bits(v)
    if pack == 1:
        return (old & 0xFFFF0000) | h
    return (old & 0xFFFF) | (h << 16)


@njit(cache=True, inline='always')
def _write_lanes(dst, c, r, vals, cond, pack, fa, fb, per_quad):
    """Register r of context c (dst: the register file or the accumulators): dst[c, r, l] = vals[l]
    (vals[first lane of l's quad] when per_quad) in the lanes `cond` enables, an output pack merging the f16
    into the half it names."""
    for l in range(16):
        if cond == 0 or _lane_on(cond, fa[c, l], fb[c, l]):
            v = vals[l & 12] if per_quad else vals[l]
            if pack != 0:
                v = _merge_pack(np.int64(dst[c, r, l]), v, pack)
            dst[c, r, l] = v


@njit(cache=True)
def _write(c, pc, waddr, magic, vals, cond, pack, acc, rf, fa, fb, ist, cnt, tmud, fifo, mem8, mem32, disp,
           fault, sb, sf, curw, pend):
    """Write 16 lanes to a destination (register file, accumulator or magic register, with side effects)."""
    if not magic:
        if disp[D_REGCHECK] != 0 and waddr >= ist[c, I_NREGS]:
            _fault(fault, FLT_REG_RANGE, c, pc, waddr, ist[c, I_NREGS])
            return
        _write_lanes(rf, c, waddr, vals, cond, pack, fa, fb, False)
        _note_write(curw, WCODE_RF + waddr)
        return
    if waddr <= W_R5:  # r0..r4; r5 holds one value per quad: a write broadcasts each quad's first lane
        _write_lanes(acc, c, waddr, vals, cond, pack, fa, fb, waddr == W_R5)
        _note_write(curw, waddr)
        return
    if waddr == W_NOP:  # "-": no write
        return
    if waddr == W_R5REP:  # r5rep: lane 0 to every lane of r5
        v0 = vals[0]
        for l in range(16):
            acc[c, 5, l] = v0
        _note_write(curw, 5)
        return
    if waddr == W_UNIFA:  # unifa: the second uniform stream's address, from lane 0
        ist[c, I_UNIFA] = vals[0]
        ist[c, I_LAST_UNIFA] = ist[c, I_ICOUNT]
        return
    if waddr == W_TMUD:  # tmud
        n = ist[c, I_TMUD_N]
        if n >= 4:
            _fault(fault, FLT_TMUD_OVERFLOW, c, pc, n + 1, 0)
            return
        for l in range(16):
            tmud[c, n, l] = vals[l]
        ist[c, I_TMUD_N] = n + 1
        return
    if waddr == W_TMUA or waddr == W_TMUAU:
        if waddr == W_TMUAU:  # the lookup's config word comes from the uniform stream
            cfg = _read_unif(c, I_UNIF, ist, mem8, mem32, disp, fault, cnt, pc)
            if fault[0] != 0:
                return
            ist[c, I_TMU_CFG] = cfg
        _tmu_access(c, pc, vals, cond, fa, fb, ist, cnt, tmud, fifo, mem8, mem32, disp, fault, pend)
        return
    if waddr == W_TMUC:  # config word for the next lookups (lane 0), as tmuau's uniform
        ist[c, I_TMU_CFG] = vals[0] & MASK32
        return
    if W_SYNC <= waddr <= W_SYNCB:  # sync / syncu / syncb: barrier
        ist[c, I_BAR_PENDING] = 1
        cnt[c, C_BARRIER] += 1
        return
    if W_RECIP <= waddr <= W_RSQRT2:  # SFU: result lands in r4
        fn = waddr - W_RECIP
        for l in range(16):
            if _lane_on(cond, fa[c, l], fb[c, l]):
                acc[c, 4, l] = _sfu_bits(fn, vals[l], sb, sf)
        cnt[c, C_SFU] += 1
        ist[c, I_LAST_SFU] = ist[c, I_ICOUNT]
        return
    _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_MAGIC, waddr)


@njit(cache=True, inline='always')
def _fast_write(c, waddr, magic, vals, cond, pack, acc, rf, ist, disp, curw):
    """The common write (register file or r0..r4, unconditional, unpacked) without a call; returns False
    when the general _write must handle it."""
    if cond != 0 or pack != 0:
        return False
    if magic:
        if waddr > 4:
            return False
        for l in range(16):
            acc[c, waddr, l] = vals[l]
        _note_write(curw, waddr)
        return True
    if disp[D_REGCHECK] != 0 and waddr >= ist[c, I_NREGS]:
        return False
    p = waddr
    for l in range(16):
        rf[c, p, l] = vals[l]
    _note_write(curw, WCODE_RF + waddr)
    return True


@njit(cache=True, inline='always')
def _note_write(curw, code):
    for i in range(3):
        if curw[i] < 0:
            curw[i] = code
            return


@njit(cache=True)
def _pending_store(c, ist, pend, word):
    """Remember a word this thread stored and has not waited for (tmuwt); the oldest falls out."""
    n = ist[c, I_PEND_N]
    if n < PEND_MAX:
        pend[c, (ist[c, I_PEND_HEAD] + n) % PEND_MAX] = word
        ist[c, I_PEND_N] = n + 1
    else:
        pend[c, ist[c, I_PEND_HEAD]] = word
        ist[c, I_PEND_HEAD] = (ist[c, I_PEND_HEAD] + 1) % PEND_MAX
    if n == 0 or word < ist[c, I_PEND_LO]:
        ist[c, I_PEND_LO] = word
    if n == 0 or word + 4 > ist[c, I_PEND_HI]:
        ist[c, I_PEND_HI] = word + 4


@njit(cache=True)
def _is_pending(c, ist, pend, word):
    if ist[c, I_PEND_N] == 0 or word < ist[c, I_PEND_LO] or word >= ist[c, I_PEND_HI]:
        return False
    h = ist[c, I_PEND_HEAD]
    for k in range(ist[c, I_PEND_N]):
        if pend[c, (h + k) % PEND_MAX] == word:
            return True
    return False


@njit(cache=True, inline='always')
def _vec_addr(a, k, ncomp):
    """Address of component k of a lane's vector access: vec2..4 wrap within their 16-byte block
    (py-videocore6 test_tmu_vec_read/_write); a plain access with several tmud writes runs on."""
    if ncomp > 1:
        return (a & ~15) | ((a + 4 * k) & 15)
    return a + 4 * k


@njit(cache=True)
def _tmu_access(c, pc, addrs, cond, fa, fb, ist, cnt, tmud, fifo, mem8, mem32, disp, fault, pend):
    """A TMU general lookup: a store when data was written to tmud first, else a load into the FIFO.

    The lookup takes the low byte of the thread's config bytes (set by tmuc or tmuau's uniform; each
    lookup shifts them right by a byte, filling with 0xff = plain 32-bit, so one config word serves four
    lookups: py-videocore6 summation/scopy and test_tmu_vec_*). Byte: bits 2:0 type (0 s8, 1 s16,
    2..4 vec2..vec4 of 32 bits, 5 u8, 6 u16, 7 u32), bits 6:3 op (15 regular; on a load 0 = prefetch: no
    result returned), bit 7 per-pixel (1) or per-quad (0). Atomics and per-quad lookups fault.
    """
    allcfg = ist[c, I_TMU_CFG]
    cfg = allcfg & 0xFF
    ist[c, I_TMU_CFG] = (allcfg >> 8) | 0xFF000000
    ttype = cfg & 7
    op = (cfg >> 3) & 15
    nd = ist[c, I_TMUD_N]
    prefetch = nd == 0 and op == TMU_OP_PREFETCH
    if ((cfg >> 7) & 1) == 0 or (op != TMU_OP_REGULAR and not prefetch):
        _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_TMU_CONFIG, cfg)
        return
    if ttype == 0 or ttype == 5:
        size = 1
    elif ttype == 1 or ttype == 6:
        size = 2
    else:
        size = 4
    vec = ttype if 2 <= ttype <= 4 else 1
    active = 0
    if nd > 0:  # store: one component per tmud write
        if size < 4 and nd > 1:
            _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_TMU_CONFIG, cfg)
            return
        for l in range(16):
            if not _lane_on(cond, fa[c, l], fb[c, l]):
                continue
            active += 1
            base = addrs[l]
            for k in range(nd):
                a = _vec_addr(base, k, vec)
                off = _mem_check(a, size, size, mem8, disp, fault, c, pc, l)
                if off < 0:
                    return
                v = np.int64(tmud[c, k, l])
                _before_store(off, mem32, disp)
                if disp[D_MEMCHECK] != 0:
                    _pending_store(c, ist, pend, a & ~3)
                if size == 4:
                    mem32[off >> 2] = v
                else:
                    for bi in range(size):
                        mem8[off + bi] = (v >> (8 * bi)) & 0xFF
        ist[c, I_TMUD_N] = 0
        cnt[c, C_TMU_WR] += 1
        cnt[c, C_TMU_WR_REQ] += active
        cnt[c, C_TMU_WR_BYTES] += active * size * nd
        return
    if prefetch:
        for l in range(16):
            if _lane_on(cond, fa[c, l], fb[c, l]):
                if _mem_check(addrs[l], 1, 1, mem8, disp, fault, c, pc, l) < 0:
                    return
                active += 1
        cnt[c, C_TMU_PREFETCH] += 1
        cnt[c, C_TMU_RD_REQ] += active
        cnt[c, C_TMU_RD_BYTES] += active * size * vec
        return
    ncomp = vec
    check_pending = disp[D_MEMCHECK] != 0 and ist[c, I_PEND_N] > 0
    if ist[c, I_FIFO_N] + ncomp > ist[c, I_FIFO_CAP]:
        _fault(fault, FLT_FIFO_OVERFLOW, c, pc, ist[c, I_FIFO_N] + ncomp, ist[c, I_FIFO_CAP])
        return
    for k in range(ncomp):
        slot = (ist[c, I_FIFO_HEAD] + ist[c, I_FIFO_N] + k) % FIFO_MAX
        ist[c, I_FIFO_T0 + slot] = cnt[c, C_INSTR]
        for l in range(16):
            v = 0
            if _lane_on(cond, fa[c, l], fb[c, l]):
                a = _vec_addr(addrs[l], k, vec)
                off = _mem_check(a, size, size, mem8, disp, fault, c, pc, l)
                if off < 0:
                    return
                if check_pending and _is_pending(c, ist, pend, a & ~3):
                    _fault(fault, FLT_LOAD_BEFORE_TMUWT, c, pc, a, l)
                    return
                if size == 4:
                    v = np.int64(mem32[off >> 2])
                elif size == 2:
                    v = np.int64(mem8[off]) | (np.int64(mem8[off + 1]) << 8)
                    if ttype == 1 and (v & 0x8000):
                        v |= 0xFFFF0000
                else:
                    v = np.int64(mem8[off])
                    if ttype == 0 and (v & 0x80):
                        v |= 0xFFFFFF00
                if k == 0:
                    active += 1
            fifo[c, slot, l] = v
    ist[c, I_FIFO_N] += ncomp
    cnt[c, C_TMU_RD] += 1
    cnt[c, C_TMU_RD_REQ] += active
    cnt[c, C_TMU_RD_BYTES] += active * size * ncomp


# ==========================================================================================================
# operand reads


@njit(cache=True, inline='always')
def _read_mux(c, mux, row, acc, rf, ist, disp, fault, pc, out):
    if mux <= MUX_R5:
        for l in range(16):
            out[l] = acc[c, mux, l]
        return
    if mux == MUX_B and (row[F_SIG] & S_SMIMM) != 0:
        v = np.int64(row[F_SMIMM]) & MASK32
        for l in range(16):
            out[l] = v
        return
    idx = row[F_RADDR_A] if mux == MUX_A else row[F_RADDR_B]
    if disp[D_REGCHECK] != 0 and idx >= ist[c, I_NREGS]:
        _fault(fault, FLT_REG_RANGE, c, pc, idx, ist[c, I_NREGS])
        return
    p = idx
    for l in range(16):
        out[l] = rf[c, p, l]


@njit(cache=True, inline='always')
def _uses_mux(row, mux):
    na = row[F_A_NSRC]
    nm = row[F_M_NSRC]
    if (na >= 1 and row[F_A_MUXA] == mux) or (na >= 2 and row[F_A_MUXB] == mux):
        return True
    if (nm >= 1 and row[F_M_MUXA] == mux) or (nm >= 2 and row[F_M_MUXB] == mux):
        return True
    return False


@njit(cache=True, inline='always')
def _prev_wrote(ist, c, code):
    return ist[c, I_PREVW0] == code or ist[c, I_PREVW1] == code or ist[c, I_PREVW2] == code


@njit(cache=True, inline='always')
def _mux_code(row, mux):
    if mux <= MUX_R5:
        return mux
    if mux == MUX_A:
        return WCODE_RF + row[F_RADDR_A]
    return WCODE_RF + row[F_RADDR_B]


# ==========================================================================================================
# dispatch: starting a batch in a context


@njit(cache=True)
def start_batch(c, b, acc, rf, fa, fb, ist, tmud, fifo, rtop, disp):
    mode = disp[D_MODE]
    qpu = c // SLOTS
    slot = c % SLOTS
    tfield = slot * (4 // mode)  # tidx counts threads in quarters: 0/2 with 2 slots, 0..3 with 4
    for col in range(N_IST):
        ist[c, col] = 0
    ist[c, I_STATUS] = ST_RUN
    ist[c, I_PC] = disp[D_ENTRY]
    ist[c, I_UNIF] = disp[D_UNIF]
    ist[c, I_BATCH] = b
    ist[c, I_QPU] = qpu
    ist[c, I_TFIELD] = tfield
    ist[c, I_NREGS] = disp[D_NREGS]
    ist[c, I_TMU_CFG] = 0xFFFFFFFF
    ist[c, I_LAST_SFU] = -100
    ist[c, I_LAST_UNIFA] = -100
    ist[c, I_BR_UNIF] = -1
    ist[c, I_PREVW0] = -1
    ist[c, I_PREVW1] = -1
    ist[c, I_PREVW2] = -1
    ist[c, I_FINAL] = disp[D_SINGLE_SEG]
    ist[c, I_FIFO_CAP] = disp[D_FIFO_CAP]
    ist[c, I_SG] = b // disp[D_BPS]
    for r in range(6):
        for l in range(16):
            acc[c, r, l] = 0
    for l in range(16):
        fa[c, l] = 0
        fb[c, l] = 0
        rtop[c, l] = 0
    nregs = disp[D_NREGS]
    for r in range(64):
        for l in range(16):
            rf[c, r, l] = 0
    # compute payload: rf0 = wg_x | wg_y << 16, rf2 = wg_z | local invocation index << 16 (scaled)
    bps = disp[D_BPS]
    wg_size = disp[D_WGSIZE]
    sg = b // bps
    for l in range(16):
        inv = (b % bps) * 16 + l
        wg_in_sg = inv // wg_size
        local = inv % wg_size
        wg = sg * disp[D_WGS_PER_SG] + wg_in_sg
        wx = wg % disp[D_WGX]
        wy = (wg // disp[D_WGX]) % disp[D_WGY]
        wz = (wg // (disp[D_WGX] * disp[D_WGY])) % disp[D_WGZ]
        rf[c, 0, l] = (wx & 0xFFFF) | ((wy & 0xFFFF) << 16)
        if nregs > 2:
            rf[c, 2, l] = (wz & 0xFFFF) | (((local << disp[D_IID_SHIFT]) & 0xFFFF) << 16)


# ==========================================================================================================
# the interpreter


@njit(cache=True)
def _finish_switch(c, ist, cnt, bar, disp, fa):
    """The thread switch after a thrsw's delay slots: end the program, or enter the final segment."""
    cnt[c, C_THRSW] += 1
    if ist[c, I_FIFO_N] > 0 and ist[c, I_SW_END] == 0:
        cnt[c, C_THRSW_LOADS] += 1  # results still to be taken: the thread may wait for them
    for k in range(FIFO_MAX):       # loads in flight now arrive while the thread is switched out
        ist[c, I_FIFO_T0 + k] = -1
    if ist[c, I_SW_END] != 0:
        ist[c, I_STATUS] = ST_DONE
        return
    if ist[c, I_SW_LAST] != 0:
        ist[c, I_FINAL] = 1


@njit(cache=True)
def _arrive_barrier(c, ist, bar, disp):
    sg = ist[c, I_SG]
    ist[c, I_STATUS] = ST_WAIT
    bar[sg] += 1
    first = sg * disp[D_BPS]
    group = min(disp[D_BPS], disp[D_NBATCH] - first)
    if bar[sg] >= group:
        bar[sg] = 0
        for k in range(CTX):
            if ist[k, I_STATUS] == ST_WAIT and ist[k, I_SG] == sg:
                ist[k, I_STATUS] = ST_RUN
                ist[k, I_BAR_PENDING] = 0


# ==========================================================================================================
# the interpreter


LOAD_SIGNALS = S_LDTMU | S_LDUNIFRF | S_LDUNIFARF   # signals that write a register of the instruction's choice
UNIFA_SIGNALS = S_LDUNIFA | S_LDUNIFARF              # signals that read the second uniform stream
SLOTS_BRANCH = 3   # delay slots of a branch (the target is fetched after them)
SLOTS_THRSW = 2    # delay slots of a thrsw
SFU_LATENCY = 2    # an SFU result (r4) may be read this many instructions after the SFU write
UNIFA_LATENCY = 3  # ldunifa may follow a write to unifa after this many instructions
ACC_R4, ACC_R5 = 4, 5  # accumulator indices (and their write codes, see WCODE_RF)


@njit(cache=True, inline='always')
def _branch_taken(bc, fa, c):
    """Whether a branch with condition bc (BR_*) is taken, from flag A of context c's 16 lanes."""
    if bc == BR_A0:
        return fa[c, 0] != 0
    if bc == BR_NA0:
        return fa[c, 0] == 0
    if bc >= BR_ALLA:
        nset = 0
        for l in range(16):
            nset += fa[c, l]
        if bc == BR_ALLA:
            return nset == 16
        if bc == BR_ANYNA:
            return nset < 16
        if bc == BR_ANYA:
            return nset > 0
        return nset == 0
    return True


@njit(cache=True, inline='always')
def _is_sfu_op(aop):
    return (aop == A_RECIP or aop == A_RSQRT or aop == A_EXP or aop == A_LOG or aop == A_SIN
            or aop == A_RSQRT2)


@njit(cache=True, nogil=True)
def run(tab, acc, rf, fa, fb, ist, cnt, tmud, fifo, rtop, mem8, mem32, disp, bar, fault, budget, pend):
    """Run the dispatch until every batch is done, a fault, or `budget` instructions; returns the number
    of instructions executed in this call."""
    sb = np.zeros(1, dtype=np.uint32)
    sf = sb.view(np.float32)
    a_in = np.zeros(16, dtype=np.int64)
    b_in = np.zeros(16, dtype=np.int64)
    ma_in = np.zeros(16, dtype=np.int64)
    mb_in = np.zeros(16, dtype=np.int64)
    tmp = np.zeros(16, dtype=np.int64)
    a_out = np.zeros(16, dtype=np.int64)
    m_out = np.zeros(16, dtype=np.int64)
    a_carry = np.zeros(16, dtype=np.int64)
    m_carry = np.zeros(16, dtype=np.int64)
    sig_val = np.zeros(16, dtype=np.int64)
    ta = np.zeros(16, dtype=np.int64)
    tb = np.zeros(16, dtype=np.int64)
    curw = np.zeros(3, dtype=np.int64)
    fa_old = np.zeros(16, dtype=np.uint8)
    fb_old = np.zeros(16, dtype=np.uint8)
    ncode = disp[D_NCODE]
    code_base = disp[D_CODE_BASE]
    slice_len = disp[D_SLICE]
    executed = 0
    while True:
        any_run = False
        for c in range(CTX):
            if ist[c, I_STATUS] != ST_RUN:
                continue
            any_run = True
            n = 0
            while n < slice_len:
                pc = ist[c, I_PC]
                if pc < 0 or pc >= ncode:
                    _fault(fault, FLT_PC_RANGE, c, pc, code_base + 8 * pc, 0)
                    return executed
                row = tab[pc]
                kind = row[F_KIND]
                ic = ist[c, I_ICOUNT]
                curw[0] = -1
                curw[1] = -1
                curw[2] = -1
                if kind == KIND_INVALID:
                    _fault(fault, FLT_INVALID_WORD, c, pc, 0, 0)
                    return executed
                if kind == KIND_BRANCH:
                    if ist[c, I_BR_LEFT] > 0:
                        _fault(fault, FLT_BRANCH_IN_BRANCH, c, pc, 0, 0)
                        return executed
                    if ist[c, I_SW_LEFT] > 0:
                        _fault(fault, FLT_BRANCH_IN_THRSW, c, pc, 0, 0)
                        return executed
                    if _branch_taken(row[F_BR_COND], fa, c):
                        my_addr = code_base + 8 * pc
                        bdi = row[F_BR_BDI]
                        off = np.int64(row[F_BR_OFFSET])
                        if bdi == BD_ABS:
                            target = off & MASK32
                        elif bdi == BD_REL:
                            target = (my_addr + 8 * (SLOTS_BRANCH + 1) + off) & MASK32
                        elif bdi == BD_LRI:
                            target = ist[c, I_LR]
                        else:
                            _read_mux(c, MUX_A, row, acc, rf, ist, disp, fault, pc, tmp)
                            if fault[0] != 0:
                                return executed
                            target = tmp[0]
                        rel = target - code_base
                        if rel < 0 or (rel & 7) != 0 or rel // 8 >= ncode:
                            _fault(fault, FLT_BRANCH_TARGET, c, pc, target, 0)
                            return executed
                        ist[c, I_BR_TARGET] = rel // 8
                        ist[c, I_BR_LEFT] = SLOTS_BRANCH + 1
                        ist[c, I_BR_UNIF] = -1
                        if row[F_BR_LINK] != 0:
                            ist[c, I_LR] = my_addr + 8 * (SLOTS_BRANCH + 1)
                        if row[F_BR_UB] != 0:
                            bdu = row[F_BR_BDU]
                            if bdu == BD_ABS or bdu == BD_REL:
                                v = _read_unif(c, I_UNIF, ist, mem8, mem32, disp, fault, cnt, pc)
                                if fault[0] != 0:
                                    return executed
                                if bdu == BD_ABS:
                                    ist[c, I_BR_UNIF] = v
                                else:
                                    ist[c, I_BR_UNIF] = (ist[c, I_UNIF] + _s32(v)) & MASK32
                            elif bdu == BD_RF:
                                # the new uniform address: the smallest non-zero lane value of the register
                                # (the one rule that fits all three of py-videocore6's hardware-tested cases,
                                # see the emulator docstring); all lanes zero: 0
                                _read_mux(c, MUX_A, row, acc, rf, ist, disp, fault, pc, tmp)
                                if fault[0] != 0:
                                    return executed
                                best = 0
                                for l in range(16):
                                    v = tmp[l] & MASK32
                                    if v != 0 and (best == 0 or v < best):
                                        best = v
                                ist[c, I_BR_UNIF] = best
                            else:
                                _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_BRANCH, bdu)
                                return executed
                        cnt[c, C_BRANCH] += 1
                else:
                    # ---------------- ALU instruction ----------------
                    sigb = row[F_SIG]
                    aop = row[F_A_OP]
                    mop = row[F_M_OP]
                    if (sigb & S_UNSUPPORTED) != 0:
                        _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_SIGNAL, 0)
                        return executed
                    if aop == A_UNSUPPORTED:
                        _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_ADD_OP, 0)
                        return executed
                    if mop == M_UNSUPPORTED:
                        _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_MUL_OP, 0)
                        return executed
                    # does this instruction start the SFU, or write r4 (the SFU's result register)?
                    sfu = False
                    writes_r4 = False
                    if aop != 0 and row[F_A_MAGIC] != 0:
                        sfu = W_RECIP <= row[F_A_WADDR] <= W_RSQRT2
                        writes_r4 = row[F_A_WADDR] == W_R4
                    if mop != 0 and row[F_M_MAGIC] != 0:
                        sfu = sfu or W_RECIP <= row[F_M_WADDR] <= W_RSQRT2
                        writes_r4 = writes_r4 or row[F_M_WADDR] == W_R4
                    if (sigb & LOAD_SIGNALS) != 0 and row[F_SIG_MAGIC] != 0 and row[F_SIG_ADDR] == W_R4:
                        writes_r4 = True
                    # (Mesa's "one of TMU write / SFU / barrier / ldtmu per instruction" is a compiler rule, not
                    # a hardware fault: py-videocore6's summation and scopy break it; pimoe.qpu.lint reports it)
                    if ic - ist[c, I_LAST_SFU] < SFU_LATENCY:
                        if _uses_mux(row, ACC_R4):
                            _fault(fault, FLT_R4_TOO_SOON, c, pc, ic - ist[c, I_LAST_SFU], 0)
                            return executed
                        if writes_r4:
                            _fault(fault, FLT_R4_WRITE_TOO_SOON, c, pc, 0, 0)
                            return executed
                        if sfu:
                            _fault(fault, FLT_SFU_TOO_SOON, c, pc, 0, 0)
                            return executed
                    if sfu and ist[c, I_SW_LEFT] > 0:
                        _fault(fault, FLT_SFU_IN_THRSW, c, pc, 0, 0)
                        return executed
                    if ist[c, I_SW_END] != 0 and 0 < ist[c, I_SW_LEFT] <= SLOTS_THRSW:
                        # the delay slots of the program-end thrsw: the register file is being given up
                        if ((aop != 0 and row[F_A_MAGIC] == 0) or (mop != 0 and row[F_M_MAGIC] == 0)
                                or ((sigb & LOAD_SIGNALS) != 0 and row[F_SIG_MAGIC] == 0)):
                            _fault(fault, FLT_RF_AFTER_END, c, pc, 0, 0)
                            return executed
                    if (sigb & UNIFA_SIGNALS) != 0 and ic - ist[c, I_LAST_UNIFA] < UNIFA_LATENCY:
                        _fault(fault, FLT_UNIFA_TOO_SOON, c, pc, ic - ist[c, I_LAST_UNIFA], 0)
                        return executed
                    # thread switch signal
                    if (sigb & S_THRSW) != 0:
                        if ist[c, I_SW_LEFT] == SLOTS_THRSW:
                            # a second thrsw right after one marks it as the last thread switch
                            if ist[c, I_FINAL] != 0 or ist[c, I_SW_LAST] != 0:
                                _fault(fault, FLT_TWO_LAST_THRSW, c, pc, 0, 0)
                                return executed
                            ist[c, I_SW_LAST] = 1
                        elif ist[c, I_SW_LEFT] == 1:
                            # a thrsw in the last delay slot of another (py-videocore6's tests do this):
                            # it starts the next switch as soon as this one is done
                            ist[c, I_SW_CHAIN] = 1
                        else:
                            if ist[c, I_BR_LEFT] > 0:
                                _fault(fault, FLT_THRSW_IN_BRANCH, c, pc, 0, 0)
                                return executed
                            ist[c, I_SW_LEFT] = SLOTS_THRSW + 1
                            ist[c, I_SW_END] = ist[c, I_FINAL]
                            ist[c, I_SW_LAST] = 0
                    # operands
                    na = row[F_A_NSRC]
                    nm = row[F_M_NSRC]
                    if aop != 0:
                        if na >= 1:
                            _read_mux(c, row[F_A_MUXA], row, acc, rf, ist, disp, fault, pc, a_in)
                        if na >= 2:
                            _read_mux(c, row[F_A_MUXB], row, acc, rf, ist, disp, fault, pc, b_in)
                    if mop != 0:
                        if nm >= 1:
                            _read_mux(c, row[F_M_MUXA], row, acc, rf, ist, disp, fault, pc, ma_in)
                        if nm >= 2:
                            _read_mux(c, row[F_M_MUXB], row, acc, rf, ist, disp, fault, pc, mb_in)
                    if fault[0] != 0:
                        return executed
                    if (sigb & S_ROTATE) != 0 and mop != 0:
                        rot = row[F_ROT]
                        if rot == -2:
                            _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_SIGNAL, 1)
                            return executed
                        if rot == -1:
                            if _prev_wrote(ist, c, ACC_R5):
                                _fault(fault, FLT_ROTATE_SRC, c, pc, ACC_R5, 0)
                                return executed
                            rot = np.int64(acc[c, ACC_R5, 0]) & 15
                        for k in range(nm):
                            mux = row[F_M_MUXA] if k == 0 else row[F_M_MUXB]
                            if mux == MUX_B:
                                _fault(fault, FLT_ROTATE_MUX, c, pc, 0, 0)
                                return executed
                            if _prev_wrote(ist, c, _mux_code(row, mux)):
                                _fault(fault, FLT_ROTATE_SRC, c, pc, _mux_code(row, mux), 0)
                                return executed
                            src = ma_in if k == 0 else mb_in
                            for l in range(16):
                                tmp[l] = src[l]
                            if mux <= MUX_R5:  # accumulators rotate across all 16 lanes
                                for l in range(16):
                                    src[l] = tmp[(l - rot) & 15]
                            else:  # a register-file operand rotates within each quad
                                for l in range(16):
                                    src[l] = tmp[(l & 12) | ((l - rot) & 3)]
                    # compute
                    a_float = 0
                    m_float = 0
                    if aop != 0:
                        a_float = _add_alu_common(aop, a_in, b_in, row[F_A_UNA], row[F_A_UNB], a_out, a_carry, sb,
                                                  sf)
                        if a_float == -2:
                            a_float = _add_alu_rare(aop, a_in, b_in, row[F_A_UNA], row[F_A_UNB], a_out, a_carry,
                                                    ist[c, I_QPU], ist[c, I_TFIELD], ist[c, I_LR], fa[c], fb[c],
                                                    sb, sf, ta, tb)
                        if a_float < 0:
                            _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_ADD_OP, 0)
                            return executed
                        if aop == A_TMUWT:
                            cnt[c, C_TMUWT] += 1
                            ist[c, I_PEND_N] = 0  # every store of this thread has landed
                        elif _is_sfu_op(aop):
                            cnt[c, C_SFU] += 1
                    if mop != 0:
                        m_float = _mul_alu(mop, ma_in, mb_in, row[F_M_UNA], row[F_M_UNB], m_out, m_carry,
                                           rtop[c], sb, sf)
                        if m_float < 0:
                            _fault(fault, FLT_UNSUPPORTED, c, pc, UNS_MUL_OP, 0)
                            return executed
                    # the second uniform stream is read at the address from before this instruction's own write to
                    # unifa (py-videocore6 test_unifa: `mov(tmua, .., sig=ldunifa).mov(unifa, ..)`)
                    unifa_val = np.int64(0)
                    if (sigb & UNIFA_SIGNALS) != 0:
                        unifa_val = _read_unif(c, I_UNIFA, ist, mem8, mem32, disp, fault, cnt, pc)
                        if fault[0] != 0:
                            return executed
                    # conditions read the flags from before this instruction's pushes/updates
                    flags_change = ((aop != 0 and (row[F_APF] != 0 or row[F_AUF] != 0))
                                    or (mop != 0 and (row[F_MPF] != 0 or row[F_MUF] != 0)))
                    if flags_change:
                        for l in range(16):
                            fa_old[l] = fa[c, l]
                            fb_old[l] = fb[c, l]
                    if aop != 0 and (row[F_APF] != 0 or row[F_AUF] != 0):
                        _flag_update(c, a_out, a_float, a_carry, row[F_APF], row[F_AUF], fa, fb, sb, sf)
                    if mop != 0 and (row[F_MPF] != 0 or row[F_MUF] != 0):
                        _flag_update(c, m_out, m_float, m_carry, row[F_MPF], row[F_MUF], fa, fb, sb, sf)
                    # writes use the old flags: swap them in for the duration
                    if flags_change:
                        for l in range(16):
                            tb[l] = fa[c, l]
                            ta[l] = fb[c, l]
                            fa[c, l] = fa_old[l]
                            fb[c, l] = fb_old[l]
                    if aop != 0 and not _fast_write(c, row[F_A_WADDR], row[F_A_MAGIC] != 0, a_out, row[F_AC],
                                                    row[F_A_PACK], acc, rf, ist, disp, curw):
                        _write(c, pc, row[F_A_WADDR], row[F_A_MAGIC] != 0, a_out, row[F_AC], row[F_A_PACK],
                               acc, rf, fa, fb, ist, cnt, tmud, fifo, mem8, mem32, disp, fault, sb, sf, curw, pend)
                    if mop != 0 and fault[0] == 0 and not _fast_write(c, row[F_M_WADDR], row[F_M_MAGIC] != 0,
                                                                      m_out, row[F_MC], row[F_M_PACK], acc, rf,
                                                                      ist, disp, curw):
                        _write(c, pc, row[F_M_WADDR], row[F_M_MAGIC] != 0, m_out, row[F_MC], row[F_M_PACK],
                               acc, rf, fa, fb, ist, cnt, tmud, fifo, mem8, mem32, disp, fault, sb, sf, curw, pend)
                    if flags_change:
                        for l in range(16):
                            fa[c, l] = tb[l]
                            fb[c, l] = ta[l]
                    if fault[0] != 0:
                        return executed
                    # signals that load a value
                    if (sigb & S_LDUNIF) != 0:
                        v = _read_unif(c, I_UNIF, ist, mem8, mem32, disp, fault, cnt, pc)
                        if fault[0] != 0:
                            return executed
                        for l in range(16):
                            acc[c, ACC_R5, l] = v
                        _note_write(curw, ACC_R5)
                    if (sigb & S_LDUNIFA) != 0:
                        for l in range(16):
                            acc[c, ACC_R5, l] = unifa_val
                        _note_write(curw, ACC_R5)
                    if (sigb & LOAD_SIGNALS) != 0:
                        if (sigb & S_LDTMU) != 0:
                            if ist[c, I_FIFO_N] == 0:
                                _fault(fault, FLT_LDTMU_EMPTY, c, pc, 0, 0)
                                return executed
                            h = ist[c, I_FIFO_HEAD]
                            for l in range(16):
                                sig_val[l] = fifo[c, h, l]
                            ist[c, I_FIFO_HEAD] = (h + 1) % FIFO_MAX
                            ist[c, I_FIFO_N] -= 1
                            cnt[c, C_LDTMU] += 1
                            issued = ist[c, I_FIFO_T0 + h]
                            if issued >= 0:
                                dist = cnt[c, C_INSTR] - issued
                                if dist < NEAR_BINS * NEAR_WIDTH:
                                    cnt[c, C_NEAR0 + dist // NEAR_WIDTH] += 1
                        else:
                            if (sigb & S_LDUNIFRF) != 0:
                                v = _read_unif(c, I_UNIF, ist, mem8, mem32, disp, fault, cnt, pc)
                                if fault[0] != 0:
                                    return executed
                            else:
                                v = unifa_val
                            for l in range(16):
                                sig_val[l] = v
                        _write(c, pc, row[F_SIG_ADDR], row[F_SIG_MAGIC] != 0, sig_val, 0, 0, acc, rf, fa, fb,
                               ist, cnt, tmud, fifo, mem8, mem32, disp, fault, sb, sf, curw, pend)
                        if fault[0] != 0:
                            return executed
                # ---------------- end of instruction: delay slots, switches ----------------
                ist[c, I_ICOUNT] = ic + 1
                cnt[c, C_INSTR] += 1
                n += 1
                ist[c, I_PREVW0] = curw[0]
                ist[c, I_PREVW1] = curw[1]
                ist[c, I_PREVW2] = curw[2]
                nxt = pc + 1
                if ist[c, I_BR_LEFT] > 0:
                    ist[c, I_BR_LEFT] -= 1
                    if ist[c, I_BR_LEFT] == 0:
                        nxt = ist[c, I_BR_TARGET]
                        if ist[c, I_BR_UNIF] >= 0:
                            ist[c, I_UNIF] = ist[c, I_BR_UNIF]
                            ist[c, I_BR_UNIF] = -1
                ist[c, I_PC] = nxt
                yielded = False
                if ist[c, I_SW_LEFT] > 0:
                    ist[c, I_SW_LEFT] -= 1
                    if ist[c, I_SW_LEFT] == 0:
                        _finish_switch(c, ist, cnt, bar, disp, fa)
                        yielded = True
                        if ist[c, I_SW_CHAIN] != 0:
                            ist[c, I_SW_CHAIN] = 0
                            ist[c, I_SW_LEFT] = SLOTS_THRSW
                            ist[c, I_SW_END] = ist[c, I_FINAL]
                            ist[c, I_SW_LAST] = 0
                if ist[c, I_STATUS] == ST_RUN and ist[c, I_BAR_PENDING] != 0 and ist[c, I_SW_LEFT] == 0:
                    _arrive_barrier(c, ist, bar, disp)
                    yielded = True
                if ist[c, I_STATUS] == ST_DONE:
                    # the slot takes the next batch waiting for a QPU thread
                    if disp[D_NEXT] < disp[D_NBATCH]:
                        start_batch(c, disp[D_NEXT], acc, rf, fa, fb, ist, tmud, fifo, rtop, disp)
                        disp[D_NEXT] += 1
                    yielded = True
                if yielded:
                    break
            executed += n
            if executed >= budget:
                return executed
        if not any_run:
            waiting = 0
            for k in range(CTX):
                if ist[k, I_STATUS] == ST_WAIT:
                    waiting += 1
                    if fault[0] == 0:
                        sg = ist[k, I_SG]
                        group = min(disp[D_BPS], disp[D_NBATCH] - sg * disp[D_BPS])
                        _fault(fault, FLT_BARRIER_DEADLOCK, k, ist[k, I_PC], bar[sg], group)
            return executed


# ==========================================================================================================
# direct entries: one op, flag update, write or branch condition through the same helpers `run` inlines, so
# tests/test_emu_spec.py can check the core against the definition in pimoe.qpu.emu_spec lane by lane


@njit(cache=True)
def _flag_rows(fa_c, fb_c):
    """Flags A and B of one lane row (uint8[16] each) as the [context, lane] arrays the helpers index."""
    fa = np.zeros((1, 16), dtype=np.uint8)
    fb = np.zeros((1, 16), dtype=np.uint8)
    fa[0, :] = fa_c
    fb[0, :] = fb_c
    return fa, fb


@njit(cache=True)
def alu_op(is_mul, op, a, b, una, unb, qpu, tfield, lr, fa_c, fb_c, rtop_c):
    """ADD_OP / MUL_OP `op` on int64[16] words a, b with unpack codes una, unb (UN_*); fa_c, fb_c uint8[16]
    flags; rtop_c uint32[16] (multop -> umul24, updated). Returns (out, carry, 1 float / 0 integer result /
    -1 not modelled)."""
    sb = np.zeros(1, dtype=np.uint32)
    sf = sb.view(np.float32)
    lanes = np.zeros((4, 16), dtype=np.int64)   # the result, the carry and two scratch rows
    fa, fb = _flag_rows(fa_c, fb_c)
    if is_mul:
        kind = _mul_alu(op, a, b, una, unb, lanes[0], lanes[1], rtop_c, sb, sf)
    else:
        kind = _add_alu(op, a, b, una, unb, lanes[0], lanes[1], qpu, tfield, lr, fa, fb, 0, sb, sf, lanes[2],
                        lanes[3])
    return lanes[0].copy(), lanes[1].copy(), kind


@njit(cache=True)
def sfu_op(fn, a):
    """The SFU function fn (SFU_*) on int64[16] words, as a magic write computes it."""
    sb = np.zeros(1, dtype=np.uint32)
    sf = sb.view(np.float32)
    out = np.zeros(16, dtype=np.int64)
    for l in range(16):
        out[l] = _sfu_bits(fn, a[l], sb, sf)
    return out


@njit(cache=True)
def flag_update(res, is_float, carry, pf, uf, fa_c, fb_c):
    """The flags (A, B: new uint8[16] arrays) after a push pf (1..3) or an update uf (1..12) from a result."""
    sb = np.zeros(1, dtype=np.uint32)
    sf = sb.view(np.float32)
    fa, fb = _flag_rows(fa_c, fb_c)
    _flag_update(0, res, is_float, carry, pf, uf, fa, fb, sb, sf)
    return fa[0].copy(), fb[0].copy()


@njit(cache=True)
def write_lanes(old, vals, cond, pack, fa_c, fb_c):
    """A register (uint32[16], copied) after a write of vals (int64[16]) under condition cond (0 none, 1..4
    ifa ifb ifna ifnb) with output pack pack (PK_*)."""
    dst = np.zeros((1, 1, 16), dtype=np.uint32)
    dst[0, 0, :] = old
    fa, fb = _flag_rows(fa_c, fb_c)
    _write_lanes(dst, 0, 0, vals, cond, pack, fa, fb, False)
    return dst[0, 0].copy()


@njit(cache=True)
def branch_taken(bc, fa_c):
    """Whether a branch with condition bc (BR_*) is taken with flag A = fa_c (uint8[16])."""
    fa, _ = _flag_rows(fa_c, fa_c)
    return _branch_taken(bc, fa, 0)
