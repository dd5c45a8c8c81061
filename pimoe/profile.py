"""Named, nested timing regions with counters, for one token or a whole run; trace and record exports.

    from pimoe import profile

    prof = profile.Profiler()
    with profile.activate(prof):                 # model + backends now report into prof
        model.generate(...)
    prof.summary()                               # {path: {calls, seconds, self_seconds, bytes, flops, ...}}
    prof.write_trace("trace.json")               # Chrome / Perfetto trace events (ui.perfetto.dev)

Hooks (what the model and the backends call; all cheap no-ops while no profiler is active):

    with profile.region("attention", layer=i, bytes=w_bytes, flops=n_flops):   # tags: any other keyword
        ...
    profile.count(bytes=n, flops=f)              # add counters to the innermost open region
    profile.qpu_dispatch(counters, kernel="expert_ffn")   # one QPU execute's EmuCounters (or a dict)
    if profile.enabled(): ...                    # guard for counter arithmetic that is not free

For a QPU backend (pimoe/backends/qpu.py), inside expert_ffn, the model has already opened "experts"
(and put the routed experts' weight bytes and FLOPs on it), so the backend only splits the time:

    prof = profile.current()
    with prof.region("upload"): ...                  # activations / ids / weights into driver arrays
    with prof.region("dispatch"): ...                # uniforms, code, anything before execute()
    with prof.region("compute"):
        counters = drv.execute(...)
        prof.qpu_dispatch(counters, kernel="expert_ffn")   # emulator: EmuCounters; hardware: {} + seconds=
    with prof.region("readback"): ...                # results back into numpy
Do not put `bytes` on those sub-regions (the weights would be counted twice); use other counter names
(e.g. upload_bytes=) for activation traffic.

Region names used by pimoe (the report groups by the path of names, e.g. "forward/layer/experts/compute"):
    forward > embedding, layer > (attention, router, experts, shared_expert), output_head;  sampling
    experts (qpu backend) > upload, dispatch, compute, readback
Counters: `bytes` = weight bytes read (only the experts the router really chose), `flops` = 2 x MACs,
`kv_bytes` = KV-cache bytes read/written; `qpu.*` = summed emulator counts (instructions, tmu_read_bytes,
...), with each dispatch's counts also kept whole (`dispatches`) for the Pi 4 timing model.

Cost (measured by `overhead()`, fastest of 5 batches, on this shared 2-core x86 machine): while off,
`with prof.region(...)` on the NullProfiler costs 0.3-0.7 us and the module-level `with profile.region(...)`
0.5-1.3 us (a global load and one more call); an active Profiler costs 1.5-5 us per region (every compare
record stores its own `profiler_overhead`). The model opens ~5 regions
per layer per forward (the qpu backend ~6 more), so off it adds ~0.1 ms to a 48-layer token and on ~1-2
ms, against measured token times of 0.3 s here (2-layer Qwen3 shape) and 0.1-1 s predicted on a Pi 4.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_clock = time.perf_counter_ns


class Region:
    """One timed span: name, tags (layer=…), counters, start/end in ns, depth, parent index."""

    __slots__ = ("prof", "name", "tags", "counters", "start", "end", "depth", "parent", "index", "dispatches")

    def __init__(self, prof, name, tags, counters):
        self.prof = prof
        self.name = name
        self.tags = tags
        self.counters = counters
        self.dispatches = None
        self.start = self.end = 0
        self.depth = 0
        self.parent = -1
        self.index = -1

    def __enter__(self):
        p = self.prof
        stack = p._stack
        self.depth = len(stack)
        self.parent = stack[-1].index if stack else -1
        self.index = len(p.regions)
        p.regions.append(self)
        stack.append(self)
        self.start = _clock()
        return self

    def __exit__(self, *exc):
        self.end = _clock()
        stack = self.prof._stack
        if stack and stack[-1] is self:
            stack.pop()
        return False

    def count(self, **counters) -> None:
        c = self.counters
        for k, v in counters.items():
            c[k] = c.get(k, 0) + v

    @property
    def seconds(self) -> float:
        return (self.end - self.start) * 1e-9

    def path(self) -> str:
        names = [self.name]
        regions, i = self.prof.regions, self.parent
        while i >= 0:
            names.append(regions[i].name)
            i = regions[i].parent
        return "/".join(reversed(names))


class _NoRegion:
    """The shared do-nothing region returned while profiling is off."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def count(self, **counters) -> None:
        pass


NO_REGION = _NoRegion()


class Profiler:
    """Collects regions while active (see activate()). Not thread-safe: regions are opened from the one
    Python thread that runs the model (numba's worker threads never call back into Python)."""

    enabled = True

    def __init__(self, name: str = "pimoe"):
        self.name = name
        self.regions: list[Region] = []
        self._stack: list[Region] = []
        self.t0 = _clock()

    def region(self, name: str, bytes: int = 0, flops: int = 0, **tags) -> Region:
        counters = {}
        if bytes:
            counters["bytes"] = bytes
        if flops:
            counters["flops"] = flops
        return Region(self, name, tags, counters)

    def count(self, **counters) -> None:
        if self._stack:
            self._stack[-1].count(**counters)

    def qpu_dispatch(self, counters, kernel: str = "kernel", timing_args: dict | None = None, **tags) -> None:
        """Record one QPU execute in the innermost region: the counts are summed under qpu.* and the whole
        dispatch (EmuCounters, kept per thread as pimoe.qpu.timing.predict() wants it, or a plain dict of
        totals) is kept for the timing model. On hardware pass the measured seconds as a tag.
        timing_args: how the kernel is to be predicted, passed on to pimoe.qpu.timing.predict() (e.g.
        {"waits": "ldtmu"} for a kernel that waits on ldtmu without thrsw); kept with the dispatch under
        "timing_args" so every prediction of it uses them."""
        if not self._stack:
            return
        if hasattr(counters, "per_thread"):
            per = {k: [[int(x) for x in row] for row in v] for k, v in counters.per_thread.items()}
            totals = {k: int(sum(map(sum, v))) for k, v in per.items()}
            d = {"batches": int(counters.batches), "threads_per_qpu": int(counters.threads_per_qpu),
                 "per_thread": per, "emulator_seconds": float(counters.wall_seconds)}
        elif "per_thread" in counters:         # the same, already as a dict (timing.counters_to_dict form)
            d = dict(counters)
            totals = {k: int(np.sum(v)) for k, v in d["per_thread"].items()}
        else:                                   # plain totals (e.g. a hardware dispatch: seconds only)
            d = dict(counters)
            totals = {k: v for k, v in d.items() if isinstance(v, (int, float)) and k != "wall_seconds"}
        r = self._stack[-1]
        if r.dispatches is None:
            r.dispatches = []
        if timing_args:
            d["timing_args"] = dict(timing_args)
        r.dispatches.append(dict(d, kernel=kernel, **tags))
        r.count(**{"qpu." + k: v for k, v in totals.items()}, qpu_dispatches=1)

    def reset(self) -> None:
        self.regions = []
        self._stack = []
        self.t0 = _clock()

    # -- reading the results ------------------------------------------------------------------------------

    def closed(self) -> list[Region]:
        return [r for r in self.regions if r.end]

    def self_seconds(self) -> list[float]:
        """Per region: its time minus its direct children's time."""
        own = [r.seconds for r in self.regions]
        for r in self.regions:
            if r.parent >= 0:
                own[r.parent] -= r.seconds
        return own

    def summary(self, where=None) -> dict[str, dict]:
        """Aggregate by path: {path: {calls, seconds, self_seconds, depth, <counters summed>, dispatches}}.
        where(region) -> bool restricts it to some top-level regions' subtrees (e.g. one test phase)."""
        own = self.self_seconds()
        out: dict[str, dict] = {}
        for r, path in region_paths(self.regions, where):
            s = out.get(path)
            if s is None:
                s = out[path] = {"name": r.name, "depth": r.depth, "calls": 0, "seconds": 0.0, "self_seconds": 0.0}
            s["calls"] += 1
            s["seconds"] += r.seconds
            s["self_seconds"] += own[r.index]
            for k, v in r.counters.items():
                s[k] = s.get(k, 0) + v
            if r.dispatches:
                s.setdefault("dispatches", []).extend(r.dispatches)
        return out

    def trace_events(self, pid: int = 1, tid: int = 1, process_name: str | None = None) -> list[dict]:
        """Chrome trace-event 'X' (complete) events, ts/dur in microseconds from the profiler's start."""
        ev = [{"name": "process_name", "ph": "M", "pid": pid, "tid": tid,
               "args": {"name": process_name or self.name}},
              {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": "model"}}]
        if any(r.tags.get("lane") == "qpu" for r in self.regions):     # a region tagged lane="qpu" ran in a
            ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid + 1,   # worker thread: own track
                       "args": {"name": "QPU lane"}})
        for r in self.regions:
            if not r.end:
                continue
            args = dict(r.tags)
            args.update({k: v for k, v in r.counters.items()})
            if r.dispatches:
                args["qpu_dispatches"] = len(r.dispatches)
            lane_tid = tid + 1 if r.tags.get("lane") == "qpu" else tid
            ev.append({"name": r.name, "cat": r.path().split("/")[0], "ph": "X", "pid": pid, "tid": lane_tid,
                       "ts": (r.start - self.t0) / 1e3, "dur": (r.end - r.start) / 1e3, "args": args})
        return ev

    def write_trace(self, path, extra_events: list[dict] | None = None) -> Path:
        path = Path(path)
        doc = {"traceEvents": self.trace_events() + list(extra_events or []), "displayTimeUnit": "ms",
               "otherData": {"source": "pimoe.profile"}}
        path.write_text(json.dumps(doc))
        return path


def region_paths(regions: list[Region], where=None):
    """(region, "forward/layer/experts"-style path) for every finished region, in order; where(region)
    -> bool keeps only some top-level regions' subtrees."""
    keep = subtree_filter(regions, where)
    paths: dict[int, str] = {}
    for r in regions:
        if not keep[r.index] or not r.end:
            continue
        path = r.name if r.parent < 0 else paths[r.parent] + "/" + r.name
        paths[r.index] = path
        yield r, path


def subtree_filter(regions: list[Region], where) -> list[bool]:
    """keep[i]: region i lies in the subtree of a top-level region where(region) selects (all if where is None)."""
    if where is None:
        return [True] * len(regions)
    keep = [False] * len(regions)
    for r in regions:
        keep[r.index] = keep[r.parent] if r.parent >= 0 else bool(where(r))
    return keep


def within(regions: list[Region], r: Region, where) -> bool:
    """Whether region r or one of the regions enclosing it satisfies where(region)."""
    while r is not None:
        if where(r):
            return True
        r = regions[r.parent] if r.parent >= 0 else None
    return False


class NullProfiler:
    """The profiler while profiling is off: every hook is a no-op."""

    enabled = False

    def region(self, name, bytes=0, flops=0, **tags):
        return NO_REGION

    def count(self, **counters) -> None:
        pass

    def qpu_dispatch(self, counters, kernel="kernel", timing_args=None, **tags) -> None:
        pass


NULL = NullProfiler()
_current = NULL


def current():
    """The active profiler (NULL when off)."""
    return _current


def enabled() -> bool:
    return _current.enabled


def region(name: str, bytes: int = 0, flops: int = 0, **tags):
    return _current.region(name, bytes, flops, **tags)


def count(**counters) -> None:
    _current.count(**counters)


def qpu_dispatch(counters, kernel: str = "kernel", timing_args: dict | None = None, **tags) -> None:
    _current.qpu_dispatch(counters, kernel, timing_args=timing_args, **tags)


@contextmanager
def activate(prof: Profiler):
    """Make `prof` the active profiler inside the with-block (nests; restores the previous one)."""
    global _current
    previous = _current
    _current = prof
    try:
        yield prof
    finally:
        _current = previous


# -- weight-byte / FLOP arithmetic shared by the model's hooks -------------------------------------------

def matrix_bytes(*tensors) -> int:
    """Stored bytes of whole weight tensors (QTensor.nbytes; None entries skipped)."""
    return sum(int(t.nbytes) for t in tensors if t is not None)


def matrix_flops(n_tokens: int, *tensors) -> int:
    """2 x MACs of applying 2-D weight tensors [out, in] to n_tokens activation rows."""
    total = 0
    for t in tensors:
        if t is not None:
            n = 1
            for s in t.shape:
                n *= int(s)
            total += n
    return 2 * n_tokens * total


def expert_bytes(expert_tensors, expert_ids) -> int:
    """Weight bytes a layer's routed experts read: each distinct chosen expert's rows of every tensor in
    expert_tensors (gate, up, down: QTensor [E, rows, cols]) once, however many tokens chose it."""
    n_distinct = len(np.unique(np.asarray(expert_ids)))
    return n_distinct * sum(int(t.nbytes) // int(t.shape[0]) for t in expert_tensors)


def expert_flops(expert_tensors, expert_ids) -> int:
    """2 x MACs of the routed experts: every (token, chosen expert) pair applies each tensor's matrix."""
    pairs = int(np.asarray(expert_ids).size)
    per_expert = 0
    for t in expert_tensors:
        n = 1
        for s in t.shape[1:]:
            n *= int(s)
        per_expert += n
    return 2 * pairs * per_expert


# -- measuring the profiler's own cost ------------------------------------------------------------------

def overhead(n: int = 20000, repeat: int = 5) -> dict[str, float]:
    """Seconds per `with prof.region(...)` hook (the form the model uses, prof = current() once per
    forward): off (NullProfiler) and on (a Profiler), net of an empty loop; also the module-level
    `with profile.region(...)` form while off.

    Each figure is the fastest of `repeat` batches of n // repeat hooks (timeit's rule): on a shared
    machine one preemption inside a single long batch inflated the mean to 114 us per region (a CI run
    on 2026-11-28), while the hook itself costs a few us; the minimum is the cost, the rest is noise."""
    per = max(1, n // repeat)

    def fastest(body) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            body()
            best = min(best, (time.perf_counter() - t0) / per)
        return best

    def empty_loop():
        for _ in range(per):
            pass

    def hooks(prof):
        def body():
            for _ in range(per):
                with prof.region("x", bytes=1):
                    pass
        return body

    def module_hooks():
        for _ in range(per):
            with region("x", bytes=1):
                pass

    empty = fastest(empty_loop)
    off = fastest(hooks(NULL))
    module_off = fastest(module_hooks)
    on = fastest(hooks(Profiler()))
    return {"empty_loop_s": empty, "off_s": off - empty, "module_off_s": module_off - empty, "on_s": on - empty}
