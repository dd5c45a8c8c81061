"""pimoe.pi4: the published Pi 4 figures, each written once; the other modules read them from there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pimoe import cpumodel, pi4
from pimoe.bench import calibration
from pimoe.qpu import timing

ROOT = Path(__file__).resolve().parent.parent


def test_arithmetic_behind_the_figures():
    assert pi4.DRAM_PEAK_BANDWIDTH == pytest.approx(12.8e9)          # 3200 MT/s x 32 bit
    lo, hi = pi4.CPU_DECODE_BANDWIDTH_RANGE
    assert lo < pi4.CPU_DECODE_BANDWIDTH < hi
    assert pi4.QPU_PEAK_FLOPS == pytest.approx(32e9)                 # py-videocore6's peak formula
    # a memory-bound ceiling cannot exceed the DRAM on paper
    assert pi4.CPU_DECODE_BANDWIDTH < pi4.STREAM_TRIAD_BANDWIDTH < pi4.STREAM_COPY_BANDWIDTH < pi4.DRAM_PEAK_BANDWIDTH
    assert pi4.PYVC6_SUMMATION_BANDWIDTH < pi4.DRAM_PEAK_BANDWIDTH


def test_the_calibration_data_and_the_module_agree():
    """published.json (times and sizes, as py-videocore6's README prints them) gives the module's figures."""
    k = calibration.load_published()["kernels"]
    assert k["summation"]["bytes_read"] / k["summation"]["seconds"] == pytest.approx(pi4.PYVC6_SUMMATION_BANDWIDTH)
    assert k["memset"]["bytes_written"] / k["memset"]["seconds"] == pytest.approx(pi4.PYVC6_MEMSET_BANDWIDTH)
    assert k["scopy"]["bytes_read"] / k["scopy"]["seconds"] == pytest.approx(pi4.PYVC6_SCOPY_BANDWIDTH)
    assert k["sgemm"]["seconds"] == pi4.PYVC6_SGEMM_1024_SECONDS


def test_the_models_read_the_module():
    assert cpumodel.PI4_CPU.decode_bandwidth == pi4.CPU_DECODE_BANDWIDTH
    assert cpumodel.PI4_CPU.stream_copy_bandwidth == pi4.STREAM_COPY_BANDWIDTH
    assert cpumodel.PI4_CPU.fp64_flops == pi4.CPU_HPL_FP64_FLOPS
    assert timing.PI4.clock_hz == pi4.QPU_CLOCK_HZ and timing.PI4.n_qpus == pi4.QPU_COUNT


FIGURES = {v for k, v in vars(pi4).items() if k.isupper() and isinstance(v, float)}
FIGURES |= {v / s for v in FIGURES for s in (1e6, 1e9)}          # the same figure written in MB/s, GB/s, ...
# small or round numbers (0.5 GHz, 1.5 GHz, 500 MHz written as 500.0) are too common to mean a Pi 4 figure
FIGURES = {v for v in FIGURES if v >= 2 and not (v == round(v) and v < 1e4)}


def _float_literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            yield node.lineno, node.value


def test_no_other_module_writes_a_pi4_figure():
    found = []
    for pkg in ("pimoe", "qpu_kernels"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "pi4.py":
                continue
            for line, v in _float_literals(path):
                if any(v == pytest.approx(f, rel=1e-9) for f in FIGURES):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {v}")
    assert found == [], "write these as pimoe.pi4 names: " + ", ".join(found)
