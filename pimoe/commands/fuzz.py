"""`pimoe fuzz gguf|cli|qpu|all --seconds N`: long fuzzing runs of pimoe's inputs; writes a record.

GGUF files (five seed models, every mutation kind in pimoe.fuzz.gguf_mutate) go through `pimoe info`,
`pimoe.load_model` + a forward pass and `pimoe run`; command lines through `pimoe.cli.main`; random and
mutated QPU programs through the emulator. Each case runs in a worker process with a memory cap and a
time limit. The record (results/fuzz-<time>.json) has the cases run per kind and every finding with the
input that caused it: a traceback, an unclear error, a signal, a hang, a memory blow-up, a file written
next to an input, or (QPU, marked [emu]) a write outside the program's buffers that did not fault.
"""

from __future__ import annotations

HELP = "fuzz GGUF files, command lines and QPU programs (for --seconds); findings go to a results record"

KINDS = ("gguf", "cli", "qpu")


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=KINDS + ("all",), help="what to fuzz (all: the three, time split evenly)")
    parser.add_argument("--seconds", type=float, default=60.0, metavar="N", help="total run time (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0: the same cases each run)")
    parser.add_argument("--memory-cap", type=float, default=6.0, metavar="GiB",
                        help="address-space cap of the worker process (default 6 GiB)")
    parser.add_argument("--case-timeout", type=float, default=120.0, metavar="S",
                        help="a case that runs longer is a hang (default 120 s)")
    parser.add_argument("--out", default="results", help="directory for the record (default results/)")


def main(args) -> int:
    import math
    import time
    from pathlib import Path

    from pimoe.commands.run import cache_dir
    from pimoe.errors import PimoeError
    from pimoe.fuzz.engine import fuzz
    from pimoe.records import write_record

    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise PimoeError(f"--seconds must be a positive number, got {args.seconds}")
    if not (math.isfinite(args.memory_cap) and args.memory_cap >= 1):
        raise PimoeError(f"--memory-cap must be at least 1 (GiB), got {args.memory_cap}")
    if not (math.isfinite(args.case_timeout) and args.case_timeout > 0):
        raise PimoeError(f"--case-timeout must be positive, got {args.case_timeout}")
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    t0 = time.time()
    rec = fuzz(kinds, args.seconds, seed=args.seed, cache=cache_dir() / "fuzz",
               memory_cap=int(args.memory_cap * 2**30), timeout_s=args.case_timeout)
    rec["wall_s"] = time.time() - t0
    rec["command"] = "pimoe fuzz " + " ".join([args.kind, "--seconds", f"{args.seconds:g}", "--seed", str(args.seed)])
    path, _ = write_record(rec, Path(args.out), kind="fuzz")
    total = sum(k["cases"] for k in rec["by_kind"].values())
    print(f"{total} cases in {rec['wall_s']:.0f} s, {rec['n_findings']} findings; record {path}")
    return 1 if rec["n_findings"] else 0
