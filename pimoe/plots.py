"""Figures from results records only (never recomputing): PNG + SVG next to the records.

    paths = plots.plot_records(["results/compare-….json", "results/bandwidth-….json"], out_dir="results")

bandwidth record -> bandwidth.png  GB/s vs size per CPU kernel and thread count (measured), QPU streaming
                                   kernels (predicted Pi 4 unless measured on one), CPU+QPU bound
compare record   -> breakdown.png  per-decode-token time by region, each backend: measured here | Pi 4 predicted
                    tokens.png     tg t/s per backend: measured here, Pi 4 predicted (and scaled to the full
                                   model when the run had fewer layers)
                    experts.png    expert-usage heatmap (layer x expert, counts of routed tokens)
either / both    -> roofline.png   arithmetic intensity (FLOP per weight byte) vs GFLOP/s with the Pi 4
                                   ceilings (CPU decode bandwidth and fp32 peak, QPU read bandwidth and peak):
                                   each region and the whole token (predicted Pi 4), the QPU kernels
Everything predicted is drawn hollow / dashed and says "predicted" in its legend entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pimoe.errors import PimoeError
from pimoe.records import read_record

REGION_ORDER = ("embedding", "attention", "router", "experts", "upload", "dispatch", "compute", "readback",
                "shared_expert", "output_head", "sampling", "other")
COLORS = {"embedding": "#8c564b", "attention": "#1f77b4", "router": "#9467bd", "experts": "#2ca02c",
          "upload": "#98df8a", "dispatch": "#bcbd22", "compute": "#2ca02c", "readback": "#17becf",
          "shared_expert": "#e377c2", "output_head": "#ff7f0e", "sampling": "#7f7f7f", "other": "#c7c7c7"}


def _subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kw):
    """(figure, axes) drawn off-screen with the Agg canvas, without pyplot: matplotlib's global backend
    and pyplot's figure list stay as they were (a notebook keeps showing its inline figures in later
    cells), and nothing needs closing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out = []
    for ext in ("png", "svg"):
        p = out_dir / f"{stem}.{ext}"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        out.append(p)
    return out


def _stem(rec: dict) -> str:
    return Path(rec.get("record_file", rec["kind"])).stem


# -- bandwidth -------------------------------------------------------------------------------------------

def plot_bandwidth(rec: dict, out_dir: Path) -> list[Path]:
    fig, ax = _subplots(figsize=(8, 5))
    cpu = [r for r in rec.get("cpu", []) if r.get("GBps")]
    groups: dict[tuple, list] = {}
    for r in cpu:
        groups.setdefault((r["kernel"], r["threads"]), []).append(r)
    markers = {"read": "o", "copy": "s", "triad": "^"}
    for (kernel, threads), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in rows], [r.get("GBps_best") or r["GBps"] for r in rows],
                marker=markers.get(kernel, "o"),
                label=f"CPU {kernel}, {threads} thread{'s' if threads > 1 else ''} (measured here, best of "
                      f"{rec.get('settings', {}).get('reps', '?')})")
    qgroups: dict[tuple, list] = {}
    for r in rec.get("qpu", []):
        if r.get("GBps"):
            qgroups.setdefault((r["kernel"], r.get("threads", 8)), []).append(r)
    for (kernel, threads), rows in sorted(qgroups.items()):
        rows.sort(key=lambda r: r["bytes"])
        src = rows[0]["source"]
        ax.plot([r["bytes"] for r in rows], [r["GBps"] for r in rows], "--" if src == "predicted" else "-",
                marker="D", mfc="none" if src == "predicted" else None,
                label=f"QPU {kernel}, {threads} threads ({'PREDICTED Pi 4' if src == 'predicted' else 'measured Pi 4'})")
    for r in rec.get("concurrent", []):
        if r.get("GBps"):
            ax.axhline(r["GBps"], color="k", ls=":", lw=1)
            ax.text(1 << 15, r["GBps"], f" Pi 4 CPU+QPU {r['source']}: {r['GBps']:.1f} GB/s", va="top", fontsize=8)
    ceil = rec.get("pi4_ceilings") or {}
    if ceil.get("dram_peak_GBps"):
        ax.axhline(ceil["dram_peak_GBps"], color="r", ls="-.", lw=1)
        ax.text(1 << 15, ceil["dram_peak_GBps"], " Pi 4 DRAM peak (paper)", color="r", va="bottom", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bytes per array")
    ax.set_ylabel("GB/s")
    env = rec.get("environment", {})
    load = env.get("load_average") or [float("nan")]
    ax.set_title(f"Memory bandwidth — CPU measured on {env.get('cpu', '?')} ({env.get('cpu_count', '?')} CPUs, "
                 f"load {load[0]:.1f}); QPU: Pi 4 predicted from emulator counts", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out_dir, _stem(rec) + "-bandwidth")


# -- compare ---------------------------------------------------------------------------------------------

def _label(run: dict) -> str:
    b = run["backend"]
    if b == "qpu":
        return "qpu (hw)" if run.get("driver") == "hw" else "qpu (emulator)"
    return b


def _segments(regions: dict, step: str = "tg") -> dict[str, float]:
    """Seconds per token by leaf-ish region name, from a per-step summary {path: {seconds, self_seconds}}
    or a prediction {path: seconds}; 'other' = time not inside any named region."""
    def sec(v, key="seconds"):
        return v if isinstance(v, (int, float)) else v.get(key, 0.0)

    out: dict[str, float] = {}
    total = sec(regions.get(step, 0.0))
    covered = 0.0
    for path, v in regions.items():
        parts = path.split("/")
        name = parts[-1]
        if name in ("upload", "dispatch", "compute", "readback"):
            out[name] = out.get(name, 0.0) + sec(v)
            covered += sec(v)
        elif name in ("embedding", "attention", "router", "shared_expert", "output_head", "sampling"):
            out[name] = out.get(name, 0.0) + sec(v)
            covered += sec(v)
        elif name == "experts":
            children = [p for p in regions if p.startswith(path + "/")]
            own = sec(v) - sum(sec(regions[p]) for p in children if p.count("/") == path.count("/") + 1)
            out["experts"] = out.get("experts", 0.0) + own
            covered += own
    out["other"] = max(total - covered, 0.0)
    return out


LAYER_SEGMENTS = ("attention", "router", "experts", "upload", "dispatch", "compute", "readback", "shared_expert")


def plot_breakdown(rec: dict, out_dir: Path) -> list[Path]:
    """Stacked bars per backend: measured here | Pi 4 predicted (plus, for a --shape run, the prediction
    scaled to the full model: per-layer regions x layers_full / layers_run)."""
    runs = rec["runs"]
    factor = rec["layers_full"] / rec["layers_run"]
    n_bars = len(runs) * (2 if factor != 1 else 1)
    fig, axes = _subplots(1, 2, figsize=(12, 1.6 + 0.6 * n_bars), squeeze=False)
    for ax, kind in zip(axes[0], ("measured", "predicted")):
        labels = []
        y = 0
        for run in runs:
            regs = run["tg_regions"] if kind == "measured" else run.get("tg_predicted")
            if not regs:
                continue
            bars = [(_label(run) if kind == "measured" else f"{run['backend']} (Pi 4)", 1.0)]
            if kind == "predicted" and factor != 1:
                bars.append((f"{run['backend']} (Pi 4) x{rec['layers_full']}L", factor))
            seg = _segments(regs)
            for label, f in bars:
                left = 0.0
                for name in REGION_ORDER:
                    ms = seg.get(name, 0.0) * 1e3 * (f if name in LAYER_SEGMENTS else 1.0)
                    if ms <= 0:
                        continue
                    ax.barh(y, ms, left=left, color=COLORS[name], edgecolor="white",
                            label=name if name not in ax.get_legend_handles_labels()[1] else None,
                            hatch="//" if kind == "predicted" else None)
                    left += ms
                ax.text(left, y, f" {left:.3g} ms", va="center", fontsize=7)
                labels.append((y, label))
                y += 1
        ax.set_yticks([i for i, _ in labels], [l for _, l in labels], fontsize=8)
        ax.set_xlabel("ms per decode token")
        ax.set_title("measured on this machine" if kind == "measured" else
                     "Pi 4, PREDICTED (timing model)" + (f"; x{rec['layers_full']}L = scaled to the full model"
                                                         if factor != 1 else ""), fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.15)
        ax.invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    h2, n2 = axes[0][1].get_legend_handles_labels()
    for h, n in zip(h2, n2):
        if n not in names:
            handles.append(h)
            names.append(n)
    fig.legend(handles, names, loc="upper center", ncol=min(len(names), 8), fontsize=7,
               bbox_to_anchor=(0.5, 0.0))
    m = rec["model"]
    fig.suptitle(f"Per-decode-token time by region — {m['file']} ({rec['layers_run']} layers run)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, _stem(rec) + "-breakdown")


def plot_tokens(rec: dict, out_dir: Path) -> list[Path]:
    rows = [r for r in rec.get("table", []) if str(r.get("test", "")).startswith("tg")]
    fig, ax = _subplots(figsize=(8, 0.8 + 0.45 * max(1, len(rows))))
    for i, r in enumerate(rows):
        pred = "predicted" in r["source"]
        ax.barh(i, r["tps_mean"], xerr=r.get("tps_sd") or None, color="#ff7f0e" if pred else "#1f77b4",
                hatch="//" if pred else None, edgecolor="k", lw=0.5)
        ax.text(r["tps_mean"], i, f" {r['tps_mean']:.3g}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r['backend']} {r['test']} [{r['source']}]" for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s (log)")
    ax.set_title(f"Tokens/s, measured (blue) and Pi 4 predicted (orange, hatched) — {rec['model']['file']}",
                 fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out_dir, _stem(rec) + "-tokens")


def plot_experts(rec: dict, out_dir: Path) -> list[Path]:
    usage = np.asarray(rec["runs"][0]["expert_usage"], float)      # [layers, experts]
    fig, ax = _subplots(figsize=(min(14, 3 + usage.shape[1] * 0.08), 1.5 + 0.4 * usage.shape[0]))
    im = ax.imshow(usage, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(usage.shape[0]))
    fig.colorbar(im, ax=ax, label="tokens routed (all prompt + decode tokens, all repetitions)")
    ax.set_title(f"Expert usage — {rec['model']['file']} (routing record, backend {rec['runs'][0]['backend']})",
                 fontsize=9)
    return _save(fig, out_dir, _stem(rec) + "-experts")


# -- roofline --------------------------------------------------------------------------------------------

def roofline_points(compare_rec: dict | None, bandwidth_rec: dict | None) -> list[dict]:
    """{label, intensity (FLOP/byte), gflops, source} from the records (no recomputation beyond ratios)."""
    pts = []
    if compare_rec:
        for run in compare_rec["runs"]:
            pred = run.get("tg_predicted") or {}
            regs = run["tg_regions"]
            for path, v in regs.items():
                name = path.split("/")[-1]
                if name not in ("attention", "router", "experts", "output_head", "shared_expert"):
                    continue
                if v.get("bytes") and v.get("flops") and pred.get(path):
                    pts.append({"label": f"{run['backend']}: {name}", "intensity": v["flops"] / v["bytes"],
                                "gflops": v["flops"] / pred[path] / 1e9, "source": "predicted Pi 4"})
            tot_b = sum(v.get("bytes", 0) for v in regs.values())
            tot_f = sum(v.get("flops", 0) for v in regs.values())
            if tot_b and tot_f and pred.get("tg"):
                pts.append({"label": f"{run['backend']}: whole token", "intensity": tot_f / tot_b,
                            "gflops": tot_f / pred["tg"] / 1e9, "source": "predicted Pi 4", "token": True})
    if bandwidth_rec:
        for r in bandwidth_rec.get("qpu", []):
            # summation: one 32-bit integer add per 4 bytes read (ops, not floating point)
            if r.get("kernel") == "summation" and r.get("seconds"):
                pts.append({"label": f"QPU summation {r['bytes'] >> 10} KiB, {r.get('threads', '?')} threads "
                                     f"(int adds)", "intensity": 0.25,
                            "gflops": r["bytes"] / 4 / r["seconds"] / 1e9,
                            "source": "predicted Pi 4" if r["source"] == "predicted" else "measured Pi 4"})
    return pts


def plot_roofline(compare_rec: dict | None, bandwidth_rec: dict | None, out_dir: Path) -> list[Path]:
    ceil = (compare_rec or {}).get("pi4_ceilings") or (bandwidth_rec or {}).get("pi4_ceilings") or {}
    pts = roofline_points(compare_rec, bandwidth_rec)
    if not pts and not ceil:
        return []
    fig, ax = _subplots(figsize=(8, 5.5))
    x = np.logspace(-1.5, 2, 200)
    for bw_key, peak_key, name, color in (("cpu_decode_GBps", "cpu_fp32_GFLOPS", "Pi 4 CPU", "#1f77b4"),
                                          ("qpu_read_GBps", "qpu_peak_GFLOPS", "Pi 4 QPU", "#2ca02c")):
        if ceil.get(bw_key) and ceil.get(peak_key):
            ax.plot(x, np.minimum(x * ceil[bw_key], ceil[peak_key]), color=color, lw=2,
                    label=f"{name}: {ceil[bw_key]:.2f} GB/s, {ceil[peak_key]:.1f} GFLOP/s")
    if ceil.get("dram_peak_GBps"):
        ax.plot(x, x * ceil["dram_peak_GBps"], "r:", lw=1, label=f"DRAM peak {ceil['dram_peak_GBps']} GB/s (paper)")
    for p in pts:
        ax.plot(p["intensity"], p["gflops"], "*" if p.get("token") else "o", ms=11 if p.get("token") else 7,
                mfc="none" if "predicted" in p["source"] else None, label=f"{p['label']} ({p['source']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per weight byte read)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Roofline, Pi 4 ceilings from the timing model; hollow = predicted", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    stem = _stem(compare_rec or bandwidth_rec)
    return _save(fig, out_dir, stem + "-roofline")


def plot_records(paths, out_dir=None) -> list[Path]:
    """Every figure the given records support; returns the files written (PNG and SVG)."""
    recs = [(Path(p), read_record(p)) for p in paths]
    if not recs:
        raise PimoeError("pimoe plot needs at least one record (results/*.json)")
    made: list[Path] = []
    compare_recs = [r for _, r in recs if r["kind"] == "compare"]
    bw_recs = [r for _, r in recs if r["kind"] == "bandwidth"]
    unknown = [str(p) for p, r in recs if r["kind"] not in ("compare", "bandwidth")]
    if unknown:
        raise PimoeError(f"cannot plot record(s) {', '.join(unknown)}: only 'compare' and 'bandwidth' records")
    for p, rec in recs:
        out = Path(out_dir) if out_dir else p.parent
        out.mkdir(parents=True, exist_ok=True)
        try:
            if rec["kind"] == "bandwidth":
                made += plot_bandwidth(rec, out)
                if not compare_recs:
                    made += plot_roofline(None, rec, out)
            else:
                made += plot_breakdown(rec, out)
                made += plot_tokens(rec, out)
                made += plot_experts(rec, out)
                made += plot_roofline(rec, bw_recs[-1] if bw_recs else None, out)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # a hand-edited or truncated record: say which file and what is missing or wrong
            what = f"no field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise PimoeError(f"{p}: a '{rec['kind']}' record pimoe cannot plot ({what})") from None
    return made
