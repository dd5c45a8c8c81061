"""Quantized weight tensors and the matmul every weight goes through.

    SUPPORTED                      the 13 GGUF weight types pimoe computes with
    check_supported(qtype, where)  PimoeError for anything else, naming the tensor
    QTensor                        a (memory-mapped) tensor in its stored block format
    matmul(w, x)                   x @ w.T the way llama.cpp's CPU backend computes it
    matmul_experts(w, x, ids)      the same for a batch of (expert, activation row) pairs, one call
    moe_swiglu(gate, up, down, x, ids, weights)   one layer's routed experts in three kernel calls
    matmul_reference(w, x)         the pure-numpy dequantize-then-matmul path the kernels are checked against
    from_float(name, a, qtype)     quantize an f32 array (synthetic models)
    random_qtensor(name, qtype, shape, rng, std)   valid random blocks of any supported type

matmul quantizes the activations exactly as ggml's CPU backend does for the weight type (see
pimoe.kernels.actquant: Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K types, f16/bf16
rounding for F16/BF16, nothing for F32), so pimoe's logits follow llama.cpp's to float-summation
order rather than to ~1e-2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gguf.quants
import numpy as np
from gguf import GGMLQuantizationType as QT

from pimoe.errors import PimoeError
from pimoe.kernels import actquant, formats
from pimoe.kernels.kquantize import quantize_k
from pimoe.kernels.randblocks import random_blocks
from pimoe.ops import mix_experts, swiglu

SUPPORTED: frozenset[QT] = frozenset(formats.BLOCK_SIZES)


def _type_name(qtype) -> str:
    try:
        return QT(qtype).name
    except ValueError:
        return f"unknown type id {int(qtype)}"


def check_supported(qtype, where: str) -> None:
    """Raise PimoeError unless qtype is one of SUPPORTED; `where` names the tensor (and file)."""
    try:
        ok = QT(qtype) in SUPPORTED
    except ValueError:
        ok = False
    if not ok:
        names = " ".join(t.name for t in sorted(SUPPORTED, key=int))
        raise PimoeError(f"{where} has type {_type_name(qtype)}, which pimoe does not support (supported: {names})")


def row_bytes_of(qtype: QT, row_len: int, where: str = "tensor") -> int:
    """Bytes of one stored row of `row_len` weights; PimoeError if the row is not whole blocks."""
    check_supported(qtype, where)
    block_size, type_size = formats.BLOCK_SIZES[QT(qtype)]
    if row_len % block_size:
        raise PimoeError(
            f"{where}: row length {row_len} is not a multiple of the {QT(qtype).name} block size {block_size}")
    return row_len // block_size * type_size


@dataclass(frozen=True)
class QTensor:
    """A weight tensor in its stored GGUF block format.

    shape is the logical numpy shape (last axis = row length = GGUF ne[0]);
    data is uint8 [*shape[:-1], row_bytes], usually a read-only memmap view (never copied here).
    """

    name: str
    qtype: QT
    shape: tuple[int, ...]
    data: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "qtype", QT(self.qtype))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        where = f"tensor '{self.name}'"
        rb = row_bytes_of(self.qtype, self.shape[-1] if self.shape else 0, where)
        if not self.shape:
            raise PimoeError(f"{where}: a tensor needs at least one dimension")
        if self.data.dtype != np.uint8:
            raise PimoeError(f"{where}: data must be raw bytes (uint8), got {self.data.dtype}")
        expect = self.shape[:-1] + (rb,)
        if tuple(self.data.shape) != expect:
            raise PimoeError(
                f"{where}: {self.qtype.name} data of shape {tuple(self.data.shape)} does not match "
                f"logical shape {self.shape} (expected bytes shape {expect})")

    @property
    def row_bytes(self) -> int:
        return self.data.shape[-1]

    @property
    def nbytes(self) -> int:
        return int(self.data.size)

    @property
    def block_size(self) -> int:
        return formats.BLOCK_SIZES[self.qtype][0]

    def __getitem__(self, idx) -> "QTensor":
        """Index leading axes without copying: w[e] is expert e's 2-D matrix, w[2:5] a slice of rows."""
        parts = idx if isinstance(idx, tuple) else (idx,)
        if len(parts) > len(self.shape) - 1 or any(p is Ellipsis or p is None for p in parts):
            raise PimoeError(f"tensor '{self.name}': index {idx!r} must address leading axes only (not the row)")
        try:
            view = self.data[parts]
        except IndexError as exc:
            raise PimoeError(f"tensor '{self.name}' of shape {self.shape}: index {idx!r} out of range") from exc
        shape = tuple(view.shape[:-1]) + (self.shape[-1],)
        return QTensor(f"{self.name}[{idx!r}]" if not isinstance(idx, int) else f"{self.name}[{idx}]",
                       self.qtype, shape, view)

    def dequantize(self) -> np.ndarray:
        """f32 of self.shape (pure numpy reference path)."""
        return formats.dequantize_rows(self.data, self.qtype, self.shape[-1])


def _check_matmul(w: QTensor, x: np.ndarray) -> np.ndarray:
    if len(w.shape) != 2:
        raise PimoeError(f"matmul: tensor '{w.name}' has shape {w.shape}; index it down to 2-D [out, in] first")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise PimoeError(f"matmul: tensor '{w.name}' is [out={w.shape[0]}, in={w.shape[1]}] but x has shape {x.shape}")
    return x


# rows of weights dequantized at a time by the reference path (bounds its working set to ~16 MB f32)
_REF_ROWS_WEIGHTS = 1 << 22


def matmul_reference(w: QTensor, x: np.ndarray) -> np.ndarray:
    """Pure numpy: x f32 [T, in] -> f32 [T, out], dequantize-then-matmul with llama.cpp's activation rounding.

    For Q4_1/Q5_1 ggml's dot is d_w*d_x*sum(q_w*q_x) + m_w*s_x with s_x = f16(d_x*sum(q_x)), so the
    block minimum m is applied to the stored s rather than to the rounded activations.
    """
    x = _check_matmul(w, x)
    xr = actquant.roundtrip(x, w.qtype)  # [T, in]
    affine = w.qtype in (QT.Q4_1, QT.Q5_1)
    if affine:
        _, s, _ = actquant.quantize_q8_1(x)  # s: f16 [T, nb]
        s = s.astype(np.float32)
    out_rows, in_len = w.shape
    y = np.empty((x.shape[0], out_rows), np.float32)
    step = max(1, _REF_ROWS_WEIGHTS // max(in_len, 1))
    for r0 in range(0, out_rows, step):
        rows = w.data[r0:r0 + step]
        if affine:
            blocks = np.array(rows).reshape(-1, formats.BLOCK_SIZES[w.qtype][1])
            m = formats.f16_field(blocks, 2).reshape(rows.shape[0], -1)  # [rows, nb]
            blocks[:, 2:4] = 0  # m = +0.0: dequantize only d*q
            wq = formats.dequantize_rows(blocks.reshape(rows.shape), w.qtype, in_len)
            y[:, r0:r0 + step] = xr @ wq.T + s @ m.T
        else:
            wd = formats.dequantize_rows(rows, w.qtype, in_len)
            y[:, r0:r0 + step] = xr @ wd.T
    return y


# "numba" (default): the fused kernels of pimoe.kernels.fused; "numpy": the reference path above.
KERNELS = os.environ.get("PIMOE_KERNELS", "numba")


def _dispatch():
    """pimoe.kernels.dispatch, imported on first use rather than with this module: it loads the fused numba
    kernels (numba's start-up takes seconds), which the numpy path and reading a file's tensors never need."""
    from pimoe.kernels import dispatch

    return dispatch


def matmul(w: QTensor, x: np.ndarray) -> np.ndarray:
    """w 2-D [out, in]; x f32 [T, in] -> f32 [T, out], as llama.cpp's CPU backend computes x @ w.T."""
    x = _check_matmul(w, x)
    if KERNELS == "numpy":
        return matmul_reference(w, x)
    return _dispatch().matmul(w.qtype, w.data, x)


def matmul_experts(w: QTensor, x: np.ndarray, expert_ids) -> np.ndarray:
    """w 3-D [experts, out, in]; x f32 [N, in]; expert_ids int [N] -> f32 [N, out], row i = w[ids[i]] @ x[i].

    One parallel kernel call for all selected experts: each expert's rows are read once and applied
    to every activation row routed to it (decode: k experts x 1 token; prompt: tokens grouped).
    """
    if len(w.shape) != 3:
        raise PimoeError(f"matmul_experts: tensor '{w.name}' has shape {w.shape}; expected [experts, out, in]")
    ids = np.asarray(expert_ids, dtype=np.int64).reshape(-1)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[2] or x.shape[0] != ids.shape[0]:
        raise PimoeError(f"matmul_experts: tensor '{w.name}' is {w.shape} but x has shape {x.shape} "
                         f"and expert_ids {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
        raise PimoeError(f"matmul_experts: tensor '{w.name}' has {w.shape[0]} experts; ids out of range")
    if KERNELS == "numpy":
        out = np.empty((x.shape[0], w.shape[1]), np.float32)
        for e in np.unique(ids):
            sel = np.flatnonzero(ids == e)
            out[sel] = matmul_reference(w[int(e)], x[sel])
        return out
    return _dispatch().matmul_experts(w.qtype, w.data, x, ids)


def swiglu_ffn(gate: QTensor, up: QTensor, down: QTensor, x: np.ndarray) -> np.ndarray:
    """down(silu(gate x) * up x) for one expert (or a shared expert); gate/up QTensor [ff, hidden],
    down [hidden, ff]; x [n, hidden] -> [n, hidden]."""
    return matmul(down, swiglu(matmul(gate, x), matmul(up, x)))


def moe_swiglu(gate: QTensor, up: QTensor, down: QTensor, x: np.ndarray, expert_ids: np.ndarray,
               expert_weights: np.ndarray) -> np.ndarray:
    """The whole routed-expert FFN of one layer in two or three kernel calls (dispatch.moe_pairs: decode
    fuses gate, up and silu into one).

    gate, up: [E, ff, hidden]; down: [E, hidden, ff]; x f32 [T, hidden]; expert_ids int [T, k];
    expert_weights f32 [T, k].  Returns f32 [T, hidden] = sum_j w[t,j] * down_e(silu(gate_e x_t) * up_e x_t)
    with ggml's order of operations (weights applied after down, then the k outputs added in router
    order).  x is quantized once for gate and up (same vec_dot_type), the k copies per token share it.
    """
    x = np.asarray(x, dtype=np.float32)
    ids = np.asarray(expert_ids, dtype=np.int64)
    T, k = ids.shape
    E, ff, hidden = gate.shape
    if up.shape != gate.shape or down.shape != (E, hidden, ff) or x.shape != (T, hidden):
        raise PimoeError(f"moe_swiglu: shapes gate {gate.shape}, up {up.shape}, down {down.shape}, x {x.shape}, "
                         f"expert_ids {ids.shape} do not fit together")
    if ids.size and (ids.min() < 0 or ids.max() >= E):
        raise PimoeError(f"moe_swiglu: tensor '{gate.name}' has {E} experts; ids out of range")
    flat = ids.reshape(-1)  # pair p = t*k + j
    tok = np.repeat(np.arange(T), k)
    if KERNELS == "numpy":
        xs = x[tok]
        g = matmul_experts(gate, xs, flat)
        u = matmul_experts(up, xs, flat)
        y = matmul_experts(down, swiglu(g, u), flat)
    else:
        y = _dispatch().moe_pairs(gate.qtype, gate.data, up.qtype, up.data, down.qtype, down.data, x, ids)
    return mix_experts(y.reshape(T, k, hidden), np.asarray(expert_weights, np.float32))


def from_float(name: str, array, qtype) -> QTensor:
    """Quantize an f32 array [..., row] to qtype (gguf.quants' reference quantizers for the 32-blocks)."""
    check_supported(qtype, f"tensor '{name}'")
    qtype = QT(qtype)
    a = np.ascontiguousarray(array, dtype=np.float32)
    if a.ndim == 0:
        raise PimoeError(f"from_float: tensor '{name}' must have at least one dimension")
    row_bytes_of(qtype, a.shape[-1], f"tensor '{name}'")
    if qtype == QT.F32:
        data = a.view(np.uint8)
    elif qtype == QT.F16:
        data = a.astype("<f2").view(np.uint8)
    elif qtype == QT.BF16:
        data = actquant.to_bf16_bits(a).view(np.uint8)
    elif qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1):
        data = np.asarray(gguf.quants.quantize(a, qtype)).view(np.uint8)
    else:
        data = quantize_k(a.reshape(-1, a.shape[-1]), qtype)
    data = data.reshape(*a.shape[:-1], -1)
    return QTensor(name, qtype, a.shape, data)


def random_qtensor(name: str, qtype, shape, rng: np.random.Generator, std: float = 0.02) -> QTensor:
    """Valid random blocks of any SUPPORTED type whose dequantized values have roughly `std`."""
    check_supported(qtype, f"tensor '{name}'")
    qtype = QT(qtype)
    shape = tuple(int(s) for s in shape)
    rb = row_bytes_of(qtype, shape[-1], f"tensor '{name}'")
    n = int(np.prod(shape))
    data = random_blocks(qtype, n, rng, std).reshape(*shape[:-1], rb)
    return QTensor(name, qtype, shape, data)
