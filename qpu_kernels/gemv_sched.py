"""A list scheduler that packs a straight-line list of QPU operations into dual-issue instructions.

The inner loops of the GEMV kernels are long straight-line bodies (one 32-weight block: ~40 signals and
~120 ALU ops). Hand-packing them for every layout and token count would be error prone, so the kernels
describe a block as a list of `Op`s in program order and this module packs them, greedily, into
instructions holding at most one add-ALU op, one mul-ALU op and one signal, respecting what the V3D 4.2
encoding and pipeline allow:

- a value written in instruction i can be read from instruction i + latency (1 for ALU ops and load
  signals; an op may read a register in the same instruction that overwrites it: reads come first);
- writes never move above an earlier read or write of the same register (program order is the meaning);
- an instruction reads at most two register-file registers (raddr_a, raddr_b); a small immediate takes
  raddr_b, so with one only a single register-file register can be read, all immediates must be equal,
  and the only signal that can accompany it is ldtmu (Mesa's signal table: smimm pairs only with ldtmu
  and ldvary);
- at most one TMU write (tmua/tmud) per instruction; an ldtmu may share it (what the silicon runs:
  py-videocore6's hardware-tested summation and scopy do so on every loop trip; Mesa's compiler does not,
  so kernels scheduled here opt out of pimoe.qpu.lint's "one-unit" rule by name). The emulator performs
  an instruction's TMU write before its ldtmu, so a load issued next to the ldtmu that frees its FIFO
  entry would overflow a full FIFO: the FIFO stream pseudo-registers order them one instruction apart;
- ordered streams (the TMU result FIFO, the unifa uniform stream, the TMU request queue, the flags) are
  pseudo-registers that ops read and write, so they keep their program order.

Operands are register names ("r0".."r5", "rf0".."rf63", magic names such as "tmua"), (name, unpack)
pairs for f16 unpacks ("l"/"h"), or python ints/floats (small immediates). An op may list alternative
operand tuples (e.g. a register holding the constant instead of a small immediate) tried in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MUL_OPS = frozenset({"add", "sub", "umul24", "smul24", "fmul", "mov", "fmov", "vfmul"})
TMU_WRITES = frozenset({"tmua", "tmud", "tmuau", "tmuc"})


def _reg_of(operand):
    if isinstance(operand, tuple):
        return operand[0]
    if isinstance(operand, str):
        return operand
    return None


def _is_imm(operand) -> bool:
    return isinstance(operand, (int, float)) and not isinstance(operand, bool)


@dataclass
class Op:
    """One operation. unit: "add" | "mul" | "any" (integer add/sub/mov exist on both ALUs) | "sig".

    For unit "sig", name is the signal (ldtmu, ldunifarf, ldunifa) and dst the register it writes.
    reads/writes: extra pseudo-registers (ordering only). alts: alternative (name, srcs) forms.
    """

    unit: str
    name: str
    dst: str | None = None
    srcs: tuple = ()
    cond: str | None = None
    reads: tuple = ()
    writes: tuple = ()
    latency: int = 1
    alts: list = field(default_factory=list)
    priority: int = 0          # added to the op's height in list scheduling (e.g. the loop counter)

    def forms(self, reg_first: bool = False):
        """The operand forms in the order to try them; reg_first: forms without a small immediate first
        (an immediate takes raddr_b and keeps ldunifa/ldunifarf out of the instruction)."""
        forms = [(self.name, self.srcs)] + list(self.alts)
        if reg_first:
            forms.sort(key=lambda f: any(_is_imm(s) for s in f[1]))
        yield from forms

    def src_regs(self, srcs) -> list[str]:
        return [r for r in (_reg_of(s) for s in srcs) if r is not None] + list(self.reads)

    def dst_regs(self) -> list[str]:
        out = list(self.writes)
        if self.dst is not None and self.dst not in ("null", "tmua", "tmud", "tmuau", "tmuc", "unifa"):
            out.append(self.dst)
        elif self.dst == "unifa":
            out.append("@unifa_addr")
        return out


class Bundle:
    __slots__ = ("add", "mul", "sig", "rf", "imm", "tmu", "cond")

    def __init__(self):
        self.add = self.mul = self.sig = None   # (Op, name, srcs)
        self.rf: set[str] = set()
        self.imm = None
        self.tmu = False
        self.cond = False   # an ALU op carries a condition / flag push


def _fits(b: Bundle, op: Op, unit: str, name: str, srcs) -> bool:
    if unit == "sig":
        if b.sig is not None:
            return False
        if b.imm is not None and op.name != "ldtmu":
            return False
        if op.dst is not None and b.cond:   # a signal with a destination uses the condition field
            return False
        return True
    if getattr(b, unit) is not None:
        return False
    if op.cond and b.sig is not None and b.sig[0].dst is not None:
        return False
    if unit == "mul" and name not in MUL_OPS:
        return False
    if op.dst in TMU_WRITES and b.tmu:
        return False
    rf = set(b.rf)
    rf.update(r for r in (_reg_of(s) for s in srcs) if r is not None and r.startswith("rf"))
    imms = {s for s in srcs if _is_imm(s)}
    imm = b.imm
    for v in imms:
        if imm is not None and (imm != v or type(imm) is not type(v)):
            return False
        imm = v
    if imm is not None:
        if len(rf) > 1:
            return False
        if b.sig is not None and b.sig[0].name != "ldtmu":
            return False
    elif len(rf) > 2:
        return False
    return True


class Scheduler:
    """Greedy in-order list scheduling into Bundles (see the module docstring)."""

    def __init__(self):
        self.bundles: list[Bundle] = []
        self.ready: dict[str, int] = {}
        self.last_read: dict[str, int] = {}
        self.last_write: dict[str, int] = {}

    def place(self, op: Op, earliest: int = 0) -> int:
        units = ("mul", "add") if op.unit == "any" else (op.unit,)
        start = earliest
        for w in op.dst_regs():
            start = max(start, self.last_read.get(w, 0), self.last_write.get(w, -1) + 1)
        i = start
        while True:
            while len(self.bundles) <= i:
                self.bundles.append(Bundle())
            b = self.bundles[i]
            for name, srcs in op.forms():
                if any(self.ready.get(r, 0) > i for r in op.src_regs(srcs)):
                    continue
                for unit in units:
                    if unit == "mul" and name not in MUL_OPS:
                        continue
                    if _fits(b, op, unit, name, srcs):
                        self._commit(b, i, op, unit, name, srcs)
                        return i
            i += 1

    def _commit(self, b: Bundle, i: int, op: Op, unit: str, name: str, srcs) -> None:
        setattr(b, unit, (op, name, srcs))
        if op.cond:
            b.cond = True
        b.rf.update(r for r in (_reg_of(s) for s in srcs) if r is not None and r.startswith("rf"))
        for s in srcs:
            if _is_imm(s):
                b.imm = s
        if op.dst in TMU_WRITES:
            b.tmu = True
        for r in op.src_regs(srcs):
            self.last_read[r] = max(self.last_read.get(r, 0), i)
        for w in op.dst_regs():
            self.last_write[w] = i
            self.ready[w] = i + op.latency

    def run(self, ops: list[Op]) -> list[Bundle]:
        for op in ops:
            self.place(op)
        return self.bundles


def schedule(ops: list[Op]) -> list[Bundle]:
    return Scheduler().run(ops)


def emit(lang: dict, bundles: list[Bundle]) -> int:
    """Emit bundles as instructions through the DSL names `lang` (pimoe.qpu.asm.language). Returns the
    number of instructions emitted."""

    def operand(s):
        if isinstance(s, tuple):
            return lang[s[0]].unpack(s[1])
        if isinstance(s, str):
            return lang[s]
        return s

    def call(fn, op: Op, srcs, sig=None):
        kwargs = {}
        if op.cond:
            kwargs["cond"] = op.cond
        if sig is not None:
            kwargs["sig"] = sig
        dst = lang[op.dst] if op.dst else lang["null"]
        return fn(dst, *[operand(s) for s in srcs], **kwargs)

    for b in bundles:
        sig = None
        if b.sig is not None:
            sop = b.sig[0]
            sig = lang[sop.name] if sop.dst is None else lang[sop.name](lang[sop.dst])
        if b.add is not None:
            op, name, srcs = b.add
            if name == "nop":
                inst = lang["nop"](sig=sig) if sig is not None else lang["nop"]()
            else:
                inst = call(lang[name], op, srcs, sig)
        else:
            inst = lang["nop"](sig=sig) if sig is not None else lang["nop"]()
        if b.mul is not None:
            op, name, srcs = b.mul
            call(getattr(inst, name), op, srcs)
    return len(bundles)


def schedule_list(ops: list[Op], any_first: str = "mul", tie: int = 1, reg_first: bool = False) -> list[Bundle]:
    """Cycle-by-cycle list scheduling: each instruction is filled with the ready ops of greatest height
    (longest latency path to the end of the block), program order breaking ties. Dependencies are the
    same as Scheduler's: read-after-write waits for the latency, write-after-read may share the
    instruction, write-after-write comes strictly later."""
    n = len(ops)
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]   # (pred index, min distance)
    last_writer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        srcs = set()
        for _, forms_srcs in op.forms():
            srcs.update(op.src_regs(forms_srcs))
        for r in srcs:
            if r in last_writer:
                w = last_writer[r]
                preds[i].append((w, ops[w].latency))
        for r in op.dst_regs():
            for rd in readers.get(r, []):
                if rd != i:
                    preds[i].append((rd, 0))
            if r in last_writer:
                preds[i].append((last_writer[r], 1))
        for r in srcs:
            readers.setdefault(r, []).append(i)
        for r in op.dst_regs():
            last_writer[r] = i
            readers[r] = []
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, ps in enumerate(preds):
        for p, d in ps:
            succs[p].append((i, d))
    height = [0] * n
    for i in range(n - 1, -1, -1):
        height[i] = max([d + height[s] for s, d in succs[i]], default=0) + ops[i].priority
    placed = [-1] * n
    waiting = [len(ps) for ps in preds]          # predecessors not yet placed
    earliest = [0] * n
    candidates = {i for i in range(n) if waiting[i] == 0}
    left = n
    bundles: list[Bundle] = []
    cycle = 0
    dummy = Scheduler()
    while left:
        b = Bundle()
        bundles.append(b)
        progress = True
        while progress:
            progress = False
            ready = sorted((i for i in candidates if earliest[i] <= cycle), key=lambda i: (-height[i], tie * i))
            for i in ready:
                op = ops[i]
                units = (any_first, "add" if any_first == "mul" else "mul") if op.unit == "any" else (op.unit,)
                done = False
                for name, srcs in op.forms(reg_first):
                    for unit in units:
                        if unit == "mul" and name not in MUL_OPS:
                            continue
                        if _fits(b, op, unit, name, srcs):
                            dummy._commit(b, cycle, op, unit, name, srcs)
                            done = True
                            break
                    if done:
                        break
                if done:
                    placed[i] = cycle
                    candidates.discard(i)
                    left -= 1
                    for s_, d in succs[i]:
                        earliest[s_] = max(earliest[s_], cycle + d)
                        waiting[s_] -= 1
                        if waiting[s_] == 0:
                            candidates.add(s_)
                    progress = True
                    break       # re-evaluate readiness: a same-cycle write-after-read may now be ready
        cycle += 1
    return bundles


# (any_first, tie, reg_first) settings of schedule_list that schedule_best tries: the ones that won on some
# GEMV block (q4/q8, sum/swiglu, 1 and 4 tokens); the others never did and cost assembly time.
LIST_SETTINGS = (("mul", 1, True), ("add", 1, True), ("mul", -1, True), ("add", -1, True), ("add", -1, False),
                 ("mul", 1, False))


def schedule_best(ops: list[Op]) -> list[Bundle]:
    """The shortest of the in-order greedy and the list schedules (all respect every rule)."""
    best = Scheduler().run(ops)
    for any_first, tie, reg_first in LIST_SETTINGS:
        b = schedule_list(ops, any_first, tie, reg_first=reg_first)
        if len(b) < len(best):
            best = b
    return best


def check_schedule(ops: list[Op], bundles: list[Bundle]) -> None:
    """Raise AssertionError unless `bundles` holds every op once and every read sees the same writer as
    in program order (reads of an instruction happen before its writes; a value is visible `latency`
    instructions after its writer)."""
    where: dict[int, int] = {}
    chosen: dict[int, tuple] = {}
    for i, b in enumerate(bundles):
        for slot in (b.add, b.mul, b.sig):
            if slot is not None:
                assert id(slot[0]) not in where, "op scheduled twice"
                where[id(slot[0])] = i
                chosen[id(slot[0])] = slot[2]
    assert len(where) == len(ops), f"{len(ops) - len(where)} ops missing from the schedule"
    want: list[dict[str, int]] = []          # per op: register -> program-order writer index (-1 = before)
    last: dict[str, int] = {}
    for k, op in enumerate(ops):
        want.append({r: last.get(r, -1) for r in op.src_regs(chosen[id(op)])})
        for r in op.dst_regs():
            last[r] = k
    writes: dict[str, list[tuple[int, int]]] = {}   # register -> [(bundle, op index)] in bundle order
    for k, op in enumerate(ops):
        for r in op.dst_regs():
            writes.setdefault(r, []).append((where[id(op)], k))
    for k, op in enumerate(ops):
        at = where[id(op)]
        for r, w in want[k].items():
            seen = -1
            for (bw, kw) in sorted(writes.get(r, [])):
                if bw + ops[kw].latency <= at:
                    seen = kw
            if w >= 0:
                assert where[id(ops[w])] + ops[w].latency <= at, f"op {k} reads {r} before op {w} wrote it"
            assert seen == w, f"op {k} ({op.name}) reads {r} from op {seen}, program order says op {w}"
