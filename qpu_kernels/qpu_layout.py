"""GGUF weight blocks -> the QPU kernels' weight layout (lossless), and back (numpy reference).

The GEMV kernels see every weight matrix [rows, cols] as rows of 32-column blocks of one of three kinds:

    kind  nsub  words per row per 32 cols             bits/weight  from GGUF types (bits/weight there)
    f32    -    32 f32                                  32          F32 (32), F16 (16), BF16 (16)
    q4     1    DM (f16 D | f16 M << 16), 4 code words   5          Q4_0 (4.5), Q4_1 (5)
    q4     1    D, M, 4 code words (8 nibbles each)      6          Q4_K (4.5)
    q4     2    D0, M0, D1, M1, 4 code words             8          Q2_K (2.625), Q3_K (3.4375)
    q8     1    DM (f16 D | f16 M << 16), 8 code words   9          Q8_0 (8.5), Q5_0 (5.5), Q5_1 (6)
    q8     1    D, M, 8 code words (4 bytes each)       10          Q5_K (5.5)
    q8     2    D0, M0, D1, M1, 8 code words            12          Q6_K (6.5625)

The f16-scale rows (f16_scales) serve the types whose block scale d (and min m) are f16 numbers in the
GGUF block: D = k*d and M (-8d, -16d, -128d or the stored m) are then f16 numbers too (a power-of-two
multiple), and the kernel reads both halves of one word through fmul's free f16 unpack. So they cost no
instruction, and one load per block less. The K types' d*sc (an f16 times a 6-bit integer) is not an f16
number in general: they keep f32 D and M. Packing checks that every D and M is zero or a normal f16 (a
block scale below ~6e-8 or above ~250 would not be) and stops with a PimoeError otherwise.

A block (or each 16-column half when nsub = 2) holds unsigned integer codes c and two f32 numbers d, m
such that weight = d * c + m exactly (in real arithmetic) for the GGUF type's value: Q8_0's d*q is
d*(q+128) - 128 d; Q4_0's d*(q-8) is d*q - 8 d; the K types' 6-bit sub-block scales and mins are
multiplied out (d*sc and -dmin*mn are exact in f32), so the kernel only sees simple blocks and nothing is
lost. The kernel stores D = k*d with k = 16 (q4) or 256 (q8), see below; M = m.

Code words are arranged so that the kernel turns two codes into two f16 numbers 1 + c/k with one mask
(and), one integer add of the f16 exponent of 1.0 (0x3C00 in both halves) and at most one shift; the
f16 halves are then read by fmul's free f16->f32 unpack. Per 32-bit code word:

    q4 (8 codes, weights 8w..8w+7): pair p holds weights (8w+2p, 8w+2p+1) as nibble pattern
        P = lo << 6 | hi << 22 (mask 0x03C003C0); stored as p0: P, p1: rol(P, 4), p2: rol(P, 8),
        p3: P >> 4. So the pairs sit at bit offsets 6, 10, 14 (wrapping) and 2. The kernel takes pair 0
        as is, pair 3 with umul24 by 16 (shl 4 of the low 24 bits, on the mul ALU), and rotates the
        word right by 8 once: pair 2 is then at offset 6 and pair 1 at offset 2 (umul24 by 16 again),
        so 8 codes cost one add-ALU rotate. (With too few registers for the rotated word it falls back
        to ror 4 / ror 8.)
    q8 (4 codes, weights 4w..4w+3): pair p holds (4w+2p, 4w+2p+1) as P = lo << 2 | hi << 18
        (mask 0x03FC03FC); stored as p0: P, p1: rol(P, 8).

With S = sum_i (1 + c_i/k) x_i and X = sum_i x_i over a block, sum_i (d c_i + m) x_i = D (S - X) + M X,
which is what the kernel accumulates per block.

Rows are padded to a multiple of 16 (one row per QPU lane) with zero blocks; columns to a multiple of 32.
Every row is stored contiguously: words [rows_padded, row_words] (uint32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

from pimoe.errors import PimoeError
from pimoe.kernels import formats

ROW_GROUP = 16     # rows per thread pass (one per lane)
BLOCK = 32         # columns per block
M4, M8, E1 = 0x03C003C0, 0x03FC03FC, 0x3C003C00


@dataclass(frozen=True)
class LayoutSpec:
    kind: str     # "f32" | "q4" | "q8"
    nsub: int     # scale pairs per 32-column block (1 or 2; 0 for f32)
    f16_scales: bool = False   # D and M as the two f16 halves of one word (else two f32 words)

    @property
    def code_words(self) -> int:
        """32-bit code words per row per 32-column block."""
        return {"f32": 32, "q4": 4, "q8": 8}[self.kind]

    @property
    def scale_words(self) -> int:
        return self.nsub if self.f16_scales else 2 * self.nsub

    @property
    def block_words(self) -> int:
        return self.code_words + self.scale_words

    @property
    def bits_per_weight(self) -> float:
        return self.block_words * 32 / BLOCK

    @property
    def k(self) -> float:
        return {"q4": 16.0, "q8": 256.0}.get(self.kind, 1.0)

    def row_words(self, cols: int) -> int:
        return padded_cols(cols) // BLOCK * self.block_words

    def nbytes(self, rows: int, cols: int) -> int:
        return padded_rows(rows) * self.row_words(cols) * 4


SPECS: dict[QT, LayoutSpec] = {
    QT.F32: LayoutSpec("f32", 0), QT.F16: LayoutSpec("f32", 0), QT.BF16: LayoutSpec("f32", 0),
    QT.Q4_0: LayoutSpec("q4", 1, True), QT.Q4_1: LayoutSpec("q4", 1, True), QT.Q4_K: LayoutSpec("q4", 1),
    QT.Q2_K: LayoutSpec("q4", 2), QT.Q3_K: LayoutSpec("q4", 2),
    QT.Q8_0: LayoutSpec("q8", 1, True), QT.Q5_0: LayoutSpec("q8", 1, True), QT.Q5_1: LayoutSpec("q8", 1, True),
    QT.Q5_K: LayoutSpec("q8", 1), QT.Q6_K: LayoutSpec("q8", 2),
}


def spec_for(qtype, where: str = "tensor") -> LayoutSpec:
    try:
        return SPECS[QT(qtype)]
    except (KeyError, ValueError):
        raise PimoeError(f"{where}: weight type {qtype!r} has no QPU layout "
                         f"(supported: {', '.join(t.name for t in SPECS)})") from None


def padded_rows(rows: int) -> int:
    return -(-rows // ROW_GROUP) * ROW_GROUP


def padded_cols(cols: int) -> int:
    return -(-cols // BLOCK) * BLOCK


# ---- GGUF blocks -> (codes, d, m) ---------------------------------------------------------------------

def _f16(b, off):
    return formats.f16_field(b, off)[:, 0].astype(np.float32)


def _decompose_blocks(b: np.ndarray, qtype: QT):
    """b: uint8 [n, type_size] -> codes uint8 [n, bs], d f32 [n, subs], m f32 [n, subs] with
    weight = d*c + m per sub-block (subs = bs // 32, or bs // 16 for 16-weight sub-blocks)."""
    n = b.shape[0]
    if qtype == QT.Q8_0:
        d = _f16(b, 0)[:, None]
        q = np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(np.int16)
        return (q + 128).astype(np.uint8), d, -128 * d
    if qtype == QT.Q4_0:
        d = _f16(b, 0)[:, None]
        return formats._nibbles_32(b[:, 2:18]), d, -8 * d
    if qtype == QT.Q4_1:
        return formats._nibbles_32(b[:, 4:20]), _f16(b, 0)[:, None], _f16(b, 2)[:, None]
    if qtype == QT.Q5_0:
        d = _f16(b, 0)[:, None]
        q = formats._nibbles_32(b[:, 6:22]) | (formats._qh_bits_32(b[:, 2:6]) << 4)
        return q.astype(np.uint8), d, -16 * d
    if qtype == QT.Q5_1:
        q = formats._nibbles_32(b[:, 8:24]) | (formats._qh_bits_32(b[:, 4:8]) << 4)
        return q.astype(np.uint8), _f16(b, 0)[:, None], _f16(b, 2)[:, None]
    if qtype in (QT.Q4_K, QT.Q5_K):
        d, dmin = _f16(b, 0)[:, None], _f16(b, 2)[:, None]
        sc, mn = formats.k_scale_min_6bit(b[:, 4:16])
        if qtype == QT.Q4_K:
            qs = b[:, 16:144].reshape(n, 4, 32)
            q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 256)
        else:
            qh = b[:, 16:48].reshape(n, 1, 32)
            qs = b[:, 48:176].reshape(n, 4, 32)
            low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
            high = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
            q = (low | (high << 4)).reshape(n, 256)
        return q.astype(np.uint8), d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))
    if qtype == QT.Q6_K:
        d = _f16(b, 208)[:, None]
        ql = b[:, 0:128].reshape(n, 2, 2, 32)
        qh = b[:, 128:192].reshape(n, 2, 1, 32)
        sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
        lo = np.stack([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)
        hi = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
        q = (lo | (hi << 4)).reshape(n, 256)
        dl = d * sc
        return q.astype(np.uint8), dl, -32 * dl
    if qtype == QT.Q2_K:
        sc = b[:, 0:16]
        d, dmin = _f16(b, 80)[:, None], _f16(b, 82)[:, None]
        qs = b[:, 16:80].reshape(n, 2, 1, 32)
        shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
        q = ((qs >> shifts) & 3).reshape(n, 256)
        return q.astype(np.uint8), d * (sc & 0x0F).astype(np.float32), -(dmin * (sc >> 4).astype(np.float32))
    if qtype == QT.Q3_K:
        d = _f16(b, 108)[:, None]
        sc = formats.q3k_scales(b[:, 96:108]).astype(np.float32)
        qs = b[:, 32:96].reshape(n, 2, 1, 32)
        shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
        low2 = (qs >> shifts) & 3
        hm = b[:, 0:32].reshape(n, 1, 1, 32)
        hbit = (hm >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)) & 1
        q = (low2 + 4 * hbit).reshape(n, 256)          # (low2 - 4*(1-hbit)) + 4
        dl = d * sc
        return q.astype(np.uint8), dl, -4 * dl
    raise PimoeError(f"no QPU decomposition for {QT(qtype).name}")


def decompose(data: np.ndarray, qtype, cols: int):
    """Rows of GGUF blocks uint8 [rows, row_bytes] -> (codes uint8 [rows, cols], d, m f32 [rows, subs])."""
    qtype = QT(qtype)
    bs, ts = formats.BLOCK_SIZES[qtype]
    rows = data.shape[0]
    codes, d, m = _decompose_blocks(np.ascontiguousarray(data).reshape(-1, ts), qtype)
    return codes.reshape(rows, cols), d.reshape(rows, -1), m.reshape(rows, -1)


# ---- packing ------------------------------------------------------------------------------------------

def _rol(p: np.ndarray, s: int) -> np.ndarray:
    return ((p << np.uint32(s)) | (p >> np.uint32(32 - s))).astype(np.uint32)


def pack_code_words(codes: np.ndarray, kind: str) -> np.ndarray:
    """codes uint8 [rows, nblocks, 32] -> uint32 [rows, nblocks, code_words] (see the module docstring)."""
    c = codes.astype(np.uint32)
    if kind == "q4":
        c = c.reshape(*c.shape[:-1], 4, 4, 2)            # [.., word, pair, lo/hi]
        pat = (c[..., 0] << 6) | (c[..., 1] << 22)        # [.., word, pair]
        return (pat[..., 0] | _rol(pat[..., 1], 4) | _rol(pat[..., 2], 8) | (pat[..., 3] >> 4)).astype(np.uint32)
    c = c.reshape(*c.shape[:-1], 8, 2, 2)
    pat = (c[..., 0] << 2) | (c[..., 1] << 18)
    return (pat[..., 0] | _rol(pat[..., 1], 8)).astype(np.uint32)


def pack_matrix(data: np.ndarray, qtype, rows: int, cols: int, out: np.ndarray | None = None) -> np.ndarray:
    """One matrix of GGUF rows uint8 [rows, row_bytes] -> uint32 [padded_rows, row_words] in QPU layout
    (written into `out` when given, e.g. a driver buffer)."""
    qtype = QT(qtype)
    spec = spec_for(qtype)
    pr, pc = padded_rows(rows), padded_cols(cols)
    nb = pc // BLOCK
    if out is None:
        out = np.zeros((pr, spec.row_words(cols)), dtype=np.uint32)
    else:
        out[...] = 0
    view = out.reshape(pr, nb, spec.block_words)
    if spec.kind == "f32":
        w = formats.dequantize_rows(np.asarray(data), qtype, cols)   # F16/BF16 -> f32 is exact
        full = np.zeros((rows, pc), np.float32)
        full[:, :cols] = w
        view[:rows] = full.view(np.uint32).reshape(rows, nb, BLOCK)
        return out
    if cols % BLOCK:
        raise PimoeError(f"{qtype.name} rows of {cols} weights are not whole 32-weight blocks")
    codes, d, m = decompose(np.asarray(data), qtype, cols)
    subs = nb * spec.nsub
    if d.shape[1] != subs:   # 32-weight GGUF sub-blocks in a 16-granular layout cannot happen; guard
        d = np.repeat(d, subs // d.shape[1], axis=1)
        m = np.repeat(m, subs // m.shape[1], axis=1)
    sc = np.empty((rows, nb, spec.nsub, 2), np.float32)
    sc[..., 0] = (d * np.float32(spec.k)).reshape(rows, nb, spec.nsub)
    sc[..., 1] = m.reshape(rows, nb, spec.nsub)
    if spec.f16_scales:
        view[:rows, :, :spec.scale_words] = f16_scale_words(sc, qtype)
    else:
        view[:rows, :, :spec.scale_words] = sc.reshape(rows, nb, -1).view(np.uint32)
    view[:rows, :, spec.scale_words:] = pack_code_words(codes.reshape(rows, nb, BLOCK), spec.kind)
    return out


F16_MIN_NORMAL = 2.0 ** -14


def f16_scale_words(sc: np.ndarray, qtype) -> np.ndarray:
    """sc f32 [..., nsub, 2] (D, M) -> uint32 [..., nsub]: D in the low f16 half, M in the high half.
    Raises a PimoeError unless each value is exactly an f16 number that is zero or normal."""
    with np.errstate(over="ignore"):
        h = sc.astype(np.float16)
    a = np.abs(sc)
    ok = (h.astype(np.float32) == sc) & ((a == 0) | ((a >= F16_MIN_NORMAL) & np.isfinite(h)))
    if not np.all(ok):
        bad = sc[~ok].reshape(-1)[0]
        raise PimoeError(f"{QT(qtype).name}: block scale value {bad!r} is not a normal f16 number, which the "
                         f"compact QPU layout needs (a block scale d below ~6e-8 or above ~250)")
    u = h.view(np.uint16).astype(np.uint32)
    return u[..., 0] | (u[..., 1] << np.uint32(16))


def scale_pairs(scale_words: np.ndarray, spec: LayoutSpec) -> np.ndarray:
    """The inverse of the scale packing: uint32 [..., scale_words] -> f64 [..., nsub, 2] (D, M)."""
    w = np.ascontiguousarray(scale_words)
    if spec.f16_scales:
        h = np.stack([w & np.uint32(0xFFFF), w >> np.uint32(16)], -1).astype(np.uint16)
        return h.view(np.float16).astype(np.float64)
    return w.view(np.float32).reshape(*w.shape[:-1], spec.nsub, 2).astype(np.float64)


def unpack_matrix(words: np.ndarray, spec: LayoutSpec, rows: int, cols: int) -> np.ndarray:
    """The numpy reference reading of the layout: uint32 [padded_rows, row_words] -> f64 [rows, cols]."""
    pc = padded_cols(cols)
    nb = pc // BLOCK
    view = np.asarray(words).reshape(-1, nb, spec.block_words)[:rows]
    if spec.kind == "f32":
        return view.view(np.float32).reshape(rows, pc)[:, :cols].astype(np.float64)
    cw = view[:, :, spec.scale_words:]
    if spec.kind == "q4":
        pats = [cw, ((cw >> np.uint32(4)) | (cw << np.uint32(28))), ((cw >> np.uint32(8)) | (cw << np.uint32(24))),
                (cw & np.uint32(0xFFFFFF)) << np.uint32(4)]
        codes = np.stack([np.stack([(p >> np.uint32(6)) & 15, (p >> np.uint32(22)) & 15], -1) for p in pats], -2)
    else:
        pats = [cw, ((cw >> np.uint32(8)) | (cw << np.uint32(24)))]
        codes = np.stack([np.stack([(p >> np.uint32(2)) & 255, (p >> np.uint32(18)) & 255], -1) for p in pats], -2)
    codes = codes.reshape(rows, nb, spec.nsub, BLOCK // spec.nsub).astype(np.float64)
    sc = scale_pairs(view[:, :, :spec.scale_words], spec)
    w = sc[..., 0:1] / spec.k * codes + sc[..., 1:2]
    return w.reshape(rows, pc)[:, :cols]


def layout_nbytes(qtype, rows: int, cols: int) -> int:
    return spec_for(qtype).nbytes(rows, cols)
