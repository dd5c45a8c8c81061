"""The forward pass's parts against independent numpy formulas, the Python API, and its errors."""

from __future__ import annotations

import gguf.quants as gq
import numpy as np
import pytest

from conftest import ARCHS
from pimoe import backends
from pimoe.backends.cpu import CPUBackend
from pimoe.errors import PimoeError
from pimoe.kernels import actquant
from pimoe.model import apply_rope, load_model, rope_tables, route


def test_rope_neox_and_normal_rotate_the_right_pairs():
    rng = np.random.default_rng(0)
    hd, base = 16, 10000.0
    x = rng.standard_normal((5, 3, hd)).astype(np.float32)      # [T, heads, hd]
    pos = np.arange(7, 12)
    cos, sin = rope_tables(pos, hd, base, 1.0)
    freqs = base ** (-np.arange(0, hd, 2) / hd)                 # [hd/2]
    ang = pos[:, None, None] * freqs                            # [T, 1, hd/2]
    # NEOX: value i pairs with i + hd/2 (the complex number x[i] + j x[i+hd/2] turns by the angle)
    z = (x[..., :hd // 2] + 1j * x[..., hd // 2:]) * np.exp(1j * ang)
    np.testing.assert_allclose(apply_rope(x, cos, sin, "neox"),
                               np.concatenate([z.real, z.imag], -1), atol=2e-5)
    # normal: adjacent values (2i, 2i+1) pair up
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * ang)
    out = apply_rope(x, cos, sin, "normal")
    np.testing.assert_allclose(out[..., 0::2], z.real, atol=2e-5)
    np.testing.assert_allclose(out[..., 1::2], z.imag, atol=2e-5)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 1, 1, 32)).astype(np.float32)
    def score(m, n):
        cm, sm = rope_tables(np.array([m]), 32, 1e6, 1.0)
        cn, sn = rope_tables(np.array([n]), 32, 1e6, 1.0)
        return float((apply_rope(q, cm, sm, "neox") * apply_rope(k, cn, sn, "neox")).sum())
    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_router_softmax_topk_renormalize():
    logits = np.array([[0.0, 2.0, 1.0, -1.0], [3.0, 3.0, 0.0, 0.5]], np.float32)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    r = route(logits, 2, renormalize=False)
    np.testing.assert_array_equal(r.expert_ids, [[1, 2], [0, 1]])        # ties: lower index first
    np.testing.assert_allclose(r.probs, p, rtol=1e-6)
    np.testing.assert_allclose(r.weights, [[p[0, 1], p[0, 2]], [p[1, 0], p[1, 1]]], rtol=1e-6)
    rn = route(logits, 2, renormalize=True)
    np.testing.assert_allclose(rn.weights.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rn.weights[0], [p[0, 1], p[0, 2]] / (p[0, 1] + p[0, 2]), rtol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_routing_record_per_layer(arch, tiny_model):
    m = load_model(tiny_model(arch, "F32"))
    T = 16
    m.logits(list(range(100, 100 + T)))
    cfg = m.config
    assert len(m.routing) == cfg.n_layers
    for r in m.routing:
        assert r.expert_ids.shape == (T, cfg.n_experts_used) and r.weights.shape == (T, cfg.n_experts_used)
        assert r.probs.shape == (T, cfg.n_experts)
        np.testing.assert_allclose(r.probs.sum(1), 1.0, rtol=1e-5)
        chosen = np.take_along_axis(r.probs, r.expert_ids, 1)
        assert (chosen.min(1) >= np.sort(r.probs, 1)[:, -cfg.n_experts_used]).all()   # really the top-k
        if cfg.norm_topk:                   # qwen3moe, Mixtral, granitemoe
            np.testing.assert_allclose(r.weights.sum(1), 1.0, rtol=1e-5)
        else:                               # olmoe, qwen2moe: the raw probabilities
            np.testing.assert_allclose(r.weights, chosen, rtol=1e-6)
        assert len(np.unique(r.expert_ids)) >= 4          # the random router really spreads the tokens
    assert cfg.norm_topk == (arch in ("qwen3moe", "llama", "granitemoe"))


def _poison_unrouted_experts(backend, routing):
    """Replace every expert tensor by a copy whose experts that no token chose are all NaN (F32 bytes 0xFF)."""
    from pimoe.quant import QTensor

    for i, w in enumerate(backend.experts):
        used = set(routing[i].expert_ids.ravel().tolist())
        for attr in ("gate", "up", "down"):
            t = getattr(w, attr)
            data = np.array(t.data)
            for e in set(range(t.shape[0])) - used:
                data[e] = 0xFF
            setattr(w, attr, QTensor(t.name, t.qtype, t.shape, data))
    return backend


def _gguf_dense(t) -> np.ndarray:
    """A QTensor's weights as gguf-py (llama.cpp's own Python package) dequantizes its stored blocks."""
    return gq.dequantize(np.asarray(t.data), t.qtype).astype(np.float32).reshape(t.shape)


@pytest.mark.parametrize("qtype", ["F32", "Q4_K", "Q5_1", "BF16"])
@pytest.mark.parametrize("backend", ["cpu", "cpu-reference"])
def test_expert_backends_read_only_the_routed_experts_and_match_dense_numpy(tiny_model, backend, qtype):
    """Each backend's expert output against numpy on gguf-py's dequantized weights, the activations rounded
    the way llama.cpp's dot products round them (F32: not at all), so every weight type is checked against
    a reference outside pimoe.quant (not one backend against the other)."""
    m = load_model(tiny_model("olmoe" if qtype != "F32" else "qwen3moe", qtype), backend=backend)
    toks = [5, 6, 7]
    before = m.logits(toks)
    dense = [tuple(_gguf_dense(t) for t in (w.gate, w.up, w.down)) for w in m.backend.experts]
    types = [(w.gate.qtype, w.down.qtype) for w in m.backend.experts]
    assert all(len(set(r.expert_ids.ravel().tolist())) < m.config.n_experts for r in m.routing)
    # an expert nobody chose is now NaN: touching it anywhere (even times a zero weight) would show
    _poison_unrouted_experts(m.backend, m.routing)
    calls = []
    real = m.backend.expert_ffn

    def spy(layer, x, ids, weights):
        out = real(layer, x, ids, weights)
        calls.append((layer, x.copy(), ids.copy(), weights.copy(), out))
        return out

    m.backend.expert_ffn = spy
    after = m.logits(toks)
    np.testing.assert_array_equal(after, before)
    assert [c[0] for c in calls] == list(range(m.config.n_layers))
    for layer, x, ids, weights, out in calls:
        g, u, d = dense[layer]
        gate_type, down_type = types[layer]
        xr = actquant.roundtrip(x, gate_type).astype(np.float64)
        ref = np.zeros(x.shape, np.float64)
        for t in range(x.shape[0]):
            for e, wt in zip(ids[t], weights[t]):
                h = g[e] @ xr[t]
                a = (h / (1 + np.exp(-h)) * (u[e] @ xr[t])).astype(np.float32)
                ref[t] += wt * (d[e] @ actquant.roundtrip(a[None], down_type)[0].astype(np.float64))
        if qtype == "F32":
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
        else:
            # llama.cpp's Q8_1 activation blocks keep their sum as f16 (Q5_1: ~2e-4 of a matmul's output), and
            # that or an f32 summation order can move the down projection's input across a rounding step
            assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max(), (layer, np.abs(out - ref).max())


def test_backend_registry(tiny_model):
    with pytest.raises(PimoeError, match="unknown backend 'gpu9'.*cpu"):
        load_model(tiny_model("qwen3moe"), backend="gpu9")

    class Doubling(CPUBackend):
        name = "doubling"

        def expert_ffn(self, layer, x, ids, weights):
            return 2 * super().expert_ffn(layer, x, ids, weights)

    backends.register_backend("doubling-test", Doubling)
    try:
        a = load_model(tiny_model("qwen3moe")).logits([1, 2, 3])
        b = load_model(tiny_model("qwen3moe"), backend="doubling-test").logits([1, 2, 3])
        assert np.abs(a - b).max() > 1e-2          # the model really goes through the seam
    finally:
        backends._REGISTRY.pop("doubling-test")


def test_logits_from_empty_cache_and_incremental_forward(tiny_model):
    m = load_model(tiny_model("olmoe", "Q4_0"))
    toks = [11, 22, 33, 44, 55, 66]
    full = m.logits(toks)
    assert full.dtype == np.float32 and full.shape == (6, m.config.vocab_size)
    np.testing.assert_array_equal(m.logits(toks), full)        # logits() always starts from an empty cache
    m.reset()
    part = np.concatenate([m.forward(toks[:4]), m.forward(toks[4:])])
    np.testing.assert_allclose(part, full, atol=1e-4)
    assert m.pos == 6


def test_prompt_longer_than_context(tiny_model):
    m = load_model(tiny_model("qwen3moe"), n_ctx=8)
    with pytest.raises(PimoeError, match="9 tokens do not fit in the context.*0 of 8"):
        m.logits(list(range(9)))
    m.logits(list(range(8)))                                     # exactly full is fine
    with pytest.raises(PimoeError, match="1 tokens do not fit.*8 of 8"):
        m.forward([1])
    with pytest.raises(PimoeError, match="does not fit|do not fit"):
        list(m.generate(list(range(20)), 3))


def test_bad_tokens(tiny_model):
    m = load_model(tiny_model("qwen3moe"))
    with pytest.raises(PimoeError, match="token id 1000 is outside the vocabulary"):
        m.logits([1, 1000])
    with pytest.raises(PimoeError, match="token id -1"):
        m.logits([-1])
    with pytest.raises(PimoeError, match="non-empty"):
        m.logits([])


def test_generate_greedy_is_argmax_and_sampling_is_seeded(tiny_model):
    m = load_model(tiny_model("llama", "Q8_0"))
    prompt = [1, 50, 60, 70]
    out = list(m.generate(prompt, 6, stop_at_eos=False))
    assert len(out) == 6
    seq = list(prompt)
    for tok in out:                                             # each token is the argmax given the ones before
        assert tok == int(np.argmax(m.logits(seq)[-1]))
        seq.append(tok)
    a = list(m.generate(prompt, 8, temperature=1.5, seed=7, stop_at_eos=False))
    b = list(m.generate(prompt, 8, temperature=1.5, seed=7, stop_at_eos=False))
    c = list(m.generate(prompt, 8, temperature=1.5, seed=8, stop_at_eos=False))
    assert a == b and a != c


def test_routing_history_covers_a_whole_generation(tiny_model):
    with load_model(tiny_model("qwen2moe")) as m:
        out = list(m.generate([3, 4, 5], 4, stop_at_eos=False))
        assert [len(step[0].expert_ids) for step in m.routing_history] == [3, 1, 1, 1]   # prompt, then 1 per token
        assert len(out) == 4 and all(len(step) == m.config.n_layers for step in m.routing_history)
        m.reset()
        assert m.routing_history == [] and m.routing == []


def test_generate_from_text_uses_the_files_tokenizer(tiny_model):
    m = load_model(tiny_model("qwen3moe"))
    text = "The cat sat on the mat."
    ids = m.tokenizer.encode(text)
    assert list(m.generate(text, 4, stop_at_eos=False)) == list(m.generate(ids, 4, stop_at_eos=False))


@pytest.mark.parametrize("which", ["eos", "end-of-turn"])
def test_generate_stops_at_every_end_of_generation_token(tiny_model, which):
    # the model is made to pick an end-of-generation token at the third step: generate must stop there
    # (as `pimoe run` and llama.cpp do) for eos and for an end-of-turn token that is not eos
    m = load_model(tiny_model("qwen3moe"))
    tok = m.tokenizer
    eot = tok.token_to_id["<|endoftext|>"]          # eos of the built-in vocabulary is <|im_end|>
    assert eot != tok.eos_id and {eot, tok.eos_id} <= tok.eog_ids
    stop = tok.eos_id if which == "eos" else eot
    prompt = [5, 6, 7]
    free = list(m.generate(prompt, 6))
    assert len(free) == 6 and not set(free) & tok.eog_ids
    forward = m.forward

    def forced(tokens):
        out = forward(tokens)
        if m.pos == len(prompt) + 2:                # the logits that pick the third new token
            out[-1, stop] = out[-1].max() + 10.0
        return out

    m.forward = forced
    assert list(m.generate(prompt, 6)) == free[:2]
    assert list(m.generate(prompt, 6, stop_at_eos=False))[:3] == free[:2] + [stop]


def test_generate_stops_when_context_is_full(tiny_model):
    m = load_model(tiny_model("qwen3moe"), n_ctx=10)
    out = list(m.generate([1, 2, 3, 4, 5, 6, 7, 8], 50, stop_at_eos=False))
    assert len(out) == 3          # fills positions 8 and 9, then the third token has no room to be fed back
