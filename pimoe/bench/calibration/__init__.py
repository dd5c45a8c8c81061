"""Calibration of pimoe.qpu.timing against py-videocore6's published Pi 4 measurements.

Data (in this directory):
- published.json: the four figures (summation, memset, scopy, sgemm), their sources, sizes and bytes.
- counts.json: emulator counts of pimoe's equivalent kernels (qpu_kernels/calibration.py, memset.py),
  extrapolated exactly to the published sizes (see emulate.py), with the small runs they came from.

Fit: three free parameters of the model, each from one figure, the rest fixed by published facts or
stated assumptions (see QPUTimingParams):
    read_bandwidth       <- summation (a pure streaming read, memory bound in the model)
    write_bandwidth      <- memset (stores only)
    wait_latency_cycles  <- sgemm (1 thread per QPU, 2 waits per k step: latency bound)
checked on the rest: scopy (reads + writes: never fitted), plus leave-one-out over the three
streaming kernels (fit the two bandwidths from any two, predict the third).

    python -m pimoe.bench.calibration            # re-emulate, refit, write results/calibration-<time>.{json,png,svg}
    python -m pimoe.bench.calibration --no-emulate   # refit from the stored counts.json
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from pimoe.errors import PimoeError
from pimoe.qpu.timing import PI4, QPUTimingParams, predict

HERE = Path(__file__).resolve().parent
PUBLISHED_PATH = HERE / "published.json"
COUNTS_PATH = HERE / "counts.json"
KERNELS = ("summation", "memset", "scopy", "sgemm")
FITTED = {"read_bandwidth": "summation", "write_bandwidth": "memset", "wait_latency_cycles": "sgemm"}


def load_published() -> dict:
    return json.loads(PUBLISHED_PATH.read_text())


def load_counts(path: Path | str = COUNTS_PATH) -> dict:
    path = Path(path)
    if not path.exists():
        raise PimoeError(f"{path}: no stored calibration counts; run `python -m pimoe.bench.calibration`")
    return json.loads(path.read_text())


def _solve(f, lo: float, hi: float, target: float, increasing: bool, what: str) -> float:
    """x in [lo, hi] with f(x) = target for a monotone f (bisection in log space)."""
    flo, fhi = f(lo), f(hi)
    if not (min(flo, fhi) <= target <= max(flo, fhi)):
        raise PimoeError(f"calibration: {what} cannot reach {target:.6g} s (model gives {flo:.6g} .. {fhi:.6g} s "
                         f"over {lo:.3g} .. {hi:.3g}): the kernel is not bound by that parameter")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def fit(counts: dict, published: dict, base: QPUTimingParams = PI4,
        fitted: dict[str, str] = FITTED) -> QPUTimingParams:
    """Solve the parameters in `fitted` (name -> kernel whose published time fixes it) so the model
    reproduces those kernels' published times; the others stay as in `base`. Alternates the 1-D solves
    until the parameters settle (they barely interact: each kernel is bound by its own parameter)."""
    params = base
    ranges = {"read_bandwidth": (1e8, 1e12, False), "write_bandwidth": (1e8, 1e12, False),
              "wait_latency_cycles": (1.0, 1e5, True)}
    for _ in range(50):
        before = params
        for name, kernel in fitted.items():
            lo, hi, increasing = ranges[name]
            target = published["kernels"][kernel]["seconds"]
            c = counts[kernel]["counters"]

            def f(x, name=name, c=c):
                return predict(c, params=replace(params, **{name: x})).seconds

            params = replace(params, **{name: _solve(f, lo, hi, target, increasing, f"{name} from {kernel}")})
        if all(abs(getattr(params, n) - getattr(before, n)) <= 1e-9 * abs(getattr(params, n)) for n in fitted):
            break
    return params


def figure_of(kernel: str, seconds: float, published: dict) -> float:
    """The published metric (MB/s or GFLOP/s, as the README prints it) for a given time."""
    k = published["kernels"][kernel]
    if k["unit"] == "MB/s":
        moved = k["bytes_written"] if kernel == "memset" else k["bytes_read"]  # README: size / time
        return moved / seconds * 1e-6
    return k["flops"] / seconds * 1e-9


def compare(counts: dict, published: dict, params: QPUTimingParams) -> list[dict[str, object]]:
    """Predicted vs published for every kernel: rows of the calibration table."""
    rows = []
    for kernel in KERNELS:
        pub = published["kernels"][kernel]
        pred = predict(counts[kernel]["counters"], params=params)
        rows.append({
            "kernel": kernel, "role": pub["role"], "unit": pub["unit"],
            "published_seconds": pub["seconds"], "predicted_seconds": pred.seconds,
            "published_figure": pub["figure"], "predicted_figure": figure_of(kernel, pred.seconds, published),
            "ratio_predicted_to_published_time": pred.seconds / pub["seconds"],
            "bound": pred.bound, "breakdown_seconds": pred.breakdown, "label": pred.label,
        })
    return rows


def leave_one_out(counts: dict, published: dict, base: QPUTimingParams = PI4) -> list[dict[str, object]]:
    """Each streaming kernel predicted from bandwidths fitted on the other two (the third a true check)."""
    out = []
    pairs = {  # held out -> which kernel fixes which bandwidth
        "scopy": {"read_bandwidth": "summation", "write_bandwidth": "memset"},
        "memset": {"read_bandwidth": "summation", "write_bandwidth": "scopy"},
        "summation": {"write_bandwidth": "memset", "read_bandwidth": "scopy"},
    }
    for held, fitted in pairs.items():
        params = fit(counts, published, base, fitted=dict(fitted, wait_latency_cycles="sgemm"))
        pred = predict(counts[held]["counters"], params=params).seconds
        out.append({"held_out": held, "fitted_from": fitted, "predicted_seconds": pred,
                    "published_seconds": published["kernels"][held]["seconds"],
                    "ratio": pred / published["kernels"][held]["seconds"],
                    "read_bandwidth": params.read_bandwidth, "write_bandwidth": params.write_bandwidth})
    return out
