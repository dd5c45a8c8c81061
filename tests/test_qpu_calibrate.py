"""`pimoe calibrate`: the procedure over the virtual device (predictions stand in, the refit must give the
model's own parameters back), the refit against a simulated Pi whose true parameters differ from the
model's (it must recover them), and `pimoe compare` using the stored profile."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pimoe.bench import qpu_calibrate as qc
from pimoe.qpu.timing import PI4

ITEMS = ("summation", "memset", "sgemm", "dispatch")


def test_virtual_calibration_gives_the_models_parameters_back(tmp_path, monkeypatch, capsys):
    from pimoe.cli import main

    monkeypatch.setenv("PIMOE_TIMING_PROFILE", str(tmp_path / "prof.json"))
    assert main(["calibrate", "--qpu", "virtual", "--quick", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stand-in (predicted)" in out and "timing profile" in out
    rec = json.loads(next(tmp_path.glob("qpu-calibration-virtual-*.json")).read_text())
    assert {r["item"] for r in rec["rows"]} == set(qc.ITEMS)
    for name in rec["refitted"]:
        assert rec["params_after"][name] == pytest.approx(rec["params_before"][name], rel=1e-6)
    prof = qc.load_profile()
    assert prof["route"] == "virtual" and prof["params"].dispatch_overhead_s == pytest.approx(50e-6)


def test_refit_recovers_a_simulated_pis_parameters(monkeypatch):
    """'hw' here is the virtual route whose times are replaced by what a Pi with other parameters would
    take (the model with TRUE parameters): the refit must find TRUE again."""
    import pimoe.qpu
    from pimoe.qpu.timing import predict

    true = replace(PI4, dispatch_overhead_s=310e-6, read_bandwidth=5.1e9, write_bandwidth=2.9e9,
                   wait_latency_cycles=240.0)
    real_open = pimoe.qpu.driver.open_driver
    monkeypatch.setattr(pimoe.qpu, "open_driver",
                        lambda kind, **kw: real_open("virtual" if kind == "hw" else kind, **kw))
    real_run = qc._run_kernel

    def simulated(drv, name, size, reps, dispatches):
        counters, _ = real_run(drv, name, size, 1, 2)
        return counters, [predict(counters[0], params=true).seconds] * reps

    monkeypatch.setattr(qc, "_run_kernel", simulated)
    rec = qc.calibrate("hw", reps=3, quick=True, items=ITEMS, progress=lambda m: None)
    after = rec["params_after"]
    for name in ("dispatch_overhead_s", "read_bandwidth", "write_bandwidth", "wait_latency_cycles"):
        assert after[name] == pytest.approx(getattr(true, name), rel=1e-3), name
    for r in rec["rows"]:
        assert r["predicted_seconds_refit"] == pytest.approx(r["measured_seconds"], rel=1e-3)


def test_compare_uses_and_names_the_profile(tmp_path, monkeypatch, capsys):
    from pimoe.cli import main

    prof = tmp_path / "prof.json"
    monkeypatch.setenv("PIMOE_TIMING_PROFILE", str(prof))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    slow = {"route": "hw", "params": dict(PI4.as_dict(), dispatch_overhead_s=2e-3), "created_utc": "x",
            "record": None, "label": "test"}
    prof.write_text(json.dumps(slow))
    args = ["compare", "-p", "2", "-n", "2", "-r", "1", "--backends", "cpu,qpu", "--qpu", "emu",
            "--results", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"use the timing profile {prof}" in err and "dispatch overhead 2000.0 us" in err
    rec = json.loads(max(p for p in tmp_path.glob("compare-*.json") if "trace" not in p.name).read_text())
    assert rec["qpu_timing_profile"]["params"]["dispatch_overhead_s"] == 2e-3
    slow_tg = rec["runs"][1]["tg_predicted"]["tg"]
    other = tmp_path / "without"
    assert main(args[:-1] + [str(other), "--no-timing-profile"]) == 0
    rec2 = json.loads(next(p for p in other.glob("compare-*.json") if "trace" not in p.name).read_text())
    assert "qpu_timing_profile" not in rec2
    # every decode token's expert dispatches (1 or 2 per layer, by kernel) are each 1950 us slower
    per_layer = (slow_tg - rec2["runs"][1]["tg_predicted"]["tg"]) / (rec["layers_run"] * 1950e-6)
    assert round(per_layer) >= 1 and per_layer == pytest.approx(round(per_layer), abs=0.05)
