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

Pi 4 prediction, per region and per decode token (always labelled predicted): a region that ran QPU
dispatches gets the timing model's time for their emulator counts (pimoe.qpu.timing); every other
region gets the timing model's Pi 4 CPU time for its weight bytes and FLOPs (4 threads).

Scaling (--shape runs with a few of the real model's layers): a token's time and bytes are
    fixed (embedding, output head, sampling, forward's own time) + per-layer part x (L_full / L_run),
the per-layer part being everything under forward/layer; a layer of a synthetic model of the real shape
costs what a real layer costs (same tensor shapes and types; routing of random weights is close to
uniform over experts, real routers are skewed, which changes only cache reuse across tokens).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pimoe import profile
from pimoe.errors import PimoeError

def _shapes() -> tuple[str, ...]:
    from pimoe.synth import PRESETS

    return tuple(PRESETS)


SHAPES = _shapes()      # every real-shape preset of `pimoe make-model`
PI4_CPU_THREADS = 4
TOP_REGIONS = ("embedding", "attention", "router", "experts", "shared_expert", "output_head", "sampling")


# -- models ----------------------------------------------------------------------------------------------

def shape_model_path(shape: str, layers: int, qtype: str, cache_dir: Path, progress: bool = True) -> Path:
    """A synthetic GGUF of a real model's shape with `layers` layers, written once into cache_dir."""
    from pimoe.synth import make_model

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
        from pimoe.synth import PRESETS

        return PRESETS[shape].n_layers
    return model.config.n_layers


# -- running one backend ---------------------------------------------------------------------------------

def _greedy(logits_row: np.ndarray) -> int:
    with profile.region("sampling"):
        return int(np.argmax(logits_row))


def run_backend(path, backend: str, prompt: list[int], n_gen: int, reps: int, backend_opts=None,
                bar=None, force_tokens: list[int] | None = None) -> dict:
    """Load `path` on `backend`, warm up, time reps x (ppN, tgM) under the profiler. Returns a dict with
    per-rep times, tokens, last logits, the profiler summaries per test and the per-region predictions.

    force_tokens (the reference backend's greedy tokens): decode steps are fed these instead of this
    backend's own choices (teacher forcing), so every step's logits are computed from the same inputs
    as the reference's and can be compared one to one; `tokens` still holds this backend's own argmax."""
    import pimoe

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
        pred = predict_regions(prof, lambda r: r.name == "tg", steps)
        notes = []
        if hasattr(model.backend, "driver_kind") and not any(r.dispatches for r in prof.regions):
            # a QPU backend that did not report its dispatches to the profiler: a CPU-based prediction
            # of its experts would be wrong, so there is none
            pred = None
            notes.append("measured on the GPU: hardware dispatches have no emulator counts to predict from"
                         if getattr(model.backend, "driver_kind", None) == "hw" else
                         "the QPU backend reported no dispatches to the profiler: no Pi 4 prediction")
        return {"backend": backend, "load_s": load_s, "warmup_s": warm_s, "pp_s": pp_s, "tg_s": tg_s,
                "n_prompt": len(prompt), "n_gen": n_gen, "tokens": tokens, "logits": logits_trace,
                "tg_regions": tg_summary, "pp_regions": pp_summary, "tg_predicted": pred,
                "expert_usage": usage, "profiler": prof, "notes": notes, "driver": getattr(model.backend, "driver_kind", None),
                "threads": _threads(), "model": model}
    finally:
        model.close()


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def _per_step(summary: dict, steps: int) -> dict:
    """Per-step averages of a profiler summary (drops the per-dispatch lists)."""
    out = {}
    for path, s in summary.items():
        row = {k: (v / steps if isinstance(v, (int, float)) and k not in ("depth",) else v)
               for k, v in s.items() if k != "dispatches"}
        row["calls"] = s["calls"] / steps
        out[path] = row
    return out


def predict_each(prof: profile.Profiler, where) -> list[float] | None:
    """Predicted Pi 4 seconds of every region (inclusive of its children; 0 outside `where`), or None
    without a timing model.

    A region whose subtree ran QPU dispatches: the timing model's time of its own dispatches (its
    weight bytes are the QPU's to read); any other region: Pi 4 CPU time of its own bytes and FLOPs."""
    if profile._timing() is None:
        return None
    regions = prof.regions
    keep = profile._subtree_filter(regions, where)
    has_qpu = [bool(r.dispatches) for r in regions]
    for r in reversed(regions):             # children come after their parent: propagate upwards
        if has_qpu[r.index] and r.parent >= 0:
            has_qpu[r.parent] = True
    own = [0.0] * len(regions)
    for r in regions:
        if not keep[r.index] or not r.end:
            continue
        if has_qpu[r.index]:
            parts = [profile.predict_qpu_seconds(d) for d in (r.dispatches or ())]
        elif r.counters.get("bytes") or r.counters.get("flops"):
            parts = [profile.predict_cpu_seconds(r.counters.get("bytes", 0), r.counters.get("flops", 0),
                                                 threads=PI4_CPU_THREADS)]
        else:
            parts = []
        if any(p is None for p in parts):
            return None      # no counts to predict from (hardware dispatch, or no CPU model): no prediction
        own[r.index] = sum(parts)
    incl = list(own)
    for r in reversed(regions):
        if keep[r.index] and r.parent >= 0:
            incl[r.parent] += incl[r.index]
    return incl


def predict_regions(prof: profile.Profiler, where, steps: int) -> dict | None:
    """Predicted Pi 4 seconds per step by region path (inclusive), or None (see predict_each)."""
    incl = predict_each(prof, where)
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
    keep = profile._subtree_filter(regions, where)
    start = [0.0] * len(regions)
    cursor_top = 0.0
    next_child = {}
    events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": process_name}}]
    for r in regions:
        if not keep[r.index] or not r.end:
            continue
        if r.parent < 0:
            start[r.index] = cursor_top
            cursor_top += incl[r.index]
        else:
            start[r.index] = next_child.get(r.parent, start[r.parent])
            next_child[r.parent] = start[r.index] + incl[r.index]
        args = dict(r.tags, predicted=True)
        events.append({"name": r.name, "cat": "predicted", "ph": "X", "pid": pid, "tid": 1,
                       "ts": start[r.index] * 1e6, "dur": incl[r.index] * 1e6, "args": args})
    return events


# -- the comparison --------------------------------------------------------------------------------------

def default_prompt(model_vocab: int, n: int, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(1, min(model_vocab, 1000), size=n)]


def compare(path, backends=("cpu", "qpu"), n_prompt: int = 16, n_gen: int = 8, reps: int = 3,
            shape: str | None = None, backend_opts: dict | None = None, progress: bool = True) -> dict:
    """Run every backend on the same prompt; return the comparison (see module doc). backend_opts:
    {backend: {option: value}}."""
    from tqdm import tqdm

    from pimoe.gguf_file import GGUFFile

    if n_prompt < 1 or n_gen < 1 or reps < 1:
        raise PimoeError(f"need at least 1 prompt token, 1 generated token and 1 repetition "
                         f"(got -p {n_prompt}, -n {n_gen}, -r {reps})")
    cfg = GGUFFile(path).config
    prompt = default_prompt(cfg.vocab_size, n_prompt)
    runs = []
    with tqdm(total=reps * len(backends), desc="compare", disable=not progress, leave=False) as bar:
        for b in backends:
            bar.set_description(f"compare: {b}")
            force = runs[0]["tokens"] if runs else None     # later backends decode the reference's tokens
            runs.append(run_backend(path, b, prompt, n_gen, reps, (backend_opts or {}).get(b), bar=bar,
                                    force_tokens=force))
    ref = runs[0]
    for r in runs[1:]:
        r["agreement"] = agreement(ref, r)
        r["teacher_forced"] = True
    model = ref["model"]
    L_run = model.config.n_layers
    L_full = full_layers(shape, model)
    for r in runs:
        r["scaled"] = scale_to_full(r, L_run, L_full)
    from pimoe.records import model_info

    return {"kind": "compare", "model": model_info(model), "shape": shape, "layers_run": L_run,
            "layers_full": L_full, "prompt": prompt, "runs": runs}


def agreement(ref: dict, other: dict) -> dict:
    """Step by step, on identical inputs (other was teacher-forced on ref's tokens): does other's argmax
    equal ref's token, and how far apart are the logits. At a disagreement, `margin` = ref's logit of its
    own token minus ref's logit of other's token: a flip is a near-tie when the margin is below the
    logit difference the two paths show anyway (e.g. f32 vs Q8_0-quantized activations)."""
    a, b = ref["tokens"], other["tokens"]
    n = min(len(ref["logits"]), len(other["logits"]))
    diff = np.abs(ref["logits"][:n] - other["logits"][:n])          # [steps, vocab]
    scale = float(np.abs(ref["logits"][:n]).max()) or 1.0
    mismatches = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            row = ref["logits"][i]
            margin, step_diff = float(row[x] - row[y]), float(diff[i].max())
            # A near-tie: the two candidates are closer in ref's logits than the two paths' logits are
            # apart anyway, so either pick is consistent with both computations being right.
            mismatches.append({"step": i, "reference": int(x), "other": int(y), "margin": margin,
                               "logits_max_abs_diff": step_diff, "near_tie": margin <= step_diff})
    return {"same_tokens": not mismatches, "n_tokens": len(a), "n_agree": len(a) - len(mismatches),
            "decisive_mismatches": sum(not m["near_tie"] for m in mismatches),
            "first_difference": mismatches[0]["step"] if mismatches else None, "mismatches": mismatches,
            "logits_max_abs_diff": float(diff.max()), "logits_max_rel_diff": float(diff.max()) / scale,
            "logits_median_max_abs_diff": float(np.median(diff.max(axis=1)))}


def _layer_part(path: str) -> bool:
    return "/layer" in path


def scale_to_full(run: dict, L_run: int, L_full: int) -> dict:
    """Per decode token: measured seconds, weight bytes and predicted seconds, scaled to L_full layers."""
    f = L_full / L_run

    regs = run["tg_regions"]
    step = regs.get("tg", {})
    layer = sum(v["seconds"] for p, v in regs.items() if p == "tg/forward/layer")
    bytes_all = sum(v.get("bytes", 0) for v in regs.values())
    bytes_layer = sum(v.get("bytes", 0) for p, v in regs.items() if _layer_part(p))
    seconds = step.get("seconds", 0.0) + (f - 1) * layer
    out = {"factor": f, "layers_run": L_run, "layers_full": L_full, "seconds_per_token": seconds,
           "tps": 1.0 / seconds if seconds else None,
           "bytes_per_token": bytes_all + (f - 1) * bytes_layer}
    pred = run.get("tg_predicted")
    if pred:
        p_seconds = pred.get("tg", 0.0) + (f - 1) * pred.get("tg/forward/layer", 0.0)
        out.update(predicted_seconds_per_token=p_seconds, predicted_tps=1.0 / p_seconds if p_seconds else None)
    return out


# -- output ----------------------------------------------------------------------------------------------

def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def backend_label(run: dict) -> str:
    b = run["backend"]
    if b == "qpu":
        return "qpu (hw)" if run.get("driver") == "hw" else "qpu (emulator)"
    return b


def summary_rows(result: dict) -> list[dict]:
    """The llama-bench-like table as rows (also the record's CSV)."""
    m = result["model"]
    rows = []
    for r in result["runs"]:
        bytes_tok = sum(v.get("bytes", 0) for v in r["tg_regions"].values())
        pp = [r["n_prompt"] / s for s in r["pp_s"]]
        tg = [r["n_gen"] / s for s in r["tg_s"]]
        base = {"model": m["file"], "size_bytes": m["file_bytes"], "params": m["params"],
                "backend": backend_label(r), "threads": r["threads"]}
        for test, tps in ((f"pp{r['n_prompt']}", pp), (f"tg{r['n_gen']}", tg)):
            mean, sd = _mean_sd(tps)
            row = dict(base, test=test, source="measured", tps_mean=mean, tps_sd=sd)
            if test.startswith("tg"):
                row["bytes_per_token"] = bytes_tok
                row["GBps"] = bytes_tok * mean / 1e9
            rows.append(row)
        pred = r.get("tg_predicted")
        if pred and pred.get("tg"):
            ptps = 1.0 / pred["tg"]
            rows.append(dict(base, backend=r["backend"] + " (Pi 4)", threads=PI4_CPU_THREADS,
                             test=f"tg{r['n_gen']}", source="predicted", tps_mean=ptps, tps_sd=None,
                             bytes_per_token=bytes_tok, GBps=bytes_tok * ptps / 1e9))
        sc = r["scaled"]
        if sc["factor"] != 1:
            # the full model's size and parameters: the blk.* tensors x factor, the rest once
            f = sc["factor"]
            full = dict(base, size_bytes=m["file_bytes"] + (f - 1) * m.get("layer_weight_bytes", 0),
                        params=m["params"] + (f - 1) * m.get("layer_params", 0))
            base = dict(full, model=f"{m['file']} x{sc['layers_full']}L")
            rows.append(dict(base, backend=backend_label(r), test=f"tg{r['n_gen']} x{sc['layers_full']}L",
                             source="measured, scaled", tps_mean=sc["tps"], tps_sd=None,
                             bytes_per_token=sc["bytes_per_token"],
                             GBps=sc["bytes_per_token"] * sc["tps"] / 1e9 if sc["tps"] else None))
            if sc.get("predicted_tps"):
                rows.append(dict(base, backend=r["backend"] + " (Pi 4)", threads=PI4_CPU_THREADS,
                                 test=f"tg{r['n_gen']} x{sc['layers_full']}L", source="predicted, scaled",
                                 tps_mean=sc["predicted_tps"], tps_sd=None,
                                 bytes_per_token=sc["bytes_per_token"],
                                 GBps=sc["bytes_per_token"] * sc["predicted_tps"] / 1e9))
    return rows


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


def region_rows(result: dict) -> list[dict]:
    """Per decode token, per region path: each backend's measured ms, bytes, GB/s and predicted Pi 4 ms."""
    order: dict[str, int] = {}
    for r in result["runs"]:
        for p in r["tg_regions"]:
            order.setdefault(p, len(order))
    # tree order: a path sorts by the first appearance of each of its prefixes (children under parents)
    paths = sorted(order, key=lambda p: tuple(order["/".join(p.split("/")[:i + 1])]
                                              for i in range(p.count("/") + 1)))
    rows = []
    for p in paths:
        row = {"region": p}
        for r in result["runs"]:
            v = r["tg_regions"].get(p)
            b = r["backend"]
            if v is None:
                continue
            row[f"{b}_ms"] = v["seconds"] * 1e3
            row[f"{b}_self_ms"] = v["self_seconds"] * 1e3
            if v.get("bytes"):
                row[f"{b}_bytes"] = v["bytes"]
                row[f"{b}_GBps"] = v["bytes"] / v["seconds"] / 1e9 if v["seconds"] else None
            if v.get("flops"):
                row[f"{b}_flops"] = v["flops"]
            for k in ("qpu.instructions", "qpu.tmu_read_bytes", "qpu_dispatches"):
                if v.get(k):
                    row[f"{b}_{k}"] = v[k]
            pred = r.get("tg_predicted")
            if pred and p in pred:
                row[f"{b}_pi4_predicted_ms"] = pred[p] * 1e3
        rows.append(row)
    return rows


def regions_text(result: dict) -> str:
    runs = result["runs"]
    rows = region_rows(result)
    qpu = [r["backend"] for r in runs if any(row.get(f"{r['backend']}_qpu.instructions") for row in rows)]
    head = ("| region |" + "".join(f" {backend_label(r)} ms | Pi 4 pred. ms |" for r in runs) +
            " weight bytes | GB/s (" + runs[0]["backend"] + ") |" +
            "".join(f" {b}: QPU instr | {b}: TMU read bytes |" for b in qpu))
    out = [head, "|---" * (2 + 2 * len(runs) + 1 + 2 * len(qpu)) + "|"]
    for row in rows:
        p = row["region"]
        name = ". " * p.count("/") + p.split("/")[-1]
        cells = []
        for r in runs:
            b = r["backend"]
            ms = row.get(f"{b}_ms")
            pm = row.get(f"{b}_pi4_predicted_ms")
            cells.append(f" {ms:.3f} |" if ms is not None else " |")
            cells.append(f" {pm:.3f} |" if pm is not None else " |")
        b0 = runs[0]["backend"]
        nb = next((row[f"{r['backend']}_bytes"] for r in runs if row.get(f"{r['backend']}_bytes")), None)
        gb = row.get(f"{b0}_GBps")
        line = f"| {name} |" + "".join(cells) + (f" {nb:,.0f} |" if nb else " |") + (f" {gb:.2f} |" if gb else " |")
        for b in qpu:
            ins, tmu = row.get(f"{b}_qpu.instructions"), row.get(f"{b}_qpu.tmu_read_bytes")
            line += (f" {ins:,.0f} |" if ins else " |") + (f" {tmu:,.0f} |" if tmu else " |")
        out.append(line)
    return "\n".join(out)


def to_record(result: dict, extra: dict | None = None) -> tuple[dict, list[dict]]:
    """(JSON-able record, table rows) of a compare() result."""
    from pimoe.records import environment

    runs = []
    for r in result["runs"]:
        runs.append({k: v for k, v in r.items() if k not in ("model", "profiler", "logits")}
                    | {"expert_usage": np.asarray(r["expert_usage"]).tolist()})
    rows = summary_rows(result)
    rec = {"kind": "compare", "environment": environment(model=result["runs"][0]["model"], threads=_threads()),
           "model": result["model"], "shape": result["shape"], "layers_run": result["layers_run"],
           "layers_full": result["layers_full"], "prompt_tokens": result["prompt"], "runs": runs,
           "regions": region_rows(result), "profiler_overhead": profile.overhead(5000),
           "pi4_ceilings": profile.pi4_ceilings(),
           "notes": {"predicted": "Pi 4 figures come from pimoe.qpu.timing (QPU: emulator counts; CPU: "
                                  "bytes and FLOPs); they are predictions, not measurements",
                     "measured": "measured on this machine; the qpu backend's QPU work ran in the emulator "
                                 "unless backend says hw",
                     "scaling": "per-layer regions x layers_full/layers_run + the rest (embedding, output "
                                "head, sampling)"}}
    if extra:
        rec.update(extra)
    return rec, rows
