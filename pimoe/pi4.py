"""Every published Raspberry Pi 4 figure pimoe uses, once, each with its source. Nothing here is measured
by pimoe; every other module (the CPU and QPU timing models, the benchmarks, `pimoe info`, the notebooks)
imports these names instead of writing the numbers again.

Units: bytes/s, FLOP/s, Hz, seconds (SI: 1 GB/s = 1e9 bytes/s, py-videocore6's MB/s = 1e6 bytes/s).
"""

from __future__ import annotations

# -- memory ----------------------------------------------------------------------------------------------
# Raspberry Pi 4 Model B product brief: 1, 2, 4 or 8 GB of LPDDR4-3200 (the parts are binary gigabytes).
# pimoe headline asks which models fit the two largest boards.
RAM_BYTES = {"4 GB": 4 << 30, "8 GB": 8 << 30}
# BCM2711 DRAM on paper: LPDDR4-3200 on a 32-bit bus = 3200e6 transfers/s x 4 bytes (datasheet arithmetic;
# Raspberry Pi 4 product brief: LPDDR4-3200 SDRAM).
DRAM_PEAK_BANDWIDTH = 3200e6 * 4                  # 12.8 GB/s

# STREAM on a Pi 4, 1 thread (sci-pi.org.uk, "STREAM benchmark" page for the Raspberry Pi 4).
STREAM_COPY_BANDWIDTH = 5.53e9
STREAM_TRIAD_BANDWIDTH = 4.84e9

# What a real llama.cpp decode step gets from DRAM on a Pi 4-class board, dequantization included: published
# decode rates x bytes per token imply 3.2-3.5 GB/s (Pi 400 llama3.2:3b Q4_K_M 1.60 tok/s,
# geerlingguy/ai-benchmarks; TinyLlama Q8_0 ~3 tok/s, justine.lol/matmul). pimoe uses the middle of the range.
CPU_DECODE_BANDWIDTH_RANGE = (3.2e9, 3.5e9)
CPU_DECODE_BANDWIDTH = 3.35e9

# -- CPU: 4 x Cortex-A72 ---------------------------------------------------------------------------------
CPU_CORES = 4                                     # Raspberry Pi 4 product brief: quad-core Cortex-A72 @ 1.5 GHz
CPU_CLOCK_HZ = 1.5e9
CPU_HPL_FP64_FLOPS = 11.9e9                       # HPL on 4 cores, geerlingguy/top500-benchmark
# numpy's 1024^3 sgemm on a Pi 4: 0.6986 s, 3.078 GFLOP/s (py-videocore6 README, next to its QPU sgemm)
CPU_NUMPY_SGEMM_1024_SECONDS = 0.6986

# -- GPU: VideoCore VI (V3D 4.2) -------------------------------------------------------------------------
# py-videocore6 README (Idein): V3D at 500 MHz with force_turbo=1 (pctr_gpu_clock 500.53 MHz); peak
# 500 MHz x 2 slices x 4 QPUs x 4 physical lanes x 2 ops (add + mul ALU) = 32 GFLOPS.
QPU_CLOCK_HZ = 500e6
QPU_SLICES = 2
QPUS_PER_SLICE = 4
QPU_COUNT = QPU_SLICES * QPUS_PER_SLICE
QPU_PHYSICAL_LANES = 4                            # a 16-lane instruction takes 4 cycles
QPU_PEAK_FLOPS = QPU_CLOCK_HZ * QPU_COUNT * QPU_PHYSICAL_LANES * 2

# py-videocore6 README's Pi 4 measurements (the anchors pimoe.qpu.timing is fitted to; the exact printed
# seconds and sizes are in pimoe/bench/calibration/published.json, which tests check against these).
PYVC6_SUMMATION_BANDWIDTH = 7241.514141947083e6   # examples/summation.py, read 128 MiB
PYVC6_MEMSET_BANDWIDTH = 3751.5408215319367e6     # examples/memset.py, write 64 MiB
PYVC6_SCOPY_BANDWIDTH = 2423.761776625857e6       # examples/scopy.py, read + write 64 MiB each
PYVC6_SGEMM_1024_SECONDS = 0.5546                 # examples/sgemm.py, 1024^3 on 8 QPUs: 3.878 GFLOP/s

# The TMU round trip Mesa's V3D compiler assumes (the only independent figure found; no measured V3D 4.2
# latency is published -- py-videocore6's benchmarks/test_tmu_performance.py measures it but prints no
# number): Mesa src/broadcom/compiler/qpu_schedule.c, magic_waddr_latency(), returns 100 for a TMU write
# followed by an instruction waiting on the TMU (ldtmu), in the scheduler's time unit of one instruction
# ("Apply some huge latency between texture fetch requests and getting their results back"; its own FIXME
# calls the estimate "pretty bogus": a scheduling heuristic, not a measurement).
# https://gitlab.freedesktop.org/mesa/mesa/-/blob/main/src/broadcom/compiler/qpu_schedule.c
MESA_V3D_TMU_LATENCY_INSTRUCTIONS = 100
