"""The qpu backend: routed expert FFNs as QPU kernels (qpu_kernels.expert_ffn), router and attention on the CPU.

At load every layer's gate/up/down expert tensors are repacked once into QPU memory in the kernels'
layout (qpu_kernels.qpu_layout: lossless, no dequantized CPU copy is kept); each expert_ffn call for a
decode token is two dispatches per layer (gate+up+SiLU, then down + the weighted sum over the k experts;
chained in one, the down phase would read stale h on the Pi: qpu_kernels.expert_ffn), a prompt two per
tile width. The driver comes
from pimoe.qpu.open_driver: "hw" the VideoCore VI through the v3d kernel driver on a Pi 4, "virtual" the
same hardware route over the virtual V3D device (pimoe.qpu.vdev, jobs run by the emulator), "emu" the
emulator called directly, "auto" the GPU when present else "emu".

The V3D buffers are shmem pages behind the GPU's MMU (not CMA), pinned while they exist, in one 32-bit
GPU address space; the memory the model needs is worked out before anything is allocated
(`qpu_memory_plan`) and checked against those limits (pimoe.backends.qpu_memory): loading stops with a
PimoeError giving the numbers and the way out when it does not fit (`memory_limit=` caps the RAM).

    load_model(path, backend="qpu", qpu="emu", threads=8, memory_limit=None)
    load_model(path, backend="qpu-reference")   # the same arithmetic in numpy (f32 activations, no
                                                 # activation quantization): what the QPU must equal
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pimoe.backends.base import Backend
from pimoe.errors import PimoeError
from pimoe.ops import mix_experts, swiglu

CODE_AREA = 4 << 20                 # room for every kernel variant a model uses
MAX_TOKENS_PER_CALL = 64            # prompt chunks per expert_ffn call (bounds the scratch buffer)


@dataclass(frozen=True)
class QPUMemoryPlan:
    weights: int       # bytes of all layers' expert tensors in QPU layout
    scratch: int       # x/h streams, tables, outputs of one call
    code: int

    @property
    def total(self) -> int:
        return self.weights + self.scratch + self.code

    def describe(self) -> str:
        mib = 1 << 20
        return (f"{self.total / mib:.1f} MiB of QPU memory ({self.weights / mib:.1f} MiB expert weights in QPU "
                f"layout, {self.scratch / mib:.1f} MiB scratch, {self.code / mib:.1f} MiB code)")


def qpu_memory_plan(gguf_file, config, experts, on_qpu=None, extra_weights: int = 0) -> QPUMemoryPlan:
    """on_qpu: bool [L, E], the experts the QPU copy holds (None: all); extra_weights: bytes of other
    matrices in QPU layout (the hybrid backend's share of the dense rows)."""
    from qpu_kernels.expert_ffn import ExpertFFN, QPUMatrices

    weights = int(extra_weights)
    for i, lw in enumerate(experts):
        for t in (lw.gate, lw.up, lw.down):
            weights += QPUMatrices.nbytes_for(t, None if on_qpu is None else int(np.sum(on_qpu[i])))
    scratch = ExpertFFN.scratch_bytes(config.hidden, config.expert_ff, config.n_experts_used, MAX_TOKENS_PER_CALL)
    return QPUMemoryPlan(weights, scratch, CODE_AREA)


def cpu_resident_bytes(gguf_file) -> int:
    """Bytes of the model file the CPU side reads every token (everything but the routed experts): they
    stay in the page cache next to the pinned QPU copy."""
    tensors = getattr(gguf_file, "tensors", {})
    return sum(int(t.nbytes) for name, t in tensors.items() if "_exps" not in name)


class QPUBackend(Backend):
    name = "qpu"

    def __init__(self, gguf_file, config, qpu: str = "auto", threads: int = 8, memory_limit: int | None = None,
                 progress: bool = True, experts_on_qpu=None, extra_weight_bytes: int = 0, **opts):
        # experts_on_qpu: bool [L, E], only those experts are uploaded (the hybrid backend's placement; None:
        # all); extra_weight_bytes: room for other matrices the caller uploads into self.drv
        super().__init__(gguf_file, config, **opts)
        from pimoe.qpu import open_driver
        from pimoe.qpu.driver import hardware_available
        from qpu_kernels.expert_ffn import ExpertFFN, QPUMatrices
        from qpu_kernels.gemv_kernel import MAX_THREADS, Programs, Scratch

        if not 1 <= int(threads) <= MAX_THREADS:
            raise PimoeError(f"qpu backend: threads={threads}; the kernels run 1..{MAX_THREADS} threads "
                             f"(one per QPU)")
        kind = qpu
        if kind == "auto":
            kind = "hw" if hardware_available()[0] else "emu"
        self.on_qpu = None if experts_on_qpu is None else np.asarray(experts_on_qpu, bool)
        self.plan = qpu_memory_plan(gguf_file, config, self.experts, self.on_qpu, extra_weight_bytes)
        from pimoe.backends import qpu_memory as qm

        data_area = self.plan.weights + self.plan.scratch + (1 << 20)
        self.fit = qm.check_fit([self.plan.code, data_area], qm.machine_facts(kind),
                                cpu_resident=cpu_resident_bytes(gguf_file), memory_limit=memory_limit, kind=kind)
        where = f"{gguf_file.path}" if hasattr(gguf_file, "path") else "model"
        if not self.fit.ok:
            raise PimoeError(f"{where}: the qpu backend ({kind}) needs {self.plan.describe()}, and it does not fit: "
                             f"{self.fit.message()}. Way out: {qm.WAY_OUT}")
        self.driver_kind = kind
        self.threads = int(threads)
        self.drv = open_driver(kind, data_area_size=data_area, code_area_size=self.plan.code)
        try:
            layers = range(config.n_layers)
            if progress and config.n_layers * config.n_experts > 256:
                from tqdm import tqdm

                layers = tqdm(layers, desc="repacking experts into QPU memory", unit=" layer")
            self.mats = []
            for i in layers:
                lw = self.experts[i]
                held = None if self.on_qpu is None else self.on_qpu[i]
                self.mats.append(tuple(QPUMatrices.upload(self.drv, t, held) for t in (lw.gate, lw.up, lw.down)))
            self.programs = Programs(self.drv)
            self.scratch = Scratch(self.drv, self.plan.scratch)
            from pimoe import profile

            # upload / dispatch / compute / readback regions and every dispatch's counts go to the active
            # pimoe.profile profiler (no-ops when none is active)
            self.runner = ExpertFFN(self.drv, self.programs, self.scratch, self.threads,
                                    region=profile.region, on_dispatch=profile.qpu_dispatch)
        except Exception:
            self.drv.close()
            raise
        self.stats = {"dispatches": 0, "instructions": 0, "tmu_read_bytes": 0, "tmu_write_bytes": 0,
                      "sfu_ops": 0, "emulated_seconds": 0.0}

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        # x [T, hidden] f32; expert_ids [T, k]; expert_weights [T, k] -> [T, hidden]
        gate, up, down = self.mats[layer]
        out = np.empty((x.shape[0], self.config.hidden), np.float32)
        for s in range(0, x.shape[0], MAX_TOKENS_PER_CALL):
            e = s + MAX_TOKENS_PER_CALL
            self.runner.counters.clear()
            self.runner.timing_args.clear()
            out[s:e] = self.runner(gate, up, down, np.ascontiguousarray(x[s:e], np.float32), expert_ids[s:e],
                                   expert_weights[s:e])
            for c in self.runner.counters:
                self.stats["dispatches"] += 1
                if c is None:     # the hardware driver has no counters
                    continue
                for key in ("instructions", "tmu_read_bytes", "tmu_write_bytes", "sfu_ops"):
                    self.stats[key] += c.total(key) if key != "instructions" else c.total_instructions
                self.stats["emulated_seconds"] += c.wall_seconds
        return out

    def close(self) -> None:
        drv = getattr(self, "drv", None)
        if drv is not None:
            drv.close()
            self.drv = None


class QPUReferenceBackend(Backend):
    """What the qpu backend computes, in numpy: dequantized weights (one expert at a time), f32
    activations without llama.cpp's activation quantization, f32 SiLU, weighted sum in router order."""

    name = "qpu-reference"

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        w = self.experts[layer]
        T, k = expert_ids.shape
        y = np.zeros((T, k, self.config.hidden), np.float32)
        x64 = x.astype(np.float64)
        for e in np.unique(expert_ids):           # each selected expert dequantized once, one at a time
            rows, slots = np.nonzero(expert_ids == e)
            g = x64[rows] @ w.gate[int(e)].dequantize().astype(np.float64).T
            u = x64[rows] @ w.up[int(e)].dequantize().astype(np.float64).T
            h = swiglu(g, u)
            y[rows, slots] = (h @ w.down[int(e)].dequantize().astype(np.float64).T).astype(np.float32)
        return mix_experts(y, expert_weights.astype(np.float32))
