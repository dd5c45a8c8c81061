"""Pre-decode QPU words once into a compact int32 table the compiled interpreter indexes by PC.

Decoding goes through `pimoe.qpu.isa.decode` (the one place the encoding lives); this module only maps the
structured `Instr` onto small integers: one row per instruction, one column per field (the F_* constants).
Words that do not decode are kept as KIND_INVALID rows with their error text, so a program may contain
data or padding and faults only if it actually executes such a word.
"""

from __future__ import annotations

import numpy as np

from pimoe.qpu import isa

# ---- columns of the decoded table ------------------------------------------------------------------------
(F_KIND, F_SIG, F_SIG_ADDR, F_SIG_MAGIC, F_RADDR_A, F_RADDR_B, F_SMIMM, F_ROT,
 F_A_OP, F_A_MUXA, F_A_MUXB, F_A_WADDR, F_A_MAGIC, F_A_PACK, F_A_UNA, F_A_UNB,
 F_M_OP, F_M_MUXA, F_M_MUXB, F_M_WADDR, F_M_MAGIC, F_M_PACK, F_M_UNA, F_M_UNB,
 F_AC, F_MC, F_APF, F_MPF, F_AUF, F_MUF,
 F_BR_COND, F_BR_BDI, F_BR_BDU, F_BR_UB, F_BR_RADDR, F_BR_OFFSET, F_BR_LINK, F_BR_MSFIGN,
 F_A_NSRC, F_M_NSRC) = range(40)
N_FIELDS = 40

KIND_ALU, KIND_BRANCH, KIND_INVALID = 0, 1, 2

# signal bits (F_SIG)
S_THRSW, S_LDUNIF, S_LDUNIFA, S_LDUNIFRF, S_LDUNIFARF, S_LDTMU, S_ROTATE, S_SMIMM, S_UNSUPPORTED = (
    1, 2, 4, 8, 16, 32, 64, 128, 256)

# input unpack codes (F_*_UNA / F_*_UNB) and output packs (F_*_PACK)
UN_NONE, UN_ABS, UN_L, UN_H, UN_FF, UN_LL, UN_HH, UN_SWP = range(8)
_UNPACK = {None: UN_NONE, "abs": UN_ABS, "l": UN_L, "h": UN_H, "ff": UN_FF, "ll": UN_LL, "hh": UN_HH,
           "swp": UN_SWP}
PK_NONE, PK_L, PK_H = range(3)
_PACK = {None: PK_NONE, "l": PK_L, "h": PK_H}

# write conditions, flag pushes, flag updates (Mesa's enum order, 0 = none)
_COND = {None: 0, "ifa": 1, "ifb": 2, "ifna": 3, "ifnb": 4}
_PF = {None: 0, "pushz": 1, "pushn": 2, "pushc": 3}
_UF = {None: 0, **{name: i + 1 for i, name in enumerate(isa.UPDATE_FLAGS)}}

# branch fields
_BR_COND = {name: i for i, name in enumerate(isa.BRANCH_CONDS)}  # always a0 na0 alla anyna anya allna
BD_ABS, BD_REL, BD_LRI, BD_RF = range(4)
_BD = {"abs": BD_ABS, "rel": BD_REL, "lri": BD_LRI, "rf": BD_RF}

# ---- op numbering for the interpreter (names are Mesa's) -------------------------------------------------
ADD_OP_LIST = (
    "nop", "fadd", "faddnf", "vfpack", "add", "sub", "fsub", "min", "max", "umin", "umax", "shl", "shr", "asr",
    "ror", "fmin", "fmax", "vfmin", "and", "or", "xor", "vadd", "vsub", "not", "neg", "recip", "tidx", "eidx",
    "lr", "vfla", "vflna", "vflb", "vflnb", "barrierid", "tmuwt", "rsqrt", "exp", "log", "sin", "rsqrt2",
    "fcmp", "vfmax", "fround", "ftoin", "ftrunc", "ftoiz", "ffloor", "ftouz", "fceil", "fdx", "fdy", "itof",
    "clz", "utof", "flafirst", "flnafirst", "flapush", "flbpush", "flpop",
)
MUL_OP_LIST = ("nop", "add", "sub", "umul24", "vfmul", "smul24", "multop", "fmov", "mov", "fmul")
ADD_OP = {name: i for i, name in enumerate(ADD_OP_LIST)}
MUL_OP = {name: i for i, name in enumerate(MUL_OP_LIST)}
A_UNSUPPORTED = 255  # an add op the emulator does not model (graphics-only: vpm, tlb, msf, …)
M_UNSUPPORTED = 255

# magic write addresses the interpreter handles (others fault)
W_UNIFA, W_TMUD, W_TMUA, W_TMUAU, W_SYNCB = isa.W_UNIFA, isa.W_TMUD, isa.W_TMUA, isa.W_TMUAU, isa.W_SYNCB
W_RECIP, W_RSQRT, W_EXP, W_LOG, W_SIN, W_RSQRT2 = (isa.W_RECIP, isa.W_RSQRT, isa.W_EXP, isa.W_LOG, isa.W_SIN,
                                                   isa.W_RSQRT2)
W_R5REP, W_NOP, W_TMUC, W_R4, W_R5 = isa.W_R5REP, isa.W_NOP, isa.W_TMUC, isa.W_R4, isa.W_R5
W_SYNC = 16  # sync, syncu (17), syncb (18): the barrier
# operand muxes (F_*_MUXA/B): 0..5 = r0..r5, 6 = register file A (raddr_a), 7 = B (raddr_b or small immediate)
MUX_R5, MUX_A, MUX_B = 5, 6, 7

_SUPPORTED_SIGS = {"thrsw", "ldunif", "ldunifa", "ldunifrf", "ldunifarf", "ldtmu", "rotate", "small_imm"}


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & (1 << 31) else v


def decode_row(word: int) -> tuple[np.ndarray, str]:
    """One word -> (row of N_FIELDS int32, error text or "")."""
    row = np.zeros(N_FIELDS, dtype=np.int32)
    try:
        ins = isa.decode(int(word))
    except isa.InvalidInstruction as exc:
        row[F_KIND] = KIND_INVALID
        return row, str(exc)
    if ins.type == "branch":
        br = ins.branch
        row[F_KIND] = KIND_BRANCH
        row[F_BR_COND] = _BR_COND[br.cond]
        row[F_BR_BDI] = _BD[br.bdi]
        row[F_BR_BDU] = _BD.get(br.bdu, -1)
        row[F_BR_UB] = int(br.ub)
        row[F_BR_RADDR] = br.raddr_a
        row[F_RADDR_A] = br.raddr_a
        row[F_BR_OFFSET] = _s32(br.offset)
        row[F_BR_LINK] = int(br.set_link)
        row[F_BR_MSFIGN] = 0 if br.msfign is None else 1
        return row, ""
    row[F_KIND] = KIND_ALU
    sig = 0
    names = ins.sig.names()
    for name, bit in (("thrsw", S_THRSW), ("ldunif", S_LDUNIF), ("ldunifa", S_LDUNIFA),
                      ("ldunifrf", S_LDUNIFRF), ("ldunifarf", S_LDUNIFARF), ("ldtmu", S_LDTMU),
                      ("rotate", S_ROTATE), ("small_imm", S_SMIMM)):
        if name in names:
            sig |= bit
    if names - _SUPPORTED_SIGS:
        sig |= S_UNSUPPORTED
    row[F_SIG] = sig
    row[F_SIG_ADDR] = ins.sig_addr
    row[F_SIG_MAGIC] = int(ins.sig_magic)
    row[F_RADDR_A] = ins.raddr_a
    row[F_RADDR_B] = ins.raddr_b
    row[F_SMIMM] = _s32(ins.small_imm) if ins.sig.small_imm else 0
    rot = ins.rot_amount
    row[F_ROT] = -2 if (ins.sig.rotate and rot is None) else (rot if rot is not None else 0)
    for base, half, table, unsupported, nsrc in (
            (F_A_OP, ins.add, ADD_OP, A_UNSUPPORTED, isa.add_op_num_src),
            (F_M_OP, ins.mul, MUL_OP, M_UNSUPPORTED, isa.mul_op_num_src)):
        row[base] = table.get(half.op, unsupported)
        row[base + 1] = half.a
        row[base + 2] = half.b
        row[base + 3] = half.waddr
        row[base + 4] = int(half.magic_write)
        row[base + 5] = _PACK[half.output_pack]
        row[base + 6] = _UNPACK[half.a_unpack]
        row[base + 7] = _UNPACK[half.b_unpack]
    row[F_A_NSRC] = isa.add_op_num_src(ins.add.op)
    row[F_M_NSRC] = isa.mul_op_num_src(ins.mul.op)
    fl = ins.flags
    row[F_AC], row[F_MC] = _COND[fl.ac], _COND[fl.mc]
    row[F_APF], row[F_MPF] = _PF[fl.apf], _PF[fl.mpf]
    row[F_AUF], row[F_MUF] = _UF[fl.auf], _UF[fl.muf]
    return row, ""


class DecodedProgram:
    """The decoded table of a run of words (e.g. the whole code area), built once and cached by content.

    table: int32 [n_words, N_FIELDS]; errors: index -> decode error text; words: uint64 [n_words] copy.
    """

    def __init__(self, words: np.ndarray):
        words = np.ascontiguousarray(words, dtype=np.uint64)
        self.words = words.copy()
        self.table = np.zeros((len(words), N_FIELDS), dtype=np.int32)
        self.errors: dict[int, str] = {}
        # decode each distinct word once (kernels repeat nops and unrolled bodies)
        uniq, inverse = np.unique(words, return_inverse=True)
        rows = np.zeros((len(uniq), N_FIELDS), dtype=np.int32)
        errs: dict[int, str] = {}
        for i, w in enumerate(uniq):
            rows[i], err = decode_row(int(w))
            if err:
                errs[i] = err
        self.table[:] = rows[inverse.reshape(-1)]
        for pos, u in enumerate(inverse.reshape(-1)):
            if int(u) in errs:
                self.errors[pos] = errs[int(u)]
