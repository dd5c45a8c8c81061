"""The emulator's count of thread switches taken with TMU load results outstanding (EmuCounters
thread_switches_with_loads, emu_core.C_THRSW_LOADS), from the documented thrsw semantics: a thrsw takes
effect after its 2 delay-slot instructions (a thrsw in the last delay slot of another starts the next switch
as soon as that one is done); what the thread has issued and not yet read with ldtmu by then -- including
lookups issued, and results read, in the delay slots -- is outstanding. Pending stores, prefetches and the
program-end switch do not count. The timing model charges one round trip per counted switch."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe.qpu import EmuDriver, qpu
from pimoe.qpu.timing import PI4, SWITCH_WAITS, predict, thread_waits
from tests.qpu_run import emit_program_end, lane_addresses


@qpu
def k_plan(asm, *, plan):
    """One instruction per step: "ld" a 32-bit lookup, "use" an ldtmu, "nop", "thrsw" a thread switch,
    "thrsw_ld" a lookup carrying the thrsw signal, "st" a store's address write (its data written just
    before), "wt" tmuwt."""
    lane_addresses(asm, rf0, rf1)    # rf0: a source row, rf1: a destination row
    for op in plan:
        if op == "ld":
            mov(tmua, rf0)
        elif op == "thrsw_ld":
            mov(tmua, rf0, sig=thrsw)
        elif op == "use":
            nop(sig=ldtmu(r1))
        elif op == "thrsw":
            nop(sig=thrsw)
        elif op == "st":
            mov(tmud, rf0)
            mov(tmua, rf1)
        elif op == "wt":
            tmuwt()
        else:
            nop()
    emit_program_end(asm)


def run_plan(plan, threads_per_qpu=1):
    """(thread_switches_with_loads of each used thread slot, the EmuCounters), 8 QPUs x threads_per_qpu."""
    with EmuDriver(data_area_size=1 << 16, check_allocations=True) as drv:
        code = drv.program(k_plan, plan=plan)
        src = drv.alloc(16, dtype=np.uint32)
        dst = drv.alloc(16, dtype=np.uint32)
        src[:] = np.arange(16)
        unif = drv.alloc(2, dtype=np.uint32)
        unif[:] = [src.addresses()[0], dst.addresses()[0]]
        c = drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0],
                        thread=8 * threads_per_qpu, threads_per_qpu=threads_per_qpu)
    per = np.asarray(c.per_thread[SWITCH_WAITS])
    used = per[:, :threads_per_qpu]
    assert np.all(per[:, threads_per_qpu:] == 0)
    return used, c


PLANS = [
    # (what, plan, switches taken with results outstanding per batch)
    ("load in flight through the switch", ["ld", "thrsw", "nop", "nop", "use"], 1),
    ("its result taken in the first delay slot", ["ld", "thrsw", "use", "nop"], 0),
    ("its result taken in the second delay slot", ["ld", "thrsw", "nop", "use"], 0),
    ("load issued in a delay slot", ["thrsw", "nop", "ld", "use"], 1),
    ("two loads, one taken in the delay slots", ["ld", "ld", "thrsw", "use", "nop", "use"], 1),
    # py-videocore6's 1024^3 sgemm k step: A + thrsw, 2 slots, B + thrsw, A read in its slots, B still out
    ("sgemm k step", ["thrsw_ld", "nop", "nop", "thrsw_ld", "use", "nop", "use"], 2),
    # its 2019 naive sgemm: B's thrsw in A's last delay slot (a chained switch); both results read in the
    # chained switch's delay slots, so only the first switch has anything outstanding
    ("naive sgemm k step", ["thrsw_ld", "nop", "thrsw_ld", "use", "use"], 1),
    ("stores pending, no loads", ["st", "thrsw", "nop", "nop", "wt"], 0),
    ("nothing issued", ["thrsw", "nop", "nop"], 0),
    ("every result taken before the thrsw", ["ld", "ld", "use", "use", "thrsw", "nop", "nop"], 0),
]


@pytest.mark.parametrize("threads_per_qpu", [1, 2, 4])
@pytest.mark.parametrize("what, plan, want", PLANS, ids=[p[0] for p in PLANS])
def test_switches_with_loads_outstanding(what, plan, want, threads_per_qpu):
    used, c = run_plan(plan, threads_per_qpu)
    assert np.all(used == want), (what, used.tolist())
    # every thrsw is still a thread switch (+ the program end's 2 per batch); only some wait
    assert c.thread_switches == (plan.count("thrsw") + plan.count("thrsw_ld") + 2) * c.batches
    assert c.total(SWITCH_WAITS) == want * c.batches


def test_the_timing_model_charges_the_counted_switches_not_every_thrsw():
    """A thrsw with nothing outstanding costs no round trip; one with a load in flight costs one."""
    idle, ci = run_plan(["ld", "use", "thrsw", "nop", "nop"] * 4)
    busy, cb = run_plan(["ld", "thrsw", "nop", "nop", "use"] * 4)
    assert np.all(idle == 0) and np.all(busy == 4)
    assert np.all(thread_waits(ci.per_thread, ci.batches) == 0)
    assert np.all(thread_waits(cb.per_thread, cb.batches)[:, 0] == 4)
    pi, pb = predict(ci), predict(cb)
    lat = PI4.wait_latency_cycles / PI4.clock_hz
    assert pi.breakdown["latency"] == pytest.approx(pi.breakdown["issue"])   # same instructions, no wait
    assert pb.breakdown["latency"] == pytest.approx(pb.breakdown["issue"] + 4 * lat)
    # the same counters without the new field (as an older emulator recorded them): the old rule, labelled
    old = {"batches": ci.batches, "per_thread": {k: v for k, v in ci.per_thread.items() if k != SWITCH_WAITS}}
    po = predict(old)
    assert po.breakdown["latency"] == pytest.approx(pb.breakdown["latency"]) and "older emulator" in po.label
    assert "older emulator" not in pi.label and "predicted" in pi.label
