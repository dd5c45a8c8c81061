"""The forward pass of a Mixture-of-Experts transformer, top to bottom, in numpy.

    x = token_embd[tokens]                                  # [T, hidden] (granitemoe: x embedding_scale)
    for each layer:
        h = rmsnorm(x) * attn_norm
        q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)        # [T, heads*hd], [T, kv_heads*hd] x2
        q, k = qk_norm(q, k)                                # per head (qwen3moe) / whole row (olmoe) / none
        q, k = rope(q, pos), rope(k, pos)                   # NEOX pairs (i, i+hd/2) or normal pairs (2i, 2i+1)
        append k, v to the layer's cache; attend causally, kv head = q head // (heads / kv_heads)
        x = x + Wo attn (+bo)                               # (granitemoe: x + residual_scale * ...)
        h = rmsnorm(x) * ffn_norm
        p = softmax(W_router h) over all experts; top-k; renormalize where the arch does
        x = x + backend.expert_ffn(layer, h, ids, weights) (+ sigmoid(g . h) * shared_ffn(h) for qwen2moe)
    logits = W_out (rmsnorm(x) * output_norm)               # (granitemoe: / logit_scale)

Every weight multiplication works on the stored blocks through pimoe.quant (matmul here, moe_swiglu in
the cpu backend), which reproduces llama.cpp's activation quantization, so logits match llama.cpp's CPU
backend closely; only the small 1-D tensors (norms, biases) are dequantized, once, at load. Attention runs in f32 like llama.cpp with an F32
KV cache. The routed experts go through the backend seam, so the model never knows where they run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pimoe import profile, quant
from pimoe.backends import get_backend
from pimoe.config import ModelConfig
from pimoe.errors import PimoeError
from pimoe.gguf_file import GGUFFile
from pimoe.tokenizer import Tokenizer

DEFAULT_MAX_CTX = 4096   # KV cache length unless asked otherwise (the cache is allocated lazily by the OS)


class LayerRouting(NamedTuple):
    expert_ids: np.ndarray   # int [T, k], router order (highest probability first)
    weights: np.ndarray      # f32 [T, k], the weights the expert outputs were mixed with
    probs: np.ndarray        # f32 [T, E], the router softmax over all experts


# ---------------------------------------------------------------------------------------------------------
# numeric building blocks (written to follow ggml's CPU ops step by step, so results agree to ~1e-6)

def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., n] f32 -> x / sqrt(mean(x^2) + eps) * weight. ggml sums the squares in double."""
    if x.dtype == np.float32 and weight.dtype == np.float32 and quant.KERNELS != "numpy":
        # the same steps as below in one numba call (a decode row: ~3 us instead of ~15); imported here so
        # that PIMOE_KERNELS=numpy never starts numba
        from pimoe.kernels.vecops import rmsnorm_rows

        n = x.shape[-1]
        return rmsnorm_rows(np.ascontiguousarray(x).reshape(-1, n), weight, eps).reshape(x.shape)
    mean = np.mean(np.square(x.astype(np.float64)), axis=-1, keepdims=True)
    scale = (np.float32(1.0) / np.sqrt((mean + eps).astype(np.float32))).astype(np.float32)
    return (x * scale) * weight


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in f32 (sum in double, as ggml)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)


def rope_tables(positions: np.ndarray, n_dims: int, base: float, freq_scale: float):
    """cos, sin [T, n_dims/2] f32 for angle pos * base^(-2i/n_dims) * freq_scale.

    ggml builds the angles by repeated f32 multiplication (theta *= base^(-2/n_dims)) and so do we:
    the exact powers would differ from llama.cpp's by a few ulps at large positions.
    """
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_dims)
    # column i = ((pos * s) * s) ... i times: an f32 cumulative product is exactly that chain
    angles = np.empty((len(positions), n_dims // 2), dtype=np.float32)
    angles[:, 0] = positions.astype(np.float32)
    angles[:, 1:] = theta_scale
    angles = np.cumprod(angles, axis=1, dtype=np.float32)
    angles *= np.float32(freq_scale)
    return np.cos(angles), np.sin(angles)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """x [T, heads, hd]; cos/sin [T, hd/2]. Rotates pairs of each head's values by the position's angles."""
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    if style == "neox":     # pairs (i, i + hd/2): Qwen, OLMoE (HF rotate_half)
        half = x.shape[-1] // 2
        x0, x1 = x[..., :half], x[..., half:]
        out[..., :half] = x0 * c - x1 * s
        out[..., half:] = x0 * s + x1 * c
    else:                   # "normal": adjacent pairs (2i, 2i+1), llama/Mixtral GGUF (weights permuted at convert)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
    return out


def route(logits: np.ndarray, k: int, renormalize: bool) -> LayerRouting:
    """Router: softmax over all experts, top-k, optional renormalization. logits [T, E] f32."""
    probs = softmax(logits)                                   # [T, E]
    # stable descending sort: highest probability first, lower index first on ties
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(probs, ids, axis=-1)         # [T, k]
    if renormalize:
        # llama.cpp clamps the sum at the smallest normal f16 to avoid dividing by zero
        total = np.maximum(weights.sum(axis=-1, keepdims=True), np.float32(6.103515625e-5))
        weights = weights / total
    return LayerRouting(ids, weights.astype(np.float32), probs)


# ---------------------------------------------------------------------------------------------------------

@dataclass
class AttentionWeights:
    q: object            # QTensor [heads*hd, hidden]
    k: object            # QTensor [kv_heads*hd, hidden]
    v: object            # QTensor [kv_heads*hd, hidden]
    o: object            # QTensor [hidden, heads*hd]
    q_bias: np.ndarray | None
    k_bias: np.ndarray | None
    v_bias: np.ndarray | None
    o_bias: np.ndarray | None
    q_norm: np.ndarray | None   # [hd] per head or [heads*hd] whole row, per config.qk_norm
    k_norm: np.ndarray | None


@dataclass
class LayerWeights:
    attn_norm: np.ndarray     # f32 [hidden]
    attn: AttentionWeights
    ffn_norm: np.ndarray      # f32 [hidden]
    router: object            # QTensor [experts, hidden]
    shexp_gate_inp: object | None   # QTensor [1, hidden] (stored 1-D) -- qwen2moe
    shexp_gate: object | None       # QTensor [shared_ff, hidden]
    shexp_up: object | None
    shexp_down: object | None       # QTensor [hidden, shared_ff]


def _vector(f: GGUFFile, name: str, n: int, required: bool = True) -> np.ndarray | None:
    if not required and not f.has(name):
        return None
    v = f.tensor(name, (n,)).dequantize().astype(np.float32)
    if not np.isfinite(v).all():        # an Inf/NaN norm weight or bias makes every activation non-finite
        bad = int(np.flatnonzero(~np.isfinite(v))[0])
        raise PimoeError(f"{f.path}: tensor '{name}' holds {v[bad]} at index {bad}: weights must be finite")
    return v


def _as_row_matrix(t):
    """A stored 1-D tensor [n] as a [1, n] QTensor so quant.matmul can use it (ggml treats it so)."""
    return quant.QTensor(name=t.name, qtype=t.qtype, shape=(1,) + tuple(t.shape), data=t.data.reshape(1, -1))


def load_layer(f: GGUFFile, cfg: ModelConfig, i: int) -> LayerWeights:
    p = f"blk.{i}."
    d, qd, kvd = cfg.hidden, cfg.q_dim, cfg.kv_dim
    if cfg.qk_norm == "head":
        qn, kn = _vector(f, p + "attn_q_norm.weight", cfg.head_dim), _vector(f, p + "attn_k_norm.weight", cfg.head_dim)
    elif cfg.qk_norm == "full":
        qn, kn = _vector(f, p + "attn_q_norm.weight", qd), _vector(f, p + "attn_k_norm.weight", kvd)
    else:
        qn = kn = None
    attn = AttentionWeights(
        q=f.tensor(p + "attn_q.weight", (qd, d)), k=f.tensor(p + "attn_k.weight", (kvd, d)),
        v=f.tensor(p + "attn_v.weight", (kvd, d)), o=f.tensor(p + "attn_output.weight", (d, qd)),
        q_bias=_vector(f, p + "attn_q.bias", qd, False), k_bias=_vector(f, p + "attn_k.bias", kvd, False),
        v_bias=_vector(f, p + "attn_v.bias", kvd, False), o_bias=_vector(f, p + "attn_output.bias", d, False),
        q_norm=qn, k_norm=kn)
    sg = su = sd = sgi = None
    if cfg.spec.shared_expert:
        sff = cfg.shared_ff
        sgi = _as_row_matrix(f.tensor(p + "ffn_gate_inp_shexp.weight", (d,)))
        sg = f.tensor(p + "ffn_gate_shexp.weight", (sff, d))
        su = f.tensor(p + "ffn_up_shexp.weight", (sff, d))
        sd = f.tensor(p + "ffn_down_shexp.weight", (d, sff))
    return LayerWeights(
        attn_norm=_vector(f, p + "attn_norm.weight", d), attn=attn,
        ffn_norm=_vector(f, p + "ffn_norm.weight", d),
        router=f.tensor(p + "ffn_gate_inp.weight", (cfg.n_experts, d)),
        shexp_gate_inp=sgi, shexp_gate=sg, shexp_up=su, shexp_down=sd)


class Model:
    """A loaded MoE model: weights memory-mapped, a KV cache, an expert backend.

    logits(tokens)  whole sequence from an empty cache -> f32 [T, vocab]
    forward(tokens) appends to the cache (incremental decode) -> f32 [T, vocab]
    reset()         empties the cache
    generate(prompt, max_tokens, temperature=0.0, seed=None) streams token ids
    routing         the last forward call's router decisions: one LayerRouting per layer
    routing_history every forward call's `routing` since the last reset (so a whole generate() run)
    close()         releases the backend (also `with load_model(...) as model:`)
    """

    def __init__(self, gguf_file: GGUFFile, backend: str = "cpu", n_ctx: int | None = None, **backend_opts):
        self.file = gguf_file
        cfg = self.config = gguf_file.config
        f = gguf_file
        # tensors that would change the computation in ways pimoe does not implement: refuse, not ignore
        for name, why in (("rope_freqs.weight", "per-frequency RoPE factors (llama3-style rope scaling)"),
                          ("blk.0.attn_qkv.weight", "a fused QKV projection"),
                          ("blk.0.exp_probs_b.bias", "an expert selection bias")):
            if f.has(name):
                raise PimoeError(f"{f.path}: tensor '{name}' means {why}, which pimoe does not implement")
        if not f.has("blk.0.ffn_up_exps.weight") and f.has("blk.0.ffn_up.0.weight"):
            raise PimoeError(f"{f.path}: experts are stored one tensor each (blk.N.ffn_up.E.weight), the old "
                             f"Mixtral layout; convert the model again with a current llama.cpp (merged *_exps)")
        self.token_embd = f.tensor("token_embd.weight", (cfg.vocab_size, cfg.hidden))
        self.output_norm = _vector(f, "output_norm.weight", cfg.hidden)
        if f.has("output.weight") or not cfg.spec.tied_output:
            self.output = f.tensor("output.weight", (cfg.vocab_size, cfg.hidden))
        else:
            self.output = self.token_embd      # tied: the embedding doubles as the output head
        self.layers = [load_layer(f, cfg, i) for i in range(cfg.n_layers)]
        self.backend = get_backend(backend, gguf_file, cfg, **backend_opts)

        self.n_ctx = int(n_ctx) if n_ctx is not None else min(cfg.context_length, DEFAULT_MAX_CTX)
        if self.n_ctx <= 0:
            raise PimoeError(f"n_ctx must be positive, got {n_ctx}")
        # KV cache [layers, n_ctx, kv_heads, hd] f32; np.zeros maps untouched pages lazily.
        shape = (cfg.n_layers, self.n_ctx, cfg.n_kv_heads, cfg.head_dim)
        kv_bytes = 2 * 4 * cfg.n_layers * self.n_ctx * cfg.n_kv_heads * cfg.head_dim
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        if ram and kv_bytes > ram:
            raise PimoeError(f"a context of {self.n_ctx} tokens needs a {kv_bytes / 2**30:.1f} GiB KV cache, more "
                             f"than this machine's {ram / 2**30:.1f} GiB of memory; use a smaller n_ctx (--ctx)")
        try:
            self.k_cache = np.zeros(shape, dtype=np.float32)
            self.v_cache = np.zeros(shape, dtype=np.float32)
        except (MemoryError, ValueError):
            raise PimoeError(f"could not allocate the {kv_bytes / 2**30:.1f} GiB KV cache for {self.n_ctx} tokens; "
                             f"use a smaller n_ctx (--ctx)") from None
        self.pos = 0
        self.routing: list[LayerRouting] = []
        self.routing_history: list[list[LayerRouting]] = []
        self.tokenizer = self._load_tokenizer()

    def _load_tokenizer(self):
        if "tokenizer.ggml.model" not in self.file.metadata:
            return None
        return Tokenizer.from_gguf_metadata(self.file.metadata, str(self.file.path))

    # -- public API ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.pos = 0
        self.routing = []
        self.routing_history = []

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logits(self, tokens: Iterable[int]) -> np.ndarray:
        self.reset()
        return self.forward(tokens)

    def forward(self, tokens: Iterable[int]) -> np.ndarray:
        ids = self._check_tokens(tokens)
        cfg = self.config
        T = len(ids)
        # profiler regions (pimoe.profile): no-ops unless a profiler is active; bytes = weights read
        prof = profile.current()
        with prof.region("forward", tokens=T, pos=self.pos):
            with prof.region("embedding", bytes=T * self.token_embd.row_bytes):
                positions = np.arange(self.pos, self.pos + T)
                cos, sin = rope_tables(positions, cfg.rope_dim, cfg.rope_base, cfg.rope_freq_scale)
                x = np.stack([self.token_embd[int(t)].dequantize() for t in ids]).astype(np.float32)  # [T, hidden]
                if cfg.embedding_scale != 1.0:      # granitemoe
                    x = x * np.float32(cfg.embedding_scale)
            if not np.isfinite(x).all():
                self._non_finite("embedding", x, ids)
            routing = []
            for i, layer in enumerate(self.layers):
                with prof.region("layer", layer=i):
                    if cfg.residual_scale == 1.0:
                        x = x + self._attention(i, layer, rmsnorm(x, layer.attn_norm, cfg.rms_eps), cos, sin)
                        x = x + self._moe(i, layer, x, routing)
                    else:                           # granitemoe: each branch's output scaled before the add
                        rs = np.float32(cfg.residual_scale)
                        x = x + self._attention(i, layer, rmsnorm(x, layer.attn_norm, cfg.rms_eps), cos, sin) * rs
                        x = x + self._moe(i, layer, x, routing) * rs
                if not np.isfinite(x).all():
                    self._non_finite(i, x, ids)
            self.pos += T
            self.routing = routing
            self.routing_history.append(routing)
            with prof.region("output_head", bytes=self.output.nbytes,
                             flops=2 * T * self.output.shape[0] * self.output.shape[1]):
                x = rmsnorm(x, self.output_norm, cfg.rms_eps)
                logits, = self.backend.dense_matmul((self.output,), x)         # [T, vocab]
                if cfg.logit_scale != 1.0:          # granitemoe: llama.cpp multiplies by 1/scale (in f32)
                    logits = logits * (np.float32(1.0) / np.float32(cfg.logit_scale))
            if not np.isfinite(logits).all():
                self._non_finite("output", logits, ids)
            return logits

    def generate(self, prompt: str | Iterable[int], max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, stop_at_eos: bool = True) -> Iterator[int]:
        """Stream up to max_tokens new token ids after `prompt` (str or token ids), from an empty cache.

        temperature 0 is greedy argmax; otherwise sample from softmax(logits / temperature) with `seed`.
        Stops early (the token is not yielded) at any end-of-generation token, as llama.cpp and
        `pimoe run` do: eos, eot and the texts llama.cpp treats so (<|im_end|>, <|endoftext|>, <|eot_id|>,
        ...; tokenizer.eog_ids); stop_at_eos=False generates through them. Also stops when the context
        is full.
        """
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise PimoeError(f"{self.file.path}: the file has no tokenizer; pass token ids instead of text")
            prompt = self.tokenizer.encode(prompt)
        if seed is not None and int(seed) < 0:
            seed = None          # -1: a random seed, as llama.cpp's
        rng = np.random.default_rng(seed)
        stop = frozenset(getattr(self.tokenizer, "eog_ids", ())) if stop_at_eos else frozenset()
        if max_tokens <= 0:
            return
        logits = self.logits(prompt)[-1]
        for i in range(max_tokens):
            with profile.current().region("sampling"):
                tok = _sample(logits, temperature, rng)
            if tok in stop:
                return
            yield tok
            if i == max_tokens - 1 or self.pos >= self.n_ctx:
                return      # the last token is not fed back: nothing would read its logits
            logits = self.forward([tok])[-1]

    # -- internals ----------------------------------------------------------------------------------------

    def _non_finite(self, i, x: np.ndarray, ids: np.ndarray) -> None:
        """An activation overflowed f32 (weights of ~1e38, a damaged file): llama.cpp would go on and return
        NaN logits; pimoe stops with where it happened."""
        t, j = (int(v[0]) for v in np.nonzero(~np.isfinite(x)))
        where = f"layer {i}" if isinstance(i, int) else {"output": "the output head"}.get(i, "the token embedding")
        pos = self.pos - len(ids) + t if i == "output" else self.pos + t   # pos is advanced before the head
        raise PimoeError(f"{self.file.path}: {where} produced a non-finite value ({x[t, j]}) at position "
                         f"{pos} (token id {int(ids[t])}), element {j}: the weights overflow f32 "
                         f"(damaged or mis-scaled file?)")

    def _check_tokens(self, tokens) -> np.ndarray:
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise PimoeError("forward needs a non-empty list of token ids")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if len(bad):
            raise PimoeError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if self.pos + len(ids) > self.n_ctx:
            raise PimoeError(f"{len(ids)} tokens do not fit in the context: {self.pos} of {self.n_ctx} positions "
                             f"already used (prompt too long? load with a larger n_ctx, at most "
                             f"{self.config.context_length})")
        return ids

    def _attention(self, i: int, layer: LayerWeights, h: np.ndarray, cos, sin) -> np.ndarray:
        cfg, a = self.config, layer.attn
        T, H, Hkv, hd = h.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        prof = profile.current()
        if not prof.enabled:
            return self._attention_body(i, layer, h, cos, sin)
        S = self.pos + T                  # keys attended (scores and A.V: 2 x 2 x T x S x H x hd FLOPs)
        with prof.region("attention", layer=i, bytes=profile.matrix_bytes(a.q, a.k, a.v, a.o),
                         flops=profile.matrix_flops(T, a.q, a.k, a.v, a.o) + 4 * T * S * H * hd,
                         kv_bytes=4 * (2 * T + 2 * S) * Hkv * hd):   # f32 K,V written for T, read for S
            return self._attention_body(i, layer, h, cos, sin)

    def _attention_body(self, i: int, layer: LayerWeights, h: np.ndarray, cos, sin) -> np.ndarray:
        cfg, a = self.config, layer.attn
        T, H, Hkv, hd = h.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # [T, H*hd], [T, Hkv*hd] x 2: the backend's dense seam (quant.matmul unless it splits them with the QPU)
        q, k, v = self.backend.dense_matmul((a.q, a.k, a.v), h)
        if a.q_bias is not None:
            q = q + a.q_bias
        if a.k_bias is not None:
            k = k + a.k_bias
        if a.v_bias is not None:
            v = v + a.v_bias
        if cfg.qk_norm == "full":         # OLMoE: one RMSNorm over the whole projection
            q = rmsnorm(q, a.q_norm, cfg.rms_eps)
            k = rmsnorm(k, a.k_norm, cfg.rms_eps)
        q = q.reshape(T, H, hd)
        k = k.reshape(T, Hkv, hd)
        if cfg.qk_norm == "head":         # Qwen3: RMSNorm of each head's vector
            q = rmsnorm(q, a.q_norm, cfg.rms_eps)
            k = rmsnorm(k, a.k_norm, cfg.rms_eps)
        q = apply_rope(q, cos, sin, cfg.rope_style)
        k = apply_rope(k, cos, sin, cfg.rope_style)

        p0, p1 = self.pos, self.pos + T
        self.k_cache[i, p0:p1] = k
        self.v_cache[i, p0:p1] = v.reshape(T, Hkv, hd)
        K = self.k_cache[i, :p1].transpose(1, 0, 2)          # [Hkv, S, hd]
        V = self.v_cache[i, :p1].transpose(1, 0, 2)          # [Hkv, S, hd]
        group = H // Hkv                                      # query heads per kv head (GQA)
        qg = q.transpose(1, 0, 2).reshape(Hkv, group, T, hd)  # [Hkv, group, T, hd]
        scores = (qg @ K[:, None].transpose(0, 1, 3, 2)) * np.float32(cfg.kq_scale)   # [Hkv, group, T, S]
        # causal mask: the query at absolute position p0+t sees keys 0..p0+t
        future = np.arange(p1)[None, :] > (p0 + np.arange(T))[:, None]   # [T, S]
        scores = np.where(future, np.float32(-np.inf), scores)
        att = softmax(scores) @ V[:, None]                    # [Hkv, group, T, hd]
        att = att.reshape(H, T, hd).transpose(1, 0, 2).reshape(T, H * hd)
        out, = self.backend.dense_matmul((a.o,), np.ascontiguousarray(att))    # [T, hidden]
        if a.o_bias is not None:
            out = out + a.o_bias
        return out

    def _moe(self, i: int, layer: LayerWeights, x: np.ndarray, routing: list) -> np.ndarray:
        cfg = self.config
        prof = profile.current()
        T = x.shape[0]
        with prof.region("router", layer=i, bytes=layer.router.nbytes,
                         flops=2 * T * layer.router.shape[0] * layer.router.shape[1]):
            h = rmsnorm(x, layer.ffn_norm, cfg.rms_eps)
            r = route(quant.matmul(layer.router, h), cfg.n_experts_used, cfg.norm_topk)
        routing.append(r)
        with prof.region("experts", layer=i) as region:
            if prof.enabled:   # only the experts the router chose are read (each once per forward)
                w = self.backend.experts[i] if hasattr(self.backend, "experts") else None
                if w is not None:
                    tensors = (w.gate, w.up, w.down)
                    region.count(bytes=profile.expert_bytes(tensors, r.expert_ids),
                                 flops=profile.expert_flops(tensors, r.expert_ids))
            out = self.backend.expert_ffn(i, h, r.expert_ids, r.weights)   # [T, hidden]
        if layer.shexp_gate is not None:
            # qwen2moe shared expert: always on, scaled per token by sigmoid(g . h)
            with prof.region("shared_expert", layer=i,
                             bytes=profile.matrix_bytes(layer.shexp_gate_inp, layer.shexp_gate, layer.shexp_up,
                                                        layer.shexp_down),
                             flops=profile.matrix_flops(T, layer.shexp_gate_inp, layer.shexp_gate,
                                                        layer.shexp_up, layer.shexp_down)):
                g = quant.matmul(layer.shexp_gate_inp, h)                  # [T, 1]
                gate = np.float32(1.0) / (np.float32(1.0) + np.exp(-g))
                out = out + quant.swiglu_ffn(layer.shexp_gate, layer.shexp_up, layer.shexp_down, h) * gate
        return out


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if not np.isfinite(temperature):
        raise PimoeError(f"temperature must be finite, got {temperature}")
    if temperature <= 0.0:
        return int(np.argmax(logits))
    p = softmax((logits / np.float32(temperature)).astype(np.float32)).astype(np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def load_model(path: str | os.PathLike[str], backend: str = "cpu", n_ctx: int | None = None,
               **backend_opts: object) -> Model:
    """Open a GGUF MoE model (memory-mapped) and return a Model running its experts on `backend`.

    The keyword arguments are documented on pimoe.load_model."""
    return Model(GGUFFile(path), backend=backend, n_ctx=n_ctx, **backend_opts)
