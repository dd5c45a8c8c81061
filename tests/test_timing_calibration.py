"""The timing model against py-videocore6's published Pi 4 figures (the calibration in pimoe/bench/calibration).

Three parameters (read and write bandwidth, wait latency) are fitted by least squares on all four figures
(issue 12: each within +-10 %); leave-one-out refits on every three and predicts the fourth (+-15 %), except
that the streaming kernels do not determine the latency, so sgemm left out of the four takes a prior and is
reported as a range. A fifth figure (py-videocore6's 2019 naive sgemm) identifies the latency: left out of
the five, every figure is within +-15 %, and fitted on the five within +-10 %.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pimoe import pi4
from pimoe.errors import PimoeError
from pimoe.bench import calibration as cal
from pimoe.bench.calibration import emulate
from pimoe.qpu.timing import PI4, SWITCH_WAITS, predict

FIT_TOLERANCE = 0.10   # issue 12: fitted on all four, each within +-10 %
LOO_TOLERANCE = 0.15   # issue 12: left out of the fit, within +-15 %


@pytest.fixture(scope="module")
def published():
    return cal.load_published()


@pytest.fixture(scope="module")
def counts():
    return cal.load_counts()


def test_published_data_matches_the_readme_arithmetic(published):
    """The transcribed times, sizes and figures agree with each other as the README prints them."""
    k = published["kernels"]
    assert k["summation"]["bytes_read"] / k["summation"]["seconds"] * 1e-6 == pytest.approx(7241.514141947083)
    assert k["memset"]["bytes_written"] / k["memset"]["seconds"] * 1e-6 == pytest.approx(3751.5408215319367)
    assert k["scopy"]["bytes_read"] / k["scopy"]["seconds"] * 1e-6 == pytest.approx(2423.761776625857)
    s = k["sgemm"]["size"]
    assert k["sgemm"]["flops"] == 2 * s["p"] * s["q"] * s["r"] + 3 * s["p"] * s["r"]
    assert k["sgemm"]["flops"] / k["sgemm"]["seconds"] * 1e-9 == pytest.approx(3.878, rel=1e-3)
    n = k["sgemm_naive"]   # README at 878a1f4: 0.8327 sec, 0.08599 Gflop/s for 123x567 times 567x512
    s = n["size"]
    assert (s["p"], s["q"], s["r"]) == (123, 567, 512)
    assert n["flops"] == 2 * s["p"] * s["q"] * s["r"] + 3 * s["p"] * s["r"]
    assert n["flops"] / n["seconds"] * 1e-9 == pytest.approx(0.08599, rel=1e-4) == n["figure"]


def test_stored_counts_do_the_published_work(counts, published):
    """The extrapolated counts move the published bytes (the kernels do the same work at the same size)."""
    tot = {k: {n: int(np.sum(v)) for n, v in counts[k]["counters"]["per_thread"].items()} for k in cal.KERNELS}
    pub = published["kernels"]
    assert tot["summation"]["tmu_read_bytes"] == pub["summation"]["bytes_read"]
    assert tot["memset"]["tmu_write_bytes"] == pub["memset"]["bytes_written"]
    assert tot["scopy"]["tmu_write_bytes"] == pub["scopy"]["bytes_read"]
    # scopy also prefetches each next row: one byte per lane (config 0x80: an s8 lookup), no result
    assert tot["scopy"]["tmu_read_bytes"] == pub["scopy"]["bytes_read"] + 16 * tot["scopy"]["tmu_prefetches"]
    assert tot["scopy"]["tmu_prefetches"] == tot["scopy"]["tmu_reads"] // 2
    # vec4 lookups, as the published kernels: 256 bytes and 4 results per 16-lane lookup
    for k in ("summation", "scopy"):
        assert tot[k]["ldtmu"] == 4 * tot[k]["tmu_reads"]
        assert tot[k]["tmu_reads"] * 256 == pub[k]["bytes_read"]
        assert tot[k]["tmu_read_requests"] - 16 * tot[k]["tmu_prefetches"] == tot[k]["tmu_reads"] * 16
    # sgemm: 512 tiles per QPU, 1024 k steps of an A column and a B row + 16 C rows each, 1 parameter load
    assert tot["sgemm"]["tmu_reads"] == 8 * (512 * (1024 * 2 + 16) + 1)
    per_qpu = np.sum(counts["sgemm"]["counters"]["per_thread"]["instructions"], axis=1)
    assert np.all(per_qpu == per_qpu[0]) and per_qpu[0] // (512 * 1024) == 47   # 47 instructions per k step
    for k in ("summation", "memset", "scopy", "sgemm"):
        assert counts[k]["counters"]["batches"] == 8 and counts[k]["counters"]["threads_per_qpu"] == 1
    for k in cal.ALL_KERNELS:   # the record names the kernel that produced each count
        assert counts[k]["kernel"] == emulate.KERNEL_OF[k] and counts[k]["kernel"].startswith("qpu_kernels.")
    # the naive sgemm: one batch (1 QPU, 1 thread); per k step an A and a B lookup (64 bytes each), 2 thrsw
    # and 9 instructions; per 16-column strip a C load, store and tmuwt
    s = pub["sgemm_naive"]["size"]
    steps, strips = s["p"] * s["q"] * s["r"] // 16, s["p"] * s["r"] // 16
    n = {name: np.asarray(v) for name, v in counts["sgemm_naive"]["counters"]["per_thread"].items()}
    assert counts["sgemm_naive"]["counters"]["batches"] == 1 and n["instructions"][0, 0] == n["instructions"].sum()
    assert n["tmu_reads"].sum() == 2 * steps + strips and n["tmu_read_bytes"].sum() == 128 * steps + 64 * strips
    assert n["tmu_write_bytes"].sum() == 64 * strips and n["thread_switches"].sum() == 2 * steps + strips + 2
    assert n["instructions"].sum() // steps == 9
    # thread switches taken with load results outstanding (the waits the model charges): the naive sgemm's
    # first per k step and its per-strip C load's, both of the 1024^3 sgemm's per k step and its 16 C rows'
    # (all but the program end), none of the streaming kernels' (they read results without switching)
    assert n[SWITCH_WAITS].sum() == steps + strips
    g = {name: np.asarray(v) for name, v in counts["sgemm"]["counters"]["per_thread"].items()}
    assert g[SWITCH_WAITS].sum() == g["thread_switches"].sum() - 2 * 8
    for k in ("summation", "memset", "scopy"):
        assert tot[k][SWITCH_WAITS] == 0


@pytest.mark.parametrize("kernel, published_loop", [("summation", 35), ("scopy", 18), ("memset", 41)])
def test_loop_length_matches_the_published_kernel(kernel, published_loop, counts):
    """Instructions per loop trip equal (within one) those of py-videocore6's kernel, counted from its
    source: summation (unroll_shift 2) 2 + 3*8 + 5 + 1 + 3 per 8 vec4 loads, scopy (unroll 1)
    3 + 6 + 2 + 3 + 1 + 3 per 2 vec4 rows, memset 7*5 + 2 + 1 + 3."""
    trips = counts[kernel]["target"][1]
    per_qpu = np.sum(counts[kernel]["counters"]["per_thread"]["instructions"], axis=1)
    assert abs(per_qpu[0] / trips - published_loop) <= 1.0 + 100 / trips


def test_emulation_reproduces_the_stored_counts(counts):
    """Re-emulating the kernels (seconds) gives exactly the committed counts.json."""
    fresh = emulate.emulate_all(progress=False)
    for k in cal.ALL_KERNELS:
        assert fresh[k]["counters"] == counts[k]["counters"], (
            f"{k}: the emulator now counts differently from pimoe/bench/calibration/counts.json; if the change is "
            f"intended, run `python -m pimoe.bench.calibration --write-counts` and update timing.PI4 to the new fit")


@pytest.mark.parametrize("kernel", ["summation", "memset", "scopy", "sgemm"])
def test_prediction_within_10_percent_of_published(kernel, counts, published):
    pred = predict(counts[kernel]["counters"])                        # the shipped parameters
    pub = published["kernels"][kernel]
    assert "predicted" in pred.label
    ratio = pred.seconds / pub["seconds"]
    assert 1 - FIT_TOLERANCE <= ratio <= 1 + FIT_TOLERANCE, f"{kernel}: predicted {pred.seconds:.4g} s vs {pub['seconds']} s"
    fig = cal.figure_of(kernel, pred.seconds, published)
    assert abs(fig / pub["figure"] - 1) <= FIT_TOLERANCE / (1 - FIT_TOLERANCE)


def test_each_kernel_is_bound_where_the_fit_says(counts):
    """The streaming kernels are memory bound and the sgemm latency bound, so the fit meant what it says;
    the summation stays memory bound at the sgemm's latency: 8 results in flight hide it (Little's law)."""
    p = {k: predict(counts[k]["counters"]) for k in cal.KERNELS}
    assert p["summation"].bound == p["memset"].bound == p["scopy"].bound == "memory"
    assert p["sgemm"].bound == "latency"
    assert p["summation"].breakdown["latency"] < 0.8 * p["summation"].breakdown["memory"]


def test_shipped_parameters_are_the_fit_on_all_four(counts, published):
    fitted = cal.fit_all(counts, published)
    for name in cal.FREE:
        assert getattr(PI4, name) == pytest.approx(getattr(fitted, name), rel=2e-3), name


def test_fit_all_minimises_the_log_error(counts, published):
    """fit_all is a least-squares optimum: moving any parameter by 1 % either way does not lower the cost."""
    best = cal.fit_all(counts, published)

    def cost(params):
        return sum(np.log(predict(counts[k]["counters"], params=params).seconds /
                          published["kernels"][k]["seconds"]) ** 2 for k in cal.KERNELS)

    from dataclasses import replace
    c0 = cost(best)
    for name in cal.FREE:
        for f in (0.99, 1.01):
            assert cost(replace(best, **{name: getattr(best, name) * f})) >= c0 - 1e-12, (name, f)


def test_leave_one_out_within_15_percent(counts, published):
    rows = {r["held_out"]: r for r in cal.leave_one_out(counts, published)}
    assert set(rows) == set(cal.KERNELS)
    for k in ("summation", "memset", "scopy"):
        assert 1 - LOO_TOLERANCE <= rows[k]["ratio"] <= 1 + LOO_TOLERANCE, rows[k]
        assert rows[k]["held_at_prior"] == {}, rows[k]


def test_sgemm_left_out_takes_the_latency_prior(counts, published):
    """The streaming kernels are memory bound at any latency the summation allows, so without sgemm the round
    trip is not identifiable: it is held at its prior (Mesa's scheduler estimate, pimoe.pi4), the bandwidths
    are fitted, and sgemm gets a number."""
    from dataclasses import replace

    assert cal.unidentified(counts, published, ("summation", "memset", "scopy")) == ["wait_latency_cycles"]
    assert cal.unidentified(counts, published, cal.KERNELS) == []
    prior = pi4.MESA_V3D_TMU_LATENCY_INSTRUCTIONS * PI4.cycles_per_instruction
    s = {r["held_out"]: r for r in cal.leave_one_out(counts, published)}["sgemm"]
    assert s["held_at_prior"] == {"wait_latency_cycles": prior} and s["wait_latency_cycles"] == prior
    assert "qpu_schedule.c" in s["prior_source"]["wait_latency_cycles"]
    bw = cal.fit_all(counts, published, ("summation", "memset", "scopy"),
                     replace(PI4, wait_latency_cycles=prior), free=("read_bandwidth", "write_bandwidth"))
    want = predict(counts["sgemm"]["counters"], params=bw).seconds / published["kernels"]["sgemm"]["seconds"]
    assert s["ratio"] == pytest.approx(want, rel=1e-9)
    rng = s["allowed_range"]   # the published sgemm lies inside what the three allow with the latency free
    assert rng["ratio_at_zero_latency"] < 1 < rng["ratio_at_latency_max"]


def test_naive_sgemm_determines_the_latency_without_sgemm(counts, published):
    """With the fifth figure (py-videocore6's 2019 naive sgemm, latency bound) the round trip is identified
    without the 1024^3 sgemm: nothing is held at a prior in the leave-one-out of the five, and the streaming
    kernels left out stay within +-15 %."""
    assert cal.unidentified(counts, published, ("summation", "memset", "scopy", "sgemm_naive")) == []
    rows = {r["held_out"]: r for r in cal.leave_one_out(counts, published, kernels=cal.ALL_KERNELS)}
    assert set(rows) == set(cal.ALL_KERNELS)
    assert all(r["held_at_prior"] == {} for r in rows.values())
    for k in ("summation", "memset", "scopy"):
        assert 1 - LOO_TOLERANCE <= rows[k]["ratio"] <= 1 + LOO_TOLERANCE, rows[k]
    # the naive figure alone sets the round trip when sgemm is left out: its own time is reproduced
    s = rows["sgemm"]
    naive = predict(counts["sgemm_naive"]["counters"], params=replace(PI4, **{n: s[n] for n in cal.FREE}))
    assert naive.bound == "latency"
    assert naive.seconds == pytest.approx(published["kernels"]["sgemm_naive"]["seconds"], rel=1e-3)


def _old_counting(counts: dict) -> dict:
    """The counts as an emulator without thread_switches_with_loads recorded them: predict() then charges
    every thrsw but the program end's as a round trip (timing.OLD_WAIT_RULE)."""
    return {k: {**v, "counters": {**v["counters"], "per_thread": {
        n: a for n, a in v["counters"]["per_thread"].items() if n != SWITCH_WAITS}}} for k, v in counts.items()}


@pytest.mark.parametrize("kernel", ["sgemm", "sgemm_naive"])
def test_latency_bound_figure_left_out_within_15_percent(kernel, counts, published):
    """Issue 12's leave-one-out bound for the latency-bound figures, over the five: the round trip fitted
    on the naive sgemm predicts the 1024^3 sgemm, and the other way round. Both need the emulator's count
    of thread switches taken with loads outstanding: the naive sgemm's second thrsw per k step waits for
    nothing (both results are read in its delay slots), the 1024^3 sgemm's two both wait."""
    s = {r["held_out"]: r for r in cal.leave_one_out(counts, published, kernels=cal.ALL_KERNELS)}[kernel]
    assert s["held_at_prior"] == {}
    assert 1 - LOO_TOLERANCE <= s["ratio"] <= 1 + LOO_TOLERANCE, s


def test_fit_on_five_within_10_percent(counts, published):
    params = cal.fit_all(counts, published, cal.ALL_KERNELS)
    for row in cal.compare(counts, published, params, cal.ALL_KERNELS):
        assert 1 - FIT_TOLERANCE <= row["ratio_predicted_to_published_time"] <= 1 + FIT_TOLERANCE, row


def test_the_old_counting_misses_both_bounds(counts, published):
    """Charging every thrsw (the rule before the emulator counted switches with loads outstanding) the two
    sgemm figures need round trips of 167 and 75 cycles: left out of the five, sgemm is far below and the
    naive sgemm far above +-15 %, and the fit on five misses +-10 % -- so the two tests above test the
    counting."""
    old = _old_counting(counts)
    assert "older emulator" in predict(old["sgemm"]["counters"]).label
    rows = {r["held_out"]: r for r in cal.leave_one_out(old, published, kernels=cal.ALL_KERNELS)}
    assert rows["sgemm"]["ratio"] < 1 - LOO_TOLERANCE and rows["sgemm_naive"]["ratio"] > 1 + LOO_TOLERANCE
    params = cal.fit_all(old, published, cal.ALL_KERNELS)
    ratios = [r["ratio_predicted_to_published_time"] for r in cal.compare(old, published, params, cal.ALL_KERNELS)]
    assert not all(1 - FIT_TOLERANCE <= r <= 1 + FIT_TOLERANCE for r in ratios)


@pytest.mark.parametrize("p, q, r", [(1, 1, 16), (3, 5, 48), (7, 2, 32)])
def test_naive_sgemm_equals_numpy(p, q, r):
    """The 2019 naive sgemm (one thread, one 16-column strip of a C row at a time) against numpy, at sizes
    with one k step, one row, one strip; 9 instructions and 2 lookups + 2 thrsw per k step, one thread."""
    from pimoe.qpu.emulator import EmuDriver
    from qpu_kernels import calibration as ck

    with EmuDriver(data_area_size=4 * (p * q + q * r + p * r) + (1 << 16), check_allocations=True) as drv:
        c, _, err = ck.run_sgemm_naive(drv, p=p, q=q, r=r, seed=p + q)
    assert err < 1e-6
    per = {n: np.asarray(v) for n, v in c.per_thread.items()}
    assert c.batches == 1 and per["instructions"][0, 0] == per["instructions"].sum()
    steps, strips = p * q * r // 16, p * r // 16
    assert per["tmu_reads"].sum() == 2 * steps + strips
    assert per["tmu_read_bytes"].sum() == 128 * steps + 64 * strips
    assert per["tmu_write_bytes"].sum() == 64 * strips and per["tmuwt"].sum() == strips
    assert per["thread_switches"].sum() == 2 * steps + strips + 2      # + the program end's last-thrsw pair


def test_fit_refuses_a_parameter_the_kernel_is_not_bound_by(counts, published):
    with pytest.raises(PimoeError, match="not bound"):
        cal.fit(counts, published, fitted={"write_bandwidth": "summation"})


def test_extrapolation_rejects_counts_that_are_not_linear_in_the_trips():
    def sample(trips, instr):
        return emulate.Sample((1, trips), {"instructions": np.full((8, 4), instr)}, 8, 1)

    ok = emulate.extrapolate([sample(1, 10), sample(2, 15)], sample(3, 20), (1, 100))
    assert ok["per_thread"]["instructions"][0][0] == 5 + 5 * 100
    with pytest.raises(PimoeError, match="not linear"):
        emulate.extrapolate([sample(1, 10), sample(2, 15)], sample(3, 21), (1, 100))


def test_regeneration_script_writes_a_new_record(tmp_path):
    from pimoe.bench.calibration.__main__ import main

    assert main(["--no-emulate", "--results", str(tmp_path)]) == 0
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".png", ".svg"]
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["kernel"] for r in rec["table"]} == set(cal.ALL_KERNELS)
    assert {r["kernel"] for r in rec["fit_on_five"]["table"]} == set(cal.ALL_KERNELS)
    assert {r["held_out"] for r in rec["leave_one_out_of_five"]} == set(cal.ALL_KERNELS)
    assert {r["held_out"] for r in rec["leave_one_out"]} == set(cal.KERNELS)
    assert {r["kernel"]: r["counts_from"] for r in rec["table"]} == rec["kernel_of_each_count"] == emulate.KERNEL_OF
    assert all("predicted" in r["label"] for r in rec["table"])
    # one schema for every record: schema, kind, command, environment; the name every kind has
    assert rec["schema"] >= 1 and rec["kind"] == "calibration" and rec["command"]
    assert rec["environment"]["versions"]["gguf"] and next(tmp_path.glob("calibration-????????-??????.json"))
