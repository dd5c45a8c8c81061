"""Predicted Pi 4 decode with CPU and QPU co-executing (`pimoe bench hybrid`), against CPU-only and QPU offload.

    pimoe bench hybrid --shape olmoe-1b-7b --type Q4_K          # -> results/hybrid-bench-<time>.json

For a synthetic model of a real shape (`--layers` of its layers, scaled to the full depth as `pimoe compare`
does) it runs, under the profiler, with Pi 4 predictions from the timing models:

  cpu     the cpu backend (the CPU-only baseline; every region's Pi 4 time from its bytes and FLOPs),
  qpu     one decode token's k experts of a layer through the QPU expert kernels in the emulator (the qpu
          backend's one dispatch, checked against numpy): the QPU's per-expert rate, and the qpu
          backend's predicted decode (the cpu run with its experts replaced by these dispatches),
  hybrid  (--run-hybrid) the hybrid backend itself with the split planned for the central scenario: its
          own dispatches combined with its CPU part by pimoe.dram (a check of the rate model below);

and, from those rates, predicts per DRAM-sharing scenario (pessimistic / central / optimistic, pimoe.dram):

  hybrid-experts  a decode token's k experts split between the lanes (pimoe.coexec.plan_units), the rest
                  of the token as on the CPU: what the hybrid backend runs;
  hybrid-dense    also the dense matrices split by rows (q/k/v, attention output, output head: the QPU
                  takes a share of each GEMV while the CPU does the rest). The QPU's rate for every dense
                  matrix type and shape comes from the timing model's prediction of the GEMV kernel
                  (qpu_kernels.gemv_quant) run in the emulator on a slice of its rows, scaled by rows.
                  The hybrid backend runs this split (its dense= option; `pimoe compare` predicts from
                  its real dispatches); this row predicts it from the slices.

Every figure is a prediction (labelled so in the record), never a Pi measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

SLICE_ROWS = 256           # rows of a dense matrix emulated to get its QPU rate


def add_arguments(parser) -> None:
    parser.add_argument("--shape", "--preset", dest="shape", default="olmoe-1b-7b", choices=("olmoe-1b-7b", "qwen3-30b-a3b"),
                        help="real model shape of the synthetic model (default olmoe-1b-7b)")
    parser.add_argument("--type", default="Q4_K", help="weight type (default Q4_K)")
    parser.add_argument("--layers", type=int, default=1, help="layers run, scaled to the full model (default 1)")
    parser.add_argument("-n", "--n-gen", "--n-predict", dest="n_gen", type=int, default=2, help="decode tokens predicted (default 2)")
    parser.add_argument("-p", "--n-prompt", type=int, default=2, help="prompt tokens before them (default 2)")
    parser.add_argument("--run-hybrid", action="store_true",
                        help="also run the hybrid backend itself (slow in the emulator): a check of the rate model")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where --shape models are written once")
    parser.add_argument("--results", type=Path, default=Path("results"), help="directory for the record")
    parser.add_argument("--no-record", action="store_true", help="print only")


# -- rates -----------------------------------------------------------------------------------------------

def expert_rates(cpu_run, qpu_layer_seconds: float, backend_info: dict, n_layers: int, k: int,
                 dispatches: int = 1):
    """LaneRates of ONE expert of a decode token: the CPU's from the cpu run's predicted expert region, the
    QPU's from the predicted seconds of one layer's expert dispatches (k experts; `dispatches` per layer:
    two with ExpertFFN's default, one with its one_dispatch)."""
    from pimoe import coexec

    per_layer_cpu = cpu_run.tg_predicted["tg/forward/layer/experts"] / n_layers
    fixed = dispatches * coexec.dispatch_overhead()
    return coexec.LaneRates(cpu_seconds=per_layer_cpu / k, cpu_bytes=backend_info["cpu_expert_bytes"],
                            qpu_seconds=max(qpu_layer_seconds - fixed, 0.0) / k,
                            qpu_bytes=backend_info["qpu_expert_bytes"], qpu_fixed_seconds=fixed,
                            source="predicted: pimoe.cpumodel (cpu run) and pimoe.qpu.timing (expert dispatches)")


def dense_matrix_rates(qtensor, threads: int = 8, cache: dict | None = None) -> dict:
    """One dense matrix [rows, cols]: predicted CPU seconds alone (pimoe.cpumodel, its bytes and FLOPs) and
    QPU seconds alone (the GEMV kernel's timing-model prediction on SLICE_ROWS rows, scaled by rows) plus its
    bytes on each side."""
    from pimoe import coexec
    from pimoe.qpu import open_driver
    from qpu_kernels import qpu_layout as lay
    from qpu_kernels.gemv_quant import predicted, run

    rows, cols = (int(s) for s in qtensor.shape)
    key = (qtensor.qtype, cols)
    cache = {} if cache is None else cache
    if key not in cache:
        rs = SLICE_ROWS
        with open_driver("emu", data_area_size=64 << 20) as drv:
            err, counters, _ = run(drv, qtensor.qtype, rs, cols, tokens=1, threads=threads)
        if err > 1e-4:
            from pimoe.errors import PimoeError

            raise PimoeError(f"bench hybrid: the {qtensor.qtype.name} GEMV differs from numpy ({err:.1e})")
        p = predicted(counters)
        cache[key] = max(p.seconds - coexec.dispatch_overhead(), 0.0) / rs
    per_row = cache[key]
    spec = lay.spec_for(qtensor.qtype)
    return {"name": qtensor.name, "type": qtensor.qtype.name, "rows": rows, "cols": cols,
            "cpu_seconds": coexec.cpu_rate(int(qtensor.nbytes), 2 * rows * cols),
            "cpu_bytes": int(qtensor.nbytes), "qpu_seconds": per_row * rows,
            "qpu_bytes": spec.nbytes(rows, cols), "qpu_seconds_per_row": per_row}


def group_rates(mats: list[dict]):
    """LaneRates of a group of dense matrices split by the same fraction (one dispatch each)."""
    from pimoe import coexec

    return coexec.LaneRates(cpu_seconds=sum(m["cpu_seconds"] for m in mats),
                            cpu_bytes=sum(m["cpu_bytes"] for m in mats),
                            qpu_seconds=sum(m["qpu_seconds"] for m in mats),
                            qpu_bytes=sum(m["qpu_bytes"] for m in mats),
                            qpu_fixed_seconds=len(mats) * coexec.dispatch_overhead(),
                            source="predicted: pimoe.cpumodel and the GEMV kernel's timing model")


# -- predictions -----------------------------------------------------------------------------------------

def predict_token(cpu_run: dict, rates, dense: dict | None, k: int, L_run: int, L_full: int, share) -> dict:
    """Predicted seconds per decode token of the full model for the co-executed variants, from the cpu run's
    predicted regions (per step, L_run layers) with the experts (and dense GEMVs) replaced by their splits."""
    from pimoe import coexec

    pred = cpu_run.tg_predicted
    step, layer = pred["tg"], pred["tg/forward/layer"]
    fixed = step - layer                                  # embedding, output head, sampling, once
    per_layer = layer / L_run
    experts_cpu = pred["tg/forward/layer/experts"] / L_run
    ex = coexec.plan_units(k, rates, share)
    per_layer_h = per_layer - experts_cpu + ex.seconds
    out = {"cpu_seconds": fixed + L_full * per_layer,
           "hybrid_experts": {"seconds": fixed + L_full * per_layer_h, "split": ex.as_dict()}}
    if dense is not None:
        groups = {}
        layer_saving = 0.0
        for gname in ("qkv", "attn_output"):
            g = dense[gname]
            s = coexec.plan_fraction(group_rates(g), share)
            alone = sum(m["cpu_seconds"] for m in g)
            groups[gname] = s.as_dict() | {"cpu_alone_seconds": alone}
            layer_saving += alone - s.seconds
        attn = pred.get("tg/forward/layer/attention", 0.0) / L_run
        layer_saving = min(layer_saving, attn)            # never below zero attention time
        head = dense["output"]
        hs = coexec.plan_fraction(group_rates(head), share)
        head_alone = sum(m["cpu_seconds"] for m in head)
        groups["output"] = hs.as_dict() | {"cpu_alone_seconds": head_alone}
        head_cpu = pred.get("tg/forward/output_head", head_alone)
        head_saving = min(head_alone - hs.seconds, head_cpu)
        out["hybrid_dense"] = {"seconds": fixed - head_saving + L_full * (per_layer_h - layer_saving),
                               "splits": groups, "planned": True}
    return out


def _label(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(args) -> int:
    import os

    from pimoe import coexec, dram
    from pimoe import compare as cmp
    from pimoe.backends.base import ExpertWeights
    from pimoe.bench.kernels import bench_expert_layer
    from pimoe.gguf_file import GGUFFile
    from pimoe.records import environment, model_info, write_record
    from pimoe.synth import PRESETS
    from qpu_kernels.expert_ffn import QPUMatrices

    cache = args.cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pimoe" / "compare"
    path = cmp.shape_model_path(args.shape, args.layers, args.type, cache)
    f = GGUFFile(path)
    cfg = f.config
    L_run, L_full, k, E = cfg.n_layers, PRESETS[args.shape].n_layers, cfg.n_experts_used, cfg.n_experts
    prompt = cmp.default_prompt(cfg.vocab_size, args.n_prompt)
    print(f"bench hybrid: {args.shape} {args.type}, {L_run} layer(s) run, scaled to {L_full}", file=sys.stderr)
    cpu_run = cmp.run_backend(path, "cpu", prompt, args.n_gen, 1)
    cpu_run.scaled = cmp.scale_to_full(cpu_run.tg_regions, cpu_run.tg_predicted, L_run, L_full)
    lw = ExpertWeights(f, cfg, 0)
    info = {"cpu_expert_bytes": sum(int(t.nbytes) // E for t in (lw.gate, lw.up, lw.down)),
            "qpu_expert_bytes": sum(QPUMatrices.nbytes_for(t) // E for t in (lw.gate, lw.up, lw.down))}
    layer = bench_expert_layer(lw.gate.qtype, cfg.hidden, cfg.expert_ff, k, 1, 8)
    rates = expert_rates(cpu_run, layer["predicted"]["seconds"], info, L_run, k, layer.get("dispatches", 1))

    gemv_cache: dict = {}
    t = f.tensors

    def mats(names):
        return [dense_matrix_rates(t[n], cache=gemv_cache) for n in names if n in t]

    dense = {"qkv": mats(["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"]),
             "attn_output": mats(["blk.0.attn_output.weight"]),
             "output": mats(["output.weight"] if "output.weight" in t else ["token_embd.weight"])}
    scen = {name: predict_token(cpu_run, rates, dense, k, L_run, L_full, name) for name in dram.SCENARIO_NAMES}

    # the qpu backend's prediction: the cpu run with every layer's experts replaced by the k-expert dispatches
    pred = cpu_run.tg_predicted
    qpu_s = (pred["tg"] - pred["tg/forward/layer"]) + L_full * (
        (pred["tg/forward/layer"] - pred["tg/forward/layer/experts"]) / L_run + layer["predicted"]["seconds"])
    cpu_tps = cpu_run.scaled.predicted_tps
    rows = [{"variant": "cpu", "share": "-", "tps": cpu_tps, "ratio": 1.0, "note": "predicted, cpu backend run"},
            {"variant": "qpu", "share": "-", "tps": 1 / qpu_s, "ratio": 1 / qpu_s / cpu_tps,
             "note": "predicted: cpu run with the experts as the qpu backend's dispatches"}]
    for name, sc in scen.items():
        for v in ("hybrid_experts", "hybrid_dense"):
            if v in sc:
                tps = 1.0 / sc[v]["seconds"]
                sp = sc["hybrid_experts"]["split"]
                note = f"experts split {sp['n_cpu']:.0f} CPU / {sp['n_qpu']:.0f} QPU"
                if v == "hybrid_dense":
                    note += (", dense GEMVs split by rows (as the hybrid backend's dense= option runs them; here "
                             "from the GEMV kernel's predicted rate per row)")
                rows.append({"variant": v.replace("_", "-"), "share": name, "tps": tps, "ratio": tps / cpu_tps,
                             "note": note})
    hybrid_run = None
    if args.run_hybrid:
        n_cpu = int(coexec.plan_units(k, rates, "central").n_cpu)
        hybrid_run = cmp.run_backend(path, "hybrid", prompt, args.n_gen, 1, {"qpu": "emu", "cpu_experts": n_cpu},
                                     force_tokens=cpu_run.tokens)
        hybrid_run.scaled = cmp.scale_to_full(hybrid_run.tg_regions, hybrid_run.tg_predicted, L_run, L_full)
        if hybrid_run.scaled.predicted_tps:
            tps = hybrid_run.scaled.predicted_tps
            rows.append({"variant": "hybrid (run)", "share": "central", "tps": tps, "ratio": tps / cpu_tps,
                         "note": f"hybrid backend run, cpu_experts={n_cpu}, its own dispatches"})

    print(f"predicted Pi 4 decode, {args.shape} {args.type} (x{L_full} layers); DRAM sharing: " +
          ", ".join(f"{n} {dram.scenario(n).combined / 1e9:.2f} GB/s" for n in dram.SCENARIO_NAMES))
    print("| variant | DRAM scenario | t/s | x CPU-only | note |\n|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['share']} | {_label(r['tps'])} | {_label(r['ratio'])} | {r['note']} |")
    if args.no_record:
        return 0
    rec = {"kind": "hybrid-bench", "environment": environment(model=f), "model": model_info(f),
           "shape": args.shape, "type": args.type, "layers_run": L_run, "layers_full": L_full, "n_gen": args.n_gen,
           "command": "pimoe " + " ".join(sys.argv[1:]),
           "dram_scenarios": {n: dram.scenario(n).as_dict() for n in dram.SCENARIO_NAMES},
           "expert_rates": rates.as_dict(), "expert_bytes": info, "qpu_expert_layer": layer,
           "dense_rates": dense, "predictions": scen, "rows": rows,
           "runs": {"cpu": cpu_run.to_json(), "hybrid": hybrid_run.to_json() if hybrid_run else None},
           "notes": {"predicted": "every t/s is a Pi 4 prediction (pimoe.cpumodel, pimoe.qpu.timing, pimoe.dram), "
                                  "not a measurement",
                     "hybrid-dense": "the dense GEMV split (run by the hybrid backend's dense= option) predicted "
                                     "here from the GEMV kernel's timing on a slice of rows"}}
    jp, _ = write_record(rec, args.results, "hybrid-bench", table=rows)
    print(f"record: {jp}")
    return 0
