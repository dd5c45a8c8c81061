"""The in-repo fuzz suite (pimoe.fuzz): short, fixed-seed runs of every kind of input.

Every GGUF mutation kind on a seed model through info / load_model + forward / run; hypothesis-drawn
command lines; random and mutated QPU programs through the emulator. Each must end "ok" or "error"
(one clear line); a "bug" (traceback, unclear error, file written next to the input) fails the test.
The long runs are `pimoe fuzz ... --seconds N` (their records are in results/fuzz-*.json).
"""

from __future__ import annotations

from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from pimoe.fuzz.engine import Worker, execute, make_seeds, strategies  # noqa: E402
from pimoe.fuzz.gguf_mutate import MUTATIONS  # noqa: E402

SEED_NAMES = ["qwen3moe-F32", "olmoe-Q4_K", "qwen2moe-Q8_0", "llama-Q6_K", "qwen3moe-Q4_0"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def bugs(outcomes, allow_emu=False):
    return [o for o in outcomes if o["status"] == "bug" and not (allow_emu and o["detail"].startswith("[emu]"))]


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_every_gguf_mutation_kind_gives_ok_or_a_clear_error(kind, seeds, tmp_path):
    i = sorted(MUTATIONS).index(kind)
    seed = seeds[SEED_NAMES[i % len(SEED_NAMES)]]
    outcomes = execute({"kind": "gguf", "seed_path": str(seed), "mutation": kind, "rng": i}, tmp_path)
    assert {o["target"] for o in outcomes} >= {"info", "load", "run"}
    assert not bugs(outcomes), outcomes


# too_slow is suppressed: each case runs a worker process, and on a loaded 2-core machine one draw took
# 31 s, which is the machine, not the generator (a real hang is caught by the worker's own time cap).
def test_gguf_hypothesis_cases(seeds, tmp_path):
    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(strategies("gguf", seeds))
    def check(case):
        outcomes = execute(case, tmp_path)
        assert not bugs(outcomes), (case, outcomes)

    check()


def test_command_lines(seeds, tmp_path):
    seen = []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(strategies("cli", {k: seeds[k] for k in SEED_NAMES[:1]}, tmp_path))
    def check(case):
        outcomes = execute(case, tmp_path)
        seen.append(outcomes[0]["status"])
        assert not bugs(outcomes), (case["argv"], outcomes)

    check()
    assert "error" in seen                 # the corpus does reach the refusals


def test_qpu_programs(tmp_path):
    seen = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(strategies("qpu"))
    def check(case):
        outcomes = execute(case, tmp_path)
        seen.append(outcomes[0]["status"])
        # [emu]: the emulator's own findings (writes outside a buffer, fault texts), the emu lane's to fix
        assert not bugs(outcomes, allow_emu=True), (case, outcomes)

    check()
    assert "ok" in seen and "error" in seen


def test_qpu_write_outside_the_buffer_is_never_silent():
    # the seed kernel stores 16 lanes x 4 bytes at uniform 0. Aimed 64 bytes before the data buffer it
    # writes into the unmapped guard page: the emulator must fault. Aimed at the uniforms buffer (two
    # pages before the data: another allocated buffer) the write is legal, as on the hardware.
    from pimoe.fuzz import targets
    from pimoe.fuzz.qpu_programs import seed_words

    words = list(seed_words("add_one"))
    assert targets.run_qpu(words)[0]["status"] == "ok"
    for offset in (-64, targets.PAGE, 2 * targets.PAGE - 4):
        out = targets.run_qpu(words, uniform_offset=offset)[0]
        assert out["status"] == "error" and "memory access outside" in out["detail"], (offset, out)
    assert targets.run_qpu(words, uniform_offset=-2 * targets.PAGE)[0]["status"] == "ok"


@pytest.mark.parametrize("what,expect", [("signal", "killed by SIGSEGV"), ("hang", "hang"),
                                         ("memory", "MemoryError")])
def test_worker_reports_signals_hangs_and_memory_blowups(what, expect):
    w = Worker(memory_cap=3 << 30, timeout_s=20)
    try:
        case = {"kind": "selftest", "what": what, "signal": "SIGSEGV", "bytes": 8 << 30}
        out = w.run(case)
        assert out[0]["status"] == "bug" and expect in out[0]["detail"], out
        assert w.run({"kind": "selftest", "what": "nothing"})[0]["status"] == "ok"   # a fresh worker goes on
    finally:
        w.close()
