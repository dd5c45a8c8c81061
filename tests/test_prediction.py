"""pimoe.prediction: the Pi 4 prediction of a profile, against the timing models called directly on the
same dispatches, bytes and FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from pimoe import prediction, profile
from pimoe.bench.kernels import expert_layer_predictions
from pimoe.cpumodel import predict_cpu
from pimoe.qpu import open_driver, timing
from pimoe.qpu.timing import predict
from qpu_kernels import summation
from qpu_kernels.expert_ffn import run_check


def test_predicted_regions_use_qpu_counts_for_qpu_subtrees():
    """A region that ran dispatches is predicted from them, not from its weight bytes as CPU work."""
    per = {name: [[0] * 4 for _ in range(8)] for name in
           ("instructions", "tmu_reads", "tmu_read_bytes", "tmu_write_bytes", "sfu_ops", "thread_switches", "tmuwt")}
    for q in range(8):
        per["instructions"][q][0] = 1000
        per["tmu_read_bytes"][q][0] = 1 << 20
    dispatch = {"batches": 8, "threads_per_qpu": 1, "per_thread": per}
    prof = profile.Profiler()
    with profile.activate(prof):
        with profile.region("tg"):
            with profile.region("attention", bytes=3_350_000, flops=10):
                pass
            with profile.region("experts", bytes=8 << 20, flops=10):
                with profile.region("compute"):
                    profile.qpu_dispatch(dispatch, kernel="t")
    pred = prediction.predict_regions(prof, lambda r: r.name == "tg", steps=1)
    q = timing.predict(dispatch).seconds
    c = predict_cpu(3_350_000, 10, threads=4).seconds
    assert pred["tg/experts/compute"] == pytest.approx(q)
    assert pred["tg/experts"] == pytest.approx(q)          # not + 8 MiB / CPU bandwidth
    assert pred["tg/attention"] == pytest.approx(c) == pytest.approx(1e-3, rel=0.05)
    assert pred["tg"] == pytest.approx(q + c)


@pytest.mark.parametrize("qtype_name", ["Q8_0", "Q4_K"])
def test_compare_and_kernel_benchmark_predict_the_same_dispatches_alike(qtype_name):
    """The same expert-layer dispatches (same emulator counts) get the same Pi 4 time from `pimoe compare`
    (profiler hook -> predict_regions) as from the kernel benchmark (pimoe.bench.kernels), which tells
    the timing model to charge the kernels' ldtmu waits (waits="ldtmu"). Without it compare would
    under-charge them."""
    qtype, hidden, ff = QT[qtype_name], 512, 256
    prof = profile.Profiler()
    with profile.activate(prof), open_driver("emu", data_area_size=64 << 20) as drv:
        with profile.region("tg"):
            err, counters, _ = run_check(drv, qtype, hidden=hidden, ff=ff, n_experts=2, k=2, tokens=1,
                                         region=profile.region, on_dispatch=profile.qpu_dispatch,
                                         one_dispatch=False)   # the two phases as two dispatches
    assert err < 1e-5 and len(counters) == 2
    bench = expert_layer_predictions(counters)
    dispatches = [d for r in prof.regions for d in (r.dispatches or ())]
    assert [d["kernel"] for d in dispatches] == ["swiglu", "down_sum"]
    for d, c, b in zip(dispatches, counters, bench):
        assert d["per_thread"]["instructions"] == np.asarray(c.per_thread["instructions"]).tolist()
        assert prediction.predict_qpu_seconds(d) == pytest.approx(b.seconds, rel=1e-9)
    pred = prediction.predict_regions(prof, lambda r: r.name == "tg", steps=1)
    assert pred["tg"] == pytest.approx(sum(b.seconds for b in bench), rel=1e-9)
    # the agreement is not vacuous: without waits="ldtmu" these counts predict a shorter latency chain (the
    # descriptor loads are read right after they are issued; Q8_0 is memory-bound, so compare that term)
    assert sum(predict(c).breakdown["latency"] for c in counters) < \
        sum(b.breakdown["latency"] for b in bench) * (1 - 1e-3)


def test_qpu_dispatch_counts_feed_the_timing_model():
    length = 16 * summation.DEPTH * 8 * 8
    prof = profile.Profiler()
    with open_driver("emu", data_area_size=length * 4 + (1 << 16)) as drv:
        with profile.activate(prof):
            with profile.region("compute"):
                counters, _ = summation.run(drv, length=length, threads=8)
                profile.qpu_dispatch(counters, kernel="summation")
    r = prof.regions[0]
    assert r.counters["qpu.tmu_read_bytes"] == length * 4 == counters.tmu_read_bytes
    assert r.counters["qpu.instructions"] == counters.total_instructions
    assert r.counters["qpu_dispatches"] == 1
    stored = r.dispatches[0]
    assert prediction.predict_qpu_seconds(stored) == pytest.approx(timing.predict(counters).seconds)
