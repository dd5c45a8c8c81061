"""The hybrid backend: the CPU computes some of a layer's selected experts while the QPU dispatch for the others
is in flight, split so both finish together (pimoe.coexec), the two sharing DRAM (pimoe.dram).

It composes the cpu and qpu backends (INTERFACES.md contract 5): the CPU part is CPUBackend.expert_ffn on the
CPU's slots, the QPU part QPUBackend.expert_ffn on the others, and the result is their sum. A decode token's k
experts are split by slot (the CPU takes the last slots in router order: the smallest router weights); a
prompt's tokens are split by rows (the CPU takes the last tokens, the QPU the first, each lane all of their
experts: "a prompt's tiles").

    load_model(path, backend="hybrid", qpu="emu", cpu_experts="auto", share="central")
    cpu_experts   "auto": planned from the lanes' rates (below); or an int 0..k (0 = all on the QPU, k = all on
                  the CPU: the cpu and qpu backends' results exactly)
    share         the DRAM-sharing scenario the planner assumes (pimoe.dram: pessimistic|central|optimistic)
    overlap       True (default): the QPU part runs in a worker thread while the CPU part runs; False: one
                  after the other (same numbers, for checking)

Rates ("auto"): the CPU's per-expert seconds are predicted by pimoe.cpumodel from the expert's bytes and FLOPs;
the QPU's start from coexec.qpu_prior_seconds and are replaced after every call by the timing model's
prediction of the dispatches that really ran (emulator counts), or on a Pi (driver "hw") by the measured
seconds of both lanes.

Placement: every expert is in both places here (the GGUF file's pages for the CPU, the QPU copy): the
placement "all" of pimoe.placement. One-copy placements are planned and priced by `pimoe bench placement`.

Profiling: the two lanes are regions "cpu" and "qpu" (tag lane=) under a region "coexec" tagged
concurrent=True, which the Pi 4 prediction combines with pimoe.dram.concurrent instead of adding. The QPU
thread's dispatches are recorded by the main thread after the join (the profiler is not thread-safe).
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import numpy as np

from pimoe import coexec, profile
from pimoe.backends.base import Backend
from pimoe.backends.cpu import CPUBackend
from pimoe.errors import PimoeError


class _Deferred:
    """Collects a runner's profiler calls made in the worker thread, to replay them in the main thread."""

    def __init__(self):
        self.dispatches: list[tuple[tuple, dict]] = []

    def region(self, name, **tags):
        return nullcontext()

    def on_dispatch(self, *args, **kwargs):
        self.dispatches.append((args, kwargs))


class HybridBackend(Backend):
    name = "hybrid"

    def __init__(self, gguf_file, config, qpu: str = "auto", threads: int = 8, cpu_experts="auto",
                 share: str = "central", overlap: bool = True, memory_limit: int | None = None,
                 progress: bool = True, **opts):
        super().__init__(gguf_file, config, **opts)
        from pimoe import dram
        from pimoe.backends.qpu import QPUBackend
        from qpu_kernels.expert_ffn import QPUMatrices

        k = config.n_experts_used
        if cpu_experts != "auto":
            try:
                cpu_experts = int(cpu_experts)
            except (TypeError, ValueError):
                raise PimoeError(f"hybrid backend: cpu_experts={cpu_experts!r}; 'auto' or 0..{k}") from None
            if not 0 <= cpu_experts <= k:
                raise PimoeError(f"hybrid backend: cpu_experts={cpu_experts}; the model routes to {k} experts "
                                 f"per token, so 0..{k}")
        self.cpu_experts = cpu_experts
        self.share = dram.scenario(share)
        self.overlap = bool(overlap)
        self.cpu = CPUBackend(gguf_file, config)
        self.cpu.experts = self.experts
        self.qpu = QPUBackend(gguf_file, config, qpu=qpu, threads=threads, memory_limit=memory_limit,
                              progress=progress)
        self.qpu.experts = self.experts
        self.driver_kind = self.qpu.driver_kind
        lw = self.experts[0]
        E = config.n_experts
        tensors = (lw.gate, lw.up, lw.down)
        self.cpu_expert_bytes = sum(int(t.nbytes) // E for t in tensors)
        self.qpu_expert_bytes = sum(QPUMatrices.nbytes_for(t) // E for t in tensors)
        weights = sum(int(np.prod(t.shape[1:])) for t in tensors)
        self.expert_flops = 2 * weights
        self.rates = coexec.LaneRates(
            cpu_seconds=coexec.cpu_rate(self.cpu_expert_bytes, self.expert_flops),
            cpu_bytes=self.cpu_expert_bytes,
            qpu_seconds=coexec.qpu_prior_seconds(weights, self.qpu_expert_bytes),
            qpu_bytes=self.qpu_expert_bytes, qpu_fixed_seconds=2 * coexec.dispatch_overhead(),
            source="prior")
        self.stats = {"calls": 0, "cpu_experts": 0, "qpu_experts": 0, "cpu_tokens": 0, "qpu_tokens": 0}
        self.splits: list[int] = []       # n_cpu of every decode call (for checking and the records)

    # -- planning ----------------------------------------------------------------------------------------

    def planned_cpu_experts(self) -> int:
        if self.cpu_experts != "auto":
            return self.cpu_experts
        return int(coexec.plan_units(self.config.n_experts_used, self.rates, self.share).n_cpu)

    def _update_rates(self, n_cpu: int, n_qpu: int, cpu_wall: float, qpu_wall: float, counters, targs) -> None:
        from pimoe.qpu import timing

        if n_qpu <= 0:
            return
        if self.driver_kind == "hw":                 # on a Pi: measured seconds of both lanes
            cpu_s = cpu_wall / n_cpu if n_cpu else self.rates.cpu_seconds
            q = max(qpu_wall - self.rates.qpu_fixed_seconds, 0.0) / n_qpu
            self.rates = coexec.LaneRates(cpu_s, self.rates.cpu_bytes, q, self.rates.qpu_bytes,
                                          self.rates.qpu_fixed_seconds, source="measured")
            return
        if not counters or any(c is None for c in counters):
            return
        pred = sum(timing.predict(c, **(ta or {})).seconds for c, ta in zip(counters, targs))
        fixed = len(counters) * coexec.dispatch_overhead()
        q = max(pred - fixed, 0.0) / n_qpu
        self.rates = coexec.LaneRates(self.rates.cpu_seconds, self.rates.cpu_bytes, q, self.rates.qpu_bytes,
                                      fixed, source="predicted (timing model of the last dispatches)")

    # -- the seam ----------------------------------------------------------------------------------------

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        # x [T, hidden] f32; expert_ids [T, k]; expert_weights [T, k] -> [T, hidden]
        T, k = expert_ids.shape
        n_cpu = self.planned_cpu_experts()
        self.stats["calls"] += 1
        if n_cpu == 0:
            self.stats["qpu_experts"] += T * k
            return self.qpu.expert_ffn(layer, x, expert_ids, expert_weights)
        if n_cpu >= k:
            self.stats["cpu_experts"] += T * k
            return self.cpu.expert_ffn(layer, x, expert_ids, expert_weights)
        if T == 1:
            self.splits.append(n_cpu)
            cpu_slots = np.zeros(k, bool)
            cpu_slots[k - n_cpu:] = True          # the smallest router weights (router order is descending)
            c_args = (x, expert_ids[:, cpu_slots], expert_weights[:, cpu_slots])
            q_args = (x, expert_ids[:, ~cpu_slots], expert_weights[:, ~cpu_slots])
            self.stats["cpu_experts"] += n_cpu
            self.stats["qpu_experts"] += k - n_cpu
            n_c, n_q = n_cpu, k - n_cpu
        else:                                      # prompt: split the tokens (tiles), all experts of each
            t_cpu = int(round(T * n_cpu / k))
            t_cpu = min(max(t_cpu, 1), T - 1)
            q_args = (x[:T - t_cpu], expert_ids[:T - t_cpu], expert_weights[:T - t_cpu])
            c_args = (x[T - t_cpu:], expert_ids[T - t_cpu:], expert_weights[T - t_cpu:])
            self.stats["cpu_tokens"] += t_cpu
            self.stats["qpu_tokens"] += T - t_cpu
            n_c = len(np.unique(c_args[1]))
            n_q = len(np.unique(q_args[1]))
        y_c, y_q, walls, counters, targs = self._co_execute(layer, c_args, q_args)
        if T == 1:
            self._update_rates(n_c, n_q, walls[0], walls[1], counters, targs)
            return y_q + y_c
        return np.concatenate([y_q, y_c], axis=0)

    def _co_execute(self, layer, c_args, q_args):
        prof = profile.current()
        runner = self.qpu.runner
        deferred = _Deferred()
        saved = (runner.region, runner.on_dispatch)
        runner.region, runner.on_dispatch = deferred.region, deferred.on_dispatch
        result: dict = {}

        def qpu_part():
            result["start_ns"] = time.perf_counter_ns()
            t0 = time.perf_counter()
            try:
                result["y"] = self.qpu.expert_ffn(layer, *q_args)
                result["counters"] = list(runner.counters)
                result["targs"] = list(runner.timing_args)
            except BaseException as e:        # re-raised in the calling thread
                result["error"] = e
            result["wall"] = time.perf_counter() - t0
            result["end_ns"] = time.perf_counter_ns()

        c_bytes = profile.expert_bytes((self.experts[layer].gate, self.experts[layer].up,
                                        self.experts[layer].down), c_args[1]) if prof.enabled else 0
        c_flops = profile.expert_flops((self.experts[layer].gate, self.experts[layer].up,
                                        self.experts[layer].down), c_args[1]) if prof.enabled else 0
        try:
            with prof.region("coexec", layer=layer, concurrent=True):
                worker = None
                if self.overlap:
                    worker = threading.Thread(target=qpu_part, name="pimoe-qpu", daemon=True)
                    worker.start()
                else:
                    qpu_part()
                with prof.region("cpu", lane="cpu", bytes=c_bytes, flops=c_flops):
                    t0 = time.perf_counter()
                    y_c = self.cpu.expert_ffn(layer, *c_args)
                    cpu_wall = time.perf_counter() - t0
                if worker is not None:
                    worker.join()
                with prof.region("qpu", lane="qpu", thread_seconds=result.get("wall", 0.0)) as qr:
                    for args, kwargs in deferred.dispatches:
                        profile.qpu_dispatch(*args, **kwargs)
                if prof.enabled and "end_ns" in result:    # the measured span is the worker thread's
                    qr.start, qr.end = result["start_ns"], result["end_ns"]
        finally:
            runner.region, runner.on_dispatch = saved
        if "error" in result:
            raise result["error"]
        return y_c, result["y"], (cpu_wall, result["wall"]), result.get("counters"), result.get("targs")

    def close(self) -> None:
        self.qpu.close()
