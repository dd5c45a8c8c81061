"""Glue between QTensor-level calls and the numba kernels in fused.py.

Prepares the activations the way ggml does for the weight type (once per call, shared by every
weight row and expert), builds the expert-group work list, and passes arrays with fixed dtypes,
layouts and read-only flags so numba compiles (and caches) one specialization per kernel.
"""

from __future__ import annotations

import numba
import numpy as np
from gguf import GGMLQuantizationType as QT

from pimoe.kernels import actquant, fused
from pimoe.ops import swiglu

INT_KIND = {
    QT.Q8_0: fused.K_Q8_0, QT.Q4_0: fused.K_Q4_0, QT.Q5_0: fused.K_Q5_0,
    QT.Q4_1: fused.K_Q4_1, QT.Q5_1: fused.K_Q5_1,
    QT.Q2_K: fused.K_Q2_K, QT.Q3_K: fused.K_Q3_K, QT.Q4_K: fused.K_Q4_K,
    QT.Q5_K: fused.K_Q5_K, QT.Q6_K: fused.K_Q6_K,
}
FLOAT_KIND = {QT.F32: fused.K_F32, QT.F16: fused.K_F16, QT.BF16: fused.K_BF16}
FAST_TYPES = frozenset(INT_KIND) | frozenset(FLOAT_KIND)


def _readonly(a: np.ndarray) -> np.ndarray:
    v = np.asarray(a)
    if not v.flags.c_contiguous:
        v = np.ascontiguousarray(v)
    v = v.view()
    v.flags.writeable = False
    return v


class PreparedActivations:
    """x quantized for one vec_dot_type; reusable for every weight of that weight type (e.g. gate and up)."""

    def __init__(self, x: np.ndarray, qtype: QT):
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.n_rows, self.n = x.shape
        vt = actquant.VEC_DOT_TYPE[qtype]
        self.vec_dot_type = vt
        T, n = x.shape
        if vt in (QT.F32, QT.F16, QT.BF16):
            if vt == QT.F32:
                self.xf = x
            elif vt == QT.F16:
                self.xf = x.astype(np.float16).astype(np.float32)
            else:
                self.xf = actquant.round_bf16(x)
            return
        self.xq = np.empty((T, n), np.int8)
        if vt in (QT.Q8_0, QT.Q8_1):
            self.block = 32
            d = np.empty((T, n // 32), np.float32)
            s = np.empty((T, n // 32), np.float32)
            fused.quantize_rows_q8_0(x, self.xq, d, s)
            self.xd = d.astype(np.float16).astype(np.float32)  # ggml stores d as f16
            # Q8_1's s = f16(d_f32 * sum(q)); unused for Q8_0
            self.xs = (d * s).astype(np.float16).astype(np.float32) if vt == QT.Q8_1 else s
            self.xbs = np.zeros((T, 1), np.int16)
        else:
            self.block = 256
            self.xd = np.empty((T, n // 256), np.float32)
            self.xbs = np.empty((T, n // 16), np.int16)
            fused.quantize_rows_q8_k(x, self.xq, self.xd, self.xbs)
            self.xs = self.xd  # unused by the K kernels
        self._xr = None

    def rounded(self) -> np.ndarray:
        """f32 [T, n]: the activation values the integer dot uses, d_x * q_x (row-dequantizing path)."""
        if self._xr is None:
            T, n = self.xq.shape
            nb = self.xd.shape[1]
            self._xr = (self.xq.reshape(T, nb, -1).astype(np.float32) * self.xd[:, :, None]).reshape(T, n)
        return self._xr


def take_rows(acts: PreparedActivations, idx: np.ndarray) -> PreparedActivations:
    """A PreparedActivations whose row i is acts' row idx[i] (a token repeated for each of its experts)."""
    new = object.__new__(PreparedActivations)
    new.__dict__.update(acts.__dict__)
    new._xr = None
    for name in ("xf", "xq", "xd", "xs", "xbs"):
        if hasattr(acts, name):
            setattr(new, name, np.ascontiguousarray(getattr(acts, name)[idx]))
    new.n_rows = len(idx)
    return new


def _groups(expert_ids: np.ndarray):
    """ids int [N] -> (rows int64 [N] sorted by expert, starts int64 [G+1], experts int64 [G])."""
    ids = np.asarray(expert_ids, dtype=np.int64)
    rows = np.argsort(ids, kind="stable").astype(np.int64)
    sorted_ids = ids[rows]
    if len(ids) == 0:
        return rows, np.zeros(1, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(np.diff(sorted_ids)) + 1
    starts = np.concatenate([[0], cut, [len(ids)]]).astype(np.int64)
    return rows, starts, sorted_ids[starts[:-1]].astype(np.int64)


_ONE_GROUP_CACHE: dict[int, tuple] = {}


def _single_group(T: int):
    g = _ONE_GROUP_CACHE.get(T)
    if g is None:
        g = (np.arange(T, dtype=np.int64), np.array([0, T], np.int64), np.zeros(1, np.int64))
        if T <= 64:
            _ONE_GROUP_CACHE[T] = g
    return g


_NO_ROWS = np.zeros((1, 1), np.float32)  # placeholder for xr when no weight row serves many tokens


# types whose multi-token path is the integer token tiles (no rounded f32 activations needed)
TILED_TYPES = frozenset((QT.Q8_0, QT.Q4_K, QT.Q6_K))


def run(qtype: QT, w3: np.ndarray, acts: PreparedActivations, rows, starts, experts) -> np.ndarray:
    """w3 uint8 [E, O, rb]; returns f32 [N, O] for the activation rows of `acts`."""
    # every (row of acts, output) pair is written by the kernels: no zero-fill needed
    out = np.empty((acts.n_rows, w3.shape[1]), np.float32)
    if acts.n_rows == 0:
        return out
    w3 = _readonly(w3)
    if qtype in FLOAT_KIND:
        fused.float_matmul(FLOAT_KIND[qtype], w3, acts.xf, rows, starts, experts, out, numba.get_num_threads())
    else:
        many = (qtype not in TILED_TYPES and len(starts) > 1
                and int(np.diff(starts).max()) >= fused.MULTI_TOKEN)
        xr = acts.rounded() if many else _NO_ROWS
        fused.quant_matmul(INT_KIND[qtype], w3, acts.xq, acts.xd, acts.xs, acts.xbs, xr,
                           rows, starts, experts, fused.F16_TABLE, out, numba.get_num_threads())
    return out


def matmul(qtype: QT, w2: np.ndarray, x: np.ndarray, acts: PreparedActivations | None = None) -> np.ndarray:
    """w2 uint8 [O, rb]; x f32 [T, n] -> f32 [T, O]."""
    acts = acts or PreparedActivations(x, qtype)
    rows, starts, experts = _single_group(acts.n_rows)
    return run(qtype, w2[None], acts, rows, starts, experts)


def matmul_experts(qtype: QT, w3: np.ndarray, x: np.ndarray | None, expert_ids,
                   acts: PreparedActivations | None = None, groups=None):
    """w3 uint8 [E, O, rb]; x f32 [N, n]; expert_ids int [N] -> f32 [N, O], row i = w3[ids[i]] @ x[i].

    groups: _groups(expert_ids) when the caller already has it (gate, up and down share one)."""
    acts = acts or PreparedActivations(x, qtype)
    rows, starts, experts = groups if groups is not None else _groups(expert_ids)
    return run(qtype, w3, acts, rows, starts, experts)


def moe_pairs(gate_type: QT, gate: np.ndarray, up_type: QT, up: np.ndarray, down_type: QT, down: np.ndarray,
              x: np.ndarray, expert_ids: np.ndarray) -> np.ndarray:
    """Each (token, chosen expert) pair's FFN output, before the router weights.

    gate/up uint8 [E, ff, rb], down uint8 [E, hidden, rb_ff]; x f32 [T, hidden]; expert_ids int [T, k]
    -> f32 [T*k, hidden], row t*k+j = down_e(silu(gate_e x_t) * up_e x_t) for e = expert_ids[t, j].
    x is quantized once (gate and up share it). When every expert serves one pair (decode) and gate
    and up have a row-dot type, gate, up and silu run in one kernel call (fused.gate_up_silu) and
    down in a second; otherwise gate and up are separate calls that tile the tokens of an expert."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    ids = np.asarray(expert_ids, dtype=np.int64)
    T, k = ids.shape
    flat = ids.reshape(-1)
    groups = _groups(flat)
    rows, starts, experts = groups
    tok = np.repeat(np.arange(T, dtype=np.int64), k)
    acts = PreparedActivations(x, gate_type)
    one_per_expert = len(starts) - 1 == len(flat)
    if one_per_expert and gate_type == up_type and gate_type in TILED_TYPES:
        h = np.empty((len(flat), gate.shape[1]), np.float32)
        fused.gate_up_silu(INT_KIND[gate_type], _readonly(gate), _readonly(up), acts.xq, acts.xd, acts.xbs,
                           tok, rows, starts, experts, fused.F16_TABLE, h, numba.get_num_threads())
    else:
        pair_acts = take_rows(acts, tok)
        g = run(gate_type, gate, pair_acts, rows, starts, experts)
        if up_type == gate_type:
            u = run(up_type, up, pair_acts, rows, starts, experts)
        else:
            u = run(up_type, up, PreparedActivations(x[tok], up_type), rows, starts, experts)
        h = swiglu(g, u)
    return run(down_type, down, PreparedActivations(h, down_type), rows, starts, experts)
