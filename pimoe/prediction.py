"""Pi 4 predictions of what a profile recorded. Always PREDICTED, and labelled so by the callers.

    from pimoe import prediction
    pred = prediction.predict_regions(prof, lambda r: r.name == "tg", steps)   # {region path: seconds}

A region whose subtree ran QPU dispatches gets the QPU timing model's time of its own dispatches
(pimoe.qpu.timing, from their emulator counts; its weight bytes are the QPU's to read); any other region
gets the Pi 4 CPU model's time of its own weight bytes and FLOPs (pimoe.cpumodel, PI4_CPU_THREADS threads).
pimoe.profile only records; this module is the glue between its records and the two models.
"""

from __future__ import annotations

from pimoe import cpumodel, pi4, profile
from pimoe.qpu import timing

PI4_CPU_THREADS = pi4.CPU_CORES     # a Pi 4 decode uses all four cores

_TIMING_PARAMS = None    # QPUTimingParams every prediction here uses (a calibrated profile), None: the model's own


def use_timing_params(params) -> None:
    """Predict QPU dispatches with these QPUTimingParams from now on (e.g. the profile `pimoe calibrate`
    stored for this Pi); None goes back to the model's own."""
    global _TIMING_PARAMS
    _TIMING_PARAMS = params


def _params_args() -> dict:
    return {} if _TIMING_PARAMS is None else {"params": _TIMING_PARAMS}


def dispatch_timing_args(dispatch) -> dict:
    """The keyword arguments for pimoe.qpu.timing.predict() a dispatch carries (its kernel's
    waits="ldtmu" etc., see Profiler.qpu_dispatch); {} for bare EmuCounters or none given."""
    if isinstance(dispatch, dict):
        return dict(dispatch.get("timing_args") or {})
    return {}


def predict_qpu(dispatch, **timing_args) -> dict:
    """The timing model's full prediction (label, predicted_seconds, bound, breakdown_seconds) of one
    dispatch. timing_args add to (override) the dispatch's own."""
    return timing.predict(dispatch, **{**_params_args(), **dispatch_timing_args(dispatch), **timing_args}).as_dict()


def predict_qpu_seconds(dispatch) -> float | None:
    """Predicted Pi 4 seconds of one QPU dispatch from its emulator counts (EmuCounters, or the dict
    Profiler.qpu_dispatch keeps), or None for a hardware dispatch (no emulator counts to predict from)."""
    if isinstance(dispatch, dict) and "per_thread" not in dispatch:
        return None
    # the kernel's timing_args (e.g. waits="ldtmu": ldtmu waits without thrsw) so that this agrees with the
    # kernel benchmark's prediction of the same dispatch
    return float(timing.predict(dispatch, **_params_args(), **dispatch_timing_args(dispatch)).seconds)


def predict_cpu_seconds(weight_bytes: float, flops: float, threads: int = PI4_CPU_THREADS) -> float:
    """Predicted Pi 4 CPU seconds of a region that streams `weight_bytes` and does `flops`."""
    return float(cpumodel.predict_cpu(weight_bytes, flops, threads=threads).seconds)


def pi4_ceilings() -> dict:
    """The Pi 4 ceilings the models use (for rooflines; stored in records so plots never recompute):
    CPU DRAM bandwidths and FLOP peaks, QPU read/write bandwidth and FLOP peak, DRAM on paper."""
    qpu, cpu = timing.PI4, cpumodel.PI4_CPU
    return {"dram_peak_GBps": pi4.DRAM_PEAK_BANDWIDTH / 1e9,
            "source": "pimoe.qpu.timing / pimoe.cpumodel parameters; published figures in pimoe.pi4; DRAM peak = "
                      "LPDDR4-3200 x 32 bit",
            "qpu_read_GBps": qpu.read_bandwidth / 1e9,
            "qpu_write_GBps": qpu.write_bandwidth / 1e9,
            "qpu_peak_GFLOPS": pi4.QPU_PEAK_FLOPS / 1e9,
            "cpu_decode_GBps": cpu.decode_bandwidth / 1e9,
            "cpu_stream_copy_GBps": cpu.stream_copy_bandwidth / 1e9,
            "cpu_fp32_GFLOPS": cpu.fp32_flops / 1e9,
            "cpu_fp64_GFLOPS": cpu.fp64_flops / 1e9}


# -- a profile's regions ---------------------------------------------------------------------------------

def predict_each(prof: profile.Profiler, where, share=None) -> list[float] | None:
    """Predicted Pi 4 seconds of every region (inclusive of its children; 0 outside `where`), or None when
    a dispatch has no emulator counts (a hardware dispatch): then nothing is predicted.

    A region whose subtree ran QPU dispatches: the timing model's time of its own dispatches (its
    weight bytes are the QPU's to read); any other region: Pi 4 CPU time of its own bytes and FLOPs.

    A region tagged concurrent=True (the hybrid backend's "coexec") runs its lane children (tag lane="cpu" /
    "qpu") at the same time: its time is pimoe.dram.concurrent of the two lanes' predicted times and DRAM
    bytes under the DRAM-sharing scenario `share` (default central), not their sum. Its QPU dispatches do not
    make its parent a QPU region: the parent keeps its CPU prediction, of its bytes and FLOPs minus what its
    concurrent children say they took over (tags covers_bytes / covers_flops: e.g. the attention region
    keeps the scores and A.V FLOPs while a coexec child computes the q projection)."""
    regions = prof.regions
    keep = profile.subtree_filter(regions, where)
    has_qpu = [bool(r.dispatches) for r in regions]
    covered = [[0, 0] for _ in regions]      # bytes, flops a region's concurrent children took over
    for r in reversed(regions):             # children come after their parent: propagate upwards
        if r.parent < 0:
            continue
        if r.tags.get("concurrent"):
            covered[r.parent][0] += r.tags.get("covers_bytes", 0)
            covered[r.parent][1] += r.tags.get("covers_flops", 0)
        elif has_qpu[r.index]:
            has_qpu[r.parent] = True
    own = [0.0] * len(regions)
    for r in regions:
        if not keep[r.index] or not r.end:
            continue
        nbytes = max(r.counters.get("bytes", 0) - covered[r.index][0], 0)
        flops = max(r.counters.get("flops", 0) - covered[r.index][1], 0)
        if has_qpu[r.index] or r.tags.get("concurrent"):
            parts = [predict_qpu_seconds(d) for d in (r.dispatches or ())]
        elif nbytes or flops:
            parts = [predict_cpu_seconds(nbytes, flops)]
        else:
            parts = []
        if any(p is None for p in parts):
            return None
        own[r.index] = sum(parts)
    incl = list(own)
    lanes: dict[int, dict[str, list[float]]] = {}
    for r in reversed(regions):
        if not keep[r.index]:
            continue
        if r.tags.get("concurrent"):
            from pimoe import dram

            ln = lanes.get(r.index, {})
            c, q = ln.get("cpu", [0.0, 0.0]), ln.get("qpu", [0.0, 0.0])
            incl[r.index] = own[r.index] + dram.concurrent(c[0], c[1], q[0], q[1], share or "central").seconds
        if r.parent >= 0:
            lane = r.tags.get("lane")
            if lane in ("cpu", "qpu") and regions[r.parent].tags.get("concurrent"):
                nbytes = r.counters.get("bytes", 0) if lane == "cpu" else r.counters.get("qpu.tmu_read_bytes", 0)
                acc = lanes.setdefault(r.parent, {}).setdefault(lane, [0.0, 0.0])
                acc[0] += incl[r.index]
                acc[1] += nbytes
            else:
                incl[r.parent] += incl[r.index]
    return incl


def predict_regions(prof: profile.Profiler, where, steps: int, share=None,
                    dispatch_overhead: float | None = None) -> dict[str, float] | None:
    """Predicted Pi 4 seconds per step by region path (inclusive), or None (see predict_each). share: the
    DRAM-sharing scenario of concurrent regions (pimoe.dram; default central); dispatch_overhead: predict
    every QPU dispatch with this fixed cost (seconds) instead of the timing parameters' own."""
    global _TIMING_PARAMS
    saved = _TIMING_PARAMS
    if dispatch_overhead is not None:
        from dataclasses import replace

        _TIMING_PARAMS = replace(saved or timing.PI4, dispatch_overhead_s=float(dispatch_overhead))
    try:
        incl = predict_each(prof, where, share)
    finally:
        _TIMING_PARAMS = saved
    if incl is None:
        return None
    out: dict[str, float] = {}
    for r, path in profile.region_paths(prof.regions, where):
        out[path] = out.get(path, 0.0) + incl[r.index] / steps
    return out


def predicted_trace_events(prof: profile.Profiler, where, pid: int, process_name: str) -> list[dict]:
    """A Perfetto timeline of the Pi 4 PREDICTION: the selected steps back to back, each region as long
    as predicted, children laid out in order from their parent's start."""
    incl = predict_each(prof, where)
    if incl is None:
        return []
    regions = prof.regions
    keep = profile.subtree_filter(regions, where)
    start = [0.0] * len(regions)
    cursor_top = 0.0
    next_child = {}
    events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": process_name}},
              {"name": "thread_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": "CPU"}},
              {"name": "thread_name", "ph": "M", "pid": pid, "tid": 2, "args": {"name": "QPU lane"}}]
    for r in regions:
        if not keep[r.index] or not r.end:
            continue
        if r.parent < 0:
            start[r.index] = cursor_top
            cursor_top += incl[r.index]
        elif regions[r.parent].tags.get("concurrent") and r.tags.get("lane"):
            start[r.index] = start[r.parent]          # the CPU and QPU lanes run side by side
        else:
            start[r.index] = next_child.get(r.parent, start[r.parent])
            next_child[r.parent] = start[r.index] + incl[r.index]
        args = dict(r.tags, predicted=True)
        tid = 2 if profile.within(regions, r, lambda q: q.tags.get("lane") == "qpu") else 1
        events.append({"name": r.name, "cat": "predicted", "ph": "X", "pid": pid, "tid": tid,
                       "ts": start[r.index] * 1e6, "dur": incl[r.index] * 1e6, "args": args})
    return events
