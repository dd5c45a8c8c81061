"""Predicted Raspberry Pi 4 CPU time (4 x Cortex-A72 at 1.5 GHz) of work that reads bytes and does FLOPs.

    from pimoe.cpumodel import predict_cpu
    p = predict_cpu(weight_bytes=1.2e9, flops=2.2e9, threads=4)   # one decode step of a ~1 B model
    p.seconds, p.bound, p.label    # 0.36, "memory", "predicted (Pi 4 CPU model)"

A roofline: time = max(bytes / bandwidth, flops / FLOP rate). Always PREDICTED. The ceilings are published
Pi 4 figures (pimoe.pi4, with their sources), except the fp32 rate, which is an assumption stated below:

- bandwidth "decode" (default): 3.35 GB/s, the middle of the 3.2-3.5 GB/s that published Pi 4-class
  llama.cpp decode rates imply (Pi 400 llama3.2:3b 1.60 tok/s, geerlingguy/ai-benchmarks; TinyLlama
  Q8_0 ~3 tok/s, justine.lol/matmul): what a real decode step gets from DRAM, dequantization included.
- bandwidth "stream": STREAM copy 5.53 GB/s (1 thread; triad 4.84), sci-pi.org.uk: the raw ceiling.
  Assumed not to grow with threads (no multi-thread Pi 4 STREAM figure in the sources; one A72 core
  already streams ~43 % of the 12.8 GB/s on paper).
- FLOPs: HPL 11.9 GFLOPS fp64 on 4 cores (geerlingguy/top500-benchmark). fp32 ASSUMED 2x that,
  23.8 GFLOPS: a 128-bit NEON register holds 4 fp32 vs 2 fp64 lanes and the A72 issues the same number of
  FMAs per cycle for either; split evenly over the cores (threads / 4 of it). For comparison, numpy's
  1024^3 sgemm on a Pi 4 reached 3.078 GFLOP/s (py-videocore6 README): the ceiling is not what untuned
  code gets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pimoe import pi4
from pimoe.errors import PimoeError
from pimoe.qpu.timing import Prediction

CPU_PREDICTED_LABEL = "predicted (Pi 4 CPU model)"


@dataclass(frozen=True)
class CPUParams:
    cores: int = pi4.CPU_CORES
    decode_bandwidth: float = pi4.CPU_DECODE_BANDWIDTH          # bytes/s, LLM decode implied, see module docstring
    stream_copy_bandwidth: float = pi4.STREAM_COPY_BANDWIDTH    # bytes/s, STREAM copy, 1 thread
    stream_triad_bandwidth: float = pi4.STREAM_TRIAD_BANDWIDTH
    fp64_flops: float = pi4.CPU_HPL_FP64_FLOPS                  # HPL, 4 cores
    fp32_flops: float = 2 * pi4.CPU_HPL_FP64_FLOPS              # ASSUMED 2 x fp64 (NEON lanes)

    def bandwidth(self, kind: str) -> float:
        table = {"decode": self.decode_bandwidth, "stream": self.stream_copy_bandwidth,
                 "triad": self.stream_triad_bandwidth}
        if kind not in table:
            raise PimoeError(f"CPU bandwidth kind {kind!r}: choose one of {', '.join(table)}")
        return table[kind]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


PI4_CPU = CPUParams()


@dataclass(frozen=True)
class CPUPrediction(Prediction):
    """The timing model's record of a predicted time (seconds, bound "memory" | "compute", breakdown),
    labelled as the CPU model's."""

    label: str = CPU_PREDICTED_LABEL


def predict_cpu(weight_bytes: float, flops: float, *, threads: int = 4, bandwidth: str = "decode",
                precision: str = "fp32", params: CPUParams = PI4_CPU) -> CPUPrediction:
    """Predicted Pi 4 CPU seconds for work that reads `weight_bytes` from DRAM and does `flops`."""
    if weight_bytes < 0 or flops < 0:
        raise PimoeError(f"predict_cpu: bytes {weight_bytes} and flops {flops} must be non-negative")
    if not 1 <= int(threads) <= params.cores:
        raise PimoeError(f"predict_cpu: threads={threads}; the Pi 4 has {params.cores} cores")
    peak = {"fp32": params.fp32_flops, "fp64": params.fp64_flops}.get(precision)
    if peak is None:
        raise PimoeError(f"predict_cpu: precision {precision!r}: fp32 or fp64")
    mem = weight_bytes / params.bandwidth(bandwidth)
    comp = flops / (peak * int(threads) / params.cores)
    return CPUPrediction(seconds=max(mem, comp), bound="memory" if mem >= comp else "compute",
                         breakdown={"memory": mem, "compute": comp})


def predict_decode_step(weight_bytes: float, flops: float, *, threads: int = 4,
                        params: CPUParams = PI4_CPU) -> CPUPrediction:
    """One batch-1 decode step (all weights read once): predict_cpu with the decode bandwidth."""
    return predict_cpu(weight_bytes, flops, threads=threads, bandwidth="decode", params=params)
