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
from pimoe.bench.calibration import (ALL_KERNELS, COUNTS_PATH, FREE, KERNELS, compare, fit_all, leave_one_out,
                                   load_counts, load_published)

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
        ax.errorbar(i - 0.2, pub[i], yerr=[[0.1 * pub[i]], [0.1 * pub[i]]], color="k", capsize=3, lw=0.8)
        ax.annotate(f"{r['ratio_predicted_to_published_time']:.3f}x\n{r['bound']}", (i + 0.2, pred[i]),
                    textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("time per dispatch [ms] (log)")
    ax.set_title("QPU timing model (fitted on the four; sgemm_naive predicted) vs published (bars: +-10 %)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax2.axhspan(0.85, 1.15, color="#cccccc", alpha=0.5, label="+-15 %")
    for i, r in enumerate(loo):
        rng = r.get("allowed_range")
        if rng:   # what the other three allow with the latency free
            lo, hi = rng["ratio_at_zero_latency"], min(rng["ratio_at_latency_max"], 2.0)
            ax2.bar(i, hi - lo, 0.5, bottom=lo, color="none", edgecolor="#c44e52", hatch="//")
        held = r.get("held_at_prior") or {}
        inside = 0.85 <= r["ratio"] <= 1.15
        ax2.bar(i, r["ratio"], 0.3, color="#55a868" if inside and not held else "#c44e52")
        note = f"{r['ratio']:.3f}" + ("".join(f"\n{n} = prior {v:g}" for n, v in held.items()))
        ax2.annotate(note, (i, min(r["ratio"], 2.0)), textcoords="offset points", xytext=(0, 3),
                     ha="center", fontsize=7)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks(range(len(loo)), [f"{r['held_out']}\n(held out)" for r in loo], fontsize=8)
    ax2.set_ylim(0, 2.2)
    ax2.set_ylabel("predicted / published time")
    ax2.set_title("leave-one-out over the five: fitted on the other four\n(hatched: range with the latency free)",
                  fontsize=9)
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    plt.close(fig)


def _latency_bound(counts: dict, published: dict, params) -> dict:
    """Little's law on the summation: with 8 results in flight per QPU it streams its published rate only if
    the round trip is at most published time x clock x 8 / results per QPU. The sgemm-fitted latency must
    be below that, or the two figures contradict each other."""
    from pimoe.bench.calibration import sgemm_range_without_latency

    bound = sgemm_range_without_latency(counts, published, params)["latency_max_cycles"]
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
    params = fit_all(counts, published)
    rows = compare(counts, published, params, ALL_KERNELS)   # the fifth predicted from the fit on the four
    loo = leave_one_out(counts, published)
    params5 = fit_all(counts, published, ALL_KERNELS)
    rows5 = compare(counts, published, params5, ALL_KERNELS)
    loo5 = leave_one_out(counts, published, kernels=ALL_KERNELS)
    from pimoe.records import write_record

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {
        "what": "pimoe QPU timing model (pimoe.qpu.timing) calibrated against py-videocore6's published Pi 4 "
                "figures; all model times are PREDICTED, the published ones are measurements by Idein",
        "created_utc": stamp, "git_commit": _git_commit(), "python": platform.python_version(),
        "machine": platform.machine(), "counts_source": "stored counts.json" if args.no_emulate else "emulated now",
        "fit": "least squares on log(predicted / published time) over the four kernels of issue 12 (fit_all); "
               "'table' also predicts the fifth reference (sgemm_naive) from it",
        "fitted_parameters": {name: getattr(params, name) for name in FREE},
        "kernel_of_each_count": {k: counts[k].get("kernel") for k in ALL_KERNELS},
        "parameters": params.as_dict(),
        "shipped_parameters": timing.PI4.as_dict(),
        "table": rows, "leave_one_out": loo,
        "fit_on_five": {"fitted_parameters": {name: getattr(params5, name) for name in FREE}, "table": rows5},
        "leave_one_out_of_five": loo5,
        "latency_consistency": _latency_bound(counts, published, params),
        "published_source": published["source"],
        "counts": counts,
    }
    # one naming scheme and schema for every record: results/calibration-YYYYMMDD-HHMMSS.json
    path, _ = write_record(record, args.results, "calibration")
    base = path.with_suffix("")
    plot(rows, loo5, base.with_suffix(".png"), base.with_suffix(".svg"))
    print(f"QPU timing model calibration ({rows[0]['label']})")
    for name in FREE:
        print(f"  fitted {name:20s} = {getattr(params, name):.6g}   (the four, least squares; on all five: "
              f"{getattr(params5, name):.6g})")
    print(f"  {'kernel':12s} {'published':>12s} {'predicted':>12s} {'ratio':>7s} {'on five':>7s}  bound     counts from")
    for r, r5 in zip(rows, rows5):
        print(f"  {r['kernel']:12s} {r['published_seconds'] * 1e3:10.3f}ms {r['predicted_seconds'] * 1e3:10.3f}ms "
              f"{r['ratio_predicted_to_published_time']:7.3f} {r5['ratio_predicted_to_published_time']:7.3f}  "
              f"{r['bound']:9s} {counts[r['kernel']].get('kernel')}")
    for title, table in (("leave-one-out of the four (fitted on the other three):", loo),
                         ("leave-one-out of the five (fitted on the other four):", loo5)):
        print("  " + title)
        _print_loo(table)
    lb = record["latency_consistency"]
    print(f"  latency: fitted {lb['fitted_latency_cycles']:.1f} cycles <= {lb['summation_max_latency_cycles']:.1f} "
          f"allowed by the summation's rate with 8 results in flight: {lb['consistent']}")
    print(f"wrote {base}.json, .png, .svg")
    return 0


def _print_loo(loo: list[dict]) -> None:
    for r in loo:
        held = r.get("held_at_prior") or {}
        line = f"    {r['held_out']:12s} predicted/published = {r['ratio']:.3f}"
        if held:
            line += " (" + ", ".join(f"{n} not identifiable from the other three: held at its prior {v:g}, "
                                     f"{r['prior_source'][n]}" for n, v in held.items()) + ")"
        rng = r.get("allowed_range")
        if rng:
            line += (f"; with the latency free the streaming kernels allow {rng['ratio_at_zero_latency']:.3f} .. "
                     f"{rng['ratio_at_latency_max']:.3f}")
        line += f"; round trip {r['wait_latency_cycles']:.1f} cycles"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
