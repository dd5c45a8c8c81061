"""CPU-only vs QPU offload on the same model and prompt: tokens/s, GB/s, where the time goes, Pi 4 prediction.

    result = compare(path, backends=("cpu", "qpu"), n_prompt=16, n_gen=8, reps=3)
    print(table_text(result)); print(regions_text(result))

For each backend, in one process, one after the other:
  * load the model, warm up (a 2-token prompt and a decode step: numba compiles, pages fault in; untimed);
  * `reps` repetitions of: ppN = one forward over the N prompt tokens from an empty cache, then tgM = M
    greedy decode steps (one single-token forward + sampling each) continuing from that prompt;
  * every step runs under a pimoe.profile.Profiler, so each region (embedding, attention, router,
    experts [upload/dispatch/compute/readback on the qpu backend], shared_expert, output_head, sampling)
    has its time, weight bytes read (only the experts the router chose), FLOPs and QPU counts.
The first backend is the reference; the others decode the reference's greedy tokens (teacher forcing, so
each step sees the same inputs) and their own argmax at every step must equal the reference's token; the
record lists any step where it does not, with the reference's margin there and the logit difference.

t/s is mean ± sd over the repetitions (llama-bench: pp t/s = N / time of the prompt forward; tg t/s =
M / time of the M decode steps). GB/s = weight bytes read per decode token (profiler counters) x tg t/s.

Pi 4 prediction, per region and per decode token (always labelled predicted; pimoe.prediction): a region
that ran QPU dispatches gets the QPU timing model's time for their emulator counts (pimoe.qpu.timing);
every other region gets the Pi 4 CPU model's time for its weight bytes and FLOPs (pimoe.cpumodel, 4 threads).

compare() returns a Comparison of BackendRun records (typed; to_record() writes their JSON form).

Scaling (--shape runs with a few of the real model's layers): a token's time and bytes are
    fixed (embedding, output head, sampling, forward's own time) + per-layer part x (L_full / L_run),
the per-layer part being everything under forward/layer; a layer of a synthetic model of the real shape
costs what a real layer costs (same tensor shapes and types; routing of random weights is close to
uniform over experts, real routers are skewed, which changes only cache reuse across tokens).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numba
import numpy as np
from tqdm import tqdm

import pimoe
from pimoe import prediction, profile
from pimoe.errors import PimoeError
from pimoe.gguf_file import GGUFFile
from pimoe.records import backend_label, environment, model_info
from pimoe.synth import PRESETS, make_model

SHAPES = tuple(PRESETS)      # every real-shape preset of `pimoe make-model`


# -- models ----------------------------------------------------------------------------------------------

def shape_model_path(shape: str, layers: int, qtype: str, cache_dir: Path, progress: bool = True) -> Path:
    """A synthetic GGUF of a real model's shape with `layers` layers, written once into cache_dir."""
    if shape not in SHAPES:
        raise PimoeError(f"unknown --shape '{shape}' (choose {', '.join(SHAPES)})")
    if layers < 1:
        raise PimoeError(f"--layers must be at least 1, got {layers}")
    path = Path(cache_dir) / f"{shape}-{layers}L-{qtype.upper()}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            make_model(tmp, preset=shape, qtype=qtype, n_layers=layers, progress=progress)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


def full_layers(shape: str | None, model) -> int:
    """Layers of the full model a --shape run stands for (else the model's own)."""
    if shape:
        return PRESETS[shape].n_layers
    return model.config.n_layers


# -- what a comparison returns ---------------------------------------------------------------------------
# Typed in memory; each has to_json(), the form the compare record stores (unchanged key for key).

@dataclass(frozen=True)
class Mismatch:
    """One decode step where another backend's argmax differs from the reference's token."""

    step: int
    reference: int                # the reference's token
    other: int                    # the other backend's argmax
    margin: float                 # reference's logit of its own token minus its logit of `other`
    logits_max_abs_diff: float    # max |logit difference| of the two backends at this step
    near_tie: bool                # margin <= logits_max_abs_diff


@dataclass(frozen=True)
class Agreement:
    """Step by step, on identical inputs: another backend's tokens and logits against the reference's."""

    same_tokens: bool
    n_tokens: int
    n_agree: int
    decisive_mismatches: int
    first_difference: int | None
    mismatches: list[Mismatch]
    logits_max_abs_diff: float
    logits_max_rel_diff: float
    logits_median_max_abs_diff: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scaled:
    """Per decode token, scaled from the layers run to the full model's layers (see module doc)."""

    factor: float
    layers_run: int
    layers_full: int
    seconds_per_token: float
    tps: float | None
    bytes_per_token: float
    predicted_seconds_per_token: float | None = None
    predicted_tps: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        if self.predicted_seconds_per_token is None:      # the record has no predicted keys then
            del d["predicted_seconds_per_token"], d["predicted_tps"]
        return d


@dataclass
class BackendRun:
    """One backend's timed run. tg_regions / pp_regions: per step, {region path: the profiler summary's
    row} (pimoe.profile: calls, seconds, self_seconds, bytes, flops, qpu.* ...); tg_predicted: Pi 4
    seconds per decode step by region path (pimoe.prediction), None when there is nothing to predict from."""

    backend: str
    load_s: float
    warmup_s: float
    pp_s: list[float]                 # seconds of each repetition's prompt forward
    tg_s: list[float]                 # seconds of each repetition's n_gen decode steps
    n_prompt: int
    n_gen: int
    tokens: list[int]                 # this backend's own greedy tokens (first repetition)
    logits: np.ndarray                # [n_gen + 1, vocab], first repetition (not in the record)
    tg_regions: dict[str, dict]
    pp_regions: dict[str, dict]
    tg_predicted: dict[str, float] | None
    expert_usage: np.ndarray          # [layers, experts] routing counts over all repetitions
    notes: list[str]
    driver: str | None                # the qpu backend's driver kind ("emu", "hw", ...)
    threads: int
    profiler: profile.Profiler = field(repr=False)    # the live profile (not in the record)
    model: object = field(repr=False)                 # the closed model (not in the record)
    agreement: Agreement | None = None                # set on every run but the reference
    teacher_forced: bool = False
    scaled: Scaled | None = None
    offload: dict | None = None                       # offload_figures() for a run with QPU dispatches
    name: str = ""                                    # unique in a comparison: the backend, or "qpu@hw" etc.
    pi4_measured: dict | None = None                  # a device run's Pi 4 figures next to its twin's prediction

    def __post_init__(self):
        self.name = self.name or self.backend

    @property
    def device(self) -> bool:
        """A run on a device route ("qpu@hw", "qpu@virtual"), whose prediction is its emulator twin's."""
        return "@" in self.name

    @property
    def label(self) -> str:
        """The backend as the tables print it (backend_label)."""
        return backend_label(self.backend, self.driver)

    @property
    def bytes_per_token(self) -> float:
        """Weight bytes read per decode token (the run's layers only)."""
        return sum(v.get("bytes", 0) for v in self.tg_regions.values())

    def to_json(self) -> dict:
        d = {"name": self.name, "backend": self.backend, "load_s": self.load_s, "warmup_s": self.warmup_s, "pp_s": self.pp_s,
             "tg_s": self.tg_s, "n_prompt": self.n_prompt, "n_gen": self.n_gen, "tokens": self.tokens,
             "tg_regions": self.tg_regions, "pp_regions": self.pp_regions, "tg_predicted": self.tg_predicted,
             "expert_usage": np.asarray(self.expert_usage).tolist(), "notes": self.notes, "driver": self.driver,
             "threads": self.threads}
        if self.agreement is not None:
            d.update(agreement=self.agreement.to_json(), teacher_forced=self.teacher_forced)
        if self.scaled is not None:
            d["scaled"] = self.scaled.to_json()
        if self.offload is not None:
            d["offload"] = self.offload
        if self.pi4_measured is not None:
            d["pi4_measured"] = self.pi4_measured
        return d


@dataclass
class Comparison:
    """What compare() returns: the runs in order, the first being the reference."""

    model: dict                       # pimoe.records.model_info of the model run
    shape: str | None
    layers_run: int
    layers_full: int
    prompt: list[int]
    runs: list[BackendRun]

    @property
    def reference(self) -> BackendRun:
        return self.runs[0]


@dataclass(frozen=True)
class RegionCell:
    """One backend's figures for one region path, per decode token. None: not measured / not applicable."""

    ms: float
    self_ms: float
    bytes: float | None = None
    GBps: float | None = None
    flops: float | None = None
    qpu_instructions: float | None = None
    qpu_tmu_read_bytes: float | None = None
    qpu_dispatches: float | None = None
    pi4_predicted_ms: float | None = None

    # record column suffix of each field (the record's flat form: f"{backend}_{suffix}")
    COLUMNS = (("ms", "ms"), ("self_ms", "self_ms"), ("bytes", "bytes"), ("GBps", "GBps"), ("flops", "flops"),
               ("qpu_instructions", "qpu.instructions"), ("qpu_tmu_read_bytes", "qpu.tmu_read_bytes"),
               ("qpu_dispatches", "qpu_dispatches"), ("pi4_predicted_ms", "pi4_predicted_ms"))


@dataclass(frozen=True)
class RegionRow:
    """One region path (e.g. "tg/forward/layer/experts") and each backend's cell there."""

    region: str
    cells: dict[str, RegionCell]      # run name -> cell (absent where the run has no such region)

    def to_json(self) -> dict:
        """The record's flat form: {"region": p, "cpu_ms": ..., "qpu_pi4_predicted_ms": ..., ...} (keyed by run
        name: "qpu@hw_ms" for a device run); a field that is None is left out (bytes with its GBps are present when the region read bytes)."""
        d: dict = {"region": self.region}
        for b, c in self.cells.items():
            for name, col in RegionCell.COLUMNS:
                v = getattr(c, name)
                if v is not None or (name == "GBps" and c.bytes is not None):
                    d[f"{b}_{col}"] = v
        return d


# -- running one backend ---------------------------------------------------------------------------------

def _greedy(logits_row: np.ndarray) -> int:
    with profile.region("sampling"):
        return int(np.argmax(logits_row))


def run_backend(path, backend: str, prompt: list[int], n_gen: int, reps: int, backend_opts=None,
                bar=None, force_tokens: list[int] | None = None, name: str | None = None) -> BackendRun:
    """Load `path` on `backend`, warm up, time reps x (ppN, tgM) under the profiler.

    force_tokens (the reference backend's greedy tokens): decode steps are fed these instead of this
    backend's own choices (teacher forcing), so every step's logits are computed from the same inputs
    as the reference's and can be compared one to one; `tokens` still holds this backend's own argmax."""
    backend_opts = backend_opts or {}
    t0 = time.perf_counter()
    model = pimoe.load_model(path, backend=backend, n_ctx=len(prompt) + n_gen + 8, **backend_opts)
    load_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        model.logits(prompt[:2])
        model.forward(prompt[:1])
        model.reset()
        warm_s = time.perf_counter() - t0
        pp_s, tg_s, tokens, logits_trace = [], [], None, None
        prof = profile.Profiler(f"pimoe {backend}")
        usage = np.zeros((model.config.n_layers, model.config.n_experts), np.int64)
        with profile.activate(prof):
            for rep in range(reps):
                model.reset()
                with profile.region("pp", rep=rep, tokens=len(prompt)):
                    t1 = time.perf_counter()
                    logits = model.forward(prompt)[-1]
                    pp_s.append(time.perf_counter() - t1)
                    tok = _greedy(logits)
                out, lg = [tok], [logits]
                fed = [force_tokens[0] if force_tokens else tok]
                t1 = time.perf_counter()
                for i in range(n_gen):
                    with profile.region("tg", rep=rep):
                        logits = model.forward([fed[-1]])[-1]
                        out.append(_greedy(logits))
                    fed.append(force_tokens[i + 1] if force_tokens else out[-1])
                    lg.append(logits)
                tg_s.append(time.perf_counter() - t1)
                for step in model.routing_history:
                    for layer, r in enumerate(step):
                        np.add.at(usage[layer], np.asarray(r.expert_ids).ravel(), 1)
                if tokens is None:
                    tokens, logits_trace = out, np.stack(lg)
                if bar is not None:
                    bar.update(1)
        steps = reps * n_gen
        tg_summary = _per_step(prof.summary(lambda r: r.name == "tg"), steps)
        pp_summary = _per_step(prof.summary(lambda r: r.name == "pp"), reps)
        pred = prediction.predict_regions(prof, lambda r: r.name == "tg", steps)
        notes = []
        driver = getattr(model.backend, "driver_kind", None)
        if hasattr(model.backend, "driver_kind") and not any(r.dispatches for r in prof.regions):
            # a QPU backend that did not report its dispatches to the profiler: a CPU-based prediction
            # of its experts would be wrong, so there is none
            pred = None
            notes.append("the QPU backend reported no dispatches to the profiler: no Pi 4 prediction")
        elif pred is None and driver == "hw":
            notes.append("measured on the GPU: hardware dispatches have no emulator counts to predict from "
                         "(compare --qpu hw predicts from the same backend's run over the emulator)")
        return BackendRun(backend=backend, load_s=load_s, warmup_s=warm_s, pp_s=pp_s, tg_s=tg_s,
                          n_prompt=len(prompt), n_gen=n_gen, tokens=tokens, logits=logits_trace,
                          tg_regions=tg_summary, pp_regions=pp_summary, tg_predicted=pred, expert_usage=usage,
                          notes=notes, driver=driver, threads=numba.get_num_threads(), profiler=prof, model=model,
                          name=name or backend)
    finally:
        model.close()


def _per_step(summary: dict, steps: int) -> dict:
    """Per-step averages of a profiler summary (drops the per-dispatch lists)."""
    out = {}
    for path, s in summary.items():
        row = {k: (v / steps if isinstance(v, (int, float)) and k not in ("depth",) else v)
               for k, v in s.items() if k != "dispatches"}
        row["calls"] = s["calls"] / steps
        out[path] = row
    return out


# -- the comparison --------------------------------------------------------------------------------------

def default_prompt(model_vocab: int, n: int, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(1, min(model_vocab, 1000), size=n)]


DEVICE_ROUTES = ("hw", "virtual")
QPU_BACKENDS = ("qpu", "hybrid")      # the backends that take a qpu= driver


def with_device(backends, route: str) -> list[str]:
    """`compare --qpu hw|virtual`: each QPU backend twice, "qpu" over the emulator (the Pi 4 prediction from
    its counts) and "qpu@hw" on the device route right after it (the measurement); the rest unchanged."""
    out = []
    for b in backends:
        out.append(b)
        if b in QPU_BACKENDS and route in DEVICE_ROUTES:
            out.append(f"{b}@{route}")
    return out


def compare(path, backends=("cpu", "qpu"), n_prompt: int = 16, n_gen: int = 8, reps: int = 3,
            shape: str | None = None, backend_opts: dict | None = None, progress: bool = True) -> Comparison:
    """Run every backend on the same prompt; return the comparison (see module doc). backend_opts:
    {backend: {option: value}}. A backend "qpu@hw" / "qpu@virtual" (with_device) is the qpu backend with
    qpu="hw" / "virtual"; it gets pi4_measured, its Pi 4 figures next to the prediction of the run named
    "qpu" (which then runs over the emulator unless backend_opts say otherwise)."""
    if n_prompt < 1 or n_gen < 1 or reps < 1:
        raise PimoeError(f"need at least 1 prompt token, 1 generated token and 1 repetition "
                         f"(got -p {n_prompt}, -n {n_gen}, -r {reps})")
    cfg = GGUFFile(path).config
    prompt = default_prompt(cfg.vocab_size, n_prompt)
    runs: list[BackendRun] = []
    opts_all = backend_opts or {}
    devices = {b.partition("@")[0] for b in backends if "@" in b}
    with tqdm(total=reps * len(backends), desc="compare", disable=not progress, leave=False) as bar:
        for b in backends:
            bar.set_description(f"compare: {b}")
            force = runs[0].tokens if runs else None     # later backends decode the reference's tokens
            backend, _, route = b.partition("@")
            opts = dict(opts_all.get(backend) or {})
            if route:
                if route not in DEVICE_ROUTES or backend not in QPU_BACKENDS:
                    raise PimoeError(f"backend '{b}': a device run is one of "
                                     f"{', '.join(q + '@' + d for q in QPU_BACKENDS for d in DEVICE_ROUTES)}")
                opts["qpu"] = route
            elif backend in devices:
                opts.setdefault("qpu", "emu")          # the twin that predicts the device run
            runs.append(run_backend(path, backend, prompt, n_gen, reps, opts, bar=bar, force_tokens=force,
                                    name=b))
    ref = runs[0]
    for r in runs[1:]:
        r.agreement = agreement(ref.tokens, ref.logits, r.tokens, r.logits)
        r.teacher_forced = True
    L_run = ref.model.config.n_layers
    L_full = full_layers(shape, ref.model)
    for r in runs:
        r.scaled = scale_to_full(r.tg_regions, r.tg_predicted, L_run, L_full)
    for r in runs[1:]:
        if not r.device:                               # a device run's prediction is its twin's
            r.offload = offload_figures(r, ref, L_run, L_full)
    by_name = {r.name: r for r in runs}
    for r in runs:
        if r.device and r.backend in by_name:
            r.pi4_measured = measured_vs_predicted(r, by_name[r.backend])
    return Comparison(model=model_info(ref.model), shape=shape, layers_run=L_run, layers_full=L_full,
                      prompt=prompt, runs=runs)


STAND_IN_LABEL = ("virtual V3D STAND-IN, not a measurement: the emulator's predicted Pi 4 times of the device's "
                  "own jobs (their counts through the same timing model), where a Pi would time its GPU")
PREDICTED_LABEL = ("Pi 4 PREDICTED: the same backend run over the emulator, its dispatches' counts through the QPU "
                   "timing model (pimoe.qpu.timing), the other regions through the CPU model (pimoe.cpumodel)")
HW_DECODE_LABEL = "measured on this Pi: wall time of a decode step (mean over the repetitions' steps)"
HW_QPU_LABEL = ("measured on this Pi's GPU: per dispatch, host wall time from writing its uniforms and SUBMIT_CSD "
                "to WAIT_BO's return, summed over a token's dispatches")


def dispatch_figures(run: BackendRun) -> dict:
    """Per decode token (the tg steps): QPU dispatches, their predicted Pi 4 seconds (None when one has no
    emulator counts: hardware) and their submit-to-wait host seconds (qpu_kernels.expert_ffn's tag; None
    when a dispatch lacks it)."""
    prof = run.profiler
    steps = len(run.tg_s) * run.n_gen
    keep = profile.subtree_filter(prof.regions, lambda r: r.name == "tg")
    ds = [d for r in prof.regions if keep[r.index] and r.dispatches for d in r.dispatches]
    pred = [prediction.predict_qpu_seconds(d) for d in ds]
    wall = [d.get("submit_to_wait_s") if isinstance(d, dict) else None for d in ds]
    return {"dispatches_per_token": len(ds) / steps,
            "predicted_seconds_per_token": sum(pred) / steps if ds and None not in pred else None,
            "submit_to_wait_seconds_per_token": sum(wall) / steps if ds and None not in wall else None}


def _predicted_with() -> str:
    p = prediction._TIMING_PARAMS
    if p is None:
        return "the timing model's own parameters (pimoe.qpu.timing.PI4; no calibrated profile in use)"
    return (f"calibrated parameters (dispatch overhead {p.dispatch_overhead_s * 1e6:.1f} us, read "
            f"{p.read_bandwidth / 1e9:.2f} GB/s, write {p.write_bandwidth / 1e9:.2f} GB/s)")


def _pair(predicted_s, measured_s, ratio: bool = True, **extra) -> dict:
    return dict(extra, predicted_seconds_per_token=predicted_s, measured_seconds_per_token=measured_s,
                predicted_tps=1.0 / predicted_s if predicted_s else None,
                measured_tps=1.0 / measured_s if measured_s else None,
                measured_to_predicted=measured_s / predicted_s if ratio and measured_s and predicted_s else None)


def measured_vs_predicted(run: BackendRun, twin: BackendRun) -> dict:
    """A device run's Pi 4 figures per decode token next to its emulator twin's prediction, with the ratio
    measured / predicted (of times: above 1 the Pi is slower than predicted).

    decode: on "hw" the measured decode step (this process runs on the Pi); on "virtual" the stand-in is the
    device run's own prediction (its jobs' counts from the virtual device). qpu: the token's dispatches; on
    "hw" their submit-to-wait wall time, which is what the timing model's per-dispatch figure (kernel +
    dispatch_overhead_s) predicts for a backend that waits at once (qpu); the hybrid works on its CPU lane
    between submit and wait, so there it spans that lane too and has no ratio. On "virtual" the stand-in is
    the predicted time of the device's jobs, equal to the twin's when both routes ran the same dispatches."""
    hw = run.driver == "hw"
    steps = len(run.tg_s) * run.n_gen
    twin_d, run_d = dispatch_figures(twin), dispatch_figures(run)
    pred_tok = (twin.tg_predicted or {}).get("tg")
    if hw:
        meas_tok = sum(run.tg_s) / steps
        meas_qpu = run_d["submit_to_wait_seconds_per_token"]
    else:
        meas_tok = (run.tg_predicted or {}).get("tg")
        meas_qpu = run_d["predicted_seconds_per_token"]
    tps = [run.n_gen / t for t in run.tg_s]
    out = {"route": run.driver, "predicted_by": twin.name, "predicted_with": _predicted_with(),
           "predicted_label": PREDICTED_LABEL, "measured_label": HW_DECODE_LABEL if hw else STAND_IN_LABEL,
           "decode": _pair(pred_tok, meas_tok, measured_tps_sd=_mean_sd(tps)[1] if hw else None)}
    overlapped = hw and run.backend != "qpu"
    out["qpu"] = _pair(twin_d["predicted_seconds_per_token"], meas_qpu, ratio=not overlapped,
                       dispatches_per_token=run_d["dispatches_per_token"],
                       predicted_dispatches_per_token=twin_d["dispatches_per_token"],
                       measured_label=(HW_QPU_LABEL + (" (the hybrid's CPU lane runs between submit and wait: an "
                                                        "upper bound of the GPU's time, no ratio)" if overlapped else ""))
                       if hw else STAND_IN_LABEL)
    del out["qpu"]["predicted_tps"], out["qpu"]["measured_tps"]
    if twin.scaled is not None and twin.scaled.factor != 1 and run.scaled is not None:
        sc = run.scaled
        out["decode_scaled"] = _pair(twin.scaled.predicted_seconds_per_token,
                                     sc.seconds_per_token if hw else sc.predicted_seconds_per_token,
                                     layers_full=sc.layers_full)
    return out


def offload_figures(run: BackendRun, ref: BackendRun, L_run: int, L_full: int) -> dict | None:
    """For a run with QPU dispatches and a reference with a prediction: its predicted Pi 4 decode (scaled to
    the full model) under every DRAM-sharing scenario (pimoe.dram; only concurrent regions depend on it) and
    as a ratio to the reference's; QPU dispatches per token; and the dispatch overhead at which it stops
    paying (predicted time = the reference's, the planned splits kept), found by bisection over the fixed
    cost the timing model charges each dispatch. None when there is nothing to predict."""
    from pimoe import dram
    from pimoe.qpu import timing

    prof = run.profiler
    ref_s = ref.scaled.predicted_seconds_per_token if ref.scaled else None
    if not run.tg_predicted or not ref_s or prof is None or not any(r.dispatches for r in prof.regions):
        return None
    steps = len(run.tg_s) * run.n_gen
    tg = lambda reg: reg.name == "tg"   # noqa: E731

    def seconds(share=None, overhead=None) -> float:
        pred = prediction.predict_regions(prof, tg, steps, share=share, dispatch_overhead=overhead)
        return scale_to_full({}, pred, L_run, L_full).predicted_seconds_per_token

    by_share = {}
    for name in dram.SCENARIO_NAMES:
        sec = seconds(name)
        by_share[name] = {"predicted_seconds_per_token": sec, "predicted_tps": 1.0 / sec, "x_reference": ref_s / sec}
    keep = profile.subtree_filter(prof.regions, tg)
    with_disp = [r for r in prof.regions if keep[r.index] and r.dispatches]
    disp_run = sum(len(r.dispatches) for r in with_disp)
    layer_disp = sum(len(r.dispatches) for r in with_disp if profile.within(prof.regions, r, lambda q: q.name == "layer"))
    per_token = (disp_run + (L_full / L_run - 1) * layer_disp) / steps
    model_overhead = (prediction._TIMING_PARAMS or timing.PI4).dispatch_overhead_s
    lo, hi = 0.0, 1e-3
    if seconds("central", lo) >= ref_s:
        break_even = 0.0                                  # does not pay even with free dispatches
    else:
        while seconds("central", hi) < ref_s and hi < 1.0:
            hi *= 2
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if seconds("central", mid) < ref_s else (lo, mid)
        break_even = lo
    return {"reference": ref.backend, "by_share": by_share, "dispatches_per_token": per_token,
            "dispatch_overhead_s": model_overhead, "break_even_dispatch_overhead_s": break_even,
            "break_even_share": "central"}


def offload_text(result: "Comparison") -> str:
    """One line per offload run: predicted Pi 4 decode x the reference under each DRAM-sharing scenario, and
    the dispatch overhead at which it stops paying."""
    lines = []
    for r in result.runs[1:]:
        o = r.offload
        if not o:
            continue
        ratios = ", ".join(f"{k} {v['x_reference']:.2f}x ({v['predicted_tps']:.2f} t/s)" for k, v in o["by_share"].items())
        lines.append(f"{r.backend} vs {o['reference']}, Pi 4 predicted decode (DRAM sharing {ratios}); "
                     f"{o['dispatches_per_token']:.0f} QPU dispatches per token; "
                     + (f"offload stops paying at a dispatch overhead of "
                        f"{o['break_even_dispatch_overhead_s'] * 1e6:.0f} us"
                        if o["break_even_dispatch_overhead_s"] > 0 else "no faster even with free dispatches")
                     + f" (timing model: {o['dispatch_overhead_s'] * 1e6:.0f} us, DRAM sharing central)")
    return "\n".join(lines)


def agreement(ref_tokens, ref_logits: np.ndarray, tokens, logits: np.ndarray) -> Agreement:
    """Step by step, on identical inputs (the other backend was teacher-forced on the reference's tokens):
    does its argmax equal the reference's token, and how far apart are the logits. At a disagreement,
    `margin` = ref's logit of its own token minus ref's logit of other's token: a flip is a near-tie when
    the margin is below the logit difference the two paths show anyway (e.g. f32 vs Q8_0-quantized
    activations)."""
    n = min(len(ref_logits), len(logits))
    diff = np.abs(ref_logits[:n] - logits[:n])          # [steps, vocab]
    scale = float(np.abs(ref_logits[:n]).max()) or 1.0
    mismatches = []
    for i, (x, y) in enumerate(zip(ref_tokens, tokens)):
        if x != y:
            row = ref_logits[i]
            margin, step_diff = float(row[x] - row[y]), float(diff[i].max())
            # A near-tie: the two candidates are closer in ref's logits than the two paths' logits are
            # apart anyway, so either pick is consistent with both computations being right.
            mismatches.append(Mismatch(step=i, reference=int(x), other=int(y), margin=margin,
                                       logits_max_abs_diff=step_diff, near_tie=margin <= step_diff))
    return Agreement(same_tokens=not mismatches, n_tokens=len(ref_tokens),
                     n_agree=len(ref_tokens) - len(mismatches),
                     decisive_mismatches=sum(not m.near_tie for m in mismatches),
                     first_difference=mismatches[0].step if mismatches else None, mismatches=mismatches,
                     logits_max_abs_diff=float(diff.max()), logits_max_rel_diff=float(diff.max()) / scale,
                     logits_median_max_abs_diff=float(np.median(diff.max(axis=1))))


def _layer_part(path: str) -> bool:
    return "/layer" in path


def scale_to_full(tg_regions: dict[str, dict], tg_predicted: dict[str, float] | None, L_run: int,
                  L_full: int) -> Scaled:
    """Per decode token: measured seconds, weight bytes and predicted seconds, scaled to L_full layers."""
    f = L_full / L_run
    step = tg_regions.get("tg", {})
    layer = sum(v["seconds"] for p, v in tg_regions.items() if p == "tg/forward/layer")
    bytes_all = sum(v.get("bytes", 0) for v in tg_regions.values())
    bytes_layer = sum(v.get("bytes", 0) for p, v in tg_regions.items() if _layer_part(p))
    seconds = step.get("seconds", 0.0) + (f - 1) * layer
    p_seconds = p_tps = None
    if tg_predicted:
        p_seconds = tg_predicted.get("tg", 0.0) + (f - 1) * tg_predicted.get("tg/forward/layer", 0.0)
        p_tps = 1.0 / p_seconds if p_seconds else None
    return Scaled(factor=f, layers_run=L_run, layers_full=L_full, seconds_per_token=seconds,
                  tps=1.0 / seconds if seconds else None, bytes_per_token=bytes_all + (f - 1) * bytes_layer,
                  predicted_seconds_per_token=p_seconds, predicted_tps=p_tps)


# -- output ----------------------------------------------------------------------------------------------

def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summary_rows(result: Comparison) -> list[dict]:
    """The llama-bench-like table as rows (also the record's CSV): dicts, the form the record stores and
    table_text() reads back."""
    m = result.model
    rows = []
    for r in result.runs:
        bytes_tok = r.bytes_per_token
        pp = [r.n_prompt / s for s in r.pp_s]
        tg = [r.n_gen / s for s in r.tg_s]
        base = {"model": m["file"], "size_bytes": m["file_bytes"], "params": m["params"],
                "backend": r.label, "threads": r.threads}
        for test, tps in ((f"pp{r.n_prompt}", pp), (f"tg{r.n_gen}", tg)):
            mean, sd = _mean_sd(tps)
            row = dict(base, test=test, source="measured", tps_mean=mean, tps_sd=sd)
            if test.startswith("tg"):
                row["bytes_per_token"] = bytes_tok
                row["GBps"] = bytes_tok * mean / 1e9
            rows.append(row)
        pred = r.tg_predicted if not r.device else None     # a device run: its pi4_measured row instead
        if pred and pred.get("tg"):
            ptps = 1.0 / pred["tg"]
            rows.append(dict(base, backend=r.backend + " (Pi 4)", threads=prediction.PI4_CPU_THREADS,
                             test=f"tg{r.n_gen}", source="predicted", tps_mean=ptps, tps_sd=None,
                             bytes_per_token=bytes_tok, GBps=bytes_tok * ptps / 1e9))
        sc = r.scaled
        if sc.factor != 1:
            base = dict(base, **_full_model(m, sc))
            rows.append(dict(base, backend=r.label, test=f"tg{r.n_gen} x{sc.layers_full}L",
                             source="measured, scaled", tps_mean=sc.tps, tps_sd=None,
                             bytes_per_token=sc.bytes_per_token,
                             GBps=sc.bytes_per_token * sc.tps / 1e9 if sc.tps else None))
            if sc.predicted_tps and not r.device:
                rows.append(dict(base, backend=r.backend + " (Pi 4)", threads=prediction.PI4_CPU_THREADS,
                                 test=f"tg{r.n_gen} x{sc.layers_full}L", source="predicted, scaled",
                                 tps_mean=sc.predicted_tps, tps_sd=None, bytes_per_token=sc.bytes_per_token,
                                 GBps=sc.bytes_per_token * sc.predicted_tps / 1e9))
        rows += _pi4_measured_rows(r, m)
    return rows


def _full_model(m: dict, sc: Scaled) -> dict:
    """The full model a scaled run stands for: its name, size and parameters (the blk.* tensors x factor,
    the rest once)."""
    f = sc.factor
    return {"model": f"{m['file']} x{sc.layers_full}L",
            "size_bytes": m["file_bytes"] + (f - 1) * m.get("layer_weight_bytes", 0),
            "params": m["params"] + (f - 1) * m.get("layer_params", 0)}


def _ms(seconds: float | None) -> float | None:
    return seconds * 1e3 if seconds is not None else None


def pi4_label(run: BackendRun) -> str:
    """A device run's Pi 4 row as the tables print it."""
    return f"{run.backend} (Pi 4, hw)" if run.driver == "hw" else f"{run.backend} (Pi 4, virtual stand-in)"


def _pi4_measured_rows(r: BackendRun, m: dict) -> list[dict]:
    """A device run's Pi 4 decode rows (the run's layers; scaled to the full model when it ran fewer) with
    its twin's prediction and the ratio of times (pi4_measured)."""
    pm = r.pi4_measured
    if not pm or not pm["decode"]["measured_tps"]:
        return []
    hw = pm["route"] == "hw"
    q = pm["qpu"]
    common = {"backend": pi4_label(r), "threads": r.threads if hw else prediction.PI4_CPU_THREADS,
              "source": "measured on a Pi 4 (--qpu hw)" if hw else "virtual stand-in: emulator-predicted, not measured",
              "qpu_dispatches_per_token": q["dispatches_per_token"], "qpu_ms_per_token": _ms(q["measured_seconds_per_token"]),
              "qpu_predicted_ms_per_token": _ms(q["predicted_seconds_per_token"]),
              "qpu_measured_to_predicted": q["measured_to_predicted"]}
    rows = []
    for key in ("decode", "decode_scaled"):
        d = pm.get(key)
        if not d or not d["measured_tps"]:
            continue
        if key == "decode":
            model = {"model": m["file"], "size_bytes": m["file_bytes"], "params": m["params"]}
            test, sd, nbytes = f"tg{r.n_gen}", d.get("measured_tps_sd"), r.bytes_per_token
        else:
            model = _full_model(m, r.scaled)
            test, sd, nbytes = f"tg{r.n_gen} x{r.scaled.layers_full}L", None, r.scaled.bytes_per_token
        rows.append(dict(common, **model, test=test, tps_mean=d["measured_tps"], tps_sd=sd,
                         bytes_per_token=nbytes, GBps=nbytes * d["measured_tps"] / 1e9,
                         predicted_tps=d["predicted_tps"], measured_to_predicted=d["measured_to_predicted"]))
    return rows


def measured_text(result: "Comparison") -> str:
    """The device runs' Pi 4 figures next to their twins' predictions (compare --qpu hw|virtual); "" if none."""
    runs = [r for r in result.runs if r.pi4_measured]
    if not runs:
        return ""
    out = []
    for r in runs:
        pm = r.pi4_measured
        hw = pm["route"] == "hw"
        q = pm["qpu"]
        out.append(f"{r.backend}, Pi 4 per decode token. Predicted: the {pm['predicted_by']} run over the emulator, "
                   f"its QPU dispatches' counts through the timing model with {pm['predicted_with']}. Next to it: "
                   + ("measured with --qpu hw on this Pi." if hw else
                      "the virtual device's STAND-IN (--qpu virtual: the emulator's predicted times of the "
                      "device's own jobs, NOT a measurement)."))
        col = "measured (hw)" if hw else "virtual stand-in"
        out += [f"| backend | per decode token | Pi 4 predicted | {col} | {col} / predicted (time) |",
                "|---|---|---:|---:|---:|"]
        f = lambda v, fmt: format(v, fmt) if v is not None else "—"   # noqa: E731
        for key, what in (("decode", f"decode t/s, tg{r.n_gen} ({result.layers_run} layers run)"),
                          ("decode_scaled", f"decode t/s, x{result.layers_full}L")):
            d = pm.get(key)
            if d:
                out.append(f"| {r.backend} | {what} | {f(d['predicted_tps'], '.2f')} | {f(d['measured_tps'], '.2f')} "
                           f"| {f(d['measured_to_predicted'], '.3f')} |")
        out.append(f"| {r.backend} | QPU dispatches, ms ({q['predicted_dispatches_per_token']:.0f} predicted, "
                   f"{q['dispatches_per_token']:.0f} run) | {f(_ms(q['predicted_seconds_per_token']), '.4f')} | "
                   f"{f(_ms(q['measured_seconds_per_token']), '.4f')} | {f(q['measured_to_predicted'], '.3f')} |")
        out.append(f"  measured: {pm['measured_label']}" if not hw else
                   f"  measured: decode: {pm['measured_label']}; QPU: {q['measured_label']}")
    return "\n".join(out)


def table_text(rows: list[dict]) -> str:
    out = ["| model | size | params | backend | threads | test | t/s | GB/s | source |",
           "|---|---:|---:|---|---:|---|---:|---:|---|"]
    for r in rows:
        size = r.get("size_bytes")
        size = (f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB") if size else ""
        params = f"{r['params'] / 1e9:.2f} B" if r["params"] >= 1e9 else f"{r['params'] / 1e6:.2f} M"
        tps = f"{r['tps_mean']:.2f}" + (f" ± {r['tps_sd']:.2f}" if r.get("tps_sd") is not None else "")
        gb = f"{r['GBps']:.3f}" if r.get("GBps") is not None else ""
        out.append(f"| {r['model']} | {size} | {params} | {r['backend']} | {r['threads']} | {r['test']} | "
                   f"{tps} | {gb} | {r['source']} |")
    return "\n".join(out)


def _region_cell(v: dict, predicted_s: float | None) -> RegionCell:
    nbytes = v.get("bytes") or None
    return RegionCell(ms=v["seconds"] * 1e3, self_ms=v["self_seconds"] * 1e3, bytes=nbytes,
                      GBps=nbytes / v["seconds"] / 1e9 if nbytes and v["seconds"] else None,
                      flops=v.get("flops") or None, qpu_instructions=v.get("qpu.instructions") or None,
                      qpu_tmu_read_bytes=v.get("qpu.tmu_read_bytes") or None,
                      qpu_dispatches=v.get("qpu_dispatches") or None,
                      pi4_predicted_ms=predicted_s * 1e3 if predicted_s is not None else None)


def region_rows(result: Comparison) -> list[RegionRow]:
    """Per decode token, per region path: each backend's measured ms, bytes, GB/s and predicted Pi 4 ms."""
    order: dict[str, int] = {}
    for r in result.runs:
        for p in r.tg_regions:
            order.setdefault(p, len(order))
    # tree order: a path sorts by the first appearance of each of its prefixes (children under parents)
    paths = sorted(order, key=lambda p: tuple(order["/".join(p.split("/")[:i + 1])]
                                              for i in range(p.count("/") + 1)))
    rows = []
    for p in paths:
        cells = {}
        for r in result.runs:
            v = r.tg_regions.get(p)
            if v is not None:
                cells[r.name] = _region_cell(v, (r.tg_predicted or {}).get(p))
        rows.append(RegionRow(p, cells))
    return rows


def regions_text(result: Comparison) -> str:
    runs = result.runs
    rows = region_rows(result)
    qpu = [r.name for r in runs
           if any(row.cells.get(r.name) and row.cells[r.name].qpu_instructions for row in rows)]
    head = ("| region |" + "".join(f" {r.label} ms | Pi 4 pred. ms |" for r in runs) +
            " weight bytes | GB/s (" + runs[0].backend + ") |" +
            "".join(f" {b}: QPU instr | {b}: TMU read bytes |" for b in qpu))
    out = [head, "|---" * (2 + 2 * len(runs) + 1 + 2 * len(qpu)) + "|"]
    for row in rows:
        p = row.region
        name = ". " * p.count("/") + p.split("/")[-1]
        line = f"| {name} |"
        for r in runs:
            c = row.cells.get(r.name)
            line += f" {c.ms:.3f} |" if c is not None else " |"
            line += f" {c.pi4_predicted_ms:.3f} |" if c is not None and c.pi4_predicted_ms is not None else " |"
        nb = next((row.cells[r.name].bytes for r in runs
                   if row.cells.get(r.name) and row.cells[r.name].bytes), None)
        c0 = row.cells.get(runs[0].name)
        gb = c0.GBps if c0 is not None else None
        line += (f" {nb:,.0f} |" if nb else " |") + (f" {gb:.2f} |" if gb else " |")
        for b in qpu:
            c = row.cells.get(b)
            ins, tmu = (c.qpu_instructions, c.qpu_tmu_read_bytes) if c is not None else (None, None)
            line += (f" {ins:,.0f} |" if ins else " |") + (f" {tmu:,.0f} |" if tmu else " |")
        out.append(line)
    return "\n".join(out)


def to_record(result: Comparison, extra: dict | None = None) -> tuple[dict, list[dict]]:
    """(JSON-able record, table rows) of a compare() result."""
    rows = summary_rows(result)
    rec = {"kind": "compare", "environment": environment(model=result.reference.model,
                                                         threads=numba.get_num_threads()),
           "model": result.model, "shape": result.shape, "layers_run": result.layers_run,
           "layers_full": result.layers_full, "prompt_tokens": result.prompt,
           "runs": [r.to_json() for r in result.runs],
           "regions": [row.to_json() for row in region_rows(result)], "profiler_overhead": profile.overhead(5000),
           "pi4_ceilings": prediction.pi4_ceilings(),
           "notes": {"predicted": "Pi 4 figures come from pimoe.prediction (QPU: pimoe.qpu.timing from emulator "
                                  "counts; CPU: pimoe.cpumodel from bytes and FLOPs); they are predictions, not "
                                  "measurements",
                     "measured": "measured on this machine; the qpu backend's QPU work ran in the emulator "
                                 "unless backend says hw",
                     "scaling": "per-layer regions x layers_full/layers_run + the rest (embedding, output "
                                "head, sampling)"}}
    if extra:
        rec.update(extra)
    return rec, rows
