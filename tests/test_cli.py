"""The `pimoe run / info / make-model` commands, run through pimoe.cli.main and once as `python -m pimoe`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pimoe
from pimoe.cli import main
from pimoe.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """A private XDG cache, so the built-in model is made here and not in the user's ~/.cache."""
    d = tmp_path_factory.mktemp("xdg")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(d)
    yield d
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models written through the make-model command itself."""
    d = tmp_path_factory.mktemp("models")
    paths = {}
    for arch, qtype in (("qwen3moe", "F32"), ("olmoe", "Q8_0"), ("mixtral", "F16"), ("qwen2moe", "Q4_K")):
        p = d / f"{arch}-{qtype}.gguf"
        assert main(["make-model", "-o", str(p), "--arch", arch, "--type", qtype, "--layers", "2"]) == 0
        paths[arch] = p
    return paths


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_run_default_model_says_it_is_random_and_reports_speed(cache_home, capsys):
    rc, out, err = _run(capsys, ["run", "-n", "8"])
    assert rc == 0
    assert out.startswith("Once upon a time")
    assert "random-weight" in err and "gibberish" in err
    assert "pimoe run -m /path/to/model.gguf" in err           # how to point it at a real GGUF
    assert "making the built-in tiny model once" in err
    assert "prompt:" in err and "generation: 8 tokens, 7 decode steps" in err and err.count("tokens/s") == 2
    assert "warm-up" in err and "not counted" in err
    cached = list((cache_home / "pimoe").glob("*.gguf"))
    assert len(cached) == 1 and pimoe.__version__ in cached[0].name
    # the second run reuses the cached file
    rc, out2, err2 = _run(capsys, ["run", "-n", "8", "--no-warmup"])
    assert rc == 0 and "making the built-in" not in err2 and out2 == out   # greedy: same text again
    assert "warm-up" not in err2


def test_run_streams_exactly_what_the_model_generates(models, capsys):
    path = models["qwen3moe"]
    prompt = "The router picks"
    rc, out, err = _run(capsys, ["run", "-m", str(path), "-p", prompt, "-n", "12"])
    assert rc == 0
    model = pimoe.load_model(path)
    ids = []
    for t in model.generate(model.tokenizer.encode(prompt), 12):
        if t in model.tokenizer.eog_ids:
            break
        ids.append(t)
    assert out == prompt + model.tokenizer.decode(ids, skip_special=True) + "\n"


def test_run_sampling_is_reproducible_with_a_seed(models, capsys):
    argv = ["run", "-m", str(models["qwen3moe"]), "-n", "16", "--temperature", "0.9"]
    _, a, _ = _run(capsys, argv + ["--seed", "3"])
    _, b, _ = _run(capsys, argv + ["--seed", "3"])
    _, c, _ = _run(capsys, argv + ["--seed", "4"])
    assert a == b and a != c


def test_run_chat_and_sentencepiece_model(models, capsys):
    rc, out, err = _run(capsys, ["run", "-m", str(models["qwen3moe"]), "-p", "Hi!", "--chat", "-n", "4"])
    assert rc == 0 and out.startswith("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    rc, out, err = _run(capsys, ["run", "-m", str(models["mixtral"]), "-p", "Hi!", "--chat", "-n", "4"])
    assert rc == 0 and out.startswith("<s>[INST] Hi! [/INST]")
    assert "llama, 2 layers" in err


def test_run_errors_are_one_clear_line(models, tmp_path, capsys, monkeypatch):
    rc, out, err = _run(capsys, ["run", "-m", str(tmp_path / "nope.gguf")])
    assert rc == 2 and "nope.gguf: no such model file" in err and "Traceback" not in err
    long_prompt = "the experts read the weights " * 20
    rc, out, err = _run(capsys, ["run", "-m", str(models["qwen3moe"]), "-p", long_prompt, "-c", "32"])
    assert rc == 2 and "but the context holds 32" in err
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    rc, out, err = _run(capsys, ["run", "-m", str(not_gguf)])
    assert rc == 2 and "not a GGUF file" in err
    rc, out, err = _run(capsys, ["run", "-m", str(models["qwen3moe"]), "--backend", "tpu"])
    assert rc == 2 and "unknown backend 'tpu'" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))   # a file where the cache directory should go
    rc, out, err = _run(capsys, ["run", "-n", "1"])
    assert rc == 2 and "cannot create the cache directory" in err and "XDG_CACHE_HOME" in err


def _expected_params(cfg, tied: bool):
    """Total and active parameter counts from the config alone (an independent count of the shapes)."""
    d, qd, kvd, E, k, ff = cfg.hidden, cfg.q_dim, cfg.kv_dim, cfg.n_experts, cfg.n_experts_used, cfg.expert_ff
    attn = d * qd + 2 * d * kvd + qd * d
    if cfg.qk_norm == "head":
        attn += 2 * cfg.head_dim
    elif cfg.qk_norm == "full":
        attn += qd + kvd
    if cfg.arch == "qwen2moe":
        attn += qd + 2 * kvd                      # q/k/v biases
    shared = 3 * d * cfg.shared_ff + d if cfg.shared_ff else 0
    layer_fixed = attn + 2 * d + E * d + shared   # + attn_norm, ffn_norm, router
    experts = 3 * d * ff * E
    embd = cfg.vocab_size * d
    total = embd + (0 if tied else embd) + d + cfg.n_layers * (layer_fixed + experts)
    active = (embd if tied else d + embd) + d + cfg.n_layers * (layer_fixed + experts * k // E)
    return total, active


@pytest.mark.parametrize("arch", ["qwen3moe", "olmoe", "mixtral", "qwen2moe"])
def test_info_counts_parameters_and_bytes(models, capsys, arch):
    path = models[arch]
    rc, out, err = _run(capsys, ["info", "-m", str(path)])
    assert rc == 0, err
    f = GGUFFile(path)
    cfg = f.config
    total, active = _expected_params(cfg, tied="output.weight" not in f.tensors)
    assert f"total {pimoe.commands.info._fmt_count(total)} ({total:,})" in out
    assert f"({active:,};" in out
    for qname in {t.qtype.name for t in f.tensors.values()}:
        assert f"\n  {qname} " in out
    # bytes per token: the active experts' share of the expert bytes plus everything else but the embedding
    groups = pimoe.commands.info.read_per_token(f)
    exp_bytes = sum(t.nbytes for n, t in f.tensors.items() if "_exps" in n)
    assert groups["experts (routed)"]["active_bytes"] == pytest.approx(exp_bytes * cfg.n_experts_used / cfg.n_experts)
    assert groups["embedding"]["active_bytes"] == f.tensors["token_embd.weight"].row_bytes
    assert sum(g["active_bytes"] for g in groups.values()) == pytest.approx(f.stats()["active_bytes"], abs=2)
    assert "random-weight synthetic model" in out and "tokens/s at 3.35 GB/s" in out


def test_make_model_refuses_to_overwrite(tmp_path, capsys):
    out_path = tmp_path / "m.gguf"
    rc, out, err = _run(capsys, ["make-model", "-o", str(out_path), "--arch", "olmoe", "--layers", "1",
                                 "--type", "Q4_0", "--set", "n_experts=4"])
    assert rc == 0 and f"wrote {out_path}" in out
    f = GGUFFile(out_path)
    assert (f.config.arch, f.config.n_layers, f.config.n_experts) == ("olmoe", 1, 4)
    assert f.tensors["blk.0.ffn_up_exps.weight"].qtype.name == "Q4_0"
    stamp = out_path.stat().st_mtime_ns
    rc, out, err = _run(capsys, ["make-model", "-o", str(out_path)])
    assert rc == 2 and "already exists" in err and "--force" in err
    assert out_path.stat().st_mtime_ns == stamp
    rc, out, err = _run(capsys, ["make-model", "-o", str(out_path), "--force", "--layers", "3"])
    assert rc == 0 and GGUFFile(out_path).config.n_layers == 3
    rc, out, err = _run(capsys, ["make-model", "-o", str(tmp_path / "x.gguf"), "--type", "IQ2_XS"])
    assert rc == 2 and "IQ2_XS" in err and not (tmp_path / "x.gguf").exists()
    rc, out, err = _run(capsys, ["make-model", "-o", str(tmp_path / "y.gguf"), "--set", "hidden"])
    assert rc == 2 and "FIELD=VALUE" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]   # no partial files left behind


@pytest.mark.parametrize("arch", ["olmoe", "mixtral"])
def test_make_model_writes_what_llama_cpp_loads(models, arch):
    """llama.cpp loads the whole file (tensors checked against its arch) and reads the same vocabulary.
    (Logits against llama.cpp are tests/test_model*.py's job.)"""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = models[arch]
    from llama_ref import LlamaRef

    loaded = LlamaRef(path, n_ctx=32)          # the whole model, in the reference child process
    info = loaded.info()
    loaded.close()
    f = GGUFFile(path)
    assert info["n_vocab"] == f.config.vocab_size and info["n_embd"] == f.config.hidden
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)   # no weights: safe in-process
    from pimoe.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf_metadata(f.metadata, str(path))
    assert tok.encode("The experts, 2 of 8.") == ref.tokenize(b"The experts, 2 of 8.", add_bos=True, special=True)


def test_python_m_pimoe(models, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pimoe", "run", "-m", str(models["qwen3moe"]), "-p", "Hello",
                        "-n", "5"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello") and "tokens/s" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pimoe", "info", "-m", str(tmp_path / "missing.gguf")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"pimoe info: error: {tmp_path / 'missing.gguf'}: no such model file"
    r = subprocess.run([sys.executable, "-m", "pimoe", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in ("run", "info", "make-model"))


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith(f"pimoe {pimoe.__version__} (python ") and "gguf " in out and "numpy " in out


def test_compare_takes_every_real_preset_as_shape():
    from pimoe.cli import build_parser
    from pimoe.synth import PRESETS

    parser = build_parser()
    for name in PRESETS:
        assert parser.parse_args(["compare", "--shape", name]).shape == name
        assert parser.parse_args(["compare", "--preset", name]).shape == name      # make-model's spelling


def test_run_small_context_says_how_many_tokens_it_generates(models, capsys):
    # the cache holds the prompt and each generated token but the last: -c N leaves N - prompt + 1 tokens,
    # and the warning says the number that is then generated
    from pimoe.gguf_file import GGUFFile
    from pimoe.tokenizer import Tokenizer

    f = GGUFFile(models["qwen3moe"])
    n_prompt = len(Tokenizer.from_gguf_metadata(f.metadata, str(f.path)).encode("Once upon a time"))
    ctx = n_prompt + 1
    rc, out, err = _run(capsys, ["run", "-m", str(models["qwen3moe"]), "-c", str(ctx), "-n", "16", "-t", "1"])
    assert rc == 0
    assert f"leaves room for 2 of the 16 requested tokens" in err
    assert "generation: 2 tokens" in err


def test_info_json_is_the_same_numbers_as_the_table(models, capsys):
    import json

    from pimoe.commands.info import read_per_token

    path = models["olmoe"]
    rc, out, err = _run(capsys, ["info", "-m", str(path), "-o", "json"])
    assert rc == 0
    info = json.loads(out)
    f = GGUFFile(path)
    groups = read_per_token(f)
    assert info["config"]["arch"] == "olmoe" and info["file_bytes"] == f.file_size
    assert info["bytes_per_token"] == pytest.approx(sum(g["active_bytes"] for g in groups.values()))
    assert info["per_token"]["experts (routed)"]["bytes"] == groups["experts (routed)"]["bytes"]
    rc, out, _ = _run(capsys, ["info", "-m", str(path), "-o", "jsonl"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["group"] for r in rows} == set(groups)


@pytest.mark.parametrize("old, new", [
    (["run", "-n", "5"], ["run", "--n-gen", "5"]),
    (["run", "-n", "5"], ["run", "--n-predict", "5"]),
    (["compare", "-n", "5"], ["compare", "--n-predict", "5"]),
    (["compare", "--shape", "olmoe-1b-7b"], ["compare", "--preset", "olmoe-1b-7b"]),
    (["headline", "-n", "2", "--models", "olmoe-1b-7b"], ["headline", "--n-predict", "2", "--preset", "olmoe-1b-7b"]),
    (["headline", "--types", "Q8_0", "-r", "2"], ["headline", "--type", "Q8_0", "--repetitions", "2"]),
    (["calibrate", "--reps", "2"], ["calibrate", "-r", "2"]),
    (["bandwidth", "--reps", "2", "--threads", "1"], ["bandwidth", "-r", "2", "-t", "1"]),
    (["bench", "emulator", "--repeats", "2"], ["bench", "emulator", "-r", "2"]),
    (["bench", "cpu", "--prompt", "4", "--decode", "2", "--reps", "2", "--threads", "1"],
     ["bench", "cpu", "-p", "4", "-n", "2", "-r", "2", "-t", "1"]),
    (["bench", "kernels", "--threads", "4", "--types", "Q8_0"], ["bench", "kernels", "--qpu-threads", "4", "--type", "Q8_0"]),
    (["bench", "hybrid", "--shape", "qwen3-30b-a3b", "-n", "3"], ["bench", "hybrid", "--preset", "qwen3-30b-a3b", "--n-predict", "3"]),
    (["bench", "placement", "--shape", "qwen3-30b-a3b", "--tokens", "3"],
     ["bench", "placement", "--preset", "qwen3-30b-a3b", "-n", "3"]),
])
def test_flag_aliases_parse_to_the_same_options(old, new):
    # one flag name per meaning across subcommands (-m -p -n -t -r --preset), the old spellings kept
    from pimoe.cli import build_parser

    parser = build_parser()
    a, b = vars(parser.parse_args(old)), vars(parser.parse_args(new))
    assert a == b
    assert a != vars(parser.parse_args(old[:1] if old[0] != "bench" else old[:2]))    # the flag did something


def test_every_table_command_takes_the_output_formats():
    from pimoe.cli import build_parser
    from pimoe.output import FORMATS

    parser = build_parser()
    for cmd in (["info"], ["bandwidth"], ["compare"], ["headline"], ["bench", "emulator"], ["bench", "cpu"],
                ["bench", "kernels"], ["bench", "hybrid"], ["bench", "placement"]):
        for fmt in FORMATS:
            assert parser.parse_args([*cmd, "-o", fmt]).output_format == fmt


def test_compare_json_on_stdout_is_the_record_it_writes(cache_home, tmp_path, capsys):
    import csv
    import io
    import json

    argv = ["compare", "-p", "2", "-n", "2", "-r", "1", "--backends", "cpu,qpu", "--results", str(tmp_path)]
    rc, out, err = _run(capsys, argv + ["-o", "json"])
    assert rc == 0
    printed = json.loads(out)                                   # stdout is exactly one JSON document
    rec_path = next(tmp_path.glob("compare-*[0-9].json"))
    assert printed == json.loads(rec_path.read_text())
    assert printed["kind"] == "compare" and [r["backend"] for r in printed["runs"]] == ["cpu", "qpu"]
    assert "| model |" in err                                   # the human table went to stderr
    # jsonl: one row per line, the same rows (and numbers) as the table of the record this run writes
    rc, out, _ = _run(capsys, argv + ["-o", "jsonl", "--no-record"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [(r["backend"], r["test"]) for r in rows] == [(r["backend"], r["test"])
                                                                       for r in printed["table"]]
    rc, out, _ = _run(capsys, argv + ["-o", "csv", "--no-record"])
    table = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and [r["backend"] for r in table] == [r["backend"] for r in rows]
    assert all(float(t["tps_mean"]) > 0 for t in table)


def test_bench_json_on_stdout_is_the_record_it_writes(tmp_path, capsys):
    import json

    rc, out, err = _run(capsys, ["bench", "emulator", "--iterations", "20", "--length", "4096", "-r", "1",
                                 "--results", str(tmp_path), "-o", "json"])
    assert rc == 0
    printed = json.loads(out)
    rec = json.loads(next(tmp_path.glob("emulator-bench-*.json")).read_text())
    assert printed == rec and rec["kind"] == "emulator-bench" and rec["command"]
    assert [r["workload"] for r in rec["table"]] == ["alu-loop", "summation"]
    assert "M instr/s" in err                                     # the human table went to stderr
    rc, out, _ = _run(capsys, ["bench", "emulator", "--iterations", "20", "--length", "4096", "-r", "1",
                               "--results", str(tmp_path), "-o", "jsonl"])
    assert rc == 0 and [json.loads(line)["workload"] for line in out.splitlines()] == ["alu-loop", "summation"]
    rc, out, err = _run(capsys, ["bench", "emulator", "--no-record", "-o", "json"])
    assert rc == 2 and out == "" and "--no-record" in err
