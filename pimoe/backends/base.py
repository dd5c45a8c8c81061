"""The one seam between the model and where expert FFNs run.

The forward pass routes each token to k experts and hands the rest to a backend:

    backend.expert_ffn(layer, x, expert_ids, expert_weights) -> f32 [T, hidden]
        x               f32 [T, hidden]   the RMS-normed FFN input
        expert_ids      int [T, k]        chosen experts per token, in router order
        expert_weights  f32 [T, k]        their (possibly renormalized) router weights
        returns         sum_j w[t, j] * down_e(silu(gate_e x_t) * up_e x_t),  e = expert_ids[t, j]

A backend reads only the selected experts' blocks: a decode token touches k of E experts per layer.

The dense weight multiplications (attention projections, output head) go through a second, optional seam:

    backend.dense_matmul(ws, x) -> [f32 [T, rows_i]]   ws: QTensors [rows_i, cols] sharing x f32 [T, cols]
        default: pimoe.quant.matmul of each on the CPU (the hybrid backend splits their rows with the QPU)
"""

from __future__ import annotations

import numpy as np

from pimoe.errors import PimoeError


class ExpertWeights:
    """The stored expert tensors of one layer (QTensors, never dequantized whole).

    gate, up: [E, ff, hidden]; down: [E, hidden, ff] (numpy order; GGUF ne reversed).
    """

    def __init__(self, gguf_file, config, layer: int):
        E, ff, d = config.n_experts, config.expert_ff, config.hidden
        p = f"blk.{layer}."
        self.gate = gguf_file.tensor(p + "ffn_gate_exps.weight", (E, ff, d))
        self.up = gguf_file.tensor(p + "ffn_up_exps.weight", (E, ff, d))
        self.down = gguf_file.tensor(p + "ffn_down_exps.weight", (E, d, ff))


class Backend:
    """Base class: holds the file, the config and every layer's ExpertWeights."""

    name = "base"

    def __init__(self, gguf_file, config, **opts):
        if opts:
            raise PimoeError(f"backend '{self.name}' takes no options {sorted(opts)}")
        self.file = gguf_file
        self.config = config
        self.experts = [ExpertWeights(gguf_file, config, i) for i in range(config.n_layers)]

    def expert_ffn(self, layer: int, x: np.ndarray, expert_ids: np.ndarray,
                   expert_weights: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def dense_matmul(self, ws, x: np.ndarray) -> list[np.ndarray]:
        """x @ w.T for each QTensor w of `ws` (all [rows, cols] with x f32 [T, cols]), as quant.matmul."""
        from pimoe import quant

        return [quant.matmul(w, x) for w in ws]

    def close(self) -> None:
        """Release device resources (nothing on the CPU)."""
