"""The GEMV kernel generator shared by gemv_f32, gemv_quant, expert_ffn and gemm_experts.

One kernel, specialised at assembly time by (weight layout kind, columns, tokens T, mode):

    mode "sum"     y[t, rows] = sum_e scale_e * W_e[rows, :] @ x_e[t, :]   (a list of entries per item)
    mode "swiglu"  h[t, rows] = w_t * silu(Wg[rows] @ x[t]) * (Wu[rows] @ x[t])  (gate and up together)

Work split: an *item* is 16 consecutive weight rows (one per lane) of one matrix (or of gate and up);
the host deals items to the QPU threads (one thread per QPU, all 64 registers and the whole 16-entry TMU
FIFO) through a per-thread table: thread t reads [item count, item list address] at table + 64 t, and
each item's 16-word descriptor with one TMU load, broadcasting the fields it needs.

Inner loop, one 32-column block per iteration (8 columns for f32): every lane streams its own row's
block words through the TMU (32-bit loads at ptr + 0/4/8/12, the pointer stepped every 4 words; the
one-token quantized kernels use vec4 loads instead, KernelConfig.vec: one tmuc config write and one
address per 4 words, at ptr + 0/16/32/48, the pointer stepped every 16), keeping
up to 16 words in flight across block boundaries (software pipelining: the load for word g + depth is
issued right after word g is consumed; the last iteration is peeled so nothing is fetched past the row).
The activations are the same for all 16 lanes, so they come through the second uniform stream (unifa /
ldunifarf) as broadcast values: no load, no rotate, one signal per value. The host (or the swiglu
epilogue, for the down projection) lays x out as the kernel reads it, per 32-column block:

    quantized kinds: [Xlo_t for t] [Xhi_t for t] then x[i, t] i-major  (Xlo/Xhi: sums of x over the
                     block's two 16-column halves; the layout needs them, see qpu_layout)
    f32:             x[i, t] i-major

The block body is a list of operations packed into dual-issue instructions by gemv_sched.

The one-token q4 swiglu kernel streams gate and up one after the other (two one-matrix passes over the
row group, each reading the x stream once: split_swiglu), which the register-file read ports favour over
streaming them together.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import qpu
from pimoe.qpu.asm import language
from qpu_kernels.gemv_sched import Op, emit
from qpu_kernels.gemv_sched import schedule_best as schedule
from qpu_kernels.qpu_layout import BLOCK, E1, M4, M8, LayoutSpec
from qpu_kernels.emit import emit_broadcast, emit_program_end, emit_thread_id
from qpu_kernels.launch import launch

FIFO_DEPTH = 16          # TMU result FIFO entries of a thread in 1-thread-per-QPU mode
MAX_THREADS = 8          # one thread per QPU
ITEM_WORDS = 16          # words per item / entry descriptor (one 16-lane TMU load)
NEG_LOG2E = -1.0 / math.log(2.0)
MIN_UNROLL = 4           # quantized blocks per loop iteration at least (see KernelConfig.unroll)
VEC_LOADS = True         # vec4 weight loads where the layout allows (KernelConfig.vec)
TMU_CFG_VEC4 = -4        # tmuc config word 0xFFFFFFFC: next lookup regular per-pixel vec4 (low byte 0xFC),
                         # the ones after it plain 32-bit (0xFF) -- the emulator's TMU config model


@dataclass(frozen=True)
class KernelConfig:
    kind: str            # "f32" | "q4" | "q8"
    nsub: int            # scale pairs per 32-column block (0 for f32)
    cols: int            # input length (multiple of 32)
    tokens: int          # T: activation vectors sharing the weights
    mode: str            # "sum" | "swiglu"
    header_out: bool = False   # swiglu: write h with block-sum headers (the down weights are quantized)
    f16_scales: bool = False   # the layout's D and M are the f16 halves of one word (qpu_layout)

    @classmethod
    def for_layout(cls, spec: LayoutSpec, cols: int, tokens: int, mode: str, header_out: bool = False):
        return cls(spec.kind, spec.nsub, cols, tokens, mode, header_out=header_out, f16_scales=spec.f16_scales)

    @property
    def spec(self) -> LayoutSpec:
        return LayoutSpec(self.kind, self.nsub, self.f16_scales)

    @property
    def n_mats(self) -> int:
        return 2 if self.mode == "swiglu" else 1

    @property
    def block_cols(self) -> int:
        return 8 if self.kind == "f32" else BLOCK

    @property
    def words_per_block(self) -> int:
        """Words per lane (row) per loop block, per matrix."""
        return 8 if self.kind == "f32" else self.spec.block_words

    @property
    def n_blocks(self) -> int:
        return self.cols // self.block_cols

    @property
    def unroll(self) -> int:
        """Blocks per loop iteration: enough that 16 loads can be in flight (the FIFO depth), and a
        divisor of the block count."""
        per_block = self.words_per_block * self.n_mats
        u = max(MIN_UNROLL if self.kind != "f32" else 1, -(-FIFO_DEPTH // per_block))
        while self.n_blocks % u:
            u -= 1
        return u

    @property
    def iterations(self) -> int:
        return self.n_blocks // self.unroll

    @property
    def vec(self) -> int:
        """32-bit words per TMU load of the weights: 4 (one vec4 lookup fills four FIFO entries, so one
        address write serves four words) for the one-token quantized kernels whose iteration is whole
        16-byte groups (rows then are too, and every lane's row starts 16-byte aligned), one matrix at a
        time (a vec4 load fills the FIFO with four words of one row: the two-matrix body, which takes
        gate and up word by word, keeps 32-bit loads); else 1."""
        if not VEC_LOADS or self.kind == "f32" or self.tokens != 1 or (self.n_mats != 1 and not split_swiglu(self)):
            return 1
        return 4 if (self.unroll * self.words_per_block) % 4 == 0 else 1

    @property
    def x_stream(self) -> "XStream":
        """The layout of the activations this kernel reads."""
        return XStream(self.cols, self.tokens, self.kind != "f32")

    @property
    def x_words(self) -> int:
        """Words of one x stream (all T tokens)."""
        return self.x_stream.words


@dataclass(frozen=True)
class XStream:
    """The activation stream the kernel reads through unifa, one definition for the host (gemv_quant,
    expert_ffn), the kernel's block loop and the swiglu epilogue (which writes h in this layout for the
    down projection). Per 32-column block, `block_words` words:

        quantized:  [Xlo_t for t] [Xhi_t for t] then x[i, t] i-major  (Xlo/Xhi: sums of x over the
                    block's two 16-column halves)
        f32:        x[i, t] i-major
    """
    cols: int            # a multiple of 32
    tokens: int
    quantized: bool

    @property
    def header_words(self) -> int:
        return 2 * self.tokens if self.quantized else 0

    @property
    def block_words(self) -> int:
        return self.header_words + BLOCK * self.tokens

    @property
    def words(self) -> int:
        return self.cols // BLOCK * self.block_words

    def value_offset(self, col: int, token: int = 0) -> int:
        """Word offset of x[token, col]."""
        b, i = divmod(col, BLOCK)
        return b * self.block_words + self.header_words + i * self.tokens + token

    def half_sum_offset(self, col: int, token: int = 0) -> int:
        """Word offset of the sum over the 16-column half holding `col` (quantized streams only)."""
        b, i = divmod(col, BLOCK)
        return b * self.block_words + (i // 16) * self.tokens + token

    def pack(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x f32 [T, cols] -> the stream, f32 [words] (written into `out` when given)."""
        T, cols = x.shape
        blocks = x.reshape(T, cols // BLOCK, BLOCK).transpose(1, 2, 0)          # [nb, 32, T]
        body = blocks.reshape(cols // BLOCK, BLOCK * T)
        if self.quantized:
            halves = x.reshape(T, cols // BLOCK, 2, 16).sum(axis=3, dtype=np.float32)  # [T, nb, 2]
            head = halves.transpose(1, 2, 0).reshape(cols // BLOCK, 2 * T)
            body = np.concatenate([head, body], axis=1)
        flat = body.reshape(-1).astype(np.float32)
        if out is not None:
            out[: flat.size] = flat
            return out
        return flat


def x_stream_words(cols: int, tokens: int, quantized: bool) -> int:
    return XStream(cols, tokens, quantized).words


def make_x_stream(x: np.ndarray, quantized: bool, out: np.ndarray | None = None) -> np.ndarray:
    """x f32 [T, cols] (cols a multiple of 32) -> the stream the kernel reads (XStream.pack)."""
    return XStream(x.shape[1], x.shape[0], quantized).pack(x, out)


# ---- register allocation -----------------------------------------------------------------------------

class Regs:
    """Names of the register-file registers a kernel variant uses (rf0..rf63 in 1-thread mode)."""

    def __init__(self, cfg: KernelConfig):
        self.next = 0
        T, nm = cfg.tokens, cfg.n_mats
        take = self.take
        for name in ("TAB", "NITEMS", "ITP", "CNT", "NBM1", "LANE4", "MASK", "EXPO", "K16", "K4", "K8", "K12",
                     "K1", "K64", "XADDR", "NL2E"):
            setattr(self, name, take())
        if cfg.vec == 4:
            self.K32, self.K48 = take(), take()
        self.RB = [take() for _ in range(nm)]        # row bytes of each matrix
        self.LRB = [take() for _ in range(nm)]       # lane * row bytes
        self.PTR = [take() for _ in range(nm)]
        if cfg.mode == "sum":
            self.NENT, self.ENTP, self.OUTP, self.OUTS, self.SCAL = (take() for _ in range(5))
            self.TOT = [take() for _ in range(T)]
        else:
            self.HADDR, self.HSUM = take(), take()
            self.WT = [take() for _ in range(T)]
        self.A = [[take() for _ in range(T)] for _ in range(nm)]
        if cfg.kind != "f32":
            ns = cfg.nsub
            # block sums: the first in accumulator r4 (its fadds then need no register-file read port,
            # and those ports are scarce), the others in the register file
            self.S = [["r4" if (m, t) == (0, 0) else take() for t in range(T)] for m in range(nm)]
            self.TMPV = take()
            self.PX = take()
            self.PX2 = take()
            self.XL = [take() for _ in range(T)]
            self.XH = [take() for _ in range(T)]
            self.SC = [[take() for _ in range(cfg.spec.scale_words)] for _ in range(nm)]
            # q4: the code word rotated by 8 bits, per matrix (pairs 2 and 1 come from it, see block_ops)
            # (kept only when the code-word pool still gets 2 words per matrix; else two rotates per word)
            self.W8 = [take() for _ in range(nm)] if cfg.kind == "q4" and self.next + 3 * nm + 4 + 3 <= 64 else []
            # A second set of the per-block registers (block sums, x header, scales, finalize temp) for
            # odd blocks of an unrolled iteration (variants with alt): block b + 1's scale loads and MACs
            # then need not wait for block b's finalize. Measured: it helps the swiglu kernels a little and
            # costs the one-matrix kernels 1-2 instructions per block (the second block sum lives in the
            # register file instead of r4, and register-file read ports are scarce), so both are tried.
            # One-matrix kernels alternate all but the block sums (S stays in r4): the next block's scale
            # and x-header loads then need not wait for this block's finalize to read the old ones.
            alt = (nm * T if nm == 2 else 0) + 2 * T + nm * cfg.spec.scale_words + 1
            self.ALT = cfg.unroll > 1 and self.next + alt + 8 + 3 <= 64
            if self.ALT:
                self.S2 = [[take() for _ in range(T)] for _ in range(nm)] if nm == 2 else self.S
                self.XL2 = [take() for _ in range(T)]
                self.XH2 = [take() for _ in range(T)]
                self.SC2 = [[take() for _ in range(cfg.spec.scale_words)] for _ in range(nm)]
                self.FT = take()
            self.CPOOL = [take() for _ in range(min(8, 64 - self.next - 4))]
        else:
            self.CPOOL = ["r0", "r1", "r2"]
        left = 64 - self.next
        if left < 3:
            raise PimoeError(f"gemv kernel {cfg}: needs more than 64 registers; use fewer tokens per tile")
        self.XPOOL = [take() for _ in range(min(8, left))]

    def take(self) -> str:
        n = self.next
        self.next += 1
        return f"rf{n}"


# ---- the block body ----------------------------------------------------------------------------------

class _Pool:
    def __init__(self, regs):
        self.regs, self.i = list(regs), 0

    def get(self) -> str:
        r = self.regs[self.i % len(self.regs)]
        self.i += 1
        return r


def _load_plan(cfg: KernelConfig):
    """Per loop iteration (cfg.unroll blocks), the TMU loads in FIFO order: (matrix, word index within
    the iteration's words of that matrix's row)."""
    nw = cfg.words_per_block
    sw = 0 if cfg.kind == "f32" else cfg.spec.scale_words
    order = []
    for b in range(cfg.unroll):
        order += [(m, b * nw + j) for m in range(cfg.n_mats) for j in range(sw)]
        order += [(m, b * nw + j) for j in range(sw, nw) for m in range(cfg.n_mats)]
    return order


def _issue_ops(cfg: KernelConfig, rg: Regs, m: int, j: int, tmua_unit: str = "any") -> list[Op]:
    """The TMU request for word j of the iteration of matrix m (pointer steps included)."""
    nw = cfg.words_per_block * cfg.unroll
    ptr = rg.PTR[m]
    ops = []
    if cfg.vec == 4:
        return _issue_vec4_ops(cfg, rg, ptr, j, nw, tmua_unit)
    if j % 4 == 0 and j > 0:
        ops.append(Op("any", "add", ptr, (ptr, rg.K16), alts=[]))
    off = 4 * (j % 4)
    konst = {0: None, 4: rg.K4, 8: rg.K8, 12: rg.K12}[off]
    alts = [("add", (ptr, konst))] if konst else [("mov", (ptr,))]
    ops.append(Op(tmua_unit, "add", "tmua", (ptr, off), reads=("@fifo",), writes=("@tmuq",), alts=alts))
    ops[-1].reads += ("@tmuq",)
    if j == nw - 1:
        step = 16 if nw % 4 == 0 else 4 * (nw % 4)
        kreg = {16: rg.K16, 4: rg.K4, 8: rg.K8, 12: rg.K12}[step]
        ops.append(Op("any", "add", ptr, (ptr, kreg)))
    return ops


def _issue_vec4_ops(cfg: KernelConfig, rg: Regs, ptr: str, j: int, nw: int, tmua_unit: str) -> list[Op]:
    """The vec4 TMU request for words j..j+3 of the iteration (j a multiple of 4): the config write
    (tmuc) and the address, the pointer stepped every 16 words and past the iteration after its last
    load. Nothing for the other three words."""
    if j % 4:
        return []
    konst = {16: rg.K16, 32: rg.K32, 48: rg.K48, 64: rg.K64}
    ops = []
    if j % 16 == 0 and j > 0:
        ops.append(Op("any", "add", ptr, (ptr, rg.K64), alts=[]))
    ops.append(Op("any", "mov", "tmuc", (TMU_CFG_VEC4,), reads=("@tmuq",), writes=("@tmuq",)))
    off = 4 * (j % 16)
    form = ("add", (ptr, konst[off])) if off else ("mov", (ptr,))
    ops.append(Op(tmua_unit, form[0], "tmua", form[1], reads=("@fifo", "@tmuq"), writes=("@tmuq",)))
    if j == nw - 4:
        ops.append(Op("any", "add", ptr, (ptr, konst[4 * (nw - j // 16 * 16)])))
    return ops


@dataclass(frozen=True)
class Variant:
    """One register/ALU assignment of the block body; the scheduler packs each and the shortest wins.

    The add ALU carries the fadds, masks and rotates, so the integer adds are usually best pinned to the
    mul ALU -- but register-file read ports (two per instruction) and latencies decide, so that is
    measured per layout, not assumed."""
    pair_regs: int            # registers holding extracted code pairs (r0-r2, then PX, PX2)
    alt_x: bool = False       # alternate x values between r5 and a register-file pool
    expo_unit: str = "mul"    # ALU of the f16 exponent adds ("mul" | "any")
    tmua_unit: str = "any"    # ALU of the TMU address writes ("mul" | "any")
    alt_block: bool = False   # odd blocks of an iteration use the second set of block registers


# The variants tried at assembly time. (The winners over sum/swiglu x q4/q8 x T = 1/4 at unroll 4;
# alternate x registers and a fifth pair register never won once the block registers alternate, and
# cost assembly time.)
VARIANTS = (Variant(3), Variant(3, tmua_unit="mul"), Variant(3, alt_block=True),
            Variant(3, tmua_unit="mul", alt_block=True), Variant(4, alt_block=True),
            Variant(4, expo_unit="any", alt_block=True))


class _BlockBuilder:
    """Builds the operations of one loop iteration (cfg.unroll blocks) in program order: one emitter per
    layout family (f32, quantized), sharing the TMU/FIFO and x-stream bookkeeping."""

    def __init__(self, cfg: KernelConfig, rg: Regs, variant: Variant, *, issue_current_tail: bool,
                 issue_next_head: bool):
        self.cfg, self.rg, self.v = cfg, rg, variant
        self.ops: list[Op] = []
        self.plan = _load_plan(cfg)
        W = len(self.plan)
        depth = min(W, FIFO_DEPTH)
        # issue schedule: after consuming FIFO entry n, issue load n + depth (of this block or the next)
        self.after: dict[int, list[Op]] = {}
        for g in range(depth, W + depth):
            n = g - depth
            if cfg.vec == 4:        # load g fills entries g..g+3: it waits until g + 3 - depth is consumed
                if g % 4:
                    continue
                n += 3
            if g < W and issue_current_tail:
                self.after.setdefault(n, []).extend(_issue_ops(cfg, rg, *self.plan[g], tmua_unit=variant.tmua_unit))
            elif g >= W and issue_next_head:
                self.after.setdefault(n, []).extend(_issue_ops(cfg, rg, *self.plan[g - W],
                                                               tmua_unit=variant.tmua_unit))
        self.cpool = _Pool(rg.CPOOL)
        self.xpool = _Pool(rg.XPOOL)
        self.word_reg: dict[tuple[int, int], str] = {}
        self.fifo_n = 0
        self.alt = 0

    # ---- streams

    def ldtmu(self, m: int, j: int, dst: str) -> None:
        """Consume the next TMU result (word j of matrix m) into dst, then issue the loads due after it."""
        self.ops.append(Op("sig", "ldtmu", dst, reads=("@fifo", "@tmuq"), writes=("@fifo",)))
        self.word_reg[(m, j)] = dst
        self.ops.extend(self.after.get(self.fifo_n, []))
        self.fifo_n += 1

    def ldx(self, dst: str | None = None) -> str:
        dst = dst or self.xpool.get()
        self.ops.append(Op("sig", "ldunifarf", dst, reads=("@unifa", "@unifa_addr"), writes=("@unifa",)))
        return dst

    def ldx_r5(self) -> str:
        # x through the second uniform stream into r5: every lane gets the value, no register-file read
        self.ops.append(Op("sig", "ldunifa", None, reads=("@unifa", "@unifa_addr"), writes=("@unifa", "r5")))
        return "r5"

    def ldx_alt(self) -> str:
        # optionally alternate r5 and a register-file pool so one x value can load while the previous
        # one is in use (it costs register-file reads, so it only sometimes pays)
        self.alt ^= 1
        return self.ldx_r5() if (self.alt or not self.v.alt_x) else self.ldx()

    # ---- f32 layout: one weight per word; the x value is shared by the matrices

    def f32_blocks(self) -> None:
        cfg, rg = self.cfg, self.rg
        for j in range(8 * cfg.unroll):
            cs = []
            for m in range(cfg.n_mats):
                c = self.cpool.get()
                self.ldtmu(m, j, c)
                cs.append(c)
            for t in range(cfg.tokens):
                xv = self.ldx_alt()
                for m in range(cfg.n_mats):
                    self.ops.append(Op("mul", "fmul", "r3", (cs[m], xv)))
                    self.ops.append(Op("add", "fadd", rg.A[m][t], (rg.A[m][t], "r3")))

    # ---- quantized layouts (q4, q8)

    def block_regs(self, b: int):
        """(S, XL, XH, SC, finalize temp) of block b of the iteration: odd blocks use the second set."""
        rg = self.rg
        if self.v.alt_block and getattr(rg, "ALT", False) and b % 2:
            return rg.S2, rg.XL2, rg.XH2, rg.SC2, rg.FT
        return rg.S, rg.XL, rg.XH, rg.SC, "r3"

    def finalize(self, sub: int, b: int) -> None:
        """A += D (S - X) + M X for sub-block `sub` of block b (see qpu_layout)."""
        cfg, rg, ops = self.cfg, self.rg, self.ops
        S_, XL_, XH_, SC_, ft = self.block_regs(b)
        if cfg.nsub == 1:
            for t in range(cfg.tokens):
                ops.append(Op("add", "fadd", XL_[t], (XL_[t], XH_[t])))
        for m in range(cfg.n_mats):
            if cfg.f16_scales:      # one word: D in the low f16 half, M in the high half
                d, mn = (SC_[m][sub], "l"), (SC_[m][sub], "h")
            else:
                d, mn = SC_[m][2 * sub], SC_[m][2 * sub + 1]
            for t in range(cfg.tokens):
                X = XL_[t] if (cfg.nsub == 1 or sub == 0) else XH_[t]
                s = S_[m][t]
                ops.append(Op("add", "fsub", ft, (s, X)))
                ops.append(Op("mul", "fmul", ft, (ft, d)))
                ops.append(Op("mul", "fmul", rg.TMPV, (X, mn)))
                ops.append(Op("add", "fadd", rg.A[m][t], (rg.A[m][t], ft)))
                ops.append(Op("add", "fadd", rg.A[m][t], (rg.A[m][t], rg.TMPV)))

    def extract(self, p: int, group) -> list[str]:
        """Ops turning code pair p of every matrix's word into two f16 (1 + c/k) halves.

        q4 pairs sit at bit offsets 6 (p0), 10 (p1), 14 (p2) and 2 (p3) of the word (qpu_layout).
        Only the add ALU shifts right, so the word is rotated right by 8 once (w8): p2 is then at
        offset 6 of w8 and p1 at offset 2, and offset 2 -> 6 is a shift left of the low 24 bits,
        which umul24 by 16 does on the mul ALU (p3 likewise from the word itself). One add-ALU
        rotate per 8 codes instead of two: the add ALU is the busier one."""
        cfg, rg, ops = self.cfg, self.rg, self.ops
        out = []
        for (m, j) in group:
            c = self.word_reg[(m, j)]
            P = self.pair_pool.get()
            src = c
            if cfg.kind == "q4" and p in (1, 2) and not rg.W8:
                amt = 4 * p
                ops.append(Op("add", "ror", P, (c, amt), alts=[("ror", (c, {4: rg.K4, 8: rg.K8}[amt]))]))
                src = P
            elif cfg.kind == "q4" and p == 1:
                w8 = rg.W8[m]
                ops.append(Op("add", "ror", w8, (c, 8), alts=[("ror", (c, rg.K8))]))
                ops.append(Op("mul", "umul24", P, (w8, rg.K16)))
                src = P
            elif cfg.kind == "q4" and p == 2:
                src = rg.W8[m]
            elif cfg.kind == "q4" and p == 3:
                ops.append(Op("mul", "umul24", P, (c, rg.K16)))
                src = P
            elif cfg.kind == "q8" and p == 1:
                ops.append(Op("add", "ror", P, (c, 8), alts=[("ror", (c, rg.K8))]))
                src = P
            ops.append(Op("add", "band", P, (src, rg.MASK)))
            ops.append(Op(self.v.expo_unit, "add", P, (P, rg.EXPO)))
            out.append(P)
        return out

    def quant_blocks(self) -> None:
        cfg, rg, ops = self.cfg, self.rg, self.ops
        if self.v.pair_regs < 2 * cfg.n_mats:
            raise PimoeError(f"{self.v.pair_regs} pair registers cannot hold pairs p and p + 1 of "
                             f"{cfg.n_mats} matrices")
        self.pair_pool = _Pool(["r0", "r1", "r2", rg.PX, rg.PX2][: self.v.pair_regs])
        sw, nw, T = cfg.spec.scale_words, cfg.words_per_block, cfg.tokens
        per_block = nw * cfg.n_mats
        per_word = 8 if cfg.kind == "q4" else 4
        sub_len = BLOCK // cfg.nsub
        for b in range(cfg.unroll):
            S_b, XL_b, XH_b, SC_b, _ = self.block_regs(b)
            plan_b = self.plan[b * per_block:(b + 1) * per_block]
            # scales first (FIFO order), then the x block header
            for (m, j) in plan_b[: sw * cfg.n_mats]:
                self.ldtmu(m, j, SC_b[m][j - b * nw])
            for t in range(T):
                self.ldx(XL_b[t])
            for t in range(T):
                self.ldx(XH_b[t])
            code_plan = plan_b[sw * cfg.n_mats:]
            # code words in FIFO order; matrices interleaved word by word, so each x value is loaded once
            groups = [code_plan[i: i + cfg.n_mats] for i in range(0, len(code_plan), cfg.n_mats)]
            for (m, j) in groups[0]:
                self.ldtmu(m, j, self.cpool.get())
            for gi, group in enumerate(groups):
                w = group[0][1] - b * nw - sw
                if gi + 1 < len(groups):        # the next word's loads one word ahead of its use
                    for (m, j) in groups[gi + 1]:
                        self.ldtmu(m, j, self.cpool.get())
                npairs = per_word // 2
                # software pipelined in program order: pair p + 1 is extracted before pair p is multiplied
                pending = self.extract(0, group)
                for p in range(npairs):
                    pairs = pending
                    if p + 1 < npairs:
                        pending = self.extract(p + 1, group)
                    base = w * per_word + 2 * p
                    for h in range(2):
                        i = base + h
                        for t in range(T):
                            xv = self.ldx_alt()
                            for mi, (m, j) in enumerate(group):
                                s = S_b[m][t]
                                if i % sub_len == 0:
                                    ops.append(Op("mul", "fmul", s, ((pairs[mi], "lh"[h]), xv)))
                                else:
                                    ops.append(Op("mul", "fmul", "r3", ((pairs[mi], "lh"[h]), xv)))
                                    ops.append(Op("add", "fadd", s, (s, "r3")))
                last_i = w * per_word + per_word - 1
                if (last_i + 1) % sub_len == 0:
                    self.finalize(last_i // sub_len, b)


def block_ops(cfg: KernelConfig, rg: Regs, *, issue_current_tail: bool, issue_next_head: bool,
              count: bool, variant: Variant | None = None) -> list[Op]:
    """Operations of one loop iteration in program order. Loads of this iteration with FIFO index >= depth
    are issued here (issue_current_tail), and the next iteration's first `depth` loads (issue_next_head)."""
    if variant is None:         # the first variant with enough pair registers for this kernel
        variant = next(v for v in VARIANTS if v.pair_regs >= 2 * cfg.n_mats)
    bb = _BlockBuilder(cfg, rg, variant, issue_current_tail=issue_current_tail, issue_next_head=issue_next_head)
    if count:
        bb.ops.append(Op("add", "sub", rg.CNT, (rg.CNT, 1), cond="pushz", writes=("@flags",),
                         alts=[("sub", (rg.CNT, rg.K1))], priority=1000))
    if cfg.kind == "f32":
        bb.f32_blocks()
    else:
        bb.quant_blocks()
    return bb.ops


def schedule_block(cfg: KernelConfig, rg: Regs, **kw):
    """The shortest schedule over a few register-assignment variants (tried at assembly time)."""
    best = None
    need = 2 * cfg.n_mats             # pair p + 1 is extracted while pair p is in use: 2 pairs per matrix
    fewest = min(v.pair_regs for v in VARIANTS if v.pair_regs >= need)
    for v in VARIANTS:
        if v.pair_regs != fewest:            # more pair registers than needed never won (register-file ports)
            continue
        b = schedule(block_ops(cfg, rg, variant=v, **kw))
        if best is None or len(b) < len(best):
            best = b
    return best


def prologue_issue_ops(cfg: KernelConfig, rg: Regs) -> list[Op]:
    plan = _load_plan(cfg)
    depth = min(len(plan), FIFO_DEPTH)
    ops = []
    for (m, j) in plan[:depth]:
        ops.extend(_issue_ops(cfg, rg, m, j))
    return ops


# ---- the kernel --------------------------------------------------------------------------------------

@qpu
def qpu_gemv(asm, *, cfg: KernelConfig | None = None, threads: int = MAX_THREADS, chain: tuple = ()):
    """See the module docstring. Uniforms: table address, NB-1, MASK, EXPO, K16, -log2(e), row bytes of
    each matrix.

    chain: several configurations run one after the other in one dispatch (e.g. a decode token's swiglu
    then down_sum), each reading its own uniforms (uniforms_for, concatenated) and work table. Between
    two phases every thread waits for its stores (tmuwt) and then for all the other threads at a barrier
    (barrierid syncb: the dispatch's batches form one supergroup; py-videocore6's barrier test shows it
    holding across QPUs on a Pi 4), so a phase reads what the one before wrote."""
    phases = tuple(chain) or (cfg,)
    for phase, cfg in enumerate(phases):
        done = "done" if len(phases) == 1 else f"done{phase}"
        lang = language(asm)
        rg = Regs(cfg)
        rfr = lambda name: lang[name]  # noqa: E731
        T = cfg.tokens
        nm = cfg.n_mats
        for name in ("TAB", "NBM1", "MASK", "EXPO", "K16", "NL2E"):
            nop(sig=ldunifrf(rfr(getattr(rg, name))))
        for m in range(nm):
            nop(sig=ldunifrf(rfr(rg.RB[m])))
        emit_thread_id(asm, r0, threads)
        shl(r0, r0, 6)
        eidx(r1)
        shl(r1, r1, 2)
        mov(rfr(rg.LANE4), r1)
        add(r0, r0, rfr(rg.TAB))
        add(tmua, r0, r1)
        eidx(r3).mov(rfr(rg.K4), 4)
        for m in range(nm):
            umul24(rfr(rg.LRB[m]), r3, rfr(rg.RB[m]))
        nop(sig=ldtmu(r2))
        mov(rfr(rg.K8), 8)
        mov(rfr(rg.K12), 12)
        mov(rfr(rg.K1), 1)
        shl(rfr(rg.K64), rfr(rg.K4), 4)
        if cfg.vec == 4:
            shl(rfr(rg.K32), rfr(rg.K4), 3)
            add(rfr(rg.K48), rfr(rg.K16), rfr(rg.K32))
        emit_broadcast(asm, rfr(rg.NITEMS), r2, 0)
        emit_broadcast(asm, rfr(rg.ITP), r2, 1)
        mov(null, rfr(rg.NITEMS), cond="pushz")
        b(getattr(R, done), cond="alla")
        nop()
        nop()
        nop()
        with loop as item_loop:
            # ---- item descriptor
            add(tmua, rfr(rg.ITP), rfr(rg.LANE4))
            nop(sig=ldtmu(r2))
            add(rfr(rg.ITP), rfr(rg.ITP), rfr(rg.K64))
            if cfg.mode == "sum":
                # [n_entries, entries address, out address, out token stride]
                emit_broadcast(asm, rfr(rg.NENT), r2, 0)
                emit_broadcast(asm, rfr(rg.ENTP), r2, 1)
                emit_broadcast(asm, rfr(rg.OUTP), r2, 2)
                emit_broadcast(asm, rfr(rg.OUTS), r2, 3)
                for t in range(T):
                    mov(rfr(rg.TOT[t]), 0)
                with loop as entry_loop:
                    add(tmua, rfr(rg.ENTP), rfr(rg.LANE4))
                    nop(sig=ldtmu(r2))
                    add(rfr(rg.ENTP), rfr(rg.ENTP), rfr(rg.K64))
                    # [weights address (row group), x stream address, scale]
                    emit_broadcast(asm, r0, r2, 0)
                    add(rfr(rg.PTR[0]), r0, rfr(rg.LRB[0]))
                    emit_broadcast(asm, rfr(rg.XADDR), r2, 1)
                    emit_broadcast(asm, rfr(rg.SCAL), r2, 2)
                    _emit_entry(asm, lang, cfg, rg)
                    for t in range(T):
                        nop().fmul(r0, rfr(rg.A[0][t]), rfr(rg.SCAL))
                        fadd(rfr(rg.TOT[t]), rfr(rg.TOT[t]), r0)
                    sub(rfr(rg.NENT), rfr(rg.NENT), 1, cond="pushz")
                    entry_loop.b(cond="anyna")
                    nop()
                    nop()
                    nop()
                # y[t, row] at out + t * stride + 4 * lane
                add(r1, rfr(rg.OUTP), rfr(rg.LANE4))
                for t in range(T):
                    mov(tmud, rfr(rg.TOT[t]))
                    mov(tmua, r1).add(r1, r1, rfr(rg.OUTS))
            else:
                # [gate rows, up rows, x stream, h address (token 0, lane 0), h block-sum address, w_t ...]
                emit_broadcast(asm, r0, r2, 0)
                add(rfr(rg.PTR[0]), r0, rfr(rg.LRB[0]))
                emit_broadcast(asm, r0, r2, 1)
                add(rfr(rg.PTR[1]), r0, rfr(rg.LRB[1]))
                emit_broadcast(asm, rfr(rg.XADDR), r2, 2)
                emit_broadcast(asm, rfr(rg.HADDR), r2, 3)
                emit_broadcast(asm, rfr(rg.HSUM), r2, 4)
                for t in range(T):
                    emit_broadcast(asm, rfr(rg.WT[t]), r2, 5 + t)
                if split_swiglu(cfg):
                    for m in range(nm):
                        _emit_entry(asm, lang, *_one_matrix_pass(cfg, rg, m))
                else:
                    _emit_entry(asm, lang, cfg, rg)
                _emit_swiglu_epilogue(asm, lang, cfg, rg)
            sub(rfr(rg.NITEMS), rfr(rg.NITEMS), 1, cond="pushz")
            item_loop.b(cond="anyna")
            nop()
            nop()
            nop()
        getattr(L, done)
        tmuwt()
        if phase + 1 < len(phases):
            barrierid(syncb, sig=thrsw)
            nop()
            nop()
    emit_program_end(asm)


def split_swiglu(cfg: KernelConfig) -> bool:
    """Whether the swiglu kernel streams gate and up one after the other (two one-matrix passes over the
    row group, each reading the x stream, with vec4 weight loads) instead of word by word together (one
    pass, each x value serving both matrices). Together reads the x stream once but takes more
    instructions: the second matrix's block sums, pair registers and constants all live in the register
    file, whose two read ports per instruction then bound the schedule. Measured on the 2048-column
    block bodies, T = 1, instructions per 4 blocks of both matrices: q4 611 together, 2 x 255 apart; q8
    601 together, 2 x 248 apart. On a Qwen3 layer (k = 8) apart the timing model predicts Q4_K 5.35 ms
    (was 5.67 together) but Q8_0 7.30 ms (was 6.84): it charges every uniform as a DRAM read, and the
    9-bit q8 layer is memory bound there, so q8 stays together (results/kernel-bench-20261204-155845.json
    for the apart figures)."""
    return cfg.mode == "swiglu" and cfg.kind == "q4" and cfg.tokens == 1


def _one_matrix_pass(cfg: KernelConfig, rg: Regs, m: int):
    """(config, registers) of a one-matrix pass over matrix m of a swiglu kernel: the block body of the
    "sum" kernel on m's pointer, accumulators and scale registers (block sums in r4, as in "sum")."""
    sub = replace(cfg, mode="sum", header_out=False)
    if sub.iterations != cfg.iterations:       # the NB-1 uniform serves both
        raise PimoeError(f"gemv kernel {cfg}: a one-matrix pass would unroll differently")
    pv = copy.copy(rg)
    pv.PTR, pv.RB, pv.LRB, pv.A = [rg.PTR[m]], [rg.RB[m]], [rg.LRB[m]], [rg.A[m]]
    pv.S, pv.SC = [rg.S[0]], [rg.SC[m]]
    pv.W8 = [rg.W8[m]] if rg.W8 else []
    if getattr(rg, "ALT", False):
        pv.S2, pv.SC2 = pv.S, [rg.SC2[m]]
    return sub, pv


def _emit_entry(asm, lang, cfg: KernelConfig, rg: Regs):
    """One (row group, x stream) pass: accumulators A[m][t] = W_m[16 rows] @ x_t."""
    rf = lambda name: lang[name]  # noqa: E731
    mov, nop = lang["mov"], lang["nop"]
    mov(lang["unifa"], rf(rg.XADDR))
    for m in range(cfg.n_mats):
        for t in range(cfg.tokens):
            mov(rf(rg.A[m][t]), 0)
    mov(rf(rg.CNT), rf(rg.NBM1))
    nop()
    emit(lang, schedule(prologue_issue_ops(cfg, rg)))
    nb = cfg.iterations
    if nb > 1:
        body = schedule_block(cfg, rg, issue_current_tail=True, issue_next_head=True, count=True)
        from qpu_kernels.gemv_sched import Bundle

        flag_at = max(i for i, bd in enumerate(body) if bd.add is not None and bd.add[0].cond == "pushz")
        while len(body) < 4 or flag_at >= len(body) - 3:   # the branch must see the counter's flags
            body.append(Bundle())
        with lang["loop"] as block_loop:
            emit(lang, body[:-3])
            block_loop.b(cond="anyna")
            emit(lang, body[-3:])
    tail = schedule_block(cfg, rg, issue_current_tail=True, issue_next_head=False, count=False)
    emit(lang, tail)


def _emit_swiglu_epilogue(asm, lang, cfg: KernelConfig, rg: Regs):
    """h_t = w_t * silu(g_t) * u_t for the 16 rows; silu(g) = g / (1 + 2^(-g log2 e)) on the SFU."""
    rf = lambda name: lang[name]  # noqa: E731
    L_ = lang
    nop, mov, fadd, eidx, add = L_["nop"], L_["mov"], L_["fadd"], L_["eidx"], L_["add"]
    r0, r1, r2, r3, r4 = (L_[f"r{i}"] for i in range(5))
    T = cfg.tokens
    # lane l of token t: h + 4 * (T * l + t)
    eidx(r3)
    nop().umul24(r3, r3, 4 * T if 4 * T < 16 else rf(rg.K16))   # 4 T bytes per lane (T = 4: K16)
    add(r3, r3, rf(rg.HADDR))
    for t in range(T):
        g, u = rf(rg.A[0][t]), rf(rg.A[1][t])
        nop().fmul(r0, g, rf(rg.NL2E))
        mov(L_["exp"], r0)
        nop()
        nop()
        fadd(r1, r4, 1.0)
        mov(L_["recip"], r1)
        nop()
        nop()
        nop().fmul(r2, g, r4)
        nop().fmul(r2, r2, u)
        nop().fmul(r2, r2, rf(rg.WT[t]))
        mov(L_["tmud"], r2)
        mov(L_["tmua"], r3).add(r3, r3, 4)
        if cfg.header_out:
            # 16-lane sum by rotations (every lane ends with the total); lane 0 stores it
            mov(r0, r2)
            for k in (1, 2, 4, 8):
                nop()
                L_["rotate"](r1, r0, k)
                fadd(r0, r0, r1)
            eidx(r1, cond="pushz")
            mov(L_["tmud"], r0)
            add(L_["tmua"], rf(rg.HSUM), 4 * t if 4 * t < 16 else rf(rg.K16), cond="ifa")


@lru_cache(maxsize=None)
def kernel_words(cfg: KernelConfig, threads: int = MAX_THREADS) -> tuple[int, ...]:
    from pimoe.qpu import assemble

    return tuple(assemble(qpu_gemv, cfg=cfg, threads=threads))


@lru_cache(maxsize=None)
def chain_words(cfgs: tuple, threads: int = MAX_THREADS) -> tuple[int, ...]:
    """The words of one dispatch running the configurations one after the other (qpu_gemv's chain)."""
    from pimoe.qpu import assemble

    return tuple(assemble(qpu_gemv, chain=tuple(cfgs), threads=threads))


def uniforms_for(cfg: KernelConfig, table_addr: int, row_bytes: list[int]) -> list[int]:
    mask = M4 if cfg.kind == "q4" else M8
    return [table_addr, cfg.iterations - 1, mask, E1, 16, int(np.float32(NEG_LOG2E).view(np.uint32))] + \
        [int(rb) for rb in row_bytes]


# ---- host side ---------------------------------------------------------------------------------------

class Programs:
    """Assembled kernels per (config, threads), placed once in a driver's code area."""

    def __init__(self, drv):
        self.drv = drv
        self._code: dict = {}

    def get(self, cfg, threads: int):
        """cfg: a KernelConfig, or a tuple of them for a chained dispatch."""
        key = (cfg, threads)
        if key not in self._code:
            words = chain_words(cfg, threads) if isinstance(cfg, tuple) else kernel_words(cfg, threads)
            self._code[key] = self.drv.program(list(words))
        return self._code[key]


class Scratch:
    """A bump allocator over one driver buffer, reset per dispatch (tables, x streams, outputs)."""

    def __init__(self, drv, nbytes: int):
        self.buf = drv.alloc(nbytes // 4, dtype=np.uint32)
        self.base = base_address(self.buf)
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def take(self, words: int, align_words: int = 16) -> tuple[np.ndarray, int]:
        start = -(-self.pos // align_words) * align_words
        end = start + words
        if end > self.buf.size:
            raise PimoeError(f"QPU scratch buffer too small: {end * 4} bytes needed, {self.buf.size * 4} "
                             f"allocated")
        self.pos = end
        return self.buf[start:end], self.base + 4 * start


def base_address(arr) -> int:
    """Bus address of a driver array's first element, without building the whole addresses() table
    (pimoe's emulator keeps it as .address; py-videocore6's arrays answer addresses() on a view)."""
    a = getattr(arr, "address", None)
    if a is None:
        a = np.asarray(arr.reshape(-1)[:1].addresses()).reshape(-1)[0]
    return int(a)


def deal_items(n_items: int, threads: int) -> list[list[int]]:
    """Items round-robin over the threads."""
    return [list(range(t, n_items, threads)) for t in range(threads)]


def write_tables(scratch: Scratch, items: list[list[int]], threads: int) -> int:
    """items: per item its descriptor words (<= 16). Writes the per-thread tables; returns the table
    address."""
    per_thread = deal_items(len(items), threads)
    table, table_addr = scratch.take(16 * threads)
    table[:] = 0
    desc, desc_addr = scratch.take(16 * max(1, len(items)))
    desc[:] = 0
    row = 0
    for t, mine in enumerate(per_thread):
        table[16 * t] = len(mine)
        table[16 * t + 1] = desc_addr + 64 * row
        for i in mine:
            words = items[i]
            desc[16 * row: 16 * row + len(words)] = words
            row += 1
    return table_addr


def f32_bits(v: float) -> int:
    return int(np.float32(v).view(np.uint32))


def execute(drv, programs: Programs, cfg: KernelConfig, threads: int, scratch: Scratch, table_addr: int,
            row_bytes: list[int]):
    return execute_chain(drv, programs, [(cfg, table_addr, row_bytes)], threads, scratch)


def execute_chain(drv, programs: Programs, phases: list, threads: int, scratch: Scratch, wait: bool = True):
    """One dispatch of the phases [(cfg, table address, row bytes)] in order (one phase: qpu_gemv itself,
    more: its chain, with a barrier between phases). wait=False: submit it and return the driver's Job
    (Job.wait() -> the counters) so the host works meanwhile."""
    vals = [v for cfg, table_addr, row_bytes in phases for v in uniforms_for(cfg, table_addr, row_bytes)]
    unif, unif_addr = scratch.take(max(16, len(vals)))
    unif[: len(vals)] = vals
    cfgs = tuple(cfg for cfg, _, _ in phases)
    code = programs.get(cfgs[0] if len(cfgs) == 1 else cfgs, threads)
    if not wait:
        from qpu_kernels.launch import submit

        return submit(drv, code, unif_addr, threads)
    return launch(drv, code, unif_addr, threads)[0]


def timing_args() -> dict:
    """Keyword arguments for pimoe.qpu.timing.predict() of a dispatch of this kernel (any config). It
    never thread-switches in its loops, so its waits are the ldtmu stalls the emulator's load-to-use
    distance bins measure (waits="ldtmu"): the block loop issues each load up to FIFO_DEPTH loads before
    its ldtmu, which for the quantized layouts is past a round trip (measured on a Qwen3 2048x768 q4 swiglu
    dispatch: 3,464 of its 295,304 ldtmu come sooner than 64 instructions after their load, the item and
    entry descriptors and each entry's first blocks); the f32 layout's ~36 instructions are not, and it
    is charged for that."""
    return {"waits": "ldtmu"}
