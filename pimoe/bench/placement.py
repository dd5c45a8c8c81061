"""What one-copy expert placements cost against the ideal split (`pimoe bench placement`).

    pimoe bench placement --shape olmoe-1b-7b --type Q4_K      # -> results/placement-bench-<time>.json

The lanes' per-expert rates come from a `pimoe bench hybrid` record of the same shape and type (the newest
under --results unless --rates names one). The synthetic model of that shape routes a calibration prompt
(its expert usage drives `frequency` and `hot`) and then a different evaluation prompt, whose decode
routing is replayed under every placement of pimoe.placement, for every DRAM-sharing scenario: the mean
predicted expert time per token and layer, and its ratio to the ideal placement (`all`: every expert on
both sides, the split free). Memory: the experts of the FULL model (all its layers) in GGUF blocks for
the CPU's copy and in the QPU layout for the QPU's, against --budget (default: an 8 GB Pi 4 minus what the
CPU reads every token and the qpu_memory reserve) and the QPU copy against the GPU's 4 GiB address space.

Synthetic routers have random weights, so routing is close to uniform over the experts: frequency and hot
placements gain less here than on a real model's skewed routing (stated in the record).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--shape", "--preset", dest="shape", default="olmoe-1b-7b", choices=("olmoe-1b-7b", "qwen3-30b-a3b"))
    parser.add_argument("--type", default="Q4_K")
    parser.add_argument("--layers", type=int, default=1, help="layers of the synthetic model run (default 1)")
    parser.add_argument("--calibration-tokens", type=int, default=32, help="calibration prompt (default 32)")
    parser.add_argument("-n", "--n-gen", "--tokens", dest="tokens", type=int, default=32, help="evaluation decode tokens (default 32)")
    parser.add_argument("--budget", type=float, default=None,
                        help="GiB for the experts' copies (default: 8 GiB Pi 4 minus the rest, see the doc)")
    parser.add_argument("--rates", type=Path, default=None, help="a hybrid-bench record (default: newest)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--no-record", action="store_true")


def newest_hybrid_record(results: Path, shape: str, qtype: str) -> Path | None:
    best = None
    for p in sorted(Path(results).glob("hybrid-bench-*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if r.get("shape") == shape and str(r.get("type")).upper() == qtype.upper():
            best = p
    return best


def routing_trace(model, tokens: list[int]) -> np.ndarray:
    """Decode the tokens one at a time from an empty cache: int [steps, L, k] of the selected experts."""
    model.reset()
    out = []
    for t in tokens:
        model.forward([t])
        step = model.routing_history[-1]
        out.append([np.asarray(r.expert_ids)[0] for r in step])
    return np.asarray(out)


def main(args) -> int:
    from pimoe import coexec, dram, load_model, placement
    from pimoe import compare as cmp
    from pimoe.backends import qpu_memory as qm
    from pimoe.backends.qpu import cpu_resident_bytes
    from pimoe.errors import PimoeError
    from pimoe.records import environment, write_record
    from pimoe.synth import PRESETS

    rec_path = args.rates or newest_hybrid_record(args.results, args.shape, args.type)
    if rec_path is None:
        raise PimoeError(f"no hybrid-bench record for {args.shape} {args.type} under {args.results}: run "
                         f"`pimoe bench hybrid --shape {args.shape} --type {args.type}` first (or --rates)")
    hrec = json.loads(Path(rec_path).read_text())
    rates = coexec.LaneRates(**hrec["expert_rates"])
    import os

    cache = args.cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pimoe" / "compare"
    path = cmp.shape_model_path(args.shape, args.layers, args.type, cache)
    L_full = PRESETS[args.shape].n_layers
    with load_model(path, backend="cpu", n_ctx=args.calibration_tokens + args.tokens + 8) as m:
        cfg = m.config
        rng = np.random.default_rng(7)
        calib = [int(t) for t in rng.integers(1, min(cfg.vocab_size, 1000), args.calibration_tokens)]
        evalp = [int(t) for t in np.random.default_rng(11).integers(1, min(cfg.vocab_size, 1000), args.tokens)]
        cal = routing_trace(m, calib)
        ev = routing_trace(m, evalp)
        resident = cpu_resident_bytes(m.file)
        L_run, E, k = cfg.n_layers, cfg.n_experts, cfg.n_experts_used
        usage = np.zeros((L_run, E))
        for layer in range(L_run):
            np.add.at(usage[layer], cal[:, layer].ravel(), 1)
    cpu_b = hrec["expert_bytes"]["cpu_expert_bytes"]
    qpu_b = hrec["expert_bytes"]["qpu_expert_bytes"]
    # the full model's non-expert bytes: the run's non-expert tensors with the per-layer ones scaled
    if args.budget is not None:
        budget_full = int(args.budget * (1 << 30))
        budget_src = "--budget"
    else:
        budget_full = int(8 * (1 << 30) - resident * (L_full / L_run) - qm.RESERVE)
        budget_src = ("8 GiB Pi 4 - the file the CPU reads every token (non-expert tensors, scaled to "
                      f"{L_full} layers; an over-estimate for the once-only ones) - {qm.RESERVE >> 20} MiB reserve")
    gpu_va = qm.gpu_address_space("hw")
    budget_run = budget_full * L_run / L_full          # the placements are made per layer run
    results = []
    for share in dram.SCENARIO_NAMES:
        n_cpu = int(coexec.plan_units(k, rates, share).n_cpu)
        for name in placement.PLACEMENTS:
            p = placement.make_placement(name, L_run, E, cpu_b, qpu_b, n_cpu / k, budget=budget_run, usage=usage)
            ev_res = placement.evaluate(p, ev, rates, n_cpu, share)
            f = L_full / L_run
            full = {"cpu_bytes": p.cpu_bytes * f, "qpu_bytes": p.qpu_bytes * f, "bytes": p.bytes * f}
            ev_res.update(share=share, full_model=full, fits_budget=full["bytes"] <= budget_full,
                          fits_gpu_va=full["qpu_bytes"] <= gpu_va)
            results.append(ev_res)
    print(f"placements, {args.shape} {args.type} (x{L_full} layers), budget {budget_full / 2**30:.2f} GiB "
          f"({budget_src}), GPU address space {gpu_va / 2**30:.2f} GiB; rates from {rec_path}")
    print("| DRAM | placement | CPU copy GiB | QPU copy GiB | fits RAM | fits GPU VA | expert ms/token-layer | "
          "x ideal |\n|---|---|---:|---:|---|---|---:|---:|")
    for r in results:
        fm = r["full_model"]
        print(f"| {r['share']} | {r['placement']['name']} | {fm['cpu_bytes'] / 2**30:.2f} | "
              f"{fm['qpu_bytes'] / 2**30:.2f} | {'yes' if r['fits_budget'] else 'NO'} | "
              f"{'yes' if r['fits_gpu_va'] else 'NO'} | {r['seconds_per_layer_token'] * 1e3:.3f} | "
              f"{r['cost_vs_ideal']:.3f} |")
    if args.no_record:
        return 0
    rec = {"kind": "placement-bench", "environment": environment(), "shape": args.shape, "type": args.type,
           "layers_run": L_run, "layers_full": L_full, "rates_record": str(rec_path), "expert_rates": rates.as_dict(),
           "budget_bytes": budget_full, "budget_source": budget_src, "gpu_va_bytes": gpu_va,
           "calibration_tokens": calib, "evaluation_tokens": evalp, "calibration_usage": usage.tolist(),
           "results": results, "command": "pimoe " + " ".join(sys.argv[1:]),
           "notes": {"predicted": "expert times are Pi 4 predictions from the hybrid-bench rates and pimoe.dram",
                     "routing": "synthetic model: random router weights route close to uniformly, so frequency "
                                "and hot placements gain less than on a real model"}}
    jp, _ = write_record(rec, args.results, "placement-bench")
    print(f"record: {jp}")
    return 0
