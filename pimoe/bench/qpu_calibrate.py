"""`pimoe calibrate --qpu hw|virtual`: measure the QPU kernels on a route, put the timing model's
predictions next to them, refit the model's parameters to this Pi and store them as a timing profile
that `pimoe compare` then uses.

What runs (every kernel's result is checked against numpy by its runner first):
- the calibration kernels (qpu_kernels.calibration / memset: streaming read, write, copy, a 2x4-block
  sgemm), the same kernels behind the published py-videocore6 figures the model is fitted on;
- one decode token's expert layer (qpu_kernels.expert_ffn: swiglu + down_sum dispatches, Qwen3-30B-A3B's
  2048x768 Q4_K experts, k=8);
- a dispatch-overhead test: an empty program on 8 QPUs, submitted and waited for `--dispatches` times.
  The model charges 50 us per dispatch, an assumption (pimoe.qpu.timing.QPUTimingParams); this is
  the number that decides whether the expert offload gains anything at ~96 dispatches per token.

On "hw" each kernel's time is the median wall time of `--reps` runs (submit to WAIT_BO), and its
prediction comes from the emulator's counts of the same dispatch (run once in the emulator: the counts are
deterministic). On "virtual" the route is the whole hardware path over the virtual V3D device, but there
is no Pi to time: the emulator's predicted times stand in for the measurements, labelled as such, and
the refit must then give back the model's own parameters (a check of the procedure, not of the model).

Refit: dispatch_overhead_s from the empty dispatch; read_bandwidth, write_bandwidth, wait_latency_cycles
from the streaming read, the write and the sgemm (pimoe.bench.calibration.fit, as for the published
figures); the rest stays. The profile is a JSON file (PIMOE_TIMING_PROFILE, else
$XDG_CONFIG_HOME/pimoe/qpu-timing-profile.json).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from pimoe.errors import PimoeError

STAND_IN_LABEL = "virtual device: the emulator's predicted time stands in for a measurement"


def profile_path() -> Path:
    env = os.environ.get("PIMOE_TIMING_PROFILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "pimoe" / "qpu-timing-profile.json"


def load_profile(path: Path | None = None) -> dict | None:
    """The stored timing profile (with 'params' as QPUTimingParams), or None when there is none."""
    from pimoe.qpu.timing import QPUTimingParams

    path = Path(path) if path is not None else profile_path()
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        data["params"] = QPUTimingParams(**data["params"])
    except (ValueError, TypeError, KeyError) as exc:
        raise PimoeError(f"{path}: not a pimoe timing profile ({exc}); delete it or rerun `pimoe calibrate`") from exc
    data["path"] = str(path)
    return data


def _sizes(quick: bool) -> dict:
    from qpu_kernels import memset as mk
    from qpu_kernels import vec4_stream as vk

    trips = 1 if quick else 8
    return {"summation": vk.ROW * vk.SUM_LOADS * vk.N_QPUS * 8 * trips,
            "memset": 4 * 16 * mk.DEFAULT_UNROLL * mk.N_QPUS * trips,
            "scopy": 2 * vk.ROW * vk.N_QPUS * 64 * trips,
            "sgemm": (32, 4, 64) if quick else (64, 64, 128),
            "expert": (256, 256) if quick else (2048, 768)}


def _empty(asm):
    from qpu_kernels.emit import emit_program_end

    emit_program_end(asm)


def _run_kernel(drv, name: str, size, reps: int, dispatches: int):
    """Run one calibration item on `drv`: (list of emulator counters or Nones per dispatch, wall seconds
    per repetition). Every runner checks its result against numpy."""
    import numpy as np

    from pimoe.qpu import qpu
    from qpu_kernels import calibration as ck
    from qpu_kernels import memset as mk
    from qpu_kernels import vec4_stream as vk

    times = []
    counters = None
    for _ in range(reps):
        if name == "summation":
            c, s = vk.run_vec4_sum(drv, nbytes=size)
            cs = [c]
        elif name == "memset":
            c, s = mk.run(drv, nbytes=size)
            cs = [c]
        elif name == "scopy":
            c, s = vk.run_vec4_scopy(drv, nbytes=size)
            cs = [c]
        elif name == "sgemm":
            c, s, _ = ck.run_sgemm(drv, p=size[0], q=size[1], r=size[2])
            cs = [c]
        elif name == "expert":
            from gguf import GGMLQuantizationType as QT

            from qpu_kernels.expert_ffn import run_check

            err, cs, s = run_check(drv, QT.Q4_K, hidden=size[0], ff=size[1], n_experts=8, k=8, tokens=1)
            if err > 1e-5:
                raise PimoeError(f"calibrate: expert layer differs from numpy ({err:.1e})")
        elif name == "dispatch":
            import time

            code = drv.program(qpu(_empty))
            unif = drv.alloc(1, dtype=np.uint32)
            per = []
            for _ in range(dispatches):
                t0 = time.perf_counter()
                c = drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=8)
                per.append(time.perf_counter() - t0)
            cs, s = [c], statistics.median(per)
        else:
            raise PimoeError(f"calibrate: unknown item {name}")
        times.append(s)
        counters = cs
        inner = drv                          # the runners allocate afresh each time: reuse the data area
        while "_drv" in getattr(inner, "__dict__", {}):
            inner = inner.__dict__["_drv"]
        if hasattr(inner, "data_pos"):
            inner.data_pos = getattr(inner, "data_area_base", 0)
    return counters, times


def _predict(name: str, counters, params):
    from pimoe.qpu.timing import predict

    if name == "expert":
        from qpu_kernels.gemv_kernel import timing_args

        return sum(predict(c, params=params, **timing_args()).seconds for c in counters)
    return predict(counters[0], params=params).seconds


ITEMS = ("summation", "memset", "scopy", "sgemm", "expert", "dispatch")
AREA = {"summation": lambda s: s + (1 << 20), "memset": lambda s: s + (1 << 20), "scopy": lambda s: 2 * s + (1 << 20),
        "sgemm": lambda s: 4 * 2 * (s[0] * s[1] + s[1] * s[2] + 2 * s[0] * s[2]) + (1 << 20),
        "expert": lambda s: 64 << 20 if s[0] <= 256 else 256 << 20, "dispatch": lambda s: 1 << 16}


def calibrate(kind: str, *, reps: int = 5, dispatches: int = 100, quick: bool = False, items=ITEMS,
              progress=print) -> dict:
    """Run the items on `kind` ("hw" or "virtual"); return the record (rows, params before/after)."""
    from pimoe.bench import calibration as cal
    from pimoe.qpu import open_driver
    from pimoe.qpu.timing import PI4, PREDICTED_LABEL

    if kind not in ("hw", "virtual"):
        raise PimoeError(f"calibrate --qpu {kind}: hw or virtual (the emulator alone has nothing to measure)")
    sizes = _sizes(quick)
    sizes["dispatch"] = 8
    rows = []
    counts = {}
    for name in items:
        size = sizes[name]
        progress(f"pimoe calibrate: {name} ({size}) on --qpu {kind} ...")
        with open_driver(kind, data_area_size=AREA[name](size)) as drv:
            counters, times = _run_kernel(drv, name, size, 1 if kind == "virtual" else reps,
                                          5 if kind == "virtual" else dispatches)
        if kind == "hw" or any(c is None for c in counters):
            with open_driver("emu", data_area_size=AREA[name](size)) as emu:
                counters, _ = _run_kernel(emu, name, size, 1, 1)
        counts[name] = counters
        predicted = _predict(name, counters, PI4)
        measured = statistics.median(times) if kind == "hw" else predicted
        rows.append({"item": name, "size": size, "measured_seconds": measured,
                     "measured_label": "measured on this Pi (median of %d)" % len(times) if kind == "hw"
                     else STAND_IN_LABEL,
                     "predicted_seconds": predicted, "predicted_label": PREDICTED_LABEL,
                     "ratio_measured_to_predicted": measured / predicted})
    by = {r["item"]: r for r in rows}
    params = PI4
    notes = []
    if "dispatch" in by:
        kernel_only = by["dispatch"]["predicted_seconds"] - PI4.dispatch_overhead_s
        params = replace(params, dispatch_overhead_s=max(0.0, by["dispatch"]["measured_seconds"] - kernel_only))
    fitted = {k: v for k, v in cal.FITTED.items() if v in by}
    if fitted:
        try:
            params = cal.fit({k: {"counters": counts[k][0]} for k in fitted.values()},
                             {"kernels": {k: {"seconds": by[k]["measured_seconds"]} for k in fitted.values()}},
                             base=params, fitted=fitted)
        except PimoeError as exc:
            notes.append(f"not refitted: {exc}")
    for r in rows:
        r["predicted_seconds_refit"] = _predict(r["item"], counts[r["item"]], params)
    return {"route": kind, "rows": rows, "params_before": asdict(PI4), "params_after": asdict(params),
            "refitted": ["dispatch_overhead_s"] * ("dispatch" in by) + list(fitted), "notes": notes,
            "label": "measured on a Pi 4" if kind == "hw" else STAND_IN_LABEL}


def store_profile(record: dict, record_path: str | None, path: Path | None = None) -> Path:
    import time

    path = Path(path) if path is not None else profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"route": record["route"], "params": record["params_after"],
                                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "record": record_path, "label": record["label"]}, indent=1) + "\n")
    return path


def describe_profile(prof: dict) -> str:
    p = prof["params"]
    return (f"timing profile {prof['path']} (pimoe calibrate --qpu {prof['route']}, {prof.get('created_utc', '?')}: "
            f"dispatch overhead {p.dispatch_overhead_s * 1e6:.1f} us, read {p.read_bandwidth / 1e9:.2f} GB/s, "
            f"write {p.write_bandwidth / 1e9:.2f} GB/s" + ("; virtual: the model's own figures" if prof['route'] ==
                                                          "virtual" else "") + ")")
