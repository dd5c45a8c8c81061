"""Figures from results records only (never recomputing): PNG + SVG next to the records.

    paths = plots.plot_records(["results/compare-….json", "results/bandwidth-….json"], out_dir="results")

bandwidth record -> bandwidth.png  GB/s vs size per CPU kernel and thread count (measured), QPU streaming
                                   kernels (predicted Pi 4 unless measured on one), CPU+QPU bound
compare record   -> breakdown.png  per-decode-token time by region, each backend: measured here | Pi 4 predicted
                    tokens.png     tg t/s per backend: measured here, Pi 4 predicted (and scaled to the full
                                   model when the run had fewer layers)
                    experts.png    expert-usage heatmap (layer x expert, counts of routed tokens)
                    offload.png    predicted Pi 4 decode of each offload backend as a multiple of the
                                   reference's, per DRAM-sharing scenario (runs' "offload"; when present)
headline record  -> <stem>.png    predicted Pi 4 t/s per model and mix, CPU only vs QPU (vs hybrid), linear
either / both    -> roofline.png   arithmetic intensity (FLOP per weight byte) vs GFLOP/s with the Pi 4
                                   ceilings (CPU decode bandwidth and fp32 peak, QPU read bandwidth and peak):
                                   each region and the whole token (predicted Pi 4), the QPU kernels
Everything predicted is drawn hollow / dashed and says "predicted" in its legend entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pimoe.errors import PimoeError
from pimoe.records import backend_label, read_record

REGION_ORDER = ("embedding", "attention", "router", "experts", "upload", "dispatch", "compute", "readback",
                "shared_expert", "output_head", "sampling", "other")
COLORS = {"embedding": "#8c564b", "attention": "#1f77b4", "router": "#9467bd", "experts": "#2ca02c",
          "upload": "#98df8a", "dispatch": "#bcbd22", "compute": "#d62728", "readback": "#17becf",
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
    """Left: this machine's CPU, measured. Right: a Pi 4 - the QPU streaming kernels (predicted from the
    emulator's counts unless measured on one), next to the Pi 4 CPU's published figures as reference
    lines and the DRAM peak. The two machines are never drawn on one axis."""
    fig, (ax, bx) = _subplots(1, 2, figsize=(13, 5))
    cpu = [r for r in rec.get("cpu", []) if r.get("GBps")]
    groups: dict[tuple, list] = {}
    for r in cpu:
        groups.setdefault((r["kernel"], r["threads"]), []).append(r)
    markers = {"read": "o", "copy": "s", "triad": "^"}
    for (kernel, threads), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in rows], [r.get("GBps_best") or r["GBps"] for r in rows],
                marker=markers.get(kernel, "o"), label=f"{kernel}, {threads} thread{'s' if threads > 1 else ''}")
    env = rec.get("environment", {})
    load = env.get("load_average") or [float("nan")]
    ax.set_title(f"this machine's CPU, MEASURED (best of {rec.get('settings', {}).get('reps', '?')}):\n"
                 f"{env.get('cpu', '?')}, {env.get('cpu_count', '?')} CPUs, load {load[0]:.1f}", fontsize=9)
    qgroups: dict[tuple, list] = {}
    for r in rec.get("qpu", []):
        if r.get("GBps"):
            qgroups.setdefault((r["kernel"], r.get("threads", 8)), []).append(r)
    for (kernel, threads), rows in sorted(qgroups.items()):
        rows.sort(key=lambda r: r["bytes"])
        src = rows[0]["source"]
        bx.plot([r["bytes"] for r in rows], [r["GBps"] for r in rows], "--" if src == "predicted" else "-",
                marker="D", mfc="none" if src == "predicted" else None,
                label=f"QPU {kernel}, {threads} threads ({'PREDICTED' if src == 'predicted' else 'measured'})")
    ceil = rec.get("pi4_ceilings") or {}
    for key, text, style in (("cpu_stream_copy_GBps", "Pi 4 CPU STREAM copy, 1 thread (published)", "-"),
                             ("cpu_decode_GBps", "Pi 4 CPU in llama.cpp decode (published t/s x bytes)", "--"),
                             ("dram_peak_GBps", "Pi 4 DRAM peak (paper)", "-.")):
        if ceil.get(key):
            bx.axhline(ceil[key], color="#1f77b4" if "cpu" in key else "r", ls=style, lw=1.2,
                       label=f"{text}: {ceil[key]:.2f} GB/s")
    for r in rec.get("concurrent", []):
        if r.get("GBps"):
            bx.axhline(r["GBps"], color="k", ls=":", lw=1, label=f"CPU + QPU at once, {r['source']}: {r['GBps']:.1f} GB/s")
    bx.set_title("Raspberry Pi 4: QPU PREDICTED from emulator counts (hollow, dashed),\n"
                 "Pi 4 CPU published figures as reference lines", fontsize=9)
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xlabel("bytes per array / per kernel run")
        a.set_ylabel("GB/s")
        a.set_ylim(bottom=0)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out_dir, _stem(rec) + "-bandwidth")


# -- compare ---------------------------------------------------------------------------------------------

def _predicted_label(run: dict) -> str:
    """A run's Pi 4 prediction: a compare --qpu virtual device run's ("qpu@virtual") is the stand-in row."""
    return f"{run['backend']} (Pi 4" + (", virtual stand-in)" if "@" in run.get("name", "") else ")")


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
            bars = [(backend_label(run["backend"], run.get("driver")) if kind == "measured"
                     else _predicted_label(run), 1.0)]
            if kind == "predicted" and factor != 1:
                bars.append((f"{_predicted_label(run)} x{rec['layers_full']}L", factor))
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
    """Decode t/s per backend on linear axes, in two panels that are never mixed: measured on this machine
    (left) and predicted for a Pi 4 (right; the full model when the run had fewer layers)."""
    rows = [r for r in rec.get("table", []) if str(r.get("test", "")).startswith("tg")]
    measured = [r for r in rows if "predicted" not in r["source"]]
    predicted = [r for r in rows if "predicted" in r["source"]]
    if any("scaled" in r["source"] for r in predicted):      # the answer is the full model's figure
        predicted = [r for r in predicted if "scaled" in r["source"]]
    fig, axes = _subplots(1, 2, figsize=(11, 1.4 + 0.45 * max(len(measured), len(predicted), 1)), squeeze=False)
    for ax, part, color, title in ((axes[0][0], measured, "#1f77b4", "measured on this machine"),
                                   (axes[0][1], predicted, "#ff7f0e", "Raspberry Pi 4, PREDICTED")):
        for i, r in enumerate(part):
            ax.barh(i, r["tps_mean"], xerr=r.get("tps_sd") or None, color=color,
                    hatch="//" if part is predicted else None, edgecolor="k", lw=0.5)
            ax.text(r["tps_mean"], i, f" {r['tps_mean']:.3g}", va="center", fontsize=9)
        ax.set_yticks(range(len(part)), [f"{r['backend']} {r['test']}" for r in part], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max([r["tps_mean"] for r in part] or [1]) * 1.25)
        ax.set_xlabel("decode tokens/s")
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Decode tokens/s — {rec['model']['file']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, _stem(rec) + "-tokens")


OFFLOAD_TARGET = 1.5      # issue 14: the best offload backend >= 1.5x CPU-only (predicted Pi 4 decode)


def plot_offload(rec: dict, out_dir: Path) -> list[Path]:
    """Predicted Pi 4 decode of every offload run as a multiple of the reference's (compare's offload_figures),
    one bar per DRAM-sharing scenario, with the 1x and issue-14 target lines. Nothing when no run has them."""
    runs = [r for r in rec.get("runs", []) if r.get("offload")]
    if not runs:
        return []
    shares = list(runs[0]["offload"]["by_share"])
    fig, ax = _subplots(figsize=(7.5, 1.6 + 0.9 * len(runs)))
    h = 0.8 / len(shares)
    colors = {"pessimistic": "#d62728", "central": "#ff7f0e", "optimistic": "#2ca02c"}
    for i, r in enumerate(runs):
        for j, name in enumerate(shares):
            x = r["offload"]["by_share"][name]["x_reference"]
            y = i + (j - (len(shares) - 1) / 2) * h
            ax.barh(y, x, height=h * 0.95, color=colors.get(name, "#7f7f7f"), hatch="//", edgecolor="k", lw=0.5,
                    label=f"DRAM sharing {name}" if i == 0 else None)
            ax.text(x, y, f" {x:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(OFFLOAD_TARGET, color="#555555", lw=0.8, ls="--", label=f"{OFFLOAD_TARGET}x (issue 14)")
    ax.set_yticks(range(len(runs)), [f"{r['backend']} vs {r['offload']['reference']}" for r in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(v["x_reference"] for v in r["offload"]["by_share"].values()) for r in runs) * 1.25)
    full = rec.get("layers_full")
    ax.set_xlabel("Pi 4 decode speed x the reference — PREDICTED" + (f" (scaled to {full} layers)" if full else ""))
    ax.set_title(f"Offload vs CPU-only, predicted — {rec['model']['file']}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_dir, _stem(rec) + "-offload")


def plot_experts(rec: dict, out_dir: Path) -> list[Path]:
    usage = np.asarray(rec["runs"][0]["expert_usage"], float)      # [layers, experts]
    fig, ax = _subplots(figsize=(min(14, 3 + usage.shape[1] * 0.08), 1.5 + 0.4 * usage.shape[0]))
    im = ax.imshow(usage, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(usage.shape[0]))
    fig.colorbar(im, ax=ax, label="tokens routed\n(prompt + decode, all reps)")
    ax.set_title(f"Expert usage (tokens routed)\n{rec['model']['file']}, backend {rec['runs'][0]['backend']}",
                 fontsize=9, wrap=True)
    fig.tight_layout()
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
    colors = {}
    for p in pts:
        c = colors.setdefault(p["label"].split(":")[0], f"C{len(colors) + 2}")
        ax.plot(p["intensity"], p["gflops"], "*" if p.get("token") else "o", ms=11 if p.get("token") else 7,
                color=c, mfc="none" if "predicted" in p["source"] else c)
        ax.annotate(p["label"], (p["intensity"], p["gflops"]), textcoords="offset points", xytext=(5, 3),
                    fontsize=6, color=c)
    all_pred = bool(pts) and all("predicted" in p["source"] for p in pts)
    from matplotlib.lines import Line2D

    kinds = [Line2D([], [], marker="o", ls="", color="k", mfc="none", label="region (predicted Pi 4)"),
             Line2D([], [], marker="*", ls="", ms=10, color="k", mfc="none", label="whole token (predicted Pi 4)")]
    if not all_pred:
        kinds.append(Line2D([], [], marker="o", ls="", color="k", label="measured on a Pi 4 (filled)"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per weight byte read)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Roofline of a Pi 4 (ceilings from the timing models); " +
                 ("every point is PREDICTED" if all_pred else "hollow = predicted, filled = measured"), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + kinds, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    stem = _stem(compare_rec or bandwidth_rec)
    return _save(fig, out_dir, stem + "-roofline")


# -- headline --------------------------------------------------------------------------------------------

HEADLINE_COLORS = {"cpu": "#1f77b4", "qpu": "#2ca02c", "hybrid": "#9467bd"}
HEADLINE_NAMES = {"cpu": "CPU only", "qpu": "experts on the QPU", "hybrid": "CPU + QPU (hybrid)"}


def plot_headline(rec: dict, out_dir: Path) -> list[Path]:
    """Predicted Pi 4 decode t/s per model and weight mix, one bar per backend, linear axis. Every bar is a
    prediction (the record holds no measurement), so nothing needs telling apart; a model that fits no
    Pi 4 is greyed and says so."""
    rows = rec["rows"]
    backends = [b for b in ("cpu", "qpu", "hybrid") if any(r["tps"].get(b) for r in rows)]
    n = max(1, len(backends))
    height = 0.8 / n
    fig, ax = _subplots(figsize=(9, 1.2 + 0.55 * len(rows) * max(1, n / 2)))
    labels = []
    named: set[str] = set()
    top = max([v for r in rows for v in r["tps"].values() if v] or [1.0])
    for i, r in enumerate(rows):
        fit8 = r["fit"]["fits_cpu"].get("8 GB") or r["fit"]["fits_qpu"].get("8 GB")
        fit4 = r["fit"]["fits_cpu"].get("4 GB") or r["fit"]["fits_qpu"].get("4 GB")
        mix = "Q4_K_M-like" if r["mix"] == "Q4_K_M" else r["mix"]
        where = "fits 4 GB" if fit4 else ("fits 8 GB" if fit8 else "fits NO Pi 4")
        if (fit4 or fit8) and not r["fit"].get("qpu_copy_fits_gpu_va", True):
            where += "; QPU copy > 4 GiB GPU VA"      # the QPU bars are what a full offload would give
        labels.append(f"{r['model']} {mix}\n({where})")
        if not any(r["tps"].get(b) for b in backends):
            ax.text(0, i, "  speed not run (memory columns only)", va="center", fontsize=7, color="#777777")
        for j, b in enumerate(backends):
            v = r["tps"].get(b)
            y = i + (j - (n - 1) / 2) * height
            if not v:
                if any(r["tps"].get(o) for o in backends):
                    ax.text(0, y, f"  {HEADLINE_NAMES[b]}: not run for this row", va="center", fontsize=7,
                            color="#777777")
                continue
            ax.barh(y, v, height=height * 0.95, color=HEADLINE_COLORS[b], alpha=1.0 if fit8 else 0.35,
                    label=HEADLINE_NAMES[b] if b not in named else None)
            named.add(b)
            text = f" {v:.2f}"
            if b != "cpu" and r["tps"].get("cpu"):
                text += f" ({v / r['tps']['cpu']:.2f}x)"
            ax.text(v, y, text, va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)           # first row on top, no bar or note clipped
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("decode tokens/s on a Raspberry Pi 4 — PREDICTED by pimoe's timing models (not measured)")
    ax.set_title("MoE models on a Pi 4: CPU only vs expert FFNs on the VideoCore VI GPU" +
                 (" vs both" if "hybrid" in backends else "") + " (predicted)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_dir, _stem(rec))


def plot_records(paths, out_dir=None) -> list[Path]:
    """Every figure the given records support; returns the files written (PNG and SVG)."""
    recs = [(Path(p), read_record(p)) for p in paths]
    if not recs:
        raise PimoeError("pimoe plot needs at least one record (results/*.json)")
    made: list[Path] = []
    compare_recs = [r for _, r in recs if r["kind"] == "compare"]
    bw_recs = [r for _, r in recs if r["kind"] == "bandwidth"]
    unknown = [str(p) for p, r in recs if r["kind"] not in ("compare", "bandwidth", "headline")]
    if unknown:
        raise PimoeError(f"cannot plot record(s) {', '.join(unknown)}: only 'compare', 'bandwidth' and "
                         f"'headline' records")
    for p, rec in recs:
        out = Path(out_dir) if out_dir else p.parent
        out.mkdir(parents=True, exist_ok=True)
        try:
            if rec["kind"] == "headline":
                made += plot_headline(rec, out)
            elif rec["kind"] == "bandwidth":
                made += plot_bandwidth(rec, out)
                if not compare_recs:
                    made += plot_roofline(None, rec, out)
            else:
                made += plot_breakdown(rec, out)
                made += plot_tokens(rec, out)
                made += plot_experts(rec, out)
                made += plot_offload(rec, out)
                made += plot_roofline(rec, bw_recs[-1] if bw_recs else None, out)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # a hand-edited or truncated record: say which file and what is missing or wrong
            what = f"no field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise PimoeError(f"{p}: a '{rec['kind']}' record pimoe cannot plot ({what})") from None
    return made
