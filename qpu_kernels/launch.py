"""The launch / time / check tail every kernel's host runner shares: one dispatch of `threads` 16-lane
batches with a uniform stream (or a per-thread parameter table), timed on the host; the comparison of a
result with its numpy reference that names the first wrong element; and a kernel file's `python -m`
self-check over several configurations.
"""

from __future__ import annotations

import time

import numpy as np

from pimoe.errors import PimoeError

TIMEOUT_SEC = 600     # the emulator runs big dispatches for minutes


def uniforms_address(unif) -> int:
    """The bus address of a uniform stream given as an address or as a driver array."""
    if isinstance(unif, (int, np.integer)):
        return int(unif)
    return int(np.asarray(unif.addresses()).reshape(-1)[0])


def launch(drv, code, unif, threads: int, **kwargs):
    """Run `code` on `threads` batches of 16 lanes with uniforms `unif` (an address or a driver array).
    Returns (the driver's counters -- EmuCounters, None on hardware --, host seconds)."""
    # more than 2 threads per QPU need the dispatch's CFG5 THREADING bit, as on the hardware (emu lane)
    kwargs.setdefault("threading", threads > 16)
    t0 = time.perf_counter()
    counters = drv.execute(code, local_invocation=(16, 1, 1), uniforms=uniforms_address(unif), thread=threads,
                           timeout_sec=TIMEOUT_SEC, **kwargs)
    return counters, time.perf_counter() - t0


def submit(drv, code, unif, threads: int, **kwargs):
    """launch() without waiting: the driver's Job (drv.submit); Job.wait() gives the counters (EmuCounters,
    None on hardware). The host runs meanwhile (the emulator releases the GIL; the GPU runs on its own)."""
    kwargs.setdefault("threading", threads > 16)
    return drv.submit(code, local_invocation=(16, 1, 1), uniforms=uniforms_address(unif), thread=threads,
                      timeout_sec=TIMEOUT_SEC, **kwargs)


def param_table(drv, rows: int):
    """A zeroed per-thread parameter table: `rows` rows of 16 uint32 words (one 64-byte load per thread)."""
    table = drv.alloc((rows, 16), dtype=np.uint32)
    table[:] = 0
    return table


def launch_with_table(drv, code, table, threads: int, **kwargs):
    """launch() for a kernel whose two uniforms are a parameter table's address and its row bytes (each
    thread reads its own row). Returns (counters, host seconds)."""
    unif = drv.alloc(2, dtype=np.uint32)
    unif[:] = [table.addresses()[0, 0], table.strides[0]]
    return launch(drv, code, unif, threads, **kwargs)


def counts_text(counters, seconds: float) -> str:
    """A dispatch's emulator counts as a self-check prints them."""
    return (f"{counters.total_instructions} instructions, {counters.tmu_read_bytes} bytes read, "
            f"{counters.tmu_write_bytes} written, {seconds:.3f} s emulated")


def self_check(runs) -> int:
    """A kernel file's `python -m` self-check. runs: (label, data-area bytes, run) for each configuration;
    run(drv) launches on a fresh emulator of that size, raises when the result differs from numpy, and
    returns (counters, seconds). Prints one line per configuration; returns 0 (the exit status)."""
    from pimoe.qpu import open_driver   # the emulator loads numba: only when a self-check runs

    for label, data_bytes, run in runs:
        with open_driver("emu", data_area_size=data_bytes) as drv:
            counters, seconds = run(drv)
        print(f"{label}: equal to numpy; {counts_text(counters, seconds)}")
    return 0


def check_equal(got, want, what: str) -> None:
    """Raise a PimoeError naming the first element where `got` differs from the reference `want`."""
    got, want = np.asarray(got), np.asarray(want)
    if not np.array_equal(got, want):
        bad = int(np.nonzero(got.reshape(-1) != want.reshape(-1))[0][0])
        raise PimoeError(f"{what}: element {bad} is {got.reshape(-1)[bad].item()!r}, numpy says {want.reshape(-1)[bad].item()!r}")


def wrapped_sum(x) -> int:
    """The sum of uint32 values modulo 2^32 (what a QPU's 32-bit integer adds compute)."""
    return int(np.sum(np.asarray(x), dtype=np.uint64) % (1 << 32))


def check_sum(partials, x, what: str) -> None:
    """The QPU's per-lane partial sums of x must add up (mod 2^32) to numpy's sum of x."""
    got, want = wrapped_sum(partials), wrapped_sum(x)
    if got != want:
        raise PimoeError(f"{what}: QPU sum {got} != numpy {want}")
