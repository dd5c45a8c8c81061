"""Where the experts live when the CPU and the QPU share a layer's experts.

GPU buffers are not CPU-cached (the v3d driver maps them write-combined), so an expert the CPU computes must
sit in ordinary memory: for the CPU that is the GGUF file's page cache (the file is memory-mapped); for the
QPU, the pinned copy in the kernels' layout. An expert resident on both sides costs both copies, and an 8 GB
Pi 4 may hold only one copy of a model's experts (OLMoE-1B-7B Q4_K: 3.6 GB in GGUF blocks + 4.8 GB in the q4
QPU layout). A placement says, per layer and expert, which lanes hold it:

    all        every expert on both sides: the split is free (the ideal), if the budget allows two copies
    static     the first `cpu_fraction` of every layer's experts (by index) on the CPU only, the rest on
               the QPU only: one copy, the split follows the router
    frequency  one copy; experts sorted by how often a calibration prompt routed to them (plus one, so that
               unseen experts still count) and dealt to the lanes so each lane's expected share of the
               routed experts is its target share
    hot        one copy as `frequency`, plus the most used experts duplicated on the other side as far as the
               memory left allows: those give the split its freedom back

`assign` maps one token's selected experts to lanes under a placement (a duplicated expert goes where the
planned split wants it); `evaluate` replays a routing trace and reports the predicted time against the ideal
placement (`all`), which is what a placement costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pimoe import coexec
from pimoe.errors import PimoeError

PLACEMENTS = ("all", "static", "frequency", "hot")
GiB = 1 << 30
PI4_8GB = 8 * GiB


@dataclass
class Placement:
    name: str
    cpu: np.ndarray            # bool [L, E]: the expert is in ordinary memory (the CPU may compute it)
    qpu: np.ndarray            # bool [L, E]: the expert is in the QPU copy
    cpu_expert_bytes: int      # one expert's bytes in GGUF blocks (gate + up + down)
    qpu_expert_bytes: int      # one expert's bytes in the QPU layout
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not np.all(self.cpu | self.qpu):
            raise PimoeError(f"placement {self.name}: some expert is on neither side")

    @property
    def cpu_bytes(self) -> int:
        return int(self.cpu.sum()) * self.cpu_expert_bytes

    @property
    def qpu_bytes(self) -> int:
        return int(self.qpu.sum()) * self.qpu_expert_bytes

    @property
    def bytes(self) -> int:
        return self.cpu_bytes + self.qpu_bytes

    def describe(self) -> dict:
        return {"name": self.name, "cpu_experts": int(self.cpu.sum()), "qpu_experts": int(self.qpu.sum()),
                "duplicated": int((self.cpu & self.qpu).sum()), "cpu_bytes": self.cpu_bytes,
                "qpu_bytes": self.qpu_bytes, "bytes": self.bytes, "notes": list(self.notes)}


def _deal(order: np.ndarray, usage: np.ndarray, cpu_fraction: float) -> np.ndarray:
    """Deal experts (most used first) so the CPU's share of the expected use is cpu_fraction: each expert goes
    to the lane furthest below its target share. Returns bool [E] (True = CPU)."""
    total = float(usage.sum()) or 1.0
    on_cpu = np.zeros(len(usage), bool)
    load = [0.0, 0.0]                          # cpu, qpu
    target = [cpu_fraction, 1 - cpu_fraction]
    for e in order:
        gap = [(target[i] - load[i] / total) if target[i] > 0 else -np.inf for i in range(2)]
        lane = 0 if gap[0] >= gap[1] else 1
        on_cpu[e] = lane == 0
        load[lane] += float(usage[e])
    return on_cpu


def make_placement(name: str, n_layers: int, n_experts: int, cpu_expert_bytes: int, qpu_expert_bytes: int,
                   cpu_fraction: float, budget: int | None = None, usage: np.ndarray | None = None) -> Placement:
    """A placement of every layer's experts. cpu_fraction: the CPU's target share of the routed experts (from
    the planned split); budget: bytes for the expert copies (None: unlimited); usage [L, E]: how often a
    calibration prompt routed to each expert (frequency / hot)."""
    if name not in PLACEMENTS:
        raise PimoeError(f"placement {name!r}: choose one of {', '.join(PLACEMENTS)}")
    if not 0.0 <= cpu_fraction <= 1.0:
        raise PimoeError(f"cpu_fraction {cpu_fraction} must be within [0, 1]")
    L, E = n_layers, n_experts
    notes = []
    if name == "all":
        p = Placement(name, np.ones((L, E), bool), np.ones((L, E), bool), cpu_expert_bytes, qpu_expert_bytes)
        if budget is not None and p.bytes > budget:
            p.notes.append(f"needs {p.bytes / GiB:.2f} GiB for both copies, budget {budget / GiB:.2f} GiB: "
                           f"does not fit (kept as the ideal to measure the others against)")
        return p
    if name in ("frequency", "hot") and usage is None:
        raise PimoeError(f"placement {name} needs the routing frequencies of a calibration prompt (usage)")
    cpu = np.zeros((L, E), bool)
    if name == "static":
        cpu[:, :int(round(cpu_fraction * E))] = True
    else:
        # add-one smoothing: an expert the calibration prompt never chose still gets routed to later, and
        # without it every unseen expert would land on the same lane
        u = np.asarray(usage, float)
        if u.size != L * E:
            raise PimoeError(f"placement {name}: usage has {u.size} counts (shape {u.shape}), the model has "
                             f"{L} layers x {E} experts = {L * E}: routing frequencies of another model?")
        u = u.reshape(L, E) + 1.0
        for layer in range(L):
            order = np.argsort(-u[layer], kind="stable")
            cpu[layer] = _deal(order, u[layer], cpu_fraction)
    qpu = ~cpu
    if name == "hot":
        one_copy = int(cpu.sum()) * cpu_expert_bytes + int(qpu.sum()) * qpu_expert_bytes
        room = None if budget is None else budget - one_copy
        u = np.asarray(usage, float).reshape(L, E)
        # duplicate the most used experts first, over all layers, while room is left
        for flat in np.argsort(-u.ravel(), kind="stable"):
            layer, e = divmod(int(flat), E)
            if u[layer, e] <= 0:
                break
            extra = qpu_expert_bytes if cpu[layer, e] else cpu_expert_bytes
            if room is not None and extra > room:
                continue
            cpu[layer, e] = qpu[layer, e] = True
            if room is not None:
                room -= extra
        notes.append(f"{int((cpu & qpu).sum())} hot experts duplicated")
    p = Placement(name, cpu, qpu, cpu_expert_bytes, qpu_expert_bytes, notes)
    if budget is not None and p.bytes > budget:
        p.notes.append(f"needs {p.bytes / GiB:.2f} GiB, budget {budget / GiB:.2f} GiB: does not fit")
    return p


def assign(cpu_ok: np.ndarray, qpu_ok: np.ndarray, n_cpu: int) -> np.ndarray:
    """One token's k selected experts (router order) -> bool [k], True = computed on the CPU. Experts on one
    side only go there; duplicated ones fill the CPU up to n_cpu, taking the last slots in router order (the
    smallest router weights) first. cpu_ok/qpu_ok: bool [k] for the selected experts."""
    cpu_ok = np.asarray(cpu_ok, bool)
    qpu_ok = np.asarray(qpu_ok, bool)
    if not np.all(cpu_ok | qpu_ok):
        raise PimoeError("assign: a selected expert is on neither side")
    on_cpu = cpu_ok & ~qpu_ok
    free = np.nonzero(cpu_ok & qpu_ok)[0]
    want = max(0, int(n_cpu) - int(on_cpu.sum()))
    if want and len(free):
        on_cpu[free[::-1][:want]] = True
    return on_cpu


def evaluate(p: Placement, routing: np.ndarray, rates: coexec.LaneRates, n_cpu: int, share="central") -> dict:
    """Replay a routing trace (int [steps, L, k]: decode tokens' selected experts per layer) under placement p:
    mean predicted expert seconds per token-layer, and the same with the free split of the ideal placement."""
    routing = np.asarray(routing)
    steps, L, k = routing.shape
    ideal = coexec.plan_units(k, rates, share)
    total = 0.0
    counts = np.zeros(k + 1, np.int64)
    for s in range(steps):
        for layer in range(L):
            ids = routing[s, layer]
            c = int(assign(p.cpu[layer, ids], p.qpu[layer, ids], n_cpu).sum())
            counts[c] += 1
            total += coexec.split_time(c, k - c, rates, share).seconds
    n = steps * L
    mean = total / n if n else 0.0
    return {"placement": p.describe(), "seconds_per_layer_token": mean, "ideal_seconds": ideal.seconds,
            "cost_vs_ideal": mean / ideal.seconds if ideal.seconds else None, "n_cpu_target": n_cpu,
            "cpu_experts_histogram": counts.tolist(), "share": str(share)}
