"""GEMV on quantized weights, dequantized inside the kernel: y[t] = W @ x[t] for GGUF Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1, Q2_K..Q6_K weights repacked losslessly into the QPU layout (qpu_kernels.qpu_layout).

Kernel versions, in order of sophistication (all in qpu_kernels.gemv_kernel, selected by KernelConfig):
  1. the block loop of gemv_f32 with f32 weights (32 bits per weight: the memory-bound baseline);
  2. q8 blocks: 4 codes per 32-bit word; two codes become two f16 numbers 1 + c/256 with one `and` and
     one integer add of the f16 exponent (plus one `ror` for the second pair), which fmul reads through its
     free f16 unpack; the block scale is applied once per 32 weights as D (S - X) + M X;
  3. q4 blocks: 8 nibbles per word, pairs brought into place with one ror 8 and two umul24 by 16 (shl 4
     of the low 24 bits), so 3 of the 4 pairs' shifts run on the mul ALU -- the add ALU is the busier
     one (fadd, and, rotate);
  4. token tiles (T > 1): every code word fetched and dequantized once serves T activation vectors.
The inner loop of each is packed into dual-issue instructions by gemv_sched and software pipelined
(TMU loads up to 16 words ahead, across blocks).

    numpy reference: gemv_reference();   host launcher: QPUGemv;   python -m qpu_kernels.gemv_quant
"""

from __future__ import annotations

import sys
import time

import numpy as np

from pimoe.errors import PimoeError
from qpu_kernels import qpu_layout as lay
from qpu_kernels.gemv_kernel import (KernelConfig, Programs, Scratch, XStream, base_address, execute, f32_bits,
                                     write_tables)

REAL_SHAPES = {"qwen3-30b-a3b up/gate": (768, 2048), "qwen3-30b-a3b down": (2048, 768),
               "olmoe-1b-7b up/gate": (1024, 2048), "olmoe-1b-7b down": (2048, 1024)}


def gemv_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """w f32/f64 [rows, cols] (dequantized), x f32 [T, cols] -> f64 [T, rows]."""
    return x.astype(np.float64) @ w.astype(np.float64).T


class QPUGemv:
    """Matrices uploaded once into a driver, multiplied by activations on demand."""

    def __init__(self, drv, threads: int = 8, scratch_bytes: int = 4 << 20):
        self.drv, self.threads = drv, threads
        self.programs = Programs(drv)
        self.scratch = Scratch(drv, scratch_bytes)
        self.last_counters = None

    def upload(self, data: np.ndarray, qtype, rows: int, cols: int):
        """GGUF rows uint8 [rows, row_bytes] -> (buffer uint32 [padded rows, row words], spec, rows, cols)."""
        spec = lay.spec_for(qtype)
        buf = self.drv.alloc((lay.padded_rows(rows), spec.row_words(cols)), dtype=np.uint32)
        lay.pack_matrix(data, qtype, rows, cols, out=buf)
        return buf, spec, rows, cols

    def __call__(self, mat, x: np.ndarray) -> np.ndarray:
        self.scratch.reset()
        (cfg, table, row_bytes), result = gemv_phase(self.scratch, mat, x, self.threads)
        self.last_counters = execute(self.drv, self.programs, cfg, self.threads, self.scratch, table, row_bytes)
        return result()


def gemv_phase(scratch: Scratch, mat, x: np.ndarray, threads: int):
    """The work of one GEMV y = W @ x[t] (x uploaded, work table written into `scratch`) for a matrix
    mat = (buffer, spec, rows, cols) as QPUGemv.upload returns: ((cfg, table address, [row bytes]) -- a
    phase for gemv_kernel.execute / execute_chain --, result() -> f32 [T, rows] once the dispatch ran)."""
    buf, spec, rows, cols = mat
    x = np.atleast_2d(np.asarray(x, np.float32))
    T = x.shape[0]
    if x.shape[1] != cols:
        raise PimoeError(f"gemv: x has {x.shape[1]} columns, the matrix {cols}")
    pc = lay.padded_cols(cols)
    cfg = KernelConfig.for_layout(spec, pc, T, "sum")
    xs, xaddr = scratch.take(cfg.x_stream.words)
    xp = np.zeros((T, pc), np.float32)
    xp[:, :cols] = x
    cfg.x_stream.pack(xp, out=xs.view(np.float32))
    rp = lay.padded_rows(rows)
    out, oaddr = scratch.take(T * rp)
    ents, eaddr = scratch.take(16 * (rp // 16))
    ents[:] = 0
    row_bytes = spec.row_words(cols) * 4
    items = []
    for g in range(rp // 16):
        ents[16 * g: 16 * g + 3] = [base_address(buf) + 16 * g * row_bytes, xaddr, f32_bits(1.0)]
        items.append([1, eaddr + 64 * g, oaddr + 64 * g, 4 * rp])
    table = write_tables(scratch, items, threads)
    return (cfg, table, [row_bytes]), lambda: out.view(np.float32).reshape(T, rp)[:, :rows].copy()


def run(drv, qtype, rows: int, cols: int, *, tokens: int = 1, threads: int = 8, seed: int = 0):
    """Random GGUF weights of qtype and random x: QPU vs numpy. Returns (max relative error, counters, s)."""
    from pimoe import quant

    rng = np.random.default_rng(seed)
    w = quant.random_qtensor("w", qtype, (rows, cols), rng)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    g = QPUGemv(drv, threads, scratch_bytes=4 * (XStream(lay.padded_cols(cols), tokens, True).words
                                                + (tokens + 1) * lay.padded_rows(rows) + 4096) + (1 << 16))
    mat = g.upload(w.data, w.qtype, rows, cols)
    t0 = time.perf_counter()
    y = g(mat, x)
    seconds = time.perf_counter() - t0
    ref = gemv_reference(w.dequantize(), x)
    err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
    return err, g.last_counters, seconds


def predicted(counters):
    """The timing model's Pi 4 prediction for a GEMV dispatch (None when pimoe.qpu.timing is absent).
    The kernel never thread-switches in its loops: the model charges its ldtmu waits from the emulator's
    load-to-use distances (gemv_kernel.timing_args)."""
    try:
        from pimoe.qpu.timing import predict
    except ImportError:
        return None
    from qpu_kernels.gemv_kernel import timing_args

    return predict(counters, **timing_args())


def describe(counters, rows: int, cols: int, tokens: int, qtype, seconds: float) -> str:
    from gguf import GGMLQuantizationType as QT

    spec = lay.spec_for(qtype)
    ipw = counters.total_instructions * 16 / (rows * cols * tokens)
    text = (f"{counters.total_instructions} instructions = {ipw:.2f} per weight{'-token' if tokens > 1 else ''} "
            f"(16 lanes), {counters.tmu_read_bytes} TMU bytes read ({spec.bits_per_weight:g} bits/weight layout, "
            f"GGUF {QT(qtype).name}), {seconds:.3f} s emulated")
    p = predicted(counters)
    if p is not None:
        text += (f"; {p.label}: {p.seconds * 1e3:.3f} ms, {counters.tmu_read_bytes / p.seconds / 1e9:.2f} GB/s "
                 f"({p.bound}-bound)")
    return text


def check_real_shapes(qtypes) -> None:
    """Each of `qtypes` at every REAL_SHAPES shape in the emulator against numpy; prints the counts and
    the prediction, raises at a relative error over 1e-5."""
    from pimoe.qpu import open_driver

    for qtype in qtypes:
        for name, (rows, cols) in REAL_SHAPES.items():
            with open_driver("emu", data_area_size=64 << 20) as drv:
                err, counters, seconds = run(drv, qtype, rows, cols)
            if err > 1e-5:
                raise PimoeError(f"gemv {qtype.name} {rows}x{cols}: relative error {err:.1e}")
            print(f"gemv {qtype.name:5s} {name:22s} {rows}x{cols}: equal to numpy (rel err {err:.1e}); "
                  f"{describe(counters, rows, cols, 1, qtype, seconds)}")


def main(argv=None) -> int:
    from gguf import GGMLQuantizationType as QT

    check_real_shapes((QT.Q8_0, QT.Q4_0, QT.Q4_K, QT.Q5_K, QT.Q6_K))
    return 0


if __name__ == "__main__":
    sys.exit(main())
