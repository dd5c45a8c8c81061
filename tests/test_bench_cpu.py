"""pimoe.bench.cpu: its napkin math, its recipe, and one small end-to-end run against llama.cpp."""

import argparse
import json

import numpy as np
import pytest

from pimoe.bench import cpu as cpubench
from pimoe.gguf_file import GGUFFile
from pimoe.synth import make_model


def test_more_bits_layers_follow_llama_quantize_rule():
    # use_more_bits(i, n): i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2
    assert cpubench._more_bits_layers(48) == [0, 1, 2, 3, 4, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41,
                                              42, 43, 44, 45, 46, 47]
    assert cpubench._more_bits_layers(4) == [2, 3]
    qtype, types = cpubench.model_recipe("Q4_K_M", 4)
    assert qtype == "Q4_K" and types["output.weight"] == "Q6_K"
    assert types["blk.3.ffn_down_exps.weight"] == "Q6_K" and "blk.0.ffn_down_exps.weight" not in types
    assert types["blk.2.attn_v.weight"] == "Q6_K" and not any("attn_output" in n for n in types)
    assert cpubench.model_recipe("q8_0", 4) == ("Q8_0", {})


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("bench") / "tiny-q8.gguf", preset="tiny", qtype="Q8_0")


def test_weight_bytes_per_token_counts_k_of_e_experts(tiny_q8):
    info = cpubench.weight_bytes_per_token(tiny_q8)
    # the same count from the file's tensors, by hand: k of E experts' weights, one embedding row, the rest
    f = GGUFFile(tiny_q8)
    exps = sum(t.nbytes for n, t in f.tensors.items() if "_exps" in n)
    emb = f.tensors["token_embd.weight"]
    dense = sum(t.nbytes for n, t in f.tensors.items() if "_exps" not in n) - emb.nbytes + emb.row_bytes
    assert info["expert_bytes_per_token"] == exps * f.config.n_experts_used // f.config.n_experts
    assert info["bytes_per_token"] == dense + info["expert_bytes_per_token"]
    assert info["file_bytes"] > info["tensor_bytes"] > info["bytes_per_token"]


def test_read_bandwidth_and_gemv_micro_report_consistent_numbers():
    bw = cpubench.read_bandwidth(threads=1, mbytes=32, reps=2)
    assert bw["ceiling_GBps"] == max(bw["numpy_best_GBps"], bw["numba_best_GBps"]) > 0.1
    assert bw["numpy_best_GBps"] >= bw["numpy_sum_1thread_GBps"]
    rows = cpubench.gemv_micro(threads=1, ceiling=bw["ceiling_GBps"], n_experts=4, sweeps=2)
    assert [(r["qtype"], r["out"], r["in"]) for r in rows] == [
        ("Q4_K", 768, 2048), ("Q4_K", 2048, 768), ("Q8_0", 768, 2048), ("Q8_0", 2048, 768)]
    for r in rows:
        assert r["bytes_per_gemv"] == {"Q4_K": 144 * 6144, "Q8_0": 34 * 49152}[r["qtype"]]
        assert r["GBps"] == pytest.approx(r["bytes_per_gemv"] / (r["us_median"] * 1e-6) / 1e9)


@pytest.mark.slow
@pytest.mark.llama
def test_bench_model_runs_both_engines_and_agrees(tiny_q8, tmp_path):
    args = argparse.Namespace(prompt=6, decode=3, reps=1, threads=1, no_llama=False, rounds=2)
    rec = cpubench.bench_model(tiny_q8, "Q8_0", args, ceiling=10.0, tmpdir=str(tmp_path))
    for engine in ("pimoe", "llama.cpp"):
        r = rec["runs"][engine]
        assert "error" not in r, r
        assert r["pp_tps"] > 0 and r["tg_tps"] > 0 and len(r["tg_s"]) == 3
        assert r["peak_rss_bytes"] > 0
        assert len(r["all_rounds_tg_tps"]) == 2 and r["tg_tps"] == max(r["all_rounds_tg_tps"])
        assert r["tg_cpu_tps"] > 0
    assert rec["ratio_tg_cpu_time"] > 0
    # paired rounds: one ratio per round, measured back to back; the reported ratio is their median
    assert [q["round"] for q in rec["paired_rounds"]] == [1, 2]
    assert rec["ratio_tg"] == pytest.approx(float(np.median([q["tg"] for q in rec["paired_rounds"]])))
    # same file, same activation quantization: the last prompt token's logits agree closely
    assert rec["last_logits_max_abs_diff"] < 1e-2 * max(rec["last_logits_scale"], 1.0)
    assert rec["same_argmax"]
    json.dumps(rec)  # the record is plain JSON
    table = cpubench._table([rec], 1)
    assert "pp6" in table and "tg3" in table


def test_new_record_path_never_overwrites(tmp_path):
    a = cpubench._new_record_path(tmp_path)
    a.write_text("{}")
    b = cpubench._new_record_path(tmp_path)
    assert a != b and not b.exists()


def test_thread_list_and_worker_failure_reports():
    assert cpubench._thread_list("1,2,4") == [1, 2, 4] and cpubench._thread_list(3) == [3]
    for bad in ("0", "a,b", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            cpubench._thread_list(bad)
    # a native crash leaves no traceback: the signal's name is what the record keeps
    assert cpubench.worker_failure(-11, "loading\n")[-1] == "worker killed by SIGSEGV (signal 11)"
    assert cpubench.worker_failure(-4, "")[-1] == "worker killed by SIGILL (signal 4)"
    assert cpubench.worker_failure(1, "Traceback\nValueError: x")[-2:] == ["ValueError: x", "worker exited with status 1"]
