"""The profiler's accounting: bytes of the experts really chosen, regions covering the token, trace format."""

from __future__ import annotations

import json
import time

import gguf
import numpy as np
import pytest

import pimoe
from pimoe import profile


def _stored_bytes(qtype_name: str, n_weights: int) -> int:
    """Bytes of n_weights in a GGUF block format, from gguf-py's block table (not pimoe's)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype_name]]
    assert n_weights % block == 0
    return n_weights // block * size


@pytest.fixture(scope="module")
def mixed_model(tiny_model):
    # experts in two different block formats so a per-tensor mistake shows: gate/up Q8_0, down Q4_0
    return tiny_model("qwen3moe", "Q8_0", tensor_types={"ffn_down_exps": "Q4_0"}, n_experts=16)


def _forward_profiled(model, tokens):
    prof = profile.Profiler()
    with profile.activate(prof):
        model.forward(tokens)
    return prof


def test_expert_bytes_are_the_chosen_experts_by_hand(mixed_model):
    model = pimoe.load_model(mixed_model)
    cfg = model.config
    model.logits([5, 9, 13])                            # a prompt, then profile one decode token and a batch
    for tokens in ([17], [3, 4, 5, 6]):
        prof = _forward_profiled(model, tokens)
        experts = [r for r in prof.regions if r.name == "experts"]
        assert [r.tags["layer"] for r in experts] == list(range(cfg.n_layers))
        gate_up = _stored_bytes("Q8_0", cfg.expert_ff * cfg.hidden)     # one expert's gate (= up) matrix
        down = _stored_bytes("Q4_0", cfg.hidden * cfg.expert_ff)
        for layer, region in enumerate(experts):
            chosen = set(np.asarray(model.routing[layer].expert_ids).ravel().tolist())
            assert 0 < len(chosen) <= min(cfg.n_experts, len(tokens) * cfg.n_experts_used)
            assert region.counters["bytes"] == len(chosen) * (2 * gate_up + down)
            pairs = len(tokens) * cfg.n_experts_used
            assert region.counters["flops"] == 2 * pairs * 3 * cfg.expert_ff * cfg.hidden


def test_bytes_per_decode_token_by_hand(mixed_model):
    model = pimoe.load_model(mixed_model)
    cfg = model.config
    model.logits([1, 2])
    prof = _forward_profiled(model, [7])
    total = sum(r.counters.get("bytes", 0) for r in prof.regions)
    d, qd, kvd = cfg.hidden, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attn = _stored_bytes("Q8_0", qd * d) * 2 + _stored_bytes("Q8_0", kvd * d) * 2   # q, o, k, v
    router = 4 * cfg.n_experts * d                                                  # routers stay F32
    expert = 2 * _stored_bytes("Q8_0", cfg.expert_ff * d) + _stored_bytes("Q4_0", d * cfg.expert_ff)
    n_chosen = sum(len(set(np.asarray(r.expert_ids).ravel().tolist())) for r in model.routing)
    assert n_chosen == cfg.n_layers * cfg.n_experts_used                             # one token: k each
    want = (_stored_bytes("Q8_0", d)                                                 # one embedding row
            + cfg.n_layers * (attn + router) + n_chosen * expert
            + _stored_bytes("Q8_0", cfg.vocab_size * d))                             # output head
    assert total == want


def test_regions_cover_the_token(tiny_model):
    """Stated error: the named regions cover >= 95 % of each forward and >= 90 % of each layer (measured:
    99.8 % both, tiny and Qwen3-shaped models), and forward + sampling are within 5 % (+ 0.5 ms) of the
    wall time measured outside the model (measured: 99.9 %).

    On a loaded machine a preemption between two regions is time no region holds, so one run can miss the
    bar by noise: the best of three runs is checked (the structural assertions hold in every run)."""
    model = pimoe.load_model(tiny_model("qwen3moe", "F32"))
    model.logits([1, 2, 3])
    model.forward([4])
    misses = []
    for _ in range(3):
        model.reset()
        prof = profile.Profiler()
        with profile.activate(prof):
            t0 = time.perf_counter()
            toks = list(model.generate([1, 2, 3, 4], 12))
            outside = time.perf_counter() - t0
        assert len(toks) == 12
        s = prof.summary()
        fwd = s["forward"]
        assert fwd["calls"] == 12                # the prompt + 11 decode steps (the last token is not fed back)
        children = sum(v["seconds"] for p, v in s.items() if p.count("/") == 1 and p.startswith("forward/"))
        assert children <= fwd["seconds"]
        layer = s["forward/layer"]
        layer_children = sum(v["seconds"] for p, v in s.items()
                             if p.count("/") == 2 and p.startswith("forward/layer/"))
        inside = fwd["seconds"] + s["sampling"]["seconds"]
        assert inside <= outside
        shortfall = [children < 0.95 * fwd["seconds"], layer_children < 0.90 * layer["seconds"],
                     inside < 0.95 * outside - 5e-4]
        if not any(shortfall):
            return
        misses.append((children / fwd["seconds"], layer_children / layer["seconds"], inside / outside))
    pytest.fail(f"coverage below the stated bars in 3 runs (forward, layer, outside): {misses}")


def test_trace_is_valid_trace_event_json(tiny_model, tmp_path):
    model = pimoe.load_model(tiny_model("qwen3moe", "F32"))
    prof = profile.Profiler()
    with profile.activate(prof):
        model.logits([1, 2, 3])
        model.forward([4])
    path = prof.write_trace(tmp_path / "trace.json")
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(prof.regions) > 0
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= set(e)
        assert e["ph"] in ("X", "M")
    for e in complete:
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
        assert e["ts"] >= 0 and e["dur"] >= 0
    # nesting: every region lies inside its parent's interval (Perfetto draws the tree from this)
    for r in prof.regions:
        if r.parent >= 0:
            p = prof.regions[r.parent]
            assert p.start <= r.start <= r.end <= p.end
    names = {e["name"] for e in complete}
    assert {"forward", "embedding", "layer", "attention", "router", "experts", "output_head"} <= names
    layers = sorted({e["args"]["layer"] for e in complete if e["name"] == "attention"})
    assert layers == list(range(model.config.n_layers))


def test_profiling_changes_no_numbers_and_records_nothing_when_off(tiny_model):
    path = tiny_model("qwen3moe", "F32")
    a = pimoe.load_model(path).logits([3, 1, 4, 1, 5])
    prof = profile.Profiler()
    with profile.activate(prof):
        b = pimoe.load_model(path).logits([3, 1, 4, 1, 5])
    assert np.array_equal(a, b)
    assert profile.current() is profile.NULL
    before = len(prof.regions)
    pimoe.load_model(path).logits([2, 7])          # no profiler active: nothing recorded anywhere
    assert len(prof.regions) == before


def test_overhead_is_small():
    o = profile.overhead(5000)
    # stated in pimoe/profile.py: ~0.5 us off, 1.5-5 us on (fastest of 5 batches, so one preemption on a
    # shared CI machine no longer decides it); bounds 20x above that, so only a real slowdown fails
    assert o["off_s"] < 20e-6
    assert o["on_s"] < 100e-6


def test_nested_self_time_and_counters():
    prof = profile.Profiler()
    with profile.activate(prof):
        with profile.region("a", bytes=10):
            with profile.region("b", flops=4) as b:
                time.sleep(0.002)
                b.count(flops=1)
            profile.count(bytes=5)
            time.sleep(0.001)
    s = prof.summary()
    assert s["a"]["bytes"] == 15 and s["a/b"]["flops"] == 5
    assert s["a"]["seconds"] >= s["a/b"]["seconds"] >= 0.002
    assert abs(s["a"]["self_seconds"] - (s["a"]["seconds"] - s["a/b"]["seconds"])) < 1e-9
