"""The hybrid backend (CPU and QPU on the same layer's experts), the DRAM-sharing model, the split planner and
the placements."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe import coexec, dram, load_model, pi4, placement
from pimoe.errors import PimoeError

TOKENS = [1, 17, 42, 7, 300, 5]


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def k4_model(tiny_model):
    # 4 experts per token of 8, so that splits 1..3 exist
    return tiny_model("qwen3moe", "Q4_K", n_experts_used=4)


def test_hybrid_all_cpu_and_all_qpu_equal_those_backends(k4_model):
    with load_model(k4_model, backend="cpu") as mc, load_model(k4_model, backend="qpu", qpu="emu") as mq:
        lc, lq = mc.logits(TOKENS), mq.logits(TOKENS)
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=4) as mh:
        assert np.array_equal(mh.logits(TOKENS), lc)
        assert mh.backend.stats["qpu_experts"] == 0
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=0) as mh:
        assert np.array_equal(mh.logits(TOKENS), lq)
        assert mh.backend.stats["cpu_experts"] == 0


@pytest.mark.parametrize("n_cpu", [1, 2, 3])
def test_hybrid_split_is_cpu_part_plus_qpu_part(k4_model, n_cpu):
    """Every layer's expert output, for prompt (token split) and decode (slot split) calls, equals the cpu
    backend on the CPU's share plus the numpy reference of the QPU's arithmetic (qpu-reference) on the
    rest; the logits stay as close to the cpu backend's as the qpu backend's are."""
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=n_cpu) as mh, \
            load_model(k4_model, backend="cpu") as mc, load_model(k4_model, backend="qpu-reference") as mr, \
            load_model(k4_model, backend="qpu", qpu="emu") as mq:
        k = mh.config.n_experts_used
        run = mh.backend.expert_ffn
        diffs = []

        def checked(layer, x, ids, w):
            y = run(layer, x, ids, w)
            T = x.shape[0]
            if T == 1:
                c = slice(k - n_cpu, k)
                q = slice(0, k - n_cpu)
                want = (mr.backend.expert_ffn(layer, x, ids[:, q], w[:, q])
                        + mc.backend.expert_ffn(layer, x, ids[:, c], w[:, c]))
            else:
                t = min(max(int(round(T * n_cpu / k)), 1), T - 1)
                want = np.concatenate([mr.backend.expert_ffn(layer, x[:T - t], ids[:T - t], w[:T - t]),
                                       mc.backend.expert_ffn(layer, x[T - t:], ids[T - t:], w[T - t:])])
            diffs.append(_rel(y, want))
            return y

        mh.backend.expert_ffn = checked
        lh = mh.logits(TOKENS)
        steps = [mh.forward([t]) for t in (9, 11)]
        assert mh.backend.splits == [n_cpu] * (2 * mh.config.n_layers)
        lc, lq = mc.logits(TOKENS), mq.logits(TOKENS)
    assert max(diffs) < 1e-5 and len(diffs) == 3 * mh.config.n_layers
    assert _rel(lh, lc) < 2 * max(_rel(lq, lc), 1e-3)
    assert all(np.isfinite(s).all() for s in steps)


def test_hybrid_overlap_changes_nothing_and_profiles_both_lanes(k4_model):
    from pimoe import profile

    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=2, overlap=False) as ms:
        serial = ms.logits(TOKENS)
    prof = profile.Profiler()
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=2) as mh, profile.activate(prof):
        got = mh.logits(TOKENS)
    assert np.array_equal(got, serial)
    names = [r.name for r in prof.regions]
    assert "coexec" in names
    lanes = {r.tags.get("lane") for r in prof.regions if r.name in ("cpu", "qpu")}
    assert lanes == {"cpu", "qpu"}
    assert any(r.dispatches for r in prof.regions if r.name == "qpu")
    assert all(r.counters.get("bytes", 0) > 0 for r in prof.regions if r.name == "cpu")


def test_hybrid_auto_plans_from_rates_and_bad_options(k4_model):
    with load_model(k4_model, backend="hybrid", qpu="emu") as mh:
        b = mh.backend
        want = coexec.plan_units(4, b.rates, "central").n_cpu
        assert b.planned_cpu_experts() == want
        mh.logits(TOKENS[:2])
    with pytest.raises(PimoeError, match="0..4"):
        load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=5)
    with pytest.raises(PimoeError, match="scenario"):
        load_model(k4_model, backend="hybrid", qpu="emu", share="rosy")


# -- the DRAM-sharing model ------------------------------------------------------------------------------

def test_dram_scenarios_from_their_sources():
    s = dram.scenarios()
    from pimoe.qpu.timing import PI4

    assert s["pessimistic"].combined == pytest.approx(PI4.read_bandwidth)   # the timing model's read ceiling
    assert s["pessimistic"].combined == pytest.approx(pi4.PYVC6_SUMMATION_BANDWIDTH, rel=0.02)  # ~ published
    assert s["optimistic"].combined == pytest.approx(0.9 * 12.8e9)
    assert s["pessimistic"].combined < s["central"].combined < s["optimistic"].combined
    assert all("ASSUMPTION" in v.source for v in s.values())


def test_dram_concurrent_by_hand():
    # no contention: 3 GB/s + 4 GB/s under 9.38: both at their own speed
    ov = dram.concurrent(1.0, 3e9, 2.0, 8e9, 9.38e9)
    assert (ov.cpu_seconds, ov.qpu_seconds, ov.slowdown) == (1.0, 2.0, 1.0)
    # contention: demands 4 + 6 = 10 GB/s on 5 GB/s -> both at half speed; the CPU (1 s alone) ends at 2 s,
    # having let the QPU do 1 s of its 2 s; the QPU then finishes alone in 1 s more: 3 s
    ov = dram.concurrent(1.0, 4e9, 2.0, 12e9, 5e9)
    assert ov.slowdown == pytest.approx(0.5)
    assert ov.cpu_seconds == pytest.approx(2.0) and ov.qpu_seconds == pytest.approx(3.0)
    # the bytes are conserved: 16 GB at 5 GB/s for 2 s, then 6 GB at the QPU's 6 GB/s for 1 s
    assert ov.seconds == pytest.approx(2.0 + 6e9 / 6e9)
    # one side idle: the other alone
    assert dram.concurrent(0.0, 0.0, 2.0, 12e9, 1e9).seconds == 2.0
    with pytest.raises(PimoeError):
        dram.concurrent(-1, 0, 0, 0)


# -- the planner ---------------------------------------------------------------------------------------

def test_plan_units_is_the_brute_force_minimum():
    rng = np.random.default_rng(3)
    for _ in range(20):
        r = coexec.LaneRates(cpu_seconds=rng.uniform(1e-4, 1e-3), cpu_bytes=rng.uniform(1e5, 2e6),
                             qpu_seconds=rng.uniform(1e-4, 1e-3), qpu_bytes=rng.uniform(1e5, 2e6),
                             qpu_fixed_seconds=rng.uniform(0, 2e-4))
        best = coexec.plan_units(8, r, "pessimistic")
        times = []
        for c in range(9):
            cs = c * r.cpu_seconds
            qs = (r.qpu_fixed_seconds + (8 - c) * r.qpu_seconds) if c < 8 else 0.0
            times.append(dram.concurrent(cs, c * r.cpu_bytes, qs, (8 - c) * r.qpu_bytes, "pessimistic").seconds)
        assert best.seconds == pytest.approx(min(times))
        assert best.seconds <= times[0] and best.seconds <= times[8]


def test_plan_fraction_balances_equal_lanes():
    # equal lanes, no overhead, no contention: half and half, twice as fast as either alone
    r = coexec.LaneRates(1.0, 1.0, 1.0, 1.0)
    s = coexec.plan_fraction(r, 1e12)
    assert s.fraction == pytest.approx(0.5) and s.seconds == pytest.approx(0.5)


# -- placements ----------------------------------------------------------------------------------------

def test_placements_memory_and_assignment():
    L, E, k = 2, 8, 4
    usage = np.array([[9, 1, 1, 1, 5, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 20]])
    p_all = placement.make_placement("all", L, E, 100, 130, 0.5, budget=1000)
    assert p_all.bytes == L * E * 230 and p_all.notes      # two copies do not fit 1000 bytes
    st = placement.make_placement("static", L, E, 100, 130, 0.5)
    assert st.cpu[:, :4].all() and not st.cpu[:, 4:].any() and (st.cpu ^ st.qpu).all()
    fr = placement.make_placement("frequency", L, E, 100, 130, 0.5, usage=usage)
    assert (fr.cpu ^ fr.qpu).all()
    assert fr.cpu[0, 0] != fr.cpu[0, 4]                     # the two hot experts of layer 0 on different lanes
    hot = placement.make_placement("hot", L, E, 100, 130, 0.5, budget=fr.bytes + 260, usage=usage)
    assert int((hot.cpu & hot.qpu).sum()) == 2 and hot.bytes <= fr.bytes + 260
    assert (hot.cpu & hot.qpu)[1, 7] and (hot.cpu & hot.qpu)[0, 0]
    # assignment: one-sided experts go to their side, duplicated ones fill the CPU from the last slot
    on = placement.assign([True, True, False, True], [True, False, True, True], 2)
    assert on.tolist() == [False, True, False, True]
    with pytest.raises(PimoeError):
        placement.assign([False], [False], 0)


def test_placement_all_is_the_ideal_and_one_copy_costs():
    L, E, k = 1, 16, 4
    rng = np.random.default_rng(0)
    routing = np.stack([[rng.choice(E, k, replace=False)] for _ in range(50)])     # [steps, L, k]
    r = coexec.LaneRates(1e-3, 1e6, 1e-3, 1e6)
    n_cpu = coexec.plan_units(k, r, "central").n_cpu
    ideal = placement.evaluate(placement.make_placement("all", L, E, 1, 1, n_cpu / k), routing, r, n_cpu)
    assert ideal["cost_vs_ideal"] == pytest.approx(1.0)
    st = placement.evaluate(placement.make_placement("static", L, E, 1, 1, n_cpu / k), routing, r, n_cpu)
    assert st["cost_vs_ideal"] > 1.0


# -- the Pi 4 prediction of a hybrid run -----------------------------------------------------------------

def test_predicted_coexec_is_the_dram_combination_of_its_lanes(k4_model):
    """The prediction adds a layer's regions one after the other, except the hybrid backend's two lanes: they
    overlap, so the coexec region costs pimoe.dram.concurrent of the lanes' predictions, not their sum."""
    from pimoe import prediction, profile

    prof = profile.Profiler()
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=2) as mh, profile.activate(prof):
        with profile.region("tg"):
            mh.forward([3])
    every = lambda r: True  # noqa: E731
    incl = prediction.predict_each(prof, every)
    slow = prediction.predict_each(prof, every, share=1e6)          # a 1 MB/s DRAM: contention dominates
    co = [r for r in prof.regions if r.name == "coexec"]
    assert len(co) == mh.config.n_layers
    for r in co:
        lanes = {prof.regions[i].tags["lane"]: prof.regions[i] for i in range(len(prof.regions))
                 if prof.regions[i].parent == r.index}
        c, q = lanes["cpu"], lanes["qpu"]
        assert incl[c.index] > 0 and incl[q.index] > 0
        want = dram.concurrent(incl[c.index], c.counters["bytes"], incl[q.index], q.counters["qpu.tmu_read_bytes"])
        assert incl[r.index] == pytest.approx(want.seconds)
        assert incl[r.index] < incl[c.index] + incl[q.index]
        cb, qb = c.counters["bytes"], q.counters["qpu.tmu_read_bytes"]
        assert slow[r.index] == pytest.approx(dram.concurrent(incl[c.index], cb, incl[q.index], qb, 1e6).seconds)
        assert slow[r.index] >= min(cb, qb) / 1e6             # the first lane's bytes came at <= 1 MB/s
    # the predicted trace puts the two lanes side by side: same start, the QPU lane on its own track
    ev = prediction.predicted_trace_events(prof, every, 1, "hybrid")
    spans = {(e["name"], e["tid"]): e["ts"] for e in ev if e.get("ph") == "X" and e["name"] in ("cpu", "qpu")}
    assert ("cpu", 1) in spans and ("qpu", 2) in spans and spans[("cpu", 1)] == spans[("qpu", 2)]


def test_compare_runs_cpu_qpu_and_hybrid_by_default():
    import argparse

    from pimoe.commands import compare as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    assert p.parse_args([]).backends.split(",") == ["cpu", "qpu", "hybrid"]


def test_bandwidth_concurrent_off_a_pi_prints_the_model(capsys):
    from pimoe.cli import main as cli_main
    from pimoe.qpu.driver import hardware_available

    if hardware_available()[0]:
        pytest.skip("on a Pi this measures")
    assert cli_main(["bandwidth", "--concurrent", "--no-record"]) == 0
    out = capsys.readouterr().out
    for name in dram.SCENARIO_NAMES:
        assert f"{dram.scenario(name).combined / 1e9:5.2f} GB/s" in out
    assert "not measurable" in out
