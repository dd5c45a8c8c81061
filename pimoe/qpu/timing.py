"""Predicted Raspberry Pi 4 time of a QPU dispatch, from what the emulator counted. Always PREDICTED.

    from pimoe.qpu.timing import predict
    counters = drv.execute(code, ...)                 # EmuDriver: EmuCounters of that dispatch
    p = predict(counters)                              # Prediction(seconds, bound, breakdown, label)
    print(p.label, p.seconds, p.bound)                 # "predicted (Pi 4 QPU timing model)", 0.0185, "memory"

The model (V3D 4.2 on BCM2711, 2 slices x 4 QPUs at 500 MHz). A dispatch takes

    dispatch_overhead + max(compute, memory, sfu)

- compute = max over QPUs of
    issue:   4 cycles per instruction, summed over the QPU's threads (a 16-lane instruction runs on 4
             physical lanes for 4 cycles; the threads of a QPU share its one issue slot),
    latency: for each thread, its own issue cycles plus `waits x L`: a thread that switches out (thrsw)
             with loads in flight, or waits for its stores (tmuwt), is not runnable for one memory round
             trip L; the other threads of its QPU issue meanwhile, which is how 2 or 4 threads hide
             latency -- until the QPU's issue slot is full (the issue term). The emulator counts the
             thread switches that take effect (after the thrsw's 2 delay slots) while the thread has load
             results it has not yet taken with ldtmu (EmuCounters thread_switches_with_loads); a switch
             with nothing outstanding, or only stores pending, costs nothing. Counters recorded before
             that field existed fall back to charging every thrsw but the program-end ones (OLD_WAIT_RULE,
             named in the Prediction's label). A kernel that waits in ldtmu without a thrsw is
             under-charged unless predict(waits="ldtmu") adds those waits from the emulator's
             load-to-use distance bins (or predict(loads_in_flight=...) states them),
    queue:   load results a QPU receives x L / 8: at most 8 results in flight per QPU (the depth of the
             TMU queue py-videocore6's summation relies on, which its comment calls "eight-depth"), so
             even a kernel that never waits cannot stream faster than 8 results per round trip. A result
             is one 16-lane ldtmu: a 32-bit lookup returns one, a vec2/vec3/vec4 lookup 2/3/4, so the
             published vec4 summation keeps 2 lookups (8 results, 512 bytes per QPU) in flight, as the
             32-bit one kept 8. Counted as max(ldtmu, lookups) (counters without an ldtmu count:
             lookups).
- memory = TMU bytes read / read bandwidth + TMU bytes written / write bandwidth: reads and writes share
  one DRAM interface, so a copy pays both (the scopy figure checks exactly this).
- sfu = SFU ops of a slice x cycles per op (one SFU per slice shared by its 4 QPUs).

Why a thrsw with loads in flight counts as one round trip even with 1 thread per QPU: the sgemm figure
then gives L = 167 cycles (2 such thrsw per k step: at each, one lookup is still in flight); counting only
one wait per k step would need L = 341 cycles, but the summation streams 7.24 GB/s with 8 results (512
bytes) in flight per QPU, which by Little's law allows at most 283 cycles. Only the first reading fits
both published figures. (The record written by `python -m pimoe.bench.calibration` repeats this check.)

Bytes are the bytes the lanes asked for (EmuCounters tmu_read_bytes / tmu_write_bytes, plus 4 bytes per
uniform read, since a kernel may stream data through the uniform stream). The model has no
cache: a gather whose lanes hit separate lines costs more DRAM traffic than counted, and data re-read from
the TMU/L2 caches less; neither matters for the streaming calibration kernels, and the sgemm's gathers are
absorbed into L (it is fitted on that kernel). A caller that knows its DRAM traffic (e.g. a vector every
QPU re-reads from cache) passes predict(dram_read_bytes=...).

Parameters come from published facts, or are fitted to py-videocore6's published Pi 4 measurements by
pimoe.bench.calibration (`python -m pimoe.bench.calibration`: read and write bandwidth and the round trip,
least squares over all four figures, on the counts of kernels with the published kernels' instruction mix
and vec4 loads); tests/test_timing_calibration.py checks that the values below are what that fit gives from
the counts stored in pimoe/bench/calibration/counts.json, and the bounds of issue 12 (each figure within
10 % fitted on all four, each streaming figure within 15 % left out; sgemm left out of the four leaves the
round trip undetermined -- it is the only one of the four that depends on it -- so it is held at its prior,
Mesa's scheduler estimate of 400 cycles, which predicts the sgemm 1.89x too slow). A fifth published figure,
py-videocore6's 2019 naive sgemm (one thread; per k step its first thrsw takes effect with both lookups in
flight, its second after both results were read in its delay slots, so 1 wait per k step against the
1024^3 sgemm's 2), identifies the round trip on its own: L = 150 cycles, and left out of the five the
1024^3 sgemm is predicted 0.933x, the naive sgemm 1.094x (fitted on all five: 0.957x / 1.034x). Charging
every thrsw instead (the old rule) the two needed 167 vs 75 cycles (0.645x / 1.99x left out). Records:
results/calibration-20261204-184104.json (this rule), -182310.json (the old one).

The Pi 4 CPU model is pimoe.cpumodel; the published figures both models start from are in pimoe.pi4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

import numpy as np

from pimoe import pi4
from pimoe.errors import PimoeError

PREDICTED_LABEL = "predicted (Pi 4 QPU timing model)"
BOUNDS = ("issue", "latency", "memory", "sfu", "dispatch")


@dataclass(frozen=True)
class QPUTimingParams:
    # V3D clock: 500 MHz on a Pi 4 with force_turbo=1 -- py-videocore6 README (pctr_gpu_clock: 500.53 MHz;
    # its peak formula 500 MHz x 2 slices x 4 QPUs x 4 lanes x 2 ops = 32 GFLOPS).
    clock_hz: float = pi4.QPU_CLOCK_HZ
    # 2 slices x 4 QPUs (same README formula; pimoe.pi4).
    n_qpus: int = pi4.QPU_COUNT
    qpus_per_slice: int = pi4.QPUS_PER_SLICE
    # a 16-lane instruction occupies the QPU's 4 physical lanes for 4 cycles (README formula: 4 physical
    # cores per QPU, so 16 lanes take 4 cycles).
    cycles_per_instruction: float = 16 / pi4.QPU_PHYSICAL_LANES
    # load results in flight per QPU: py-videocore6 examples/summation.py keeps 8 outstanding ("the
    # eight-depth TMU read request queue": 2 vec4 lookups of 4 results) and is its fastest read kernel.
    tmu_queue_depth: int = 8
    # memory round trip seen by a waiting thread, in V3D cycles, and the TMU/DRAM read and write ceilings in
    # bytes/s: FITTED together (least squares on log time, pimoe.bench.calibration.fit_all) to the four
    # published figures -- summation 7241 MB/s, memset 3751 MB/s, scopy 2424 MB/s (reads + writes), sgemm
    # 1024^3 in 0.5546 s (8 QPUs x 1 thread, 2 waits per k step: the only one that depends on the latency)
    # -- from the counts of pimoe's kernels with the published kernels' instruction mix and vec4 loads.
    wait_latency_cycles: float = 167.47
    read_bandwidth: float = 7.293e9
    write_bandwidth: float = 3.752e9
    # SFU: one per slice (as on VideoCore IV: Broadcom's VideoCore IV 3D Architecture Reference Guide);
    # assumed 4 cycles of SFU time per 16-lane op (4 lanes per cycle, like the ALUs). No published figure
    # exercises the SFU, so this is an ASSUMPTION, not calibrated.
    sfu_cycles_per_op: float = 4.0
    # time from execute() to the end of a dispatch beyond the kernel itself (ioctl submit, job start,
    # cache flush, wait). py-videocore6's benchmarks/test_dispatch.py measures it but publishes no figure;
    # ASSUMED 50 us. (raspberrypi/linux issue 3460 reported 30 ms per dispatch from a cache clean in early
    # 2020 kernels; it was fixed, and the README's 17.9 ms memset shows the published figures are newer.)
    dispatch_overhead_s: float = 50e-6
    # thread switches the emulator counts for the program-end sequence of every batch; they wait for
    # nothing (measured: an empty program counts 2 per batch).
    end_thread_switches: int = 2

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


PI4 = QPUTimingParams()


@dataclass(frozen=True)
class Prediction:
    """A predicted time; never a measurement. breakdown: seconds of each term (the max of them wins)."""

    seconds: float
    bound: str
    breakdown: dict[str, float] = field(default_factory=dict)
    label: str = PREDICTED_LABEL

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "predicted_seconds": self.seconds, "bound": self.bound,
                "breakdown_seconds": dict(self.breakdown)}


_NEEDED = ("instructions", "tmu_reads", "tmu_read_bytes", "tmu_write_bytes", "sfu_ops", "thread_switches",
           "tmuwt")
_OPTIONAL = ("uniforms_read", "ldtmu")   # 0 when a caller's counters lack them
# thread switches that took effect with load results outstanding (emu_core.C_THRSW_LOADS); counters recorded
# before the emulator counted them lack it, and thread_waits() then falls back to OLD_WAIT_RULE
SWITCH_WAITS = "thread_switches_with_loads"
OLD_WAIT_RULE = ("every thrsw but the program end's charged as a wait: counters without "
                 f"'{SWITCH_WAITS}' (recorded by an older emulator)")
UNIFORM_BYTES = 4                # a uniform (ldunif/ldunifa) is one 32-bit word read from memory
NEAR_PREFIX = "ldtmu_near"       # the emulator's load-to-use distance bins: ldtmu_nearDD counts the ldtmu
                                 # whose load the thread issued DD .. DD + width - 1 instructions before
WAITS = ("thrsw", "ldtmu")


def _near_bins(per: Mapping) -> list[tuple[int, int, str]]:
    """[(lowest distance, bin width, counter name)] of the ldtmu_near* counters present, in order."""
    names = []
    for n in per:
        if n.startswith(NEAR_PREFIX):
            if not n[len(NEAR_PREFIX):].isdigit():
                raise PimoeError(f"predict(): counter '{n}' is not a distance bin ({NEAR_PREFIX}<distance>)")
            names.append((int(n[len(NEAR_PREFIX):]), n))
    names.sort()
    if not names:
        return []
    los = [lo for lo, _ in names]
    width = los[1] - los[0] if len(los) > 1 else 1
    if los[0] != 0 or any(b - a != width for a, b in zip(los, los[1:])):
        raise PimoeError(f"predict(): the ldtmu_near* bins {los} are not contiguous from 0")
    return [(lo, width, n) for lo, n in names]


def near_stall_cycles(per: Mapping, params: "QPUTimingParams") -> np.ndarray:
    """Cycles each thread may stall in ldtmu on loads it issued fewer instructions before than a round
    trip takes: sum over the distance bins of count x max(0, L - cycles_per_instruction x distance),
    taking each bin's shortest distance. An UPPER bound for one thread with round trip L: a stall only
    lengthens the time between later loads and their ldtmu, and a load issued >= L / 4 instructions
    before its ldtmu (a software-pipelined loop) never waits. Loose for kernels that read every result a
    few instructions after its load (the true wait is then L / loads in flight, Little's law)."""
    bins = _near_bins(per)
    if not bins:
        raise PimoeError("predict(waits='ldtmu'): these counters have no ldtmu_near* distance bins (they were "
                         "recorded by an older emulator); re-run the kernel, or predict with waits='thrsw'")
    lo, width, _ = bins[-1]
    reach = params.cycles_per_instruction * (lo + width)
    if params.wait_latency_cycles > reach:
        raise PimoeError(f"predict(waits='ldtmu'): round trip {params.wait_latency_cycles} cycles is longer "
                         f"than the emulator's distance bins reach ({reach:.0f} cycles)")
    out = 0.0
    for lo, _, name in bins:
        stall = max(0.0, params.wait_latency_cycles - params.cycles_per_instruction * lo)
        out = out + np.asarray(per[name], dtype=np.float64) * stall
    return np.asarray(out, dtype=np.float64)


def _spread_totals(totals: Mapping, n_qpus: int) -> tuple[dict[str, np.ndarray], int]:
    """Per-thread arrays from dispatch totals, assuming the work was spread evenly over the batches
    (all QPUs, `threads_per_qpu` threads each): an approximation for callers that kept only totals."""
    mode = int(totals.get("threads_per_qpu", 1))
    batches = int(totals.get("batches", n_qpus * mode))
    if mode not in (1, 2, 4) or batches < 1:
        raise PimoeError(f"predict(): totals with threads_per_qpu={mode}, batches={batches}")
    slots = np.zeros((n_qpus, 4))
    for b in range(batches):
        slots[b % n_qpus, (b // n_qpus) % mode] += 1
    share = slots / slots.sum()
    per = {}
    for name in _NEEDED + _OPTIONAL:
        if name not in totals and name in _NEEDED:
            raise PimoeError(f"predict(): counters lack '{name}'")
        per[name] = float(totals.get(name, 0)) * share
    if SWITCH_WAITS in totals:
        per[SWITCH_WAITS] = float(totals[SWITCH_WAITS]) * share
    for name in totals:
        if name.startswith(NEAR_PREFIX):
            per[name] = float(totals[name]) * share
    return per, batches


def _per_thread(counters, near: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """(per-thread counter arrays [QPUs, thread slots], batches) from EmuCounters, the dict form
    (counters_to_dict / Profiler.qpu_dispatch), or a dict of totals (spread evenly, see _spread_totals).
    near: also the ldtmu_near* distance bins (predict(waits="ldtmu") only)."""
    if hasattr(counters, "per_thread"):
        per, batches = counters.per_thread, int(counters.batches)
    elif isinstance(counters, Mapping) and "per_thread" in counters:
        per, batches = counters["per_thread"], int(counters["batches"])
    elif isinstance(counters, Mapping) and "instructions" in counters:
        per, batches = _spread_totals(counters, PI4.n_qpus)
    else:
        raise PimoeError(f"predict() needs EmuCounters (or a dict with 'per_thread' and 'batches'), not "
                         f"{type(counters).__name__}")
    out = {}
    shape = np.shape(per["instructions"]) if "instructions" in per else None
    bins = [name for _, _, name in _near_bins(per)] if near and shape is not None else []
    switch_waits = (SWITCH_WAITS,) if SWITCH_WAITS in per else ()   # absent: thread_waits() uses the old rule
    for name in _NEEDED + _OPTIONAL + tuple(bins) + switch_waits:
        if name not in per:
            if name in _NEEDED:
                raise PimoeError(f"predict(): counters lack '{name}'")
            out[name] = np.zeros(shape)
            continue
        arr = np.asarray(per[name], dtype=np.float64)
        if arr.ndim != 2:
            raise PimoeError(f"predict(): counter '{name}' must be [QPUs, thread slots], got shape {arr.shape}")
        if np.any(arr < 0):
            raise PimoeError(f"predict(): counter '{name}' has negative entries")
        if arr.shape != shape:
            raise PimoeError(f"predict(): counter '{name}' has shape {arr.shape}, 'instructions' {shape}")
        out[name] = arr
    return out, batches


def thread_waits(per: dict[str, np.ndarray], batches: int, params: QPUTimingParams = PI4) -> np.ndarray:
    """Memory round trips each thread slot waits for: its thread switches that took effect with load results
    outstanding (the emulator's thread_switches_with_loads) + its tmuwt. Counters without that field
    (recorded by an older emulator) fall back to OLD_WAIT_RULE: every thrsw minus the program-end ones."""
    if SWITCH_WAITS in per:
        return np.asarray(per[SWITCH_WAITS], dtype=np.float64) + per["tmuwt"]
    used = (per["instructions"] > 0) | (per["thread_switches"] > 0)
    n_used = max(1, int(used.sum()))
    batches_per_slot = np.where(used, max(batches, n_used) / n_used, 0.0)
    switches = np.maximum(per["thread_switches"] - params.end_thread_switches * batches_per_slot, 0.0)
    return switches + per["tmuwt"]


def predict(counters, *, params: QPUTimingParams = PI4, clock_hz: float | None = None,
            dispatches: int = 1, loads_in_flight: float | None = None,
            dram_read_bytes: float | None = None, waits: str = "thrsw") -> Prediction:
    """Predicted Pi 4 time of the dispatch(es) that produced `counters` (see the module docstring).

    clock_hz overrides params.clock_hz (e.g. a V3D without force_turbo); dispatches counts the overhead
    that many times when the counters are the sum of several executes.
    loads_in_flight: the kernel author's statement of how many loads a thread has in flight when it
    waits for one (ldtmu right after its load: 1). By default a thread waits only where it executes thrsw
    (or tmuwt), which is right for kernels that thrsw after their loads and for pipelined kernels that keep
    8 in flight; a kernel that calls ldtmu soon after its load WITHOUT thrsw stalls anyway, and the
    counters cannot see that: pass loads_in_flight, and thread waits become tmu_reads / loads_in_flight
    (+ tmuwt) instead of its thread switches.
    waits="ldtmu": measure that instead of stating it. Besides its thread switches and tmuwt, a thread
    waits in ldtmu for loads it issued less than a round trip before, by the emulator's load-to-use
    distance bins (near_stall_cycles: an upper bound), and since such a stall holds its QPU (only a
    thrsw lets another thread issue), the QPU's other threads wait too. For kernels that never thrsw in
    their loops, e.g. the software-pipelined GEMVs, whose quantized layouts issue nearly every load more
    than a round trip before its use.
    dram_read_bytes: bytes that really come from DRAM when some counted reads hit the GPU caches (e.g. a
    vector every QPU re-reads); default: all counted bytes."""
    if clock_hz is not None:
        params = replace(params, clock_hz=float(clock_hz))
    if params.clock_hz <= 0 or params.read_bandwidth <= 0 or params.write_bandwidth <= 0:
        raise PimoeError(f"timing parameters must be positive: {params}")
    if dispatches < 1:
        raise PimoeError(f"dispatches={dispatches}: at least one")
    if waits not in WAITS:
        raise PimoeError(f"predict(waits={waits!r}): one of {WAITS}")
    if waits == "ldtmu" and loads_in_flight is not None:
        raise PimoeError("predict(): give loads_in_flight (stated) or waits='ldtmu' (measured), not both")
    if loads_in_flight is not None and not 1 <= loads_in_flight <= params.tmu_queue_depth * 2:
        raise PimoeError(f"loads_in_flight={loads_in_flight}: between 1 and the TMU FIFO depth "
                         f"{params.tmu_queue_depth * 2}")
    per, batches = _per_thread(counters, near=waits == "ldtmu")
    cpi, lat = params.cycles_per_instruction, params.wait_latency_cycles
    instr = per["instructions"]                                   # [QPUs, slots]
    issue_q = cpi * instr.sum(axis=1)                             # [QPUs] cycles
    held_q = issue_q                                              # [QPUs] cycles no other thread can use
    if loads_in_flight is not None:
        wait_cycles = (per["tmu_reads"] / float(loads_in_flight) + per["tmuwt"]) * lat
    else:
        wait_cycles = thread_waits(per, batches, params) * lat
        if waits == "ldtmu":
            stalls = near_stall_cycles(per, params)               # [QPUs, slots]
            wait_cycles = wait_cycles + stalls
            held_q = issue_q + stalls.sum(axis=1)                 # a stall in ldtmu does not switch threads
    chain = cpi * instr + wait_cycles
    results_q = np.maximum(per["ldtmu"], per["tmu_reads"]).sum(axis=1)   # [QPUs] results through the queue
    latency_q = np.maximum.reduce([chain.max(axis=1), held_q, results_q * lat / params.tmu_queue_depth])
    slices = -(-instr.shape[0] // params.qpus_per_slice)
    sfu_q = per["sfu_ops"].sum(axis=1)
    sfu_slice = np.array([sfu_q[s * params.qpus_per_slice:(s + 1) * params.qpus_per_slice].sum()
                          for s in range(slices)])
    clock = params.clock_hz
    terms = {
        "issue": float(issue_q.max()) / clock,
        "latency": float(latency_q.max()) / clock,
        # uniforms are memory reads too (a kernel may stream data through ldunifa); TMU bytes otherwise
        "memory_read": float(per["tmu_read_bytes"].sum() + UNIFORM_BYTES * per["uniforms_read"].sum()
                             if dram_read_bytes is None else dram_read_bytes) / params.read_bandwidth,
        "memory_write": float(per["tmu_write_bytes"].sum()) / params.write_bandwidth,
        "sfu": float(sfu_slice.max() * params.sfu_cycles_per_op) / clock,
    }
    compute = float(np.maximum(issue_q, latency_q).max()) / clock
    memory = terms["memory_read"] + terms["memory_write"]
    overhead = params.dispatch_overhead_s * dispatches
    candidates = {"issue": terms["issue"], "latency": compute if compute > terms["issue"] else 0.0,
                  "memory": memory, "sfu": terms["sfu"]}
    bound = max(candidates, key=candidates.get)
    body = max(compute, memory, terms["sfu"])
    if overhead > body:
        bound = "dispatch"
    breakdown = dict(terms, memory=memory, compute=compute, dispatch_overhead=overhead)
    label = PREDICTED_LABEL
    if loads_in_flight is None and SWITCH_WAITS not in per:
        label = f"{PREDICTED_LABEL}; {OLD_WAIT_RULE}"
    return Prediction(seconds=overhead + body, bound=bound, breakdown=breakdown, label=label)


def counters_to_dict(counters) -> dict[str, object]:
    """A JSON-able form of EmuCounters that predict() accepts back (per-thread arrays as lists)."""
    return {"batches": int(counters.batches), "threads_per_qpu": int(counters.threads_per_qpu),
            "per_thread": {k: np.asarray(v).astype(np.int64).tolist() for k, v in counters.per_thread.items()}}
