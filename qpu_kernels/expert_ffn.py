"""The fused MoE expert step of one layer on the QPUs: two dispatches per layer for a decode token (the two
phases below), and two per tile width in use, at most 2 x the widest tile, for a prompt.

Why not one dispatch for a decode token (the phases chained, a barrier between; `one_dispatch=True`):
phase B reads h through the uniform stream, and on the Pi a uniform read does not see TMU stores made
earlier in the same dispatch (py-videocore6's hardware-tested test_tmu_read_tmu_write_uniform_read; the
v3d kernel cleans the TMU's L2 cache only at the end of a job). The emulator models that, so the chained
program reads stale h there as it would on the silicon. It stays as an option for the day phase B reads h
through the TMU; until then it gives wrong results and is off by default.

    dispatch A (swiglu):  for every (selected expert, token tile, 16 rows of ff):
                              h[t, rows] = w[t, e] * silu(gate_e[rows] @ x_t) * (up_e[rows] @ x_t)
                          gate and up are streamed together (the x values are loaded once for both);
                          SiLU is g / (1 + 2^(-g log2 e)) on the SFU (exp is 2^x, then recip). h is
                          written straight into the layout the down kernel reads (with the 16-row block
                          sums the quantized layouts need, reduced across lanes by rotation).
    dispatch B (sum):     decode (one token): for every 16 rows of hidden,
                              y[rows] = sum_j down_{e_j}[rows] @ h_j       (k entries, one item)
                          prompt (token tiles): per tile y_tile[t, rows] = down_e[rows] @ h_tile[t]
                          and the host adds each token's k tiles in router order.

Token tiles are the batched (GEMM) variant: up to `tile` tokens routed to the same expert share every
weight load and every dequantization, so the QPU work per weight drops as tokens are added. Tiles are
grouped by how many tokens they hold and each group runs with its own tile width, so a lone token is
never padded to a wider tile.

    numpy reference: expert_ffn_reference();  host launcher: ExpertFFN;  python -m qpu_kernels.expert_ffn
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from pimoe.errors import PimoeError
from qpu_kernels import qpu_layout as lay
from qpu_kernels.gemv_kernel import (KernelConfig, Programs, Scratch, XStream, base_address, execute_chain,
                                     f32_bits, timing_args, write_tables)

DEFAULT_THREADS = 8
MAX_TILE = {"f32": 4, "q4": 2, "q8": 2}   # tokens per tile the register file holds in the swiglu kernel


@dataclass
class QPUMatrices:
    """One expert tensor [E, rows, cols] in QPU layout, living in a driver buffer."""
    buf: np.ndarray          # uint32 [experts held, padded_rows, row_words]
    spec: lay.LayoutSpec
    rows: int
    cols: int
    slots: np.ndarray | None = None    # int [E]: expert -> its index in buf, -1 if not held (None: all, in order)

    @property
    def row_bytes(self) -> int:
        return self.spec.row_words(self.cols) * 4

    def addr(self, e: int, row: int = 0) -> int:
        if self.slots is not None:
            slot = int(self.slots[e])
            if slot < 0:
                raise PimoeError(f"expert {e} is not in this QPU copy (its placement keeps it on the CPU)")
            e = slot
        return base_address(self.buf) + (e * self.buf.shape[1] + row) * self.row_bytes

    @classmethod
    def upload(cls, drv, qtensor, experts=None) -> "QPUMatrices":
        """Repack a GGUF expert tensor (QTensor [E, rows, cols]) into a new driver buffer, expert by
        expert (no dequantized copy except for f32-layout types, one expert at a time). experts: bool [E],
        only those (None: all)."""
        E, rows, cols = qtensor.shape
        spec = lay.spec_for(qtensor.qtype, f"tensor '{qtensor.name}'")
        held = np.arange(E) if experts is None else np.nonzero(np.asarray(experts, bool))[0]
        buf = drv.alloc((max(len(held), 1), lay.padded_rows(rows), spec.row_words(cols)), dtype=np.uint32)
        for i, e in enumerate(held):
            lay.pack_matrix(qtensor.data[e], qtensor.qtype, rows, cols, out=buf[i])
        slots = None
        if experts is not None:
            slots = np.full(E, -1, np.int64)
            slots[held] = np.arange(len(held))
        return cls(buf, spec, rows, cols, slots)

    @staticmethod
    def nbytes_for(qtensor, n_experts: int | None = None) -> int:
        """Bytes of the QPU copy of all experts of qtensor [E, rows, cols] (or of n_experts of them)."""
        E, rows, cols = qtensor.shape
        n = E if n_experts is None else max(int(n_experts), 1)
        return n * lay.spec_for(qtensor.qtype, f"tensor '{qtensor.name}'").nbytes(rows, cols)


def silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def expert_ffn_reference(gate_w, up_w, down_w, x, expert_ids, expert_weights) -> np.ndarray:
    """numpy, f64: gate_w/up_w [E, ff, hidden], down_w [E, hidden, ff] (dequantized); x [T, hidden]."""
    x = x.astype(np.float64)
    out = np.zeros((x.shape[0], down_w.shape[1]))
    for t in range(x.shape[0]):
        for e, w in zip(expert_ids[t], expert_weights[t]):
            h = silu(gate_w[e] @ x[t]) * (up_w[e] @ x[t])
            out[t] += w * (down_w[e] @ h)
    return out


class ExpertFFN:
    """Runs one layer's routed experts on the driver. gate/up/down: QPUMatrices of the layer."""

    def __init__(self, drv, programs: Programs, scratch: Scratch, threads: int = DEFAULT_THREADS,
                 region=None, on_dispatch=None, one_dispatch: bool = False):
        self.drv, self.programs, self.scratch, self.threads = drv, programs, scratch, threads
        # decode: swiglu and down_sum in one dispatch (a barrier between) -- reads stale h on the Pi, see
        # the module docstring; two dispatches by default
        self.one_dispatch = one_dispatch
        self.counters: list = []     # EmuCounters (or None on hardware) of every dispatch
        # profiling hooks (the qpu backend passes pimoe.profile.region / qpu_dispatch; kernels stay free of
        # pimoe.profile): region(name) -> context manager around upload / dispatch / compute / readback,
        # on_dispatch(counters, kernel=..., timing_args=..., submit_to_wait_s=...) for each execute: its
        # emulator counts ({} on hardware, which gives none) and its host wall time from submit to wait
        self.region = region or (lambda name, **tags: nullcontext())
        self.on_dispatch = on_dispatch
        self.timing_args: list[dict] = []   # per dispatch, what pimoe.qpu.timing.predict() must be told

    def _execute(self, phases: list, kernel: str) -> None:
        """One dispatch of phases [(cfg, table address, row bytes)] (several: chained, see qpu_gemv)."""
        self._submit(phases, kernel)()

    def _submit(self, phases: list, kernel: str):
        """Submit one dispatch of phases; returns wait() -> None, which waits for it and records its counts
        (in the calling thread: the profiler hooks run there)."""
        # the GEMV loops wait on ldtmu without thrsw: no thread switch shows it, so the timing model charges
        # the waits the emulator's load-to-use distance bins measured (waits="ldtmu")
        targs = timing_args()
        t0 = time.perf_counter()
        job = execute_chain(self.drv, self.programs, phases, self.threads, self.scratch, wait=False)

        def wait() -> None:
            with self.region("compute", kernel=kernel):
                c = job.wait()
                # submit_to_wait_s: host wall time from writing the uniforms and SUBMIT_CSD to WAIT_BO's
                # return (on "hw" the dispatch as the Pi runs it, the only time there is; on "emu" and
                # "virtual" the emulation's). A hardware dispatch has no counts: {} (nothing to predict)
                if self.on_dispatch is not None:
                    self.on_dispatch(c if c is not None else {}, kernel=kernel, timing_args=targs,
                                     submit_to_wait_s=time.perf_counter() - t0)
            self.counters.append(c)
            self.timing_args.append(targs)

        return wait

    def submit_decode(self, gate: QPUMatrices, up: QPUMatrices, down: QPUMatrices, x: np.ndarray,
                      expert_ids: np.ndarray, expert_weights: np.ndarray):
        """__call__ for one token (x [1, hidden]) without waiting: the dispatch is submitted and this returns
        result() -> f32 [1, hidden], which waits for it. The host works meanwhile: through the whole layer
        with one_dispatch, through phase A (gate and up: two thirds of the weights) with two dispatches."""
        if x.shape[0] != 1:
            raise PimoeError(f"submit_decode: one token at a time, got {x.shape[0]}")
        hidden = x.shape[1]
        self.scratch.reset()
        x_full = np.zeros((1, lay.padded_cols(hidden)), np.float32)
        x_full[:, :hidden] = x
        tiles = [(int(e), [0], [float(w)]) for e, w in zip(expert_ids[0], expert_weights[0])]
        wait, out = self._decode(gate, up, down, x_full, tiles, hidden, gate.spec.kind != "f32",
                                 down.spec.kind != "f32", wait=False)

        def result() -> np.ndarray:
            wait()
            with self.region("readback"):
                return out[None, :hidden].copy()

        return result

    def __call__(self, gate: QPUMatrices, up: QPUMatrices, down: QPUMatrices, x: np.ndarray,
                 expert_ids: np.ndarray, expert_weights: np.ndarray, tile: int | None = None) -> np.ndarray:
        T, hidden = x.shape
        if gate.spec != up.spec:
            raise PimoeError(f"gate and up experts must share a layout ({gate.spec} vs {up.spec})")
        self.scratch.reset()
        hidden_p = lay.padded_cols(hidden)
        quant_in = gate.spec.kind != "f32"
        quant_h = down.spec.kind != "f32"
        if T == 1:
            tiles = [(int(e), [0], [float(w)]) for e, w in zip(expert_ids[0], expert_weights[0])]
        else:
            TT = tile or MAX_TILE[gate.spec.kind]
            tiles = []
            for e in np.unique(expert_ids):
                toks, slots = np.nonzero(expert_ids == e)
                for s in range(0, len(toks), TT):
                    tiles.append((int(e), list(toks[s:s + TT]), [float(expert_weights[t, j]) for t, j in
                                                                  zip(toks[s:s + TT], slots[s:s + TT])]))
        x_full = np.zeros((T, hidden_p), np.float32)
        x_full[:, :hidden] = x
        if T == 1:
            out = self._decode(gate, up, down, x_full, tiles, hidden, quant_in, quant_h)
            with self.region("readback"):
                return out[None, :hidden].copy()
        # prompt: tiles grouped by how many tokens they hold, each group run with that tile width
        # (a tile of 1 token in a 2-token kernel would do the work twice)
        y = np.zeros((T, hidden), np.float32)
        res: dict[tuple[int, int], np.ndarray] = {}
        for width in sorted({len(toks) for _, toks, _ in tiles}):
            group = [tl for tl in tiles if len(tl[1]) == width]
            h = self._swiglu(gate, up, down, x_full, group, width, quant_in, quant_h)
            outs = self._down_tiles(down, group, h, width, hidden)      # [tiles, width, rows]
            with self.region("readback"):
                for ti, (e, toks, _) in enumerate(group):
                    for s_, t in enumerate(toks):
                        res[(int(t), e)] = outs[ti, s_, :hidden]
        # add each token's expert outputs in router order (as the cpu backend does)
        with self.region("readback"):
            for t in range(T):
                for e in expert_ids[t]:
                    y[t] += res[(t, int(e))]
        return y

    def _swiglu(self, gate, up, down, x_full, tiles, TT, quant_in, quant_h):
        """Dispatch A for tiles of TT tokens: h streams (one per tile), returned as [(array, address)]."""
        phase, h_streams = self._swiglu_phase(gate, up, down, x_full, tiles, TT, quant_in, quant_h)
        self._execute([phase], "swiglu")
        return h_streams

    def _swiglu_phase(self, gate, up, down, x_full, tiles, TT, quant_in, quant_h):
        """The work of dispatch A (x streams uploaded, work table written): ((cfg, table, row bytes),
        h streams)."""
        hidden_p = x_full.shape[1]
        ff, ff_p = gate.rows, lay.padded_cols(gate.rows)
        cfg_a = KernelConfig.for_layout(gate.spec, hidden_p, TT, "swiglu", header_out=quant_h)
        x_layout, h_layout = cfg_a.x_stream, XStream(ff_p, TT, quant_h)
        items_a, h_streams = [], []
        with self.region("upload"):     # activations into QPU memory in the kernel's stream layout
            for e, toks, ws in tiles:
                xt = np.zeros((TT, hidden_p), np.float32)
                xt[: len(toks)] = x_full[toks]
                xs, xaddr = self.scratch.take(x_layout.words)
                x_layout.pack(xt, out=xs.view(np.float32))
                hs, haddr = self.scratch.take(h_layout.words)
                hs[:] = 0
                h_streams.append((hs, haddr))
                wts = [f32_bits(w) for w in ws] + [f32_bits(0.0)] * (TT - len(ws))
                for g in range(lay.padded_rows(ff) // 16):
                    # h rows 16g.. are the down projection's columns: written in its x-stream layout
                    items_a.append([gate.addr(e, 16 * g), up.addr(e, 16 * g), xaddr,
                                    haddr + 4 * h_layout.value_offset(16 * g),
                                    haddr + 4 * h_layout.half_sum_offset(16 * g)] + wts)
        with self.region("dispatch"):   # the work tables that say what each QPU thread does
            table_a = write_tables(self.scratch, items_a, self.threads)
        return (cfg_a, table_a, [gate.row_bytes, up.row_bytes]), h_streams

    def _decode(self, gate, up, down, x_full, tiles, hidden, quant_in, quant_h, wait: bool = True):
        """One token: phase A for its k experts, phase B = down projections summed over the k experts
        inside the kernel (one item per 16 output rows with k entries); one dispatch (one_dispatch) or
        two. wait=False: (wait(), out) with the (first) dispatch submitted; with two dispatches wait() waits
        for phase A and then runs phase B (submitting B before A finished could start it first: the
        emulator's jobs queue on a lock, not in order)."""
        phase_a, h_streams = self._swiglu_phase(gate, up, down, x_full, tiles, 1, quant_in, quant_h)
        cfg_b = KernelConfig.for_layout(down.spec, lay.padded_cols(down.cols), 1, "sum")
        n_groups = lay.padded_rows(hidden) // 16
        with self.region("dispatch"):
            out, oaddr = self.scratch.take(lay.padded_rows(hidden))
            ents, eaddr = self.scratch.take(16 * len(tiles) * n_groups)
            ents[:] = 0
            items_b = []
            for g in range(n_groups):
                for j, (e, _, _) in enumerate(tiles):
                    r = (g * len(tiles) + j) * 16
                    ents[r: r + 3] = [down.addr(e, 16 * g), h_streams[j][1], f32_bits(1.0)]
                items_b.append([len(tiles), eaddr + 4 * 16 * g * len(tiles), oaddr + 64 * g, 0])
            table_b = write_tables(self.scratch, items_b, self.threads)
        phase_b = (cfg_b, table_b, [down.row_bytes])
        if self.one_dispatch:
            finish = self._submit([phase_a, phase_b], "expert_layer")
        else:
            wait_a = self._submit([phase_a], "swiglu")

            def finish() -> None:
                wait_a()
                self._execute([phase_b], "down_sum")
        if not wait:
            return finish, out.view(np.float32)
        finish()
        return out.view(np.float32)

    def _down_tiles(self, down, tiles, h_streams, TT, hidden) -> np.ndarray:
        """Dispatch B for tiles of TT tokens: each tile's down projection -> f32 [tiles, TT, rows]."""
        cfg_b = KernelConfig.for_layout(down.spec, lay.padded_cols(down.cols), TT, "sum")
        n_groups = lay.padded_rows(hidden) // 16
        rows_p = lay.padded_rows(hidden)
        with self.region("dispatch"):
            out, oaddr = self.scratch.take(len(tiles) * TT * rows_p)
            ents, eaddr = self.scratch.take(16 * len(tiles) * n_groups)
            ents[:] = 0
            items_b = []
            for ti, (e, _, _) in enumerate(tiles):
                for g in range(n_groups):
                    r = (ti * n_groups + g) * 16
                    ents[r: r + 3] = [down.addr(e, 16 * g), h_streams[ti][1], f32_bits(1.0)]
                    items_b.append([1, eaddr + 4 * r, oaddr + 4 * (ti * TT * rows_p + 16 * g), 4 * rows_p])
            table_b = write_tables(self.scratch, items_b, self.threads)
        self._execute([(cfg_b, table_b, [down.row_bytes])], "down_tiles")
        return out.view(np.float32).reshape(len(tiles), TT, rows_p)

    @staticmethod
    def scratch_bytes(hidden: int, ff: int, k: int, max_tokens: int) -> int:
        """Upper bound of the scratch one call needs (tables, x and h streams, outputs)."""
        hp, fp = lay.padded_cols(hidden), lay.padded_cols(ff)
        tiles = max(k, max_tokens * k)
        TT = 4
        per_tile = (XStream(hp, TT, True).words + XStream(fp, TT, True).words + 16 + TT * lay.padded_rows(hidden)
                    + 32 * (lay.padded_rows(ff) // 16 + lay.padded_rows(hidden) // 16))
        return 4 * (tiles * per_tile + 64 * 1024)


def run_check(drv, qtype, *, hidden: int, ff: int, n_experts: int, k: int, tokens: int, threads: int = 8,
              seed: int = 0, tile: int | None = None, region=None, on_dispatch=None, one_dispatch: bool = False):
    """Random experts of `qtype`, random routing: QPU vs numpy. Returns (max relative error, counters).
    region / on_dispatch: ExpertFFN's profiling hooks (e.g. pimoe.profile.region / qpu_dispatch)."""
    from pimoe import quant

    rng = np.random.default_rng(seed)
    gq = quant.random_qtensor("gate", qtype, (n_experts, ff, hidden), rng, std=0.05)
    uq = quant.random_qtensor("up", qtype, (n_experts, ff, hidden), rng, std=0.05)
    dq = quant.random_qtensor("down", qtype, (n_experts, hidden, ff), rng, std=0.05)
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    ids = np.stack([rng.choice(n_experts, k, replace=False) for _ in range(tokens)])
    w = rng.random((tokens, k)).astype(np.float32)
    programs = Programs(drv)
    scratch = Scratch(drv, ExpertFFN.scratch_bytes(hidden, ff, k, tokens))
    mats = [QPUMatrices.upload(drv, q) for q in (gq, uq, dq)]
    run = ExpertFFN(drv, programs, scratch, threads, region=region, on_dispatch=on_dispatch,
                    one_dispatch=one_dispatch)
    t0 = time.perf_counter()
    y = run(*mats, x, ids, w, tile=tile)
    seconds = time.perf_counter() - t0
    ref = expert_ffn_reference(gq.dequantize(), uq.dequantize(), dq.dequantize(), x, ids, w)
    err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
    return err, run.counters, seconds


def main(argv=None) -> int:
    from gguf import GGMLQuantizationType as QT

    from pimoe.qpu import open_driver

    for qtype in (QT.F32, QT.Q8_0, QT.Q4_0, QT.Q4_K, QT.Q6_K):
        for tokens in (1, 4):
            with open_driver("emu", data_area_size=256 << 20) as drv:
                err, counters, seconds = run_check(drv, qtype, hidden=256, ff=256, n_experts=4, k=2, tokens=tokens)
            instr = sum(c.total_instructions for c in counters)
            weights = tokens * 2 * 3 * 256 * 256
            print(f"expert_ffn {qtype.name:5s} hidden 256 ff 256 k 2, {tokens} token(s): max rel error {err:.1e}; "
                  f"{len(counters)} dispatches, {instr} instructions ({instr * 16 / weights:.2f} per weight-token), "
                  f"{sum(c.tmu_read_bytes for c in counters)} TMU bytes, {seconds:.2f} s emulated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
