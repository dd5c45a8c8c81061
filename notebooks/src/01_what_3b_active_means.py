# %% [markdown]
# # What "3B active" means
#
# Qwen3-30B-A3B has 30.5 billion parameters, but a token only *uses* about 3 billion of them: in each of
# its 48 layers a router picks 8 of 128 experts, and only those experts' weights are read. Decoding one
# token at a time is limited by how fast the weights can be read from memory, so what matters for speed
# on a Raspberry Pi is **bytes read per token**, not the size of the file.
#
# This notebook makes that concrete with pimoe's own API:
#
# 1. load a model and count total vs active parameters and bytes (and check the count independently),
# 2. run a prompt and look at which experts every token chose, layer by layer,
# 3. look at the router's probabilities for one token,
# 4. show that the model really reads only the chosen experts (a counting backend, then a proof by
#    poisoning the unchosen experts with NaN),
# 5. turn bytes per token into a tokens/s ceiling at the Pi 4's memory bandwidth, for the built-in model
#    and for the real Qwen3-30B-A3B and OLMoE-1B-7B shapes.
#
# It runs on the **built-in tiny model** (random weights, made on first use, no download) in well under a
# minute. Its text output is gibberish by design: it exercises the code path and the accounting.

# %%
# %matplotlib inline
import os
import shutil
import tempfile
import time
from pathlib import Path

import gguf
import matplotlib.pyplot as plt
import numpy as np

import pimoe
from pimoe.commands.info import read_per_token
from pimoe.commands.run import default_model_path

# everything this notebook writes goes to a new directory: committed results are never overwritten
OUT = Path(tempfile.mkdtemp(prefix="pimoe-nb01-"))
print("outputs go to", OUT)

# %% [markdown]
# ## 1. Load a model
#
# With no path given, pimoe uses its built-in tiny `qwen3moe` model (2 layers, 8 experts, top-2, F32
# weights, written once to `~/.cache/pimoe`). **To use a real model**, download a GGUF of a supported
# MoE (qwen3moe, olmoe, qwen2moe, Mixtral-style llama) and either set `MODEL_PATH` below or start Jupyter
# with `PIMOE_MODEL=/path/to/Qwen3-30B-A3B-Q4_K_M.gguf`. Everything below works on it; the cells that copy
# the file (section 4b) skip themselves for files over 200 MB.

# %%
MODEL_PATH = os.environ.get("PIMOE_MODEL")       # e.g. "/models/Qwen3-30B-A3B-Q4_K_M.gguf"
if MODEL_PATH is None:
    MODEL_PATH = default_model_path()            # the built-in tiny model, random weights
MODEL_PATH = Path(MODEL_PATH)

model = pimoe.load_model(MODEL_PATH)             # memory-mapped: nothing is read until it is used
cfg = model.config
print(f"{MODEL_PATH.name}: {MODEL_PATH.stat().st_size / 1e6:.2f} MB")
print("synthetic (random weights):", bool(model.file.metadata.get("pimoe.synthetic", False)))
print(cfg.describe())

# %% [markdown]
# ## 2. Total vs active parameters, and bytes per decode token
#
# `pimoe info` groups the tensors and counts what one decode token (batch 1) reads: every attention
# matrix and norm, the router, `n_experts_used` of the `n_experts` experts in each layer, **one row** of
# the token embedding (a lookup), and the whole output head. The same accounting is a library call:

# %%
groups = read_per_token(model.file)
order = ["embedding", "attention", "norms", "router", "experts (routed)", "shared expert", "output head"]
print(f"{'group':18s} {'params':>12s} {'active':>12s} {'bytes':>12s} {'read/token':>12s}")
for name in order:
    if name in groups:
        g = groups[name]
        print(f"{name:18s} {g['params']:12,d} {int(g['active_params']):12,d} {g['bytes']:12,d} "
              f"{int(g['active_bytes']):12,d}")
total_params = sum(g["params"] for g in groups.values())
active_params = sum(g["active_params"] for g in groups.values())
total_bytes = sum(g["bytes"] for g in groups.values())
active_bytes = sum(g["active_bytes"] for g in groups.values())
print(f"{'total':18s} {total_params:12,d} {int(active_params):12,d} {total_bytes:12,d} {int(active_bytes):12,d}")
print(f"\nactive: {active_params / total_params:.1%} of the parameters, "
      f"{active_bytes / total_bytes:.1%} of the bytes")


# %% [markdown]
# **Check, independently.** The parameter count again, from the config's shape numbers alone (the formula
# of the architecture, not the tensors), and the byte count from the tensor list as the `gguf` package
# (llama.cpp's own Python reader, not pimoe's loader) sees it, with each type's block size.

# %%
def params_by_formula(c, has_output_tensor: bool):
    """(total, active) parameters of a qwen3moe/olmoe/qwen2moe/llama MoE from its shape numbers."""
    d, qd, kvd = c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    attn = qd * d + 2 * kvd * d + d * qd
    if c.arch == "qwen2moe":
        attn += qd + 2 * kvd                                # q/k/v biases
    qk_norm = {"head": 2 * c.head_dim, "full": qd + kvd, "none": 0}[c.qk_norm]
    shared = 3 * c.shared_ff * d + d if c.shared_ff else 0  # shared expert + its gate vector
    dense_per_layer = attn + qk_norm + 2 * d + c.n_experts * d + shared   # + 2 norms + router
    expert = 3 * c.expert_ff * d                            # gate, up, down of one expert
    embed = c.vocab_size * d
    head = c.vocab_size * d                                 # own output matrix, or the tied embedding
    total = embed + (head if has_output_tensor else 0) + d + c.n_layers * (dense_per_layer + c.n_experts * expert)
    active = d + head + d + c.n_layers * (dense_per_layer + c.n_experts_used * expert)
    return total, active


def bytes_by_gguf_reader(path, c):
    """(total, read per decode token) bytes from gguf.GGUFReader's tensor list and the block sizes."""
    total = active = 0
    tensors = gguf.GGUFReader(path).tensors
    names = {t.name for t in tensors}
    for t in tensors:
        block, type_size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        nbytes = int(t.n_elements) // block * type_size
        total += nbytes
        if "_exps" in t.name:
            active += nbytes * c.n_experts_used / c.n_experts
        elif t.name == "token_embd.weight":
            row = int(t.shape[0]) // block * type_size     # GGUF shape[0] is the row length
            active += row + (nbytes if "output.weight" not in names else 0)   # tied: it is the head too
        else:
            active += nbytes
    return total, active


f_total, f_active = params_by_formula(cfg, model.file.has("output.weight"))
r_total, r_active = bytes_by_gguf_reader(MODEL_PATH, cfg)
print(f"parameters  pimoe {total_params:,} / {int(active_params):,}   formula {f_total:,} / {f_active:,}")
print(f"bytes       pimoe {total_bytes:,} / {int(active_bytes):,}   gguf    {r_total:,} / {int(r_active):,}")
assert total_params == f_total and int(active_params) == f_active
assert total_bytes == r_total and abs(active_bytes - r_active) < 1

# %%
fig, ax = plt.subplots(figsize=(9, 2.8))
left = np.zeros(2)
colors = plt.cm.tab10.colors
for i, name in enumerate(g for g in order if g in groups):
    vals = np.array([groups[name]["bytes"], groups[name]["active_bytes"]]) / 1e6
    ax.barh([1, 0], vals, left=left, color=colors[i], label=name)
    left += vals
ax.set_yticks([1, 0], ["stored in the file", "read per decode token"])
ax.set_xlabel("MB")
ax.set_title(f"{MODEL_PATH.name}: {cfg.n_experts_used} of {cfg.n_experts} experts per layer are read")
ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Run a prompt and watch the router
#
# `Model.generate` streams token ids; `Model.routing_history` keeps every forward pass's router decisions
# (one `LayerRouting(expert_ids [T, k], weights [T, k], probs [T, E])` per layer): the first entry is the
# whole prompt, then one entry per decode step.

# %%
prompt = "Once upon a time, a small computer"
prompt_ids = model.tokenizer.encode(prompt)
N_NEW = 12
t0 = time.perf_counter()
new_ids = list(model.generate(prompt_ids, N_NEW, stop_at_eos=False))
seconds = time.perf_counter() - t0
print(repr(prompt + model.tokenizer.decode(new_ids)))
print(f"{len(prompt_ids)} prompt tokens, {len(new_ids)} generated in {seconds:.2f} s on this machine "
      f"(the first call also compiles pimoe's kernels)")

history = model.routing_history
# one prefill + one decode step per generated token except the last (nobody reads its logits)
assert len(new_ids) == N_NEW and len(history) == N_NEW
assert history[0][0].expert_ids.shape == (len(prompt_ids), cfg.n_experts_used)
assert all(step[0].expert_ids.shape == (1, cfg.n_experts_used) for step in history[1:])

# per layer, all routed tokens in order: ids [T, k], weights [T, k], probs [T, E]
routed_tokens = prompt_ids + new_ids[:-1]
ids_all = [np.concatenate([step[L].expert_ids for step in history]) for L in range(cfg.n_layers)]
w_all = [np.concatenate([step[L].weights for step in history]) for L in range(cfg.n_layers)]
p_all = [np.concatenate([step[L].probs for step in history]) for L in range(cfg.n_layers)]
T = len(routed_tokens)

for L in range(cfg.n_layers):
    ids, w, p = ids_all[L], w_all[L], p_all[L]
    assert ids.shape == (T, cfg.n_experts_used) and p.shape == (T, cfg.n_experts)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)             # a softmax over all experts
    chosen_p = np.take_along_axis(p, ids, axis=1)
    rest = p.copy()
    np.put_along_axis(rest, ids, -1.0, axis=1)
    assert (chosen_p.min(axis=1) >= rest.max(axis=1)).all()                # the chosen are the top k
    want_w = chosen_p / chosen_p.sum(axis=1, keepdims=True) if cfg.norm_topk else chosen_p
    np.testing.assert_allclose(w, want_w, rtol=1e-5)                       # renormalized (or not) per arch
print(f"routing checked: {T} tokens x {cfg.n_layers} layers, each picks the top {cfg.n_experts_used} "
      f"of {cfg.n_experts} experts")

# %% [markdown]
# **Which experts each token chose.** One panel per layer (at most four, evenly spaced); a cell is coloured
# by the weight the router gave that expert for that token, blank where it was not chosen. The dashed line
# separates the prompt from the generated tokens.

# %%
show_layers = sorted({int(v) for v in np.linspace(0, cfg.n_layers - 1, min(4, cfg.n_layers)).round()})
labels = [repr(model.tokenizer.decode([t]))[1:-1] or "·" for t in routed_tokens]
fig, axes = plt.subplots(len(show_layers), 1, figsize=(10, 1.0 + 0.33 * cfg.n_experts * len(show_layers)),
                         squeeze=False, sharex=True)
for ax, L in zip(axes[:, 0], show_layers):
    grid = np.full((cfg.n_experts, T), np.nan)
    for t in range(T):
        grid[ids_all[L][t], t] = w_all[L][t]
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.axvline(len(prompt_ids) - 0.5, color="k", ls="--", lw=1)
    ax.set_ylabel(f"layer {L}\nexpert")
    if cfg.n_experts <= 16:
        ax.set_yticks(range(cfg.n_experts))
axes[-1, 0].set_xticks(range(T), labels, rotation=90, fontsize=8)
fig.colorbar(im, ax=axes[:, 0], label="router weight", shrink=0.8)
fig.suptitle(f"experts chosen per token ({cfg.n_experts_used} of {cfg.n_experts}); prompt | generated")
plt.show()

counts = np.stack([np.bincount(ids_all[L].ravel(), minlength=cfg.n_experts) for L in range(cfg.n_layers)])
print("times each expert was chosen, per layer (rows):")
print(counts)
assert (counts.sum(axis=1) == T * cfg.n_experts_used).all()

# %% [markdown]
# ## 4. The router's probabilities for one token
#
# The router is one small matrix per layer (`ffn_gate_inp`, experts x hidden): a softmax over its output
# gives every expert a probability, the top k are kept and (for qwen3moe and Mixtral) renormalized to sum
# to one; those are the weights the chosen experts' outputs are mixed with.

# %%
tok = len(prompt_ids) - 1      # the last prompt token: the one whose logits give the first new token
fig, axes = plt.subplots(1, len(show_layers), figsize=(4.5 * len(show_layers), 3), squeeze=False)
for ax, L in zip(axes[0], show_layers):
    p = p_all[L][tok]
    chosen = ids_all[L][tok]
    colors = ["tab:orange" if e in chosen else "tab:gray" for e in range(cfg.n_experts)]
    ax.bar(range(cfg.n_experts), p, color=colors)
    for e, w in zip(chosen, w_all[L][tok]):
        ax.annotate(f"w={w:.2f}", (e, p[e]), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"layer {L}: token {labels[tok]!r}")
    ax.set_xlabel("expert")
    ax.set_ylabel("router probability")
plt.tight_layout()
plt.show()
for L in show_layers:
    print(f"layer {L}: chosen experts {ids_all[L][tok].tolist()}, probabilities "
          f"{[round(float(v), 3) for v in p_all[L][tok][ids_all[L][tok]]]}, weights "
          f"{[round(float(v), 3) for v in w_all[L][tok]]}")

# %% [markdown]
# ## 5. Bytes actually read per token
#
# ### 5a. A counting backend
#
# The model hands the routed experts to a *backend* through one seam,
# `backend.expert_ffn(layer, x, expert_ids, expert_weights)`. A backend is a small class; registering one
# makes it loadable by name. This one is the cpu backend plus a log of the expert weight bytes each call
# touches (each distinct expert's gate, up and down matrices, read once per call however many tokens use it).

# %%
from pimoe.backends import register_backend
from pimoe.backends.cpu import CPUBackend


class CountingBackend(CPUBackend):
    """The cpu backend, logging (layer, tokens, distinct experts, expert bytes) per call."""

    name = "cpu-counting"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = []

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        w = self.experts[layer]                    # QTensors [E, ff, hidden] / [E, hidden, ff]
        used = np.unique(expert_ids)
        nbytes = sum(w.gate[int(e)].nbytes + w.up[int(e)].nbytes + w.down[int(e)].nbytes for e in used)
        self.log.append((layer, x.shape[0], len(used), nbytes))
        return super().expert_ffn(layer, x, expert_ids, expert_weights)


register_backend("cpu-counting", CountingBackend)
counted = pimoe.load_model(MODEL_PATH, backend="cpu-counting")

# the same generation as above: same tokens, same logits, and now a byte count per forward pass
assert list(counted.generate(prompt_ids, N_NEW, stop_at_eos=False)) == new_ids
log = counted.backend.log
per_pass = [sum(entry[3] for entry in log[i:i + cfg.n_layers]) for i in range(0, len(log), cfg.n_layers)]
expert_active = groups["experts (routed)"]["active_bytes"]
print(f"prefill of {len(prompt_ids)} tokens read {per_pass[0]:,} expert bytes")
print(f"each of the {len(per_pass) - 1} decode steps read {sorted(set(per_pass[1:]))} expert bytes; "
      f"pimoe info says {int(expert_active):,}")
assert all(b == expert_active for b in per_pass[1:])

# %% [markdown]
# A decode step reads exactly k experts per layer. A forward pass over many tokens at once (the prompt)
# reads the **union** of the experts its tokens chose, which grows quickly towards all of them: prefill
# is much less sparse than decode. (On a real model, shorten `sizes` to keep this quick.)

# %%
rng = np.random.default_rng(0)
sizes = [1, 2, 4, 8, 16, 32, 64]
expert_total = groups["experts (routed)"]["bytes"]
read = []
for n in sizes:
    counted.backend.log.clear()
    counted.logits(rng.integers(0, cfg.vocab_size, size=n).tolist())
    read.append(sum(entry[3] for entry in counted.backend.log))
assert read[0] == expert_active and all(r <= expert_total for r in read)
assert read[-1] > read[0]

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(sizes, np.array(read) / 1e6, "o-", label="expert bytes read by one forward pass")
ax.axhline(expert_active / 1e6, color="tab:green", ls="--", label=f"{cfg.n_experts_used} experts/layer (decode)")
ax.axhline(expert_total / 1e6, color="tab:red", ls="--", label=f"all {cfg.n_experts} experts")
ax.set_xscale("log", base=2)
ax.set_xlabel("tokens in the forward pass")
ax.set_ylabel("MB")
ax.legend(fontsize=8)
ax.set_title("the experts a batch reads: the union of its tokens' choices")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 5b. Proof by poisoning
#
# Counting what the backend is *handed* is accounting. To show the other experts are never *read*, copy
# the model file, overwrite every expert that a one-token forward pass did not choose with NaN bytes
# (0xFF...: a NaN in f32, and a NaN scale in every quantized block format), and run the same token on the
# poisoned copy. If any poisoned byte were read, NaN would reach the activations, and pimoe stops a forward
# pass whose activations turn non-finite with an error naming the layer and position.

# %%
if MODEL_PATH.stat().st_size > 200e6:
    print("skipped: the model file is large; this proof copies it")
else:
    token = prompt_ids[:1]
    clean = model.logits(token)                            # one token from an empty cache: a decode step
    chosen = [set(r.expert_ids.ravel().tolist()) for r in model.routing]

    poisoned_path = OUT / "poisoned.gguf"
    shutil.copy(MODEL_PATH, poisoned_path)
    reader = gguf.GGUFReader(poisoned_path, "r+")
    n_poisoned = 0
    for t in reader.tensors:
        if "_exps" in t.name:
            layer = int(t.name.split(".")[1])
            for e in range(cfg.n_experts):
                if e not in chosen[layer]:
                    t.data[e].view(np.uint8)[...] = 0xFF
                    n_poisoned += 1
    reader.data.flush()
    del reader

    poisoned = pimoe.load_model(poisoned_path)
    out = poisoned.logits(token)
    print(f"poisoned {n_poisoned} expert matrices (chosen per layer: {[sorted(c) for c in chosen]})")
    assert n_poisoned == 3 * sum(cfg.n_experts - len(c) for c in chosen) > 0
    assert np.isfinite(out).all() and np.array_equal(out, clean)
    print("same token on the poisoned file: logits finite and bit-identical to the clean file's")

    # ... and the poison is live: a token whose router picks a poisoned expert reads NaN, and pimoe refuses
    # to go on with a non-finite activation (a clear error naming the layer), rather than print NaN logits
    for other in range(cfg.vocab_size):
        model.logits([other])
        if any(not set(r.expert_ids.ravel().tolist()) <= chosen[L] for L, r in enumerate(model.routing)):
            break
    try:
        poisoned.logits([other])
    except pimoe.PimoeError as err:
        print(f"token {other} routes to a poisoned expert: {err}")
    else:
        raise AssertionError("a poisoned expert was chosen, yet the forward pass stayed finite")

# %% [markdown]
# ## 6. MoE vs a dense model of the same size, at the Pi 4's bandwidth
#
# A decode step is memory bound: **tokens/s <= bandwidth / bytes read per token**. A dense model with the
# same number of parameters reads all of them every token (except the embedding, a lookup). The bandwidth
# figures below are **published measurements**, not measured here (`pimoe/pi4.py` lists each with its
# source): the DRAM's paper figure, a STREAM copy on one core, and the bandwidth implied by published
# llama.cpp decode speeds on Pi 4-class machines.

# %%
from pimoe import pi4

PI4_BANDWIDTH_GBPS = {   # published figures (pimoe.pi4), not measured by this notebook
    "DRAM on paper": pi4.DRAM_PEAK_BANDWIDTH / 1e9,    # LPDDR4-3200, 32-bit bus: datasheet arithmetic
    "STREAM copy": pi4.STREAM_COPY_BANDWIDTH / 1e9,    # STREAM copy, 1 thread, Pi 4 (sci-pi.org.uk)
    "LLM decode": pi4.CPU_DECODE_BANDWIDTH / 1e9,      # the 3.2-3.5 GB/s implied by llama.cpp decode speeds
                                                       # on Pi 4/400; `pimoe info` uses the same figure
}
embed_bytes = groups["embedding"]["bytes"]
dense_bytes = total_bytes - embed_bytes + groups["embedding"]["active_bytes"]
print(f"{'':40s} {'MoE (this model)':>18s} {'dense, same size':>18s}")
print(f"{'bytes read per token':40s} {active_bytes / 1e6:15.3f} MB {dense_bytes / 1e6:15.3f} MB")
for what, gbps in PI4_BANDWIDTH_GBPS.items():
    print(f"{'tokens/s ceiling at ' + str(gbps) + ' GB/s':40s} {gbps * 1e9 / active_bytes:18,.0f} "
          f"{gbps * 1e9 / dense_bytes:18,.0f}")
decode_tps = (N_NEW - 1) / seconds
print(f"\nmeasured here (x86, Python, tiny model, incl. prefill and compilation): {decode_tps:.1f} tokens/s")
assert dense_bytes > active_bytes

# %% [markdown]
# For a model this small the ceiling is meaningless: the Python per-layer work, not the memory, sets the
# speed. The bandwidth argument is about big models; the real shapes follow.
#
# ## 7. The real shapes: Qwen3-30B-A3B and OLMoE-1B-7B
#
# `pimoe.synth.make_model` writes a model of the **published shape** with any number of layers. With
# `empty=True` the weights are all zero and written as a sparse file: instant and taking no disk, but the
# tensor list, types and byte counts are exactly those of the real model. We write 1 and 2 layers, take
# the difference as one layer's bytes, and scale to the real layer count. Weights: all matrices Q4_K
# (4.5 bits per weight; the popular Q4_K_M mix is a little larger: it gives the output head and some
# layers' attn_v/ffn_down Q6_K), or all Q8_0 (8.5 bits); norms and routers stay F32 as in real files.

# %%
from pimoe.gguf_file import GGUFFile
from pimoe.synth import make_model

REAL = {"qwen3-30b-a3b": ("Qwen3-30B-A3B", 48), "olmoe-1b-7b": ("OLMoE-1B-7B", 16)}
MIXES = {"Q4_K": ("Q4_K", {}), "Q8_0": ("Q8_0", {})}


def counts_of(path):
    g = read_per_token(GGUFFile(path))
    s = lambda key: sum(v[key] for v in g.values())  # noqa: E731
    return np.array([s("params"), s("active_params"), s("bytes"), s("active_bytes")], dtype=np.float64)


scaled = {}
for preset, (label, n_layers) in REAL.items():
    for mix, (qtype, types) in MIXES.items():
        c1, c2 = (counts_of(make_model(OUT / f"{preset}-{mix}-{n}L.gguf", preset=preset, qtype=qtype,
                                       tensor_types=types, n_layers=n, empty=True)) for n in (1, 2))
        per_layer = c2 - c1
        scaled[label, mix] = c1 + (n_layers - 1) * per_layer      # params, active, bytes, active bytes
        p, ap, b, ab = scaled[label, mix]
        print(f"{label:14s} {mix:18s} {p / 1e9:6.2f} B params, {ap / 1e9:5.2f} B active; "
              f"file {b / 1e9:6.2f} GB, {ab / 1e9:5.2f} GB read per token")


# %% [markdown]
# **Check, independently**: the same numbers from the published shapes typed in by hand (the models'
# config.json on Hugging Face: Qwen/Qwen3-30B-A3B, allenai/OLMoE-1B-7B-0924) and the block sizes from the `gguf` package; and against the published totals
# (model cards: Qwen3-30B-A3B 30.5 B parameters, 3.3 B activated; OLMoE-1B-7B 6.9 B, 1.3 B active).

# %%
def by_hand(L, d, heads, kv_heads, hd, E, k, ff, vocab, qk_norm, tied, qtype):
    blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    qb = lambda n: n // blk * size                   # noqa: E731  bytes of n weights in the main type
    qd, kvd = heads * hd, kv_heads * hd
    norms = 2 * d + (2 * hd if qk_norm == "head" else qd + kvd)   # f32 vectors
    attn = qd * d + 2 * kvd * d + d * qd
    router = E * d                                   # stays F32
    expert = 3 * ff * d
    params = vocab * d * (1 if tied else 2) + d + L * (attn + norms + router + E * expert)
    active = 2 * d + vocab * d + L * (attn + norms + router + k * expert)   # 1 embedding row + head
    head = qb(vocab * d)
    embed = qb(vocab * d)
    layer_fixed = qb(attn) + 4 * (norms + router)
    nbytes = embed + (head if not tied else 0) + 4 * d + L * (layer_fixed + E * qb(expert))
    row = qb(d)
    active_bytes = row + (head if not tied else embed) + 4 * d + L * (layer_fixed + k * qb(expert))
    return np.array([params, active, nbytes, active_bytes], dtype=np.float64)


SHAPES = {  # published shapes (the models' config.json); the synthetic qwen3moe ties nothing: it writes output.weight
    "Qwen3-30B-A3B": dict(L=48, d=2048, heads=32, kv_heads=4, hd=128, E=128, k=8, ff=768, vocab=151936,
                          qk_norm="head", tied=False),
    "OLMoE-1B-7B": dict(L=16, d=2048, heads=16, kv_heads=16, hd=128, E=64, k=8, ff=1024, vocab=50304,
                        qk_norm="full", tied=False),
}
for (label, mix), got in scaled.items():
    qtype, types = MIXES[mix]
    want = by_hand(**SHAPES[label], qtype=qtype)
    assert np.array_equal(got, want), (label, mix, got, want)
# The model cards count the whole embedding table as "activated"; pimoe counts the one row a token reads.
for label, total_pub, active_pub in (("Qwen3-30B-A3B", 30.5e9, 3.3e9), ("OLMoE-1B-7B", 6.9e9, 1.3e9)):
    p, ap = scaled[label, "Q8_0"][:2]
    ap_card = ap - SHAPES[label]["d"] + SHAPES[label]["vocab"] * SHAPES[label]["d"]
    print(f"{label:14s} total {p / 1e9:.2f} B (published {total_pub / 1e9}), active {ap / 1e9:.2f} B read per "
          f"token, {ap_card / 1e9:.2f} B counting the embedding table as the model card does "
          f"(published {active_pub / 1e9})")
    assert abs(p / total_pub - 1) < 0.01 and abs(ap_card / active_pub - 1) < 0.03
print("scaled synthetic counts == hand arithmetic from the published shapes, and match the published totals")

# %% [markdown]
# ### What that means for tokens/s on a Pi 4

# %%
rows = []
for (label, mix), (p, ap, b, ab) in scaled.items():
    # a dense model of the same size reads everything but the embedding table (one row of it)
    embed_tbl = SHAPES[label]["vocab"] * SHAPES[label]["d"]
    qtype = MIXES[mix][0]
    blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    dense = b - embed_tbl // blk * size + SHAPES[label]["d"] // blk * size
    for what, gbps in PI4_BANDWIDTH_GBPS.items():
        rows.append(dict(model=label, weights=mix, bandwidth=what, gbps=gbps, file_gb=b / 1e9,
                         active_gb_per_token=ab / 1e9, dense_gb_per_token=dense / 1e9,
                         moe_tokens_per_s=gbps * 1e9 / ab, dense_tokens_per_s=gbps * 1e9 / dense))
for r in rows:
    print(f"{r['model']:14s} {r['weights']:18s} at {r['gbps']:5.2f} GB/s ({r['bandwidth']}): "
          f"MoE {r['moe_tokens_per_s']:5.2f} tok/s, dense {r['dense_tokens_per_s']:5.2f} tok/s")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
for ax, mix in zip(axes, MIXES):
    sel = [r for r in rows if r["weights"] == mix]
    labels_bw = list(PI4_BANDWIDTH_GBPS)
    x = np.arange(len(labels_bw))
    for j, (label, kind) in enumerate([(m, k) for m in REAL.values() for k in ("moe", "dense")]):
        vals = [next(r[f"{kind}_tokens_per_s"] for r in sel if r["model"] == label[0] and r["bandwidth"] == bw)
                for bw in labels_bw]
        ax.bar(x + (j - 1.5) * 0.2, vals, 0.2, label=f"{label[0]} {'MoE' if kind == 'moe' else 'dense, same size'}",
               hatch="" if kind == "moe" else "//", color=plt.cm.tab10.colors[j // 2], alpha=1 if kind == "moe" else 0.5)
    ax.set_xticks(x, [f"{b}\n{PI4_BANDWIDTH_GBPS[b]} GB/s" for b in labels_bw], fontsize=9)
    ax.set_yscale("log")
    ax.set_title(f"decode ceiling on a Pi 4, {mix} (published bandwidths)")
axes[0].set_ylabel("tokens/s (upper bound)")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

PI4_MAX_RAM = 8e9     # the largest Raspberry Pi 4 has 8 GB
for (label, mix), (p, ap, b, ab) in scaled.items():
    print(f"{label:14s} {mix:5s} file {b / 1e9:5.1f} GB: {'fits in' if b < PI4_MAX_RAM else 'does NOT fit in'} "
          f"8 GB of RAM")
assert scaled["Qwen3-30B-A3B", "Q4_K"][2] > PI4_MAX_RAM > scaled["OLMoE-1B-7B", "Q4_K"][2]

# %% [markdown]
# Two cautions the arithmetic makes visible:
#
# * **Capacity.** The largest Pi 4 has 8 GB of RAM. Qwen3-30B-A3B's file is larger than that even at Q4_K
#   (printed above), so on a Pi 4 the pages that do not fit come from storage, which is far slower than
#   DRAM; the ceilings above assume the weights are in RAM. OLMoE-1B-7B at Q4_K fits.
# * **Which experts.** The ceiling counts k experts per layer per token. Different tokens pick different
#   experts, so no small cache holds "the active 3B": over a generation every expert is read.
#
# A published anchor for the same model on the next board: llama.cpp on a Pi 5 decodes Qwen3-30B-A3B at
# 2.70 bits per weight at 7.99 tokens/s (geerlingguy/ai-benchmarks issue 47). At about 3.0 B active
# parameters x 2.70 bits that is roughly 1 GB per token, i.e. about 8 GB/s actually streamed, against
# 17.1 GB/s on paper:

# %%
active_q = scaled["Qwen3-30B-A3B", "Q8_0"][1]        # active parameters (type independent)
pi5_bytes = active_q * 2.70 / 8
print(f"Pi 5, Qwen3-30B-A3B @ 2.70 bpw: {pi5_bytes / 1e9:.2f} GB/token x 7.99 tok/s (published) = "
      f"{pi5_bytes * 7.99 / 1e9:.1f} GB/s implied, {pi5_bytes * 7.99 / 17.1e9:.0%} of the 17.1 GB/s paper figure")

# %% [markdown]
# ## 8. Keep the numbers
#
# Results are records (JSON with the environment), written with a new name so nothing is overwritten.

# %%
from pimoe.records import environment, read_record, write_record

record = {"model": MODEL_PATH.name, "total_params": total_params, "active_params": active_params,
          "total_bytes": total_bytes, "active_bytes_per_token": active_bytes,
          "dense_bytes_per_token": dense_bytes, "environment": environment(backend="cpu", model=model)}
path, csv_path = write_record(record, results_dir=OUT, kind="bytes-per-token", table=rows)
back = read_record(path)
assert back["active_bytes_per_token"] == active_bytes and len(back["table"]) == len(rows)
print("wrote", path, "and", csv_path)

# %% [markdown]
# ## Conclusion
#
# The question: what does "3B active" mean for the speed of an MoE model on a Raspberry Pi 4? The answer,
# printed from this run's own numbers (the cells above computed and checked each of them):

# %%
q4, o4 = scaled["Qwen3-30B-A3B", "Q4_K"], scaled["OLMoE-1B-7B", "Q4_K"]
ceiling = {r["model"]: r for r in rows if r["weights"] == "Q4_K" and r["bandwidth"] == "LLM decode"}
bw = PI4_BANDWIDTH_GBPS["LLM decode"]
print(f"1. 'Active' = what one decode token reads. Qwen3-30B-A3B has {q4[0] / 1e9:.1f} B parameters; a token "
      f"reads {q4[1] / 1e9:.2f} B of them ({q4[1] / q4[0]:.0%}), i.e. {q4[3] / 1e9:.2f} GB per token in Q4_K "
      f"out of a {q4[2] / 1e9:.1f} GB file.")
print(f"2. Measured, not assumed: on the built-in model every decode step handed the backend exactly "
      f"{int(expert_active):,} expert bytes ({cfg.n_experts_used} of {cfg.n_experts} experts per layer)"
      f"{', and experts poisoned with NaN were never read' if 'n_poisoned' in globals() else ''}; a {sizes[-1]}-token prompt read {read[-1] / expert_total:.0%} "
      f"of all expert bytes, so prefill is far less sparse than decode.")
print(f"3. Speed: at the Pi 4's published {bw:.2f} GB/s decode bandwidth, the ceiling is "
      f"{ceiling['Qwen3-30B-A3B']['moe_tokens_per_s']:.1f} tokens/s for Qwen3-30B-A3B Q4_K (a dense model of "
      f"the same size: {ceiling['Qwen3-30B-A3B']['dense_tokens_per_s']:.2f}) and "
      f"{ceiling['OLMoE-1B-7B']['moe_tokens_per_s']:.1f} for OLMoE-1B-7B Q4_K "
      f"({ceiling['OLMoE-1B-7B']['dense_tokens_per_s']:.2f} dense).")
print(f"4. But capacity decides first: Qwen3-30B-A3B's {q4[2] / 1e9:.1f} GB Q4_K file does not fit a Pi 4's "
      f"8 GB, OLMoE-1B-7B's {o4[2] / 1e9:.1f} GB does. The models a Pi 4 can hold are the subject of "
      f"`pimoe headline` (README).")
assert q4[1] / q4[0] < 0.15 and ceiling["Qwen3-30B-A3B"]["moe_tokens_per_s"] > 5 * ceiling["Qwen3-30B-A3B"]["dense_tokens_per_s"]
