"""The V3D 4.2 (VideoCore VI, Raspberry Pi 4) QPU instruction set: field layout, op tables, decode/encode.

One 64-bit word is one instruction. This module turns a word into a structured `Instr` (modelled on Mesa's
`struct v3d_qpu_instr`, src/broadcom/qpu/qpu_instr.h) and back. The disassembler prints an `Instr`, the
assembler builds one, and the emulator executes one, so this file is the single place the encoding lives.
Encoding facts (bit positions, opcode ranges, mux constraints, tables) come from Mesa's qpu_pack.c for
devinfo->ver == 42; the code is pimoe's own.

ALU word layout (bit ranges inclusive):

    63:58 mul op     57:53 signal   52:46 cond (or signal write address)   45 mul magic   44 add magic
    43:38 mul waddr  37:32 add waddr   31:24 add op   23:21 mul mux b   20:18 mul mux a
    17:15 add mux b  14:12 add mux a   11:6 raddr_a   5:0 raddr_b

Branch word (mul op == 0 and signal bits 57:56 == 0b10):

    55:35 offset bits 23:3   34:32 cond   31:24 offset bits 31:24   23 set link (py-videocore6)
    22:21 msfign   17:15 bdu   14 ub   13:12 bdi   11:6 raddr_a

Input muxes (`AluOp.a` / `AluOp.b`): 0..5 read accumulator r0..r5, 6 (MUX_A) reads register file
`rf[raddr_a]`, 7 (MUX_B) reads `rf[raddr_b]`, or the small immediate `Instr.small_imm` when `sig.small_imm`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pimoe.errors import PimoeError

# ----------------------------------------------------------------------------------------------------------
# Field positions (shift, width)

F_OP_MUL = (58, 6)
F_SIG = (53, 5)
F_COND = (46, 7)
BIT_MM = 45  # mul waddr is a magic register
BIT_MA = 44  # add waddr is a magic register
F_WADDR_M = (38, 6)
F_WADDR_A = (32, 6)
F_OP_ADD = (24, 8)
F_MUL_B = (21, 3)
F_MUL_A = (18, 3)
F_ADD_B = (15, 3)
F_ADD_A = (12, 3)
F_RADDR_A = (6, 6)
F_RADDR_B = (0, 6)
# branch words
F_BR_ADDR_LOW = (35, 21)  # offset bits 23:3
F_BR_COND = (32, 3)
F_BR_ADDR_HIGH = (24, 8)  # offset bits 31:24
BIT_BR_LINK = 23  # py-videocore6's set_link; Mesa does not name this bit
F_BR_MSFIGN = (21, 2)
F_BR_BDU = (15, 3)
BIT_BR_UB = 14
F_BR_BDI = (12, 2)

COND_SIG_MAGIC = 1 << 6  # in the cond field of a signal that writes a register: the address is magic


def _get(word: int, f: tuple[int, int]) -> int:
    return (word >> f[0]) & ((1 << f[1]) - 1)


def _put(value: int, f: tuple[int, int]) -> int:
    assert 0 <= value < (1 << f[1]), (value, f)
    return value << f[0]


# ----------------------------------------------------------------------------------------------------------
# Registers and magic write addresses

MUX_R0, MUX_R1, MUX_R2, MUX_R3, MUX_R4, MUX_R5, MUX_A, MUX_B = range(8)
MUX_NAMES = ("r0", "r1", "r2", "r3", "r4", "r5", "A", "B")

# Magic waddr (magic_write=True) -> Mesa's name. 6 ("-") is "no write" (py-videocore6's `null`).
MAGIC_WADDR_NAMES: dict[int, str] = {
    0: "r0", 1: "r1", 2: "r2", 3: "r3", 4: "r4", 5: "r5", 6: "-", 7: "tlb", 8: "tlbu", 9: "unifa",
    10: "tmul", 11: "tmud", 12: "tmua", 13: "tmuau", 14: "vpm", 15: "vpmu", 16: "sync", 17: "syncu",
    18: "syncb", 19: "recip", 20: "rsqrt", 21: "exp", 22: "log", 23: "sin", 24: "rsqrt2",
    32: "tmuc", 33: "tmus", 34: "tmut", 35: "tmur", 36: "tmui", 37: "tmub", 38: "tmudref", 39: "tmuoff",
    40: "tmuscm", 41: "tmusf", 42: "tmuslod", 43: "tmuhs", 44: "tmuscm", 45: "tmuhsf", 46: "tmuhslod",
    55: "r5rep",
}  # 44 prints "tmuscm" in Mesa too (its table has that typo); py-videocore6 calls it tmuhscm
W_R0, W_R1, W_R2, W_R3, W_R4, W_R5, W_NOP = 0, 1, 2, 3, 4, 5, 6
W_UNIFA, W_TMUD, W_TMUA, W_TMUAU, W_SYNCB = 9, 11, 12, 13, 18
W_TMUC = 32
W_RECIP, W_RSQRT, W_EXP, W_LOG, W_SIN, W_RSQRT2 = 19, 20, 21, 22, 23, 24
W_R5REP = 55
SFU_WADDRS = frozenset({W_RECIP, W_RSQRT, W_EXP, W_LOG, W_SIN, W_RSQRT2})
TMU_WADDRS = frozenset(range(10, 14)) | frozenset(range(32, 47))  # tmul..tmuau, tmuc..tmuhslod

# ----------------------------------------------------------------------------------------------------------
# Small immediates: raddr_b index -> 32-bit pattern (0..15, -16..-1, then floats 2^-8 .. 2^7)


def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


SMALL_IMMS: tuple[int, ...] = tuple(
    [i for i in range(16)] + [(i - 16) & 0xFFFFFFFF for i in range(16)] + [_f32_bits(2.0 ** (i - 8)) for i in range(16)]
)
SMALL_IMM_INDEX: dict[int, int] = {v: i for i, v in enumerate(SMALL_IMMS)}

# ----------------------------------------------------------------------------------------------------------
# Signals (V3D 4.2 table: packed signal -> set of set flags)

SIG_FLAGS = ("thrsw", "ldunif", "ldunifa", "ldunifrf", "ldunifarf", "ldtmu", "ldvary", "ldvpm", "ldtlb",
             "ldtlbu", "ucb", "rotate", "wrtmuc", "small_imm")

SIG_TABLE: dict[int, frozenset[str]] = {
    0: frozenset(),
    1: frozenset({"thrsw"}),
    2: frozenset({"ldunif"}),
    3: frozenset({"thrsw", "ldunif"}),
    4: frozenset({"ldtmu"}),
    5: frozenset({"thrsw", "ldtmu"}),
    6: frozenset({"ldtmu", "ldunif"}),
    7: frozenset({"thrsw", "ldtmu", "ldunif"}),
    8: frozenset({"ldvary"}),
    9: frozenset({"thrsw", "ldvary"}),
    10: frozenset({"ldvary", "ldunif"}),
    11: frozenset({"thrsw", "ldvary", "ldunif"}),
    12: frozenset({"ldunifrf"}),
    13: frozenset({"thrsw", "ldunifrf"}),
    14: frozenset({"small_imm", "ldvary"}),
    15: frozenset({"small_imm"}),
    16: frozenset({"ldtlb"}),
    17: frozenset({"ldtlbu"}),
    18: frozenset({"wrtmuc"}),
    19: frozenset({"thrsw", "wrtmuc"}),
    20: frozenset({"ldvary", "wrtmuc"}),
    21: frozenset({"thrsw", "ldvary", "wrtmuc"}),
    22: frozenset({"ucb"}),
    23: frozenset({"rotate"}),
    24: frozenset({"ldunifa"}),
    25: frozenset({"ldunifarf"}),
    # 26..30 reserved
    31: frozenset({"small_imm", "ldtmu"}),
}
SIG_PACK: dict[frozenset[str], int] = {v: k for k, v in SIG_TABLE.items()}
# Signals whose destination register is given in the cond field (so such an instruction has no conditions)
SIG_WRITES_ADDRESS = frozenset({"ldunifrf", "ldunifarf", "ldvary", "ldtmu", "ldtlb", "ldtlbu"})


@dataclass(frozen=True)
class Sig:
    """The signal of an ALU instruction, one boolean per effect (Mesa's struct v3d_qpu_sig, V3D 4.2 subset).

    thrsw: thread switch after 2 more instructions. ldunif: next uniform -> r5. ldunifrf: next uniform ->
    `Instr.sig_addr`. ldunifa / ldunifarf: the same from the second (unifa) stream. ldtmu: pop TMU result ->
    `sig_addr`. rotate: the mul ALU's accumulator input is rotated across lanes (amount: `Instr.rot_amount`).
    small_imm: raddr_b is a small immediate index (value in `Instr.small_imm`). ldvary/ldvpm/ldtlb/ldtlbu/
    ucb/wrtmuc: graphics-pipeline signals, decoded but not used by compute kernels.
    """

    thrsw: bool = False
    ldunif: bool = False
    ldunifa: bool = False
    ldunifrf: bool = False
    ldunifarf: bool = False
    ldtmu: bool = False
    ldvary: bool = False
    ldvpm: bool = False
    ldtlb: bool = False
    ldtlbu: bool = False
    ucb: bool = False
    rotate: bool = False
    wrtmuc: bool = False
    small_imm: bool = False

    @classmethod
    def from_names(cls, names) -> "Sig":
        return cls(**{n: True for n in names})

    def names(self) -> frozenset[str]:
        return frozenset(n for n in SIG_FLAGS if getattr(self, n))

    @property
    def writes_address(self) -> bool:
        """True when the signal writes a register named by sig_addr/sig_magic (cond field reused)."""
        return self.ldunifrf or self.ldunifarf or self.ldvary or self.ldtmu or self.ldtlb or self.ldtlbu


# ----------------------------------------------------------------------------------------------------------
# Conditions and flags

CONDS = ("ifa", "ifb", "ifna", "ifnb")  # predicate a write per lane on flag A / B / not A / not B
PUSH_FLAGS = ("pushz", "pushn", "pushc")  # packed 1..3: B <- A; A <- (result == 0 / < 0 / carry)
UPDATE_FLAGS = ("andz", "andnz", "nornz", "norz", "andn", "andnn", "nornn", "norn",
                "andc", "andnc", "nornc", "norc")  # packed 4..15: A <- A and/nor (cond on result)


@dataclass(frozen=True)
class Flags:
    """Conditions and flag updates of an ALU instruction (Mesa's struct v3d_qpu_flags).

    ac / mc: write condition of the add / mul op: None or one of CONDS.
    apf / mpf: flag push by the add / mul op result: None or one of PUSH_FLAGS.
    auf / muf: flag update by the add / mul op result: None or one of UPDATE_FLAGS.
    Only some combinations are encodable (see `_FLAG_COMBOS`).
    """

    ac: str | None = None
    mc: str | None = None
    apf: str | None = None
    mpf: str | None = None
    auf: str | None = None
    muf: str | None = None


NO_FLAGS = Flags()

# which flag fields may be present together -> the fixed high bits of the packed cond field
_FLAG_COMBOS: dict[frozenset[str], int] = {
    frozenset(): 0,
    frozenset({"apf"}): 0,
    frozenset({"auf"}): 0,
    frozenset({"mpf"}): 1 << 4,
    frozenset({"muf"}): 1 << 4,
    frozenset({"ac"}): 1 << 5,
    frozenset({"ac", "mpf"}): 1 << 5,
    frozenset({"mc"}): (1 << 5) | (1 << 4),
    frozenset({"mc", "apf"}): (1 << 5) | (1 << 4),
    frozenset({"mc", "ac"}): 1 << 6,
    frozenset({"mc", "auf"}): 1 << 6,
}


def _push_or_update(packed: int) -> tuple[str | None, str | None]:
    """The low nibble of a one-ALU cond field: 1..3 a flag push, 4..15 a flag update (0: neither)."""
    low = packed & 0xF
    if low == 0:
        return None, None
    return (PUSH_FLAGS[low - 1], None) if low < 4 else (None, UPDATE_FLAGS[low - 4])


def unpack_flags(packed: int) -> Flags | None:
    """7-bit cond field -> Flags, or None if the value is reserved (0x10).

    0x00..0x0F: the add op's push/update alone; 0x11..0x1F: the mul op's; 0x2X / 0x3X: the add / mul op's
    write condition (bits 3:2) with a push of the other op (bits 1:0); 0x40..0x7F: the mul op's condition
    (bits 5:4) with the add op's condition or update."""
    if packed == 0x10:
        return None
    if packed >> 5 == 0:
        pf, uf = _push_or_update(packed)
        return Flags(apf=pf, auf=uf) if packed < 0x10 else Flags(mpf=pf, muf=uf)
    if packed >> 6 == 0:
        cond = CONDS[(packed >> 2) & 3]
        push = PUSH_FLAGS[(packed & 3) - 1] if packed & 3 else None
        return Flags(ac=cond, mpf=push) if packed >> 4 == 0x2 else Flags(mc=cond, apf=push)
    mc = CONDS[(packed >> 4) & 3]
    if (packed >> 2) & 3 == 0:
        return Flags(mc=mc, ac=CONDS[packed & 3])
    return Flags(mc=mc, auf=UPDATE_FLAGS[(packed & 0xF) - 4])


def pack_flags(flags: Flags) -> int | None:
    """Flags -> 7-bit cond field, or None if the combination cannot be encoded."""
    present = frozenset(k for k in ("ac", "mc", "apf", "mpf", "auf", "muf") if getattr(flags, k) is not None)
    if present not in _FLAG_COMBOS:
        return None
    packed = _FLAG_COMBOS[present]
    for pf in (flags.apf, flags.mpf):
        if pf is not None:
            packed |= PUSH_FLAGS.index(pf) + 1
    for uf in (flags.auf, flags.muf):
        if uf is not None:
            packed |= UPDATE_FLAGS.index(uf) + 4
    if flags.ac is not None:
        packed |= CONDS.index(flags.ac) << (0 if packed & (1 << 6) else 2)
    if flags.mc is not None:
        packed |= CONDS.index(flags.mc) << (4 if packed & (1 << 6) else 2)
    return packed


# ----------------------------------------------------------------------------------------------------------
# Opcode tables (V3D 4.2). Each row: (first opcode, last opcode, allowed mux_b set, allowed mux_a set, op).
# The first matching row wins, as in Mesa's lookup. Ops with fewer than 2 sources use the unused mux
# fields as part of the opcode.

_ANY = frozenset(range(8))


def _m(*vals: int) -> frozenset[int]:
    return frozenset(vals)


def _r(lo: int, hi: int) -> frozenset[int]:
    return frozenset(range(lo, hi + 1))


def _consecutive(first: int, *names: str) -> tuple:
    """Rows of ops with one opcode each, first, first + 1, ..., any operand muxes."""
    return tuple((first + i, first + i, _ANY, _ANY, name) for i, name in enumerate(names))


def _by_mux(op: int, names, mux_a: int | None = None) -> tuple:
    """Rows of ops sharing an opcode: names[i] is the op when mux_a is i (mux_b any), or, with mux_a given,
    when mux_b is i. A name of None: no op there; a ((lo, hi), name) pair spans the mux values lo..hi."""
    rows = []
    for i, name in enumerate(names):
        if name is None:
            continue
        muxes, name = (_m(i), name) if isinstance(name, str) else (_r(*name[0]), name[1])
        rows.append((op, op, muxes, _ANY, name) if mux_a is None else (op, op, _m(mux_a), muxes, name))
    return tuple(rows)


def _float_rounding(op: int, *names) -> tuple:
    """An opcode whose mux_a picks one of four ops: 0..2, 3, 4..6, 7 (the low ones take a rounding mode)."""
    lo, three, hi, seven = names
    return _by_mux(op, [((0, 2), lo) if lo else None, None, None, three, ((4, 6), hi) if hi else None, None,
                        None, seven])


ADD_OPS: tuple[tuple[int, int, frozenset[int], frozenset[int], str], ...] = (
    (0, 47, _ANY, _ANY, "fadd"),  # fadd vs faddnf: decided by operand order
    (0, 47, _ANY, _ANY, "faddnf"),
    (53, 55, _ANY, _ANY, "vfpack"),
    (56, 56, _ANY, _ANY, "add"),
    (57, 59, _ANY, _ANY, "vfpack"),
    (60, 60, _ANY, _ANY, "sub"),
    (61, 63, _ANY, _ANY, "vfpack"),
    (64, 111, _ANY, _ANY, "fsub"),
    *_consecutive(120, "min", "max", "umin", "umax", "shl", "shr", "asr", "ror"),
    (128, 175, _ANY, _ANY, "fmin"),  # fmin vs fmax: decided by operand order
    (128, 175, _ANY, _ANY, "fmax"),
    (176, 180, _ANY, _ANY, "vfmin"),
    *_consecutive(181, "and", "or", "xor", "vadd", "vsub"),
    *_by_mux(186, ["not", "neg", "flapush", "flbpush", "flpop", "recip", "setmsf", "setrevf"]),
    *_by_mux(187, ["nop", "tidx", "eidx", "lr", "vfla", "vflna", "vflb", "vflnb"], mux_a=0),
    *_by_mux(187, [((0, 2), "fxcd"), None, None, "xcd", ((4, 6), "fycd"), None, None, "ycd"], mux_a=1),
    # Mesa lists vdwwt (ver >= 33) before iid: it wins the lookup
    *_by_mux(187, ["msf", "revf", "vdwwt", "sampid", "barrierid", "tmuwt", "vpmwt", "flafirst"], mux_a=2),
    (187, 187, _m(3), _m(0), "flnafirst"),
    (187, 187, _m(3), _ANY, "vpmsetup"),
    *_by_mux(188, ["ldvpmv_in", "ldvpmd_in", "ldvpmp", "rsqrt", "exp", "log", "sin", "rsqrt2"]),
    (189, 189, _ANY, _ANY, "ldvpmg_in"),
    (192, 239, _ANY, _ANY, "fcmp"),
    (240, 244, _ANY, _ANY, "vfmax"),
    *_float_rounding(245, "fround", "ftoin", "ftrunc", "ftoiz"),
    *_float_rounding(246, "ffloor", "ftouz", "fceil", "ftoc"),
    *_float_rounding(247, "fdx", None, "fdy", None),
    (248, 248, _ANY, _ANY, "stvpm"),  # stvpmv/stvpmd/stvpmp by waddr 0/1/2
    *_float_rounding(252, "itof", "clz", "utof", None),
)

MUL_OPS: tuple[tuple[int, int, frozenset[int], frozenset[int], str], ...] = (
    *_consecutive(1, "add", "sub", "umul24"),
    (4, 8, _ANY, _ANY, "vfmul"),
    *_consecutive(9, "smul24", "multop"),
    (14, 14, _ANY, _ANY, "fmov"),
    (15, 15, _r(0, 3), _ANY, "fmov"),
    (15, 15, _m(4), _m(0), "nop"),
    (15, 15, _m(7), _ANY, "mov"),
    (16, 63, _ANY, _ANY, "fmul"),
)

# number of sources and whether the op writes a destination (Mesa's add_op_args / mul_op_args)
_ADD_NSRC0_DST = {"tidx", "eidx", "lr", "vfla", "vflna", "vflb", "vflnb", "fxcd", "xcd", "fycd", "ycd",
                  "msf", "revf", "vdwwt", "iid", "sampid", "barrierid", "tmuwt", "vpmwt", "flafirst",
                  "flnafirst"}
_ADD_NSRC1 = {"not", "neg", "flapush", "flbpush", "flpop", "recip", "setmsf", "setrevf", "vpmsetup",
              "ldvpmv_in", "ldvpmv_out", "ldvpmd_in", "ldvpmd_out", "ldvpmp", "rsqrt", "exp", "log", "sin",
              "rsqrt2", "fround", "ftoin", "ftrunc", "ftoiz", "ffloor", "ftouz", "fceil", "ftoc", "fdx", "fdy",
              "itof", "clz", "utof"}
ADD_OP_NAMES = frozenset(r[4] for r in ADD_OPS if r[4] != "stvpm") | {
    "stvpmv", "stvpmd", "stvpmp", "ldvpmv_out", "ldvpmd_out", "ldvpmg_out", "iid"}
MUL_OP_NAMES = frozenset(r[4] for r in MUL_OPS)


def add_op_num_src(op: str) -> int:
    if op == "nop" or op in _ADD_NSRC0_DST:
        return 0
    return 1 if op in _ADD_NSRC1 else 2


def add_op_has_dst(op: str) -> bool:
    return op not in ("nop", "stvpmv", "stvpmd", "stvpmp")


def mul_op_num_src(op: str) -> int:
    return 0 if op == "nop" else 1 if op in ("fmov", "mov") else 2


def mul_op_has_dst(op: str) -> bool:
    return op != "nop"


# Input unpack / output pack codes. Names are Mesa's (printed after the operand: "r1.abs", "r0.ll").
F32_UNPACK = {0: "abs", 1: None, 2: "l", 3: "h"}  # f32 operand: |x|, x, f16 low half, f16 high half
F32_UNPACK_CODE = {v: k for k, v in F32_UNPACK.items()}
F16_UNPACK = {0: None, 1: "ff", 2: "ll", 3: "hh", 4: "swp"}  # 2x16 operand: as is, f32->f16 both, lo lo, hi hi, swap
F16_UNPACK_CODE = {v: k for k, v in F16_UNPACK.items()}
PACKS = (None, "l", "h")  # output: f32, or convert to f16 into the low / high half (other half kept)

_F32_2SRC = ("fadd", "faddnf", "fsub", "fmin", "fmax", "fcmp")
_F32_ROUND = ("fround", "ftrunc", "ffloor", "fceil", "fdx", "fdy")
_F32_TOINT = ("ftoin", "ftoiz", "ftouz", "ftoc")

# ----------------------------------------------------------------------------------------------------------
# Branches

BRANCH_CONDS = ("always", "a0", "na0", "alla", "anyna", "anya", "allna")  # packed 0, 2..7
MSFIGNS = (None, "p", "q")
BRANCH_DESTS = ("abs", "rel", "lri", "rf")  # bdi/bdu: absolute, relative, link register, raddr_a register


# ----------------------------------------------------------------------------------------------------------
# The structured instruction


@dataclass(frozen=True)
class AluOp:
    """One ALU half (add or mul) of an instruction (Mesa's v3d_qpu_alu_instr.add / .mul).

    op: Mesa's op name ("fadd", "and", "nop", "fmul", "mov", ... see ADD_OP_NAMES / MUL_OP_NAMES).
    a, b: input muxes 0..7 (MUX_R0..MUX_R5, MUX_A, MUX_B); only the first `num_src` are operands.
    waddr: destination: register file index (magic_write False) or magic address (MAGIC_WADDR_NAMES).
    output_pack: None, "l" or "h" (f32 result converted to f16 into the low/high half of the destination).
    a_unpack, b_unpack: None or a F32_UNPACK / F16_UNPACK name applied to the operand before the op.
    """

    op: str = "nop"
    a: int = 0
    b: int = 0
    waddr: int = W_NOP
    magic_write: bool = True
    output_pack: str | None = None
    a_unpack: str | None = None
    b_unpack: str | None = None


@dataclass(frozen=True)
class Branch:
    """A branch instruction (Mesa's v3d_qpu_branch_instr).

    cond: one of BRANCH_CONDS (flag A of the lanes: a0 = lane 0's A set, alla / anya / ... over all lanes).
    msfign: None, "p" or "q" (multisample-flag ignore, for fragment shaders).
    bdi: how the new PC is formed: "abs" (offset), "rel" (address of the branch + 32 + signed offset,
         i.e. relative to the instruction after the 3 delay slots), "lri" (link register), "rf"
         (rf[raddr_a], lane 0).
    ub: whether the uniform stream branches too; then bdu says how: "abs"/"rel" (read the next uniform
        as the absolute / relative new uniform address), "lri", "rf" (rf[raddr_a]).
    bdu: the raw bdu field as a name, kept even when ub is False (py-videocore6 writes 1 = "rel" there).
    set_link: bit 23 (py-videocore6's `set_link`), not decoded by Mesa.
    raddr_a: register for "rf" destinations.
    offset: the 32-bit address/offset field as an unsigned number (multiple of 8); see `signed_offset`.
    """

    cond: str = "always"
    msfign: str | None = None
    bdi: str = "rel"
    bdu: str = "abs"
    ub: bool = False
    raddr_a: int = 0
    offset: int = 0
    set_link: bool = False

    @property
    def signed_offset(self) -> int:
        return self.offset - (1 << 32) if self.offset & (1 << 31) else self.offset


@dataclass(frozen=True)
class Instr:
    """One decoded QPU instruction (Mesa's struct v3d_qpu_instr, V3D 4.2).

    type: "alu" or "branch" (then only `branch` is meaningful).
    sig: the Sig flags. sig_addr / sig_magic: destination of a register-writing signal (ldtmu, ldunifrf,
        ldunifarf, ...): rf[sig_addr] or magic register sig_addr (e.g. 0..5 = r0..r5).
    raddr_a, raddr_b: the register-file read addresses (raw 6-bit fields). When sig.small_imm, raddr_b
        is the index of `small_imm`; when sig.rotate, raddr_b holds the rotation (see `rot_amount`).
    flags: write conditions and flag push/update (Flags).
    add, mul: the two ALU ops (AluOp); `nop` ops do nothing.
    word: the 64-bit word this was decoded from (0 when built by hand).
    """

    type: str = "alu"
    sig: Sig = Sig()
    sig_addr: int = 0
    sig_magic: bool = False
    raddr_a: int = 0
    raddr_b: int = 0
    flags: Flags = NO_FLAGS
    add: AluOp = AluOp()
    mul: AluOp = AluOp()
    branch: Branch | None = None
    word: int = field(default=0, compare=False)

    @property
    def small_imm(self) -> int | None:
        """The 32-bit pattern read through mux B when sig.small_imm (ints as two's complement, floats as f32
        bits), else None."""
        if not self.sig.small_imm:
            return None
        return SMALL_IMMS[self.raddr_b]

    @property
    def rot_amount(self) -> int | None:
        """For sig.rotate: the rotation amount of the mul ALU's accumulator inputs, in 0..15 (mod 16), or -1
        meaning "by r5". raddr_b 0 means r5, otherwise raddr_b is a small-immediate index (1..15, or 16..31 =
        -16..-1 taken mod 16), as py-videocore6 encodes `rotate(dst, src, n)`. The lane direction is defined
        by the hardware tests in py-videocore6 (tests/test_signals.py); this field only gives the amount.
        py-videocore6 emits `rotate` with an accumulator source and `quad_rotate` with a register-file source
        (mul mux A/B); both are `nop ; mov dst, src` with this signal."""
        if not self.sig.rotate:
            return None
        if self.raddr_b == 0:
            return -1
        return SMALL_IMMS[self.raddr_b] % 16 if self.raddr_b < 32 else None


class InvalidInstruction(PimoeError):
    """A 64-bit word that is not a valid V3D 4.2 QPU instruction (or an Instr that cannot be encoded)."""


# ----------------------------------------------------------------------------------------------------------
# Decode


def _lookup(table, opcode: int, mux_a: int, mux_b: int) -> str | None:
    for first, last, b_ok, a_ok, name in table:
        if first <= opcode <= last and mux_b in b_ok and mux_a in a_ok:
            return name
    return None


def _bad(word: int, why: str) -> InvalidInstruction:
    return InvalidInstruction(f"invalid QPU instruction 0x{word:016x}: {why}")


def _decode_add(word: int) -> AluOp:
    op = _get(word, F_OP_ADD)
    mux_a = _get(word, F_ADD_A)
    mux_b = _get(word, F_ADD_B)
    waddr = _get(word, F_WADDR_A)
    map_op = op
    # the 245..247 cluster is repeated at 249..251 and 253..255 with the a-unpack in bits 3:2
    if 249 <= map_op <= 251:
        map_op = map_op - 249 + 245
    elif 253 <= map_op <= 255:
        map_op = map_op - 253 + 245
    name = _lookup(ADD_OPS, map_op, mux_a, mux_b)
    if name is None:
        raise _bad(word, f"no add-ALU op has opcode {op} with mux a={mux_a} b={mux_b}")
    # commutative pairs share opcodes; which one it is follows from the operand order
    if ((op >> 2) & 3) * 8 + mux_a > (op & 3) * 8 + mux_b:
        name = {"fmin": "fmax", "fadd": "faddnf"}.get(name, name)
    if name == "stvpm":
        if waddr > 2:
            raise _bad(word, f"stvpm with waddr {waddr} (only 0..2)")
        name = ("stvpmv", "stvpmd", "stvpmp")[waddr]
    pack = a_un = b_un = None
    if name in _F32_2SRC or name == "vfpack":
        if name != "vfpack":
            p = (op >> 4) & 3
            if p == 3:
                raise _bad(word, f"{name} with output pack code 3")
            pack = PACKS[p]
        a_un = F32_UNPACK[(op >> 2) & 3]
        b_un = F32_UNPACK[op & 3]
    elif name in _F32_ROUND:
        if mux_b & 3 == 3:
            raise _bad(word, f"{name} with output pack code 3")
        pack = PACKS[mux_b & 3]
        a_un = F32_UNPACK[(op >> 2) & 3]
    elif name in _F32_TOINT:
        a_un = F32_UNPACK[(op >> 2) & 3]
    elif name in ("itof", "utof"):
        pack = PACKS[mux_b & 3]
    elif name in ("vfmin", "vfmax"):
        if op & 7 not in F16_UNPACK:
            raise _bad(word, f"{name} with 16-bit unpack code {op & 7}")
        a_un = F16_UNPACK[op & 7]
    magic = bool((word >> BIT_MA) & 1)
    if magic and name in ("ldvpmv_in", "ldvpmd_in", "ldvpmg_in"):
        name = name.replace("_in", "_out")
        magic = False
    return AluOp(name, mux_a, mux_b, waddr, magic, pack, a_un, b_un)


def _decode_mul(word: int) -> AluOp:
    op = _get(word, F_OP_MUL)
    mux_a = _get(word, F_MUL_A)
    mux_b = _get(word, F_MUL_B)
    name = _lookup(MUL_OPS, op, mux_a, mux_b)
    if name is None:
        raise _bad(word, f"no mul-ALU op has opcode {op} with mux a={mux_a} b={mux_b}")
    pack = a_un = b_un = None
    if name == "fmul":
        pack = PACKS[((op >> 4) & 3) - 1]
        a_un = F32_UNPACK[(op >> 2) & 3]
        b_un = F32_UNPACK[op & 3]
    elif name == "fmov":
        pack = PACKS[((op & 1) << 1) + ((mux_b >> 2) & 1)]
        a_un = F32_UNPACK[mux_b & 3]
    elif name == "vfmul":
        a_un = F16_UNPACK[((op & 7) - 4) & 7]
    return AluOp(name, mux_a, mux_b, _get(word, F_WADDR_M), bool((word >> BIT_MM) & 1), pack, a_un, b_un)


def _decode_branch(word: int) -> Instr:
    cond = _get(word, F_BR_COND)
    if cond == 1:
        raise _bad(word, "branch condition code 1 is reserved")
    msfign = _get(word, F_BR_MSFIGN)
    if msfign == 3:
        raise _bad(word, "branch msfign 3 is reserved")
    offset = (_get(word, F_BR_ADDR_LOW) << 3) | (_get(word, F_BR_ADDR_HIGH) << 24)
    bdu = _get(word, F_BR_BDU)
    ub = bool((word >> BIT_BR_UB) & 1)
    if ub and bdu > 3:
        raise _bad(word, f"branch uniform destination {bdu} is reserved")
    br = Branch(
        cond=BRANCH_CONDS[0 if cond == 0 else cond - 1],
        msfign=MSFIGNS[msfign],
        bdi=BRANCH_DESTS[_get(word, F_BR_BDI)],
        bdu=BRANCH_DESTS[bdu] if bdu <= 3 else str(bdu),
        ub=ub,
        raddr_a=_get(word, F_RADDR_A),
        offset=offset,
        set_link=bool((word >> BIT_BR_LINK) & 1),
    )
    return Instr(type="branch", branch=br, raddr_a=br.raddr_a, word=word)


def decode(word: int) -> Instr:
    """Decode one 64-bit V3D 4.2 instruction word into an Instr; InvalidInstruction if it is not one."""
    if not 0 <= word < (1 << 64):
        raise InvalidInstruction(f"invalid QPU instruction {word!r}: not a 64-bit unsigned word")
    sig_code = _get(word, F_SIG)
    if _get(word, F_OP_MUL) == 0:
        if sig_code & 0b11000 == 0b10000:
            return _decode_branch(word)
        raise _bad(word, "mul op 0 but not a branch (signal bits 57:56 != 0b10)")
    names = SIG_TABLE.get(sig_code)
    if names is None:
        raise _bad(word, f"signal {sig_code} is reserved")
    sig = Sig.from_names(names)
    cond = _get(word, F_COND)
    sig_addr, sig_magic, flags = 0, False, NO_FLAGS
    if sig.writes_address:
        sig_addr, sig_magic = cond & 0x3F, bool(cond & COND_SIG_MAGIC)
        if sig_magic and sig_addr not in MAGIC_WADDR_NAMES:
            raise _bad(word, f"signal writes unknown magic address {sig_addr}")
    else:
        f = unpack_flags(cond)
        if f is None:
            raise _bad(word, f"condition code 0x{cond:02x} is reserved")
        flags = f
    raddr_b = _get(word, F_RADDR_B)
    if sig.small_imm and raddr_b >= len(SMALL_IMMS):
        raise _bad(word, f"small immediate index {raddr_b} (only 0..47 exist)")
    add = _decode_add(word)
    mul = _decode_mul(word)
    for half in (add, mul):
        if half.magic_write and half.waddr not in MAGIC_WADDR_NAMES and half.op != "nop":
            raise _bad(word, f"{half.op} writes unknown magic address {half.waddr}")
    return Instr(type="alu", sig=sig, sig_addr=sig_addr, sig_magic=sig_magic, raddr_a=_get(word, F_RADDR_A),
                 raddr_b=raddr_b, flags=flags, add=add, mul=mul, word=word)


# ----------------------------------------------------------------------------------------------------------
# Encode


def _op_row(table, name: str):
    for row in table:
        if row[4] == name:
            return row
    return None


def _lowest(s: frozenset[int]) -> int:
    return min(s)


def _unused_muxes(row, nsrc: int, mux_a: int, mux_b: int) -> tuple[int, int]:
    """Unused muxes are part of the opcode: keep a given value the op allows (fxcd/fycd accept several),
    else the first allowed one. row = (opcode, _, allowed mux_b set, allowed mux_a set)."""
    if nsrc < 2 and mux_b not in row[2]:
        mux_b = _lowest(row[2])
    if nsrc < 1 and mux_a not in row[3]:
        mux_a = _lowest(row[3])
    return mux_a, mux_b


def _f32_unpack_code(name: str, u, what: str) -> int:
    if u not in F32_UNPACK_CODE:
        raise InvalidInstruction(f"{name}: {what} unpack {u!r} is not an f32 unpack (abs, l, h)")
    return F32_UNPACK_CODE[u]


def _encode_add(a: AluOp) -> int:
    name = a.op
    nsrc = add_op_num_src(name)
    mux_a, mux_b, waddr, magic = a.a, a.b, a.waddr, a.magic_write
    word = 0
    table_name = name
    if name in ("stvpmv", "stvpmd", "stvpmp"):
        table_name = "stvpm"
        waddr = ("stvpmv", "stvpmd", "stvpmp").index(name)  # waddr selects the variant; the magic bit is kept
    elif name in ("ldvpmv_out", "ldvpmd_out", "ldvpmg_out"):
        table_name = name.replace("_out", "_in")
        magic = True
    elif name == "iid":
        table_name = "vdwwt"  # same encoding on 4.2 (Mesa decodes it as vdwwt)
    row = _op_row(ADD_OPS, table_name)
    if row is None:
        raise InvalidInstruction(f"{name!r} is not an add-ALU op")
    opcode = row[0]
    mux_a, mux_b = _unused_muxes(row, nsrc, mux_a, mux_b)

    def _f32(u, what):
        return _f32_unpack_code(name, u, what)

    def _pack(p):
        if p not in PACKS:
            raise InvalidInstruction(f"{name}: output pack {p!r} (only l, h)")
        return PACKS.index(p)

    if name in _F32_2SRC:
        opcode |= _pack(a.output_pack) << 4
        au, bu = _f32(a.a_unpack, "a"), _f32(a.b_unpack, "b")
        ordering = au * 8 + mux_a > bu * 8 + mux_b
        if (name in ("fmin", "fadd") and ordering) or (name in ("fmax", "faddnf") and not ordering):
            au, bu, mux_a, mux_b = bu, au, mux_b, mux_a
        opcode |= (au << 2) | bu
    elif name == "vfpack":
        if a.a_unpack == "abs" or a.b_unpack == "abs":
            raise InvalidInstruction("vfpack: abs unpack is not encodable")
        if a.output_pack is not None:
            raise InvalidInstruction("vfpack: no output pack")
        opcode = (opcode & ~0xF) | (_f32(a.a_unpack, "a") << 2) | _f32(a.b_unpack, "b")
    elif name in _F32_ROUND:
        mux_b = _lowest(row[2]) | _pack(a.output_pack)  # mux_b bits 1:0 hold the output pack
        au = _f32(a.a_unpack, "a")
        if au == 0:
            raise InvalidInstruction(f"{name}: abs unpack is not encodable")
        opcode = (opcode & ~0xC) | (au << 2)
    elif name in _F32_TOINT:
        if a.output_pack is not None:
            raise InvalidInstruction(f"{name}: no output pack")
        au = _f32(a.a_unpack, "a")
        if au == 0:
            raise InvalidInstruction(f"{name}: abs unpack is not encodable")
        opcode = (opcode & ~0xC) | (au << 2)
    elif name in ("itof", "utof"):
        if a.a_unpack is not None:
            raise InvalidInstruction(f"{name}: no input unpack")
        mux_b = _lowest(row[2]) | _pack(a.output_pack)
    elif name in ("vfmin", "vfmax"):
        if a.output_pack is not None or a.b_unpack is not None:
            raise InvalidInstruction(f"{name}: only the a operand takes an unpack (ff, ll, hh, swp)")
        if a.a_unpack not in F16_UNPACK_CODE:
            raise InvalidInstruction(f"{name}: a unpack {a.a_unpack!r} is not a 16-bit unpack (ff, ll, hh, swp)")
        opcode |= F16_UNPACK_CODE[a.a_unpack]
    elif name != "nop" and (a.output_pack or a.a_unpack or a.b_unpack):
        raise InvalidInstruction(f"{name} takes no pack/unpack modifiers")
    word |= _put(mux_a, F_ADD_A) | _put(mux_b, F_ADD_B) | _put(opcode, F_OP_ADD) | _put(waddr, F_WADDR_A)
    if magic:
        word |= 1 << BIT_MA
    return word


def _encode_mul(m: AluOp) -> int:
    name = m.op
    row = _op_row(MUL_OPS, name)
    if row is None:
        raise InvalidInstruction(f"{name!r} is not a mul-ALU op")
    nsrc = mul_op_num_src(name)
    opcode = row[0]
    mux_a, mux_b = _unused_muxes(row, nsrc, m.a, m.b)

    def _f32(u, what):
        return _f32_unpack_code(name, u, what)

    if m.output_pack not in PACKS:
        raise InvalidInstruction(f"{name}: output pack {m.output_pack!r} (only l, h)")
    pk = PACKS.index(m.output_pack)
    if name == "fmul":
        opcode += pk << 4
        opcode |= (_f32(m.a_unpack, "a") << 2) | _f32(m.b_unpack, "b")
    elif name == "fmov":
        opcode |= (pk >> 1) & 1
        mux_b = ((pk & 1) << 2) | _f32(m.a_unpack, "a")
    elif name == "vfmul":
        if pk or m.b_unpack is not None:
            raise InvalidInstruction("vfmul: only the a operand takes an unpack (ff, ll, hh, swp)")
        if m.a_unpack not in F16_UNPACK_CODE:
            raise InvalidInstruction(f"vfmul: a unpack {m.a_unpack!r} is not a 16-bit unpack (ff, ll, hh, swp)")
        opcode = 4 + F16_UNPACK_CODE[m.a_unpack]
    elif name != "nop" and (m.output_pack or m.a_unpack or m.b_unpack):
        raise InvalidInstruction(f"{name} takes no pack/unpack modifiers")
    word = _put(mux_a, F_MUL_A) | _put(mux_b, F_MUL_B) | _put(opcode, F_OP_MUL) | _put(m.waddr, F_WADDR_M)
    if m.magic_write:
        word |= 1 << BIT_MM
    return word


def _encode_branch(b: Branch) -> int:
    word = _put(0b10000, F_SIG)
    if b.cond not in BRANCH_CONDS:
        raise InvalidInstruction(f"branch condition {b.cond!r} (one of {', '.join(BRANCH_CONDS)})")
    ci = BRANCH_CONDS.index(b.cond)
    word |= _put(0 if ci == 0 else ci + 1, F_BR_COND)
    word |= _put(MSFIGNS.index(b.msfign), F_BR_MSFIGN)
    word |= _put(BRANCH_DESTS.index(b.bdi), F_BR_BDI)
    bdu = BRANCH_DESTS.index(b.bdu) if b.bdu in BRANCH_DESTS else int(b.bdu)
    word |= _put(bdu, F_BR_BDU)
    if b.ub:
        word |= 1 << BIT_BR_UB
    if b.set_link:
        word |= 1 << BIT_BR_LINK
    off = b.offset & 0xFFFFFFFF
    if off & 7:
        raise InvalidInstruction(f"branch offset {b.offset} is not a multiple of 8")
    word |= _put((off & 0xFFFFFF) >> 3, F_BR_ADDR_LOW) | _put(off >> 24, F_BR_ADDR_HIGH)
    word |= _put(b.raddr_a, F_RADDR_A)
    return word


def encode(instr: Instr) -> int:
    """Encode an Instr into its 64-bit word (the inverse of `decode` for every valid word, up to bits the
    hardware ignores); InvalidInstruction if it cannot be encoded."""
    if instr.type == "branch":
        if instr.branch is None:
            raise InvalidInstruction("branch instruction without branch fields")
        return _encode_branch(instr.branch)
    names = instr.sig.names()
    if names not in SIG_PACK:
        raise InvalidInstruction(f"signal combination {{{', '.join(sorted(names)) or 'none'}}} is not encodable "
                                 f"on V3D 4.2")
    word = _put(SIG_PACK[names], F_SIG)
    if instr.sig.writes_address:
        if instr.flags != NO_FLAGS:
            raise InvalidInstruction("a signal that writes a register (ldtmu, ldunifrf, ldunifarf, ...) "
                                     "leaves no room for conditions or flag updates")
        word |= _put(instr.sig_addr | (COND_SIG_MAGIC if instr.sig_magic else 0), F_COND)
    else:
        packed = pack_flags(instr.flags)
        if packed is None:
            raise InvalidInstruction(f"conditions/flags {instr.flags} cannot be encoded together")
        word |= _put(packed, F_COND)
    word |= _put(instr.raddr_a, F_RADDR_A) | _put(instr.raddr_b, F_RADDR_B)
    word |= _encode_add(instr.add)
    word |= _encode_mul(instr.mul)
    return word


NOP_WORD = encode(Instr())  # nop ; nop, both writing the "-" magic address (0x3c003186bb800000)

__all__ = [
    "AluOp", "Branch", "Flags", "Instr", "InvalidInstruction", "Sig", "decode", "encode",
    "MAGIC_WADDR_NAMES", "SMALL_IMMS", "SMALL_IMM_INDEX", "ADD_OP_NAMES", "MUL_OP_NAMES",
    "add_op_num_src", "add_op_has_dst", "mul_op_num_src", "mul_op_has_dst",
]
