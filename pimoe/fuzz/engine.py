"""The fuzzing engine: hypothesis draws the cases, a capped worker process runs them.

    pimoe fuzz gguf|cli|qpu|all --seconds N      (pimoe.commands.fuzz)

Cases are drawn by hypothesis (`@given` over seed files, mutation kinds and mutation seeds, or over
command lines, or over QPU programs), with its database off and a fixed seed, so the same command gives
the same cases. hypothesis is the generator only: each case is sent to a worker process
(`python -m pimoe.fuzz.worker`) that has a memory cap (RLIMIT_AS) and a per-case time limit; a case that
kills the worker (signal), outlives the limit (hang) or hits the cap (MemoryError) is a finding like a
traceback is, and a fresh worker takes the next case. Every finding is kept (the run does not stop at
the first), and the run's record (cases run per kind, findings with the input that caused them) goes to
results/fuzz-<time>.json.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASE_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 900.0
MEMORY_CAP = 6 << 30

# seed GGUF files: (name, make_model kwargs); small, every arch, block and float types
GGUF_SEEDS = {
    "qwen3moe-F32": dict(arch="qwen3moe", qtype="F32"),
    "olmoe-Q4_K": dict(arch="olmoe", qtype="Q4_K"),
    "qwen2moe-Q8_0": dict(arch="qwen2moe", qtype="Q8_0"),
    "llama-Q6_K": dict(arch="llama", qtype="Q6_K"),
    "qwen3moe-Q4_0": dict(arch="qwen3moe", qtype="Q4_0"),
}


def make_seeds(root: Path, names=None) -> dict[str, Path]:
    from pimoe.synth import make_model

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, kw in GGUF_SEEDS.items():
        if names is not None and name not in names:
            continue
        path = root / f"{name}.gguf"
        if not path.exists():
            tmp = root / f"{name}.gguf.partial"
            make_model(tmp, n_layers=2, seed=1, **kw)
            tmp.replace(path)
        out[name] = path
    return out


# ------------------------------------------------------------------------------------------------
# the worker process

class Worker:
    """`python -m pimoe.fuzz.worker`: JSON cases in, JSON outcome lists out; restarted after a death."""

    def __init__(self, memory_cap: int = MEMORY_CAP, timeout_s: float = CASE_TIMEOUT_S, warmup_model=None):
        self.memory_cap, self.timeout_s, self.warmup_model = memory_cap, timeout_s, warmup_model
        self.workdir = Path(tempfile.mkdtemp(prefix="pimoe-fuzz-"))
        self.proc = None

    def _start(self):
        env = dict(os.environ, PIMOE_FUZZ_MEMORY_CAP=str(self.memory_cap), PYTHONUNBUFFERED="1")
        if self.warmup_model:
            env["PIMOE_FUZZ_WARMUP_MODEL"] = str(self.warmup_model)
        self.proc = subprocess.Popen([sys.executable, "-m", "pimoe.fuzz.worker", str(self.workdir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, text=True)
        # imports and numba compilation are not the case's time: wait for the worker's "ready"
        if not select.select([self.proc.stdout], [], [], STARTUP_TIMEOUT_S)[0] or \
                self.proc.stdout.readline().strip() != '"ready"':
            from pimoe.errors import PimoeError

            self.proc.kill()
            raise PimoeError(f"the fuzz worker did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def run(self, case: dict) -> list[dict]:
        from pimoe.llamaref import describe_exit

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        ready = select.select([self.proc.stdout], [], [], self.timeout_s)[0]
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return [{"target": case["kind"], "status": "bug", "detail": f"hang: no answer in {self.timeout_s:.0f} s"}]
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return [{"target": case["kind"], "status": "bug", "detail": f"worker {describe_exit(rc)}"}]
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)


def execute(case: dict, workdir: Path) -> list[dict]:
    """Run one case in this process (the worker's body; the tests call it directly too)."""
    from pimoe.fuzz import targets

    kind = case["kind"]
    if kind == "gguf":
        from pimoe.fuzz.gguf_mutate import GGUFParts, mutate

        parts = GGUFParts.read(case["seed_path"])
        data, what = mutate(parts, case["mutation"], np.random.default_rng(case["rng"]))
        d = Path(workdir) / f"case-{os.getpid()}"
        d.mkdir(exist_ok=True)
        path = d / "m.gguf"
        path.write_bytes(data)
        try:
            out = targets.run_gguf(str(path))
        finally:
            for f in d.iterdir():
                f.unlink()
        for o in out:
            o["mutation"] = what
        return out
    if kind == "cli":
        return targets.run_cli(case["argv"])
    if kind == "qpu":
        from pimoe.fuzz.qpu_programs import program

        return targets.run_qpu(program(case["seed"], case["mutation"], case["rng"]))
    if kind == "selftest":               # the engine's own test: die, hang or blow up on purpose
        import signal
        import time as _time

        if case["what"] == "signal":
            os.kill(os.getpid(), getattr(signal, case["signal"]))
        if case["what"] == "hang":
            _time.sleep(3600)
        if case["what"] == "memory":
            blob = bytearray(case["bytes"])
            return [{"target": "selftest", "status": "ok", "detail": f"{len(blob)} bytes"}]
        return [{"target": "selftest", "status": "ok", "detail": ""}]
    raise ValueError(f"unknown case kind {kind!r}")


# ------------------------------------------------------------------------------------------------
# hypothesis strategies for the three kinds

def strategies(kind: str, seeds: dict[str, Path] | None = None, workdir: Path | None = None):
    from hypothesis import strategies as st

    if kind == "gguf":
        from pimoe.fuzz.gguf_mutate import MUTATIONS

        return st.fixed_dictionaries({
            "kind": st.just("gguf"), "seed_path": st.sampled_from(sorted(str(p) for p in seeds.values())),
            "mutation": st.sampled_from(sorted(MUTATIONS)), "rng": st.integers(0, 2**32 - 1)})
    if kind == "cli":
        from pimoe.fuzz.cli_lines import command_lines

        return command_lines(seeds, workdir)
    if kind == "qpu":
        from pimoe.fuzz.qpu_programs import MUTATIONS as QM, SEEDS as QS

        return st.fixed_dictionaries({
            "kind": st.just("qpu"), "seed": st.sampled_from(sorted(QS)), "mutation": st.sampled_from(sorted(QM)),
            "rng": st.integers(0, 2**32 - 1)})
    raise ValueError(kind)


def fuzz(kinds: list[str], seconds: float, *, seed: int = 0, cache: Path, progress=print,
         memory_cap: int = MEMORY_CAP, timeout_s: float = CASE_TIMEOUT_S) -> dict:
    """Run hypothesis-drawn cases of each kind for about seconds/len(kinds) each; -> the record."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    seeds = make_seeds(cache / "seeds")
    worker = Worker(memory_cap, timeout_s, warmup_model=seeds.get("qwen3moe-F32"))
    record = {"kind": "fuzz", "kinds": kinds, "seconds": seconds, "seed": seed, "seeds": sorted(seeds),
              "memory_cap_bytes": memory_cap, "case_timeout_s": timeout_s, "by_kind": {}, "findings": []}
    try:
        for kind in kinds:
            stats = {"cases": 0, "outcomes": {}, "by_mutation": {}}
            record["by_kind"][kind] = stats
            deadline = time.monotonic() + seconds / len(kinds)
            seen: set[tuple] = set()

            class _Stop(Exception):
                pass

            @hypothesis_seed(seed * 1000 + len(record["by_kind"]))
            @settings(max_examples=10**9, deadline=None, database=None, derandomize=False,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(strategies(kind, seeds, worker.workdir))
            def one(case):
                if time.monotonic() > deadline:
                    raise _Stop
                outcomes = worker.run(case)
                stats["cases"] += 1
                label = case.get("mutation") or (case.get("argv") or ["?"])[0]
                m = stats["by_mutation"].setdefault(label, {})
                for o in outcomes:
                    stats["outcomes"][o["status"]] = stats["outcomes"].get(o["status"], 0) + 1
                    m[o["status"]] = m.get(o["status"], 0) + 1
                    if o["status"] == "bug":
                        key = (kind, o["target"], o["detail"].split(":")[0][:80], label)
                        if key not in seen:
                            seen.add(key)
                            record["findings"].append({"kind": kind, "case": case, **o})
                            progress(f"  finding [{kind}/{o['target']}] {label}: {o['detail'][:160]}")

            try:
                one()
            except _Stop:
                pass
            progress(f"{kind}: {stats['cases']} cases, outcomes {stats['outcomes']}")
    finally:
        worker.close()
    record["n_findings"] = len(record["findings"])
    return record
