"""Results records: one new timestamped JSON file (plus a CSV of its table) per run, never overwritten.

    env = records.environment(backend="qpu", model=model)      # CPU, clocks, versions, git, model shape/types
    json_path, csv_path = records.write_record({"kind": "compare", "environment": env, ...},
                                               results_dir="results", kind="compare", table=rows)
    rec = records.read_record(json_path)

Every record has `schema`, `kind`, `command` (the command line that made it) and `environment`; CSV cells
that hold lists or dicts are JSON text (pimoe.output.csv_cell), never Python reprs.

Names are results/<kind>-YYYYMMDD-HHMMSS[-N].json (UTC), for every kind. The file is created with O_EXCL ('x' mode), so a
second run in the same second gets the next free suffix instead of replacing the first one's record;
the CSV takes the same stem. Plots and notebooks read these records and never recompute them.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pimoe
from pimoe.errors import PimoeError

SCHEMA = 1


# -- environment -----------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (x86 'model name'; a Pi has 'Model' / 'Hardware' lines)."""
    text = _read("/proc/cpuinfo") or ""
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "model", "hardware", "cpu model") and key not in found:
            found[key] = value.strip()
    for key in ("model name", "cpu model", "model", "hardware"):
        if found.get(key):
            return found[key]
    return platform.processor() or platform.machine()


def cpu_clocks() -> dict:
    """Clocks that the OS exposes (kHz in sysfs -> MHz); on a Pi also the V3D clock via vcgencmd."""
    out = {}
    for name, f in (("cur_MHz", "scaling_cur_freq"), ("max_MHz", "cpuinfo_max_freq"),
                    ("min_MHz", "cpuinfo_min_freq")):
        v = _read(f"/sys/devices/system/cpu/cpu0/cpufreq/{f}")
        if v and v.isdigit():
            out[name] = int(v) / 1000
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if gov:
        out["governor"] = gov
    if not out:
        text = _read("/proc/cpuinfo") or ""
        for line in text.splitlines():
            if line.lower().startswith("cpu mhz"):
                out["cur_MHz"] = float(line.split(":", 1)[1])
                out["source"] = "/proc/cpuinfo"
                break
    for clock in ("arm", "v3d", "core"):
        try:
            r = subprocess.run(["vcgencmd", "measure_clock", clock], capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            break
        if r.returncode == 0 and "=" in r.stdout:
            out[f"{clock}_vcgencmd_MHz"] = int(r.stdout.split("=")[1]) / 1e6
    return out


def git_commit() -> dict:
    repo = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo, timeout=5)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def _version(module: str) -> str | None:
    try:
        m = __import__(module)
    except Exception:  # noqa: BLE001 - an optional package that fails to import is simply absent
        return None
    return getattr(m, "__version__", "unknown")


def model_info(model) -> dict:
    """Shape and weight types of a loaded pimoe Model (or of a GGUFFile)."""
    f = getattr(model, "file", model)
    cfg = f.config
    types: dict[str, int] = {}
    params = layer_params = layer_bytes = 0
    for name, t in f.tensors.items():
        types[t.qtype.name] = types.get(t.qtype.name, 0) + int(t.nbytes)
        n = int(np.prod(t.shape))
        params += n
        if name.startswith("blk."):
            layer_params += n
            layer_bytes += int(t.nbytes)
    shape = {k: getattr(cfg, k) for k in ("arch", "n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim",
                                          "n_experts", "n_experts_used", "expert_ff", "vocab_size")
             if hasattr(cfg, k)}
    path = Path(f.path)
    return {"file": path.name, "file_bytes": path.stat().st_size if path.exists() else None,
            "params": params, "weight_bytes_by_type": types, "shape": shape,
            "layer_params": layer_params, "layer_weight_bytes": layer_bytes,     # the blk.* tensors
            "synthetic": bool(f.metadata.get("pimoe.synthetic", False))}


def environment(backend: str | None = None, model=None, threads: int | None = None) -> dict:
    env = {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "host": platform.node(), "os": platform.platform(), "machine": platform.machine(),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(),
           "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "clocks": cpu_clocks(), "load_average": list(os.getloadavg()),
           "versions": {"python": platform.python_version(), "pimoe": pimoe.__version__,
                        "numpy": np.__version__, "numba": _version("numba"), "gguf": _version("gguf"),
                        "matplotlib": _version("matplotlib")},
           "git": git_commit()}
    if threads is not None:
        env["threads"] = threads
    if backend is not None:
        env["backend"] = backend
    if model is not None:
        env["model"] = model_info(model)
    return env


# -- writing and reading ---------------------------------------------------------------------------------

def command_line() -> str:
    """The command that is running, as a person would type it: 'pimoe compare -p 4', 'python -m
    pimoe.bench.calibration --no-emulate'."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if len(sys.argv) >= 1 and Path(sys.argv[0]).name == "pimoe":
        return " ".join(["pimoe", *sys.argv[1:]])
    if "-m" in argv[1:]:
        i = argv.index("-m", 1)
        mod = argv[i + 1] if i + 1 < len(argv) else ""
        return " ".join(["pimoe" if mod == "pimoe" else f"python -m {mod}", *argv[i + 2:]])
    return " ".join(["python", *argv[1:]])


def _create_exclusive(results_dir: Path, stem: str, ext: str):
    """Open results_dir/stem[-N].ext for writing, never an existing file. Returns (path, handle)."""
    n = 0
    while True:
        name = f"{stem}.{ext}" if n == 0 else f"{stem}-{n}.{ext}"
        path = results_dir / name
        try:
            return path, open(path, "x", newline="" if ext == "csv" else None)
        except FileExistsError:
            n += 1
            if n > 9999:
                raise PimoeError(f"{results_dir}: cannot find a free name for {stem}.{ext}") from None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# (path, record as written) of every write_record call while a capture_records() block is open
_captured: list[list] = []


class capture_records:
    """`with capture_records() as written:` collects (json path, record as written) of every record written
    inside the block; `pimoe bench -o json` prints the one a benchmark wrote."""

    def __enter__(self) -> list:
        self.written: list = []
        _captured.append(self.written)
        return self.written

    def __exit__(self, *exc) -> None:
        _captured.remove(self.written)


def write_record(record: dict, results_dir="results", kind: str | None = None,
                 table: list[dict] | None = None) -> tuple[Path, Path | None]:
    """Write record (plus `table` rows as CSV) under results_dir with a new timestamped name.

    Returns (json path, csv path or None). The record gains 'schema', 'kind' and 'record_file', and
    'command' and 'environment' when it has none."""
    from pimoe.output import csv_cell

    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PimoeError(f"cannot create the results directory {results_dir}: {exc.strerror or exc}") from None
    kind = kind or record.get("kind") or "record"
    stem = f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path, fh = _create_exclusive(results_dir, stem, "json")
    csv_path = None
    with fh:
        rec = dict(record, schema=SCHEMA, kind=kind, record_file=path.name)
        rec.setdefault("command", command_line())
        if "environment" not in rec:
            rec["environment"] = environment()
        if table:
            rec["table"] = table
            csv_path, cfh = _create_exclusive(results_dir, path.stem, "csv")
            with cfh:
                columns: list[str] = []
                for row in table:
                    columns += [c for c in row if c not in columns]
                w = csv.DictWriter(cfh, fieldnames=columns)
                w.writeheader()
                for row in table:
                    w.writerow({k: csv_cell(v) for k, v in row.items()})
            rec["table_csv"] = csv_path.name
        rec = _jsonable(rec)
        json.dump(rec, fh, indent=1)
        fh.write("\n")
    for written in _captured:
        written.append((path, rec))
    return path, csv_path


def backend_label(backend: str, driver: str | None = None) -> str:
    """A run's backend as compare's tables and plots print it: qpu (and hybrid) say whether they ran on
    hardware, the hardware route over the virtual V3D device (whose jobs the emulator runs), or the emulator.
    A compare record's run has the same two fields: backend_label(run["backend"], run.get("driver"))."""
    if backend in ("qpu", "hybrid"):
        return f"{backend} ({ {'hw': 'hw', 'virtual': 'virtual V3D'}.get(driver, 'emulator') })"
    return backend


def read_record(path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except OSError as exc:
        raise PimoeError(f"{path}: cannot read the record: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise PimoeError(f"{path}: not a JSON record (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise PimoeError(f"{path}: not a JSON record (byte {exc.start} is not UTF-8)") from None
    if not isinstance(rec, dict) or "kind" not in rec:
        raise PimoeError(f"{path}: not a pimoe results record (no 'kind' field)")
    rec.setdefault("record_file", path.name)
    return rec
