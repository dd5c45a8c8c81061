"""GGUFFile: memory-mapped loading, the config it builds, and a clear PimoeError for every broken input."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest

from pimoe.errors import PimoeError
from pimoe.gguf_file import GGUFFile
from pimoe.model import load_model
from pimoe.synth import make_model


def rewrite(src, dst, arch=None, drop=(), set_md=None, drop_md=(), retype=None, add=None):
    """Copy a GGUF file through gguf.GGUFReader/GGUFWriter with changes (to make broken files).

    arch: new general.architecture; drop: tensor names to leave out; set_md: {key: (value, GGUFValueType)};
    drop_md: keys to leave out; retype: {tensor: GGMLQuantizationType} -- data replaced by zero blocks;
    add: {tensor: f32 array} extra tensors.
    """
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch or r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_md:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in (set_md or {}).items():
        w.add_key_value(key, value, vtype)
    for t in r.tensors:
        if t.name in drop:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        qtype = (retype or {}).get(t.name, t.tensor_type)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = np.asarray(r.data[t.data_offset:t.data_offset + t.n_bytes])
        if qtype != t.tensor_type:
            raw = np.zeros(int(np.prod(shape)) // block * size, np.uint8)
        w.add_tensor(t.name, raw.reshape(*shape[:-1], -1), raw_dtype=qtype)
    for name, array in (add or {}).items():
        w.add_tensor(name, np.asarray(array, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf", arch="qwen3moe", qtype="Q8_0")


def test_opens_tiny_model_memory_mapped(tiny):
    f = GGUFFile(tiny)
    cfg = f.config
    assert (cfg.arch, cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == \
        ("qwen3moe", 2, 64, 4, 2, 16)
    assert (cfg.n_experts, cfg.n_experts_used, cfg.expert_ff, cfg.vocab_size) == (8, 2, 64, 1000)
    assert (cfg.rope_style, cfg.qk_norm, cfg.norm_topk) == ("neox", "head", True)
    assert f.metadata["pimoe.synthetic"] is True
    up = f.tensor("blk.0.ffn_up_exps.weight", (8, 64, 64))
    assert up.qtype == gguf.GGMLQuantizationType.Q8_0
    assert up.data.shape == (8, 64, 64 // 32 * 34)          # Q8_0 blocks: 32 weights in 34 bytes
    assert not up.data.flags.writeable                       # a read-only view of the file...
    assert isinstance(up.data.base, np.memmap) or isinstance(up.data, np.memmap)
    e3 = up[3]                                               # ...and one expert is a view of it, not a copy
    assert e3.shape == (64, 64) and np.shares_memory(e3.data, up.data)
    # the stored bytes are exactly where the GGUF tensor table says
    r = gguf.GGUFReader(tiny)
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_up_exps.weight")
    assert np.array_equal(up.data.reshape(-1), np.asarray(r.data[t.data_offset:t.data_offset + t.n_bytes]))
    np.testing.assert_array_equal(up.dequantize(), gguf.quants.dequantize(t.data, t.tensor_type))


@pytest.mark.parametrize("arch, qtype", [("qwen2moe", "Q5_K"), ("llama", "BF16"), ("olmoe", "F16")])
def test_header_parser_agrees_with_gguf_reader(tmp_path, arch, qtype):
    # pimoe parses the header itself (GGUFReader is ~50x slower on big vocabularies): same answers
    p = make_model(tmp_path / "m.gguf", arch=arch, qtype=qtype)
    ours, r = GGUFFile(p), gguf.GGUFReader(p)
    theirs = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == theirs and list(ours.metadata) == list(theirs)
    assert ours.version == r.fields["GGUF.version"].contents()
    assert [t.name for t in r.tensors] == list(ours.tensors)
    for t in r.tensors:
        q = ours.tensors[t.name]
        assert q.shape == tuple(int(d) for d in reversed(t.shape.tolist())) and q.qtype == t.tensor_type
        assert np.array_equal(q.data.reshape(-1), np.asarray(r.data[t.data_offset:t.data_offset + t.n_bytes]))


def test_missing_file(tmp_path):
    with pytest.raises(PimoeError, match="no such file"):
        GGUFFile(tmp_path / "nope.gguf")
    with pytest.raises(PimoeError, match="no such file"):
        load_model(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"GGU", b"hello, not a model\n" * 10, b"\x00" * 64])
def test_not_gguf(tmp_path, content):
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(PimoeError, match="not a GGUF file"):
        GGUFFile(p)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(PimoeError, match="not a file"):
        GGUFFile(tmp_path)


@pytest.mark.parametrize("keep", [5, 24, 200, 0.5, 0.9, -1])
def test_truncated_file(tiny, tmp_path, keep):
    data = tiny.read_bytes()
    n = keep if isinstance(keep, int) and keep > 0 else int(len(data) * keep) if keep > 0 else len(data) - 1
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:n])
    with pytest.raises(PimoeError) as e:
        GGUFFile(p)
    msg = str(e.value)
    assert str(p) in msg and "truncated" in msg, msg


def test_unknown_architecture(tiny, tmp_path):
    p = rewrite(tiny, tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(PimoeError, match="architecture 'gpt2' is not supported"):
        GGUFFile(p)


def test_dense_model_is_rejected(tiny, tmp_path):
    p = rewrite(tiny, tmp_path / "dense.gguf", set_md={"qwen3moe.expert_count": (0, gguf.GGUFValueType.UINT32)})
    with pytest.raises(PimoeError, match="Mixture-of-Experts"):
        GGUFFile(p)


def test_missing_metadata_key(tiny, tmp_path):
    p = rewrite(tiny, tmp_path / "nokey.gguf", drop_md=("qwen3moe.attention.layer_norm_rms_epsilon",))
    with pytest.raises(PimoeError, match="'qwen3moe.attention.layer_norm_rms_epsilon' is missing"):
        GGUFFile(p)


def test_wrong_tensor_shape(tiny, tmp_path):
    # metadata says experts are 32 wide, the stored expert tensors are 64 wide
    p = rewrite(tiny, tmp_path / "shape.gguf",
                set_md={"qwen3moe.expert_feed_forward_length": (32, gguf.GGUFValueType.UINT32)})
    with pytest.raises(PimoeError, match=r"tensor 'blk.0.ffn_gate_exps.weight' has shape \(8, 64, 64\).*"
                                         r"needs \(8, 32, 64\)"):
        load_model(p)
    with pytest.raises(PimoeError, match="shape"):
        GGUFFile(tiny).tensor("blk.0.attn_q.weight", (64, 32))


def test_missing_tensor(tiny, tmp_path):
    p = rewrite(tiny, tmp_path / "drop.gguf", drop=("blk.1.ffn_down_exps.weight",))
    with pytest.raises(PimoeError, match="tensor 'blk.1.ffn_down_exps.weight' is missing"):
        load_model(p)


def test_unsupported_weight_type(tiny, tmp_path):
    p = rewrite(tiny, tmp_path / "iq.gguf", retype={"blk.0.attn_q.weight": gguf.GGMLQuantizationType.IQ4_NL})
    with pytest.raises(PimoeError) as e:
        load_model(p)
    msg = str(e.value)
    assert "blk.0.attn_q.weight" in msg and "IQ4_NL" in msg and "Q4_K" in msg, msg   # names the tensor, type, list


def _sparse_files_work(d) -> bool:
    probe = d / "probe"
    with open(probe, "wb") as f:
        f.seek(64 << 20)
        f.write(b"\0")
    ok = os.stat(probe).st_blocks * 512 < (8 << 20)
    probe.unlink()
    return ok


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def test_real_size_qwen3_30b_a3b_opens_without_reading_weights(tmp_path):
    # The full Qwen3-30B-A3B shape at Q4_K: 17 GB. Written as a sparse file (zero weights, no disk),
    # then opened: only metadata is read, the weights stay mapped, untouched.
    if not os.path.exists("/proc/self/status") or not _sparse_files_work(tmp_path):
        pytest.skip("needs sparse files and /proc to measure memory")
    p = make_model(tmp_path / "q30.gguf", preset="qwen3-30b-a3b", qtype="Q4_K", empty=True)
    assert p.stat().st_size > 17e9
    before = _rss_mb()
    f = GGUFFile(p)
    grown = _rss_mb() - before
    assert grown < 200, f"opening grew the resident set by {grown:.0f} MB"     # measured: ~12 MB
    cfg = f.config
    assert (cfg.n_layers, cfg.n_experts, cfg.n_experts_used, cfg.expert_ff, cfg.vocab_size) == (48, 128, 8, 768, 151936)
    s = f.stats()
    # Qwen's published figures: 30.5 B parameters, 3.3 B activated (incl. embeddings; we count one row)
    assert 30.4e9 < s["total_params"] < 30.6e9
    assert 2.9e9 < s["active_params"] < 3.4e9
    assert s["tensor_types"]["Q4_K"] == 48 * 7 + 2


def test_tensors_pimoe_cannot_honour_are_refused(tiny, tmp_path):
    # llama3-style RoPE frequency factors would change every attention score: refuse, do not ignore
    p = rewrite(tiny, tmp_path / "rf.gguf", add={"rope_freqs.weight": np.ones(8)})
    with pytest.raises(PimoeError, match="rope_freqs.weight.*RoPE"):
        load_model(p)


def test_yarn_rope_scaling_is_refused(tiny, tmp_path):
    S, F = gguf.GGUFValueType.STRING, gguf.GGUFValueType.FLOAT32
    p = rewrite(tiny, tmp_path / "yarn.gguf", set_md={"qwen3moe.rope.scaling.type": ("yarn", S),
                                                       "qwen3moe.rope.scaling.factor": (4.0, F)})
    with pytest.raises(PimoeError, match="rope scaling 'yarn'"):
        GGUFFile(p)
    p = rewrite(tiny, tmp_path / "lin.gguf", set_md={"qwen3moe.rope.scaling.type": ("linear", S),
                                                      "qwen3moe.rope.scaling.factor": (2.0, F)})
    assert GGUFFile(p).config.rope_freq_scale == 0.5


def test_old_per_expert_mixtral_layout_gets_a_hint(tmp_path):
    src = make_model(tmp_path / "mix.gguf", arch="llama")
    p = rewrite(src, tmp_path / "old.gguf", drop=("blk.0.ffn_up_exps.weight",),
                add={"blk.0.ffn_up.0.weight": np.zeros((64, 64))})
    with pytest.raises(PimoeError, match="old Mixtral layout"):
        load_model(p)
