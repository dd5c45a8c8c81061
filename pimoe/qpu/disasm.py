"""QPU words -> text, in Mesa's disassembly syntax (src/broadcom/qpu/qpu_disasm.c), so a word can be read.

    fadd r1, r1, r5               ; nop                         ; thrsw
    add-op[.cond][.pf][.uf] dst[.pack], a[.unpack], b[.unpack]   (mul part from column 30, signals from 60)
    b[u].cond[msfign]  target[, uniform target]

One deliberate extension: Mesa prints nothing for the rotate signal, which would make a rotate look like a
plain move; pimoe appends "; rot <n>" (or "; rot r5") after the signals. Everything else is Mesa's text.
"""

from __future__ import annotations

from pimoe.qpu.isa import (
    MAGIC_WADDR_NAMES, MUX_A, MUX_B, SMALL_IMMS, Instr, add_op_has_dst, add_op_num_src, decode, mul_op_has_dst,
    mul_op_num_src,
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


def _signals(instr: Instr) -> list[str]:
    s = instr.sig
    out = []
    if s.thrsw:
        out.append("thrsw")
    if s.ldvary:
        out.append("ldvary" + _sig_addr(instr))
    if s.ldvpm:
        out.append("ldvpm")
    if s.ldtmu:
        out.append("ldtmu" + _sig_addr(instr))
    if s.ldtlb:
        out.append("ldtlb" + _sig_addr(instr))
    if s.ldtlbu:
        out.append("ldtlbu" + _sig_addr(instr))
    if s.ldunif:
        out.append("ldunif")
    if s.ldunifrf:
        out.append("ldunifrf" + _sig_addr(instr))
    if s.ldunifa:
        out.append("ldunifa")
    if s.ldunifarf:
        out.append("ldunifarf" + _sig_addr(instr))
    if s.wrtmuc:
        out.append("wrtmuc")
    return out


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
