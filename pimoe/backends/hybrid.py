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
    overlap       True (default): the QPU part runs while the CPU part runs; False: one after the other (same
                  numbers, for checking)
    dense         the dense GEMVs of a decode token (attention q/k/v/o projections, output head) split by rows
                  as well: "auto" (default; each group's CPU share planned like the experts'), "off" (all on
                  the CPU), or the CPU's fraction of every matrix's rows 0.0..1.0 (0.0: all on the QPU). The
                  QPU takes the first rows (a multiple of 16), the CPU the rest; q, k and v are one dispatch.
                  Prompts keep the dense GEMVs on the CPU.
    placement     where the experts live (pimoe.placement): "all" (default: both copies), "static",
                  "frequency" or "hot" (one copy; the last two need `usage` [L, E], routing counts of a
                  calibration prompt, e.g. a compare run's expert_usage; "hot" duplicates the most used
                  experts within `budget` bytes). The QPU copy holds only the experts the placement puts there.

Rates ("auto"): the CPU's per-expert seconds are predicted by pimoe.cpumodel from the expert's bytes and FLOPs;
the QPU's start from coexec.qpu_prior_seconds and are replaced after every call by the timing model's
prediction of the dispatches that really ran (emulator counts), or on a Pi (driver "hw") by the measured
seconds of both lanes.

Placement: with "all" every expert is in both places (the GGUF file's pages for the CPU, the QPU copy) and a
decode token's split is free. With a one-copy placement each selected expert runs where it lives
(placement.assign: duplicated ones fill the CPU's planned share), so the split follows the router; only the
QPU's experts are uploaded (qpu_memory's budget then counts one copy). What that costs against "all" is
measured by `pimoe bench placement` (a routing trace replayed under the rate model).

Overlap: a decode token's QPU part (for the experts two dispatches per layer, swiglu then down_sum,
see qpu_kernels.expert_ffn; one per dense group) is submitted with the driver's submit(); the CPU part
overlaps the first (two thirds of the expert weights), and Job.wait then runs the second; a prompt's QPU
part (several dispatches) runs in a worker thread.

Profiling: the two lanes are regions "cpu" and "qpu" (tag lane=) under a region "coexec" tagged
concurrent=True (covers_bytes / covers_flops: what it takes over from its parent), which the Pi 4 prediction
combines with pimoe.dram.concurrent instead of adding. The QPU dispatches are recorded by the main thread
after the wait or join (the profiler is not thread-safe).
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from pimoe import coexec, profile
from pimoe.quant import matmul as quant_matmul
from pimoe.backends.base import Backend
from pimoe.backends.cpu import CPUBackend
from pimoe.errors import PimoeError


@dataclass
class _DenseRows:
    """One dense matrix's split: the QPU holds rows [0, n_qpu) in its layout (buf), the CPU computes the rest."""
    name: str
    rows: int
    cols: int
    n_qpu: int
    spec: object = None
    buf: object = None


class _DenseSplit:
    """Which rows of each dense matrix (attention q/k/v/o per layer, output head) the QPU computes, planned at
    load from the lanes' predicted rates (coexec.plan_fraction per dispatch group) or given as the CPU's
    fraction; the QPU's rows are uploaded into its driver (upload) and run as one chained GEMV dispatch per
    group (submit)."""

    GROUPS = (("attn_q", "attn_k", "attn_v"), ("attn_output",))

    def __init__(self, gguf_file, config, dense, share):
        from qpu_kernels import qpu_layout as lay

        if dense not in ("auto", "off", None):
            try:
                dense = float(dense)
            except (TypeError, ValueError):
                raise PimoeError(f"hybrid backend: dense={dense!r}; 'auto', 'off' or the CPU's fraction of the "
                                 f"rows 0.0..1.0") from None
            if not 0.0 <= dense <= 1.0:
                raise PimoeError(f"hybrid backend: dense={dense}; the CPU's fraction of the rows is 0.0..1.0")
        self.mode = "off" if dense is None else dense
        self.rows: dict[str, _DenseRows] = {}
        self.plans: list[dict] = []
        tensors = getattr(gguf_file, "tensors", {})
        groups = [[f"blk.{i}.{n}.weight" for n in g] for i in range(config.n_layers) for g in self.GROUPS]
        head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
        groups.append([head])
        plan_cache: dict = {}
        for names in groups:
            mats = []
            for n in names:
                t = tensors.get(n)
                if t is None or len(t.shape) != 2:
                    continue
                try:
                    spec = lay.spec_for(t.qtype)
                except PimoeError:
                    continue                     # a type without a QPU layout stays on the CPU
                mats.append((n, t, spec))
            if not mats:
                continue
            if self.mode == "off":
                frac = 1.0
            elif self.mode == "auto":
                key = tuple((t.qtype, tuple(t.shape)) for _, t, _ in mats)
                if key not in plan_cache:
                    rates = coexec.LaneRates(
                        cpu_seconds=sum(coexec.cpu_rate(int(t.nbytes), 2 * t.shape[0] * t.shape[1]) for _, t, _ in mats),
                        cpu_bytes=sum(int(t.nbytes) for _, t, _ in mats),
                        qpu_seconds=sum(coexec.qpu_prior_seconds(t.shape[0] * t.shape[1], sp.nbytes(*t.shape))
                                        for _, t, sp in mats),
                        qpu_bytes=sum(sp.nbytes(*t.shape) for _, t, sp in mats),
                        qpu_fixed_seconds=coexec.dispatch_overhead(), source="prior")
                    plan_cache[key] = coexec.plan_fraction(rates, share).fraction
                frac = plan_cache[key]
            else:
                frac = self.mode
            for n, t, spec in mats:
                rows, cols = (int(v) for v in t.shape)
                n_qpu = rows if frac == 0.0 else min(rows, int(round(rows * (1.0 - frac) / lay.ROW_GROUP))
                                                     * lay.ROW_GROUP)
                self.rows[n] = _DenseRows(n, rows, cols, n_qpu, spec)
            self.plans.append({"matrices": [n for n, _, _ in mats], "cpu_fraction": frac})
        self.scratch = None

    @property
    def qpu_bytes(self) -> int:
        """The QPU's rows in its layout, plus the scratch of the largest group (and alignment slack)."""
        w = sum(r.spec.nbytes(r.n_qpu, r.cols) + 4096 for r in self.rows.values() if r.n_qpu)
        return w + self.scratch_bytes() if w else 0

    def scratch_bytes(self) -> int:
        from qpu_kernels import qpu_layout as lay
        from qpu_kernels.gemv_kernel import XStream

        need = 0
        for i in range(len(self.plans)):
            rs = [self.rows[n] for n in self.plans[i]["matrices"] if self.rows[n].n_qpu]
            need = max(need, sum(XStream(lay.padded_cols(r.cols), 1, True).words + 3 * lay.padded_rows(r.n_qpu)
                                 + 1024 for r in rs))
        return 4 * need + (256 << 10)

    def upload(self, qpu_backend) -> None:
        from qpu_kernels import qpu_layout as lay
        from qpu_kernels.gemv_kernel import Scratch

        drv = qpu_backend.drv
        tensors = getattr(qpu_backend.file, "tensors", {})
        for r in self.rows.values():
            if not r.n_qpu:
                continue
            t = tensors[r.name]
            r.buf = drv.alloc((lay.padded_rows(r.n_qpu), r.spec.row_words(r.cols)), dtype=np.uint32)
            lay.pack_matrix(t.data[:r.n_qpu], t.qtype, r.n_qpu, r.cols, out=r.buf)
        if any(r.n_qpu for r in self.rows.values()):
            self.scratch = Scratch(drv, self.scratch_bytes())

    def submit(self, qpu_backend, parts: list[_DenseRows], x: np.ndarray):
        """One dispatch of the parts' GEMVs (chained phases), submitted; returns finish() -> ([f32 [1, n_qpu]
        per part], counters)."""
        from qpu_kernels.gemv_kernel import execute_chain
        from qpu_kernels.gemv_quant import gemv_phase

        self.scratch.reset()
        phases, results = [], []
        for r in parts:
            phase, result = gemv_phase(self.scratch, (r.buf, r.spec, r.n_qpu, r.cols), x, qpu_backend.threads)
            phases.append(phase)
            results.append(result)
        job = execute_chain(qpu_backend.drv, qpu_backend.programs, phases, qpu_backend.threads, self.scratch,
                            wait=False)

        def finish():
            counters = job.wait()
            return [res() for res in results], counters

        return finish


class _Deferred:
    """Collects a runner's profiler calls made in the worker thread, to replay them in the main thread."""

    def __init__(self):
        self.dispatches: list[tuple[tuple, dict]] = []

    def region(self, name, **tags):
        return nullcontext()

    def on_dispatch(self, *args, **kwargs):
        self.dispatches.append((args, kwargs))


def _drain(finish) -> None:
    """The CPU lane raised while a submitted QPU dispatch runs: wait for it before anything reuses its
    scratch (the next call's scratch.reset() would rewrite tables a running job still reads). Its own
    error, if any, is dropped: the CPU lane's is the one to report."""
    try:
        finish()
    except Exception:  # noqa: BLE001
        pass

class HybridBackend(Backend):
    name = "hybrid"

    def __init__(self, gguf_file, config, qpu: str = "auto", threads: int = 8, cpu_experts="auto",
                 share: str = "central", overlap: bool = True, memory_limit: int | None = None,
                 progress: bool = True, dense="auto", placement: str = "all", usage=None, budget=None, **opts):
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
        lw = self.experts[0]
        E = config.n_experts
        tensors = (lw.gate, lw.up, lw.down)
        self.cpu_expert_bytes = sum(int(t.nbytes) // E for t in tensors)
        self.qpu_expert_bytes = sum(QPUMatrices.nbytes_for(t) // E for t in tensors)
        self.expert_flops = 2 * sum(int(np.prod(t.shape[1:])) for t in tensors)
        self.dense = _DenseSplit(gguf_file, config, dense, self.share)
        self.placement = self._make_placement(placement, usage, budget)
        on_qpu = None if self.placement.name == "all" else self.placement.qpu
        self.qpu = QPUBackend(gguf_file, config, qpu=qpu, threads=threads, memory_limit=memory_limit,
                              progress=progress, experts_on_qpu=on_qpu, extra_weight_bytes=self.dense.qpu_bytes)
        self.qpu.experts = self.experts
        self.driver_kind = self.qpu.driver_kind
        try:
            self.dense.upload(self.qpu)
        except Exception:
            self.qpu.close()
            raise
        self.rates = self._prior_rates(self.decode_dispatches())
        self.stats = {"calls": 0, "cpu_experts": 0, "qpu_experts": 0, "cpu_tokens": 0, "qpu_tokens": 0,
                      "dense_calls": 0, "dense_qpu_rows": 0, "dense_cpu_rows": 0}
        self.splits: list[int] = []       # n_cpu of every decode call (for checking and the records)

    def _make_placement(self, name, usage, budget):
        from pimoe import placement as pl

        cfg = self.config
        k = cfg.n_experts_used
        n_cpu = k if self.cpu_experts == "auto" else self.cpu_experts     # refined below for "auto"
        if self.cpu_experts == "auto":           # (before the QPU backend exists: one dispatch's overhead)
            n_cpu = coexec.plan_units(k, self._prior_rates(1), self.share).n_cpu
        return pl.make_placement(name, cfg.n_layers, cfg.n_experts, self.cpu_expert_bytes, self.qpu_expert_bytes,
                                 n_cpu / k if k else 0.0, budget=budget,
                                 usage=None if usage is None else np.asarray(usage))

    def _prior_rates(self, dispatches: int) -> coexec.LaneRates:
        """One expert's rates before any call: the CPU's from pimoe.cpumodel, the QPU's prior, and the
        overhead of `dispatches` QPU dispatches."""
        return coexec.LaneRates(
            cpu_seconds=coexec.cpu_rate(self.cpu_expert_bytes, self.expert_flops),
            cpu_bytes=self.cpu_expert_bytes,
            qpu_seconds=coexec.qpu_prior_seconds(self.expert_flops // 2, self.qpu_expert_bytes),
            qpu_bytes=self.qpu_expert_bytes,
            qpu_fixed_seconds=dispatches * coexec.dispatch_overhead(), source="prior")

    # -- planning ----------------------------------------------------------------------------------------

    def decode_dispatches(self) -> int:
        """QPU dispatches of one decode token's experts in one layer: 1 (gate+up+SiLU, a barrier, down + the
        weighted sum: ExpertFFN one_dispatch) or 2."""
        return 1 if getattr(self.qpu.runner, "one_dispatch", False) else 2

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
        one_copy = self.placement.name != "all"
        if one_copy:
            from pimoe.placement import assign

            cpu_ok, qpu_ok = self.placement.cpu[layer], self.placement.qpu[layer]
            mask = np.stack([assign(cpu_ok[ids], qpu_ok[ids], n_cpu) for ids in expert_ids])   # [T, k]
        else:
            mask = np.zeros((T, k), bool)
            mask[:, k - n_cpu:] = True            # the smallest router weights (router order is descending)
        if not mask.any():
            self.stats["qpu_experts"] += T * k
            return self.qpu.expert_ffn(layer, x, expert_ids, expert_weights)
        if mask.all():
            self.stats["cpu_experts"] += T * k
            return self.cpu.expert_ffn(layer, x, expert_ids, expert_weights)
        if T == 1:
            self.splits.append(int(mask.sum()))
            m = mask[0]
            c_args = (x, expert_ids[:, m], expert_weights[:, m])
            q_args = (x, expert_ids[:, ~m], expert_weights[:, ~m])
            n_c, n_q = int(m.sum()), int((~m).sum())
            self.stats["cpu_experts"] += n_c
            self.stats["qpu_experts"] += n_q
            y_c, y_q, walls, counters, targs = self._co_execute(layer, c_args, q_args, decode=True)
            self._update_rates(n_c, n_q, walls[0], walls[1], counters, targs)
            return y_q + y_c
        if one_copy:                               # prompt, one copy: each token's experts where they live
            y = np.zeros((T, x.shape[1]), np.float32)
            for pattern in np.unique(mask, axis=0):
                rows = np.nonzero((mask == pattern).all(axis=1))[0]
                xs, ids, ws = x[rows], expert_ids[rows], expert_weights[rows]
                if pattern.all():
                    y[rows] = self.cpu.expert_ffn(layer, xs, ids, ws)
                elif not pattern.any():
                    y[rows] = self.qpu.expert_ffn(layer, xs, ids, ws)
                else:
                    c_args = (xs, ids[:, pattern], ws[:, pattern])
                    q_args = (xs, ids[:, ~pattern], ws[:, ~pattern])
                    y_c, y_q = self._co_execute(layer, c_args, q_args)[:2]
                    y[rows] = y_q + y_c
            self.stats["cpu_experts"] += int(mask.sum())
            self.stats["qpu_experts"] += int((~mask).sum())
            return y
        # prompt, both copies: split the tokens (tiles), all experts of each
        t_cpu = int(round(T * n_cpu / k))
        t_cpu = min(max(t_cpu, 1), T - 1)
        q_args = (x[:T - t_cpu], expert_ids[:T - t_cpu], expert_weights[:T - t_cpu])
        c_args = (x[T - t_cpu:], expert_ids[T - t_cpu:], expert_weights[T - t_cpu:])
        self.stats["cpu_tokens"] += t_cpu
        self.stats["qpu_tokens"] += T - t_cpu
        y_c, y_q = self._co_execute(layer, c_args, q_args)[:2]
        return np.concatenate([y_q, y_c], axis=0)

    def _co_execute(self, layer, c_args, q_args, decode: bool = False):
        """The CPU part (c_args) while the QPU part (q_args) runs: decode (one token) through
        the driver's submit/wait, else in a worker thread. Returns (y_cpu, y_qpu, (cpu wall, qpu wall),
        counters, timing args)."""
        prof = profile.current()
        runner = self.qpu.runner
        deferred = _Deferred()
        saved = (runner.region, runner.on_dispatch)
        result: dict = {}
        runner.counters.clear()
        runner.timing_args.clear()

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

        tensors = (self.experts[layer].gate, self.experts[layer].up, self.experts[layer].down)
        c_bytes = profile.expert_bytes(tensors, c_args[1]) if prof.enabled else 0
        c_flops = profile.expert_flops(tensors, c_args[1]) if prof.enabled else 0
        q_bytes = profile.expert_bytes(tensors, q_args[1]) if prof.enabled else 0
        q_flops = profile.expert_flops(tensors, q_args[1]) if prof.enabled else 0
        finish = None
        try:
            # covers_*: the experts region's bytes and FLOPs both lanes take over (pimoe.prediction)
            with prof.region("coexec", layer=layer, concurrent=True, covers_bytes=c_bytes + q_bytes,
                             covers_flops=c_flops + q_flops):
                runner.region, runner.on_dispatch = deferred.region, deferred.on_dispatch
                worker = None
                if decode:
                    result["start_ns"] = time.perf_counter_ns()
                    gate, up, down = self.qpu.mats[layer]
                    finish = runner.submit_decode(gate, up, down, np.ascontiguousarray(q_args[0], np.float32),
                                                  q_args[1], q_args[2])
                    if not self.overlap:
                        result["y"] = finish()
                        result["end_ns"] = time.perf_counter_ns()
                elif self.overlap:
                    worker = threading.Thread(target=qpu_part, name="pimoe-qpu", daemon=True)
                    worker.start()
                else:
                    qpu_part()
                try:
                    with prof.region("cpu", lane="cpu", bytes=c_bytes, flops=c_flops):
                        t0 = time.perf_counter()
                        y_c = self.cpu.expert_ffn(layer, *c_args)
                        cpu_wall = time.perf_counter() - t0
                except BaseException:
                    if worker is not None:
                        worker.join()
                    if finish is not None and "y" not in result:
                        _drain(finish)
                    raise
                if worker is not None:
                    worker.join()
                if "y" not in result and finish is not None:
                    result["y"] = finish()                       # Job.wait: the dispatch's counters
                    result["end_ns"] = time.perf_counter_ns()
                if finish is not None:
                    result["counters"] = list(runner.counters)
                    result["targs"] = list(runner.timing_args)
                    result["wall"] = (result["end_ns"] - result["start_ns"]) * 1e-9
                with prof.region("qpu", lane="qpu", thread_seconds=result.get("wall", 0.0)) as qr:
                    for args, kwargs in deferred.dispatches:
                        profile.qpu_dispatch(*args, **kwargs)
                if prof.enabled and "end_ns" in result:    # the measured span is the QPU part's
                    qr.start, qr.end = result["start_ns"], result["end_ns"]
        finally:
            runner.region, runner.on_dispatch = saved
        if "error" in result:
            raise result["error"]
        return y_c, result["y"], (cpu_wall, result["wall"]), result.get("counters"), result.get("targs")

    # -- the dense GEMVs ---------------------------------------------------------------------------------

    def dense_matmul(self, ws, x):
        """Each w of ws split by rows: the QPU's first rows in one dispatch (submitted), the CPU's rest through
        quant.matmul meanwhile; decode only (a prompt's stay on the CPU)."""
        parts = [self.dense.rows.get(w.name) for w in ws]
        if x.shape[0] != 1 or not any(p is not None and p.n_qpu for p in parts):
            return super().dense_matmul(ws, x)
        self.stats["dense_calls"] += 1
        prof = profile.current()
        q_mats = [(w, p) for w, p in zip(ws, parts) if p is not None and p.n_qpu]
        cpu_views = [(w, w[p.n_qpu:] if p is not None and p.n_qpu else w) for w, p in zip(ws, parts)]
        cpu_views = [(w, v) for w, v in cpu_views if v.shape[0]]
        nbytes = sum(int(w.nbytes) for w in ws)
        flops = sum(2 * int(w.shape[0]) * int(w.shape[1]) for w in ws)
        c_bytes = sum(int(v.nbytes) for _, v in cpu_views)
        c_flops = sum(2 * int(v.shape[0]) * int(v.shape[1]) for _, v in cpu_views)
        y_q, y_c = {}, {}
        with prof.region("coexec", dense=ws[0].name, concurrent=True, covers_bytes=nbytes, covers_flops=flops):
            t_start = time.perf_counter_ns()
            finish = self.dense.submit(self.qpu, [p for _, p in q_mats], x)
            if not self.overlap:
                outs, counters = finish()
            try:
                with prof.region("cpu", lane="cpu", bytes=c_bytes, flops=c_flops):
                    for w, v in cpu_views:
                        y_c[w.name] = quant_matmul(v, x)
            except BaseException:
                if self.overlap:
                    _drain(finish)
                raise
            if self.overlap:
                outs, counters = finish()
            t_end = time.perf_counter_ns()
            with prof.region("qpu", lane="qpu") as qr:
                from qpu_kernels.gemv_kernel import timing_args

                # on hardware no counts ({}: nothing to predict from), but the dispatch is counted and timed
                # (submit to wait: it spans the CPU lane's rows, as qpu_kernels.expert_ffn's tag does here)
                profile.qpu_dispatch(counters if counters is not None else {}, kernel="dense_gemv",
                                     timing_args=timing_args(), submit_to_wait_s=(t_end - t_start) * 1e-9)
            if prof.enabled:
                qr.start, qr.end = t_start, t_end
        for (w, p), o in zip(q_mats, outs):
            y_q[w.name] = o
            self.stats["dense_qpu_rows"] += p.n_qpu
        out = []
        for w in ws:
            pieces = [y for y in (y_q.get(w.name), y_c.get(w.name)) if y is not None]
            self.stats["dense_cpu_rows"] += y_c[w.name].shape[1] if w.name in y_c else 0
            out.append(pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1))
        return out

    def close(self) -> None:
        self.qpu.close()
