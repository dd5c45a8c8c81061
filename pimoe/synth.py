"""Synthetic MoE models: random weights in any supported format, written as GGUF files llama.cpp loads.

make_model(path, arch, preset, qtype, n_layers) writes a file with exactly the metadata keys and
tensor names llama.cpp reads for that architecture (see pimoe/config.py), a small real tokenizer
(pimoe.tokenizer), and random weights scaled so activations stay O(1) through the layers: every
matrix has std 1/sqrt(fan_in), the output head a little more so logits are O(1), norms are 1 + noise.
The file is marked `pimoe.synthetic = true` so tools can say that its text is meaningless.

Tensors are generated and written one at a time (a streamed GGUFWriter), so real-shape presets
with many layers need only about one tensor of memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pimoe.config import ARCHS
from pimoe.errors import PimoeError
from pimoe.synth_vocab import add_tokenizer_metadata, builtin_tokenizer_metadata

# gguf, pimoe.quant and tqdm are imported in the functions that write a file: `pimoe --help` imports this
# module for its preset names (make-model's choices) and must not pay for them.


@dataclass(frozen=True)
class Shape:
    arch: str | None        # None: any arch (tiny); real presets fix theirs
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_experts: int
    n_experts_used: int
    expert_ff: int
    shared_ff: int          # qwen2moe only
    dense_ff: int           # {arch}.feed_forward_length where the arch has a separate expert width
    vocab_size: int
    context_length: int
    rope_base: float
    rms_eps: float
    tied_output: bool = False
    # granitemoe's scales (written for that arch only): embeddings x, branch outputs x, attention scores x
    # (0: 1/sqrt(head_dim)), logits /
    embedding_scale: float = 1.0
    residual_scale: float = 1.0
    attention_scale: float = 0.0
    logit_scale: float = 1.0


def _tiny(block: int) -> Shape:
    # The smallest useful shape; rows must hold whole quantization blocks, so with the 256-wide K
    # types every row length (hidden, heads*head_dim, expert_ff) becomes 256.
    wide = block > 64
    return Shape(arch=None, n_layers=2, hidden=256 if wide else 64, n_heads=4, n_kv_heads=2,
                 head_dim=64 if wide else 16, n_experts=8, n_experts_used=2,
                 expert_ff=256 if wide else 64, shared_ff=256 if wide else 128,
                 dense_ff=512 if wide else 128, vocab_size=1000, context_length=512,
                 rope_base=1e6, rms_eps=1e-6)


_GRANITE_SCALES = dict(embedding_scale=12.0, residual_scale=0.22, attention_scale=0.015625, logit_scale=6.0)

# The real-shape presets, one row each: Shape's fields arch .. rms_eps in order, from each model's config.json
# (repositories below the table). Granite 3.0 MoE also: embedding_multiplier 12, residual_multiplier 0.22,
# attention_multiplier 0.015625, logits_scaling 6, tied embeddings (_GRANITE_SCALES); the 3.1 releases have the
# same shapes with a 128K context and rope_theta 1.5e6/1e7.
_PRESET_ROWS = {
    #             arch, layers, hidden, heads, kv heads, head dim, experts, used, expert ff, shared ff, dense ff,
    #             vocab, context, rope base, rms eps
    "qwen3-30b-a3b":        ("qwen3moe",   48, 2048, 32,  4, 128, 128, 8,   768,    0,  6144, 151936, 40960, 1e6, 1e-6),
    "olmoe-1b-7b":          ("olmoe",      16, 2048, 16, 16, 128,  64, 8,  1024,    0,  1024,  50304,  4096, 1e4, 1e-5),
    "qwen1.5-moe-a2.7b":    ("qwen2moe",   24, 2048, 16, 16, 128,  60, 4,  1408, 5632,  5632, 151936,  8192, 1e6, 1e-6),
    "mixtral-8x7b":         ("llama",      32, 4096, 32,  8, 128,   8, 2, 14336,    0, 14336,  32000, 32768, 1e6, 1e-5),
    "granite-3.0-1b-a400m": ("granitemoe", 24, 1024, 16,  8,  64,  32, 8,   512,    0,   512,  49155,  4096, 1e4, 1e-6),
    "granite-3.0-3b-a800m": ("granitemoe", 32, 1536, 24,  8,  64,  40, 8,   512,    0,   512,  49155,  4096, 1e4, 1e-6),
}
# repositories: Qwen/Qwen3-30B-A3B, allenai/OLMoE-1B-7B-0924, Qwen/Qwen1.5-MoE-A2.7B, mistralai/Mixtral-8x7B-v0.1,
# ibm-granite/granite-3.0-{1b-a400m,3b-a800m}-instruct
PRESETS: dict[str, Shape] = {
    name: Shape(*row, **(dict(tied_output=True, **_GRANITE_SCALES) if row[0] == "granitemoe" else {}))
    for name, row in _PRESET_ROWS.items()}
PRESET_NAMES = ("tiny",) + tuple(PRESETS)

_TOKENIZER_STYLE = {"qwen3moe": ("gpt2", "qwen2"), "qwen2moe": ("gpt2", "qwen2"),
                    "olmoe": ("gpt2", "olmo"), "llama": ("llama", None),
                    "granitemoe": ("gpt2", "refact")}   # Granite 3.x GGUFs: tokenizer.ggml.pre "refact"


def resolve_shape(arch: str | None, preset: str, qtype, n_layers: int | None, overrides: dict) -> Shape:
    import gguf

    if preset == "tiny":
        shape = _tiny(gguf.GGML_QUANT_SIZES[qtype][0])
        shape = replace(shape, arch=arch or "qwen3moe")
        if shape.arch == "olmoe":      # llama.cpp sizes OLMoE's k_norm by hidden: no GQA
            shape = replace(shape, n_kv_heads=shape.n_heads)
        if ARCHS.get(shape.arch) is not None and ARCHS[shape.arch].granite_scales:
            # Granite's own multipliers, but an attention scale unlike 1/sqrt(head_dim) at any tiny head_dim
            # and a smaller logit scale so the tiny model's logits stay O(1..10)
            shape = replace(shape, **dict(_GRANITE_SCALES, attention_scale=0.1, logit_scale=1.5))
    elif preset in PRESETS:
        shape = PRESETS[preset]
        if arch is not None and arch != shape.arch:
            raise PimoeError(f"preset '{preset}' is a {shape.arch} model; it cannot be written as arch '{arch}'")
    else:
        raise PimoeError(f"unknown preset '{preset}' (known: {', '.join(PRESET_NAMES)})")
    if shape.arch not in ARCHS:
        raise PimoeError(f"unknown architecture '{shape.arch}' (known: {', '.join(sorted(ARCHS))})")
    if n_layers is not None:
        overrides = dict(overrides, n_layers=n_layers)
    bad = set(overrides) - set(Shape.__dataclass_fields__)
    if bad:
        raise PimoeError(f"unknown model shape field(s) {sorted(bad)} (known: {sorted(Shape.__dataclass_fields__)})")
    shape = replace(shape, **overrides)
    if shape.n_layers <= 0:
        raise PimoeError(f"n_layers must be positive, got {shape.n_layers}")
    return shape


def _qtype(q) -> "object":
    import gguf
    from pimoe import quant

    if isinstance(q, str):
        try:
            q = gguf.GGMLQuantizationType[q.upper()]
        except KeyError:
            raise PimoeError(f"unknown weight type '{q}' (supported: "
                             f"{', '.join(sorted(t.name for t in quant.SUPPORTED))})") from None
    quant.check_supported(q, "make_model weight type")
    return q


class _GeneratedTensor:
    """Duck-types the ndarray that GGUFWriter.write_tensor_data writes: nbytes and tofile(fout).

    Generates a big expert tensor one expert at a time, so only one expert's bytes are in memory.
    """

    def __init__(self, nbytes: int, chunks):
        self.nbytes = nbytes
        self._chunks = chunks

    def tofile(self, fout) -> None:
        written = 0
        for chunk in self._chunks():
            chunk = np.ascontiguousarray(chunk)
            chunk.tofile(fout)
            written += chunk.nbytes
        assert written == self.nbytes, (written, self.nbytes)


class _HoleTensor:
    """All-zero tensor data written as a hole: seek past it (one byte is written to extend the file).

    Zero bytes are valid blocks of every type (scales 0 -> weights 0). The file system stores no
    data for the hole, so a real-shape 17 GB model takes a few MB of disk and is written instantly.
    """

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def tofile(self, fout) -> None:
        if self.nbytes:
            fout.seek(self.nbytes - 1, os.SEEK_CUR)
            fout.write(b"\0")


def _tensor_plan(s: Shape) -> list[tuple[str, tuple[int, ...], str, float]]:
    """(name, numpy shape, kind, std) for every tensor; kind: "matrix" (weight type), "norm", "bias", "f32"."""
    spec = ARCHS[s.arch]
    d, qd, kvd = s.hidden, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
    E, ff = s.n_experts, s.expert_ff
    plan = [("token_embd.weight", (s.vocab_size, d), "matrix", 1.0)]
    for i in range(s.n_layers):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (d,), "norm", 0.1),
            (p + "attn_q.weight", (qd, d), "matrix", d ** -0.5),
            (p + "attn_k.weight", (kvd, d), "matrix", d ** -0.5),
            (p + "attn_v.weight", (kvd, d), "matrix", d ** -0.5),
            (p + "attn_output.weight", (d, qd), "matrix", qd ** -0.5),
        ]
        if s.arch == "qwen2moe":
            plan += [(p + "attn_q.bias", (qd,), "bias", 0.2), (p + "attn_k.bias", (kvd,), "bias", 0.2),
                     (p + "attn_v.bias", (kvd,), "bias", 0.2)]
        if spec.qk_norm == "head":
            plan += [(p + "attn_q_norm.weight", (s.head_dim,), "norm", 0.1),
                     (p + "attn_k_norm.weight", (s.head_dim,), "norm", 0.1)]
        elif spec.qk_norm == "full":
            plan += [(p + "attn_q_norm.weight", (qd,), "norm", 0.1),
                     (p + "attn_k_norm.weight", (kvd,), "norm", 0.1)]
        plan += [
            (p + "ffn_norm.weight", (d,), "norm", 0.1),
            # the router stays F32 in real quantized files too (llama-quantize skips ffn_gate_inp)
            (p + "ffn_gate_inp.weight", (E, d), "f32", 2.0 * d ** -0.5),
            (p + "ffn_gate_exps.weight", (E, ff, d), "matrix", d ** -0.5),
            (p + "ffn_up_exps.weight", (E, ff, d), "matrix", d ** -0.5),
            (p + "ffn_down_exps.weight", (E, d, ff), "matrix", ff ** -0.5),
        ]
        if spec.shared_expert:
            sff = s.shared_ff
            plan += [
                (p + "ffn_gate_inp_shexp.weight", (d,), "f32", d ** -0.5),
                (p + "ffn_gate_shexp.weight", (sff, d), "matrix", d ** -0.5),
                (p + "ffn_up_shexp.weight", (sff, d), "matrix", d ** -0.5),
                (p + "ffn_down_shexp.weight", (d, sff), "matrix", sff ** -0.5),
            ]
    plan.append(("output_norm.weight", (d,), "norm", 0.1))
    if not (s.tied_output and spec.tied_output):
        plan.append(("output.weight", (s.vocab_size, d), "matrix", 2.0 * d ** -0.5))
    return plan


def _write_metadata(w, s: Shape, qtype, preset: str) -> None:
    a = s.arch
    w.add_name(f"pimoe synthetic {a} ({preset}, {qtype.name}, random weights)")
    w.add_bool("pimoe.synthetic", True)
    w.add_string("pimoe.preset", preset)
    # the {arch}.* hyperparameters: GGUFWriter method <- Shape field
    for add, value in ((w.add_block_count, s.n_layers), (w.add_context_length, s.context_length),
                       (w.add_embedding_length, s.hidden), (w.add_head_count, s.n_heads),
                       (w.add_head_count_kv, s.n_kv_heads), (w.add_key_length, s.head_dim),
                       (w.add_value_length, s.head_dim), (w.add_rope_dimension_count, s.head_dim),
                       (w.add_rope_freq_base, s.rope_base), (w.add_layer_norm_rms_eps, s.rms_eps),
                       (w.add_expert_count, s.n_experts), (w.add_expert_used_count, s.n_experts_used),
                       (w.add_vocab_size, s.vocab_size)):
        add(value)
    if ARCHS[a].expert_ff_key == "feed_forward_length":
        w.add_feed_forward_length(s.expert_ff)
    else:
        w.add_feed_forward_length(s.dense_ff)
        w.add_expert_feed_forward_length(s.expert_ff)
    if ARCHS[a].shared_expert:
        w.add_expert_shared_feed_forward_length(s.shared_ff)
    if ARCHS[a].granite_scales:
        w.add_embedding_scale(s.embedding_scale)
        w.add_residual_scale(s.residual_scale)
        w.add_attention_scale(s.attention_scale)
        w.add_logit_scale(s.logit_scale)
    w.add_quantization_version(2)
    style, pre = _TOKENIZER_STYLE[a]
    md = builtin_tokenizer_metadata(style, s.vocab_size, **({"pre": pre} if pre else {}))
    add_tokenizer_metadata(w, md)


def _strip_weight(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _strip_layer(name: str) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v.weight' (names outside the layers are returned unchanged)."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        return parts[2]
    return name


def _matching_key(name: str, keys) -> str | None:
    """The tensor_types key (without '.weight') naming tensor `name`: its full name first, then its
    per-layer name; None when none does. Exact names, not substrings: 'output' is not 'attn_output'."""
    for candidate in (_strip_weight(name), _strip_weight(_strip_layer(name))):
        if candidate in keys:
            return candidate
    return None


def make_model(path: str | os.PathLike, arch: str | None = None, preset: str = "tiny", qtype="F32",
               n_layers: int | None = None, seed: int = 0, progress: bool = False,
               tensor_types: dict[str, object] | None = None, empty: bool = False, **overrides) -> Path:
    """Write a random-weight MoE GGUF and return its path.

    arch: qwen3moe | olmoe | qwen2moe | llama (Mixtral-style) | granitemoe; default the preset's, or
          qwen3moe for tiny.
    preset: "tiny" (hidden 64, or 256 with K-type weights), "qwen3-30b-a3b", "olmoe-1b-7b",
            "qwen1.5-moe-a2.7b", "mixtral-8x7b", "granite-3.0-1b-a400m", "granite-3.0-3b-a800m" (real
            shapes; n_layers picks how many layers).
    qtype: weight type of every matrix (name or gguf.GGMLQuantizationType); norms, biases and the
           router stay F32 as in real quantized files.
    tensor_types: {tensor name: weight type} (mixes like llama-quantize's Q4_K_M). A key names a
           matrix exactly: its full name ("output.weight", "blk.3.attn_v.weight") or its name without
           the "blk.N." prefix for every layer ("ffn_down_exps.weight"); the ".weight" suffix may be left
           off ("ffn_down_exps", "blk.3.attn_v"). A full name wins over a per-layer key. So
           "output.weight" is the output head only, never blk.N.attn_output.weight. A key that names no
           matrix of the model raises PimoeError.
    empty: all-zero matrices written as a sparse file (norms 1): instant and diskless even for real
           shapes; for loader, memory and `pimoe info` tests (its logits are meaningless).
    overrides: any Shape field, e.g. hidden=128, n_experts=16, tied_output=True.
    """
    import gguf
    from pimoe import quant

    qtype = _qtype(qtype)
    per_name = {_strip_weight(key): _qtype(t) for key, t in (tensor_types or {}).items()}
    widest = max([qtype, *per_name.values()], key=lambda t: gguf.GGML_QUANT_SIZES[t][0])
    s = resolve_shape(arch, preset, widest, n_layers, overrides)

    def qt_of(name, kind):
        if kind != "matrix":
            return gguf.GGMLQuantizationType.F32
        key = _matching_key(name, per_name)
        return per_name[key] if key is not None else qtype

    matrices = [name for name, _, kind, _ in _tensor_plan(s) if kind == "matrix"]
    used = {_matching_key(name, per_name) for name in matrices}
    unused = [key for key in (tensor_types or {}) if _strip_weight(key) not in used]
    if unused:
        raise PimoeError(f"make_model: tensor_types {unused} name no matrix of this {s.arch} model (keys are "
                         f"exact tensor names, with or without 'blk.N.' and '.weight', e.g. "
                         f"{sorted({_strip_weight(_strip_layer(n)) for n in matrices})})")

    for name, shp, kind, _ in _tensor_plan(s):
        t = qt_of(name, kind)
        block = gguf.GGML_QUANT_SIZES[t][0]
        if shp[-1] % block:
            raise PimoeError(f"tensor '{name}' rows of {shp[-1]} values do not fit {t.name} blocks of "
                             f"{block}; choose sizes that are multiples of {block}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = _tensor_plan(s)

    w = gguf.GGUFWriter(path, s.arch)
    _write_metadata(w, s, qtype, preset)

    for name, shp, kind, _ in plan:
        t = qt_of(name, kind)
        blk, tsize = gguf.GGML_QUANT_SIZES[t]
        byte_shape = (*shp[:-1], shp[-1] // blk * tsize)
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    items = plan
    if progress:
        from tqdm import tqdm
        items = tqdm(plan, desc=f"writing {path.name}", unit="tensor")
    for name, shp, kind, std in items:
        t = qt_of(name, kind)
        blk, tsize = gguf.GGML_QUANT_SIZES[t]
        nbytes = int(np.prod(shp[:-1], dtype=np.int64)) * (shp[-1] // blk * tsize)
        # each tensor gets its own generator seeded from (seed, name): same file for the same seed,
        # whatever the order or chunking
        trng = np.random.default_rng([seed, *name.encode()])
        if empty and kind != "norm":
            w.write_tensor_data(_HoleTensor(nbytes))
        elif kind == "norm":
            data = (1.0 + (0.0 if empty else std) * trng.standard_normal(shp)).astype(np.float32)
            w.write_tensor_data(data.view(np.uint8))
        elif kind in ("bias", "f32"):
            data = (std * trng.standard_normal(shp)).astype(np.float32)
            w.write_tensor_data(data.view(np.uint8))
        elif len(shp) == 3:
            def chunks(shp=shp, t=t, std=std, trng=trng, name=name):
                for e in range(shp[0]):
                    yield quant.random_qtensor(f"{name}[{e}]", t, shp[1:], trng, std=std).data
            w.write_tensor_data(_GeneratedTensor(nbytes, chunks))
        else:
            w.write_tensor_data(quant.random_qtensor(name, t, shp, trng, std=std).data)
    w.close()
    return path
