"""The hybrid backend (CPU and QPU on the same layer's experts), the DRAM-sharing model, the split planner and
the placements."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe import coexec, dram, load_model, pi4, placement, profile
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


def test_an_error_on_the_cpu_lane_waits_for_the_submitted_qpu_dispatches(k4_model, monkeypatch):
    """The CPU lane raises while the decode token's QPU dispatches are submitted: both (swiglu, down_sum) are
    waited for before the error propagates, so the next call cannot reuse scratch a running job reads."""
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=2) as mh:
        hb = mh.backend

        def broken(*args):
            raise RuntimeError("cpu lane failed")

        monkeypatch.setattr(hb.cpu, "expert_ffn", broken)
        x = np.ones((1, mh.config.hidden), np.float32)
        with pytest.raises(RuntimeError, match="cpu lane failed"):
            hb.expert_ffn(0, x, np.array([[0, 1, 2, 3]]), np.full((1, 4), 0.25, np.float32))
        assert len(hb.qpu.runner.counters) == 2       # both dispatches ran to their wait


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


@pytest.mark.parametrize("dense", [1.0, 0.5, 0.0])
def test_hybrid_dense_split_rows(k4_model, dense):
    """The dense GEMVs of a decode token split by rows: the CPU's rows equal quant.matmul's (the cpu backend's
    arithmetic) exactly, the QPU's the numpy product of the dequantized rows with f32 x; dense=1.0 (all on
    the CPU) with all experts on the CPU gives the cpu backend's logits exactly, the others stay as close to
    them as the qpu backend's logits are."""
    from pimoe import quant

    with load_model(k4_model, backend="cpu") as mc, load_model(k4_model, backend="qpu", qpu="emu") as mq:
        lc = [mc.logits(TOKENS)] + [mc.forward([t]) for t in (9, 11)]
        lq = [mq.logits(TOKENS)] + [mq.forward([t]) for t in (9, 11)]
    tol = 2 * max(max(_rel(a, b) for a, b in zip(lq, lc)), 1e-3)
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=4, dense=dense) as mh:
        b = mh.backend
        run = b.dense_matmul
        seen = []

        def checked(ws, x):
            ys = run(ws, x)
            for w, y in zip(ws, ys):
                part = b.dense.rows.get(w.name)
                n = part.n_qpu if (part is not None and x.shape[0] == 1) else 0
                if n < w.shape[0]:
                    assert np.array_equal(y[:, n:], quant.matmul(w[n:], x))
                if n:
                    ref = x.astype(np.float64) @ w[:n].dequantize().astype(np.float64).T
                    assert _rel(y[:, :n], ref) < 1e-5
                seen.append(n)
            return ys

        b.dense_matmul = checked
        lh = [mh.logits(TOKENS)] + [mh.forward([t]) for t in (9, 11)]
        rows = sum(p.rows for p in b.dense.rows.values())
        n_qpu = sum(p.n_qpu for p in b.dense.rows.values())
    if dense == 1.0:
        assert n_qpu == 0 and all(np.array_equal(a, c) for a, c in zip(lh, lc))
    else:
        assert n_qpu == (rows if dense == 0.0 else pytest.approx(rows * (1 - dense), abs=16 * len(b.dense.rows)))
        assert max(seen) > 0 and b.stats["dense_calls"] == 2 * (2 * mh.config.n_layers + 1)
        assert max(_rel(a, c) for a, c in zip(lh, lc)) < tol
    assert all(np.isfinite(v).all() for v in lh)


def test_hybrid_all_qpu_dense_and_experts(k4_model):
    """Everything the hybrid backend can move (experts and dense rows) on the QPU: still the cpu backend's
    logits within the qpu backend's tolerance, and the predicted decode has dense coexec regions whose
    parent keeps only what they do not cover."""
    from pimoe import prediction

    with load_model(k4_model, backend="cpu") as mc, load_model(k4_model, backend="qpu", qpu="emu") as mq:
        lc, lq = mc.logits(TOKENS[:3]), mq.logits(TOKENS[:3])
        dc, dq = mc.forward([9]), mq.forward([9])
    prof = profile.Profiler()
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=0, dense=0.0) as mh:
        assert np.array_equal(mh.logits(TOKENS[:3]), lq)       # prompts: dense on the CPU, experts on the QPU
        with profile.activate(prof), profile.region("tg"):
            dh = mh.forward([9])
    assert _rel(dh, dc) < 2 * max(_rel(dq, dc), 1e-3)
    co = [r for r in prof.regions if r.name == "coexec"]
    assert len(co) == 2 * mh.config.n_layers + 1 and all(r.tags["concurrent"] for r in co)
    assert all(any(d for d in (prof.regions[i].dispatches or ()) ) for r in co for i in range(len(prof.regions))
               if prof.regions[i].parent == r.index and prof.regions[i].tags.get("lane") == "qpu")
    incl = prediction.predict_each(prof, lambda r: True)
    att = [r for r in prof.regions if r.name == "attention"]
    for a in att:
        kids = [r for r in co if r.parent == a.index]
        rest = prediction.predict_cpu_seconds(a.counters["bytes"] - sum(k.tags["covers_bytes"] for k in kids),
                                              a.counters["flops"] - sum(k.tags["covers_flops"] for k in kids))
        assert a.counters["bytes"] == sum(k.tags["covers_bytes"] for k in kids)    # q, k, v, o all covered
        assert incl[a.index] == pytest.approx(rest + sum(incl[k.index] for k in kids))


def test_hybrid_uploads_only_its_placement(k4_model):
    """A one-copy placement: the QPU copy holds only the QPU's experts, each expert runs where it lives."""
    from pimoe.backends.qpu import qpu_memory_plan

    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=2, placement="static", dense="off") as mh, \
            load_model(k4_model, backend="cpu") as mc:
        b = mh.backend
        pl = b.placement
        assert (pl.cpu ^ pl.qpu).all() and pl.qpu.any() and pl.cpu.any()
        for i, (gate, up, down) in enumerate(b.qpu.mats):
            assert gate.buf.shape[0] == int(pl.qpu[i].sum())
            assert (gate.slots >= 0).tolist() == pl.qpu[i].tolist()
        full = qpu_memory_plan(mh.file, mh.config, b.experts)
        assert b.qpu.plan.weights == pytest.approx(full.weights * pl.qpu.sum() / pl.qpu.size)
        seen = []
        run = b.qpu.runner.submit_decode

        layer_of = {id(m[0]): i for i, m in enumerate(b.qpu.mats)}

        def watched(gate, up, down, x, ids, w):
            seen.extend((layer_of[id(gate)], int(e)) for e in ids.ravel())
            return run(gate, up, down, x, ids, w)

        b.qpu.runner.submit_decode = watched
        lh = mh.logits(TOKENS)
        dh = [mh.forward([t]) for t in (9, 11)]
        lc = mc.logits(TOKENS)
        dc = [mc.forward([t]) for t in (9, 11)]
        assert seen and all(pl.qpu[layer, e] for layer, e in seen)
        for step in mh.routing_history[1:]:                # decode steps: every routed expert ran somewhere
            for layer, r in enumerate(step):
                ids = r.expert_ids[0]
                assert pl.cpu[layer, ids].sum() + sum(1 for lay_, e in seen if lay_ == layer and e in ids) >= len(ids)
    assert _rel(lh, lc) < 5e-2 and all(_rel(a, c) < 5e-2 for a, c in zip(dh, dc))


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
    # another model's routing frequencies: a clear error naming both shapes, not numpy's reshape error
    with pytest.raises(PimoeError, match="12 counts .* 2 layers x 8 experts"):
        placement.make_placement("frequency", L, E, 100, 130, 0.5, usage=np.ones((3, 4)))


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
    with load_model(k4_model, backend="hybrid", qpu="emu", cpu_experts=2, dense="off") as mh, \
            profile.activate(prof):
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


def test_compare_prints_offload_ratios_and_break_even_overhead(k4_model, tmp_path):
    """pimoe compare's offload figures for the hybrid (and qpu) run: the predicted decode under each DRAM
    scenario (a faster DRAM never makes it slower), and the dispatch overhead at which its predicted decode
    equals the reference's."""
    from pimoe import compare as cmp
    from pimoe import prediction

    res = cmp.compare(k4_model, ("cpu", "qpu", "hybrid"), n_prompt=2, n_gen=2, reps=1, progress=False,
                      backend_opts={"qpu": {"qpu": "emu"}, "hybrid": {"qpu": "emu", "cpu_experts": 2}})
    ref_s = res.reference.scaled.predicted_seconds_per_token
    text = cmp.offload_text(res)
    for run in res.runs[1:]:
        o = run.offload
        assert set(o["by_share"]) == set(dram.SCENARIO_NAMES)
        x = [o["by_share"][n]["x_reference"] for n in dram.SCENARIO_NAMES]
        assert x[0] <= x[1] + 1e-12 <= x[2] + 2e-12
        assert o["dispatches_per_token"] >= mh_layers(res)
        d = o["break_even_dispatch_overhead_s"]
        steps = len(run.tg_s) * run.n_gen
        at = prediction.predict_regions(run.profiler, lambda r: r.name == "tg", steps, dispatch_overhead=d)
        if d > 0:
            assert at["tg"] == pytest.approx(ref_s, rel=1e-6)
        else:
            assert at["tg"] >= ref_s
        assert run.backend in text
    assert "dispatch overhead" in text
    # the record keeps them, and plots.plot_offload draws them (one bar per run and scenario)
    from pimoe import plots

    rec, _ = cmp.to_record(res)
    files = plots.plot_offload(rec, tmp_path)
    svg = next(f for f in files if f.suffix == ".svg").read_text()
    for run in res.runs[1:]:
        for v in run.offload["by_share"].values():
            assert f"{v['x_reference']:.2f}x" in svg


def mh_layers(res) -> int:
    return res.layers_run
