"""The layering of the source tree: each layer imports only downwards (DESIGN.md, issue 11).

Read from the source (every import statement, function-local ones included), not from sys.modules, so a
lazy import cannot hide an upward dependency. Layers, low to high:

    pimoe.errors, pimoe.pi4, pimoe.ops        leaf modules: no other pimoe module
    pimoe.kernels, config, quant, gguf_file, tokenizer     numerics and the file format
    pimoe.qpu          the QPU toolchain (ISA, assembler, disassembler, emulator, driver, timing)
    qpu_kernels        QPU kernels: the toolchain (pimoe.qpu) and the numerics above it, nothing higher
    pimoe.profile      a generic region timer
    model, backends    the forward pass and where its experts run
    prediction, bench, compare, records, synth, plots      measurements and predictions
    cli, commands, notebooks
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pimoe", "qpu_kernels")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """The pimoe / qpu_kernels modules a file imports (`from pimoe import quant` counts as pimoe.quant)."""
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}"))
    return {m for m in out if m.split(".")[0] in PACKAGES and m != "pimoe"}


GRAPH = {_module_name(p): _imports(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(importers, forbidden, allowed=()) -> list[str]:
    return sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _under(m, importers)
                  for d in deps if _under(d, forbidden) and not _under(d, allowed))


HIGH = ("pimoe.model", "pimoe.backends", "pimoe.profile", "pimoe.prediction", "pimoe.bench", "pimoe.compare",
        "pimoe.records", "pimoe.synth", "pimoe.plots", "pimoe.cli", "pimoe.commands", "pimoe.cpumodel")


def test_the_graph_sees_the_tree():
    # a check that reads nothing passes everything: the known edges must be there
    assert "pimoe.qpu.isa" in GRAPH["pimoe.qpu.disasm"]
    assert "pimoe.quant" in GRAPH["pimoe.gguf_file"]
    assert "pimoe.ops" in GRAPH["pimoe.quant"]                   # `from pimoe.ops import ...`
    assert "pimoe.prediction" in GRAPH["pimoe.compare"]          # `from pimoe import prediction`
    assert "qpu_kernels.emit" in GRAPH["qpu_kernels.summation"]


@pytest.mark.parametrize("leaf", ["pimoe.errors", "pimoe.pi4", "pimoe.ops"])
def test_leaf_modules_import_no_pimoe_module(leaf):
    assert GRAPH[leaf] <= {"pimoe.errors"}, GRAPH[leaf]


def test_the_qpu_toolchain_imports_no_kernel_benchmark_or_higher_layer():
    assert _violations(["pimoe.qpu"], ["qpu_kernels", "pimoe"],
                       allowed=["pimoe.qpu", "pimoe.errors", "pimoe.pi4"]) == []


def test_kernels_import_only_the_toolchain_and_the_numerics():
    assert _violations(["qpu_kernels"], ["pimoe"] + list(HIGH),
                       allowed=["pimoe.qpu", "pimoe.errors", "pimoe.pi4", "pimoe.ops", "pimoe.kernels",
                                "pimoe.quant"]) == []


def test_numerics_and_file_format_import_nothing_above_them():
    low = ["pimoe.kernels", "pimoe.config", "pimoe.quant", "pimoe.gguf_file", "pimoe.tokenizer"]
    assert _violations(low, ["pimoe.qpu", "qpu_kernels"] + list(HIGH)) == []


def test_the_profiler_is_a_generic_timer():
    assert _violations(["pimoe.profile"], ["pimoe", "qpu_kernels"], allowed=["pimoe.profile", "pimoe.errors"]) == []


def test_the_model_knows_no_particular_backend_and_nothing_above_it():
    # it looks its backend up by name in the registry (pimoe.backends), never imports one
    assert _violations(["pimoe.model"], ["pimoe.backends.cpu", "pimoe.backends.qpu", "pimoe.qpu", "qpu_kernels",
                                         "pimoe.bench", "pimoe.compare", "pimoe.prediction", "pimoe.commands",
                                         "pimoe.cli"]) == []


def test_only_the_cli_imports_the_commands_and_nothing_below_imports_the_benchmarks():
    # pimoe.fuzz drives the CLI as a black box (bad command lines through pimoe.cli.main): it sits above it
    others = [m for m in GRAPH if m != "pimoe" and not _under(m, ["pimoe.cli", "pimoe.commands", "pimoe.__main__",
                                                                   "pimoe.fuzz"])]
    assert _violations(others, ["pimoe.cli", "pimoe.commands"]) == []
    below = ["pimoe.qpu", "qpu_kernels", "pimoe.model", "pimoe.backends", "pimoe.profile", "pimoe.prediction",
             "pimoe.quant", "pimoe.kernels"]
    assert _violations(below, ["pimoe.bench"]) == []


def test_the_qpu_timing_model_does_not_carry_the_cpu_model():
    assert "pimoe.cpumodel" not in GRAPH["pimoe.qpu.timing"]


def test_building_the_cli_parser_starts_neither_numba_nor_the_model():
    """The reason the benchmark modules and synth import their heavy parts inside functions: `pimoe --help`
    builds every subcommand's parser (and `pimoe bench`'s targets'), so those modules are imported then."""
    code = ("import sys; from pimoe.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numba', 'gguf', 'pimoe.qpu.emulator', 'pimoe.model', 'pimoe.quant') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
