# %% [markdown]
# # CPU vs GPU offload
#
# pimoe runs attention and the router on the ARM CPU and can send the routed experts' FFNs to the QPUs of
# the Pi 4's VideoCore VI GPU (the `qpu` backend). Does that make decoding faster, and where does the
# time go then? This notebook runs the comparison with `pimoe.compare` (the library behind
# `pimoe compare`) and reads its record:
#
# 1. the built-in tiny model on the `cpu` and `qpu` backends: the llama-bench-like table, logits agreement,
#    the per-region time breakdown side by side, and a timeline of one decode token;
# 2. measured tokens/s here and **predicted** Pi 4 tokens/s;
# 3. one layer of the real Qwen3-30B-A3B shape, scaled to its 48 layers: where the bottleneck moves when
#    the experts go to the QPU.
#
# **Read the labels.** No Pi is attached to this machine: the qpu backend's kernels run in pimoe's QPU
# emulator, so its *measured* times here are emulator times (a correctness run, not a speed). Pi 4 times
# are **predictions**: the timing model applied to the emulator's exact instruction and memory counts for
# the QPU, and the Pi 4 CPU model (published bandwidth and FLOP figures) for the CPU regions.
#
# **Not there yet** (as of this run):
#
# * nothing here ran on a Pi: no measured Pi 4 number appears, only predictions and published figures;
# * CPU and QPU never work at the same time in pimoe (the CPU waits for each dispatch), so the predicted
#   times of the two sides add; notebook 3 gives the bound overlapping could reach.

# %%
# %matplotlib inline
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import pimoe
from pimoe import compare
from pimoe.commands.run import default_model_path
from pimoe.records import read_record, write_record

OUT = Path(tempfile.mkdtemp(prefix="pimoe-nb02-"))   # records, traces and models this notebook writes
print("outputs go to", OUT)

# %% [markdown]
# ## 1. The built-in model, cpu vs qpu
#
# For each backend, in this process: load, warm up, then `reps` x (one forward over a 16-token prompt =
# `pp16`, then 8 greedy decode steps = `tg8`), every step under pimoe's profiler. The generated tokens of
# both backends must be the same.

# %%
def compare_and_record(path, **options):
    """compare.compare on cpu and qpu, its record written and read back (everything below reads the record,
    as the plots do); shows the table. Returns (result, record)."""
    t0 = time.perf_counter()
    result = compare.compare(path, backends=("cpu", "qpu"), progress=False, **options)
    print(f"compared in {time.perf_counter() - t0:.1f} s")
    record, table = compare.to_record(result)
    rec = read_record(write_record(record, OUT, "compare", table=table)[0])
    display(Markdown(compare.table_text(rec["table"])))
    return result, rec


MODEL = default_model_path()
result, rec = compare_and_record(MODEL, n_prompt=16, n_gen=8, reps=3)
cpu_run, qpu_run = rec["runs"]
print("agreement:", qpu_run["agreement"])
assert qpu_run["agreement"]["same_tokens"]
assert qpu_run["agreement"]["logits_max_rel_diff"] < 1e-5        # F32 weights: float rounding only

# %% [markdown]
# **Check the profiler's bytes, independently.** The profiler counts, per decode token, the weight bytes
# each region reads (only the experts the router chose). The same number from the file's tensor list:
# every weight matrix (1-D norms are read once at load), `k / E` of each expert tensor, one embedding row.

# %%
from pimoe.gguf_file import GGUFFile

f = GGUFFile(MODEL)
cfg = f.config
want = 0.0
for name, t in f.tensors.items():
    if len(t.shape) < 2:
        continue
    if name == "token_embd.weight":
        want += t.row_bytes + (0 if f.has("output.weight") else t.nbytes)
    elif "_exps" in name:
        want += t.nbytes * cfg.n_experts_used / cfg.n_experts
    else:
        want += t.nbytes
for run in rec["runs"]:
    got = sum(v.get("bytes", 0) for v in run["tg_regions"].values())
    print(f"{run['backend']}: profiler {got:,.0f} weight bytes per decode token, tensor list {want:,.0f}")
    assert abs(got - want) < 1e-6 * want

# %% [markdown]
# ### The QPU's share, predicted from the emulator's counts
#
# The qpu backend runs a layer's routed experts as two dispatches (gate + up + SiLU, then down and the
# weighted sum over the k experts). The Pi 4 time of a dispatch comes from the timing model applied to its
# emulator counts. The kernels never switch threads in their loops, so what they wait for is the loads
# they read back too soon after issuing them: the emulator bins every `ldtmu` by how many instructions
# earlier its load was issued, and the model charges the rest of a memory round trip for the near ones
# (`waits="ldtmu"`; the pipelined block loop issues its loads far enough ahead that almost none wait).
# `pimoe.bench.kernels.bench_expert_layer` does exactly that for one layer's expert step at a given
# shape, on random experts checked against numpy.
#
# To be sure it measures what the model runs, a small subclass of the qpu backend keeps the counters of
# every dispatch of a real decode step (one token from an empty cache), and the two must count the same
# instructions and TMU bytes per layer.

# %%
from gguf import GGMLQuantizationType

from pimoe.backends import register_backend
from pimoe.backends.qpu import QPUBackend
from pimoe.bench.kernels import bench_expert_layer
from pimoe.qpu.timing import PREDICTED_LABEL


class KeepCountersQPU(QPUBackend):
    """The qpu backend, keeping the EmuCounters of every dispatch."""

    name = "qpu-keep-counters"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept = []

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        out = super().expert_ffn(layer, x, expert_ids, expert_weights)
        self.kept.extend(self.runner.counters)
        return out


register_backend("qpu-keep-counters", KeepCountersQPU)


def qpu_experts_per_layer(path, token):
    """Predicted Pi 4 seconds of one layer's routed experts for one decode token, from the kernel benchmark,
    after checking that the model's own decode step dispatches the same work."""
    f = GGUFFile(path)
    c = f.config
    qtype = f.tensors["blk.0.ffn_gate_exps.weight"].qtype
    bench = bench_expert_layer(qtype, c.hidden, c.expert_ff, c.n_experts_used, 1, 8)
    with pimoe.load_model(path, backend="qpu-keep-counters", qpu="emu") as m:
        m.logits([int(token)])
        kept = list(m.backend.kept)
    per_layer = bench["dispatches"]                   # 1: gate/up and down chained in one dispatch per layer
    assert len(kept) == per_layer * c.n_layers
    for layer in range(c.n_layers):
        pair = kept[per_layer * layer: per_layer * (layer + 1)]
        assert sum(k.total_instructions for k in pair) == bench["instructions"]
        assert sum(k.tmu_read_bytes for k in pair) == bench["tmu_read_bytes"]
    print(f"{path.name}: per layer and decode token, {len(kept) // c.n_layers} dispatches, "
          f"{bench['instructions']:,} QPU instructions ({bench['instructions_per_weight']:.2f} per weight), "
          f"{bench['tmu_read_bytes']:,} TMU bytes -- the same in the model's decode step and in the benchmark")
    print(f"{bench['predicted']['label']}: {bench['predicted']['seconds'] * 1e3:.3f} ms per layer, bounds "
          f"{bench['predicted']['bounds']}, {bench['predicted']['read_GBps']:.2f} GB/s read")
    return bench["predicted"]["seconds"], bench


def has_qpu_dispatches(run):
    return any(v.get("qpu_dispatches") for v in run["tg_regions"].values()) and bool(run.get("tg_predicted"))


tiny_layer_s, _ = qpu_experts_per_layer(MODEL, result.prompt[0])
tiny_qpu_s = tiny_layer_s * cfg.n_layers
if has_qpu_dispatches(qpu_run):
    rec_s = qpu_run["tg_predicted"]["tg/forward/layer/experts"]
    print(f"the compare record's prediction for the experts: {rec_s * 1e3:.3f} ms per step, the benchmark's "
          f"{tiny_qpu_s * 1e3:.3f} ms")
    if abs(rec_s / tiny_qpu_s - 1) > 0.01:
        print("NOTE: they differ by more than 1 % (both predict with the measured ldtmu waits, so the counts "
              "must differ). The benchmark's figure is used below.")
else:
    print("NOTE: the qpu backend does not report its dispatches to pimoe's profiler yet, so the compare record "
          "has no Pi 4 prediction for the qpu run. Below, its experts take the benchmark's prediction, and its "
          "CPU regions the cpu run's prediction (same regions, same weight bytes).")

# %% [markdown]
# ### Where the time goes, per decode token
#
# Left: measured on this machine. Right: predicted for a Pi 4. Regions are the model's own
# (`forward > embedding, layer > (attention, router, experts), output_head`, then `sampling`).

# %%
PARTS = ["embedding", "attention", "router", "experts", "output_head", "sampling"]
COLORS = dict(zip(PARTS + ["other"], ["#8c564b", "#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#7f7f7f", "#c7c7c7"]))


def seconds_by_part(regions):
    """{part: seconds per decode token} from a per-step summary {path: {seconds}} or prediction {path: s}."""
    sec = lambda v: v if isinstance(v, (int, float)) else v["seconds"]   # noqa: E731
    out = {p: 0.0 for p in PARTS}
    for path, v in regions.items():
        name = path.split("/")[-1]
        if name in out and path.count("/") <= 3:
            out[name] += sec(v)
    out["other"] = max(sec(regions["tg"]) - sum(out.values()), 0.0)
    return out


def pi4_parts(cpu_run, qpu_run, qpu_experts_s):
    """{backend: {part: predicted Pi 4 seconds per decode step}} for the cpu and qpu runs of a record: the
    qpu run's experts take qpu_experts_s, its CPU regions the cpu run's prediction (checked: same bytes)."""
    out = {"cpu": seconds_by_part(cpu_run["tg_predicted"])}
    for region in ("tg/forward/layer/attention", "tg/forward/layer/router", "tg/forward/output_head"):
        assert qpu_run["tg_regions"][region]["bytes"] == cpu_run["tg_regions"][region]["bytes"]
    out["qpu"] = dict(out["cpu"], experts=qpu_experts_s)
    return out


def breakdown_figure(runs, predicted, title):
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.6 + 0.6 * len(runs)), squeeze=False)
    for ax, kind in zip(axes[0], ("measured on this machine", "Pi 4, PREDICTED")):
        for i, run in enumerate(runs):
            parts = seconds_by_part(run["tg_regions"]) if kind.startswith("measured") else predicted[run["backend"]]
            left = 0.0
            for part, s in parts.items():
                ax.barh(i, s * 1e3, left=left, color=COLORS[part], edgecolor="white",
                        label=part if i == 0 else None, hatch="//" if "PRED" in kind else None)
                left += s * 1e3
            ax.text(left, i, f" {left:.3g} ms", va="center", fontsize=8)
        ax.set_yticks(range(len(runs)), [compare.backend_label(r["backend"], r["driver"]) if kind.startswith("measured")
                                         else f"{r['backend']} (Pi 4)" for r in runs])
        ax.set_xlabel("ms per decode token")
        ax.set_title(kind, fontsize=9)
        ax.margins(x=0.2)
    axes[0][0].legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(1.1, -0.3))
    fig.suptitle(title, fontsize=10, y=1.02)
    plt.show()


tiny_pred = pi4_parts(cpu_run, qpu_run, tiny_qpu_s)
breakdown_figure(rec["runs"], tiny_pred, f"{rec['model']['file']}: per-region time of one decode token")
for run in rec["runs"]:
    parts = seconds_by_part(run["tg_regions"])
    assert abs(sum(parts.values()) - run["tg_regions"]["tg"]["seconds"]) < 1e-9 + 1e-6 * parts["experts"]

# %% [markdown]
# ### A timeline of one decode token
#
# The profiler also exports Chrome/Perfetto trace events (`Profiler.write_trace`; open the file in
# ui.perfetto.dev). Here the trace files are read back and the first decode step of each backend drawn,
# one row per nesting depth.

# %%
traces = {}
for run in result.runs:
    path = run.profiler.write_trace(OUT / f"trace-{run.backend}.json")
    data = json.loads(Path(path).read_text())
    traces[run.backend] = data["traceEvents"] if isinstance(data, dict) else data
print("traces:", [p.name for p in OUT.glob("trace-*.json")])

fig, axes = plt.subplots(len(traces), 1, figsize=(12, 1.0 + 1.0 * len(traces)), squeeze=False)
for ax, (backend, events) in zip(axes[:, 0], traces.items()):
    spans = [e for e in events if e.get("ph") == "X"]
    step = next(e for e in spans if e["name"] == "tg")                 # the first decode step
    t0, t1 = step["ts"], step["ts"] + step["dur"]
    inside = [e for e in spans if t0 <= e["ts"] and e["ts"] + e["dur"] <= t1]
    depth = {}
    for e in sorted(inside, key=lambda e: (e["ts"], -e["dur"])):
        d = sum(1 for o in inside if o is not e and o["ts"] <= e["ts"] and e["ts"] + e["dur"] <= o["ts"] + o["dur"])
        depth[id(e)] = d
        ax.barh(-d, e["dur"] / 1e3, left=(e["ts"] - t0) / 1e3, color=COLORS.get(e["name"], "#dddddd"),
                edgecolor="k", lw=0.3)
        if e["dur"] > 0.06 * step["dur"]:
            ax.text((e["ts"] - t0 + e["dur"] / 2) / 1e3, -d, e["name"], ha="center", va="center", fontsize=7)
    ax.set_yticks([])
    ax.set_ylabel(backend, rotation=0, ha="right", va="center")
    ax.set_xlim(0, step["dur"] / 1e3)
axes[-1, 0].set_xlabel("ms since the start of the decode step (measured here)")
fig.suptitle("one decode token, nested regions (top row = the step)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Tokens/s: measured here, predicted for a Pi 4
#
# On the tiny model both are meaningless as speeds of a real model: here the CPU time is Python's
# per-layer work and the qpu time the emulator's; on the Pi 4 the prediction is a few hundred kB per token
# at the published bandwidth. The real shapes follow in section 3.

# %%
rows = [r for r in rec["table"] if str(r["test"]).startswith("tg")]
for r in rows:
    print(f"{r['backend']:16s} {r['test']:12s} {r['tps_mean']:10.2f} tokens/s  [{r['source']}]")
for r in rows:
    if r["source"] == "predicted":
        assert abs(r["GBps"] - r["bytes_per_token"] * r["tps_mean"] / 1e9) < 1e-9
for backend, parts in tiny_pred.items():
    print(f"{backend + ' (Pi 4)':16s} {'tg, 1 step':12s} {1 / sum(parts.values()):10.2f} tokens/s  "
          f"[predicted: the sum of the predicted regions above]")

# %% [markdown]
# ## 3. The real shape: Qwen3-30B-A3B, one layer, scaled to 48
#
# A synthetic model with Qwen3-30B-A3B's published shape (hidden 2048, 32/4 heads of 128, expert FFN 768,
# top-8, vocabulary 151936) and Q4_K weights, with **one** layer, and with 16 experts instead of 128 so the
# file stays small: a token still runs 8 experts of the real size, so its work and bytes per layer are
# the real model's (only which experts exist to choose from differs). `compare(..., shape=...)` scales the
# per-layer part of each token to the 48 layers. The qpu backend's QPU work runs in the emulator, so this
# takes about half a minute.

# %%
from pimoe.synth import make_model

shape_path = make_model(OUT / "qwen3-30b-a3b-shape-1L-16E-Q4_K.gguf", preset="qwen3-30b-a3b", qtype="Q4_K",
                        n_layers=1, n_experts=16)
with contextlib.redirect_stderr(io.StringIO()):      # the emulator's progress bars would fill the page
    big, big_rec = compare_and_record(shape_path, n_prompt=2, n_gen=2, reps=1, shape="qwen3-30b-a3b")
b_cpu, b_qpu = big_rec["runs"]
print("agreement:", b_qpu["agreement"])
# Q4_K: the cpu backend quantizes activations to Q8_K like llama.cpp; the QPU kernels keep them f32
assert b_qpu["agreement"]["logits_max_rel_diff"] < 0.05
assert b_cpu["scaled"]["layers_full"] == 48

# %% [markdown]
# ### The QPU's share at the real shape
#
# The same prediction as in section 1 (kernel benchmark, checked against the model's own dispatches), now
# with experts of the real size (Q4_K blocks unpacked by the kernel).

# %%
with contextlib.redirect_stderr(io.StringIO()):
    qpu_expert_s, big_bench = qpu_experts_per_layer(shape_path, big.prompt[0])
print(f"the cpu backend's experts, same layer: {b_cpu['tg_predicted']['tg/forward/layer/experts'] * 1e3:.2f} ms "
      f"predicted (Pi 4 CPU model)")
if has_qpu_dispatches(b_qpu):
    rec_s = b_qpu["tg_predicted"]["tg/forward/layer/experts"]
    print(f"the compare record's prediction for the qpu experts (its dispatches' ldtmu waits measured): {rec_s * 1e3:.2f} ms; "
          f"the benchmark's (the same), used below: {qpu_expert_s * 1e3:.2f} ms")

# %% [markdown]
# ### Where the bottleneck moves
#
# Predicted Pi 4 time of one decode token of the full 48-layer model, by region: the fixed parts
# (embedding row, output head, sampling) once, the per-layer parts x 48. On the cpu backend everything is
# CPU time at the published decode bandwidth; on the qpu backend the experts are the QPU's predicted time
# and everything else stays on the CPU. pimoe runs the two one after the other (the CPU waits for the
# QPU), so the times add.

# %%
L_full = b_cpu["scaled"]["layers_full"]
L_run = b_cpu["scaled"]["layers_run"]
full = {}
for backend, parts in pi4_parts(b_cpu, b_qpu, qpu_expert_s).items():
    full[backend] = {p: s * (L_full / L_run if p in ("attention", "router", "experts") else 1.0)
                     for p, s in parts.items()}
for backend, parts in full.items():
    total = sum(parts.values())
    print(f"{backend}: {PREDICTED_LABEL.replace('QPU ', '')} {total * 1e3:7.1f} ms per token = {1 / total:5.2f} "
          f"tokens/s; " + ", ".join(f"{p} {s / total:.0%}" for p, s in parts.items() if s > 0.005 * total))

fig, ax = plt.subplots(figsize=(11, 2.4))
for i, (backend, parts) in enumerate(full.items()):
    left = 0.0
    for part, s in parts.items():
        ax.barh(i, s * 1e3, left=left, color=COLORS[part], edgecolor="white", label=part if i == 0 else None)
        if s > 0.08 * sum(parts.values()):
            ax.text(left + s * 5e2, i, f"{part}\n{s * 1e3:.0f} ms", ha="center", va="center", fontsize=7,
                    bbox=dict(facecolor="white", alpha=0.7, lw=0))
        left += s * 1e3
    ax.text(left, i, f" {left:.0f} ms = {1e3 / left:.2f} tok/s", va="center", fontsize=8)
ax.set_yticks([0, 1], ["cpu (Pi 4 CPU)", "qpu (experts on the QPU)"])
ax.set_xlabel("ms per decode token, Qwen3-30B-A3B shape, Q4_K, 48 layers -- PREDICTED Pi 4")
ax.margins(x=0.25)
ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.4))
plt.show()

cpu_total, qpu_total = (sum(p.values()) for p in full.values())
cpu_bottleneck = max(full["cpu"], key=full["cpu"].get)
qpu_bottleneck = max(full["qpu"], key=full["qpu"].get)
print(f"largest part: cpu backend '{cpu_bottleneck}', qpu backend '{qpu_bottleneck}'")
print(f"predicted speed-up from offloading the experts: {cpu_total / qpu_total:.2f}x")
expert_bytes = b_cpu["tg_regions"]["tg/forward/layer/experts"]["bytes"]      # per layer run, per token
print(f"expert weights per layer {expert_bytes / 1e6:.1f} MB: CPU {expert_bytes / b_cpu['tg_predicted']['tg/forward/layer/experts'] / 1e9:.2f} GB/s "
      f"(published decode bandwidth), QPU kernels {expert_bytes / qpu_expert_s / 1e9:.2f} GB/s (predicted)")
floor = sum(s for p, s in full["qpu"].items() if p != "experts")
print(f"what stays on the CPU (attention, router, output head, ...) takes {floor * 1e3:.0f} ms per token: even "
      f"free experts would give at most {1 / floor:.2f} tokens/s")
assert cpu_total > 0 and qpu_total > floor

# %% [markdown]
# What to read from this: on the cpu backend the routed experts are the largest part of a token (most of
# its bytes, notebook 1). Moving them to the QPU changes their cost from "bytes at the CPU's bandwidth" to
# whatever the QPU kernel achieves -- printed above, with the timing model's bound for each dispatch
# (`memory` means it streams at the model's DRAM ceiling, `latency`/`issue` that the kernel, not the
# memory, is the limit). What is left on the CPU -- attention and above all the 151936-row output head --
# then sets a floor that offloading cannot move. Running CPU and QPU at the same time (attention of the
# next layer while the QPU works) is not implemented; notebook 3 gives the bound it could reach.
#
# ### The library's figures from the records
#
# `pimoe plot` draws the standard figures from these records (`pimoe.plots.plot_records` from Python).

# %%
from IPython.display import Image

from pimoe import plots

made = plots.plot_records([OUT / rec["record_file"], OUT / big_rec["record_file"]], out_dir=OUT)
pngs = [p for p in made if p.suffix == ".png"]
print([p.name for p in pngs])
assert pngs
for p in pngs:
    if p.name.startswith(Path(big_rec["record_file"]).stem) and ("tokens" in p.name or "experts" in p.name):
        display(Image(filename=str(p)))
shape_path.unlink()        # the 400 MB model file; the records and figures stay in OUT

# %% [markdown]
# ## Conclusion, and why these figures differ from the README's
#
# The question: does running the expert FFNs on the Pi 4's GPU make decode faster? The README quotes the
# same comparison for the same shape from a committed record made by `pimoe compare --shape qwen3-30b-a3b
# --layers 2`: **2 layers with all 128 experts**, while this notebook runs **1 layer with 16 experts** (to
# stay small) and on today's kernels. The cell below reads that record and puts the two side by side, part
# by part, per layer, so the difference is accounted for rather than left to guess.

# %%
readme_rec = read_record(Path("..") / "results" / "compare-20261128-180445.json")   # the README's Q4_K record
r_cpu, r_qpu = readme_rec["runs"][:2]
R_run = r_cpu["scaled"]["layers_run"]
readme_parts = {"cpu": seconds_by_part(r_cpu["tg_predicted"]), "qpu": seconds_by_part(r_qpu["tg_predicted"])}
n_exp_readme = readme_rec["environment"]["model"]["shape"]["n_experts"]
n_exp_here = big_rec["environment"]["model"]["shape"]["n_experts"]
print(f"this notebook: Qwen3-30B-A3B shape, Q4_K, {L_run} layer with {n_exp_here} experts, scaled to {L_full}: "
      f"CPU-only {1 / cpu_total:.2f} tokens/s, experts on the QPU {1 / qpu_total:.2f} ({cpu_total / qpu_total:.2f}x), "
      f"{PREDICTED_LABEL.replace('QPU ', '')}")
print(f"README: {readme_rec['record_file']}, {R_run} layers with {n_exp_readme} experts, git "
      f"{(readme_rec['environment']['git']['commit'] or '?')[:7]}: CPU-only {r_cpu['scaled']['predicted_tps']:.2f}, "
      f"QPU {r_qpu['scaled']['predicted_tps']:.2f} tokens/s "
      f"({r_qpu['scaled']['predicted_tps'] / r_cpu['scaled']['predicted_tps']:.2f}x)\n")
print(f"{'per layer, predicted ms':24s} {'this notebook':>14s} {'README record':>14s}")
per_layer = ("attention", "router", "experts")
for backend in ("cpu", "qpu"):
    for part in per_layer:
        here = full[backend][part] / L_full * 1e3
        there = readme_parts[backend][part] / R_run * 1e3
        print(f"{backend + ' ' + part:24s} {here:14.3f} {there:14.3f}")
router_ms = (readme_parts["cpu"]["router"] / R_run - full["cpu"]["router"] / L_full) * L_full * 1e3
cpu_gap_ms = (1 / r_cpu["scaled"]["predicted_tps"] - cpu_total) * 1e3
qpu_gap_ms = (1 / r_qpu["scaled"]["predicted_tps"] - qpu_total) * 1e3
experts_ms = (readme_parts["qpu"]["experts"] / R_run - full["qpu"]["experts"] / L_full) * L_full * 1e3
print(f"\nwhy: the router is an f32 matrix of n_experts x hidden, {n_exp_readme // n_exp_here}x smaller with "
      f"{n_exp_here} experts: {router_ms:.1f} ms per token over {L_full} layers, of the CPU-only gap of "
      f"{cpu_gap_ms:.1f} ms between the two. Of the QPU column's gap ({qpu_gap_ms:.1f} ms) the router is the "
      f"same {router_ms:.1f} ms and the expert kernels {experts_ms:.1f} ms: they changed since the README's "
      f"record (one dispatch per layer, f16 block scales: README, 'Since then'), and this notebook charges "
      f"them the kernel benchmark's prediction.")
assert n_exp_readme > n_exp_here and router_ms > 0
print(f"\nAnswer: for Qwen3-30B-A3B in Q4_K the GPU helps only a little ({cpu_total / qpu_total:.2f}x predicted here); "
      f"what stays on the CPU ({floor * 1e3:.0f} ms per token) caps any offload at {1 / floor:.2f} tokens/s. "
      f"For the models a Pi 4 can hold, see the README's headline table (`pimoe headline`).")
