"""The qpu backend end to end: tiny models of every architecture and several weight types, with the expert
FFNs executed in the emulator, against the same model on the CPU (and against llama.cpp for F32). Each
runs through both QPU routes that work without a Pi: "emu" (the emulator called directly) and "virtual"
(the hardware route: pimoe's v3d UAPI client over the virtual V3D device, whose jobs the emulator runs)."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe import load_model
from pimoe.errors import PimoeError

TOKENS = [1, 17, 42, 7, 300, 5]
ROUTES = ("emu", "virtual")


@pytest.fixture(params=ROUTES)
def route(request):
    return request.param

CASES = [("qwen3moe", "F32"), ("qwen3moe", "Q4_K"), ("qwen3moe", "Q8_0"), ("olmoe", "Q4_0"), ("olmoe", "Q6_K"),
         ("qwen2moe", "Q5_K"), ("qwen2moe", "F16"), ("llama", "Q4_1"), ("llama", "Q2_K")]


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("arch,qtype", CASES)
def test_qpu_logits_equal_cpu_computed_the_same_way(route, tiny_model, arch, qtype):
    """qpu-reference is the cpu computing exactly what the QPU computes (dequantized weights, f32
    activations, no llama.cpp activation quantization): every layer's expert output within 1e-5 relative,
    the experts really ran in the emulator (counters), and the same greedy tokens.

    The logits: with F32/F16 weights within 1e-5. With quantized weights the attention, router and output
    head (on the CPU in both models) quantize their input activations to 8 bits as llama.cpp does, so a
    float-rounding difference in an expert output can move one activation across a rounding boundary
    (one Q8 step is 1/127 of a block's largest value); the logits then differ by up to a few 1e-3 even
    though the expert outputs agree to 1e-6.
    """
    path = tiny_model(arch, qtype)
    with load_model(path, backend="qpu", qpu=route, threads=4) as mq, \
            load_model(path, backend="qpu-reference") as mr:
        diffs = []
        run_qpu = mq.backend.expert_ffn

        def checked(layer, x, ids, w):
            y = run_qpu(layer, x, ids, w)
            diffs.append(_rel(y, mr.backend.expert_ffn(layer, x, ids, w)))
            return y

        mq.backend.expert_ffn = checked
        lq = mq.logits(TOKENS)
        lr = mr.logits(TOKENS)
        stats = mq.backend.stats
        n_layers = mq.config.n_layers
    assert max(diffs) < 1e-5 and len(diffs) == n_layers
    assert _rel(lq, lr) < (1e-5 if qtype in ("F32", "F16") else 5e-3)
    assert np.array_equal(lq.argmax(-1), lr.argmax(-1))
    assert 2 * n_layers <= stats["dispatches"] <= 8 * n_layers     # 2 per layer and tile width (<= 4)
    assert stats["instructions"] > 0 and stats["sfu_ops"] > 0
    assert stats["tmu_read_bytes"] > 0


@pytest.mark.parametrize("arch,qtype", [("qwen3moe", "Q4_K"), ("olmoe", "Q8_0"), ("llama", "F32")])
def test_qpu_greedy_tokens(route, tiny_model, arch, qtype):
    """Greedy generation on the QPU equals the cpu computing the same arithmetic (qpu-reference); with F32
    weights (no activation quantization anywhere) it also equals the default cpu backend token for token."""
    path = tiny_model(arch, qtype)
    with load_model(path, backend="qpu", qpu=route) as mq, load_model(path, backend="qpu-reference") as mr, \
            load_model(path, backend="cpu") as mc:
        got = list(mq.generate(TOKENS[:3], max_tokens=6))
        assert got == list(mr.generate(TOKENS[:3], max_tokens=6))
        if qtype == "F32":
            assert got == list(mc.generate(TOKENS[:3], max_tokens=6))
            assert _rel(mq.logits(TOKENS), mc.logits(TOKENS)) < 1e-5


def test_qpu_f32_equals_llama_cpp(route, tiny_model, llama_ref):
    path = tiny_model("qwen3moe", "F32")
    ref = llama_ref(path)
    with load_model(path, backend="qpu", qpu=route) as mq:
        lq = mq.logits(TOKENS)
    assert _rel(lq, ref.logits(TOKENS)) < 1e-4


def test_qpu_decode_matches_whole_sequence(route, tiny_model):
    """Incremental decode (one token per call: the k-expert sum in the kernel) equals the prompt path
    (token tiles, host sum)."""
    path = tiny_model("qwen3moe", "Q4_0")
    with load_model(path, backend="qpu", qpu=route) as m:
        whole = m.logits(TOKENS)
        m.reset()
        steps = np.concatenate([m.forward([t]) for t in TOKENS])
    assert _rel(steps, whole) < 1e-4


def test_memory_plan_and_clear_error(tiny_model):
    from pimoe.backends.qpu import qpu_memory_plan
    from pimoe.backends.base import ExpertWeights
    from pimoe.gguf_file import GGUFFile

    path = tiny_model("qwen3moe", "Q4_K")
    f = GGUFFile(path)
    cfg = f.config
    plan = qpu_memory_plan(f, cfg, [ExpertWeights(f, cfg, i) for i in range(cfg.n_layers)])
    # Q4_K -> 6 bits per weight in the QPU layout; 3 tensors of E x ff x hidden per layer
    assert plan.weights == cfg.n_layers * 3 * cfg.n_experts * cfg.expert_ff * cfg.hidden * 6 // 8
    with pytest.raises(PimoeError, match=r"needs .* MiB of QPU memory .* does not fit: it needs .* MiB of RAM \(.* MiB QPU copy\) but "
                                         r"memory_limit is 1\.0 MiB"):
        load_model(path, backend="qpu", qpu="emu", memory_limit=1 << 20)


def test_bad_options():
    import pimoe.backends.qpu as q

    assert q.QPUBackend.name == "qpu"
    with pytest.raises(PimoeError, match="driver 'bogus'|choose one of"):
        from pimoe.qpu import open_driver
        open_driver("bogus")


def test_run_command_with_qpu_emulator(tiny_model, capsys):
    from pimoe.cli import main

    path = tiny_model("qwen3moe", "Q8_0")
    rc = main(["run", "-m", str(path), "-p", "Hello", "-n", "4", "--backend", "qpu", "--qpu", "emu",
               "--no-warmup"])
    assert rc in (0, None)
    assert "backend qpu" in capsys.readouterr().err


def test_hw_driver_absent_is_a_clear_error(tiny_model):
    from pimoe.qpu.driver import hardware_available

    if hardware_available()[0]:
        pytest.skip("a V3D GPU is present")
    with pytest.raises(PimoeError, match="hardware|py-videocore6"):
        load_model(tiny_model("qwen3moe", "F32"), backend="qpu", qpu="hw")
