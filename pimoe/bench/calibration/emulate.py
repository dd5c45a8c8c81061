"""Emulate the calibration kernels at small sizes and extrapolate their counts to the published sizes.

The published runs are slow in the emulator (sgemm 1024^3 is ~200 M QPU instructions, minutes), but every
calibration kernel is loops with fixed bodies, so each per-thread counter is EXACTLY linear in the loop
trip counts: count = c . features, with features (1, trips) for the streaming kernels and
(1, i trips, tiles, tiles x Q) for the sgemm (outer loop, tile loop, k loop). The coefficients are solved
from a few small runs, a further run the solve did not use must be reproduced exactly (to the instruction),
and only then are they evaluated at the published size. The naive sgemm (one thread) is linear in
(1, rows, strips, strips x Q): C rows, 16-column strips, k steps.

Checked once against py-videocore6's own example programs run unchanged through the emulator at their
published sizes (outside the project, 2026-12-04): instructions 0.997 (memset), 0.999 (summation, scopy),
1.001 (sgemm) of theirs; TMU lookups, results, bytes, prefetches, thread switches equal for summation
and scopy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pimoe.errors import PimoeError


@dataclass
class Sample:
    features: tuple[float, ...]
    per_thread: dict[str, np.ndarray]
    batches: int
    threads_per_qpu: int


def _sample(features, counters) -> Sample:
    return Sample(tuple(float(f) for f in features), {k: np.asarray(v, np.int64) for k, v in
                                                      counters.per_thread.items()},
                  int(counters.batches), int(counters.threads_per_qpu))


def extrapolate(fit_samples: list[Sample], check_sample: Sample, target: tuple[float, ...]) -> dict[str, object]:
    """Solve count = c . features per counter and thread slot from fit_samples, require check_sample to be
    reproduced exactly, return the counters at `target` (the dict form pimoe.qpu.timing.predict takes)."""
    x = np.array([s.features for s in fit_samples], dtype=np.float64)       # [samples, features]
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise PimoeError(f"extrapolate: the fit samples' features {x.tolist()} do not determine the coefficients")
    names = list(fit_samples[0].per_thread)
    out: dict[str, list] = {}
    for name in names:
        y = np.stack([s.per_thread[name].reshape(-1) for s in fit_samples]).astype(np.float64)  # [samples, slots]
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)                        # [features, slots]
        fitted = np.rint(x @ coef)
        if not np.array_equal(fitted, y):
            raise PimoeError(f"extrapolate: counter '{name}' is not linear in the features {x.tolist()}")
        want = check_sample.per_thread[name].reshape(-1)
        got = np.rint(np.asarray(check_sample.features) @ coef)
        if not np.array_equal(got, want):
            raise PimoeError(f"extrapolate: counter '{name}' at {check_sample.features} is {want.tolist()}, the "
                             f"linear fit says {got.tolist()}: the kernel's counts are not linear in its trips")
        at = np.rint(np.asarray(target, dtype=np.float64) @ coef).reshape(fit_samples[0].per_thread[name].shape)
        out[name] = at.astype(np.int64).tolist()
    return {"batches": fit_samples[0].batches, "threads_per_qpu": fit_samples[0].threads_per_qpu,
            "per_thread": out}


# which of pimoe's kernels produced each kernel's counts (stored with them in counts.json and the record)
KERNEL_OF = {
    "summation": "qpu_kernels.vec4_stream.qpu_vec4_sum (8 QPUs x 1 thread, vec4 loads, 2 in flight, 8 per trip)",
    "memset": "qpu_kernels.memset.qpu_memset (8 QPUs x 1 thread, 16-byte stores, unroll 32)",
    "scopy": "qpu_kernels.vec4_stream.qpu_vec4_scopy (8 QPUs x 1 thread, vec4 loads + prefetch + vec4 stores)",
    "sgemm": "qpu_kernels.calibration.qpu_sgemm_blocks (8 QPUs x 1 thread, 2x4 blocks, 16x16 tiles, 47 "
             "instructions and 2 thrsw per k)",
    "sgemm_naive": "qpu_kernels.calibration.qpu_sgemm_naive (1 QPU x 1 thread, one 16-column strip of a C row "
                   "at a time, 9 instructions and 2 thrsw per k)",
}


def _stream_samples(run, per_trip_bytes: int, trips_list, published_bytes: int):
    from pimoe.qpu.emulator import EmuDriver

    samples = []
    for trips in trips_list:
        nbytes = per_trip_bytes * trips
        with EmuDriver(data_area_size=2 * nbytes + (1 << 16)) as drv:
            counters = run(drv, nbytes=nbytes)[0]
        samples.append(_sample((1, trips), counters))
    if published_bytes % per_trip_bytes:
        raise PimoeError(f"published size {published_bytes} is not a whole number of {per_trip_bytes}-byte trips")
    return samples, (1, published_bytes // per_trip_bytes)


def _sgemm_features(p: int, q: int, r: int) -> tuple[int, int, int, int]:
    i_trips = p // 2 // 16                 # tile rows of a thread's 512 x 256 block (P/2 x R/4 in general)
    tiles = i_trips * (r // 4 // 16)
    return (1, i_trips, tiles, tiles * q)


def emulate_all(progress: bool = True) -> dict[str, dict[str, object]]:
    """Counts of every calibration kernel at its published size, with the small runs they came from."""
    from qpu_kernels import calibration as ck
    from qpu_kernels import memset as mk
    from qpu_kernels import vec4_stream as vk
    from pimoe.qpu.emulator import EmuDriver
    from pimoe.bench.calibration import load_published

    pub = load_published()["kernels"]
    result: dict[str, dict[str, object]] = {}
    steps = ["summation", "memset", "scopy", "sgemm", "sgemm_naive"]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(steps), desc="emulating calibration kernels", unit="kernel")
    stream = {
        "summation": (vk.run_vec4_sum, vk.ROW * vk.SUM_LOADS * vk.N_QPUS, pub["summation"]["bytes_read"]),
        "memset": (mk.run, 4 * 16 * mk.DEFAULT_UNROLL * mk.N_QPUS, pub["memset"]["bytes_written"]),
        "scopy": (vk.run_vec4_scopy, 2 * vk.ROW * vk.N_QPUS, pub["scopy"]["bytes_read"]),
    }
    for name in ("summation", "memset", "scopy"):
        run, per_trip, published_bytes = stream[name]
        samples, target = _stream_samples(run, per_trip, (1, 2, 3), published_bytes)
        result[name] = {"kernel": KERNEL_OF[name], "features": ["1", "trips"], "samples": [list(s.features) for s in samples],
                        "target": list(target), "counters": extrapolate(samples[:2], samples[2], target)}
        if bar:
            bar.update()
    # the sgemms: 4 sizes for the solve, the last one the check
    gemms = {
        "sgemm": (ck.run_sgemm, _sgemm_features, ["1", "i_trips", "tiles", "tiles*Q"],
                  [(32, 4, 64), (64, 4, 64), (32, 8, 64), (32, 4, 128), (64, 8, 128)]),
        # the 2019 naive sgemm: features (1, rows, strips, k steps)
        "sgemm_naive": (ck.run_sgemm_naive, ck.naive_features, ["1", "rows", "strips", "strips*Q"],
                        [(1, 2, 16), (2, 2, 16), (1, 3, 16), (1, 2, 32), (3, 5, 48)]),
    }
    for name, (run, features_of, feature_names, sizes) in gemms.items():
        samples = []
        for p, q, r in sizes:
            with EmuDriver(data_area_size=4 * (p * q + q * r + p * r) + (1 << 16)) as drv:
                counters = run(drv, p=p, q=q, r=r)[0]
            samples.append(_sample(features_of(p, q, r), counters))
        size = pub[name]["size"]
        target = features_of(size["p"], size["q"], size["r"])
        result[name] = {"kernel": KERNEL_OF[name], "features": feature_names, "sizes": [list(s) for s in sizes],
                        "samples": [list(s.features) for s in samples], "target": list(target),
                        "counters": extrapolate(samples[:4], samples[4], target)}
        if bar:
            bar.update()
    if bar:
        bar.close()
    return result
