"""`pimoe bench TARGET`: the microbenchmarks, one module per target.

Each target module exposes add_arguments(parser) and main(args) -> int, like a subcommand.
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
        p.set_defaults(_target_module=module)


def main(args) -> int:
    return int(args._target_module.main(args) or 0)
