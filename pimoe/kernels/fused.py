"""Fused dequantize-and-dot CPU kernels (numba), computing directly on the stored GGUF blocks.

Like ggml's CPU backend, the quantized types multiply integer weight codes with integer activation
codes (the activations quantized once per call to Q8_0 / Q8_1 / Q8_K, see actquant) and apply the
float scales once per (sub-)block; F32/F16/BF16 weights are converted to f32 and multiplied with
f32 activations (already rounded to f16/bf16 as ggml does). Results equal the numpy
dequantize-then-matmul reference up to float summation order.

Work layout.  One parallel call serves a whole matmul, or a batch of experts:
    w      uint8 [E, O, row_bytes]         E = 1 for an ordinary weight, E = experts for *_exps
    rows   int64 [N]  activation rows in expert order; groups [G+1] start offsets into rows;
    gexp   int64 [G]  the expert of each group
    out    f32 [N, O]
and prange runs over (group, chunk of output rows). Decode (few tokens per weight row): each weight
row is dotted straight from its blocks with every activation row of its group (integer dots per
block, f32 scale per block); the row stays in L1 while the tokens reuse it. Q8_0, Q4_K and Q6_K
(the types of Q8_0 and Q4_K_M files) go through whole-row pairwise multiply-add dots
(pmaddubsw/pmaddwd on x86, generic vector IR on aarch64) with 8 f32 accumulators; with several
tokens on a row they run in tiles of 4 and 2 tokens that unpack each block once for all of them
(prompts and prompt-time experts), giving every token exactly its one-token sum.  The other types,
with MULTI_TOKEN or more tokens on one row, dequantize the row once to an f32 buffer (one row,
never the matrix) and dot it in f32 with the rounded activations, four tokens per pass.

Integer arithmetic is exact, so the only differences from ggml are the float summation order and
ggml's use of FMA. numba compiles for x86 and the Pi's aarch64 alike (cache=True: a second start
loads machine code instead of compiling, ~1 s). The hot block dots are numba intrinsics emitting
portable LLVM vector IR (below), because numba's own vectorizer leaves them scalar.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# --- integer dot products as portable LLVM vector IR ------------------------------------------
# (kept in this file on purpose: numba's cache is invalidated by edits to the file that holds a
# cached function, not by edits to modules it calls, so the intrinsics live beside their users)
#
# Small integer dot products written as portable LLVM vector IR (numba intrinsics).
#
# numba's auto-vectorizer handles plain loops, but the short (16/32-weight) integer dots inside a
# quantized block come out scalar or in 64-bit lanes, because numba widens every integer op to intp
# and cannot prove the block's arrays do not alias. These intrinsics state the operation directly as
# LLVM vector IR: load <W x i8>, unpack codes with shifts and masks, sign-extend, multiply, and
# llvm.vector.reduce.add. That IR is target-independent: LLVM lowers it to AVX2/AVX-512(VNNI)
# instructions on x86 and to NEON (smull/sadalp/addv) on the Pi's Cortex-A72, so the same source is
# fast on both. (Measured on x86: Q8_0 GEMV 6.5 -> 14.8 GB/s per core.)
#
#     dot_code_W(w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, x, xoff), W = 16, 32:
#         code_l = ((w[off_lo+l] >> sh_lo) & mask_lo) | (((w[off_hi+l] >> sh_hi) & mask_hi) << shl_hi)
#         returns sum_l (code_l - bias) * x[xoff+l]                          (Q4_0, Q4_1, Q2_K, Q3_K)
# (Q8_0, Q4_K and Q6_K use the pairwise multiply-add row dots further down.)
# w is the uint8 row (any uint8/int8 array), x the int8 activation codes; results are exact int32.


def _vec_ptr(context, builder, arrtype, arrval, offset, vtype):
    arr = context.make_array(arrtype)(context, builder, arrval)
    base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    return builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())


def _reduce_add(builder, vec, width):
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(i32, [ir.VectorType(i32, width)])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.add.v{width}i32")
    return builder.call(fn, [vec])


def _splat(builder, value, width, itype):
    v = builder.trunc(value, itype) if value.type.width > itype.width else builder.zext(value, itype)
    vec = ir.Constant(ir.VectorType(itype, width), ir.Undefined)
    vec = builder.insert_element(vec, v, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))


def _unpack_codes(context, builder, wt, wv, olo, slo, mlo, ohi, shi, mhi, shl, bs, width):
    """The integer codes of `width` weights as an i8 vector: ((w[olo+i] >> slo) & mlo) |
    (((w[ohi+i] >> shi) & mhi) << shl), minus bias bs. Every code fits 8 bits (0..63 minus a bias <= 32),
    so one byte-lane recipe serves Q4/Q5/Q6 (low nibble / high nibble / extra high bits)."""
    i8 = ir.IntType(8)
    v8 = ir.VectorType(i8, width)
    lo = builder.load(_vec_ptr(context, builder, wt, wv, olo, v8), align=1)
    hi = builder.load(_vec_ptr(context, builder, wt, wv, ohi, v8), align=1)
    lo = builder.and_(builder.lshr(lo, _splat(builder, slo, width, i8)), _splat(builder, mlo, width, i8))
    hi = builder.and_(builder.lshr(hi, _splat(builder, shi, width, i8)), _splat(builder, mhi, width, i8))
    code = builder.or_(lo, builder.shl(hi, _splat(builder, shl, width, i8)))
    return builder.sub(code, _splat(builder, bs, width, i8))


def _code_products(context, builder, signature, args, width):
    """<width x i32> code_i * x_i for the dot_code* intrinsics' leading arguments (w, off_lo, sh_lo,
    mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, x, xoff): codes are built in 8-bit lanes, then
    multiplied as the same signed 8-bit pattern as Q8_0."""
    wv, olo, slo, mlo, ohi, shi, mhi, shl, bs, xv, xo = args[:11]
    wt, xt = signature.args[0], signature.args[9]
    v8 = ir.VectorType(ir.IntType(8), width)
    v32 = ir.VectorType(ir.IntType(32), width)
    code = _unpack_codes(context, builder, wt, wv, olo, slo, mlo, ohi, shi, mhi, shl, bs, width)
    xs = builder.sext(builder.load(_vec_ptr(context, builder, xt, xv, xo, v8), align=1), v32)
    return builder.mul(builder.sext(code, v32), xs)


def _make_dot_code(width):
    @intrinsic
    def dot_code(typingctx, w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, x, xoff):
        sig = types.int32(w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, x, xoff)

        def codegen(context, builder, signature, args):
            return _reduce_add(builder, _code_products(context, builder, signature, args, width), width)

        return sig, codegen

    return dot_code


dot_code_32 = _make_dot_code(32)
dot_code_16 = _make_dot_code(16)


@intrinsic
def dot_code_32s(typingctx, w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, x, xoff, s0, s1):
    """dot_code_32 with integer scale s0 on weights 0..15 and s1 on 16..31 (two 16-weight groups)."""
    sig = types.int32(w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, x, xoff, s0, s1)

    def codegen(context, builder, signature, args):
        a0, a1 = args[11:]
        i32 = ir.IntType(32)
        prod = _code_products(context, builder, signature, args, 32)
        # scales: lanes 0..15 get s0, 16..31 get s1
        v16 = ir.VectorType(i32, 16)
        sa = _splat(builder, a0, 16, i32)
        sb = _splat(builder, a1, 16, i32)
        scales = builder.shuffle_vector(sa, sb, ir.Constant(v16.__class__(i32, 32), list(range(32))))
        return _reduce_add(builder, builder.mul(prod, scales), 32)

    return sig, codegen


def _make_deq_code(width):
    @intrinsic
    def deq_code(typingctx, w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, out, ooff, scale, mn):
        """out[ooff:ooff+W] = scale * (code - bias) - mn, codes unpacked as in dot_code; one vector store."""
        sig = types.none(w, off_lo, sh_lo, mask_lo, off_hi, sh_hi, mask_hi, shl_hi, bias, out, ooff, scale, mn)

        def codegen(context, builder, signature, args):
            wv, olo, slo, mlo, ohi, shi, mhi, shl, bs, ov, oo, sc, mnv = args
            wt = signature.args[0]
            ot = signature.args[9]
            vf = ir.VectorType(ir.FloatType(), width)
            code = _unpack_codes(context, builder, wt, wv, olo, slo, mlo, ohi, shi, mhi, shl, bs, width)
            val = builder.fsub(builder.fmul(_fsplat(builder, sc, width), builder.sitofp(code, vf)),
                               _fsplat(builder, mnv, width))
            arr = context.make_array(ot)(context, builder, ov)
            ptr = builder.bitcast(builder.gep(arr.data, [oo]), vf.as_pointer())
            builder.store(val, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return deq_code


def _fsplat(builder, value, width):
    vt = ir.VectorType(ir.FloatType(), width)
    vec = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))


deq_code_32 = _make_deq_code(32)
deq_code_16 = _make_deq_code(16)


def _make_qk_block_dot(five):
    @intrinsic
    def qk_block_dot(typingctx, w, qo, qho, x, xo, packed_scales):
        """sum over one Q4_K (five=False) / Q5_K super-block of sc_j * q * x, exact int32.

        q: nibbles of w[qo:qo+128] (sub-block j: nibble j&1 of the 32 bytes of chunk j>>1), for Q5_K
        plus bit j of w[qho + l] as bit 4; packed_scales: the 8 six-bit scales, scale j in byte j of
        an int64 (a register, no store/reload).  sc*q fits 16 bits, so weights are formed in 16-bit
        lanes (the pmaddwd / smlal pattern); one <32 x i32> accumulator, one reduction."""
        sig = types.int32(w, qo, qho, x, xo, packed_scales)

        def codegen(context, builder, signature, args):
            wv, qov, qhov, xv, xov, ps = args
            wt, xt = signature.args[0], signature.args[3]
            i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
            v8 = ir.VectorType(i8, 32)
            v16 = ir.VectorType(i16, 32)
            v32 = ir.VectorType(i32, 32)
            scales = builder.zext(builder.bitcast(ps, ir.VectorType(i8, 8)), ir.VectorType(i16, 8))
            qh = builder.load(_vec_ptr(context, builder, wt, wv, qhov, v8), align=1) if five else None
            acc = ir.Constant(v32, [0] * 32)
            for j in range(8):
                q4 = builder.load(_vec_ptr(context, builder, wt, wv,
                                           builder.add(qov, ir.Constant(qov.type, (j >> 1) * 32)), v8), align=1)
                code = builder.and_(builder.lshr(q4, ir.Constant(v8, [4 * (j & 1)] * 32)), ir.Constant(v8, [15] * 32))
                if five:
                    hb = builder.and_(builder.lshr(qh, ir.Constant(v8, [j] * 32)), ir.Constant(v8, [1] * 32))
                    code = builder.or_(code, builder.shl(hb, ir.Constant(v8, [4] * 32)))
                xs = builder.sext(builder.load(_vec_ptr(context, builder, xt, xv,
                                                        builder.add(xov, ir.Constant(xov.type, j * 32)), v8),
                                               align=1), v32)
                sc = builder.shuffle_vector(scales, scales, ir.Constant(v32, [j] * 32))
                wq = builder.mul(builder.zext(code, v16), sc)
                acc = builder.add(acc, builder.mul(builder.sext(wq, v32), xs))
            return _reduce_add(builder, acc, 32)

        return sig, codegen

    return qk_block_dot


q5k_block_dot = _make_qk_block_dot(True)  # Q5_K only (Q4_K goes through the multiply-add row dots)



# --- pairwise multiply-add building blocks (x86 pmaddubsw / pmaddwd, generic IR elsewhere) --------
# The K-type dots below follow the integer schedule of a SIMD multiply-add pair:
#     madd_u8s8(a, b)   <32 x u8> x <32 x i8> -> <16 x i16>, lane k = a[2k]*b[2k] + a[2k+1]*b[2k+1]
#     madd_i16(a, b)    <16 x i16> x <16 x i16> -> <8 x i32>, lane k = a[2k]*b[2k] + a[2k+1]*b[2k+1]
# so 32 weights cost two instructions and the accumulator stays in 8 x i32 (one reduction per
# super-block instead of one per 32 weights).  On x86 with AVX2 they are the pmaddubsw / pmaddwd
# instructions (LLVM does not reliably form them from plain IR); elsewhere (the Pi's aarch64) the same
# arithmetic is written as widen, multiply, add even and odd lanes, which LLVM lowers to
# smull/sadalp-style NEON.  The two spellings agree exactly whenever the i16 sums do not saturate:
# codes are 0..63 and activations -127..127 (Q8_K/Q8_0), so |a*b + a*b| <= 2*63*127 = 16002 < 32767.

def _target_features() -> dict:
    """The CPU features numba compiles for: NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set (e.g. 'generic' for
    a portable cache: an x86 intrinsic there aborts LLVM), else the host's."""
    import numba

    name, feats = numba.config.CPU_NAME, numba.config.CPU_FEATURES
    if name or feats:
        return {f[1:]: f[0] == "+" for f in (feats or "").split(",") if f[:1] in "+-" and len(f) > 1}
    from llvmlite import binding as llb

    return dict(llb.get_host_cpu_features())


def _target_has_avx2() -> bool:
    try:
        return bool(_target_features().get("avx2", False))
    except Exception:  # noqa: BLE001 - any failure: the generic IR is always correct
        return False


def _target_has_vnni() -> bool:
    """AVX-512 VNNI (with VL, for 256-bit vectors) or AVX-VNNI: vpdpbusd, u8 x s8 -> i32 in one step."""
    try:
        f = _target_features()
        return bool(f.get("avxvnni", False) or (f.get("avx512vnni", False) and f.get("avx512vl", False)))
    except Exception:  # noqa: BLE001 - any failure: the pmaddwd or generic spelling is always correct
        return False


USE_X86_MADD = _target_has_avx2()   # numba compiles for its target CPU and keys its cache by CPU name + features
USE_X86_VNNI = USE_X86_MADD and _target_has_vnni()


def _even_odd_add(builder, v, width, out_type):
    even = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), width // 2),
                                                    list(range(0, width, 2))))
    odd = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), width // 2),
                                                   list(range(1, width, 2))))
    return builder.add(even, odd)


def _madd_pairs(builder, a, b, x86, a_signed, x86_name):
    """<2n x iK> a, <2n x iK> b -> <n x i2K>, lane k = a[2k]*b[2k] + a[2k+1]*b[2k+1] (b signed; a signed
    or unsigned); on x86 the AVX2 instruction x86_name, elsewhere widen, multiply, add even and odd."""
    n = a.type.count
    wide = ir.IntType(2 * a.type.element.width)
    if x86:
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(ir.VectorType(wide, n // 2), [a.type, b.type]), x86_name)
        return builder.call(fn, [a, b])
    w = ir.VectorType(wide, n)
    wa = builder.sext(a, w) if a_signed else builder.zext(a, w)
    return _even_odd_add(builder, builder.mul(wa, builder.sext(b, w)), n, wide)


def _madd_u8s8(builder, a, b, x86):
    return _madd_pairs(builder, a, b, x86, False, "llvm.x86.avx2.pmadd.ub.sw")


def _madd_i16(builder, a, b, x86):
    return _madd_pairs(builder, a, b, x86, True, "llvm.x86.avx2.pmadd.wd")


# The per-block arithmetic works on raw pointers (i8* weights and activation codes, i16* Q8_K
# sums) so the same code serves the one-block intrinsics (tested on their own, both spellings)
# and the whole-row ones the kernels call.

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()


def _ptr(builder, base, off, k=0):
    """base (i8* / i16*) + off + k elements."""
    if k:
        off = builder.add(off, ir.Constant(off.type, k))
    return builder.gep(base, [off])


def _vload(builder, base, off, k, vtype, align=1):
    return builder.load(builder.bitcast(_ptr(builder, base, off, k), vtype.as_pointer()), align=align)


def _base(context, builder, arrtype, arrval, elem):
    return builder.bitcast(context.make_array(arrtype)(context, builder, arrval).data, elem.as_pointer())


# Each block type is split into unpack (weights -> codes and scale vectors, once per block) and
# apply (codes . one token's activation codes): with several tokens on one row (prompts) the
# unpacking, the expensive part, is shared by the tokens.

def _q4k_unpack(builder, w, qo, packed_scales):
    """Q4_K codes at w+qo (the 32 bytes of chunk p: sub-block 2p in the low, 2p+1 in the high
    nibbles) and scales packed one per byte -> 8 x (<32 x u8> codes, <16 x i16> scale)."""
    v8 = ir.VectorType(_I8, 32)
    sc = builder.zext(builder.bitcast(packed_scales, ir.VectorType(_I8, 8)), ir.VectorType(_I16, 8))
    out = []
    for p in range(4):
        q = _vload(builder, w, qo, 32 * p, v8)
        for half, codes in ((0, builder.and_(q, ir.Constant(v8, [15] * 32))),
                            (1, builder.lshr(q, ir.Constant(v8, [4] * 32)))):
            j = 2 * p + half
            out.append((codes, builder.shuffle_vector(sc, sc, ir.Constant(ir.VectorType(_I32, 16), [j] * 16))))
    return out


def _apply_codes(builder, unpacked, x, xo, x86):
    """<8 x i32> whose sum is sum_j scale_j * codes_j . x[xo + 32 j: +32] (u8 codes, i8 activations)."""
    v8 = ir.VectorType(_I8, 32)
    acc = None
    for j, (codes, scale) in enumerate(unpacked):
        m = _madd_i16(builder, _madd_u8s8(builder, codes, _vload(builder, x, xo, 32 * j, v8), x86), scale, x86)
        acc = m if acc is None else builder.add(acc, m)
    return acc


def _q4k_vec(builder, w, qo, x, xo, packed_scales, x86):
    """<8 x i32> whose sum is sum_j sc_j * q . x over one Q4_K super-block (no mins)."""
    return _apply_codes(builder, _q4k_unpack(builder, w, qo, packed_scales), x, xo, x86)


def _mins_vec(builder, packed_mins, bs, bo, x86):
    """<8 x i32> whose sum is sum_j m_j * (bs[bo+2j] + bs[bo+2j+1]) (Q4_K/Q5_K mins, one per byte)."""
    m = builder.zext(builder.bitcast(packed_mins, ir.VectorType(_I8, 8)), ir.VectorType(_I16, 8))
    m = builder.shuffle_vector(m, m, ir.Constant(ir.VectorType(_I32, 16), [j // 2 for j in range(16)]))
    return _madd_i16(builder, _vload(builder, bs, bo, 0, ir.VectorType(_I16, 16), 2), m, x86)


def _q6k_unpack(builder, w, o):
    """Q6_K super-block at w+o -> (8 x (<32 x u8> codes 0..63, <16 x i16> scales of its two groups),
    <16 x i16> all 16 scales)."""
    v8 = ir.VectorType(_I8, 32)
    scales = builder.sext(_vload(builder, w, o, 192, ir.VectorType(_I8, 16)), ir.VectorType(_I16, 16))
    out = []
    for h in range(2):
        qh = _vload(builder, w, o, 128 + 32 * h, v8)
        ql = [_vload(builder, w, o, 64 * h + 32 * c, v8) for c in range(2)]
        for k in range(4):  # 32 weights p = 4h + k: nibble k>>1 of ql[k&1], bits 2k of qh
            lo = ql[k & 1]
            lo = builder.lshr(lo, ir.Constant(v8, [4] * 32)) if k >> 1 else builder.and_(lo, ir.Constant(v8, [15] * 32))
            hb = builder.and_(builder.lshr(qh, ir.Constant(v8, [2 * k] * 32)) if k else qh, ir.Constant(v8, [3] * 32))
            p = 4 * h + k
            out.append((builder.or_(lo, builder.shl(hb, ir.Constant(v8, [4] * 32))),
                        builder.shuffle_vector(scales, scales,
                                               ir.Constant(ir.VectorType(_I32, 16), [2 * p] * 8 + [2 * p + 1] * 8))))
    return out, scales


def _q6k_apply(builder, unpacked, x, xo, bs, bo, x86):
    """<8 x i32> whose sum is sum_g scale_g * (q - 32) . x: the codes q (0..63) go through the
    unsigned-by-signed multiply-add, the -32 once per 16-weight group through Q8_K's group sums."""
    codes, scales = unpacked
    acc = _apply_codes(builder, codes, x, xo, x86)
    gsum = _madd_i16(builder, _vload(builder, bs, bo, 0, ir.VectorType(_I16, 16), 2), scales, x86)
    return builder.sub(acc, builder.shl(gsum, ir.Constant(ir.VectorType(_I32, 8), [5] * 8)))


def _q6k_vec(builder, w, o, x, xo, bs, bo, x86):
    """<8 x i32> whose sum is sum_g scale_g * (q - 32) . x over the Q6_K super-block at w+o."""
    return _q6k_apply(builder, _q6k_unpack(builder, w, o), x, xo, bs, bo, x86)


def _s8_unpack(builder, w, wo):
    v8, v16 = ir.VectorType(_I8, 16), ir.VectorType(_I16, 16)
    return [builder.sext(_vload(builder, w, wo, 16 * h, v8), v16) for h in range(2)]


def _s8_apply(builder, halves, x, xo, x86):
    v8, v16 = ir.VectorType(_I8, 16), ir.VectorType(_I16, 16)
    acc = None
    for h, a in enumerate(halves):  # sign-extended to i16, pairwise multiply-add to i32
        m = _madd_i16(builder, a, builder.sext(_vload(builder, x, xo, 16 * h, v8), v16), x86)
        acc = m if acc is None else builder.add(acc, m)
    return acc


def _s8_vnni_unpack(builder, w, wo):
    """A Q8_0 block's 32 codes as (|code| as u8, code < 0) for the vpdpbusd dot."""
    v8 = ir.VectorType(_I8, 32)
    a = _vload(builder, w, wo, 0, v8)
    zero = ir.Constant(v8, [0] * 32)
    neg = builder.icmp_signed("<", a, zero)
    return builder.select(neg, builder.sub(zero, a), a), neg


def _s8_vnni_apply(builder, u, x, xo):
    """<8 x i32> whose sum is sum_l w_l * x_l: |w| (u8) times x with w's sign (s8) in one vpdpbusd (the
    sign moves to the activation; |x| <= 127 for Q8_0 activations, so negating it cannot overflow)."""
    absw, neg = u
    v8, v32 = ir.VectorType(_I8, 32), ir.VectorType(_I32, 8)
    b = _vload(builder, x, xo, 0, v8)
    sb = builder.select(neg, builder.sub(ir.Constant(v8, [0] * 32), b), b)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32, [v32, v32, v32]),
                                        "llvm.x86.avx512.vpdpbusd.256")
    return builder.call(fn, [ir.Constant(v32, [0] * 8), builder.bitcast(absw, v32), builder.bitcast(sb, v32)])


def _s8_vec(builder, w, wo, x, xo, x86):
    """<8 x i32> whose sum is sum_{l<32} int8(w[wo+l]) * x[xo+l] (Q8_0 block)."""
    return _s8_apply(builder, _s8_unpack(builder, w, wo), x, xo, x86)


def _kquant_scales_mins_ir(builder, w, o):
    """IR twin of kquant_scales_mins: (scales, mins) of the Q4_K/Q5_K super-block at w+o, one per
    byte of an i64."""
    i64 = ir.IntType(64)

    def u32(k):
        return builder.zext(_vload(builder, w, o, k, _I32), i64)

    def c(v):
        return ir.Constant(i64, v)

    u0, u1, u2 = u32(4), u32(8), u32(12)
    hi_s = builder.or_(builder.and_(u2, c(0x0F0F0F0F)),
                       builder.shl(builder.and_(builder.lshr(u0, c(6)), c(0x03030303)), c(4)))
    hi_m = builder.or_(builder.and_(builder.lshr(u2, c(4)), c(0x0F0F0F0F)),
                       builder.shl(builder.and_(builder.lshr(u1, c(6)), c(0x03030303)), c(4)))
    sc = builder.or_(builder.and_(u0, c(0x3F3F3F3F)), builder.shl(hi_s, c(32)))
    mn = builder.or_(builder.and_(u1, c(0x3F3F3F3F)), builder.shl(hi_m, c(32)))
    return sc, mn


def _make_madd_block_dots(x86):
    """One-block dots returning exact int32 (the unit the row dots are built from; tested alone)."""

    @intrinsic
    def s8_dot_32(typingctx, w, woff, x, xoff):
        """sum_{l<32} int8(w[woff+l]) * x[xoff+l] (Q8_0 block)."""
        sig = types.int32(w, woff, x, xoff)

        def codegen(context, builder, signature, args):
            wv, wo, xv, xo = args
            wt, _, xt, _ = signature.args
            v = _s8_vec(builder, _base(context, builder, wt, wv, _I8), wo,
                        _base(context, builder, xt, xv, _I8), xo, x86)
            return _reduce_add(builder, v, 8)

        return sig, codegen

    @intrinsic
    def q4k_dot(typingctx, w, qo, x, xo, packed_scales):
        """sum over one Q4_K super-block of sc_j * q * x (no mins), scales packed one per byte."""
        sig = types.int32(w, qo, x, xo, packed_scales)

        def codegen(context, builder, signature, args):
            wv, qov, xv, xov, ps = args
            wt, xt = signature.args[0], signature.args[2]
            v = _q4k_vec(builder, _base(context, builder, wt, wv, _I8), qov,
                         _base(context, builder, xt, xv, _I8), xov, ps, x86)
            return _reduce_add(builder, v, 8)

        return sig, codegen

    @intrinsic
    def q6k_dot(typingctx, w, o, x, xo, bs, bo):
        """sum over one Q6_K super-block (w[o:o+210]) of scale_g * (q - 32) * x, Q8_K sums bs[bo:bo+16]."""
        sig = types.int32(w, o, x, xo, bs, bo)

        def codegen(context, builder, signature, args):
            wv, ov, xv, xov, bsv, bov = args
            wt, xt, bt = signature.args[0], signature.args[2], signature.args[4]
            v = _q6k_vec(builder, _base(context, builder, wt, wv, _I8), ov, _base(context, builder, xt, xv, _I8),
                         xov, _base(context, builder, bt, bsv, _I16), bov, x86)
            return _reduce_add(builder, v, 8)

        return sig, codegen

    @intrinsic
    def mins_dot(typingctx, packed_mins, bs, bo):
        """sum_j m_j * (bs[bo+2j] + bs[bo+2j+1]) for the eight 6-bit mins packed one per byte (Q4_K/Q5_K)."""
        sig = types.int32(packed_mins, bs, bo)

        def codegen(context, builder, signature, args):
            pm, bsv, bov = args
            v = _mins_vec(builder, pm, _base(context, builder, signature.args[1], bsv, _I16), bov, x86)
            return _reduce_add(builder, v, 8)

        return sig, codegen

    return s8_dot_32, q4k_dot, q6k_dot, mins_dot




# --- whole-row dots -------------------------------------------------------------------------------
# One IR loop over a row's blocks: each block's integer dot stays in 8 x i32 lanes, is converted to
# 8 x f32 and multiplied by its float scale into 8 f32 accumulators (ggml's AVX2 order), so a row
# has one horizontal sum instead of one per block.  Block scales d_w are read through the f16 table
# (an fpext of a half made LLVM insert it into the accumulator's register, a false dependency that
# chained every block: measured 1.5x slower).

# Bytes ahead of the block being dotted that the row dots prefetch.  Measured on x86 (one thread, a Q8_0
# matrix streamed from DRAM, GB/s per CPU-second): 5.2-5.4 without, 8.4-8.5 with 4 KiB
# (results/cpu-gemv-ab-20261204-152752.json); 4 KiB was the best of a 1/2/4 KiB sweep that was not
# recorded.
PREFETCH_AHEAD = 4096


def _make_row_dots(x86, vnni=False):
    """The row dots, spelled for x86 AVX2 (x86=True) or generic IR; vnni=True (x86 only): Q8_0 blocks
    through vpdpbusd."""
    def f16_reader(builder, w, lut):
        def f16_at(o, k):
            h = _vload(builder, w, o, k, _I16)
            return builder.load(builder.gep(lut, [builder.zext(h, o.type)]))

        return f16_at

    def loop_rows(builder, nbv, n_acc, body):
        """for i < nb: body(i, accs) -> new accs (<8 x f32> each); returns the horizontal sums."""
        vf = ir.VectorType(_F32, 8)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * 8)) for _ in range(n_acc)]
        with cgutils.for_range(builder, nbv) as loop:
            new = body(loop.index, [builder.load(a) for a in accs])
            for a, v in zip(accs, new):
                builder.store(v, a)
        sums = []
        for a in accs:
            total = builder.load(a)
            out = builder.extract_element(total, ir.Constant(_I32, 0))
            for k in range(1, 8):
                out = builder.fadd(out, builder.extract_element(total, ir.Constant(_I32, k)))
            sums.append(out)
        return sums

    def prefetch_ahead(builder, w_, o, block_bytes):
        """Prefetch the cache lines PREFETCH_AHEAD bytes past the block at w_+o (llvm.prefetch: a
        PRFM on aarch64, prefetcht0 on x86, nothing where a target has none).  A row is read
        front to back and the next row of a work item follows it in memory, so the lines ahead
        are the ones about to be used; hardware prefetchers stop at page boundaries, this does not."""
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]),
            "llvm.prefetch.p0i8")
        for k in range(0, block_bytes, 64):   # one per cache line of the block (one for Q8_0's 34 bytes)
            at = builder.add(o, ir.Constant(o.type, PREFETCH_AHEAD + k))
            builder.call(fn, [builder.gep(w_, [at]), ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                              ir.Constant(_I32, 1)])   # read, keep in all levels, data

    def fma8(builder, acc, vec, scale):
        vf = ir.VectorType(_F32, 8)
        sv = builder.insert_element(ir.Constant(vf, ir.Undefined), scale, ir.Constant(_I32, 0))
        sv = builder.shuffle_vector(sv, sv, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
        return builder.fadd(acc, builder.fmul(builder.sitofp(vec, vf), sv))

    # per block type: (bytes per block, weights per block, unpack(builder, w, o, f16_at) -> u,
    #                  apply(builder, u, x, xo, dx, bs, bo) -> [(<8 x i32>, f32 scale)])
    def q8_0_unpack(builder, w, o, f16_at):
        unpack = _s8_vnni_unpack if vnni else _s8_unpack
        return unpack(builder, w, builder.add(o, ir.Constant(o.type, 2))), f16_at(o, 0)

    def q8_0_apply(builder, u, x, xo, dx, bs, bo):
        codes, d = u
        v = _s8_vnni_apply(builder, codes, x, xo) if vnni else _s8_apply(builder, codes, x, xo, x86)
        return [(v, builder.fmul(d, dx))]

    def q4_k_unpack(builder, w, o, f16_at):
        sc, mn = _kquant_scales_mins_ir(builder, w, o)
        return (_q4k_unpack(builder, w, builder.add(o, ir.Constant(o.type, 16)), sc), mn,
                f16_at(o, 0), f16_at(o, 2))

    def q4_k_apply(builder, u, x, xo, dx, bs, bo):
        codes, mn, d, dmin = u
        return [(_apply_codes(builder, codes, x, xo, x86), builder.fmul(d, dx)),
                (_mins_vec(builder, mn, bs, bo, x86), builder.fneg(builder.fmul(dmin, dx)))]

    def q6_k_unpack(builder, w, o, f16_at):
        return _q6k_unpack(builder, w, o), f16_at(o, 208)

    def q6_k_apply(builder, u, x, xo, dx, bs, bo):
        codes, d = u
        return [(_q6k_apply(builder, codes, x, xo, bs, bo, x86), builder.fmul(d, dx))]

    KINDS = {"q8_0": (34, 32, q8_0_unpack, q8_0_apply), "q4_k": (144, 256, q4_k_unpack, q4_k_apply),
             "q6_k": (210, 256, q6_k_unpack, q6_k_apply)}

    def make_single(kind):
        block_bytes, per, unpack, apply = KINDS[kind]

        @intrinsic
        def row_dot(typingctx, w, woff, x, xoff, xd, xdoff, bs, bsoff, nb, lut):
            """f32 dot of one stored row (at byte woff of w) with one token's activation codes
            (x at xoff, block scales xd at xdoff, Q8_K 16-sums bs at bsoff; bs unused for Q8_0)."""
            sig = types.float32(w, woff, x, xoff, xd, xdoff, bs, bsoff, nb, lut)

            def codegen(context, builder, signature, args):
                wv, wo, xv, xo, xdv, xdo, bsv, bso, nbv, lutv = args
                wt, _, xt, _, xdt, _, bt, _, _, lutt = signature.args
                # element offsets into whole arrays: the kernel passes w [E, O, rb] and the [N, ...]
                # activation arrays as they are, so no per-row array views (and their refcounts)
                w_ = builder.gep(_base(context, builder, wt, wv, _I8), [wo])
                x_ = builder.gep(_base(context, builder, xt, xv, _I8), [xo])
                xd_ = builder.gep(_base(context, builder, xdt, xdv, _F32), [xdo])
                bs_ = builder.gep(_base(context, builder, bt, bsv, _I16), [bso])
                f16_at = f16_reader(builder, w_, _base(context, builder, lutt, lutv, _F32))

                def body(i, accs):
                    o = builder.mul(i, ir.Constant(i.type, block_bytes))
                    prefetch_ahead(builder, w_, o, block_bytes)
                    u = unpack(builder, w_, o, f16_at)
                    acc = accs[0]
                    for vec, scale in apply(builder, u, x_, builder.mul(i, ir.Constant(i.type, per)),
                                            builder.load(builder.gep(xd_, [i])), bs_,
                                            builder.mul(i, ir.Constant(i.type, 16))):
                        acc = fma8(builder, acc, vec, scale)
                    return [acc]

                return loop_rows(builder, nbv, 1, body)[0]

            return sig, codegen

        return row_dot

    def make_tile(kind, nt):
        block_bytes, per, unpack, apply = KINDS[kind]

        @intrinsic
        def row_dot_tile(typingctx, w, woff, x, xd, bs, rows, k, nb, lut):
            """The row at byte woff of w dotted with the nt tokens rows[k], ..., rows[k+nt-1] of the
            [N, n] activation arrays: each block is unpacked once and applied to every token (the
            prompt path); every token's sum is formed exactly as by the one-token row dot."""
            sig = types.UniTuple(types.float32, nt)(w, woff, x, xd, bs, rows, k, nb, lut)

            def codegen(context, builder, signature, args):
                wv, wo, xv, xdv, bsv, rowsv, kv, nbv, lutv = args
                wt, _, xt, xdt, bt, rt, _, _, lutt = signature.args
                w_ = builder.gep(_base(context, builder, wt, wv, _I8), [wo])
                xb = _base(context, builder, xt, xv, _I8)
                xdb = _base(context, builder, xdt, xdv, _F32)
                bsb = _base(context, builder, bt, bsv, _I16)
                rb = _base(context, builder, rt, rowsv, ir.IntType(64))
                f16_at = f16_reader(builder, w_, _base(context, builder, lutt, lutv, _F32))
                toks = [builder.load(builder.gep(rb, [builder.add(kv, ir.Constant(kv.type, j))]))
                        for j in range(nt)]
                xs = [builder.gep(xb, [builder.mul(t, builder.mul(nbv, ir.Constant(nbv.type, per)))]) for t in toks]
                xds = [builder.gep(xdb, [builder.mul(t, nbv)]) for t in toks]
                bss = [builder.gep(bsb, [builder.mul(t, builder.mul(nbv, ir.Constant(nbv.type, 16)))]) for t in toks]

                def body(i, accs):
                    o = builder.mul(i, ir.Constant(i.type, block_bytes))
                    prefetch_ahead(builder, w_, o, block_bytes)
                    u = unpack(builder, w_, o, f16_at)
                    xo = builder.mul(i, ir.Constant(i.type, per))
                    bo = builder.mul(i, ir.Constant(i.type, 16))
                    new = []
                    for j in range(nt):
                        acc = accs[j]
                        for vec, scale in apply(builder, u, xs[j], xo, builder.load(builder.gep(xds[j], [i])),
                                                bss[j], bo):
                            acc = fma8(builder, acc, vec, scale)
                        new.append(acc)
                    return new

                return context.make_tuple(builder, signature.return_type, loop_rows(builder, nbv, nt, body))

            return sig, codegen

        return row_dot_tile

    return (tuple(make_single(k) for k in KINDS) + tuple(make_tile(k, 4) for k in KINDS)
            + tuple(make_tile(k, 2) for k in KINDS))


# tiles of 4 tokens (4 x 8 f32 accumulators and the unpacked block stay in registers), then of 2
# (prompts route ~2 tokens to each expert), then single tokens
(madd_q8_0_row_dot, madd_q4_k_row_dot, madd_q6_k_row_dot,
 madd_q8_0_row_tile, madd_q4_k_row_tile, madd_q6_k_row_tile,
 madd_q8_0_row_tile2, madd_q4_k_row_tile2, madd_q6_k_row_tile2) = _make_row_dots(USE_X86_MADD, USE_X86_VNNI)

@intrinsic
def fetch_add(typingctx, arr, val):
    """Atomic arr[0] += val on an int64 array; returns the old value (the kernels' work-queue counter)."""
    sig = types.int64(arr, val)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", a.data, v, "seq_cst")

    return sig, codegen


@intrinsic
def load_u32(typingctx, b, off):
    """Little-endian uint32 from bytes b[off:off+4] (unaligned), widened to int64."""
    sig = types.int64(b, off)

    def codegen(context, builder, signature, args):
        bv, ov = args
        arr = context.make_array(signature.args[0])(context, builder, bv)
        base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
        ptr = builder.bitcast(builder.gep(base, [ov]), ir.IntType(32).as_pointer())
        return builder.zext(builder.load(ptr, align=1), ir.IntType(64))

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def kquant_scales_mins(b, o):
    """The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block (12 bytes at b[o+4:]),
    each packed one per byte into an int64.  Bytes 0..3: scale j (j<4) in the low 6 bits, bits 4-5 of
    scale j+4 on top; bytes 4..7 the same for the mins; bytes 8..11: low 4 bits of scale j+4 (low
    nibble) and of min j+4 (high nibble)."""
    u0 = load_u32(b, o + 4)
    u1 = load_u32(b, o + 8)
    u2 = load_u32(b, o + 12)
    sc = (u0 & 0x3F3F3F3F) | (((u2 & 0x0F0F0F0F) | (((u0 >> 6) & 0x03030303) << 4)) << 32)
    mn = (u1 & 0x3F3F3F3F) | ((((u2 >> 4) & 0x0F0F0F0F) | (((u1 >> 6) & 0x03030303) << 4)) << 32)
    return sc, mn


# weight kinds understood by the integer kernel (codes shared with pimoe.kernels.dispatch)
K_Q8_0, K_Q4_0, K_Q5_0, K_Q4_1, K_Q5_1, K_Q2_K, K_Q3_K, K_Q4_K, K_Q5_K, K_Q6_K = range(10)
# float kinds
K_F32, K_F16, K_BF16 = 0, 1, 2

MULTI_TOKEN = 10  # from this many tokens on one weight row, dequantize the row once (measured crossover ~10-12)
ROW_CHUNK = 8  # output rows per work item: small enough to balance 2..4 threads on 768-row experts


def _f16_table() -> np.ndarray:
    """f32 value of every f16 bit pattern (used for block scales: one lookup per block)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


F16_TABLE = _f16_table()


# --- per-type row dots ---------------------------------------------------------------------------
# Each computes one stored weight row (b: uint8 [row_bytes]) . one activation row, the way ggml's
# vec_dot does, as f32.  Two shapes of loop, chosen by measurement on x86 (numba/LLVM):
#  * 32-weight block types: per-lane f32 accumulators lanes[32] += (d_w*d_x) * (q_w*q_x), one
#    horizontal sum per row (no reduction per block); q_w*q_x is an exact integer in f32.
#  * K types: per-super-block int32 sum of scale*q_w*q_x (exact integers; the explicit np.int32(...)
#    truncation lets LLVM use 32/16-bit vector lanes instead of numba's default 64-bit ints), then
#    one f32 multiply-add per super-block, with the mins through Q8_K's 16-weight sums (bsums).
# Slicing a block first (blk = b[o:o+size]) keeps the inner indexes provably non-negative, which
# numba needs to drop its negative-index wraparound and vectorize the loop.

@njit(cache=True, nogil=True)
def _f16(b, off, lut):
    return lut[np.int64(b[off]) | (np.int64(b[off + 1]) << 8)]


@njit(cache=True, nogil=True)
def _row_q4_0(b, xq, xd, lut):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        o = i * 18 + 2  # low nibbles are weights 0..15, high nibbles 16..31; code - 8
        s = dot_code_16(b, o, 0, 15, o, 0, 0, 0, 8, xq, i * 32) + dot_code_16(b, o, 4, 15, o, 0, 0, 0, 8, xq, i * 32 + 16)
        acc += _f16(b, i * 18, lut) * xd[i] * np.float32(s)
    return acc


@njit(cache=True, nogil=True)
def _row_q5_0(b, xq, xd, lut):
    lanes = np.zeros(32, np.float32)
    for i in range(xd.shape[0]):
        blk = b[i * 22:i * 22 + 22]
        f = _f16(blk, 0, lut) * xd[i]
        qh = np.int32(blk[2]) | (np.int32(blk[3]) << 8) | (np.int32(blk[4]) << 16) | (np.int32(blk[5]) << 24)
        qs = blk[6:22]
        xx = xq[i * 32:i * 32 + 32]
        for l in range(16):
            v = np.int32(qs[l])
            q0 = ((v & 15) | (((qh >> l) & 1) << 4)) - 16
            q1 = ((v >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16
            lanes[l] += f * (np.float32(q0) * np.float32(xx[l]))
            lanes[16 + l] += f * (np.float32(q1) * np.float32(xx[16 + l]))
    return lanes.sum()


@njit(cache=True, nogil=True)
def _row_q4_1(b, xq, xd, xs, lut):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        o = i * 20 + 4
        s = dot_code_16(b, o, 0, 15, o, 0, 0, 0, 0, xq, i * 32) + dot_code_16(b, o, 4, 15, o, 0, 0, 0, 0, xq, i * 32 + 16)
        acc += _f16(b, i * 20, lut) * xd[i] * np.float32(s) + _f16(b, i * 20 + 2, lut) * xs[i]  # + m_w * s_x
    return acc


@njit(cache=True, nogil=True)
def _row_q5_1(b, xq, xd, xs, lut):
    lanes = np.zeros(32, np.float32)
    macc = np.float32(0.0)
    for i in range(xd.shape[0]):
        blk = b[i * 24:i * 24 + 24]
        f = _f16(blk, 0, lut) * xd[i]
        macc += _f16(blk, 2, lut) * xs[i]
        qh = np.int32(blk[4]) | (np.int32(blk[5]) << 8) | (np.int32(blk[6]) << 16) | (np.int32(blk[7]) << 24)
        qs = blk[8:24]
        xx = xq[i * 32:i * 32 + 32]
        for l in range(16):
            v = np.int32(qs[l])
            q0 = (v & 15) | (((qh >> l) & 1) << 4)
            q1 = (v >> 4) | (((qh >> (l + 16)) & 1) << 4)
            lanes[l] += f * (np.float32(q0) * np.float32(xx[l]))
            lanes[16 + l] += f * (np.float32(q1) * np.float32(xx[16 + l]))
    return lanes.sum() + macc


@njit(cache=True, nogil=True, inline="always")
def _two_bit_isum(b, qs, hm, hbit, bias, xq, xo, sc):
    """Q2_K / Q3_K super-block: sum over its 8 runs of 32 weights (p = 4h + j, 16-weight groups 2p and
    2p+1 with integer scales sc[2p], sc[2p+1]) of scale * (code - bias) * x, exact int32.  The low two
    bits of weight h*128 + j*32 + l are bits 2j of b[qs + h*32 + l] (both types); Q3_K's third bit is
    bit p of b[hm + l] (hbit = 1), Q2_K has none (hbit = 0)."""
    isum = np.int32(0)
    for p in range(8):
        h, j = p >> 2, p & 3
        isum = np.int32(isum + dot_code_32s(b, qs + h * 32, 2 * j, 3, hm, p, hbit, 2, bias, xq, xo + p * 32,
                                            sc[2 * p], sc[2 * p + 1]))
    return isum


@njit(cache=True, nogil=True)
def _row_q2_k(b, xq, xd, xbs, lut, sc):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        o = i * 84
        msum = np.int32(0)
        for g in range(16):  # byte g: scale (low nibble) and min (high nibble) of group g
            sc[g] = np.int32(b[o + g]) & 15
            msum = np.int32(msum + (np.int32(b[o + g]) >> 4) * np.int32(xbs[i * 16 + g]))
        isum = _two_bit_isum(b, o + 16, o + 16, 0, 0, xq, i * 256, sc)
        acc += xd[i] * (_f16(b, o + 80, lut) * np.float32(isum) - _f16(b, o + 82, lut) * np.float32(msum))
    return acc


@njit(cache=True, nogil=True, inline="always")
def _q3k_scales(b, o, sc):
    """The 16 signed 6-bit scales of the Q3_K super-block at b[o:] into sc: low 4 bits in bytes
    96..103 (low nibbles for groups 0..7, high for 8..15), high 2 bits in 104..107, stored + 32."""
    for g in range(16):
        lo = np.int32(b[o + 96 + (g & 7)])
        lo = (lo & 15) if g < 8 else (lo >> 4)
        hi = (np.int32(b[o + 104 + (g & 3)]) >> (2 * (g >> 2))) & 3
        sc[g] = (lo | (hi << 4)) - 32


@njit(cache=True, nogil=True)
def _row_q3_k(b, xq, xd, lut, sc):
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        _q3k_scales(b, i * 110, sc)
        acc += xd[i] * _f16(b, i * 110 + 108, lut) * np.float32(_two_bit_isum(b, i * 110 + 32, i * 110, 1, 4, xq,
                                                                               i * 256, sc))
    return acc


@njit(cache=True, nogil=True)
def _row_q5_k(b, xq, xd, xbs, lut):
    # the 16-bit super-block intrinsic: measured faster for Q5_K (8.3 vs 6.1 GB/s per core)
    acc = np.float32(0.0)
    for i in range(xd.shape[0]):
        o = i * 176
        packed, mins = kquant_scales_mins(b, o)
        msum = np.int32(0)
        for j in range(8):
            mn = np.int32((mins >> (8 * j)) & 255)
            msum = np.int32(msum + mn * (np.int32(xbs[i * 16 + 2 * j]) + np.int32(xbs[i * 16 + 2 * j + 1])))
        isum = q5k_block_dot(b, o + 48, o + 16, xq, i * 256, packed)
        acc += xd[i] * (_f16(b, o, lut) * np.float32(isum) - _f16(b, o + 2, lut) * np.float32(msum))
    return acc


# --- row dequantization, for prompts (many tokens per weight row) -------------------------------
# With T tokens on one weight row, converting the row once to f32 and doing T plain f32 dots with the
# rounded activations (x_rt = d_x * q_x, exactly the values ggml's integer dot uses) costs one decode
# instead of T.  Same products as the integer path, summed in another order: equal within f32
# rounding.  The Q4_1/Q5_1 minimum stays on ggml's per-block s_x (returned in mv, added per token).

@njit(cache=True, nogil=True)
def _dequant_row(kind, b, f, mv, lut):
    n = f.shape[0]
    zero = np.float32(0.0)
    if kind == K_Q8_0:
        for i in range(n // 32):
            o = i * 34 + 2  # int8 codes: (code >> 0) & 0xff, no bias
            deq_code_32(b, o, 0, 255, o, 0, 0, 0, 0, f, i * 32, _f16(b, i * 34, lut), zero)
    elif kind == K_Q4_0 or kind == K_Q4_1:
        ts = 18 if kind == K_Q4_0 else 20
        bias = 8 if kind == K_Q4_0 else 0
        for i in range(n // 32):
            d = _f16(b, i * ts, lut)
            if kind == K_Q4_1:
                mv[i] = _f16(b, i * ts + 2, lut)
            o = i * ts + ts - 16
            deq_code_16(b, o, 0, 15, o, 0, 0, 0, bias, f, i * 32, d, zero)
            deq_code_16(b, o, 4, 15, o, 0, 0, 0, bias, f, i * 32 + 16, d, zero)
    elif kind == K_Q5_0 or kind == K_Q5_1:
        ts = 22 if kind == K_Q5_0 else 24
        off = 16 if kind == K_Q5_0 else 0
        for i in range(n // 32):
            blk = b[i * ts:i * ts + ts]
            d = _f16(blk, 0, lut)
            if kind == K_Q5_1:
                mv[i] = _f16(blk, 2, lut)
            h0 = ts - 20
            qh = np.int32(blk[h0]) | (np.int32(blk[h0 + 1]) << 8) | (np.int32(blk[h0 + 2]) << 16) | (np.int32(blk[h0 + 3]) << 24)
            qs = blk[ts - 16:ts]
            fo = f[i * 32:i * 32 + 32]
            for l in range(16):
                v = np.int32(qs[l])
                fo[l] = d * np.float32(((v & 15) | (((qh >> l) & 1) << 4)) - off)
                fo[16 + l] = d * np.float32(((v >> 4) | (((qh >> (l + 16)) & 1) << 4)) - off)
    elif kind == K_Q2_K:
        for i in range(n // 256):
            o = i * 84
            d = _f16(b, o + 80, lut)
            dmin = _f16(b, o + 82, lut)
            for g in range(16):
                s = np.int32(b[o + g])
                h, j, half = g >> 3, (g >> 1) & 3, g & 1
                qo = o + 16 + h * 32 + half * 16
                deq_code_16(b, qo, 2 * j, 3, qo, 0, 0, 0, 0, f, i * 256 + g * 16,
                            d * np.float32(s & 15), dmin * np.float32(s >> 4))
    elif kind == K_Q3_K:
        sc = np.empty(16, np.int32)
        for i in range(n // 256):
            o = i * 110
            d = _f16(b, o + 108, lut)
            _q3k_scales(b, o, sc)
            for g in range(16):
                h, j, half = g >> 3, (g >> 1) & 3, g & 1
                deq_code_16(b, o + 32 + h * 32 + half * 16, 2 * j, 3, o + half * 16, h * 4 + j, 1, 2, 4,
                            f, i * 256 + g * 16, d * np.float32(sc[g]), zero)
    elif kind == K_Q4_K or kind == K_Q5_K:
        five = kind == K_Q5_K
        ts = 176 if five else 144
        qs_off = 48 if five else 16
        hmask = 1 if five else 0
        for i in range(n // 256):
            o = i * ts
            d = _f16(b, o, lut)
            dmin = _f16(b, o + 2, lut)
            scales, mins = kquant_scales_mins(b, o)
            for j in range(8):
                sc = np.int32((scales >> (8 * j)) & 255)
                mn = np.int32((mins >> (8 * j)) & 255)
                deq_code_32(b, o + qs_off + (j >> 1) * 32, 4 * (j & 1), 15, o + 16, j, hmask, 4, 0,
                            f, i * 256 + j * 32, d * np.float32(sc), dmin * np.float32(mn))
    else:  # Q6_K
        for i in range(n // 256):
            o = i * 210
            d = _f16(b, o + 208, lut)
            for g in range(16):
                h, k, half = g >> 3, (g >> 1) & 3, g & 1
                deq_code_16(b, o + h * 64 + (k & 1) * 32 + half * 16, 4 * (k >> 1), 15,
                            o + 128 + h * 32 + half * 16, 2 * k, 3, 4, 32,
                            f, i * 256 + g * 16, d * np.float32(np.int8(b[o + 192 + g])), zero)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _fdot(a, b):
    acc = np.float32(0.0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _fdot4(a, b0, b1, b2, b3):
    # four tokens against one row: four independent FMA chains (one chain alone is latency-bound)
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    for i in range(a.shape[0]):
        v = a[i]
        c0 += v * b0[i]
        c1 += v * b1[i]
        c2 += v * b2[i]
        c3 += v * b3[i]
    return c0, c1, c2, c3


@njit(cache=True, nogil=True, inline="always")
def _work_queue(O, G, nthreads):
    """The work queue of a matmul kernel over G expert groups of O output rows: (items per group,
    items, workers, counter).  An item is ROW_CHUNK output rows of one group; each worker takes the
    next item from the atomic counter (_next_item), so a thread the OS preempts (a shared machine, or
    more threads than cores) delays only its current item.  nthreads: numba.get_num_threads() from the
    caller (called inside a kernel it is a dynamic global that stops numba from caching the kernel)."""
    n_chunks = (O + ROW_CHUNK - 1) // ROW_CHUNK
    total = G * n_chunks
    return n_chunks, total, max(1, min(nthreads, total)), np.zeros(1, np.int64)


@njit(cache=True, nogil=True, inline="always")
def _next_item(counter, total, n_chunks, O, gexp):
    """The next item -> (group, its expert, first output row, end row); group -1 when none is left."""
    item = fetch_add(counter, 1)
    if item >= total:
        return -1, -1, 0, 0
    g = item // n_chunks
    r0 = (item % n_chunks) * ROW_CHUNK
    return g, gexp[g], r0, min(O, r0 + ROW_CHUNK)


@njit(cache=True, nogil=True, parallel=True)
def quant_matmul(kind, w, xq, xd, xs, xbs, xr, rows, groups, gexp, lut, out, nthreads):
    """Integer-activation matmul over expert groups.

    w uint8 [E, O, rb]; xq int8 [N, n] activation codes;
    xd f32 [N, n/block] activation scales; xs f32 [N, n/32] (Q8_1 sums, else unused);
    xbs int16 [N, n/16] (Q8_K 16-sums, else unused); xr f32 [N, n] the rounded activations
    d_x*q_x (used when a weight row serves MULTI_TOKEN or more tokens); rows/groups/gexp as in the
    module doc; out f32 [N, O]; nthreads: how many work-queue workers (numba.get_num_threads()).
    """
    O = w.shape[1]
    n_chunks, total, nw, counter = _work_queue(O, gexp.shape[0], nthreads)
    fast = kind == K_Q8_0 or kind == K_Q4_K or kind == K_Q6_K
    for _wk in prange(nw):
        sc = np.empty(16, np.int32)  # Q2_K/Q3_K's unpacked scales, one per worker
        while True:
            g, e, r0, r1 = _next_item(counter, total, n_chunks, O, gexp)
            if g < 0:
                break
            if groups[g + 1] - groups[g] >= MULTI_TOKEN and not fast:
                n = xq.shape[1]
                f = np.empty(n, np.float32)
                mv = np.zeros(n // 32, np.float32)
                affine = kind == K_Q4_1 or kind == K_Q5_1
                k0, k1 = groups[g], groups[g + 1]
                for o in range(r0, r1):
                    _dequant_row(kind, w[e, o], f, mv, lut)
                    k = k0
                    while k + 4 <= k1:
                        t0, t1, t2, t3 = rows[k], rows[k + 1], rows[k + 2], rows[k + 3]
                        v0, v1, v2, v3 = _fdot4(f, xr[t0], xr[t1], xr[t2], xr[t3])
                        out[t0, o] = v0
                        out[t1, o] = v1
                        out[t2, o] = v2
                        out[t3, o] = v3
                        k += 4
                    while k < k1:
                        out[rows[k], o] = _fdot(f, xr[rows[k]])
                        k += 1
                    if affine:
                        for k in range(k0, k1):
                            out[rows[k], o] += _fdot(mv, xs[rows[k]])
                continue
            if fast:
                # whole-row vector dots on offsets into the arrays (no views: each view costs refcount
                # calls comparable to a row's arithmetic); tokens in tiles of 4, then 2, share each
                # block's unpacking, the rest go one at a time (the same sums either way)
                rb = w.shape[2]
                n = xq.shape[1]
                nbx = xd.shape[1]
                nbs = xbs.shape[1]
                k0, k1 = groups[g], groups[g + 1]
                for o in range(r0, r1):
                    woff = (e * O + o) * rb
                    k = k0
                    while k + 4 <= k1:
                        if kind == K_Q8_0:
                            v0, v1, v2, v3 = madd_q8_0_row_tile(w, woff, xq, xd, xbs, rows, k, nbx, lut)
                        elif kind == K_Q4_K:
                            v0, v1, v2, v3 = madd_q4_k_row_tile(w, woff, xq, xd, xbs, rows, k, nbx, lut)
                        else:
                            v0, v1, v2, v3 = madd_q6_k_row_tile(w, woff, xq, xd, xbs, rows, k, nbx, lut)
                        out[rows[k], o] = v0
                        out[rows[k + 1], o] = v1
                        out[rows[k + 2], o] = v2
                        out[rows[k + 3], o] = v3
                        k += 4
                    if k + 2 <= k1:
                        if kind == K_Q8_0:
                            v0, v1 = madd_q8_0_row_tile2(w, woff, xq, xd, xbs, rows, k, nbx, lut)
                        elif kind == K_Q4_K:
                            v0, v1 = madd_q4_k_row_tile2(w, woff, xq, xd, xbs, rows, k, nbx, lut)
                        else:
                            v0, v1 = madd_q6_k_row_tile2(w, woff, xq, xd, xbs, rows, k, nbx, lut)
                        out[rows[k], o] = v0
                        out[rows[k + 1], o] = v1
                        k += 2
                    for kk in range(k, k1):
                        t = rows[kk]
                        if kind == K_Q8_0:
                            v = madd_q8_0_row_dot(w, woff, xq, t * n, xd, t * nbx, xbs, 0, nbx, lut)
                        elif kind == K_Q4_K:
                            v = madd_q4_k_row_dot(w, woff, xq, t * n, xd, t * nbx, xbs, t * nbs, nbx, lut)
                        else:
                            v = madd_q6_k_row_dot(w, woff, xq, t * n, xd, t * nbx, xbs, t * nbs, nbx, lut)
                        out[t, o] = v
                continue
            for o in range(r0, r1):
                b = w[e, o]
                for k in range(groups[g], groups[g + 1]):
                    t = rows[k]
                    if kind == K_Q4_0:
                        v = _row_q4_0(b, xq[t], xd[t], lut)
                    elif kind == K_Q5_0:
                        v = _row_q5_0(b, xq[t], xd[t], lut)
                    elif kind == K_Q4_1:
                        v = _row_q4_1(b, xq[t], xd[t], xs[t], lut)
                    elif kind == K_Q5_1:
                        v = _row_q5_1(b, xq[t], xd[t], xs[t], lut)
                    elif kind == K_Q2_K:
                        v = _row_q2_k(b, xq[t], xd[t], xbs[t], lut, sc)
                    elif kind == K_Q3_K:
                        v = _row_q3_k(b, xq[t], xd[t], lut, sc)
                    else:
                        v = _row_q5_k(b, xq[t], xd[t], xbs[t], lut)
                    out[t, o] = v


@njit(cache=True, nogil=True, parallel=True)
def gate_up_silu(kind, wg, wu, xq, xd, xbs, tok, rows, groups, gexp, lut, h, nthreads):
    """The first half of a layer's expert FFN in one call, for one token per expert (decode):
    h[p, o] = silu(wg[e, o] . x[tok[p]]) * (wu[e, o] . x[tok[p]]) for every pair p = rows[k] of group g
    (expert e = gexp[g]).  Gate and up rows of the same output o are read back to back while the
    token's activation codes stay in L1; silu is ggml's x / (1 + e^-x) in f32.

    kind: K_Q8_0, K_Q4_K or K_Q6_K (gate and up of the same type); wg, wu uint8 [E, O, rb];
    xq/xd/xbs the token's activation codes, scales and Q8_K sums [T, ...]; tok int64 [N] token of
    each pair; rows/groups/gexp the expert groups of the pairs; h f32 [N, O]."""
    O = wg.shape[1]
    rb = wg.shape[2]
    n = xq.shape[1]
    nbx = xd.shape[1]
    nbs = xbs.shape[1]
    n_chunks, total, nw, counter = _work_queue(O, gexp.shape[0], nthreads)
    one = np.float32(1.0)
    for _wk in prange(nw):
        while True:
            g, e, r0, r1 = _next_item(counter, total, n_chunks, O, gexp)
            if g < 0:
                break
            for o in range(r0, r1):
                woff = (e * O + o) * rb
                for kk in range(groups[g], groups[g + 1]):
                    p = rows[kk]
                    t = tok[p]
                    if kind == K_Q8_0:
                        gv = madd_q8_0_row_dot(wg, woff, xq, t * n, xd, t * nbx, xbs, 0, nbx, lut)
                        uv = madd_q8_0_row_dot(wu, woff, xq, t * n, xd, t * nbx, xbs, 0, nbx, lut)
                    elif kind == K_Q4_K:
                        gv = madd_q4_k_row_dot(wg, woff, xq, t * n, xd, t * nbx, xbs, t * nbs, nbx, lut)
                        uv = madd_q4_k_row_dot(wu, woff, xq, t * n, xd, t * nbx, xbs, t * nbs, nbx, lut)
                    else:
                        gv = madd_q6_k_row_dot(wg, woff, xq, t * n, xd, t * nbx, xbs, t * nbs, nbx, lut)
                        uv = madd_q6_k_row_dot(wu, woff, xq, t * n, xd, t * nbx, xbs, t * nbs, nbx, lut)
                    h[p, o] = gv / (one + np.exp(-gv)) * uv


@njit(cache=True, nogil=True, inline="always")
def _decode_float_row(kind, b, n, f, u):
    if kind == K_F32:
        f[:] = b.view(np.float32)
    elif kind == K_BF16:
        h = b.view(np.uint16)
        for i in range(n):
            u[i] = np.uint32(h[i]) << 16
        f[:] = u.view(np.float32)
    else:  # F16: magnitude bits moved into f32 position, rescaled by 2^112 (exact for normals and
        # subnormals), inf/nan given the all-ones exponent, then the sign
        h = b.view(np.uint16)
        for i in range(n):
            u[i] = (np.uint32(h[i]) & np.uint32(0x7FFF)) << 13
        fv = u.view(np.float32)
        for i in range(n):
            hv = np.uint32(h[i])
            m = fv[i] * np.float32(5.192296858534828e33)  # 2**112
            if (hv & np.uint32(0x7C00)) == np.uint32(0x7C00):
                m = np.float32(np.inf) if (hv & np.uint32(0x3FF)) == 0 else np.float32(np.nan)
            f[i] = -m if (hv & np.uint32(0x8000)) else m


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def float_matmul(kind, w, x, rows, groups, gexp, out, nthreads):
    """F32/F16/BF16 weights: w uint8 [E, O, rb]; x f32 [N, n] (already rounded); out f32 [N, O]."""
    O = w.shape[1]
    n = x.shape[1]
    n_chunks, total, nw, counter = _work_queue(O, gexp.shape[0], nthreads)
    for _wk in prange(nw):
        f = np.empty(n, np.float32)  # one row decoded to f32, one buffer per worker
        u = np.empty(n, np.uint32)
        while True:
            g, e, r0, r1 = _next_item(counter, total, n_chunks, O, gexp)
            if g < 0:
                break
            for o in range(r0, r1):
                _decode_float_row(kind, w[e, o], n, f, u)
                for k in range(groups[g], groups[g + 1]):
                    t = rows[k]
                    xr = x[t]
                    acc = np.float32(0.0)
                    for i in range(n):
                        acc += f[i] * xr[i]
                    out[t, o] = acc


# --- activation quantizers (numba twins of actquant's numpy ones; tested equal) -------------------

@njit(cache=True, nogil=True, error_model="numpy")
def quantize_rows_q8_0(x, qs, d, s):
    """x f32 [T, n] -> qs int8 [T, n], d f32 [T, n/32] (f32, caller rounds to f16), s f32 sums of qs."""
    T, n = x.shape
    for t in range(T):
        for i in range(n // 32):
            amax = np.float32(0.0)
            for l in range(32):
                a = abs(x[t, i * 32 + l])
                if a > amax:
                    amax = a
            d[t, i] = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            tot = 0
            for l in range(32):
                v = np.rint(x[t, i * 32 + l] * inv)
                if v != v:   # NaN (x NaN, or inf * 0 when amax is inf): code 0, as ggml's nearest_int
                    v = np.float32(0.0)
                v = min(max(v, np.float32(-128.0)), np.float32(127.0))
                qs[t, i * 32 + l] = np.int8(v)
                tot += np.int32(v)
            s[t, i] = np.float32(tot)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_rows_q8_k(x, qs, d, bsums):
    """x f32 [T, n] -> qs int8 [T, n], d f32 [T, n/256], bsums int16 [T, n/16] (quantize_row_q8_K_ref)."""
    T, n = x.shape
    for t in range(T):
        for i in range(n // 256):
            o = i * 256
            vmax = np.float32(0.0)
            amax = np.float32(0.0)
            for l in range(256):
                a = abs(x[t, o + l])
                if a > amax:
                    amax = a
                    vmax = x[t, o + l]
            if amax == 0:
                d[t, i] = 0.0
                for l in range(256):
                    qs[t, o + l] = 0
                for j in range(16):
                    bsums[t, i * 16 + j] = 0
                continue
            # an inf in x gives iscale -0 and d = 1/iscale = -inf (IEEE, as ggml; numba's default
            # error model would raise ZeroDivisionError here): the dots come out non-finite, like llama.cpp's
            iscale = np.float32(-127.0) / vmax
            for l in range(256):
                v = min(np.rint(iscale * x[t, o + l]), np.float32(127.0))
                if v != v:   # NaN code (inf * -0): 0, as ggml's nearest_int gives
                    v = np.float32(0.0)
                qs[t, o + l] = np.int8(max(v, np.float32(-128.0)))
            for j in range(16):
                tot = 0
                for l in range(16):
                    tot += np.int32(qs[t, o + j * 16 + l])
                bsums[t, i * 16 + j] = np.int16(tot)
            d[t, i] = np.float32(1.0) / iscale
