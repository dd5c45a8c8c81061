"""ModelConfig: the hyperparameters of one MoE model, read from GGUF metadata.

One frozen dataclass for every architecture; what differs between architectures lives in one table,
ARCHS, so the forward pass asks the config ("is there a Q/K norm, over what?") instead of testing arch
names. The keys and defaults are the ones llama.cpp reads (src/llama-model.cpp, src/models/<arch>.cpp):

    {arch}.block_count, .embedding_length, .context_length, .feed_forward_length,
    .attention.head_count, .attention.head_count_kv (default head_count),
    .attention.key_length / .value_length (default embedding_length / head_count),
    .attention.layer_norm_rms_epsilon, .rope.freq_base (default 10000),
    .rope.dimension_count (default key_length), .expert_count, .expert_used_count,
    .expert_feed_forward_length (qwen*: default feed_forward_length / expert_used_count),
    .expert_shared_feed_forward_length (qwen2moe: default feed_forward_length)

granitemoe adds four scales (src/models/granite.cpp, llama-graph.cpp's build_inp_embd):
    {arch}.embedding_scale      token embeddings x this (0 or absent: not scaled)
    {arch}.residual_scale       each attention and FFN output x this before the residual add (0/absent: not)
    {arch}.attention.scale      replaces 1/sqrt(head_dim) on the attention scores (0/absent: 1/sqrt(head_dim))
    {arch}.logit_scale          logits / this (required)
and {arch}.rope.scaling.finetuned (default true) switches RoPE on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import math

from pimoe.errors import PimoeError, printable


def _checked(value, what: str, kind):
    """value as `kind` (int or float), as llama.cpp reads typed keys: an int key must hold an integer
    (not a float, bool or string), a float key a finite number."""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PimoeError(f"{what} is {value!r} ({type(value).__name__}), expected an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PimoeError(f"{what} is {value!r}, expected a finite number")
    return float(value)


@dataclass(frozen=True)
class ArchSpec:
    """What one GGUF architecture does differently (as llama.cpp's graph for it does)."""

    rope_style: str        # "neox": rotate pairs (i, i + d/2); "normal": rotate adjacent pairs (2i, 2i+1)
    qk_norm: str           # "none" | "head": RMSNorm per head (len head_dim) | "full": over the whole projection
    norm_topk: bool        # renormalize the top-k router probabilities to sum to 1
    shared_expert: bool    # qwen2moe: an always-on expert scaled by sigmoid(x . ffn_gate_inp_shexp)
    expert_ff_key: str     # which key gives the expert FFN width
    expert_ff_default: str  # "ff": feed_forward_length | "ff_per_used": feed_forward_length / expert_used_count
    tied_output: bool      # output.weight may be missing: the token embedding is reused as the output head
    granite_scales: bool = False  # granitemoe: embedding/residual/attention/logit scales from the metadata


ARCHS: dict[str, ArchSpec] = {
    "qwen3moe": ArchSpec(rope_style="neox", qk_norm="head", norm_topk=True, shared_expert=False,
                         expert_ff_key="expert_feed_forward_length", expert_ff_default="ff_per_used",
                         tied_output=True),
    "olmoe": ArchSpec(rope_style="neox", qk_norm="full", norm_topk=False, shared_expert=False,
                      expert_ff_key="feed_forward_length", expert_ff_default="ff", tied_output=False),
    "qwen2moe": ArchSpec(rope_style="neox", qk_norm="none", norm_topk=False, shared_expert=True,
                         expert_ff_key="expert_feed_forward_length", expert_ff_default="ff_per_used",
                         tied_output=False),
    # Mixtral and other llama-style MoEs: arch "llama" with expert_count > 0
    "llama": ArchSpec(rope_style="normal", qk_norm="none", norm_topk=True, shared_expert=False,
                      expert_ff_key="feed_forward_length", expert_ff_default="ff", tied_output=True),
    # IBM Granite 3.x MoE (granite-3.0-1b-a400m, -3b-a800m): llama-style with four scales
    "granitemoe": ArchSpec(rope_style="normal", qk_norm="none", norm_topk=True, shared_expert=False,
                           expert_ff_key="feed_forward_length", expert_ff_default="ff", tied_output=True,
                           granite_scales=True),
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    hidden: int            # embedding length
    n_heads: int
    n_kv_heads: int
    head_dim: int          # key/value length per head
    n_experts: int
    n_experts_used: int    # top-k
    expert_ff: int         # FFN width of one routed expert
    shared_ff: int         # FFN width of the shared expert, 0 when the arch has none
    vocab_size: int
    context_length: int    # trained context
    rms_eps: float
    rope_base: float
    rope_dim: int          # leading dims of each head that are rotated
    rope_freq_scale: float  # 1 / linear rope scaling factor
    rope_style: str
    qk_norm: str
    norm_topk: bool
    embedding_scale: float = 1.0   # token embeddings x this (granitemoe; 1 elsewhere)
    residual_scale: float = 1.0    # attention / FFN outputs x this before the residual add
    attention_scale: float = 0.0   # attention scores x this; 0: 1/sqrt(head_dim)
    logit_scale: float = 1.0       # logits / this

    @property
    def kq_scale(self) -> float:
        """The factor on q.k before the softmax."""
        return self.attention_scale if self.attention_scale else 1.0 / float(self.head_dim) ** 0.5

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def spec(self) -> ArchSpec:
        return ARCHS[self.arch]

    def describe(self) -> str:
        return "\n".join(f"{f.name:16s} {getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def from_metadata(cls, md: dict[str, object], where: str, vocab_size: int | None = None) -> "ModelConfig":
        """Build the config from GGUF key/values (python values). `where` names the file for errors.

        vocab_size: rows of token_embd when the caller knows them (the file's truth); otherwise
        {arch}.vocab_size or the length of tokenizer.ggml.tokens.
        """
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise PimoeError(f"{where}: no 'general.architecture' key; is this a model file?")
        if arch not in ARCHS:
            raise PimoeError(f"{where}: architecture '{arch}' is not supported by pimoe "
                             f"(supported: {', '.join(sorted(ARCHS))})")
        spec = ARCHS[arch]

        def get(key: str, default=None, kind=int):
            full = f"{arch}.{key}"
            shown = printable(full)
            value = md.get(full, default)
            if value is None:
                raise PimoeError(f"{where}: required metadata key '{shown}' is missing")
            if isinstance(value, (list, tuple)):
                # per-layer arrays (some archs vary heads/ff per layer); pimoe needs them uniform
                if not value or any(isinstance(v, (list, tuple)) for v in value):
                    raise PimoeError(f"{where}: metadata key '{shown}' is {'an empty' if not value else 'a nested'} "
                                     f"array; expected one {kind.__name__} (or one per layer)")
                if len(set(value)) != 1:
                    raise PimoeError(f"{where}: '{shown}' varies per layer ({value}); pimoe needs one value")
                value = value[0]
            return _checked(value, f"{where}: metadata key '{shown}'", kind)

        n_layers = get("block_count")
        hidden = get("embedding_length")
        n_heads = get("attention.head_count")
        n_kv_heads = get("attention.head_count_kv", n_heads)
        if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise PimoeError(f"{where}: head_count {n_heads} is not a positive multiple of "
                             f"head_count_kv {n_kv_heads}")
        head_dim = get("attention.key_length", hidden // n_heads)
        head_dim_v = get("attention.value_length", hidden // n_heads)
        if head_dim_v != head_dim:
            raise PimoeError(f"{where}: key_length {head_dim} != value_length {head_dim_v}; not supported")
        n_experts = get("expert_count", 0)
        n_used = get("expert_used_count", 0)
        if n_experts <= 0 or not 0 < n_used <= n_experts:
            raise PimoeError(f"{where}: '{arch}' model with expert_count={n_experts}, "
                             f"expert_used_count={n_used}: pimoe runs Mixture-of-Experts models only")
        ff = md.get(f"{arch}.feed_forward_length")
        if spec.expert_ff_key == "feed_forward_length":
            expert_ff = get("feed_forward_length")
        else:
            default = None
            if ff is not None:
                default = int(get("feed_forward_length")) // n_used
            expert_ff = get(spec.expert_ff_key, default)
        shared_ff = 0
        if spec.shared_expert:
            shared_ff = get("expert_shared_feed_forward_length", ff)

        rope_dim = get("rope.dimension_count", head_dim)
        if rope_dim != head_dim:
            # every arch here asserts n_rot == head dim in llama.cpp's graph
            raise PimoeError(f"{where}: rope.dimension_count {rope_dim} != head dim {head_dim}; not supported")
        scaling = md.get(f"{arch}.rope.scaling.type", "linear")
        if not isinstance(scaling, str):
            raise PimoeError(f"{where}: metadata key '{arch}.rope.scaling.type' is {scaling!r}, expected a string")
        factor_key = f"{arch}.rope.scaling.factor" if f"{arch}.rope.scaling.factor" in md \
            else f"{arch}.rope.scale_linear"
        factor = _checked(md.get(factor_key, 0.0), f"{where}: metadata key '{factor_key}'", float)
        if factor < 0:
            raise PimoeError(f"{where}: metadata key '{factor_key}' is {factor}, must not be negative")
        if factor in (0.0, 1.0) or scaling == "none":
            freq_scale = 1.0
        elif scaling == "linear":
            freq_scale = 1.0 / factor
        else:
            raise PimoeError(f"{where}: rope scaling '{scaling}' (factor {factor}) is not supported by pimoe")

        scales: dict[str, float] = {}
        if spec.granite_scales:
            # llama.cpp reads 0 (or an absent key) as "no scale" for the embedding and residual scales
            # and as "1/sqrt(head_dim)" for the attention scale; the logit scale is required
            scales["embedding_scale"] = get("embedding_scale", 0.0, kind=float) or 1.0
            scales["residual_scale"] = get("residual_scale", 0.0, kind=float) or 1.0
            scales["attention_scale"] = get("attention.scale", 0.0, kind=float)
            scales["logit_scale"] = get("logit_scale", kind=float)
            if scales["logit_scale"] == 0.0:
                raise PimoeError(f"{where}: '{arch}.logit_scale' is 0; logits would be divided by zero")
            if not md.get(f"{arch}.rope.scaling.finetuned", True):
                raise PimoeError(f"{where}: '{arch}.rope.scaling.finetuned' is false (no RoPE); not supported")
            if get("expert_shared_feed_forward_length", 0):
                raise PimoeError(f"{where}: a {arch} model with a shared expert (Granite MoE Shared) is not "
                                 f"supported by pimoe")

        if vocab_size is None:
            vocab_size = md.get(f"{arch}.vocab_size")
            if vocab_size is None:
                tokens = md.get("tokenizer.ggml.tokens")
                vocab_size = len(tokens) if isinstance(tokens, list) else 0
            vocab_size = _checked(vocab_size, f"{where}: metadata key '{arch}.vocab_size'", int)
        for what, v in (("block_count", n_layers), ("embedding_length", hidden),
                        ("attention.key_length", head_dim), (spec.expert_ff_key, expert_ff)):
            if v <= 0:
                raise PimoeError(f"{where}: metadata key '{arch}.{what}' is {v}, must be positive")
        if shared_ff < 0:
            raise PimoeError(f"{where}: shared expert feed_forward_length is {shared_ff}, must not be negative")
        context_length = get("context_length")
        if context_length <= 0:
            raise PimoeError(f"{where}: metadata key '{arch}.context_length' is {context_length}, must be positive")
        # llama.cpp divides by both; zero, negative or non-finite values make every activation NaN
        rms_eps = get("attention.layer_norm_rms_epsilon", kind=float)
        if not rms_eps > 0:
            raise PimoeError(f"{where}: metadata key '{arch}.attention.layer_norm_rms_epsilon' is {rms_eps}, "
                             f"must be positive")
        rope_base = get("rope.freq_base", 10000.0, kind=float)
        if not rope_base > 0:
            raise PimoeError(f"{where}: metadata key '{arch}.rope.freq_base' is {rope_base}, must be positive")
        return cls(
            arch=arch, n_layers=n_layers, hidden=hidden, n_heads=n_heads, n_kv_heads=n_kv_heads,
            head_dim=head_dim, n_experts=n_experts, n_experts_used=n_used, expert_ff=expert_ff,
            shared_ff=shared_ff, vocab_size=vocab_size,
            context_length=context_length, rms_eps=rms_eps, rope_base=rope_base, rope_dim=rope_dim,
            rope_freq_scale=freq_scale, rope_style=spec.rope_style, qk_norm=spec.qk_norm,
            norm_topk=spec.norm_topk, **scales,
        )
