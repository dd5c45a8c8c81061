"""QPU words -> text, in Mesa's disassembly syntax (src/broadcom/qpu/qpu_disasm.c), so a word can be read.

    fadd r1, r1, r5               ; nop                         ; thrsw
    add-op[.cond][.pf][.uf] dst[.pack], a[.unpack], b[.unpack]   (mul part from column 30, signals from 60)
    b[u].cond[msfign]  target[, uniform target]

Two deliberate extensions, for bits Mesa's printer leaves out: the rotate signal (Mesa prints nothing, so a
rotate would look like a plain move) shows as "; rot <n>" (or "; rot r5") after the signals, and a branch
with bit 23 set (py-videocore6's set_link) ends in "  ; set_link". Everything else is Mesa's text.

`parse_instr(text)` is the inverse: Mesa-syntax text back to an Instr (the fields the text does not show,
such as unused read ports, take the values py-videocore6 would give them).
"""

from __future__ import annotations

import re
from dataclasses import replace

from pimoe.qpu.isa import (
    ADD_OP_NAMES, BRANCH_CONDS, CONDS, F16_UNPACK_CODE, F32_UNPACK_CODE, MAGIC_WADDR_NAMES, MUL_OP_NAMES, MUX_A,
    MUX_B, PUSH_FLAGS, SMALL_IMM_INDEX, SMALL_IMMS, UPDATE_FLAGS, AluOp, Branch, Flags, Instr, InvalidInstruction,
    Sig, add_op_has_dst, add_op_num_src, decode, mul_op_has_dst, mul_op_num_src,
)


def _src(instr: Instr, mux: int) -> str:
    if mux == MUX_A:
        return f"rf{instr.raddr_a}"
    if mux == MUX_B:
        if instr.sig.small_imm:
            val = SMALL_IMMS[instr.raddr_b]
            signed = val - (1 << 32) if val & (1 << 31) else val
            return str(signed) if -16 <= signed <= 15 else f"0x{val:08x}"
        return f"rf{instr.raddr_b}"
    return f"r{mux}"


def _dst(waddr: int, magic: bool) -> str:
    if not magic:
        return f"rf{waddr}"
    return MAGIC_WADDR_NAMES.get(waddr, f"waddr UNKNOWN {waddr}")


def _dot(name: str | None) -> str:
    return "" if name is None else "." + name


def _half(instr: Instr, alu, cond, pf, uf, has_dst: bool, nsrc: int, is_mul: bool) -> str:
    text = alu.op
    if not instr.sig.writes_address:
        text += _dot(cond)
    text += _dot(pf) + _dot(uf)
    if is_mul and alu.op == "nop":
        return text
    text += " "
    if has_dst:
        text += _dst(alu.waddr, alu.magic_write) + _dot(alu.output_pack)
    if nsrc >= 1:
        if has_dst:
            text += ", "
        text += _src(instr, alu.a) + _dot(alu.a_unpack)
    if nsrc >= 2:
        text += ", " + _src(instr, alu.b) + _dot(alu.b_unpack)
    return text


def _sig_addr(instr: Instr) -> str:
    if not instr.sig_magic:
        return f".rf{instr.sig_addr}"
    name = MAGIC_WADDR_NAMES.get(instr.sig_addr)
    return f".{name}" if name else f".UNKNOWN{instr.sig_addr}"


# Signals in the order Mesa prints them, and whether each writes a register (printed as ".dst").
_SIGNAL_ORDER = (("thrsw", False), ("ldvary", True), ("ldvpm", False), ("ldtmu", True), ("ldtlb", True),
                 ("ldtlbu", True), ("ldunif", False), ("ldunifrf", True), ("ldunifa", False),
                 ("ldunifarf", True), ("wrtmuc", False))


def _signals(instr: Instr) -> list[str]:
    return [name + (_sig_addr(instr) if writes else "") for name, writes in _SIGNAL_ORDER
            if getattr(instr.sig, name)]


def _branch_text(instr: Instr) -> str:
    b = instr.branch
    text = "b" + ("u" if b.ub else "") + ("" if b.cond == "always" else "." + b.cond) + (b.msfign or "")
    if b.bdi == "abs":
        text += f"  zero_addr+0x{b.offset:08x}"
    elif b.bdi == "rel":
        text += f"  {b.signed_offset}"
    elif b.bdi == "lri":
        text += "  lri"
    else:
        text += f"  rf{b.raddr_a}"
    if b.ub:
        text += {"abs": ", a:unif", "rel": ", r:unif", "lri": ", lri", "rf": f", rf{b.raddr_a}"}[b.bdu]
    if b.set_link:
        text += "  ; set_link"  # pimoe extension: bit 23 (py-videocore6's set_link), unnamed in Mesa
    return text


def format_instr(instr: Instr) -> str:
    """Text of one decoded instruction, Mesa's syntax and column layout."""
    if instr.type == "branch":
        return _branch_text(instr)
    f = instr.flags
    text = _half(instr, instr.add, f.ac, f.apf, f.auf, add_op_has_dst(instr.add.op),
                 add_op_num_src(instr.add.op), False)
    text = text.ljust(30) + "; "
    text += _half(instr, instr.mul, f.mc, f.mpf, f.muf, mul_op_has_dst(instr.mul.op),
                  mul_op_num_src(instr.mul.op), True)
    sigs = _signals(instr)
    if instr.sig.rotate:
        if instr.raddr_b == 0:
            sigs.append("rot r5")
        else:
            val = SMALL_IMMS[instr.raddr_b] if instr.raddr_b < len(SMALL_IMMS) else instr.raddr_b
            sigs.append(f"rot {val - (1 << 32) if val & (1 << 31) else val}")
    if sigs:
        text = text.ljust(60) + "".join("; " + s for s in sigs)
    return text


def disassemble_word(word: int) -> str:
    """Text of one 64-bit word (InvalidInstruction, a PimoeError, if it is not an instruction)."""
    return format_instr(decode(word))


def disassemble(words) -> list[str]:
    """Texts of a sequence of 64-bit words (InvalidInstruction names the first bad word and its index)."""
    out = []
    for i, w in enumerate(words):
        try:
            out.append(disassemble_word(int(w)))
        except Exception as exc:
            from pimoe.qpu.isa import InvalidInstruction

            if isinstance(exc, InvalidInstruction):
                raise InvalidInstruction(f"instruction {i} (byte offset 0x{8 * i:x}): {exc}") from None
            raise
    return out


# ----------------------------------------------------------------------------------------------------------
# Text -> Instr (the inverse of format_instr)

_MAGIC_BY_NAME = {}
for _w, _n in sorted(MAGIC_WADDR_NAMES.items(), reverse=True):
    _MAGIC_BY_NAME[_n] = _w  # "tmuscm" names 40 and 44 in Mesa's table: the lower address wins
_F16_OPS = ("vfmin", "vfmax", "vfmul")


class _TextError(InvalidInstruction):
    pass


def _bad_text(text: str, why: str) -> _TextError:
    return _TextError(f"cannot parse QPU instruction {text.strip()!r}: {why}")


def _split_mods(token: str) -> tuple[str, list[str]]:
    """"rf5.l" -> ("rf5", ["l"]); "-16.l" -> ("-16", ["l"]); "0x3b800000.abs" -> ("0x3b800000", ["abs"])."""
    base, *mods = token.split(".")
    return base, mods


class _Ports:
    """Register-file read ports while parsing, filled in text order as the assembler fills them."""

    def __init__(self, text: str):
        self.text = text
        self.a: int | None = None
        self.b: int | None = None
        self.imm: int | None = None

    def source(self, base: str) -> int:
        m = re.fullmatch(r"r([0-5])", base)
        if m:
            return int(m.group(1))
        m = re.fullmatch(r"rf(\d+)", base)
        if m:
            n = int(m.group(1))
            if n > 63:
                raise _bad_text(self.text, f"no register {base}")
            if self.a == n:
                return MUX_A
            if self.b == n and self.imm is None:
                return MUX_B
            if self.a is None:
                self.a = n
                return MUX_A
            if self.b is None and self.imm is None:
                self.b = n
                return MUX_B
            raise _bad_text(self.text, f"more than two register-file reads ({base})")
        try:
            value = int(base, 0)
        except ValueError:
            raise _bad_text(self.text, f"unknown operand {base!r}") from None
        bits = value & 0xFFFFFFFF
        if bits not in SMALL_IMM_INDEX:
            raise _bad_text(self.text, f"{base} is not a small immediate")
        idx = SMALL_IMM_INDEX[bits]
        if self.b is not None or (self.imm is not None and self.imm != idx):
            raise _bad_text(self.text, f"small immediate {base} conflicts with another raddr_b use")
        self.imm = idx
        return MUX_B


def _dest(text: str, token: str) -> tuple[int, bool, str | None]:
    base, mods = _split_mods(token)
    if len(mods) > 1 or (mods and mods[0] not in ("l", "h")):
        raise _bad_text(text, f"bad destination {token!r}")
    pack = mods[0] if mods else None
    m = re.fullmatch(r"rf(\d+)", base)
    if m and int(m.group(1)) < 64:
        return int(m.group(1)), False, pack
    if base in _MAGIC_BY_NAME:
        return _MAGIC_BY_NAME[base], True, pack
    raise _bad_text(text, f"unknown destination {base!r}")


def _alu_part(text: str, part: str, is_mul: bool, ports: _Ports):
    part = part.strip()
    head, _, rest = part.partition(" ")
    name, *mods = head.split(".")
    names = MUL_OP_NAMES if is_mul else ADD_OP_NAMES
    if name not in names:
        raise _bad_text(text, f"{name!r} is not {'a mul' if is_mul else 'an add'}-ALU op")
    cond = pf = uf = None
    for mod in mods:
        if mod in CONDS and cond is None:
            cond = mod
        elif mod in PUSH_FLAGS and pf is None:
            pf = mod
        elif mod in UPDATE_FLAGS and uf is None:
            uf = mod
        else:
            raise _bad_text(text, f"unknown or repeated modifier .{mod} on {name}")
    has_dst = mul_op_has_dst(name) if is_mul else add_op_has_dst(name)
    nsrc = mul_op_num_src(name) if is_mul else add_op_num_src(name)
    operands = [o.strip() for o in rest.split(",")] if rest.strip() else []
    if len(operands) != int(has_dst) + nsrc:
        raise _bad_text(text, f"{name} takes {int(has_dst) + nsrc} operands, got {len(operands)}")
    waddr, magic, pack = 6, True, None
    if has_dst:
        waddr, magic, pack = _dest(text, operands[0])
        operands = operands[1:]
    muxes, unpacks = [0, 0], [None, None]
    for k, op in enumerate(operands):
        base, mods = _split_mods(op)
        if len(mods) > 1:
            raise _bad_text(text, f"operand {op!r} has more than one unpack")
        unpack = mods[0] if mods else None
        table = F16_UNPACK_CODE if name in _F16_OPS and k == 0 else F32_UNPACK_CODE
        if unpack is not None and unpack not in table:
            raise _bad_text(text, f"unknown unpack .{unpack} for {name}")
        muxes[k] = ports.source(base)
        unpacks[k] = unpack
    alu = AluOp(name, muxes[0], muxes[1], waddr, magic, pack, unpacks[0], unpacks[1])
    return alu, cond, pf, uf


def _parse_branch(text: str) -> Instr:
    body, _, ext = text.partition(";")
    ext = ext.strip()
    if ext not in ("", "set_link"):
        raise _bad_text(text, f"unknown branch suffix {ext!r}")
    head, _, rest = body.strip().partition(" ")
    m = re.fullmatch(r"b(u?)(?:\.([a-z0-9]+))?([pq]?)", head)
    if m is None:
        raise _bad_text(text, f"bad branch mnemonic {head!r}")
    ub, cond, msfign = bool(m.group(1)), m.group(2) or "always", m.group(3) or None
    if cond not in BRANCH_CONDS and cond[-1:] in ("p", "q") and cond[:-1] in BRANCH_CONDS and msfign is None:
        cond, msfign = cond[:-1], cond[-1]
    if cond not in BRANCH_CONDS or cond == "always" and m.group(2):
        raise _bad_text(text, f"unknown branch condition {cond!r}")
    targets = [t.strip() for t in rest.split(",")]
    if len(targets) != (2 if ub else 1):
        raise _bad_text(text, "a branch takes one target (two for bu)")
    raddr_a, offset = 0, 0
    t = targets[0]
    if t.startswith("zero_addr+"):
        bdi, offset = "abs", int(t[len("zero_addr+"):], 16)
    elif t == "lri":
        bdi = "lri"
    elif re.fullmatch(r"rf\d+", t):
        bdi, raddr_a = "rf", int(t[2:])
    else:
        try:
            bdi, offset = "rel", int(t, 0) & 0xFFFFFFFF
        except ValueError:
            raise _bad_text(text, f"bad branch target {t!r}") from None
    bdu = "rel"  # what py-videocore6 writes when the uniform stream does not branch
    if ub:
        u = targets[1]
        if u in ("a:unif", "r:unif", "lri"):
            bdu = {"a:unif": "abs", "r:unif": "rel", "lri": "lri"}[u]
        elif re.fullmatch(r"rf\d+", u) and (bdi != "rf" or int(u[2:]) == raddr_a):
            bdu, raddr_a = "rf", int(u[2:])
        else:
            raise _bad_text(text, f"bad uniform branch target {u!r}")
    br = Branch(cond=cond, msfign=msfign, bdi=bdi, bdu=bdu, ub=ub, raddr_a=raddr_a, offset=offset,
                set_link=ext == "set_link")
    return Instr(type="branch", branch=br, raddr_a=raddr_a)


def parse_instr(text: str) -> Instr:
    """Mesa-syntax text (as format_instr prints it) -> Instr; InvalidInstruction if it is not one."""
    stripped = text.strip()
    if re.match(r"bu?[.\s pq]|bu?$", stripped) and not stripped.startswith(("barrierid",)):
        return _parse_branch(stripped)
    parts = [p.strip() for p in stripped.split(";")]
    if len(parts) < 2:
        parts.append("nop")  # a line with only the add-ALU op: the mul ALU idles
    ports = _Ports(text)
    add, ac, apf, auf = _alu_part(text, parts[0], False, ports)
    if add.op in ("fadd", "faddnf", "fmin", "fmax") and (add.a, add.b) == (MUX_A, MUX_B):
        # these pairs are told apart by operand order (unpack code * 8 + mux); the text fixes the order, so
        # put the two rf reads in the ports that make that order encode this op
        key_a = F32_UNPACK_CODE[add.a_unpack] * 8 + add.a
        key_b = F32_UNPACK_CODE[add.b_unpack] * 8 + add.b
        if (key_a > key_b) != (add.op in ("faddnf", "fmax")):
            ports.a, ports.b = ports.b, ports.a
            add = replace(add, a=MUX_B, b=MUX_A)
    mul, mc, mpf, muf = _alu_part(text, parts[1], True, ports)
    sig_names: set[str] = set()
    sig_addr, sig_magic, rot_b = 0, False, None
    for sp in parts[2:]:
        name, _, arg = sp.partition(".")
        if sp.startswith("rot "):
            amount = sp[4:].strip()
            sig_names.add("rotate")
            rot_b = 0 if amount == "r5" else SMALL_IMM_INDEX.get(int(amount, 0) & 0xFFFFFFFF) if \
                re.fullmatch(r"-?\d+", amount) else None
            if rot_b is None:
                raise _bad_text(text, f"bad rotate amount {amount!r}")
            continue
        if name in ("thrsw", "ldunif", "ldunifa", "ldvpm", "wrtmuc") and not arg:
            sig_names.add(name)
        elif name in ("ldtmu", "ldunifrf", "ldunifarf", "ldvary", "ldtlb", "ldtlbu") and arg:
            sig_names.add(name)
            m = re.fullmatch(r"rf(\d+)", arg)
            if m:
                sig_addr, sig_magic = int(m.group(1)), False
            elif arg in _MAGIC_BY_NAME:
                sig_addr, sig_magic = _MAGIC_BY_NAME[arg], True
            else:
                raise _bad_text(text, f"bad signal destination {arg!r}")
        else:
            raise _bad_text(text, f"unknown signal {sp!r}")
    raddr_a = ports.a or 0
    raddr_b = ports.b or 0
    if ports.imm is not None:
        sig_names.add("small_imm")
        raddr_b = ports.imm
    if rot_b is not None:
        if ports.imm is not None or ports.b is not None:
            raise _bad_text(text, "the rotate amount and another operand both need raddr_b")
        raddr_b = rot_b
    flags = Flags(ac=ac, mc=mc, apf=apf, mpf=mpf, auf=auf, muf=muf)
    return Instr(type="alu", sig=Sig.from_names(sig_names), sig_addr=sig_addr, sig_magic=sig_magic,
                 raddr_a=raddr_a, raddr_b=raddr_b, flags=flags, add=add, mul=mul)


def assemble_text(lines) -> list[int]:
    """Words from Mesa-syntax lines (one instruction per line; blank lines and '#' comments skipped)."""
    from pimoe.qpu.isa import encode

    words = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        try:
            words.append(encode(parse_instr(line)))
        except InvalidInstruction as exc:
            raise InvalidInstruction(f"line {n}: {exc}") from None
    return words
