"""Results records: never overwritten, environment present, CSV equals the table."""

from __future__ import annotations

import csv
import json

import pytest

from pimoe import records
from pimoe.errors import PimoeError


def test_records_never_overwrite(tmp_path, monkeypatch):
    # freeze the clock so every record wants the same name
    monkeypatch.setattr(records.time, "strftime", lambda fmt, t=None: "20260101-000000"
                        if "%H" in fmt and "T" not in fmt else "2026-01-01T00:00:00Z")
    existing = tmp_path / "compare-20260101-000000.json"
    existing.write_text("precious")
    paths = [records.write_record({"n": i}, tmp_path, "compare", table=[{"a": i, "b": "x"}])[0]
             for i in range(3)]
    assert existing.read_text() == "precious"
    assert len(set(paths)) == 3 and existing not in paths
    assert [p.name for p in paths] == [f"compare-20260101-000000-{n}.json" for n in (1, 2, 3)]
    for i, p in enumerate(paths):
        rec = json.loads(p.read_text())
        assert rec["n"] == i and rec["kind"] == "compare" and rec["record_file"] == p.name
        rows = list(csv.DictReader((tmp_path / rec["table_csv"]).open()))
        assert rows == [{"a": str(i), "b": "x"}]


def test_environment_and_read_back(tmp_path):
    env = records.environment(backend="cpu", threads=1)
    for key in ("cpu", "cpu_count", "clocks", "versions", "git", "load_average", "time_utc"):
        assert key in env
    assert env["versions"]["numpy"] and env["versions"]["pimoe"]
    assert env["git"]["commit"] is None or len(env["git"]["commit"]) == 40
    path, csv_path = records.write_record({"environment": env, "x": float("nan")}, tmp_path, "bandwidth")
    assert csv_path is None
    rec = records.read_record(path)
    assert rec["kind"] == "bandwidth" and rec["x"] is None      # NaN is written as null, valid JSON


def test_read_record_rejects_non_records(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(PimoeError, match="not a JSON record"):
        records.read_record(bad)
    bad.write_text('{"traceEvents": []}')
    with pytest.raises(PimoeError, match="no 'kind'"):
        records.read_record(bad)


def test_model_info_shape_and_types(tiny_model):
    import pimoe

    model = pimoe.load_model(tiny_model("qwen3moe", "Q8_0"))
    info = records.model_info(model)
    assert info["shape"]["n_experts"] == model.config.n_experts
    assert set(info["weight_bytes_by_type"]) == {"Q8_0", "F32"}
    assert sum(info["weight_bytes_by_type"].values()) == sum(t.nbytes for t in model.file.tensors.values())
    assert info["synthetic"] is True
