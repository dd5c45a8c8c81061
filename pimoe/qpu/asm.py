"""The QPU kernel DSL: py-videocore6's assembly language, assembled by pimoe.

A kernel is a Python function decorated with `@qpu`, taking the assembly as first argument:

    from pimoe.qpu import qpu, assemble

    @qpu
    def kernel(asm, *, n):
        eidx(r0, sig=ldunifrf(rf0))          # add-ALU op, signal writing rf0
        shl(r0, r0, 2)                        # small immediate 2
        mov(tmua, rf0).add(rf0, rf0, r0)      # dual issue: add-ALU mov (bor) + mul-ALU add
        with loop as l:
            sub(rf1, rf1, 1, cond='pushz')
            l.b(cond='na0')                    # branch with 3 delay slots
            nop(); nop(); nop()
        nop(sig=thrsw)
        ...

    words = assemble(kernel, n=4)             # list[int] of 64-bit instruction words

While the kernel runs, `@qpu` puts the language's names (ops, registers, signals, `L`, `R`, `b`, `loop`,
`link`, `raw`, `namespace`, `rf`, `rotate`, ...) into the kernel module's globals, exactly as py-videocore6
does, and restores the globals afterwards, so kernels written for py-videocore6 run unchanged. The words
are py-videocore6's words for the same program (its encoding choices included, e.g. `mov` is `bor dst, src,
src` on the add ALU, `fmov` of a small immediate carries the abs unpack, `nop` writes the "-" magic
register). The bit-level encoding itself lives in pimoe.qpu.isa.

A bad program raises AssembleError (a PimoeError) naming the kernel, the source line and what is wrong:
too many register-file reads, small-immediate conflicts, unencodable signal or condition combinations,
an op on the wrong ALU, modifiers an op cannot take, undefined or duplicate labels, values out of range.
"""

from __future__ import annotations

import functools
import linecache
import math
import numbers
import os
import struct
import sys
from typing import Any, Callable

from pimoe.errors import PimoeError
from pimoe.qpu import isa


__all__ = ["AssembleError", "Assembly", "Register", "assemble", "get_label_positions", "qpu"]


class AssembleError(PimoeError):
    """A kernel that cannot be assembled; the message names the kernel source line."""


# ----------------------------------------------------------------------------------------------------------
# Where in the kernel source an instruction came from

_THIS_FILE = os.path.normcase(os.path.abspath(__file__))


class Where:
    """A kernel source location (the first frame outside this module)."""

    __slots__ = ("filename", "lineno", "function")

    def __init__(self, filename: str, lineno: int, function: str):
        self.filename, self.lineno, self.function = filename, lineno, function

    _internal: dict[str, bool] = {}  # co_filename -> belongs to this module (abspath is slow: cache it)

    @classmethod
    def here(cls) -> "Where":
        frame = sys._getframe(1)
        internal = cls._internal
        while frame is not None:
            name = frame.f_code.co_filename
            inside = internal.get(name)
            if inside is None:
                inside = internal[name] = (os.path.normcase(os.path.abspath(name)) == _THIS_FILE
                                           or name.startswith("<frozen"))
            if not inside:
                # functools.partial frames are C, so the first foreign Python frame is the caller
                return cls(name, frame.f_lineno, frame.f_code.co_name)
            frame = frame.f_back
        return cls("?", 0, "?")

    def describe(self) -> str:
        src = linecache.getline(self.filename, self.lineno).strip()
        text = f"{os.path.basename(self.filename)}:{self.lineno} in {self.function}()"
        return f"{text}: `{src}`" if src else text


def _fail(where: Where | None, message: str) -> AssembleError:
    if where is None:
        return AssembleError(message)
    return AssembleError(f"{where.describe()}: {message}")


# ----------------------------------------------------------------------------------------------------------
# Registers

# output (pack) modifiers and input (unpack) modifiers, in py-videocore6's spelling; Mesa's names accepted too
OUTPUT_MODIFIERS = {"none": None, "l": "l", "h": "h"}
F32_UNPACKS = {"none": None, "abs": "abs", "l": "l", "h": "h"}
F16_UNPACKS = {"none": None, "r32": "ff", "rl2h": "ll", "rh2l": "hh", "swap": "swp",
               "ff": "ff", "ll": "ll", "hh": "hh", "swp": "swp"}
INPUT_MODIFIERS = set(F32_UNPACKS) | set(F16_UNPACKS)


class Register:
    """A register: an accumulator r0..r5, a register-file entry rf0..rf63 or a magic write address.

    magic: 1 for accumulators and magic registers (encoded with the magic-write bit), 0 for rf.
    `reg.pack('l'|'h')` (destination: store as f16 in the low/high half) and `reg.unpack(...)` (source:
    'abs', 'l', 'h' for f32 ops; 'r32', 'rl2h', 'rh2l', 'swap' for the 2x16-bit ops) return modified copies.
    """

    __slots__ = ("name", "magic", "waddr", "pack_mod", "unpack_mod")

    def __init__(self, name: str, magic: int, waddr: int, pack: str = "none", unpack: str = "none"):
        self.name, self.magic, self.waddr = name, magic, waddr
        self.pack_mod, self.unpack_mod = pack, unpack

    def pack(self, modifier: str) -> "Register":
        if modifier not in OUTPUT_MODIFIERS:
            raise _fail(Where.here(), f"unknown output pack {modifier!r} for {self.name} (one of l, h, none)")
        if self.pack_mod != "none":
            raise _fail(Where.here(), f"{self.name} is already packed ({self.pack_mod})")
        return Register(self.name, self.magic, self.waddr, pack=modifier, unpack=self.unpack_mod)

    def unpack(self, modifier: str) -> "Register":
        if modifier not in INPUT_MODIFIERS:
            raise _fail(Where.here(), f"unknown input unpack {modifier!r} for {self.name} "
                                      f"(abs, l, h, r32, rl2h, rh2l, swap, none)")
        if self.unpack_mod != "none":
            raise _fail(Where.here(), f"{self.name} is already unpacked ({self.unpack_mod})")
        return Register(self.name, self.magic, self.waddr, pack=self.pack_mod, unpack=modifier)

    @property
    def is_rf(self) -> bool:
        return self.magic == 0

    @property
    def is_accumulator(self) -> bool:
        return self.magic == 1 and self.waddr < 6

    def __repr__(self) -> str:
        mods = "".join(f".{m}" for m in (self.pack_mod, self.unpack_mod) if m != "none")
        return self.name + mods


# magic write addresses by py-videocore6 name (the SFU ones are callable, see SFUIntegrator)
MAGIC_REGISTERS: dict[str, int] = {
    "r0": 0, "r1": 1, "r2": 2, "r3": 3, "r4": 4, "r5": 5, "null": 6, "tlb": 7, "tlbu": 8, "unifa": 9,
    "tmul": 10, "tmud": 11, "tmua": 12, "tmuau": 13, "vpm": 14, "vpmu": 15, "sync": 16, "syncu": 17,
    "syncb": 18, "recip": 19, "rsqrt": 20, "exp": 21, "log": 22, "sin": 23, "rsqrt2": 24,
    "tmuc": 32, "tmus": 33, "tmut": 34, "tmur": 35, "tmui": 36, "tmub": 37, "tmudref": 38, "tmuoff": 39,
    "tmuscm": 40, "tmusf": 41, "tmuslod": 42, "tmuhs": 43, "tmuhscm": 44, "tmuhsf": 45, "tmuhslod": 46,
    "r5rep": 55,
}
SFU_NAMES = ("recip", "rsqrt", "exp", "log", "sin", "rsqrt2")
REGISTERS: dict[str, Register] = {n: Register(n, 1, w) for n, w in MAGIC_REGISTERS.items() if n not in SFU_NAMES}
for _i in range(64):
    REGISTERS[f"rf{_i}"] = Register(f"rf{_i}", 0, _i)
NULL = REGISTERS["null"]

# ----------------------------------------------------------------------------------------------------------
# Signals

# py-videocore6 signal name -> isa.Sig field
_SIG_FIELD = {"thrsw": "thrsw", "ldunif": "ldunif", "ldunifa": "ldunifa", "ldunifrf": "ldunifrf",
              "ldunifarf": "ldunifarf", "ldtmu": "ldtmu", "ldvary": "ldvary", "ldvpm": "ldvpm", "ldtlb": "ldtlb",
              "ldtlbu": "ldtlbu", "smimm": "small_imm", "ucb": "ucb", "rot": "rotate", "wrtmuc": "wrtmuc"}
_WRITE_SIGNALS = ("ldunifrf", "ldunifarf", "ldtmu", "ldvary", "ldtlb", "ldtlbu")


class Signal:
    """A signal on an instruction (`sig=thrsw`, `sig=ldtmu(r0)`, `sig=[thrsw, ldunif]`, `sig=rot(1)`)."""

    __slots__ = ("name", "dst", "rot")

    def __init__(self, name: str, dst: Register | None = None, rot: Register | int | None = None):
        self.name, self.dst, self.rot = name, dst, rot

    def __repr__(self) -> str:
        arg = self.dst if self.dst is not None else self.rot
        return self.name if arg is None else f"{self.name}({arg})"


class WriteSignal:
    """A signal that writes a register: call it with the destination (`ldtmu(r0)`, `ldunifrf(rf3)`)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, dst: Register) -> Signal:
        if not isinstance(dst, Register):
            raise _fail(Where.here(), f"{self.name}(...) needs a destination register, got {dst!r}")
        return Signal(self.name, dst=dst)

    def __repr__(self) -> str:
        return self.name


class RotateSignal:
    """`rot(n)`: rotate the mul ALU's accumulator input by n lanes (1..15, -16..-1) or by r5."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, rot: int | Register) -> Signal:
        return Signal(self.name, rot=rot)

    def __repr__(self) -> str:
        return self.name


SIGNALS: dict[str, Any] = {n: (WriteSignal(n) if n in _WRITE_SIGNALS else Signal(n)) for n in _SIG_FIELD}
SIGNALS["rot"] = RotateSignal("rot")


def _signal_list(sig, where: Where) -> list[Signal]:
    """Normalize a `sig=` argument (Signal, list/tuple/set of them, or a py-videocore6 1.x string)."""
    if sig is None:
        return []
    if isinstance(sig, str):  # old py-videocore6 spelling: sig='thrsw ldunif'
        out = []
        for name in sig.split():
            s = SIGNALS.get(name)
            if not isinstance(s, Signal):
                raise _fail(where, f"signal {name!r} given as a string is unknown or needs an argument")
            out.append(s)
        return out
    if isinstance(sig, (WriteSignal, RotateSignal)):
        example = "(r0)" if isinstance(sig, WriteSignal) else "(-1)"
        what = "destination register" if isinstance(sig, WriteSignal) else "rotate amount"
        raise _fail(where, f'signal "{sig.name}" requires a {what} (e.g. "{sig.name}{example}")')
    if isinstance(sig, Signal):
        return [sig]
    if isinstance(sig, (list, tuple, set, frozenset)):
        out = []
        for s in sig:
            out.extend(_signal_list(s, where))
        return out
    raise _fail(where, f"invalid signal object {sig!r}")


# ----------------------------------------------------------------------------------------------------------
# Operations: DSL name -> Mesa/isa op name

ADD_OPS: dict[str, str] = {
    "fadd": "fadd", "faddnf": "faddnf", "vfpack": "vfpack", "add": "add", "sub": "sub", "fsub": "fsub",
    "imin": "min", "imax": "max", "umin": "umin", "umax": "umax", "shl": "shl", "shr": "shr", "asr": "asr",
    "ror": "ror", "fmin": "fmin", "fmax": "fmax", "vfmin": "vfmin", "band": "and", "bor": "or", "bxor": "xor",
    "bnot": "not", "neg": "neg", "flapush": "flapush", "flbpush": "flbpush", "flpop": "flpop",
    "setmsf": "setmsf", "setrevf": "setrevf", "nop": "nop", "tidx": "tidx", "eidx": "eidx", "lr": "lr",
    "vfla": "vfla", "vflna": "vflna", "vflb": "vflb", "vflnb": "vflnb", "msf": "msf", "revf": "revf",
    "iid": "iid", "sampid": "sampid", "barrierid": "barrierid", "tmuwt": "tmuwt", "vpmwt": "vpmwt",
    "fcmp": "fcmp", "vfmax": "vfmax", "fround": "fround", "ftoin": "ftoin", "ftrunc": "ftrunc",
    "ftoiz": "ftoiz", "ffloor": "ffloor", "ftouz": "ftouz", "fceil": "fceil", "ftoc": "ftoc", "fdx": "fdx",
    "fdy": "fdy", "stvpmv": "stvpmv", "stvpmd": "stvpmd", "stvpmp": "stvpmp", "itof": "itof", "clz": "clz",
    "utof": "utof",
    # SFU ops (called through the SFU registers: exp(dst, src))
    "_op_recip": "recip", "_op_rsqrt": "rsqrt", "_op_exp": "exp", "_op_log": "log", "_op_sin": "sin",
    "_op_rsqrt2": "rsqrt2",
}
MUL_OPS: dict[str, str] = {
    "add": "add", "sub": "sub", "umul24": "umul24", "vfmul": "vfmul", "smul24": "smul24", "multop": "multop",
    "fmov": "fmov", "nop": "nop", "mov": "mov", "fmul": "fmul",
}
_F32_OPS = {"fadd", "faddnf", "fsub", "fmin", "fmax", "fcmp", "vfpack", "fround", "ftrunc", "ffloor", "fceil",
            "fdx", "fdy", "ftoin", "ftoiz", "ftouz", "ftoc", "fmul", "fmov"}
_F16_OPS = {"vfmin", "vfmax", "vfmul"}
_PACKABLE = {"fadd", "faddnf", "fsub", "fmin", "fmax", "fcmp", "fround", "ftrunc", "ffloor", "fceil", "fdx",
             "fdy", "fmul", "fmov"}


class _OpCall:
    """One ALU half as written in the kernel: op, destination, sources, condition, signals."""

    __slots__ = ("alu", "name", "op", "dst", "src1", "src2", "cond", "sigs", "where")

    def __init__(self, alu: str, name: str, where: Where, dst=NULL, src1=None, src2=None, cond=None, sig=None):
        self.alu, self.name, self.where = alu, name, where
        table = ADD_OPS if alu == "add" else MUL_OPS
        self.op = table[name]
        nsrc = isa.add_op_num_src(self.op) if alu == "add" else isa.mul_op_num_src(self.op)
        shown = name[4:] if name.startswith("_op_") else name
        if self.op in ("stvpmv", "stvpmd", "stvpmp"):
            raise _fail(where, f"{shown}: VPM stores are graphics-pipeline ops that pimoe does not assemble")
        if not isinstance(dst, Register):
            raise _fail(where, f"{shown}: destination must be a register, got {dst!r}")
        given = [s for s in (src1, src2) if s is not None]
        if src1 is None and src2 is not None:
            raise _fail(where, f"{shown}: src2 given without src1")
        if len(given) != nsrc:
            raise _fail(where, f"{shown} takes {nsrc} source operand{'s' if nsrc != 1 else ''}, "
                               f"got {len(given)}")
        for s in given:
            if not isinstance(s, (Register, numbers.Real)) or isinstance(s, bool):
                raise _fail(where, f"{shown}: invalid source operand {s!r} (a register or a small immediate)")
            if isinstance(s, Register) and not (s.is_rf or s.is_accumulator):
                raise _fail(where, f"{shown}: {s.name} cannot be read (only r0..r5 and rf0..rf63 are sources)")
        if cond is not None and cond not in isa.CONDS and cond not in isa.PUSH_FLAGS \
                and cond not in isa.UPDATE_FLAGS:
            raise _fail(where, f"{shown}: unknown condition {cond!r} (ifa/ifb/ifna/ifnb, pushz/pushn/pushc, "
                               f"andz/andnz/nornz/norz/andn/andnn/nornn/norn/andc/andnc/nornc/norc)")
        self.dst, self.src1, self.src2, self.cond = dst, src1, src2, cond
        self.sigs = _signal_list(sig, where)

    @property
    def shown(self) -> str:
        return self.name[4:] if self.name.startswith("_op_") else self.name


def _small_imm_index(value, where: Where) -> int:
    """py-videocore6's small immediates: ints 0..15, -16..-1 (or their 32-bit patterns, or the bit patterns
    of the float entries); floats 2.0**-8..2.0**7 and the 16 smallest denormals (bit patterns 0..15)."""
    if isinstance(value, numbers.Integral):
        bits = int(value) & 0xFFFFFFFF if -(1 << 31) <= int(value) < (1 << 32) else None
    else:
        x = float(value)
        if x == 0.0:
            bits = 0  # -0.0 == 0.0: py-videocore6's float table maps both to index 0
        elif math.isfinite(x) and struct.unpack("<f", struct.pack("<f", x))[0] == x:
            bits = struct.unpack("<I", struct.pack("<f", x))[0]
        else:
            bits = None
    if bits is None or bits not in isa.SMALL_IMM_INDEX:
        raise _fail(where, f"{value!r} is not a small immediate (ints 0..15 and -16..-1, floats 2**-8 .. 2**7; "
                           f"load other constants from a uniform or build them with shifts)")
    return isa.SMALL_IMM_INDEX[bits]


class _Raddrs:
    """The register-file read ports of one instruction: raddr_a, and raddr_b (or a small immediate, or the
    rotate amount). Filled in py-videocore6's order: add src1, add src2, mul src1, mul src2, then rot."""

    def __init__(self, where: Where):
        self.a: Register | None = None
        self.b: Register | float | int | Signal | None = None
        self.where = where

    def add(self, src, op: str) -> None:
        if src is None:
            return
        if isinstance(src, Register):
            if self.a is not None and self.a.name == src.name:
                return
            if isinstance(self.b, Register) and self.b.name == src.name:
                return
            if not src.is_rf:
                return  # accumulators are read through their own muxes
            if self.a is None:
                self.a = src
            elif self.b is None:
                self.b = src
            else:
                taken = [f"{self.a.name} (raddr_a)", f"{self.b} (raddr_b)" if isinstance(self.b, Register)
                         else f"the small immediate {self.b!r} (raddr_b)"]
                raise _fail(self.where, f"{op}: too many register-file reads: {src.name} needs a read port but "
                                        f"{' and '.join(taken)} hold both (an instruction reads at most two "
                                        f"rf registers, and a small immediate takes raddr_b)")
            return
        # a small immediate: must sit in raddr_b
        if self.b is None:
            _small_imm_index(src, self.where)
            self.b = src
        elif not isinstance(self.b, (Register, Signal)) and \
                _small_imm_index(self.b, self.where) == _small_imm_index(src, self.where):
            pass  # the same immediate again (compared by encoding: 1 and 1.0 differ)
        elif isinstance(self.b, Register):
            raise _fail(self.where, f"{op}: small immediate {src!r} conflicts with the register-file read of "
                                    f"{self.b.name} (both need raddr_b; move one operand to an accumulator)")
        elif isinstance(self.b, Signal):
            raise _fail(self.where, f"{op}: small immediate {src!r} conflicts with the rotate signal "
                                    f"(the rotate amount takes raddr_b)")
        else:
            raise _fail(self.where, f"{op}: small immediates {self.b!r} and {src!r} conflict (an instruction "
                                    f"holds one small immediate)")

    def add_rotate(self, sig: Signal) -> None:
        if self.b is None:
            self.b = sig
        elif isinstance(self.b, Signal) and self.b.rot == sig.rot:
            pass
        else:
            what = f"register {self.b.name}" if isinstance(self.b, Register) else f"small immediate {self.b!r}"
            raise _fail(self.where, f"rotate signal {sig!r} conflicts with {what} (both need raddr_b)")

    def mux(self, src) -> int:
        if isinstance(src, Register):
            if src.is_rf:
                return isa.MUX_A if self.a is not None and self.a.name == src.name else isa.MUX_B
            return src.waddr
        return isa.MUX_B

    def fields(self) -> tuple[int, int]:
        raddr_a = self.a.waddr if self.a is not None else 0
        b = self.b
        if isinstance(b, Register):
            raddr_b = b.waddr
        elif isinstance(b, Signal):
            raddr_b = _small_imm_index(b.rot, self.where) if isinstance(b.rot, int) else 0  # 0 = by r5
        elif b is None:
            raddr_b = 0
        else:
            raddr_b = _small_imm_index(b, self.where)
        return raddr_a, raddr_b


def _unpack_of(call: _OpCall, src, which: str) -> str | None:
    """The isa unpack name for one operand of an op, checking the modifier fits the op."""
    op = call.op
    mod = src.unpack_mod if isinstance(src, Register) else "none"
    if op in _F32_OPS:
        if not isinstance(src, Register) and op == "fmov" and call.alu == "mul":
            return "abs"  # py-videocore6 encodes a small-immediate fmov source with unpack code 0 (abs)
        if mod not in F32_UNPACKS:
            raise _fail(call.where, f"{call.shown}: {which} unpack {mod!r} is a 16-bit unpack; this op takes "
                                    f"abs, l, h")
        return F32_UNPACKS[mod]
    if op in _F16_OPS:
        if which == "src2":
            if mod != "none":
                raise _fail(call.where, f"{call.shown}: only src1 can be unpacked")
            return None
        if mod not in F16_UNPACKS or (mod in F32_UNPACKS and mod != "none"):
            raise _fail(call.where, f"{call.shown}: {which} unpack {mod!r} is not a 16-bit unpack "
                                    f"(r32, rl2h, rh2l, swap)")
        return F16_UNPACKS[mod]
    if mod != "none":
        raise _fail(call.where, f"{call.shown} takes no input unpack (got {which}.{mod})")
    return None


def _alu_half(call: _OpCall, raddrs: _Raddrs) -> isa.AluOp:
    nsrc = isa.add_op_num_src(call.op) if call.alu == "add" else isa.mul_op_num_src(call.op)
    pack = OUTPUT_MODIFIERS[call.dst.pack_mod]
    if pack is not None and call.op not in _PACKABLE:
        raise _fail(call.where, f"{call.shown} takes no output pack (got {call.dst.name}.{call.dst.pack_mod})")
    if call.dst.unpack_mod != "none":
        raise _fail(call.where, f"{call.shown}: the destination {call.dst.name} cannot take an input unpack")
    a = raddrs.mux(call.src1) if nsrc >= 1 else 0
    b = raddrs.mux(call.src2) if nsrc >= 2 else 0
    a_un = _unpack_of(call, call.src1, "src1") if nsrc >= 1 else None
    b_un = _unpack_of(call, call.src2, "src2") if nsrc >= 2 else None
    return isa.AluOp(call.op, a, b, call.dst.waddr, bool(call.dst.magic), pack, a_un, b_un)


# ----------------------------------------------------------------------------------------------------------
# Instructions


class Instruction:
    """Base of everything that occupies one 64-bit slot; `int(instr)` is its word."""

    def __init__(self, asm: "Assembly", where: Where):
        self.asm, self.where = asm, where
        self.serial = len(asm)
        asm.append(self)

    def __int__(self) -> int:
        return self.pack()

    def pack(self) -> int:
        raise NotImplementedError


class ALU(Instruction):
    """An ALU instruction: an add-ALU op (or nop) and a mul-ALU op (or nop), chained by attribute access:
    `fadd(r0, r1, r2).fmul(r3, r4, r5)`. Encoded (and checked) as soon as each half is given."""

    def __init__(self, asm: "Assembly", opr: str, *args, **kwargs):
        where = Where.here()
        super().__init__(asm, where)
        if opr in ADD_OPS:
            self.add_op = _OpCall("add", opr, where, *args, **kwargs)
            self.mul_op: _OpCall | None = None
        elif opr in MUL_OPS:
            self.add_op = _OpCall("add", "nop", where)
            self.mul_op = _OpCall("mul", opr, where, *args, **kwargs)
        else:
            raise _fail(where, f'"{opr}" is not an operation')
        self._word = self._encode()

    def dual_issue(self, opr: str, *args, **kwargs) -> "ALU":
        where = Where.here()
        if self.mul_op is not None:
            raise _fail(where, f"the mul ALU already runs {self.mul_op.shown}: one mul-ALU op per instruction")
        self.mul_op = _OpCall("mul", opr, where, *args, **kwargs)
        try:
            self._word = self._encode()
        except AssembleError:
            self.mul_op = None
            raise
        return self

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in MUL_OPS:
            return functools.partial(self.dual_issue, name)
        where = Where.here()
        if name in ADD_OPS:
            raise _fail(where, f'"{name}" is an add-ALU op; only mul-ALU ops (add, sub, umul24, smul24, vfmul, '
                               f'multop, fmov, mov, fmul, nop) can be chained onto an instruction')
        raise _fail(where, f'"{name}" is not a mul-ALU op')

    def rotate(self, dst: Register, src: Register, rot, **kwargs) -> "ALU":
        """Dual-issue a mul-ALU `mov dst, src` with the rotate signal: src must be an accumulator."""
        return self._rotate(dst, src, rot, quad=False, **kwargs)

    def quad_rotate(self, dst: Register, src: Register, rot, **kwargs) -> "ALU":
        """Like rotate, but src is a register-file register (rotation within each quad of 4 lanes)."""
        return self._rotate(dst, src, rot, quad=True, **kwargs)

    def _rotate(self, dst, src, rot, quad: bool, **kwargs) -> "ALU":
        where = Where.here()
        sigs = _signal_list(kwargs.pop("sig", None), where)
        name = "quad_rotate" if quad else "rotate"
        if not isinstance(src, Register) or (src.is_rf if not quad else not src.is_rf):
            need = "a register-file register" if quad else "an accumulator r0..r5"
            raise _fail(where, f"{name}: the source must be {need}, got {src!r}")
        if isinstance(rot, Register):
            if rot.name != "r5":
                raise _fail(where, f"{name}: rotate by a register only works with r5, got {rot.name}")
        elif not isinstance(rot, numbers.Integral) or isinstance(rot, bool) or not -16 <= int(rot) <= 15:
            raise _fail(where, f"{name}: rotate amount {rot!r} must be an int in -16..15 or r5")
        sigs.append(SIGNALS["rot"](rot if isinstance(rot, Register) else int(rot)))
        return self.dual_issue("mov", dst, src, sig=sigs, **kwargs)

    def _encode(self) -> int:
        add_op = self.add_op
        mul_op = self.mul_op if self.mul_op is not None else _OpCall("mul", "nop", add_op.where)
        where = mul_op.where if self.mul_op is not None else add_op.where
        raddrs = _Raddrs(where)
        raddrs.add(add_op.src1, add_op.shown)
        raddrs.add(add_op.src2, add_op.shown)
        raddrs.add(mul_op.src1, mul_op.shown)
        raddrs.add(mul_op.src2, mul_op.shown)

        names: list[str] = []
        sigs: list[Signal] = []
        for s in add_op.sigs + mul_op.sigs:
            if s.name in names:
                raise _fail(where, f'signal "{s.name}" is given twice')
            if s.name == "rot" and isinstance(s.rot, numbers.Integral) and s.rot == 0:
                continue  # rot(0) is no rotation, as in py-videocore6
            names.append(s.name)
            sigs.append(s)
        writes = [s for s in sigs if s.dst is not None]
        if len(writes) > 1:
            raise _fail(where, f"signals {writes[0]!r} and {writes[1]!r} both write a register; "
                               f"only one write address fits")
        rot = [s for s in sigs if s.name == "rot"]
        if rot:
            raddrs.add_rotate(rot[0])
        has_smimm = raddrs.b is not None and not isinstance(raddrs.b, (Register, Signal))
        if has_smimm and not rot:
            names.append("smimm")
        fields = frozenset(_SIG_FIELD[n] for n in names)
        if fields not in isa.SIG_PACK:
            shown = ", ".join(sorted(n for n in names))
            hint = " (a small immediate uses the smimm signal)" if "smimm" in names else ""
            raise _fail(where, f"signals {{{shown}}} cannot be combined in one V3D 4.2 instruction{hint}")
        sig = isa.Sig.from_names(fields)

        sig_addr, sig_magic, flags = 0, False, isa.NO_FLAGS
        if writes:
            w = writes[0]
            for call in (add_op, mul_op):
                if call.cond is not None:
                    raise _fail(where, f'condition "{call.cond}" cannot be used with signal {w!r}: a signal that '
                                       f'writes a register takes the condition field for its address')
            if not w.dst.is_rf and w.dst.waddr not in isa.MAGIC_WADDR_NAMES:
                raise _fail(where, f"{w!r}: bad destination")
            sig_addr, sig_magic = w.dst.waddr, bool(w.dst.magic)
        else:
            fl = {}
            for call, (c, pf, uf) in ((add_op, ("ac", "apf", "auf")), (mul_op, ("mc", "mpf", "muf"))):
                if call.cond in isa.CONDS:
                    fl[c] = call.cond
                elif call.cond in isa.PUSH_FLAGS:
                    fl[pf] = call.cond
                elif call.cond in isa.UPDATE_FLAGS:
                    fl[uf] = call.cond
            flags = isa.Flags(**fl)
            if isa.pack_flags(flags) is None:
                raise _fail(where, f'conditions "{add_op.cond}" (add ALU) and "{mul_op.cond}" (mul ALU) cannot be '
                                   f'encoded together')

        add_half = _alu_half(add_op, raddrs)
        mul_half = _alu_half(mul_op, raddrs)
        raddr_a, raddr_b = raddrs.fields()
        instr = isa.Instr(type="alu", sig=sig, sig_addr=sig_addr, sig_magic=sig_magic, raddr_a=raddr_a,
                          raddr_b=raddr_b, flags=flags, add=add_half, mul=mul_half)
        try:
            return isa.encode(instr)
        except isa.InvalidInstruction as exc:
            raise _fail(where, str(exc)) from None

    def pack(self) -> int:
        return self._word


class Link:
    """`link`: the branch target "link register" (`b(link, cond='always')` returns from a subroutine)."""

    def __repr__(self) -> str:
        return "link"


class Branch(Instruction):
    """`b(target, cond=..., absolute=False, set_link=False)`: target is a label reference `R.x`, a byte
    offset (int; absolute address with absolute=True), a register-file register or `link`. A relative
    target is counted from the instruction after the 3 delay slots. `.unif_addr(src=None, absolute=False)`
    also moves the uniform stream (to the next uniform's value, relative or absolute, or to rf src)."""

    def __init__(self, asm: "Assembly", opr: str, src=None, *, cond: str | None = None, absolute: bool = False,
                 set_link: bool = False):
        where = Where.here()
        super().__init__(asm, where)
        if cond is None:
            raise _fail(where, f"branch needs cond=... (one of {', '.join(isa.BRANCH_CONDS)})")
        if cond not in isa.BRANCH_CONDS:
            raise _fail(where, f"unknown branch condition {cond!r} (one of {', '.join(isa.BRANCH_CONDS)})")
        self.cond, self.set_link = cond, bool(set_link)
        self.raddr_a: int | None = None
        self.label: Reference | None = None
        self.addr: int | None = None
        self.ub, self.bdu = False, "rel"
        if isinstance(src, Link):
            self.bdi = "lri"
        elif isinstance(src, Register):
            if not src.is_rf:
                raise _fail(where, f"branch target register must be rf0..rf63, got {src.name}")
            self.bdi, self.raddr_a = "rf", src.waddr
        elif isinstance(src, Reference):
            if src.name is None:
                raise _fail(where, "branch target R has no label name (write R.name)")
            self.bdi, self.label = "rel", src
        elif isinstance(src, numbers.Integral) and not isinstance(src, bool):
            if int(src) % 8:
                raise _fail(where, f"branch offset {src} is not a multiple of 8 bytes")
            if not -(1 << 31) <= int(src) < (1 << 32):
                raise _fail(where, f"branch offset {src} does not fit 32 bits")
            self.bdi, self.addr = ("abs" if absolute else "rel"), int(src) & 0xFFFFFFFF
        else:
            raise _fail(where, f"invalid branch target {src!r} (R.label, byte offset, rf register or link)")

    def unif_addr(self, src: Register | None = None, absolute: bool = False) -> "Branch":
        where = Where.here()
        self.ub = True
        if src is None:
            self.bdu = "abs" if absolute else "rel"
        elif isinstance(src, Register) and src.is_rf:
            self.bdu = "rf"
            if self.raddr_a is not None and self.raddr_a != src.waddr:
                raise _fail(where, f"branch and uniform targets need different registers (rf{self.raddr_a}, "
                                   f"{src.name}); both come from raddr_a")
            self.raddr_a = src.waddr
        else:
            raise _fail(where, f"invalid uniform branch source {src!r} (None or an rf register)")
        return self

    def pack(self) -> int:
        if self.label is not None:
            target = self.asm.labels.get(self.label.name)
            if target is None:
                raise _fail(self.where, f"undefined label {self.label.name!r}")
            offset = ((target - self.serial - 4) * 8) & 0xFFFFFFFF
        else:
            offset = self.addr if self.addr is not None else 0
        br = isa.Branch(cond=self.cond, msfign=None, bdi=self.bdi, bdu=self.bdu, ub=self.ub,
                        raddr_a=self.raddr_a or 0, offset=offset, set_link=self.set_link)
        return isa.encode(isa.Instr(type="branch", branch=br))


class Raw(Instruction):
    """`raw(word)`: an instruction given as its 64-bit word."""

    def __init__(self, asm: "Assembly", packed_code: int):
        where = Where.here()
        super().__init__(asm, where)
        if not isinstance(packed_code, numbers.Integral) or not 0 <= int(packed_code) < (1 << 64):
            raise _fail(where, f"raw({packed_code!r}): the word must be an int in [0, 2**64)")
        self.word = int(packed_code)

    def pack(self) -> int:
        return self.word


class SFUIntegrator(Register):
    """An SFU register (recip, rsqrt, exp, log, sin, rsqrt2): writable as a magic register
    (`mov(exp, r0)`) and callable as the add-ALU SFU op (`exp(r1, r0)`); the result lands in r4 (or dst)."""

    def __init__(self, asm: "Assembly", name: str):
        super().__init__(name, 1, MAGIC_REGISTERS[name])
        self.asm = asm
        self.op_name = "_op_" + name

    def __call__(self, dst, src, **kwargs) -> ALU:
        return ALU(self.asm, self.op_name, dst, src, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# The assembly, labels, loops


class Assembly(list):
    """The instructions of one kernel, in order, plus its labels (name -> instruction index)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels: dict[str, int] = {}
        self.label_name_spaces: list[str] = []

    def _ns_name(self, name: str) -> str:
        return ".".join(self.label_name_spaces + [name])

    def _unused_label(self, fmt: str) -> str:
        n = 0
        while self._ns_name(fmt.format(n)) in self.labels:
            n += 1
        return fmt.format(n)

    def define_label(self, name: str, where: Where) -> None:
        ns_name = self._ns_name(name)
        if ns_name in self.labels:
            raise _fail(where, f"label {ns_name!r} is defined twice")
        self.labels[ns_name] = len(self)


class Label:
    """`L.name` defines label `name` at the next instruction (within the current namespace)."""

    def __init__(self, asm: Assembly):
        object.__setattr__(self, "_asm", asm)

    def __getattr__(self, name: str) -> None:
        if name.startswith("__"):
            raise AttributeError(name)
        self._asm.define_label(name, Where.here())


class Reference:
    """`R.name` refers to label `name` (resolved when the program is packed)."""

    def __init__(self, asm: Assembly, name: str | None = None):
        self.asm = asm
        self.name = asm._ns_name(name) if name is not None else None

    def __getattr__(self, name: str) -> "Reference":
        if name.startswith("__"):
            raise AttributeError(name)
        return Reference(self.asm, name)

    def __int__(self) -> int:
        if self.name is None or self.name not in self.asm.labels:
            raise _fail(Where.here(), f"undefined label {self.name!r}")
        return self.asm.labels[self.name]


class LabelNameSpace:
    """`with namespace('x'):` prefixes labels and references made inside with 'x.'."""

    def __init__(self, asm: Assembly, name: str):
        self.asm, self.name = asm, name

    def __enter__(self):
        self.asm.label_name_spaces.append(self.name)
        return self

    def __exit__(self, *exc) -> None:
        self.asm.label_name_spaces.pop()


class Loop:
    """The handle of `with loop as l:`; `l.b(cond=...)` branches back to the loop start."""

    def __init__(self, asm: Assembly, name: str):
        self.asm, self.name = asm, name

    def b(self, *args, **kwargs) -> Branch:
        return Branch(self.asm, "b", Reference(self.asm, self.name), *args, **kwargs)


class LoopHelper:
    """`loop`: `with loop as l:` puts a fresh label at the current position."""

    def __init__(self, asm: Assembly):
        self.asm = asm

    def __enter__(self) -> Loop:
        name = self.asm._unused_label("__generated_loop_label_{}")
        self.asm.define_label(name, Where.here())
        return Loop(self.asm, name)

    def __exit__(self, *exc) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------
# The decorator and the assembler entry points


def _mov_a(asm: Assembly, dst, src, **kwargs) -> ALU:
    return ALU(asm, "bor", dst, src, src, **kwargs)


def _rotate_a(asm: Assembly, *args, **kwargs) -> ALU:
    return ALU(asm, "nop").rotate(*args, **kwargs)


def _quad_rotate_a(asm: Assembly, *args, **kwargs) -> ALU:
    return ALU(asm, "nop").quad_rotate(*args, **kwargs)


def language(asm: Assembly) -> dict[str, Any]:
    """The names a kernel sees (py-videocore6's set), bound to `asm`."""
    g: dict[str, Any] = {
        "L": Label(asm), "R": Reference(asm), "loop": LoopHelper(asm), "b": functools.partial(Branch, asm, "b"),
        "link": Link(), "raw": functools.partial(Raw, asm), "namespace": functools.partial(LabelNameSpace, asm),
    }
    for name in MUL_OPS:
        g[name] = functools.partial(ALU, asm, name)
    for name in ADD_OPS:
        if not name.startswith("_op_"):
            g[name] = functools.partial(ALU, asm, name)
    g.update(REGISTERS)
    for name in SFU_NAMES:
        g[name] = SFUIntegrator(asm, name)
    g["rf"] = [REGISTERS[f"rf{i}"] for i in range(64)]
    g["mov"] = functools.partial(_mov_a, asm)
    g["rotate"] = functools.partial(_rotate_a, asm)
    g["quad_rotate"] = functools.partial(_quad_rotate_a, asm)
    g["broadcast"] = REGISTERS["r5rep"]
    g["quad_broadcast"] = REGISTERS["r5"]
    for name, sig in SIGNALS.items():
        if name != "smimm":  # derived automatically from small-immediate operands
            g[name] = sig
    return g


def qpu(func: Callable) -> Callable:
    """Make `func(asm, *args, **kwargs)` a kernel: while it runs, the DSL names live in its module's globals
    (restored afterwards, even when the kernel raises)."""

    @functools.wraps(func)
    def kernel(asm: Assembly, *args, **kwargs):
        if not isinstance(asm, Assembly):
            raise AssembleError(f"kernel {func.__name__} must be called with an Assembly (use assemble())")
        g = func.__globals__
        saved = g.copy()
        g.update(language(asm))
        try:
            func(asm, *args, **kwargs)
        finally:
            g.clear()
            g.update(saved)

    kernel.__pimoe_qpu_kernel__ = True
    return kernel


def _assemble(f: Callable, *args, **kwargs) -> Assembly:
    if not callable(f):
        raise AssembleError(f"assemble() needs a kernel function, got {f!r}")
    asm = Assembly()
    f(asm, *args, **kwargs)
    return asm


def assemble(f: Callable, *args, **kwargs) -> list[int]:
    """Run kernel `f` (a @qpu function, or any callable taking the Assembly) and return its 64-bit words."""
    asm = _assemble(f, *args, **kwargs)
    return [int(instr) for instr in asm]


def get_label_positions(f: Callable, *args, **kwargs) -> dict[str, int]:
    """Label name -> byte offset in the program."""
    return {name: 8 * n for name, n in _assemble(f, *args, **kwargs).labels.items()}
