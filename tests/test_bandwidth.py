"""Bandwidth microbenchmarks: the kernels do what they claim, rows add up, the command records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pimoe.bench import bandwidth
from pimoe.cli import main as cli_main
from pimoe.errors import PimoeError


def test_cpu_kernels_compute_what_they_claim():
    read, copy, triad = bandwidth._cpu_kernels()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, bandwidth.ROW_BYTES // 4)).astype(np.float32)
    c = rng.standard_normal(a.shape).astype(np.float32)
    b = np.zeros_like(a)
    copy(a, b)
    assert np.array_equal(a, b)
    out = np.empty_like(a)
    triad(out, a, c, np.float32(0.5))
    np.testing.assert_array_equal(out, a + np.float32(0.5) * c)
    a8 = a.view(np.uint8)
    sums = np.zeros(a8.shape[0], np.int32)
    read(a8, sums)
    assert (sums == a8.astype(np.int64).sum(axis=1)).all()     # every byte read once


def test_cpu_rows():
    rows = bandwidth.cpu_bandwidth(sizes=(1 << 16, 1 << 18), threads=[1], reps=2, progress=False)
    assert [(r["kernel"], r["bytes"]) for r in rows] == [(k, s) for s in (1 << 16, 1 << 18)
                                                         for k in ("read", "copy", "triad")]
    for r in rows:
        factor = {"read": 1, "copy": 2, "triad": 3}[r["kernel"]]
        assert r["bytes_moved"] == factor * r["bytes"]
        assert r["GBps"] == pytest.approx(r["bytes_moved"] / r["seconds"] / 1e9)
        assert 0 < r["GBps"] <= r["GBps_best"] * 1.0001
        assert r["source"] == "measured"


def test_bad_sizes_and_threads():
    with pytest.raises(PimoeError, match="multiples"):
        bandwidth.cpu_bandwidth(sizes=(1000,), threads=[1], progress=False)
    with pytest.raises(PimoeError, match="multiples"):
        bandwidth.cpu_bandwidth(sizes=(3 << 15,), threads=[1], progress=False)
    with pytest.raises(PimoeError, match="threads"):
        bandwidth.cpu_bandwidth(sizes=(1 << 16,), threads=[99], progress=False)


def test_qpu_rows_are_predicted_from_counts():
    from pimoe.qpu import timing

    rows = bandwidth.qpu_bandwidth(sizes=(1 << 16, 1 << 18), kernels=("summation", "memcpy"), driver="emu",
                                   progress=False)
    assert {r["source"] for r in rows} == {"predicted"}
    for r in rows:
        c = r["counters"]
        read_bytes = r["bytes"]
        assert c["tmu_read_bytes"] == read_bytes                   # the kernel read each byte exactly once
        if r["kernel"] == "memcpy":
            assert c["tmu_write_bytes"] == read_bytes
        # no prediction beats the model's own streaming ceiling
        ceiling = timing.PI4.read_bandwidth if r["kernel"] == "summation" else None
        if ceiling:
            assert r["GBps"] * 1e9 <= ceiling * 1.0001
    summ = sorted((r for r in rows if r["kernel"] == "summation"), key=lambda r: r["bytes"])
    assert summ[0]["GBps"] < summ[1]["GBps"]                       # dispatch overhead amortizes with size


def test_qpu_rows_through_the_virtual_device_equal_the_emulator_route():
    """`pimoe bandwidth --qpu virtual`: the same kernel through the hardware route over the virtual V3D
    device gives the same counts and so the same predicted Pi 4 time as the emulator called directly."""
    kw = dict(sizes=(1 << 16,), kernels=("summation",), threads=(8,), progress=False)
    emu, virt = bandwidth.qpu_bandwidth(driver="emu", **kw), bandwidth.qpu_bandwidth(driver="virtual", **kw)
    assert (emu[0]["route"], virt[0]["route"]) == ("emu", "virtual") and virt[0]["source"] == "predicted"
    counts = [{k: v for k, v in r[0]["counters"].items() if k != "wall_seconds"} for r in (emu, virt)]
    assert counts[0] == counts[1] and virt[0]["seconds"] == emu[0]["seconds"]


def test_bandwidth_command_small(tmp_path, capsys):
    rc = cli_main(["bandwidth", "--small", "--threads", "1", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| cpu | triad | 1 |" in out and "| qpu | summation |" in out
    rec = json.loads(next(tmp_path.glob("bandwidth-*.json")).read_text())
    assert rec["kind"] == "bandwidth" and len(rec["cpu"]) == 9 and rec["qpu"]
    assert rec["concurrent"][0]["source"] == "bound"
    assert rec["pi4_ceilings"]["qpu_read_GBps"] > 0


def test_bandwidth_json_on_stdout_is_the_record(tmp_path, capsys):
    # -o json: stdout is one JSON document with the record's numbers; the record has command and schema,
    # and its CSV holds JSON (not Python reprs) in the cells that are dicts
    rc = cli_main(["bandwidth", "--sizes", "64K,1M", "-t", "1", "--no-qpu", "-r", "2", "-o", "json",
                   "--results", str(tmp_path)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    rec_path = next(tmp_path.glob("bandwidth-*.json"))
    rec = json.loads(rec_path.read_text())
    assert rec["schema"] >= 1 and rec["command"] and printed["settings"]["reps"] == rec["settings"]["reps"] == 2
    assert [r["GBps"] for r in printed["cpu"]] == [r["GBps"] for r in rec["cpu"]]
    assert "{'" not in rec_path.with_suffix(".csv").read_text()
