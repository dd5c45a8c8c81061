"""`pimoe bench TARGET`: the microbenchmarks, one module per target.

Each target module exposes add_arguments(parser) and main(args) -> int, like a subcommand.

`-o md|csv|json|jsonl` works on every target: md is the target's own printout; the other formats print the
record the run wrote (json: the whole record, exactly as written; csv/jsonl: its table rows) and nothing else
on stdout, the target's printout going to stderr.
"""

from __future__ import annotations

import importlib

HELP = "microbenchmarks: the QPU emulator's speed, the CPU kernels against llama.cpp, …"

# target name -> (module, one-line help)
TARGETS: dict[str, tuple[str, str]] = {
    "emulator": ("pimoe.bench.emulator", "QPU emulator: instructions emulated per second"),
    "kernels": ("pimoe.bench.kernels", "QPU expert kernels: instructions/weight, bytes/token, predicted Pi 4 GB/s"),
    "cpu": ("pimoe.bench.cpu", "CPU kernels vs llama.cpp: decode/prompt t/s, GB/s, GEMV microbench"),
    "hybrid": ("pimoe.bench.hybrid", "CPU+QPU co-execution: predicted Pi 4 decode vs CPU-only per DRAM scenario"),
    "placement": ("pimoe.bench.placement", "expert placements under a memory budget vs the ideal split"),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module_name, help_text) in TARGETS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        if not any(a.dest == "output_format" for a in p._actions):
            from pimoe.output import add_output_argument

            add_output_argument(p)
        p.set_defaults(_target_module=module)


def record_rows(rec: dict) -> list[dict]:
    """The rows csv/jsonl print for a record: its table, else its first list of row objects, else itself."""
    if rec.get("table"):
        return rec["table"]
    for v in rec.values():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            return v
    return [rec]


def main(args) -> int:
    import sys
    from contextlib import redirect_stdout

    from pimoe.errors import PimoeError
    from pimoe.output import emit
    from pimoe.records import capture_records

    fmt = getattr(args, "output_format", "md")
    if fmt == "md":
        return int(args._target_module.main(args) or 0)
    if getattr(args, "no_record", False):
        raise PimoeError(f"-o {fmt} prints the record the benchmark writes: drop --no-record")
    with capture_records() as written, redirect_stdout(sys.stderr):
        rc = int(args._target_module.main(args) or 0)
    if not written:
        raise PimoeError(f"bench {args.target}: no record was written, nothing to print as {fmt}")
    _, rec = written[-1]
    emit(fmt, record_rows(rec), rec)
    return rc
