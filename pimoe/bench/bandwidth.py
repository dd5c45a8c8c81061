"""Memory bandwidth microbenchmarks: CPU read/copy/triad over sizes and thread counts, the QPU streaming
kernels (hardware, or predicted for a Pi 4 from the emulator's counts), and CPU + QPU at once.

CPU kernels (numba, compiled once, cached):
  read   s += a[i]                      bytes = 4n   (cpubench's parallel byte-sum kernel, shared with
                                                      `pimoe bench cpu` so both report the same ceiling)
  copy   b[i] = a[i]                    bytes = 8n   (STREAM convention: read + write, no write-allocate)
  triad  a[i] = b[i] + s * c[i]         bytes = 12n  (STREAM convention)
Each array is viewed as rows of 64 KiB and the rows are split over threads with numba `prange`
(numba.set_num_threads(t) before each run), so t threads each stream a contiguous share. Why this
measures bandwidth and not something else: every kernel is a compiled loop that touches each byte once,
in order, with no Python in the loop and nothing but an add (or multiply-add) per element, which the
compiler vectorizes (read: integer lanes; copy/triad: f32 SIMD); the reduction result is stored so the
loop cannot be removed. Sizes beyond the last-level cache measure DRAM; small sizes measure caches
(reported too, they are what a tile-reusing kernel sees). Each point is timed over enough repeats to
take >= ~20 ms, and the figure reported is the median of `reps` such timings (the best is kept too:
STREAM reports the best).

QPU kernels (qpu_kernels/summation.py read, memcpy.py copy, memset.py write): on a Pi 4 with
py-videocore6 they run on the GPU and the wall time is measured; elsewhere they run in pimoe's emulator
(checked against numpy) and the Pi 4 time is predicted from the emulator's counts by
pimoe.qpu.timing: those rows are labelled `predicted`.

CPU + QPU at once: on hardware both run concurrently (a CPU read in a thread while the QPU sums) and
each side's GB/s is measured. Here there is no QPU, so the contention is not measurable; the record
carries only the Pi 4 bound `combined <= min(CPU STREAM copy (published) + QPU summation (predicted),
DRAM peak)`, labelled as a bound (the published figures: pimoe.pi4).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from pimoe import pi4, prediction
from pimoe.errors import PimoeError

ROW_BYTES = 1 << 16          # each array is [rows, 64 KiB] (one row if smaller); prange splits rows over threads
DEFAULT_SIZES = (1 << 15, 1 << 18, 1 << 21, 1 << 24, 1 << 27)     # bytes per array: 32 KiB .. 128 MiB
SMALL_SIZES = (1 << 16, 1 << 20, 1 << 22)
MIN_TIME_S = 0.02
_kernels = None


def _cpu_kernels():
    """(read, copy, triad) numba kernels over [rows, cols] arrays."""
    global _kernels
    if _kernels is None:
        from numba import njit, prange

        from pimoe.bench.cpu import _numba_read_kernel

        @njit(cache=True, parallel=True)
        def copy(a, b):        # a, b f32 [rows, cols]: b = a
            for r in prange(a.shape[0]):
                src, dst = a[r], b[r]
                for k in range(src.shape[0]):
                    dst[k] = src[k]

        @njit(cache=True, parallel=True)
        def triad(a, b, c, s):  # a = b + s * c
            for r in prange(a.shape[0]):
                x, y, z = a[r], b[r], c[r]
                for k in range(x.shape[0]):
                    x[k] = y[k] + s * z[k]

        _kernels = (_numba_read_kernel(), copy, triad)
    return _kernels


def _time_kernel(fn, reps: int) -> tuple[float, float]:
    """(median, best) seconds of one fn() call, each timing over enough inner calls to last MIN_TIME_S."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(MIN_TIME_S / one))
    per = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        per.append((time.perf_counter() - t0) / inner)
    return float(np.median(per)), float(min(per))


def cpu_bandwidth(sizes=DEFAULT_SIZES, threads=None, kernels=("read", "copy", "triad"), reps: int = 5,
                  progress: bool = True) -> list[dict]:
    """Rows {device: cpu, kernel, threads, bytes (per array), bytes_moved, seconds, GBps, GBps_best}."""
    import numba

    max_t = numba.config.NUMBA_NUM_THREADS
    threads = list(threads) if threads else list(range(1, max_t + 1))
    if any(t < 1 or t > max_t for t in threads):
        raise PimoeError(f"threads {threads}: numba can use 1..{max_t} threads here")
    for s in sizes:
        if s < 4096 or s % min(ROW_BYTES, s) or s % 4096:
            raise PimoeError(f"size {s}: CPU bandwidth sizes must be multiples of 4 KiB, and of {ROW_BYTES} "
                             f"bytes above that")
    read, copy, triad = _cpu_kernels()
    bad = set(kernels) - {"read", "copy", "triad"}
    if bad:
        raise PimoeError(f"unknown CPU bandwidth kernel(s) {sorted(bad)} (read, copy, triad)")
    rows = []
    jobs = [(s, t, k) for s in sizes for t in threads for k in kernels]
    bar = _bar(len(jobs), "cpu bandwidth", progress)
    arrays: dict = {}
    try:
        for size, t, k in jobs:
            if size not in arrays:
                arrays.clear()
                row = min(ROW_BYTES, size)
                n_rows = size // row
                a = np.ones((n_rows, row // 4), np.float32)
                arrays[size] = (a, np.zeros_like(a), np.full_like(a, 2.0), np.zeros(n_rows, np.int32))
            a, b, c, sums = arrays[size]
            numba.set_num_threads(t)
            if k == "read":
                a8 = a.view(np.uint8)
                med, best = _time_kernel(lambda: read(a8, sums), reps)
                moved = size
            elif k == "copy":
                med, best = _time_kernel(lambda: copy(a, b), reps)
                moved = 2 * size
            else:
                med, best = _time_kernel(lambda: triad(b, a, c, np.float32(0.5)), reps)
                moved = 3 * size
            rows.append({"device": "cpu", "kernel": k, "threads": t, "bytes": size, "bytes_moved": moved,
                         "seconds": med, "GBps": moved / med / 1e9, "GBps_best": moved / best / 1e9,
                         "source": "measured"})
            bar.update(1)
    finally:
        bar.close()
        numba.set_num_threads(max_t)
    return rows


# -- QPU ---------------------------------------------------------------------------------------------------

QPU_KERNELS = ("summation", "memcpy", "memset")
QPU_DEFAULT_SIZES = (1 << 16, 1 << 20, 1 << 24)
# 16-lane threads of a dispatch: 8 = one per QPU, 32 = four per QPU (hides TMU latency); memset's launcher
# always uses 8
QPU_THREADS = (8, 32)


def _qpu_kernel_run(name: str):
    """The kernel module's run(drv, bytes, threads) as a uniform callable, or None if the file is absent."""
    import importlib

    try:
        mod = importlib.import_module(f"qpu_kernels.{name}")
    except ImportError:
        return None
    if name == "summation":
        return lambda drv, nbytes, threads: mod.run(drv, length=nbytes // 4, threads=threads)
    if name == "memcpy":
        return lambda drv, nbytes, threads: mod.run(drv, nbytes=nbytes, threads=threads)
    run = getattr(mod, "run", None)
    if run is None:
        return None
    return lambda drv, nbytes, threads: run(drv, nbytes=nbytes)     # memset: always 8 QPUs


def _qpu_bytes_moved(name: str, nbytes: int) -> int:
    return 2 * nbytes if name == "memcpy" else nbytes


def qpu_bandwidth(sizes=QPU_DEFAULT_SIZES, kernels=QPU_KERNELS, threads=QPU_THREADS, driver: str = "auto",
                  progress: bool = True) -> list[dict]:
    """Rows {device: qpu, kernel, threads, bytes, bytes_moved, seconds, GBps, source: measured|predicted,
    counters, route: hw|virtual|emu}. On the emulator, directly (emu) or behind the virtual V3D device
    (virtual: the hardware route's ioctls, BOs and jobs), `seconds` is the predicted Pi 4 time
    (pimoe.qpu.timing)."""
    from pimoe.qpu.driver import hardware_available, open_driver

    hw = driver == "hw" or (driver == "auto" and hardware_available()[0])
    route = "hw" if hw else ("virtual" if driver == "virtual" else "emu")
    rows = []
    threads = (threads,) if isinstance(threads, int) else tuple(threads)
    jobs = [(k, s, t) for k in kernels for t in (threads if k != "memset" else (8,)) for s in sizes]
    bar = _bar(len(jobs), "qpu bandwidth" + {"hw": "", "virtual": " (virtual V3D, emulated)",
                                               "emu": " (emulated)"}[route], progress)
    try:
        for name, size, threads in jobs:
            run = _qpu_kernel_run(name)
            if run is None:
                rows.append({"device": "qpu", "kernel": name, "bytes": size, "source": "missing",
                             "note": f"qpu_kernels/{name}.py is not in this tree"})
                bar.update(1)
                continue
            area = 2 * size + (1 << 20)
            with open_driver(route, data_area_size=area) as drv:
                counters, wall = run(drv, size, threads)
            moved = _qpu_bytes_moved(name, size)
            row = {"device": "qpu", "kernel": name, "threads": threads, "bytes": size, "bytes_moved": moved,
                   "route": route}
            if hw:
                row.update(seconds=wall, GBps=moved / wall / 1e9, source="measured")
            else:
                d = counters.as_dict()
                pred = prediction.predict_qpu(counters)
                row.update(counters={k: v for k, v in d.items() if k != "instructions_per_qpu"},
                           emulator_seconds=wall, source="predicted")
                sec = pred["predicted_seconds"]
                row.update(seconds=sec, GBps=moved / sec / 1e9, bound=pred["bound"], prediction=pred)
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    return rows


def concurrent_bandwidth(cpu_rows: list[dict], qpu_rows: list[dict], size: int = 1 << 24,
                         driver: str = "auto") -> list[dict]:
    """CPU read and QPU summation at once. Measured on hardware; here only the DRAM-sharing bound."""
    from pimoe.qpu.driver import hardware_available

    hw = driver == "hw" or (driver == "auto" and hardware_available()[0])
    if hw:
        return [_measure_concurrent(size)]
    qpu_best = max((r for r in qpu_rows if r.get("kernel") == "summation" and r.get("GBps")),
                   key=lambda r: r["GBps"], default=None)
    if qpu_best is None:
        return []
    cpu, qpu, dram = pi4.STREAM_COPY_BANDWIDTH / 1e9, qpu_best["GBps"], pi4.DRAM_PEAK_BANDWIDTH / 1e9
    return [{"device": "cpu+qpu", "kernel": "read+summation", "source": "bound", "bytes": qpu_best["bytes"],
             "cpu_alone_GBps_published": cpu, "qpu_alone_GBps_predicted": qpu,
             "GBps": min(cpu + qpu, dram),
             "bound": f"min(Pi 4 CPU STREAM copy {cpu} + QPU summation predicted {qpu:.2f}, DRAM peak "
                      f"{dram})",
             "note": "no QPU here, so contention is not measurable: an upper bound for a Pi 4, not a "
                     "prediction"}]


def _measure_concurrent(size: int) -> dict:
    """On a Pi: a CPU read loop in a thread while the QPU sums `size` bytes; both GB/s measured."""
    import numba
    import qpu_kernels.summation as summ

    from pimoe.qpu.driver import open_driver

    read = _cpu_kernels()[0]
    a8 = np.ones((size // ROW_BYTES, ROW_BYTES), np.uint8)
    sums = np.zeros(a8.shape[0], np.int32)
    read(a8, sums)
    stop = threading.Event()
    cpu_bytes = [0]

    def cpu_loop():
        while not stop.is_set():
            read(a8, sums)
            cpu_bytes[0] += a8.nbytes

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    with open_driver("hw", data_area_size=size + (1 << 20)) as drv:
        th = threading.Thread(target=cpu_loop)
        t0 = time.perf_counter()
        th.start()
        _, qpu_s = summ.run(drv, length=size // 4, threads=8)
        stop.set()
        th.join()
        cpu_s = time.perf_counter() - t0
    cpu = cpu_bytes[0] / cpu_s / 1e9
    qpu = size / qpu_s / 1e9
    return {"device": "cpu+qpu", "kernel": "read+summation", "source": "measured", "bytes": size,
            "cpu_GBps": cpu, "qpu_GBps": qpu, "GBps": cpu + qpu}


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def table_text(rows: list[dict]) -> str:
    lines = ["| device | kernel | threads | size | GB/s (median) | GB/s (best) | source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        size = _fmt_bytes(r["bytes"]) if r.get("bytes") else ""
        g = f"{r['GBps']:.2f}" if r.get("GBps") else "-"
        b = f"{r['GBps_best']:.2f}" if r.get("GBps_best") else ""
        lines.append(f"| {r['device']} | {r['kernel']} | {r.get('threads', '')} | {size} | {g} | {b} | "
                     f"{r['source']}{' (' + r['note'] + ')' if r.get('note') else ''} |")
    return "\n".join(lines)


def _fmt_bytes(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:g} {unit}"
    return f"{n} B"
