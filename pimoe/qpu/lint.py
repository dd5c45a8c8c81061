"""Mesa's QPU code-generation rules as warnings: `lint(words)` lists each rule a program breaks, by PC.

The emulator runs what the silicon runs; these rules are what Mesa's compiler promises itself
(`src/broadcom/compiler/qpu_validate.c`) and what the V3D documentation calls hazards. py-videocore6's
hardware-tested summation and scopy break "one-unit" on every loop trip and run correctly, so a rule
here is a warning about portability and intent, not a verdict. A kernel that breaks a rule on purpose
opts out of it by name: `lint(words, allow={"one-unit"})`.

    from pimoe.qpu import assemble
    from pimoe.qpu.lint import lint
    for w in lint(assemble(kernel)):
        print(w)                      # "pc 12: one-unit: TMU write (tmua) and ldtmu in one instruction"

`pimoe disasm --lint SOURCE` prints the same after the listing. The scan is linear (program order; the
distance rules do not follow branches), like qpu_validate's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pimoe.qpu import isa

# rule name -> what it checks (Mesa's wording where it has one)
RULES: dict[str, str] = {
    "one-unit": "only one of [TMU write, SFU write, TSY (barrier/sync), ldtmu] per instruction "
                "(qpu_validate: 'Only one of [TMU, SFU, TSY, TLB read, VPM] allowed'; ldtmu counts on V3D 4.x)",
    "r4-too-soon": "r4 read, r4 written or another SFU started less than 2 instructions after an SFU write "
                   "(qpu_validate: 'SFU write/r4 read too soon')",
    "unifa-too-soon": "ldunifa/ldunifarf less than 3 instructions after a write to unifa",
    "rotate-source": "rotate of a source (or by r5) written by the previous instruction",
    "thrsw-in-branch-delay": "thrsw in a branch's delay slots (qpu_validate: 'THRSW in a branch delay slot')",
    "branch-in-thrsw-delay": "branch in a thrsw's delay slots (qpu_validate: 'Branch in a THRSW delay slot')",
    "sfu-in-thrsw-delay": "SFU write in a thrsw's delay slots (its r4 result would land in the other thread)",
    "branch-in-branch-delay": "branch in another branch's delay slots",
    "invalid-word": "a word that is not a V3D 4.2 instruction",
}


@dataclass(frozen=True)
class LintWarning:
    pc: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"pc {self.pc}: {self.rule}: {self.message}"


def _magic_writes(ins: isa.Instr) -> list[int]:
    out = []
    for half in (ins.add, ins.mul):
        if half.op != "nop" and half.magic_write:
            out.append(half.waddr)
    return out


def _reg_writes(ins: isa.Instr) -> set[tuple[str, int]]:
    """("acc", n) / ("rf", n) this instruction writes (ALU destinations and register-writing signals)."""
    out = set()
    for half in (ins.add, ins.mul):
        if half.op == "nop":
            continue
        if half.magic_write and half.waddr <= 5:
            out.add(("acc", half.waddr))
        elif half.magic_write and half.waddr == isa.W_R5REP:
            out.add(("acc", 5))
        elif not half.magic_write:
            out.add(("rf", half.waddr))
    if ins.sig.ldunif or ins.sig.ldunifa:
        out.add(("acc", 5))
    if ins.sig.writes_address:
        out.add(("acc" if ins.sig_magic else "rf", ins.sig_addr))
    return out


def _mul_sources(ins: isa.Instr) -> set[tuple[str, int]]:
    n = isa.mul_op_num_src(ins.mul.op)
    out = set()
    for mux in (ins.mul.a, ins.mul.b)[:n]:
        if mux <= 5:
            out.add(("acc", mux))
        elif mux == 6:
            out.add(("rf", ins.raddr_a))
        elif not ins.sig.small_imm:
            out.add(("rf", ins.raddr_b))
    return out


def _reads_r4(ins: isa.Instr) -> bool:
    for half, nsrc in ((ins.add, isa.add_op_num_src(ins.add.op)), (ins.mul, isa.mul_op_num_src(ins.mul.op))):
        if half.op != "nop" and 4 in (half.a, half.b)[:nsrc]:
            return True
    return False


def lint(words: Iterable[int], allow: Iterable[str] = ()) -> list[LintWarning]:
    """The rules (RULES) `words` break, in program order; rules named in `allow` are not reported."""
    allow = set(allow)
    unknown = allow - set(RULES)
    if unknown:
        raise ValueError(f"lint(allow=...): unknown rules {sorted(unknown)}; known: {sorted(RULES)}")
    out: list[LintWarning] = []

    def warn(pc: int, rule: str, message: str) -> None:
        if rule not in allow:
            out.append(LintWarning(pc, rule, message))

    last_sfu = last_unifa = -100
    branch_left = thrsw_left = 0
    prev_writes: set[tuple[str, int]] = set()
    for pc, word in enumerate(int(w) for w in words):
        try:
            ins = isa.decode(word)
        except isa.InvalidInstruction as exc:
            warn(pc, "invalid-word", str(exc))
            prev_writes = set()
            continue
        if ins.type == "branch":
            if branch_left:
                warn(pc, "branch-in-branch-delay", "branch in the delay slots of the branch "
                     f"{4 - branch_left} instruction(s) before")
            if thrsw_left:
                warn(pc, "branch-in-thrsw-delay", "branch in a thrsw delay slot")
            branch_left, thrsw_left = 3, max(0, thrsw_left - 1)
            prev_writes = set()
            continue
        magic = _magic_writes(ins)
        units = []
        units += [isa.MAGIC_WADDR_NAMES.get(w, str(w)) for w in magic if w in isa.TMU_WADDRS]
        units += [isa.MAGIC_WADDR_NAMES[w] for w in magic if w in isa.SFU_WADDRS]
        units += [isa.MAGIC_WADDR_NAMES[w] for w in magic if 16 <= w <= 18]
        if ins.sig.ldtmu:
            units.append("ldtmu")
        if len(units) > 1:
            warn(pc, "one-unit", f"{' and '.join(units)} in one instruction")
        sfu = any(w in isa.SFU_WADDRS for w in magic)
        if pc - last_sfu < 2:
            writes_r4 = ("acc", 4) in _reg_writes(ins)
            if _reads_r4(ins) or writes_r4 or sfu:
                what = "r4 read" if _reads_r4(ins) else ("r4 written" if writes_r4 else "another SFU write")
                warn(pc, "r4-too-soon", f"{what} {pc - last_sfu} instruction(s) after an SFU write")
        if (ins.sig.ldunifa or ins.sig.ldunifarf) and pc - last_unifa < 3:
            warn(pc, "unifa-too-soon", f"ldunifa {pc - last_unifa} instruction(s) after the write to unifa")
        if ins.sig.rotate and ins.mul.op != "nop":
            srcs = _mul_sources(ins)
            if ins.rot_amount is None:
                srcs.add(("acc", 5))
            hit = srcs & prev_writes
            if hit:
                names = ", ".join(f"r{n}" if k == "acc" else f"rf{n}" for k, n in sorted(hit))
                warn(pc, "rotate-source", f"rotate reads {names}, written by the previous instruction")
        if ins.sig.thrsw and branch_left:
            warn(pc, "thrsw-in-branch-delay", "thrsw in a branch delay slot")
        if sfu and thrsw_left:
            warn(pc, "sfu-in-thrsw-delay", "SFU write in a thrsw delay slot")
        if sfu:
            last_sfu = pc
        if isa.W_UNIFA in magic:
            last_unifa = pc
        branch_left = max(0, branch_left - 1)
        thrsw_left = 2 if ins.sig.thrsw and not thrsw_left else max(0, thrsw_left - 1)
        prev_writes = _reg_writes(ins)
    return out
