"""The QPU timing model's own logic (pimoe.qpu.timing): each test would fail if a term were wrong."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe.errors import PimoeError
from pimoe.qpu import timing
from pimoe.qpu.timing import PI4, QPUTimingParams, predict

ZERO_NAMES = ("instructions", "tmu_reads", "tmu_read_bytes", "tmu_writes", "tmu_write_bytes", "sfu_ops",
              "thread_switches", "uniforms_read", "tmuwt", "branches_taken", "barriers", "ldtmu")


def counters(threads_per_qpu=1, **per_slot):
    """Counters in predict()'s dict form: each keyword gives one value for every used thread slot
    (8 QPUs x threads_per_qpu), or a full [8, 4] array."""
    used = np.zeros((8, 4))
    used[:, :threads_per_qpu] = 1
    per = {}
    for name in ZERO_NAMES:
        v = per_slot.get(name, 0)
        per[name] = (np.asarray(v, dtype=np.float64) if np.ndim(v) == 2 else used * v)
    per["thread_switches"] = per["thread_switches"] + used * PI4.end_thread_switches  # the program end
    return {"batches": 8 * threads_per_qpu, "threads_per_qpu": threads_per_qpu, "per_thread": per}


def body(p):
    return p.seconds - p.breakdown["dispatch_overhead"]


def test_prediction_is_labelled_predicted():
    p = predict(counters(instructions=1000))
    assert "predicted" in p.label and "predicted" in p.as_dict()["label"]
    assert p.as_dict()["predicted_seconds"] == p.seconds


def test_issue_bound_time_is_4_cycles_per_instruction_per_qpu_at_500mhz():
    p = predict(counters(instructions=1_000_000))
    assert p.bound == "issue"
    assert body(p) == pytest.approx(1_000_000 * 4 / 500e6)
    # doubling the instructions doubles the time; the busiest QPU sets it
    assert body(predict(counters(instructions=2_000_000))) == pytest.approx(2 * body(p))
    uneven = np.zeros((8, 4))
    uneven[:, 0] = 1000
    uneven[3, 0] = 5000
    assert body(predict(counters(instructions=uneven))) == pytest.approx(5000 * 4 / 500e6)


def test_threads_of_a_qpu_share_its_issue_slot():
    one = predict(counters(threads_per_qpu=1, instructions=4000))
    four = predict(counters(threads_per_qpu=4, instructions=4000))   # 4x the work, same QPUs
    assert body(four) == pytest.approx(4 * body(one))


def test_clock_scales_issue_bound_time():
    c = counters(instructions=100_000)
    assert body(predict(c, clock_hz=250e6)) == pytest.approx(2 * body(predict(c)))


def test_memory_bound_time_doubles_with_bytes():
    c1 = counters(instructions=1000, tmu_reads=1000, tmu_read_bytes=64_000_000)
    c2 = counters(instructions=1000, tmu_reads=1000, tmu_read_bytes=128_000_000)
    p1, p2 = predict(c1), predict(c2)
    assert p1.bound == p2.bound == "memory"
    assert body(p2) == pytest.approx(2 * body(p1))
    assert body(p1) == pytest.approx(8 * 64e6 / PI4.read_bandwidth)


def test_reads_and_writes_share_the_dram_interface():
    r = predict(counters(tmu_read_bytes=10_000_000))
    w = predict(counters(tmu_write_bytes=10_000_000))
    rw = predict(counters(tmu_read_bytes=10_000_000, tmu_write_bytes=10_000_000))
    assert body(rw) == pytest.approx(body(r) + body(w))
    assert body(w) > body(r)          # the published write ceiling is lower than the read one


def test_more_threads_hide_latency_up_to_the_issue_ceiling():
    # the same QPU work (40000 instructions, 2000 waits) split over 1, 2, 4 threads
    t = {}
    for n in (1, 2, 4):
        t[n] = predict(counters(threads_per_qpu=n, instructions=40000 // n, thread_switches=2000 // n))
    lat = PI4.wait_latency_cycles
    assert t[1].bound == "latency"
    assert body(t[1]) == pytest.approx((4 * 40000 + 2000 * lat) / 500e6)
    assert body(t[1]) > body(t[2]) > body(t[4])
    assert body(t[2]) == pytest.approx((4 * 20000 + 1000 * lat) / 500e6)
    # 4 threads: each thread's issue + waits (40000 + 500 L cycles) < the QPU's issue (160000): hidden
    assert t[4].bound == "issue"
    assert body(t[4]) == pytest.approx(4 * 40000 / 500e6)


def test_waits_cost_the_fitted_latency_and_tmuwt_counts_as_a_wait():
    base = predict(counters(instructions=100))
    sw = predict(counters(instructions=100, thread_switches=1000))
    wt = predict(counters(instructions=100, tmuwt=1000))
    assert body(sw) - body(base) == pytest.approx(1000 * PI4.wait_latency_cycles / 500e6)
    assert body(wt) == pytest.approx(body(sw))
    slow = QPUTimingParams(wait_latency_cycles=2 * PI4.wait_latency_cycles)
    assert body(predict(counters(thread_switches=1000), params=slow)) == pytest.approx(
        2 * body(predict(counters(thread_switches=1000))))


def test_tmu_queue_limits_loads_in_flight_without_waits():
    # 1e5 loads per QPU, no waits, tiny bytes: at most 8 in flight per round trip
    c = counters(instructions=1000, tmu_reads=100_000, tmu_read_bytes=64)
    p = predict(c)
    assert p.bound == "latency"
    assert body(p) == pytest.approx(100_000 * PI4.wait_latency_cycles / 8 / 500e6)
    deeper = QPUTimingParams(tmu_queue_depth=16)
    assert body(predict(c, params=deeper)) == pytest.approx(body(p) / 2)


def test_tmu_queue_holds_results_so_vec4_lookups_fill_it_four_times_faster():
    # the 8-deep queue holds load RESULTS: a vec4 lookup returns 4 (4 ldtmu), a 32-bit one 1
    plain = counters(instructions=1000, tmu_reads=100_000, ldtmu=100_000, tmu_read_bytes=64)
    vec4 = counters(instructions=1000, tmu_reads=25_000, ldtmu=100_000, tmu_read_bytes=64)
    assert body(predict(vec4)) == pytest.approx(body(predict(plain)))
    assert body(predict(vec4)) == pytest.approx(100_000 * PI4.wait_latency_cycles / 8 / 500e6)
    # counters without an ldtmu count (older records): the lookups
    older = counters(instructions=1000, tmu_reads=25_000, tmu_read_bytes=64)
    assert body(predict(older)) == pytest.approx(body(predict(vec4)) / 4)


def test_latency_does_not_matter_when_memory_bound():
    c = counters(instructions=1000, tmu_reads=1000, tmu_read_bytes=64_000_000)
    slow = QPUTimingParams(wait_latency_cycles=2 * PI4.wait_latency_cycles)
    assert predict(c, params=slow).seconds == pytest.approx(predict(c).seconds)


def test_sfu_is_shared_per_slice():
    one_slice = np.zeros((8, 4))
    one_slice[:4, 0] = 10_000            # QPUs 0-3: slice 0
    spread = np.zeros((8, 4))
    spread[:, 0] = 5_000
    a = predict(counters(sfu_ops=one_slice))
    b = predict(counters(sfu_ops=spread))
    assert a.bound == "sfu"
    assert body(a) == pytest.approx(40_000 * PI4.sfu_cycles_per_op / 500e6)
    assert body(b) == pytest.approx(body(a) / 2)


def test_dispatch_overhead_per_execute():
    empty = predict(counters())
    assert empty.bound == "dispatch" and empty.seconds == pytest.approx(PI4.dispatch_overhead_s)
    assert predict(counters(), dispatches=3).seconds == pytest.approx(3 * PI4.dispatch_overhead_s)


def test_totals_only_dict_is_spread_evenly():
    per = counters(instructions=1000, tmu_read_bytes=1_000_000)
    totals = {k: float(np.sum(v)) for k, v in per["per_thread"].items()}
    totals.update(batches=8, threads_per_qpu=1)
    assert predict(totals).seconds == pytest.approx(predict(per).seconds)


def test_bad_counters_raise_pimoe_error():
    with pytest.raises(PimoeError, match="needs EmuCounters"):
        predict(42)
    c = counters(instructions=10)
    del c["per_thread"]["tmuwt"]
    with pytest.raises(PimoeError, match="tmuwt"):
        predict(c)
    c = counters(instructions=10)
    c["per_thread"]["instructions"] = -c["per_thread"]["instructions"]
    with pytest.raises(PimoeError, match="negative"):
        predict(c)
    with pytest.raises(PimoeError, match="positive"):
        predict(counters(instructions=10), params=QPUTimingParams(read_bandwidth=0))


def test_emulated_program_end_is_not_a_wait():
    """A real empty dispatch: its program-end thread switches must not be charged as memory waits."""
    from pimoe.qpu import EmuDriver, qpu
    from qpu_kernels.emit import emit_program_end

    @qpu
    def empty(asm):
        emit_program_end(asm)

    with EmuDriver(data_area_size=1 << 16) as drv:
        c = drv.execute(drv.program(empty), thread=8)
    assert c.thread_switches > 0
    p = predict(c)
    assert p.breakdown["latency"] == pytest.approx(p.breakdown["issue"])
    assert np.all(timing.thread_waits(c.per_thread, c.batches) == 0)


def test_emulated_memcpy_more_threads_hide_its_waits():
    """E's memcpy waits (thrsw) after every 4 loads: on 2 and 4 threads per QPU the waits overlap, so the
    latency term of the same copy falls toward the issue ceiling; the DRAM term stays, and wins."""
    from pimoe.qpu import EmuDriver
    from qpu_kernels import memcpy

    nbytes = 256 * 32 * 64
    t = {}
    for threads in (8, 16, 32):
        with EmuDriver(data_area_size=2 * nbytes + (1 << 16)) as drv:
            c, _ = memcpy.run(drv, nbytes=nbytes, threads=threads)
        t[threads] = (predict(c), c.uniforms_read)
    lat = {n: p.breakdown["latency"] for n, (p, _) in t.items()}
    assert lat[8] > 1.5 * lat[16] and lat[16] > 1.2 * lat[32] >= t[32][0].breakdown["issue"]
    for p, uniforms in t.values():
        floor = (nbytes + 4 * uniforms) / PI4.read_bandwidth + nbytes / PI4.write_bandwidth
        assert p.bound == "memory"
        assert p.seconds == pytest.approx(floor + PI4.dispatch_overhead_s)


def test_declared_loads_in_flight_replace_thread_switches():
    """A kernel that loads and immediately waits (no thrsw) pays a round trip per load once declared."""
    c = counters(instructions=1000, tmu_reads=10_000, tmu_read_bytes=64_000)
    lat = PI4.wait_latency_cycles
    default = predict(c)                                  # no thrsw: only the 8-deep queue limits it
    assert body(default) == pytest.approx(10_000 * lat / 8 / 500e6)
    one = predict(c, loads_in_flight=1)
    assert body(one) == pytest.approx((4 * 1000 + 10_000 * lat) / 500e6)
    four = predict(c, loads_in_flight=4)
    assert body(one) > body(four) > body(default)
    with pytest.raises(PimoeError, match="loads_in_flight"):
        predict(c, loads_in_flight=0)


def test_dram_read_bytes_override_the_counted_reads():
    c = counters(tmu_reads=10, tmu_read_bytes=8_000_000)    # 64 MB counted, e.g. a vector all QPUs re-read
    full = predict(c)
    cached = predict(c, dram_read_bytes=8_000_000)
    assert full.bound == cached.bound == "memory"
    assert body(cached) == pytest.approx(body(full) / 8)


def test_uniforms_are_memory_reads():
    """A kernel streaming its data through ldunifa pays for it like TMU reads (4 bytes per uniform)."""
    tmu = predict(counters(tmu_read_bytes=4_000_000))
    unif = predict(counters(uniforms_read=1_000_000))
    assert unif.bound == "memory" and body(unif) == pytest.approx(body(tmu))
    c = counters(tmu_read_bytes=4_000_000)
    del c["per_thread"]["uniforms_read"]                    # optional: older callers' dicts lack it
    assert predict(c).seconds == pytest.approx(tmu.seconds)


def _with_near(c, **bins):
    """Add ldtmu_near* distance bins (width 4, 16 of them) to counters(); bins: {lower edge: per slot}."""
    used = (np.asarray(c["per_thread"]["instructions"]) > 0).astype(np.float64)
    for lo in range(0, 64, 4):
        c["per_thread"][f"ldtmu_near{lo:02d}"] = used * bins.get(f"d{lo}", 0)
    return c


def test_measured_waits_charge_only_loads_used_within_a_round_trip():
    """waits='ldtmu': an ldtmu 0-3 instructions after its load stalls the whole round trip L, one 40-43
    after it L - 160 cycles, one 64 or more after it (nothing binned) nothing; the thrsw default ignores
    all of them."""
    lat, n = PI4.wait_latency_cycles, 10_000
    base = dict(instructions=1000, tmu_reads=n, tmu_read_bytes=4 * n, ldtmu=n)
    soon = predict(_with_near(counters(**base), d0=n), waits="ldtmu")
    assert body(soon) == pytest.approx((4 * 1000 + n * lat) / 500e6)
    # enough instructions that issue + stalls, not the 8-deep queue floor (n L / 8), sets the time
    mid_c = dict(base, instructions=100_000)
    mid = predict(_with_near(counters(**mid_c), d40=n), waits="ldtmu")
    assert 4 * 100_000 + n * (lat - 160) > n * lat / 8
    assert body(mid) == pytest.approx((4 * 100_000 + n * (lat - 160)) / 500e6)
    assert body(predict(_with_near(counters(**mid_c), d60=n), waits="ldtmu")) == pytest.approx(4 * 100_000 / 500e6)
    far = _with_near(counters(**base))
    assert predict(far, waits="ldtmu").seconds == pytest.approx(predict(far).seconds)
    assert predict(_with_near(counters(**base), d0=n)).seconds == pytest.approx(predict(far).seconds)
    with pytest.raises(PimoeError, match="not both"):
        predict(far, waits="ldtmu", loads_in_flight=4)
    with pytest.raises(PimoeError, match="distance bins"):
        predict(counters(**base), waits="ldtmu")                 # recorded without the bins
    with pytest.raises(PimoeError, match="reach"):
        predict(far, waits="ldtmu", params=QPUTimingParams(wait_latency_cycles=300.0))
    with pytest.raises(PimoeError, match="waits="):
        predict(far, waits="sometimes")


def test_measured_waits_on_an_emulated_kernel_bound_its_time():
    """On a real emulated kernel that reads each result right after its load, waits='ldtmu' charges a
    round trip per load (its ldtmu are all in the first bin); thread switches alone charge nothing."""
    from tests.test_qpu_emu import _plan_bins, load_then_use

    bins, c = _plan_bins(load_then_use([0] * 64))
    assert bins == {"00": 64}
    measured, default = predict(c, waits="ldtmu"), predict(c)
    issue = 4 * c.total_instructions
    assert measured.breakdown["latency"] == pytest.approx((issue + 64 * PI4.wait_latency_cycles) / 500e6)
    # the default sees no waits: only the 8-deep TMU queue floor (64 loads x L / 8) or the issue time
    assert default.breakdown["latency"] == pytest.approx(max(issue, 8 * PI4.wait_latency_cycles) / 500e6)


def test_measured_ldtmu_stalls_hold_the_whole_qpu():
    """A thread stalled in ldtmu (no thrsw) keeps its QPU: with 2 or 4 threads per QPU each thread's
    stalls add to the QPU's time, unlike thrsw waits, which the other threads fill."""
    lat, n = PI4.wait_latency_cycles, 1000
    for t in (1, 2, 4):
        c = _with_near(counters(threads_per_qpu=t, instructions=10_000, tmu_reads=n, tmu_read_bytes=4 * n,
                                ldtmu=n), d0=n)
        assert body(predict(c, waits="ldtmu")) == pytest.approx(t * (4 * 10_000 + n * lat) / 500e6), t
    # thrsw waits instead (1000 switches per thread, each a round trip): 4 threads hide each other's
    c = counters(threads_per_qpu=4, instructions=10_000, thread_switches=n, tmu_reads=n, tmu_read_bytes=4 * n)
    assert body(predict(c)) == pytest.approx(max(4 * 4 * 10_000, 4 * 10_000 + n * lat) / 500e6)


def test_bad_distance_bins_raise_pimoe_error_only_when_used():
    c = _with_near(counters(instructions=1000))
    c["per_thread"]["ldtmu_nearXX"] = c["per_thread"]["ldtmu_near00"]
    predict(c)                                                   # the default never reads the bins
    with pytest.raises(PimoeError, match="ldtmu_nearXX"):
        predict(c, waits="ldtmu")
    c = _with_near(counters(instructions=1000))
    c["per_thread"]["ldtmu_near04"] = -c["per_thread"]["instructions"]
    with pytest.raises(PimoeError, match="negative"):
        predict(c, waits="ldtmu")
