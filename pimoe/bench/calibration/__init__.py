"""Calibration of pimoe.qpu.timing against py-videocore6's published Pi 4 measurements.

Data (in this directory):
- published.json: the four figures (summation, memset, scopy, sgemm), their sources, sizes and bytes.
- counts.json: emulator counts of pimoe's equivalent kernels (qpu_kernels/calibration.py, memset.py),
  extrapolated exactly to the published sizes (see emulate.py), with the small runs they came from.

Fit: three free parameters of the model (FREE), the rest fixed by published facts or stated assumptions
(see QPUTimingParams):
    read_bandwidth       (the streaming reads: summation, scopy)
    write_bandwidth      (the stores: memset, scopy)
    wait_latency_cycles  (sgemm: 1 thread per QPU, 2 waits per k step: latency bound)
fit_all() solves them by least squares on log(predicted / published time) over all four figures (the
shipped pimoe.qpu.timing.PI4); leave_one_out() refits on every three and predicts the fourth. A parameter
no kernel of a fit is bound by is not identifiable from it: sgemm is the only published figure that
depends on the round trip (the streaming kernels are memory bound at any latency below the summation's
Little's-law bound), so leaving sgemm out leaves the latency open. Rule: a parameter the kernels of a fit
do not determine takes its PRIOR (PRIORS: a value sourced independently of the four figures), the others
are fitted; leave_one_out() says which were held, and also gives the range of sgemm predictions the other
three allow.
A fifth published figure, py-videocore6's first sgemm (2019, naive, one thread: README at commit 878a1f4,
0.8327 s for 123 x 567 times 567 x 512), is latency bound too (ALL_KERNELS): with it the latency IS
identified without the 1024^3 sgemm (leave_one_out(kernels=ALL_KERNELS)), and it predicts the 1024^3
sgemm within 15 %: per k step its first thrsw takes effect with both lookups in flight and its second after
both results were read in the delay slots (the emulator's thread_switches_with_loads counts 1 wait per step,
the 1024^3 sgemm's 2), so both figures give L ~ 150-167 cycles. (Charging every thrsw, as the model did
before that counter, they needed 75 vs 167 cycles.) The shipped parameters stay the fit on the four.
fit() is the older exact solve (one parameter from one kernel), which `pimoe calibrate` uses on a Pi.

    python -m pimoe.bench.calibration            # re-emulate, refit, write results/calibration-<time>.{json,png,svg}
    python -m pimoe.bench.calibration --no-emulate   # refit from the stored counts.json
"""

from __future__ import annotations

import json
import math

import numpy as np
from dataclasses import replace
from pathlib import Path

from pimoe import pi4
from pimoe.errors import PimoeError
from pimoe.qpu.timing import PI4, QPUTimingParams, predict

HERE = Path(__file__).resolve().parent
PUBLISHED_PATH = HERE / "published.json"
COUNTS_PATH = HERE / "counts.json"
KERNELS = ("summation", "memset", "scopy", "sgemm")       # the four of issue 12
# a fifth published, hardware-measured figure: py-videocore6's first (naive, 1 thread) sgemm, README at
# commit 878a1f4 (2019-11-23); latency bound like the sgemm, with one-line lookups instead of a gather
NAIVE = "sgemm_naive"
ALL_KERNELS = KERNELS + (NAIVE,)
FITTED = {"read_bandwidth": "summation", "write_bandwidth": "memset", "wait_latency_cycles": "sgemm"}
FREE = ("read_bandwidth", "write_bandwidth", "wait_latency_cycles")
# Independent values for parameters a fit may leave undetermined (never tuned to the figures):
# the round trip = the TMU latency Mesa's V3D compiler schedules for (pimoe.pi4, 100 instructions) x 4 cycles
# per instruction.
PRIORS = {"wait_latency_cycles": pi4.MESA_V3D_TMU_LATENCY_INSTRUCTIONS * PI4.cycles_per_instruction}
PRIOR_SOURCES = {"wait_latency_cycles": "Mesa src/broadcom/compiler/qpu_schedule.c magic_waddr_latency(): 100 "
                                        "instructions from a TMU write to the ldtmu waiting on it (a scheduler "
                                        "heuristic), x 4 cycles per instruction"}


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


def compare(counts: dict, published: dict, params: QPUTimingParams,
            kernels=KERNELS) -> list[dict[str, object]]:
    """Predicted vs published for each of `kernels`: rows of the calibration table."""
    rows = []
    for kernel in kernels:
        pub = published["kernels"][kernel]
        pred = predict(counts[kernel]["counters"], params=params)
        rows.append({
            "kernel": kernel, "counts_from": counts[kernel].get("kernel"), "role": pub["role"], "unit": pub["unit"],
            "published_seconds": pub["seconds"], "predicted_seconds": pred.seconds,
            "published_figure": pub["figure"], "predicted_figure": figure_of(kernel, pred.seconds, published),
            "ratio_predicted_to_published_time": pred.seconds / pub["seconds"],
            "bound": pred.bound, "breakdown_seconds": pred.breakdown, "label": pred.label,
        })
    return rows


def _log_residuals(counts: dict, published: dict, params: QPUTimingParams, kernels) -> np.ndarray:
    return np.array([math.log(predict(counts[k]["counters"], params=params).seconds /
                              published["kernels"][k]["seconds"]) for k in kernels])


def fit_all(counts: dict, published: dict, kernels=KERNELS, base: QPUTimingParams = PI4,
            free=FREE) -> QPUTimingParams:
    """The parameters in `free` that minimise sum over `kernels` of log(predicted / published time)^2
    (Gauss-Newton in log parameters, numeric derivatives, step halving). Raises PimoeError naming a
    parameter none of the kernels' predictions depends on (not identifiable from them)."""
    kernels = tuple(kernels)
    x = np.log([getattr(base, n) for n in free])

    def params_at(v):
        return replace(base, **{n: float(math.exp(e)) for n, e in zip(free, v)})

    def cost(v):
        r = _log_residuals(counts, published, params_at(v), kernels)
        return float(r @ r), r

    c, r = cost(x)
    for _ in range(100):
        jac = np.empty((len(kernels), len(free)))
        for j in range(len(free)):
            step = np.zeros(len(free))
            step[j] = 1e-4
            jac[:, j] = (_log_residuals(counts, published, params_at(x + step), kernels) - r) / 1e-4
        dead = _dead(jac, free)
        if dead:
            raise PimoeError(f"calibration: {', '.join(dead)} not identifiable from {', '.join(kernels)}: none of "
                             f"these kernels' predicted times depends on it")
        dx = np.linalg.lstsq(jac, -r, rcond=None)[0]
        t = 1.0
        while t > 1e-6:
            c_new, r_new = cost(x + t * dx)
            if c_new <= c:
                break
            t /= 2
        else:
            break
        x, moved = x + t * dx, float(np.max(np.abs(t * dx)))
        c, r = c_new, r_new
        if moved < 1e-10:
            break
    return params_at(x)


def _dead(jac: np.ndarray, free) -> list[str]:
    return [free[j] for j in range(len(free)) if not np.any(np.abs(jac[:, j]) > 1e-6)]


def unidentified(counts: dict, published: dict, kernels, base: QPUTimingParams = PI4, free=FREE) -> list[str]:
    """The parameters in `free` none of `kernels`' predicted times depends on at `base`."""
    kernels = tuple(kernels)
    r0 = _log_residuals(counts, published, base, kernels)
    jac = np.empty((len(kernels), len(free)))
    for j, n in enumerate(free):
        jac[:, j] = _log_residuals(counts, published, replace(base, **{n: getattr(base, n) * math.exp(1e-4)}),
                                   kernels) - r0
        jac[:, j] /= 1e-4
    return _dead(jac, free)


def fit_with_priors(counts: dict, published: dict, kernels, base: QPUTimingParams = PI4,
                    priors: dict[str, float] = PRIORS) -> tuple[QPUTimingParams, dict[str, float]]:
    """fit_all() on `kernels`, except that the parameters they do not determine take their prior (the rule
    for unidentified parameters). Returns (parameters, {name: prior} of those held). A parameter with no
    prior still raises PimoeError."""
    dead = unidentified(counts, published, kernels, base)
    held = {n: float(priors[n]) for n in dead if n in priors}
    free = tuple(n for n in FREE if n not in held)
    return fit_all(counts, published, kernels, replace(base, **held), free=free), held


def sgemm_range_without_latency(counts: dict, published: dict, params: QPUTimingParams) -> dict[str, float]:
    """What the streaming kernels alone allow for the sgemm: the round trip L is anywhere from 0 to the
    summation's Little's-law bound (published time x clock x queue depth / results per QPU: beyond it the
    model's summation could not keep its published rate), and the sgemm time follows L."""
    res = np.maximum(np.asarray(counts["summation"]["counters"]["per_thread"]["ldtmu"]),
                     np.asarray(counts["summation"]["counters"]["per_thread"]["tmu_reads"])).sum(axis=1).max()
    l_max = published["kernels"]["summation"]["seconds"] * params.clock_hz * params.tmu_queue_depth / res
    pub = published["kernels"]["sgemm"]["seconds"]
    lo = predict(counts["sgemm"]["counters"], params=replace(params, wait_latency_cycles=1e-9)).seconds / pub
    hi = predict(counts["sgemm"]["counters"], params=replace(params, wait_latency_cycles=l_max)).seconds / pub
    return {"latency_max_cycles": float(l_max), "ratio_at_zero_latency": lo, "ratio_at_latency_max": hi}


def leave_one_out(counts: dict, published: dict, base: QPUTimingParams = PI4,
                  priors: dict[str, float] = PRIORS, kernels=KERNELS) -> list[dict[str, object]]:
    """Each of `kernels` predicted from the parameters fit_all() finds on the others. A parameter the others
    do not determine (sgemm left out of the four: the latency) is held at its prior (fit_with_priors); the
    row names it (held_at_prior, prior_source) and, for sgemm, also gives the range of ratios the streaming
    kernels allow. kernels=ALL_KERNELS: the five, where the naive sgemm determines the latency."""
    out = []
    kernels = tuple(kernels)
    for held_out in kernels:
        rest = tuple(k for k in kernels if k != held_out)
        row: dict[str, object] = {"held_out": held_out, "fitted_on": list(rest),
                                  "published_seconds": published["kernels"][held_out]["seconds"]}
        params, held = fit_with_priors(counts, published, rest, base, priors)
        pred = predict(counts[held_out]["counters"], params=params).seconds
        row.update(predicted_seconds=pred, ratio=pred / published["kernels"][held_out]["seconds"],
                   **{n: getattr(params, n) for n in FREE},
                   held_at_prior=held, prior_source={n: PRIOR_SOURCES.get(n) for n in held})
        if held_out == "sgemm":
            row["allowed_range"] = sgemm_range_without_latency(counts, published, params)
        out.append(row)
    return out
