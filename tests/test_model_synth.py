"""pimoe.synth.make_model: shapes, types, determinism, and errors for impossible requests."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from pimoe.errors import PimoeError
from pimoe.gguf_file import GGUFFile
from pimoe.synth import make_model


def test_same_seed_same_file_other_seed_other_weights(tmp_path):
    a = make_model(tmp_path / "a.gguf", arch="olmoe", qtype="Q5_1", seed=3)
    b = make_model(tmp_path / "b.gguf", arch="olmoe", qtype="Q5_1", seed=3)
    c = make_model(tmp_path / "c.gguf", arch="olmoe", qtype="Q5_1", seed=4)
    assert a.read_bytes() == b.read_bytes()
    fa, fc = GGUFFile(a), GGUFFile(c)
    assert not np.array_equal(fa.tensors["blk.0.attn_q.weight"].data, fc.tensors["blk.0.attn_q.weight"].data)


@pytest.mark.parametrize("qtype, hidden", [("Q4_0", 64), ("Q4_K", 256), ("BF16", 64)])
def test_tiny_preset_fits_the_block_size(tmp_path, qtype, hidden):
    f = GGUFFile(make_model(tmp_path / "m.gguf", qtype=qtype))
    assert f.config.hidden == hidden
    assert f.tensors["blk.1.ffn_down_exps.weight"].qtype.name == qtype
    assert f.tensors["blk.1.ffn_gate_inp.weight"].qtype.name == "F32"       # the router stays F32
    assert f.tensors["blk.1.ffn_norm.weight"].qtype.name == "F32"


def test_weights_have_the_intended_scale(tmp_path):
    # std 1/sqrt(fan_in) keeps activations O(1) through the layers (so logits comparisons mean something)
    f = GGUFFile(make_model(tmp_path / "m.gguf", qtype="Q6_K"))
    w = f.tensors["blk.0.ffn_up_exps.weight"][0].dequantize()          # [ff, hidden=256]
    assert 0.5 / 16 < w.std() < 2 / 16


def test_qwen2moe_has_shared_expert_and_qkv_biases(tmp_path):
    f = GGUFFile(make_model(tmp_path / "m.gguf", arch="qwen2moe"))
    for name in ("ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "attn_q.bias"):
        assert f"blk.0.{name}.weight" in f.tensors or f"blk.0.{name}" in f.tensors
    assert f.config.shared_ff == 128 and f.tensors["blk.0.ffn_gate_inp_shexp.weight"].shape == (64,)


def test_real_preset_with_few_layers(tmp_path):
    f = GGUFFile(make_model(tmp_path / "o.gguf", preset="olmoe-1b-7b", qtype="Q8_0", n_layers=1, empty=True))
    c = f.config
    assert (c.arch, c.n_layers, c.hidden, c.n_heads, c.n_experts, c.n_experts_used, c.expert_ff, c.vocab_size) == \
        ("olmoe", 1, 2048, 16, 64, 8, 1024, 50304)


@pytest.mark.parametrize("preset,want", [
    # published config.json shapes: layers, hidden, heads, kv heads, experts, top-k, expert ff, vocab
    ("granite-3.0-1b-a400m", ("granitemoe", 24, 1024, 16, 8, 32, 8, 512, 49155)),
    ("granite-3.0-3b-a800m", ("granitemoe", 32, 1536, 24, 8, 40, 8, 512, 49155)),
    ("qwen1.5-moe-a2.7b", ("qwen2moe", 24, 2048, 16, 16, 60, 4, 1408, 151936)),
])
def test_real_presets_read_back_with_their_shapes(tmp_path, preset, want):
    f = GGUFFile(make_model(tmp_path / "g.gguf", preset=preset, qtype="Q8_0", empty=True))
    c = f.config
    assert (c.arch, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.n_experts, c.n_experts_used, c.expert_ff,
            c.vocab_size) == want
    if c.arch == "granitemoe":    # granite's multipliers (config.json) and a tied output head
        assert (c.embedding_scale, c.attention_scale, c.logit_scale) == (12.0, 0.015625, 6.0)
        assert abs(c.residual_scale - 0.22) < 1e-6 and "output.weight" not in f.tensors


def test_errors(tmp_path):
    with pytest.raises(PimoeError, match="unknown preset 'huge'"):
        make_model(tmp_path / "x.gguf", preset="huge")
    with pytest.raises(PimoeError, match="unknown architecture 'gpt2'"):
        make_model(tmp_path / "x.gguf", arch="gpt2")
    with pytest.raises(PimoeError, match="unknown weight type 'Q9_9'"):
        make_model(tmp_path / "x.gguf", qtype="Q9_9")
    with pytest.raises(PimoeError, match="IQ2_XS"):
        make_model(tmp_path / "x.gguf", qtype=gguf.GGMLQuantizationType.IQ2_XS)
    with pytest.raises(PimoeError, match="preset 'olmoe-1b-7b' is a olmoe model"):
        make_model(tmp_path / "x.gguf", arch="qwen3moe", preset="olmoe-1b-7b")
    with pytest.raises(PimoeError, match="do not fit Q4_K blocks of 256"):
        make_model(tmp_path / "x.gguf", qtype="Q4_K", hidden=128)
    with pytest.raises(PimoeError, match="unknown model shape field"):
        make_model(tmp_path / "x.gguf", hiden=128)


def test_tensor_types_name_tensors_exactly(tmp_path):
    """'output.weight' is the output head only, not blk.N.attn_output.weight (a substring match hit both);
    per-layer keys apply to every layer, full names to one, '.weight' may be left off."""
    path = make_model(tmp_path / "m.gguf", arch="qwen3moe", qtype="Q8_0", n_layers=12, empty=True,
                      tensor_types={"output.weight": "Q6_K", "blk.1.attn_v.weight": "Q6_K",
                                    "ffn_down_exps": "Q4_K", "blk.2.ffn_down_exps": "Q5_K"})
    types = {n: t.qtype.name for n, t in GGUFFile(path).tensors.items()}
    assert types["output.weight"] == "Q6_K"
    assert all(types[f"blk.{i}.attn_output.weight"] == "Q8_0" for i in range(12))
    assert types["blk.1.attn_v.weight"] == "Q6_K"
    assert types["blk.11.attn_v.weight"] == "Q8_0" and types["blk.0.attn_v.weight"] == "Q8_0"
    assert types["blk.2.ffn_down_exps.weight"] == "Q5_K"          # the full name wins over the per-layer key
    assert all(types[f"blk.{i}.ffn_down_exps.weight"] == "Q4_K" for i in range(12) if i != 2)
    assert types["blk.0.ffn_up_exps.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["output_norm.weight"] == "F32"


def test_tensor_types_key_naming_no_matrix_is_an_error(tmp_path):
    with pytest.raises(PimoeError, match="attn_out"):
        make_model(tmp_path / "m.gguf", arch="qwen3moe", qtype="Q8_0", empty=True,
                   tensor_types={"attn_out": "Q6_K"})       # a fragment, not a tensor name
    with pytest.raises(PimoeError, match="blk.5.attn_v"):
        make_model(tmp_path / "m.gguf", arch="qwen3moe", qtype="Q8_0", n_layers=2, empty=True,
                   tensor_types={"blk.5.attn_v": "Q6_K"})   # no layer 5


def test_q4_k_m_recipe_types(tmp_path):
    """cpubench's Q4_K_M recipe gives what llama-quantize's does: output.weight and attn_v / ffn_down_exps
    of the use_more_bits layers Q6_K, everything else (attn_output included) Q4_K."""
    from pimoe.bench import cpu as cpubench

    n = 8
    qtype, recipe = cpubench.model_recipe("Q4_K_M", n)
    path = make_model(tmp_path / "m.gguf", preset="tiny", arch="qwen3moe", qtype=qtype, n_layers=n, empty=True,
                      tensor_types=recipe)
    types = {name: t.qtype.name for name, t in GGUFFile(path).tensors.items()}
    more = set(cpubench._more_bits_layers(n))
    assert more and more != set(range(n))
    for i in range(n):
        big = "Q6_K" if i in more else "Q4_K"
        assert types[f"blk.{i}.attn_v.weight"] == big and types[f"blk.{i}.ffn_down_exps.weight"] == big
        assert types[f"blk.{i}.attn_output.weight"] == "Q4_K" and types[f"blk.{i}.attn_q.weight"] == "Q4_K"
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert cpubench._types_follow_recipe(path, qtype, recipe)
    assert not cpubench._types_follow_recipe(path, qtype, {**recipe, "blk.0.attn_output.weight": "Q6_K"})
