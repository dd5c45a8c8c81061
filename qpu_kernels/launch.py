"""The launch / time / check tail every kernel's host runner shares: one dispatch of `threads` 16-lane
batches with a uniform stream, timed on the host, and the comparison of a result with its numpy
reference that names the first wrong element.
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
