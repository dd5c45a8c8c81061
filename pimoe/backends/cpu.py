"""The cpu backend: expert FFNs through pimoe.quant.matmul on the selected experts' stored blocks."""

from __future__ import annotations

import numpy as np

from pimoe import quant
from pimoe.backends.base import Backend
from pimoe.ops import mix_experts


class CPUBackend(Backend):
    """Routed experts through pimoe.quant.moe_swiglu: per layer three kernel calls (gate, up, down) that
    read each selected expert's stored blocks once and apply them to every token routed to it."""

    name = "cpu"

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        # x [T, hidden] f32; expert_ids [T, k]; expert_weights [T, k] -> [T, hidden]
        w = self.experts[layer]
        return quant.moe_swiglu(w.gate, w.up, w.down, x, expert_ids, expert_weights)


class CPUReferenceBackend(Backend):
    """The same computation spelled out expert by expert with quant.matmul on w[e] views (for checking)."""

    name = "cpu-reference"

    def expert_ffn(self, layer, x, expert_ids, expert_weights):
        w = self.experts[layer]
        T, k = expert_ids.shape
        y = np.zeros((T, k, x.shape[1]), dtype=np.float32)   # each chosen expert's output, router order
        # group tokens by expert so each expert's blocks are read once per call (prefill shares experts)
        for e in np.unique(expert_ids):
            rows, slots = np.nonzero(expert_ids == e)
            y[rows, slots] = quant.swiglu_ffn(w.gate[int(e)], w.up[int(e)], w.down[int(e)], x[rows])
        # weight and sum in router order, in f32, as ggml does (mul by weights, then add the k views)
        return mix_experts(y, expert_weights.astype(np.float32))
