"""`pimoe compare`: runs on the default model, checks tokens agree, scales to the full model, records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pimoe import compare
from pimoe.backends import register_backend
from pimoe.backends.cpu import CPUBackend
from pimoe.cli import main as cli_main


@pytest.fixture
def cache_home(tmp_path_factory, monkeypatch):
    """The built-in model is made (once per session) in a private cache, not the user's."""
    home = tmp_path_factory.getbasetemp() / "xdg-cache"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


class _SkewedBackend(CPUBackend):
    """A deliberately wrong backend: the cpu result plus a large offset on one coordinate."""

    name = "test-skewed"

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        out = super().expert_ffn(layer, x, expert_ids, expert_weights)
        out[:, 0] += 50.0
        return out


def test_compare_default_model_cli(cache_home, tmp_path, capsys):
    rc = cli_main(["compare", "-p", "4", "-n", "3", "-r", "2", "--backends", "cpu,cpu-reference,qpu",
                   "--results", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "| tg3 |" in out.out and "| pp4 |" in out.out
    assert "tokens: cpu-reference vs cpu, 4 greedy steps on the same inputs (teacher-forced): all equal" in out.out
    rec_path = next(p for p in tmp_path.glob("compare-*.json") if not p.name.endswith(".trace.json"))
    rec = json.loads(rec_path.read_text())
    assert rec["kind"] == "compare" and rec["environment"]["model"]["synthetic"]
    backends = [r["backend"] for r in rec["runs"]]
    assert backends[:2] == ["cpu", "cpu-reference"]
    for run in rec["runs"]:
        assert len(run["pp_s"]) == 2 and len(run["tg_s"]) == 2
        regions = run["tg_regions"]
        # per decode token: one forward, one sampling; every layer once
        assert regions["tg/forward"]["calls"] == 1 and regions["tg/sampling"]["calls"] == 1
        assert regions["tg/forward/layer"]["calls"] == rec["layers_run"]
        # routing record: every token of every repetition routed to k experts in every layer
        usage = np.asarray(run["expert_usage"])
        k = rec["model"]["shape"]["n_experts_used"]
        assert usage.shape == (rec["layers_run"], rec["model"]["shape"]["n_experts"])
        assert (usage.sum(axis=1) == 2 * (4 + 3) * k).all()
    trace = json.loads(rec_path.with_suffix(".trace.json").read_text())
    pids = {e["pid"] for e in trace["traceEvents"]}
    assert set(range(1, len(backends) + 1)) <= pids                    # measured timelines
    predicted = [e for e in trace["traceEvents"] if e.get("cat") == "predicted"]
    assert predicted and all(e["pid"] > len(backends) for e in predicted)
    # the predicted decode steps are laid back to back, each as long as its prediction
    steps = sorted((e for e in predicted if e["name"] == "tg" and e["pid"] == len(backends) + 1),
                   key=lambda e: e["ts"])
    assert len(steps) == 2 * 3
    for a, b in zip(steps, steps[1:]):
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"])
    assert sum(e["dur"] for e in steps) / len(steps) == pytest.approx(rec["runs"][0]["tg_predicted"]["tg"] * 1e6)
    assert (tmp_path / rec["table_csv"]).exists()
    assert any(row["source"] == "predicted" for row in rec["table"])


def test_compare_flags_different_tokens(cache_home, tmp_path, capsys):
    register_backend("test-skewed", _SkewedBackend)
    rc = cli_main(["compare", "-p", "3", "-n", "4", "-r", "1", "--backends", "cpu,test-skewed", "--no-record"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "DIFFER" in out and "tokens: test-skewed vs cpu" in out


def test_scale_to_full_model():
    run = {"tg_regions": {"tg": {"seconds": 10.0, "bytes": 0},
                          "tg/forward": {"seconds": 9.5},
                          "tg/forward/embedding": {"seconds": 0.5, "bytes": 100},
                          "tg/forward/layer": {"seconds": 6.0},
                          "tg/forward/layer/attention": {"seconds": 2.0, "bytes": 1000},
                          "tg/forward/layer/experts": {"seconds": 3.5, "bytes": 3000},
                          "tg/forward/output_head": {"seconds": 3.0, "bytes": 2000},
                          "tg/sampling": {"seconds": 0.5}},
           "tg_predicted": {"tg": 1.0, "tg/forward/layer": 0.4}}
    s = compare.scale_to_full(run["tg_regions"], run["tg_predicted"], L_run=2, L_full=48)
    assert s.factor == 24
    assert s.seconds_per_token == pytest.approx(10.0 + 23 * 6.0)
    assert s.bytes_per_token == 100 + 2000 + 24 * 4000
    assert s.predicted_seconds_per_token == pytest.approx(1.0 + 23 * 0.4)


class _FakeQPUBackend(CPUBackend):
    """The cpu result, reported as if a QPU had run it: one dispatch per call with fixed counts, under the
    sub-regions a QPU backend opens (this checks compare's plumbing, not a kernel)."""

    name = "test-fake-qpu"
    driver_kind = "emu"
    PER_THREAD = {name: [[0] * 4 for _ in range(8)] for name in
                  ("instructions", "tmu_reads", "tmu_read_bytes", "tmu_write_bytes", "sfu_ops", "thread_switches",
                   "tmuwt")}
    for q in range(8):
        PER_THREAD["instructions"][q][0] = 5000
        PER_THREAD["tmu_read_bytes"][q][0] = 1 << 16

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        from pimoe import profile

        prof = profile.current()
        with prof.region("upload"):
            x = x.copy()
        with prof.region("compute"):
            out = super().expert_ffn(layer, x, expert_ids, expert_weights)
            prof.qpu_dispatch({"batches": 8, "threads_per_qpu": 1, "per_thread": self.PER_THREAD}, kernel="fake")
        with prof.region("readback"):
            return out.copy()


def test_compare_predicts_qpu_regions_from_dispatches(cache_home):
    from pimoe.commands.run import default_model_path
    from pimoe.qpu import timing

    register_backend("test-fake-qpu", _FakeQPUBackend)
    result = compare.compare(default_model_path(), ("cpu", "test-fake-qpu"), n_prompt=3, n_gen=2, reps=1,
                             progress=False)
    cpu, fake = result.runs
    assert fake.agreement.same_tokens and fake.agreement.logits_max_abs_diff == 0.0
    L = result.layers_run
    one = timing.predict({"batches": 8, "threads_per_qpu": 1, "per_thread": _FakeQPUBackend.PER_THREAD}).seconds
    pred = fake.tg_predicted
    assert pred["tg/forward/layer/experts"] == pytest.approx(L * one)            # from the dispatch, per token
    assert pred["tg/forward/layer/experts/compute"] == pytest.approx(L * one)
    assert pred["tg/forward/layer/attention"] == pytest.approx(cpu.tg_predicted["tg/forward/layer/attention"])
    regions = fake.tg_regions
    assert regions["tg/forward/layer/experts/compute"]["qpu.instructions"] == L * 8 * 5000
    assert regions["tg/forward/layer/experts/compute"]["qpu_dispatches"] == L
    assert regions["tg/forward/layer/experts"]["bytes"] == cpu.tg_regions["tg/forward/layer/experts"]["bytes"]
    text = compare.regions_text(result)
    assert "test-fake-qpu: QPU instr" in text and ". . . . compute" in text


def test_qpu_backend_reports_its_dispatches(cache_home):
    """The real qpu backend (emulator): upload/dispatch/compute/readback under experts, two dispatches per
    layer per decode token (swiglu, down_sum: qpu_kernels.expert_ffn says why not one), and the experts' Pi 4 prediction is the timing model's sum over them."""
    from pimoe.backends import available_backends
    from pimoe.commands.run import default_model_path
    from pimoe.qpu import timing

    assert "qpu" in available_backends()
    result = compare.compare(default_model_path(), ("cpu", "qpu"), n_prompt=3, n_gen=2, reps=1, progress=False)
    qpu = result.runs[1]
    assert qpu.agreement.same_tokens
    L = result.layers_run
    regions = qpu.tg_regions
    for sub in ("upload", "dispatch", "compute", "readback"):
        assert f"tg/forward/layer/experts/{sub}" in regions
    compute = regions["tg/forward/layer/experts/compute"]
    assert compute["qpu_dispatches"] == 2 * L and compute["qpu.instructions"] > 0
    prof = qpu.profiler
    steps = [r for r in prof.regions if r.name == "tg"]
    keep = {s.index for s in steps}
    total = 0.0
    for r in prof.regions:                        # dispatches under the tg steps only
        p, inside = r.parent, False
        while p >= 0:
            if p in keep:
                inside = True
                break
            p = prof.regions[p].parent
        if inside and r.dispatches:
            # each dispatch carries its kernel's timing_args (ldtmu waits without thrsw, measured)
            assert all(d["timing_args"] == {"waits": "ldtmu"} for d in r.dispatches)
            total += sum(timing.predict(d, **d["timing_args"]).seconds for d in r.dispatches)
    assert qpu.tg_predicted["tg/forward/layer/experts"] == pytest.approx(total / len(steps))


def test_agreement_separates_near_ties_from_decisive_flips():
    """A flip where ref's top-2 margin is below the logit difference between the paths is a near-tie;
    one where the margin is larger cannot come from rounding and counts as decisive."""
    ref_logits = np.array([[5.0, 4.99, 0.0], [5.0, 1.0, 0.0]], dtype=np.float32)
    # step 0: other moves logit 1 up by 0.05 > margin 0.01 -> near-tie; step 1: other picks token 1 with
    # logits only 0.1 apart from ref's, but ref's margin is 4.0 -> decisive.
    other_logits = ref_logits + np.array([[0.0, 0.05, 0.0], [0.0, 0.1, 0.0]], dtype=np.float32)
    a = compare.agreement([0, 0], ref_logits, [1, 1], other_logits)
    assert not a.same_tokens and a.n_agree == 0
    assert [m.near_tie for m in a.mismatches] == [True, False]
    assert a.decisive_mismatches == 1
