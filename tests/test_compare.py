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


def test_compare_qpu_virtual_puts_the_device_next_to_the_prediction(cache_home, tmp_path, monkeypatch, capsys):
    """--qpu virtual runs qpu twice: over the emulator (the Pi 4 prediction) and on the hardware route over the
    virtual V3D device, whose 'measured' figures are the emulator's predicted times standing in. Both come
    from the emulator's counts of the same dispatches through the same timing model (here a stored profile
    with a 2 ms dispatch overhead, named in the record), so the stand-in equals the prediction up to float
    summation order (rel 1e-9); the prediction's QPU part is also checked against the profiler's experts region."""
    from pimoe.qpu.timing import PI4

    prof = tmp_path / "prof.json"
    prof.write_text(json.dumps({"route": "hw", "params": dict(PI4.as_dict(), dispatch_overhead_s=2e-3),
                                "created_utc": "x", "record": None, "label": "test"}))
    monkeypatch.setenv("PIMOE_TIMING_PROFILE", str(prof))
    rc = cli_main(["compare", "-p", "2", "-n", "2", "-r", "1", "--backends", "cpu,qpu", "--qpu", "virtual",
                   "--results", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rec = json.loads(next(p for p in tmp_path.glob("compare-*.json") if "trace" not in p.name).read_text())
    runs = {r["name"]: r for r in rec["runs"]}
    assert list(runs) == ["cpu", "qpu", "qpu@virtual"]
    assert runs["qpu"]["driver"] == "emu" and runs["qpu@virtual"]["driver"] == "virtual"
    assert "pi4_measured" not in runs["qpu"]
    pm = runs["qpu@virtual"]["pi4_measured"]
    assert pm["route"] == "virtual" and pm["predicted_by"] == "qpu" and str(prof) in pm["predicted_with"]
    assert pm["measured_label"] == compare.STAND_IN_LABEL and "not a measurement" in pm["measured_label"]
    q, d = pm["qpu"], pm["decode"]
    L = rec["layers_run"]
    assert q["dispatches_per_token"] == q["predicted_dispatches_per_token"] == 2 * L
    twin_pred = runs["qpu"]["tg_predicted"]
    assert q["predicted_seconds_per_token"] == pytest.approx(twin_pred["tg/forward/layer/experts/compute"], rel=1e-9)
    assert q["predicted_seconds_per_token"] > 2 * L * 2e-3            # the profile's dispatch overhead is in it
    assert q["measured_seconds_per_token"] == pytest.approx(q["predicted_seconds_per_token"], rel=1e-9)
    assert q["measured_to_predicted"] == pytest.approx(1.0, rel=1e-9)
    assert d["predicted_tps"] == pytest.approx(1 / twin_pred["tg"])
    assert d["measured_tps"] == pytest.approx(d["predicted_tps"], rel=1e-9)
    # the table (and CSV): one predicted qpu row, one stand-in row with both figures and the ratio
    table = rec["table"]
    assert [r["backend"] for r in table if r["source"] == "predicted"] == ["cpu (Pi 4)", "qpu (Pi 4)"]
    (row,) = [r for r in table if r["backend"] == "qpu (Pi 4, virtual stand-in)"]
    assert "not measured" in row["source"] and row["measured_to_predicted"] == pytest.approx(1.0, rel=1e-9)
    assert row["predicted_tps"] == pytest.approx(d["predicted_tps"])
    assert "qpu_measured_to_predicted" in (tmp_path / rec["table_csv"]).read_text().splitlines()[0]
    assert any(k.startswith("qpu@virtual_") for r in rec["regions"] for k in r)
    text = out.out
    assert "| qpu (Pi 4, virtual stand-in) |" in text and "| qpu (Pi 4) |" in text
    assert "virtual stand-in / predicted (time)" in text and "NOT a measurement" in text
    assert "tokens: qpu@virtual vs cpu" in text


def test_compare_qpu_hw_without_a_device_says_what_is_missing(cache_home, monkeypatch, capsys):
    """--qpu hw on a machine without a usable V3D device stops before running anything, with doctor's findings."""
    import pimoe.qpu.driver as drv

    monkeypatch.setattr(drv, "hardware_available", lambda client=None: (False, "no V3D render node (test)"))
    monkeypatch.setattr(compare, "compare", lambda *a, **k: pytest.fail("compare ran without a device"))
    rc = cli_main(["compare", "-p", "2", "-n", "2", "-r", "1", "--qpu", "hw", "--no-record"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--qpu hw: the QPU hardware route is not usable here: no V3D render node (test)" in err
    assert "pimoe doctor" in err and "--qpu virtual" in err


class _CountlessDriver:
    """A hardware-route driver as on a Pi: the virtual device underneath, but no emulator counts come back."""

    def __init__(self, drv):
        self._drv = drv

    def __getattr__(self, name):
        return getattr(self._drv, name)

    def submit(self, *args, **kwargs):
        from pimoe.qpu.driver import Job

        job = self._drv.submit(*args, **kwargs)
        return Job(lambda timeout: job.wait(timeout) and None)

    def execute(self, *args, **kwargs):
        return self.submit(*args, **kwargs).wait()

    def close(self):
        self._drv.close()


def test_compare_qpu_hw_measures_submit_to_wait(cache_home, monkeypatch):
    """The hw plumbing without a Pi: "hw" opens the hardware route over the virtual device with the counts
    withheld, as the GPU gives none. The device run has no prediction of its own; its measured QPU part is
    the dispatches' submit-to-wait wall time, its decode the measured step time, each next to the emulator
    twin's prediction with their ratio."""
    import pimoe.qpu
    from pimoe.commands.run import default_model_path

    real_open = pimoe.qpu.open_driver
    monkeypatch.setattr(pimoe.qpu, "open_driver", lambda kind="auto", **kw: (
        _CountlessDriver(real_open("virtual", **kw)) if kind == "hw" else real_open(kind, **kw)))
    result = compare.compare(default_model_path(), compare.with_device(("cpu", "qpu", "hybrid"), "hw"), n_prompt=2,
                             n_gen=2, reps=1, progress=False)
    cpu, twin, dev, h_twin, h_dev = result.runs
    # the hybrid: every dispatch (experts and dense rows) counted on hw too; its CPU lane runs between submit
    # and wait, so its QPU time has no ratio
    hq = h_dev.pi4_measured["qpu"]
    assert h_dev.name == "hybrid@hw" and hq["dispatches_per_token"] == hq["predicted_dispatches_per_token"] > 0
    assert hq["measured_seconds_per_token"] > 0 and hq["measured_to_predicted"] is None
    assert (twin.name, twin.driver, dev.name, dev.driver) == ("qpu", "emu", "qpu@hw", "hw")
    assert dev.tg_predicted is None and twin.tg_predicted and dev.offload is None
    assert any("no emulator counts" in n for n in dev.notes)
    pm = dev.pi4_measured
    assert pm["route"] == "hw" and pm["measured_label"] == compare.HW_DECODE_LABEL
    q, d = pm["qpu"], pm["decode"]
    steps = dev.n_gen * len(dev.tg_s)
    keep = {r.index for r in dev.profiler.regions if r.name == "tg"}
    walls = []
    for r in dev.profiler.regions:
        p = r.parent
        while p >= 0 and p not in keep:
            p = dev.profiler.regions[p].parent
        if p >= 0 and r.dispatches:
            walls += [x["submit_to_wait_s"] for x in r.dispatches]
    assert len(walls) == steps * 2 * result.layers_run == steps * q["dispatches_per_token"]
    assert q["measured_seconds_per_token"] == pytest.approx(sum(walls) / steps)
    assert 0 < q["measured_seconds_per_token"] < dev.tg_regions["tg/forward/layer/experts"]["seconds"]
    assert q["predicted_seconds_per_token"] == pytest.approx(twin.tg_predicted["tg/forward/layer/experts/compute"])
    assert q["measured_to_predicted"] == pytest.approx(q["measured_seconds_per_token"] / q["predicted_seconds_per_token"])
    assert d["measured_seconds_per_token"] == pytest.approx(sum(dev.tg_s) / steps)
    assert d["predicted_tps"] == pytest.approx(1 / twin.tg_predicted["tg"])
    rows = compare.summary_rows(result)
    (row,) = [r for r in rows if r["backend"] == "qpu (Pi 4, hw)"]
    assert row["source"] == "measured on a Pi 4 (--qpu hw)" and row["tps_mean"] == pytest.approx(d["measured_tps"])
    assert "measured (hw) / predicted (time)" in compare.measured_text(result)
