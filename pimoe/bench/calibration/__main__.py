"""Regenerate the QPU timing calibration: emulate, refit, and record predicted vs published.

    python -m pimoe.bench.calibration                 # re-emulate the kernels (seconds), refit, write results
    python -m pimoe.bench.calibration --no-emulate    # refit from pimoe/bench/calibration/counts.json
    python -m pimoe.bench.calibration --write-counts  # also store the fresh counts in counts.json

Writes results/calibration-<UTC time>.json (parameters, table, leave-one-out, counts) and .png/.svg (the
plot of predicted vs published), never overwriting an earlier record.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import subprocess
import sys
from pathlib import Path

from pimoe.qpu import timing
from pimoe.bench.calibration import (COUNTS_PATH, FITTED, compare, fit, leave_one_out, load_counts,
                                   load_published)

REPO = Path(__file__).resolve().parents[3]


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return None


def plot(rows: list[dict], loo: list[dict], png: Path, svg: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = [r["kernel"] for r in rows]
    pub = [r["published_seconds"] * 1e3 for r in rows]
    pred = [r["predicted_seconds"] * 1e3 for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], pub, 0.4, label="published (py-videocore6 README, Pi 4)", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], pred, 0.4, label="predicted (pimoe timing model, emulated counts)",
           color="#dd8452")
    for i, r in enumerate(rows):
        ax.errorbar(i - 0.2, pub[i], yerr=[[0.25 * pub[i]], [0.25 * pub[i]]], color="k", capsize=3, lw=0.8)
        role = "fit" if r["role"].startswith("fit") else "check"
        ax.annotate(f"{r['ratio_predicted_to_published_time']:.3f}x\n{role}, {r['bound']}", (i + 0.2, pred[i]),
                    textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("time per dispatch [ms] (log)")
    ax.set_title("QPU timing model vs published figures (error bars: +-25 %)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    held = [r["held_out"] for r in loo]
    ax2.axhspan(0.75, 1.25, color="#cccccc", alpha=0.5, label="+-25 %")
    ax2.bar(range(len(loo)), [r["ratio"] for r in loo], 0.5, color="#55a868")
    for i, r in enumerate(loo):
        ax2.annotate(f"{r['ratio']:.3f}", (i, r["ratio"]), textcoords="offset points", xytext=(0, 3),
                     ha="center", fontsize=8)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks(range(len(loo)), [f"{h}\n(held out)" for h in held], fontsize=8)
    ax2.set_ylim(0, 1.5)
    ax2.set_ylabel("predicted / published time")
    ax2.set_title("leave-one-out: bandwidths fitted on the other two", fontsize=9)
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    plt.close(fig)


def _latency_bound(counts: dict, published: dict, params) -> dict:
    """Little's law on the summation: with 8 loads in flight per QPU it streams its published rate only if
    the round trip is at most published time x clock x 8 / loads per QPU. The sgemm-fitted latency must be
    below that, or the two fits contradict each other."""
    import numpy as np

    reads = np.asarray(counts["summation"]["counters"]["per_thread"]["tmu_reads"]).sum(axis=1).max()
    bound = published["kernels"]["summation"]["seconds"] * params.clock_hz * params.tmu_queue_depth / reads
    return {"summation_max_latency_cycles": float(bound), "fitted_latency_cycles": params.wait_latency_cycles,
            "consistent": bool(params.wait_latency_cycles <= bound)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pimoe.bench.calibration", description=__doc__.split("\n")[0])
    ap.add_argument("--no-emulate", action="store_true", help="use the stored counts.json")
    ap.add_argument("--write-counts", action="store_true", help="store the freshly emulated counts in counts.json")
    ap.add_argument("--results", default=str(REPO / "results"), help="directory for the record and plot")
    args = ap.parse_args(argv)

    published = load_published()
    if args.no_emulate:
        counts = load_counts()
    else:
        from pimoe.bench.calibration.emulate import emulate_all

        counts = emulate_all()
        if args.write_counts:
            COUNTS_PATH.write_text(json.dumps(counts, indent=1) + "\n")
    params = fit(counts, published)
    rows = compare(counts, published, params)
    loo = leave_one_out(counts, published)
    from pimoe.records import write_record

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {
        "what": "pimoe QPU timing model (pimoe.qpu.timing) calibrated against py-videocore6's published Pi 4 "
                "figures; all model times are PREDICTED, the published ones are measurements by Idein",
        "created_utc": stamp, "git_commit": _git_commit(), "python": platform.python_version(),
        "machine": platform.machine(), "counts_source": "stored counts.json" if args.no_emulate else "emulated now",
        "fitted_parameters": {name: {"value": getattr(params, name), "from": kernel} for name, kernel in FITTED.items()},
        "parameters": params.as_dict(),
        "shipped_parameters": timing.PI4.as_dict(),
        "table": rows, "leave_one_out": loo,
        "latency_consistency": _latency_bound(counts, published, params),
        "published_source": published["source"],
        "counts": counts,
    }
    # one naming scheme and schema for every record: results/calibration-YYYYMMDD-HHMMSS.json
    path, _ = write_record(record, args.results, "calibration")
    base = path.with_suffix("")
    plot(rows, loo, base.with_suffix(".png"), base.with_suffix(".svg"))
    print(f"QPU timing model calibration ({rows[0]['label']})")
    for name, kernel in FITTED.items():
        print(f"  fitted {name:20s} = {getattr(params, name):.6g}   (from {kernel})")
    print(f"  {'kernel':10s} {'published':>12s} {'predicted':>12s} {'ratio':>7s}  bound     role")
    for r in rows:
        print(f"  {r['kernel']:10s} {r['published_seconds'] * 1e3:10.3f}ms {r['predicted_seconds'] * 1e3:10.3f}ms "
              f"{r['ratio_predicted_to_published_time']:7.3f}  {r['bound']:9s} {r['role']}")
    print("  leave-one-out:")
    for r in loo:
        print(f"    {r['held_out']:10s} predicted/published = {r['ratio']:.3f} (bandwidths from {r['fitted_from']})")
    lb = record["latency_consistency"]
    print(f"  latency: fitted {lb['fitted_latency_cycles']:.1f} cycles <= {lb['summation_max_latency_cycles']:.1f} "
          f"allowed by the summation's rate with 8 loads in flight: {lb['consistent']}")
    print(f"wrote {base}.json, .png, .svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
