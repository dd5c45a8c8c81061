# %% [markdown]
# # Memory bandwidth: the ceiling on decode speed
#
# Generating one token at a time multiplies every active weight by one vector: each weight byte is used
# for about two floating-point operations and never again. That is far below what either processor can
# compute per byte, so **decode speed = memory bandwidth / bytes read per token** (notebook 1 counted the
# bytes). This notebook measures and predicts the bandwidth side:
#
# 1. the CPU microbenchmarks (read, copy, triad) over sizes and threads -- **measured on this machine**,
#    which is not a Pi; the Pi 4's CPU figures are published measurements, shown beside them;
# 2. the QPU streaming kernels (summation, memcpy, memset) run in pimoe's emulator, checked against
#    numpy, with the Pi 4 time **predicted** by the timing model from the emulator's counts;
# 3. CPU and QPU at once: with no Pi here, only an upper bound;
# 4. a roofline: why every decode matmul sits on the bandwidth slope, for every weight format;
# 5. the decode ceilings this implies for Qwen3-30B-A3B and OLMoE-1B-7B on a Pi 4, CPU alone and with the
#    experts streamed by the QPU.
#
# Results are written as a `bandwidth` record (JSON + CSV) in a new temporary directory, and the figures
# are drawn from that record. Runs in about a minute.

# %%
# %matplotlib inline
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from pimoe import pi4, prediction
from pimoe.bench import bandwidth
from pimoe.records import environment, read_record, write_record

OUT = Path(tempfile.mkdtemp(prefix="pimoe-nb03-"))
print("outputs go to", OUT)
env = environment()
print(f"this machine: {env['cpu']}, {env['cpu_count']} CPUs, load average {env['load_average'][0]:.2f} "
      f"(other work on the machine lowers the multi-thread figures)")

# %% [markdown]
# ## 1. CPU: read, copy, triad over sizes and threads (measured here)
#
# `pimoe.bench.bandwidth.cpu_bandwidth` runs compiled (numba) loops that touch every byte once: `read` sums an
# array (bytes = n), `copy` writes it to another (2n, the STREAM convention), `triad` computes
# `a = b + s*c` (3n). Small sizes live in the caches, large ones measure DRAM. Each point is the median of
# a few timings of at least 20 ms. This machine is shared (see the load average above): figures with more
# threads than idle cores are unreliable here, one more reason the Pi 4 side below uses only published
# measurements and predictions.

# %%
SIZES = (1 << 16, 1 << 20, 1 << 24, 1 << 26)          # 64 KiB .. 64 MiB per array
THREADS = sorted({1, env["cpu_count"] or 1})
t0 = time.perf_counter()
load_before = os.getloadavg()[0]
cpu_rows = bandwidth.cpu_bandwidth(SIZES, THREADS, ("read", "copy", "triad"), reps=3, progress=False)
LOAD = max(load_before, os.getloadavg()[0])            # the 1-minute load average around the measurement
print(f"{len(cpu_rows)} CPU points in {time.perf_counter() - t0:.1f} s")
print(bandwidth.table_text(cpu_rows))
# Say in the output what these figures are when the machine was busy (a shared 2-core CI box often is):
# with the load average above the idle cores, a multi-thread point measures the CPU time the other
# processes left over, not this machine's memory bandwidth.
BUSY = LOAD > (env["cpu_count"] or 1) - max(THREADS) + 0.5
top = [r for r in cpu_rows if r["bytes"] == SIZES[-1] and r["threads"] == max(THREADS)]
if BUSY:
    print(f"\nNOTE: measured UNDER LOAD (1-min load average {LOAD:.1f} on {env['cpu_count']} CPUs): the "
          f"{max(THREADS)}-thread figures at {SIZES[-1] >> 20} MiB ("
          + ", ".join(f"{r['kernel']} {r['GBps']:.2f}" for r in top) +
          " GB/s) are what other processes left of the CPUs, not this machine's DRAM bandwidth; re-run on an "
          "idle machine for those. The 1-thread figures are less affected, and nothing below about the Pi 4 "
          "uses either (its CPU figures are published measurements).")
else:
    print(f"\nmeasured on an idle machine (1-min load average {LOAD:.1f} on {env['cpu_count']} CPUs)")

MOVED = {"read": 1, "copy": 2, "triad": 3}
for r in cpu_rows:
    assert r["source"] == "measured" and r["bytes_moved"] == MOVED[r["kernel"]] * r["bytes"]
    assert abs(r["GBps"] - r["bytes_moved"] / r["seconds"] / 1e9) < 1e-9 * r["GBps"] + 1e-12

# %% [markdown]
# **Check, independently**: numpy's own copy (`np.copyto`, not pimoe's kernel) of the largest array,
# timed here. The two should agree within the noise of a shared machine (a factor of a few).

# %%
big = SIZES[-1]
src = np.ones(big // 4, np.float32)
dst = np.empty_like(src)
np.copyto(dst, src)
times = []
for _ in range(5):
    t0 = time.perf_counter()
    np.copyto(dst, src)
    times.append(time.perf_counter() - t0)
numpy_copy = 2 * big / min(times) / 1e9
pimoe_copy = max(r["GBps_best"] for r in cpu_rows if r["kernel"] == "copy" and r["bytes"] == big)
print(f"copy {big >> 20} MiB: numpy {numpy_copy:.1f} GB/s, pimoe's kernel {pimoe_copy:.1f} GB/s (best of each)")
assert 0.1 < pimoe_copy / numpy_copy < 10

# %% [markdown]
# ## 2. QPU: the streaming kernels in the emulator, Pi 4 time predicted
#
# `pimoe.bench.bandwidth.qpu_bandwidth` runs `qpu_kernels/summation.py` (read), `memcpy.py` (copy) and `memset.py`
# (write); each run is checked against numpy inside the kernel's `run`. With no GPU here the time is the
# timing model's **prediction** for a Pi 4 from the emulator's exact counts (`source: predicted`). The
# summation also runs on 1..8 QPUs and with 2 and 4 threads per QPU (16, 32 batches): threads are how a
# QPU hides memory latency.

# %%
QPU_SIZES = (1 << 16, 1 << 20, 1 << 22)
t0 = time.perf_counter()
qpu_rows = bandwidth.qpu_bandwidth(QPU_SIZES, progress=False)
sweep = []
for threads in (1, 2, 4, 8, 16, 32):
    sweep += bandwidth.qpu_bandwidth((1 << 22,), kernels=("summation",), threads=threads, progress=False)
print(f"{len(qpu_rows) + len(sweep)} emulated QPU runs in {time.perf_counter() - t0:.1f} s")
print(bandwidth.table_text(qpu_rows + sweep))
for r in sweep:
    print(f"summation 4 MiB, {r['threads']:2d} threads: {r['GBps']:.2f} GB/s predicted, bound by {r['bound']}")

for r in qpu_rows + sweep:
    assert r["source"] == "predicted" and r["prediction"]["label"].startswith("predicted")
    assert abs(r["GBps"] - r["bytes_moved"] / r["seconds"] / 1e9) < 1e-9
    assert r["counters"]["tmu_read_bytes"] >= (r["bytes"] if r["kernel"] != "memset" else 0)
best_read = max(r["GBps"] for r in sweep)
# the timing model's read bandwidth was fitted to py-videocore6's published summation, 7241 MB/s on a Pi 4
# (pimoe.pi4): this checks that fit through our own kernel, it is not an independent validation
published_read = pi4.PYVC6_SUMMATION_BANDWIDTH / 1e9
print(f"best predicted streaming read: {best_read:.2f} GB/s; published py-videocore6 summation: "
      f"{published_read:.2f} GB/s")
assert abs(best_read / published_read - 1) < 0.25

# %% [markdown]
# ## 3. CPU and QPU at once
#
# Both processors share one LPDDR4 interface (12.8 GB/s on paper). On a Pi 4 `concurrent_bandwidth`
# runs a CPU read loop while the QPU sums and measures both. Here there is no QPU, so the contention
# cannot be measured: what it returns is only an **upper bound**, the sum of the two alone, capped by the
# DRAM's paper figure.

# %%
both_rows = bandwidth.concurrent_bandwidth(cpu_rows, sweep)
for r in both_rows:
    print(f"{r['device']} {r['kernel']}: <= {r['GBps']:.2f} GB/s ({r['source']}: {r['bound']})")
    assert r["source"] == "bound" and r["GBps"] <= pi4.DRAM_PEAK_BANDWIDTH / 1e9

# %% [markdown]
# ### The record, and the figures drawn from it

# %%
record = {"kind": "bandwidth", "environment": env, "cpu": cpu_rows, "qpu": qpu_rows + sweep,
          "concurrent": both_rows, "pi4_ceilings": prediction.pi4_ceilings(),
          "settings": {"sizes": list(SIZES), "qpu_sizes": list(QPU_SIZES), "threads": THREADS, "reps": 3}}
rec_path, csv_path = write_record(record, OUT, "bandwidth", table=cpu_rows + qpu_rows + sweep + both_rows)
rec = read_record(rec_path)
print("record:", rec_path.name, "+", csv_path.name)
ceil = rec["pi4_ceilings"]

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
ax = axes[0]
colors = {"read": "tab:blue", "copy": "tab:orange", "triad": "tab:green"}
for kernel in colors:
    for t in THREADS:
        pts = [(r["bytes"], r["GBps"]) for r in rec["cpu"] if r["kernel"] == kernel and r["threads"] == t]
        ax.plot(*zip(*pts), "o-" if t == 1 else "s--", color=colors[kernel], label=f"{kernel}, {t} thread(s)")
ax.set_xscale("log", base=2)
ax.set_xlabel("bytes per array")
ax.set_ylabel("GB/s")
ax.set_title(f"CPU, MEASURED on this machine ({env['cpu'][:40]})" +
             (f"\nunder load {LOAD:.1f} on {env['cpu_count']} CPUs: multi-thread points understate it" if BUSY
              else ""), fontsize=9)
ax.legend(fontsize=7)
ax.grid(alpha=0.3)

ax = axes[1]
markers = {"summation": "o", "memcpy": "s", "memset": "^"}
for kernel, m in markers.items():
    pts = [(r["bytes"], r["GBps"]) for r in rec["qpu"] if r["kernel"] == kernel and r.get("threads") == 8]
    ax.plot(*zip(*pts), m + "--", mfc="none", label=f"QPU {kernel}, 8 QPUs (predicted)")
multi = [r for r in rec["qpu"] if r["kernel"] == "summation" and r["threads"] in (16, 32)]
for r in multi:
    ax.plot(r["bytes"], r["GBps"], "o", mfc="none", ms=9, color="k")
ax.annotate("summation, 8 QPUs x " + " / ".join(f"{r['threads'] // 8} threads: {r['GBps']:.2f}" for r in multi),
            (multi[0]["bytes"], multi[0]["GBps"]), xytext=(-250, 8), textcoords="offset points", fontsize=7)
for y, what, style in ((ceil["dram_peak_GBps"], "DRAM on paper", "r:"),
                       (ceil["cpu_stream_copy_GBps"], "CPU STREAM copy, 1 thread (published)", "b-."),
                       (ceil["cpu_decode_GBps"], "CPU LLM decode, implied (published)", "b:")):
    ax.axhline(y, color=style[0], ls=style[1:], lw=1)
    ax.text(QPU_SIZES[0], y, f" {what}: {y:.2f}", fontsize=7, va="bottom", color=style[0])
for r in rec["concurrent"]:
    ax.axhline(r["GBps"], color="purple", lw=1, ls="--")
    ax.text(QPU_SIZES[0], r["GBps"], f" CPU+QPU upper bound: {r['GBps']:.2f}", fontsize=7, va="bottom",
            color="purple")
ax.set_xscale("log", base=2)
ax.set_ylim(0, ceil["dram_peak_GBps"] * 1.1)
ax.set_xlabel("bytes per kernel run")
ax.set_ylabel("GB/s")
ax.set_title("Pi 4: QPU PREDICTED (timing model), CPU published", fontsize=9)
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.55, 0.88))
plt.tight_layout()
plt.show()

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot([r["threads"] for r in sweep], [r["GBps"] for r in sweep], "o--", mfc="none")
for r in sweep:
    ax.annotate(r["bound"], (r["threads"], r["GBps"]), xytext=(3, -11), textcoords="offset points", fontsize=7)
ax.axhline(ceil["qpu_read_GBps"], color="g", ls=":", label=f"model's read ceiling {ceil['qpu_read_GBps']:.2f}")
ax.set_xscale("log", base=2)
ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "8x2", "8x4"])
ax.set_xlabel("QPU threads (QPUs x threads per QPU)")
ax.set_ylabel("GB/s, predicted")
ax.set_title("QPU summation, 4 MiB: bandwidth vs threads (predicted Pi 4)", fontsize=9)
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Roofline: every decode matmul is on the bandwidth slope
#
# A matrix-vector product does 2 FLOPs per weight. Per **byte** that is `2 / bytes-per-weight`: 0.5 for
# F32, 1.9 for Q8_0, 3.6 for Q4_K. The ridge point of a processor (peak FLOP/s / bandwidth) is where it
# stops being memory bound. The CPU's ridge is right of every weight format at batch 1; the QPU's is right
# of all but the 2-bit Q2_K. And the QPU's "peak" counts only the multiply and the add: a kernel that must
# unpack quantized weights with integer ops first spends extra instructions per weight, which moves its
# real ridge to the left. Ceilings from the record (`pi4_ceilings`: the timing model's QPU parameters, the
# CPU model's published figures; the CPU's fp32 peak is an assumption stated in `pimoe/cpumodel.py`).

# %%
import gguf

FORMATS = ["F32", "F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0", "Q2_K"]
intensity = {}
for name in FORMATS:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    intensity[name] = 2 * block / size                  # FLOPs per weight byte for a matrix-vector product
assert intensity["F32"] == 0.5 and abs(intensity["Q8_0"] - 2 * 32 / 34) < 1e-12

ridge_cpu = ceil["cpu_fp32_GFLOPS"] / ceil["cpu_decode_GBps"]
ridge_qpu = ceil["qpu_peak_GFLOPS"] / ceil["qpu_read_GBps"]
print(f"ridge points: CPU {ridge_cpu:.1f} FLOP/byte, QPU {ridge_qpu:.1f} FLOP/byte")
for name, i in intensity.items():
    print(f"  {name:5s} {i:5.2f} FLOP/byte -> CPU at most {min(i * ceil['cpu_decode_GBps'], ceil['cpu_fp32_GFLOPS']):5.1f} "
          f"GFLOP/s, QPU at most {min(i * ceil['qpu_read_GBps'], ceil['qpu_peak_GFLOPS']):5.1f} GFLOP/s")
assert all(i < ridge_cpu for i in intensity.values())                  # CPU: memory bound for every format
beyond = [name for name, i in intensity.items() if i >= ridge_qpu]
print("formats past the QPU's ridge (compute bound there even at peak):", beyond)
assert beyond == ["Q2_K"]

# %% [markdown]
# **The qpu backend's kernels on the roofline.** `pimoe.bench.kernels.bench_gemv` runs one of the qpu
# backend's GEMV kernels in the emulator on an expert matrix of Qwen3-30B-A3B's shape (768 x 2048, gate/up),
# checks it against numpy, and predicts its Pi 4 time. Its intensity is the FLOPs over the bytes the kernel
# really reads: the backend's QPU layout stores each format with its own bits per weight (printed), which
# is not always the file's. With 4 tokens sharing the weights (a prompt), each byte feeds 4x the FLOPs.

# %%
from pimoe.bench.kernels import bench_gemv

kernel_pts = []
for name in ("F32", "Q8_0", "Q4_K"):
    for tokens in (1, 4):
        r = bench_gemv(gguf.GGMLQuantizationType[name], 768, 2048, tokens, 8)
        flops = 2 * 768 * 2048 * tokens
        pred = r["predicted"]
        kernel_pts.append(dict(type=name, tokens=tokens, intensity=flops / r["tmu_read_bytes"],
                               gflops=flops / pred["seconds"] / 1e9, bound=pred["bound"],
                               layout_bits=r["layout_bits_per_weight"], instr_per_weight=r["instructions_per_weight"]))
        assert r["max_rel_error"] < 1e-5 and pred["label"].startswith("predicted")
for k in kernel_pts:
    print(f"gemv {k['type']:5s} x{k['tokens']} token(s): layout {k['layout_bits']:4.1f} bits/weight, "
          f"{k['instr_per_weight']:.2f} instructions/weight, {k['intensity']:5.2f} FLOP/byte read, "
          f"{k['gflops']:5.2f} GFLOP/s predicted ({k['bound']} bound)")
    roof = min(k["intensity"] * ceil["qpu_read_GBps"], ceil["qpu_peak_GFLOPS"])
    assert k["gflops"] <= roof * 1.001                       # nothing predicted above the model's own roof

# %%
x = np.logspace(-1.5, 2, 300)
fig, ax = plt.subplots(figsize=(12, 4.8))
ax.plot(x, np.minimum(x * ceil["cpu_decode_GBps"], ceil["cpu_fp32_GFLOPS"]), color="tab:blue", lw=2,
        label=f"Pi 4 CPU: {ceil['cpu_decode_GBps']} GB/s (decode, published), {ceil['cpu_fp32_GFLOPS']} GFLOP/s")
ax.plot(x, np.minimum(x * ceil["qpu_read_GBps"], ceil["qpu_peak_GFLOPS"]), color="tab:green", lw=2,
        label=f"Pi 4 QPU: {ceil['qpu_read_GBps']:.2f} GB/s (model), {ceil['qpu_peak_GFLOPS']} GFLOP/s")
ax.plot(x, x * ceil["dram_peak_GBps"], "r:", lw=1, label=f"DRAM on paper, {ceil['dram_peak_GBps']} GB/s")
for i in sorted(set(intensity.values())):
    names = "/".join(n for n, v in intensity.items() if v == i)       # Q4_K and Q4_0 share 4.5 bits/weight
    ax.axvline(i, color="gray", lw=0.6, ls="--")
    ax.text(i, 0.06, names, rotation=90, fontsize=7, va="bottom", ha="right", color="gray")
summ = max(sweep, key=lambda r: r["GBps"])
ax.plot(0.25, summ["GBps"] / 4, "o", mfc="none", color="tab:green", ms=8,
        label=f"QPU summation, {summ['threads']} threads (predicted; 1 int add per 4 bytes)")
for k, m in zip(kernel_pts, ["s", "D", "^", "v", "p", "h"]):
    ax.plot(k["intensity"], k["gflops"], m, mfc="none", color="tab:red" if k["tokens"] == 1 else "tab:purple",
            ms=7, label=f"qpu gemv {k['type']} x{k['tokens']} tok (predicted)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_ylim(0.05, 60)
ax.set_xlabel("arithmetic intensity (FLOP per weight byte)")
ax.set_ylabel("GFLOP/s")
ax.set_title("Roofline: dashed lines = weight formats at batch 1 (file bytes); points = kernels, predicted Pi 4",
             fontsize=9)
ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
ax.grid(True, which="both", alpha=0.2)
plt.tight_layout()
plt.show()

# %% [markdown]
# A kernel point on the green roof streams at the timing model's DRAM ceiling; one below it is held back
# by the kernel itself (the printed bound: `latency` = its threads wait for memory round trips more than
# the queue hides, `issue` = instructions). Sharing the weights between tokens moves a kernel to the right.
#
# ## 5. The decode ceiling for Qwen3-30B-A3B and OLMoE-1B-7B on a Pi 4
#
# Bytes per decode token at the real shapes (synthetic models of the published shape, written sparse
# with `empty=True` like in notebook 1: full size on paper, no disk). Then three ceilings:
#
# * **CPU alone**: all bytes at the CPU's decode bandwidth (published, 3.2-3.5 GB/s implied by llama.cpp
#   speeds; the CPU model uses 3.35).
# * **QPU streams the experts, one after the other**: the CPU reads attention, router and head at its
#   decode bandwidth, the QPU the routed experts at the best predicted streaming read above.
# * **Both at once, perfectly overlapped**: the slower side sets the time, and the total is capped by the
#   CPU+QPU bound from section 3.
#
# These are upper bounds that assume the expert kernel streams the file's bytes as fast as the summation
# kernel. The real kernels do less well on both counts: the qpu backend's layout may store a format with
# more bits per weight than the file (printed in section 4), and for quantized weights the QPU has to
# unpack every weight with integer ops (no int8/fp16 arithmetic on VideoCore VI), which can leave a kernel
# latency or issue bound (section 4). Notebook 2 runs the real expert kernels in a model.

# %%
from pimoe.commands.info import read_per_token
from pimoe.bench.cpu import weight_bytes_per_token
from pimoe.gguf_file import GGUFFile
from pimoe.synth import make_model

cpu_bw = ceil["cpu_decode_GBps"] * 1e9
qpu_bw = best_read * 1e9
both_bw = both_rows[0]["GBps"] * 1e9 if both_rows else None
ceilings = []
for preset, label in (("qwen3-30b-a3b", "Qwen3-30B-A3B"), ("olmoe-1b-7b", "OLMoE-1B-7B")):
    for qtype in ("Q4_K", "Q8_0"):
        path = make_model(OUT / f"{preset}-{qtype}.gguf", preset=preset, qtype=qtype, empty=True)
        groups = read_per_token(GGUFFile(path))
        experts = groups["experts (routed)"]["active_bytes"]
        rest = sum(g["active_bytes"] for name, g in groups.items() if name != "experts (routed)")
        # independent count of the same bytes (pimoe.bench.cpu's own accounting)
        other = weight_bytes_per_token(path)
        assert abs(other["expert_bytes_per_token"] - experts) < 1 and abs(other["dense_bytes_per_token"] - rest) < 1
        total = experts + rest
        row = dict(model=label, weights=qtype, GB_per_token=total / 1e9, experts_share=experts / total,
                   cpu_only=cpu_bw / total,
                   qpu_experts_serial=1 / (rest / cpu_bw + experts / qpu_bw),
                   overlapped=1 / max(rest / cpu_bw, experts / qpu_bw, total / both_bw if both_bw else 0))
        ceilings.append(row)
        path.unlink()
print(f"bandwidths: CPU {cpu_bw / 1e9:.2f} GB/s (published, decode), QPU {qpu_bw / 1e9:.2f} GB/s (predicted), "
      f"both <= {both_bw / 1e9 if both_bw else float('nan'):.2f} GB/s (bound)\n")
print(f"{'model':14s} {'weights':7s} {'GB/token':>8s} {'experts':>8s} {'CPU only':>9s} {'+QPU serial':>12s} "
      f"{'+QPU overlap':>13s}  (tokens/s, upper bounds)")
for r in ceilings:
    print(f"{r['model']:14s} {r['weights']:7s} {r['GB_per_token']:8.2f} {r['experts_share']:8.0%} "
          f"{r['cpu_only']:9.2f} {r['qpu_experts_serial']:12.2f} {r['overlapped']:13.2f}")
for r in ceilings:
    assert r["overlapped"] >= r["cpu_only"] and r["overlapped"] >= r["qpu_experts_serial"]
    assert abs(r["cpu_only"] * r["GB_per_token"] * 1e9 - cpu_bw) < 1e-3 * cpu_bw

fig, ax = plt.subplots(figsize=(9, 3.6))
labels = [f"{r['model']}\n{r['weights']}" for r in ceilings]
xs = np.arange(len(ceilings))
for j, (key, what) in enumerate((("cpu_only", "CPU alone (published bandwidth)"),
                                 ("qpu_experts_serial", "experts on the QPU, serial (predicted QPU)"),
                                 ("overlapped", "CPU and QPU overlapped (bound)"))):
    vals = [r[key] for r in ceilings]
    ax.bar(xs + (j - 1) * 0.27, vals, 0.27, label=what, hatch="" if j == 0 else "//", alpha=1 if j == 0 else 0.7)
    for xv, v in zip(xs + (j - 1) * 0.27, vals):
        ax.text(xv, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
ax.set_xticks(xs, labels, fontsize=8)
ax.set_ylabel("decode tokens/s (upper bound)")
ax.set_title("Pi 4 decode ceilings: bandwidth / bytes per token", fontsize=9)
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# Reading the numbers: the routed experts are most of the bytes a token reads (the `experts` column), so
# giving them to a second reader with its own path to DRAM can only help if the two really stream at the
# same time -- and the total can never beat the 12.8 GB/s on paper. Whether the QPU's expert kernels get
# close to the summation kernel's rate is what notebook 2 measures.
#
# ### The library's own figures
#
# `pimoe plot results/bandwidth-….json` draws the standard figures from a record; the same call from
# Python (`pimoe.plots.plot_records`) writes PNG and SVG next to it:

# %%
from IPython.display import Image, display

from pimoe import plots

made = plots.plot_records([rec_path], out_dir=OUT)
print([p.name for p in made])
assert any(p.suffix == ".png" for p in made)
for p in made:
    if p.suffix == ".png":
        display(Image(filename=str(p)))

# %% [markdown]
# ## Conclusion
#
# The question: how much memory bandwidth can decode use on a Pi 4, from the CPU and from the QPU, and
# what ceiling does that put on tokens/s? From this run:

# %%
olmoe = next(r for r in ceilings if r["model"].startswith("OLMoE") and r["weights"] == "Q4_K")
print(f"1. QPU: the streaming read kernel is predicted at {best_read:.2f} GB/s on a Pi 4 (the timing model is "
      f"fitted to py-videocore6's published {published_read:.2f}), against {cpu_bw / 1e9:.2f} GB/s that the "
      f"Pi 4's CPU achieves in LLM decode (published): the QPU can read about {best_read / (cpu_bw / 1e9):.1f}x "
      f"faster, if its kernels stream like the summation does.")
print(f"2. Ceiling, OLMoE-1B-7B Q4_K ({olmoe['GB_per_token']:.2f} GB per token, {olmoe['experts_share']:.0%} "
      f"experts): CPU alone {olmoe['cpu_only']:.2f} tokens/s, experts on the QPU one after the other "
      f"{olmoe['qpu_experts_serial']:.2f}, both at once at most {olmoe['overlapped']:.2f} (an upper bound: "
      f"no Pi here to measure the two sharing DRAM).")
print("3. This machine's CPU figures (section 1) were " +
      (f"measured under load ({LOAD:.1f}): its multi-thread points say nothing about its DRAM" if BUSY
       else f"measured idle (load {LOAD:.1f})") + "; none of the Pi 4 figures above depends on them.")
assert olmoe["overlapped"] >= olmoe["qpu_experts_serial"] >= 0
