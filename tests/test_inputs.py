"""Damaged or hostile inputs give one clear PimoeError naming the file, tensor or key (issue 10).

Each test builds one of the inputs the fuzzers found (pimoe.fuzz.gguf_mutate edits single fields of a
real file) and checks the message; the rules are gguf.cpp's / llama-model-loader's where those exist.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

import pimoe
from pimoe.cli import main
from pimoe.errors import PimoeError, printable
from pimoe.fuzz.gguf_mutate import ARRAY, BOOL, F32, I32, STRING, U32, GGUFParts, encode_value
from pimoe.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from pimoe.synth import make_model

    root = tmp_path_factory.mktemp("inputs")
    return {"f32": make_model(root / "f32.gguf", arch="qwen3moe", qtype="F32", n_layers=2, seed=1),
            "q4k": make_model(root / "q4k.gguf", arch="qwen3moe", qtype="Q4_K", n_layers=2, seed=1)}


def edited(seeds, tmp_path, which="f32", edit=None, name="m.gguf"):
    parts = GGUFParts.read(seeds[which])
    if edit is not None:
        edit(parts)
    return parts.write(tmp_path / name)


def refused(path, *needles, load=True):
    """GGUFFile (and load_model) raise PimoeError with every needle in a one-line message."""
    with pytest.raises(PimoeError) as exc:
        pimoe.load_model(path, n_ctx=16) if load else GGUFFile(path)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_roundtrip_of_the_mutation_tool(seeds, tmp_path):
    path = edited(seeds, tmp_path)
    assert path.read_bytes() == seeds["f32"].read_bytes()


def test_dimension_product_overflow(seeds, tmp_path):
    def edit(p):
        p.tensor("blk.0.ffn_up_exps.weight").ne[1] = 2**62
    path = edited(seeds, tmp_path, edit=edit)
    refused(path, "blk.0.ffn_up_exps.weight", "does not fit in int64", load=False)
    def edit2(p):
        p.tensor("blk.0.ffn_up_exps.weight").ne[1] = 2**40
    refused(edited(seeds, tmp_path, edit=edit2, name="b.gguf"), "truncated", "blk.0.ffn_up_exps.weight")


def test_no_tensors_is_fine_for_info(seeds, tmp_path, capsys):
    def edit(p):
        p.tensors, p.data = [], b""
    path = edited(seeds, tmp_path, edit=edit)
    rc, out, err = cli(capsys, "info", "-m", path)
    assert rc == 0 and "0 tensors" in out and "holds no weights" in out, err
    refused(path, "token_embd.weight", "missing")


@pytest.mark.parametrize("delta", [1, 7, -4])
def test_offset_off_alignment(seeds, tmp_path, delta):
    def edit(p):
        p.tensor("blk.1.attn_norm.weight").offset += delta
    refused(edited(seeds, tmp_path, edit=edit), "blk.1.attn_norm.weight", "alignment", load=False)


def test_overlapping_tensors(seeds, tmp_path):
    def edit(p):
        p.tensor("blk.1.attn_q.weight").offset = p.tensor("blk.1.attn_norm.weight").offset
    msg = refused(edited(seeds, tmp_path, edit=edit), "blk.1.attn_q.weight", "expected", load=False)
    assert "overlap" in msg


@pytest.mark.parametrize("vtype,value,needle", [(BOOL, True, "u32"), (F32, 32.0, "u32"), (U32, 3, "power of two"),
                                                 (U32, 0, "power of two"), (U32, 48, "power of two")])
def test_bad_alignment(seeds, tmp_path, vtype, value, needle):
    refused(edited(seeds, tmp_path, edit=lambda p: p.set_kv("general.alignment", vtype, value)),
            "general.alignment", needle, load=False)


def test_alignment_one_is_legal_and_honoured(seeds, tmp_path):
    # 1 is a power of two, so gguf.cpp takes it: the data then starts right after the header
    def edit(p):
        p.set_kv("general.alignment", U32, 1)
        p.alignment = 1                       # written without padding, as a writer using alignment 1 would
        offset = 0
        for t in p.tensors:                   # and the offsets laid back to back without padding
            t.offset, offset = offset, offset + p.tensor_bytes(t)
        p.data = b"".join(GGUFParts.read(seeds["f32"]).data[t0.offset:t0.offset + p.tensor_bytes(t0)]
                          for t0 in GGUFParts.read(seeds["f32"]).tensors)
    path = edited(seeds, tmp_path, edit=edit)
    assert GGUFFile(path).alignment == 1
    toks = [1, 2, 3]
    a = pimoe.load_model(path, n_ctx=16).logits(toks)
    b = pimoe.load_model(seeds["f32"], n_ctx=16).logits(toks)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("key,value", [("attention.layer_norm_rms_epsilon", -1e-6),
                                       ("attention.layer_norm_rms_epsilon", float("nan")),
                                       ("attention.layer_norm_rms_epsilon", 0.0),
                                       ("rope.freq_base", 0.0), ("rope.freq_base", -1e4),
                                       ("rope.freq_base", float("nan")), ("rope.freq_base", float("inf")),
                                       ("rope.scaling.factor", -2.0), ("rope.scaling.factor", float("inf")),
                                       ("rope.scaling.factor", float("nan"))])
def test_float_hyperparameters_out_of_range(seeds, tmp_path, key, value):
    path = edited(seeds, tmp_path, edit=lambda p: p.set_kv(f"qwen3moe.{key}", F32, value))
    refused(path, f"qwen3moe.{key}", load=False)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 2.5])
def test_integer_hyperparameter_stored_as_float(seeds, tmp_path, value):
    path = edited(seeds, tmp_path, edit=lambda p: p.set_kv("qwen3moe.block_count", F32, value))
    refused(path, "qwen3moe.block_count", "expected an integer", load=False)


def test_integer_hyperparameter_as_arrays(seeds, tmp_path):
    nested = edited(seeds, tmp_path, name="n.gguf",
                    edit=lambda p: p.set_kv("qwen3moe.expert_count", ARRAY, [[8], [8]], sub=ARRAY))
    refused(nested, "qwen3moe.expert_count", "array of arrays", load=False)
    empty = edited(seeds, tmp_path, name="e.gguf", edit=lambda p: p.set_kv("qwen3moe.expert_count", ARRAY, [], sub=U32))
    refused(empty, "qwen3moe.expert_count", "empty array", load=False)
    strings = edited(seeds, tmp_path, name="s.gguf", edit=lambda p: p.set_kv("qwen3moe.block_count", STRING, "2"))
    refused(strings, "qwen3moe.block_count", "expected an integer", load=False)


@pytest.mark.parametrize("vtype,value", [(ARRAY, [1, 2]), (F32, float("nan")), (F32, float("inf")), (F32, 1.0)])
def test_token_ids_of_the_wrong_kind(seeds, tmp_path, vtype, value):
    def edit(p):
        p.set_kv("tokenizer.ggml.eos_token_id", vtype, value, sub=U32 if vtype == ARRAY else None)
    refused(edited(seeds, tmp_path, edit=edit), "tokenizer.ggml.eos_token_id", "integer token id")


def test_sentencepiece_byte_token_text_refused_at_load(seeds, tmp_path):
    def edit(p):
        kv = p.kv("tokenizer.ggml.token_type")
        n = struct.unpack_from("<Q", kv.raw, 4)[0]
        types = list(np.frombuffer(kv.raw[12:12 + 4 * n], "<i4"))
        types[300] = 6          # BYTE, with an ordinary token's text
        kv.raw = encode_value(ARRAY, types, sub=I32)
        p.set_kv("tokenizer.ggml.model", STRING, "llama")
    refused(edited(seeds, tmp_path, edit=edit), "token 300", "<0xNN>")


def test_control_characters_in_key_names_are_escaped(seeds, tmp_path, capsys):
    def edit(p):
        p.set_kv("general.alignment", BOOL, True)
        p.kv("general.alignment").key = b"general.alignment"      # the rule names it...
        p.kvs.insert(0, p.kvs.pop())
        p.kvs[1].key = p.kvs[1].key + b"\n\x1b[31m"               # ...and a key with control characters
        p.kvs.append(type(p.kvs[0])(b"dup\nkey", U32, encode_value(U32, 1)))
        p.kvs.append(type(p.kvs[0])(b"dup\nkey", U32, encode_value(U32, 1)))
    path = edited(seeds, tmp_path, edit=edit)
    rc, out, err = cli(capsys, "info", "-m", path)
    assert rc == 2 and err.count("\n") == 1 and "\x1b" not in err, err
    assert printable("a\nb\x1b") == "a\\nb\\x1b" and printable("ok é") == "ok é"
    dup = edited(seeds, tmp_path, name="d.gguf", edit=lambda p: p.kvs.extend(
        [type(p.kvs[0])(b"x\ny", U32, encode_value(U32, 1))] * 2))
    msg = refused(dup, "appears twice", load=False)
    assert "x\\ny" in msg


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_norm_weight_refused_at_load(seeds, tmp_path, value):
    def edit(p):
        t = p.tensor("blk.1.ffn_norm.weight")
        data = bytearray(p.data)
        data[t.offset + 12:t.offset + 16] = np.float32(value).tobytes()
        p.data = bytes(data)
    refused(edited(seeds, tmp_path, edit=edit), "blk.1.ffn_norm.weight", "index 3", "finite")


@pytest.mark.parametrize("which", ["f32", "q4k"])
def test_activation_overflow_names_layer_and_position(seeds, tmp_path, which):
    # finite but huge norm weights: the activations overflow f32. With F32 weights the residual stream
    # becomes Inf and pimoe stops naming layer and position; with K-quant weights the Inf activations are
    # quantized as llama.cpp's quantize_row_q8_K does (NaN codes 0), the stream stays finite and the logits
    # are what llama.cpp computes (before: a ZeroDivisionError in the quantizer)
    def edit(p):
        t = p.tensor("blk.1.attn_norm.weight")
        n = 64 if which == "f32" else 256
        data = bytearray(p.data)
        data[t.offset:t.offset + 4 * n] = np.full(n, 3e38, np.float32).tobytes()
        p.data = bytes(data)
    model = pimoe.load_model(edited(seeds, tmp_path, which, edit=edit), n_ctx=16)
    try:
        logits = model.logits([1, 2, 3])
    except PimoeError as exc:
        msg = str(exc)
        assert "layer 1" in msg and "non-finite" in msg and "position" in msg, msg
    else:
        assert which == "q4k" and np.isfinite(logits).all()


def test_run_arguments(seeds, capsys, monkeypatch):
    import os

    m = seeds["f32"]
    bad_prompt = os.fsdecode(b"caf\xe9")
    for argv, needle in ((["-p", bad_prompt], "not valid UTF-8"), (["--temperature", "nan"], "--temperature"),
                         (["--temperature", "inf"], "--temperature"), (["--ctx", "0"], "--ctx"),
                         (["--ctx", "-3"], "--ctx")):
        rc, out, err = cli(capsys, "run", "-m", m, "-n", "2", "--no-warmup", *argv)
        assert rc == 2 and needle in err and err.count("\n") == 1, (argv, err)
    rc, out, err = cli(capsys, "run", "-m", m, "-n", "2", "--no-warmup", "--temperature", "0.8", "--seed", "-1")
    assert rc == 0, err      # -1: a random seed


def test_huge_context_names_the_kv_cache_size(seeds, capsys):
    rc, out, err = cli(capsys, "run", "-m", seeds["f32"], "-n", "2", "--no-warmup", "--ctx", "1000000000")
    assert rc == 2 and "KV cache" in err and "GiB" in err, err


def test_make_model_leaves_no_invalid_file(tmp_path, capsys):
    out = tmp_path / "bad.gguf"
    rc, _, err = cli(capsys, "make-model", "-o", out, "--set", "n_experts_used=99")
    assert rc == 2 and "expert_used_count" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    rc, _, err = cli(capsys, "make-model", "-o", out, "--seed", "-1")
    assert rc == 2 and "--seed" in err and not out.exists()


def test_plot_on_bad_records(tmp_path, capsys):
    garbage = tmp_path / "g.json"
    garbage.write_bytes(bytes(range(256)))
    comp = tmp_path / "c.json"
    comp.write_text('{"kind": "compare"}')
    bw = tmp_path / "b.json"
    bw.write_text('{"kind": "bandwidth", "cpu": null, "qpu": null, "rows": null}')
    for rec in (garbage, comp, bw):
        rc, _, err = cli(capsys, "plot", rec, "--out", tmp_path / "plots")
        assert rc == 2 and str(rec) in err and err.count("\n") == 1, err


def test_disasm_kernel_arguments(capsys):
    rc, _, err = cli(capsys, "disasm", "qpu_kernels.summation:qpu_summation")
    assert rc == 2 and "threads" in err and "--arg" in err, err
    rc, _, err = cli(capsys, "disasm", "qpu_kernels.summation:qpu_summation", "--arg", "threads=abc")
    assert rc == 2 and "threads='abc'" in err, err
    rc, out, _ = cli(capsys, "disasm", "qpu_kernels.summation:qpu_summation", "--arg", "threads=1")
    assert rc == 0 and "thrsw" in out


def test_sampling_with_nan_temperature_in_the_api(seeds):
    model = pimoe.load_model(seeds["f32"], n_ctx=16)
    with pytest.raises(PimoeError):
        list(model.generate([1, 2], 2, temperature=math.nan))
    assert len(list(model.generate([1, 2], 2, temperature=0.5, seed=-1, stop_at_eos=False))) == 2
