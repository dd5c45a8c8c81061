"""`pimoe headline`: the fit columns (arithmetic on real-shape files), -o json against the record, and one
row's predicted speeds through pimoe compare."""

from __future__ import annotations

import json

import pytest

from pimoe.cli import main


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_fit_only_json_matches_the_record_and_published_sizes(tmp_path, capsys):
    rc, out, err = _run(capsys, ["headline", "--fit-only", "--models", "olmoe-1b-7b,granite-3.0-1b-a400m",
                                 "-o", "json", "--results", str(tmp_path), "--cache-dir", str(tmp_path / "m")])
    assert rc == 0
    printed = json.loads(out)                                  # stdout is exactly one JSON document
    rec_path = next(tmp_path.glob("headline-*.json"))
    rec = json.loads(rec_path.read_text())
    assert rec["kind"] == "headline" and rec["schema"] >= 1 and rec["command"].startswith("pimoe headline")
    assert [r["fit"] for r in printed["rows"]] == [r["fit"] for r in rec["rows"]]
    rows = {(r["model"], r["mix"]): r for r in rec["rows"]}
    assert set(rows) == {(m, x) for m in ("olmoe-1b-7b", "granite-3.0-1b-a400m") for x in ("Q4_K_M", "Q8_0")}
    # allenai's OLMoE-1B-7B Q4_K_M GGUF is about 4.2 GB (issue 15): the recipe and shapes give that size
    olmoe = rows[("olmoe-1b-7b", "Q4_K_M")]["fit"]
    assert 4.0e9 < olmoe["file_bytes"] < 4.4e9
    # the QPU layout takes 6 bits per q4 weight against Q4_K's 4.5: OLMoE's copy passes the GPU's 4 GiB
    assert olmoe["qpu_copy_bytes"] > 4 << 30 and not olmoe["qpu_copy_fits_gpu_va"]
    assert not any(olmoe["fits_qpu"].values()) and olmoe["fits_cpu"]["8 GB"] and not olmoe["fits_cpu"]["4 GB"]
    granite = rows[("granite-3.0-1b-a400m", "Q8_0")]["fit"]
    assert all(granite["fits_cpu"].values()) and all(granite["fits_qpu"].values())
    # KV: pimoe's f32 cache, 2 (K, V) x layers x ctx x kv_dim x 4 bytes; granite 1b: 24 layers, 8 x 64
    assert granite["kv_bytes"] == 2 * 24 * 2048 * 512 * 4
    # the CSV next to the record has one line per row and no Python reprs
    csv_text = rec_path.with_suffix(".csv").read_text()
    assert len(csv_text.strip().splitlines()) == 1 + 4 and "{'" not in csv_text


def test_jsonl_and_csv_outputs(tmp_path, capsys):
    args = ["headline", "--fit-only", "--models", "granite-3.0-3b-a800m", "--types", "Q8_0", "--no-record",
            "--cache-dir", str(tmp_path)]
    rc, out, _ = _run(capsys, args + ["-o", "jsonl"])
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert rc == 0 and len(lines) == 1 and lines[0]["model"] == "granite-3.0-3b-a800m"
    rc, out, _ = _run(capsys, args + ["-o", "csv"])
    head, row = out.strip().splitlines()
    assert head.split(",")[:2] == ["model", "mix"] and row.startswith("granite-3.0-3b-a800m,Q8_0,")


@pytest.mark.slow
def test_one_row_predicts_both_backends_and_draws_the_figure(tmp_path, capsys):
    rc, out, err = _run(capsys, ["headline", "--models", "granite-3.0-1b-a400m", "--types", "Q8_0", "--layers", "1",
                                 "--backends", "cpu,qpu", "--results", str(tmp_path),
                                 "--cache-dir", str(tmp_path / "m")])
    assert rc == 0, err
    rec = json.loads(next(tmp_path.glob("headline-*.json")).read_text())
    (row,) = rec["rows"]
    assert row["layers_run"] == 1 and row["layers_full"] == 24
    assert row["tps"]["cpu"] > 0 and row["tps"]["qpu"] > 0
    assert row["qpu_over_cpu"] == pytest.approx(row["tps"]["qpu"] / row["tps"]["cpu"])
    assert row["same_tokens"] == {"qpu": True}
    assert f"{row['tps']['cpu']:.2f}" in out and "PREDICTED" in out + err
    assert list(tmp_path.glob("headline-*.png")) and list(tmp_path.glob("headline-*.svg"))


def _one_fit_only_record(tmp_path, capsys):
    """(printed JSON, record path, common options) of a one-row --fit-only run written to tmp_path."""
    common = ["--cache-dir", str(tmp_path / "m"), "--results", str(tmp_path)]
    rc, first, _ = _run(capsys, ["headline", "--fit-only", "--models", "granite-3.0-3b-a800m", "--types", "Q8_0",
                                 "-o", "json"] + common)
    assert rc == 0
    return first, next(tmp_path.glob("headline-*.json")), common


def test_combine_rebuilds_the_table_from_records(tmp_path, capsys):
    first, rec, common = _one_fit_only_record(tmp_path, capsys)
    rc, again, _ = _run(capsys, ["headline", "--combine", str(rec), "-o", "json", "--no-record"] + common)
    assert rc == 0
    a, b = json.loads(first)["rows"], json.loads(again)["rows"]
    assert [r["fit"] for r in a] == [r["fit"] for r in b] and b[0]["source"] == rec.name


def test_hybrid_column_and_its_ratio_to_cpu_only(tmp_path):
    # the CPU+QPU column appears with its own ratio when a row ran the hybrid backend, and only then
    from pimoe import headline as hl

    fit = hl.plan_fit("granite-3.0-1b-a400m", "Q8_0", cache_dir=tmp_path)
    row = hl.Row(model="granite-3.0-1b-a400m", mix="Q8_0", arch="granitemoe", layers_full=24, params=1, fit=fit,
                 tps={"cpu": 2.0, "qpu": 3.0, "hybrid": 5.0})
    header, _, line = hl.table_text([row]).splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")]))
    assert cells["CPU+QPU t/s (pred.)"] == "5.00" and cells["CPU+QPU / CPU"] == "2.50x"
    assert cells["QPU / CPU"] == "1.50x"
    assert row.flat()["hybrid_over_cpu"] == 2.5 and row.to_json()["hybrid_over_cpu"] == 2.5
    assert hl.Row.from_json(row.to_json()).hybrid_ratio == 2.5
    row.tps.pop("hybrid")
    assert "CPU+QPU" not in hl.table_text([row]).splitlines()[0]


def test_combine_takes_a_row_in_several_records_from_the_last(tmp_path, capsys):
    _, old, common = _one_fit_only_record(tmp_path, capsys)
    newer = json.loads(old.read_text())                  # a later run of the same row, with speeds
    newer["rows"][0]["tps"] = {"cpu": 2.0, "hybrid": 3.0}
    newer["record_file"] = "headline-newer.json"
    new = tmp_path / "headline-newer.json"
    new.write_text(json.dumps(newer))
    for order, want in (([old, new], {"cpu": 2.0, "hybrid": 3.0}), ([new, old], {})):
        rc, out, _ = _run(capsys, ["headline", "--combine", *map(str, order), "-o", "json", "--no-record"] + common)
        (row,) = json.loads(out)["rows"]
        assert rc == 0 and row["tps"] == want and row["source"] == order[-1].name
