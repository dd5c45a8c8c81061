"""The compiled core (pimoe.qpu.emu_core) against the op table that defines it (pimoe.qpu.emu_spec), op by op,
on edge lanes: signed zeros, infinities, NaNs, denormals, f16 boundaries, integer extremes, shift counts of
32 and more. The core is entered directly (emu_core.alu_op / sfu_op / flag_update / write_lanes /
branch_taken run the same inlined helpers as emu_core.run); one generated program per ALU then runs every
op through the interpreter loop, so the decoded op numbers and operand muxes are covered too.
"""

from __future__ import annotations

import numpy as np
import pytest

from pimoe.qpu import emu_core as core
from pimoe.qpu import emu_spec as spec
from pimoe.qpu.emu_decode import ADD_OP, MUL_OP, PK_H, PK_L, UN_ABS, UN_FF, UN_H, UN_HH, UN_L, UN_LL, UN_NONE, UN_SWP

UNPACK_CODE = {None: UN_NONE, "abs": UN_ABS, "l": UN_L, "h": UN_H, "ff": UN_FF, "ll": UN_LL, "hh": UN_HH,
               "swp": UN_SWP}


def f32_words(values):
    return np.asarray(values, dtype=np.float32).view(np.uint32)


# edge lanes: 3 x 16 words of each kind; binary ops see every pairing of a row of `a` with a rotated `b`
F_EDGE = np.concatenate([
    f32_words([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.5, 0.5, 2.5, -2.5, 3.0e9, -3.0e9, 65504.0, 65520.0,
               6e-8, -1e-20]),
    np.array([0x00000001, 0x807FFFFF, 0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF, 0xFFC00001, 0x7F800001,
              0x4F000000, 0xCF000000, 0x4F800000, 0x3F000001, 0x3EFFFFFF, 0x33000000, 0x38800000, 0x387FC000],
             dtype=np.uint32),
    f32_words([1e-40, -0.75, 7.0, -3.25, 0.3, -0.49, 0.51, 100.0, -128.5, 150.0, 2.0 ** -126, 1.0 / 3, 1e38,
               -1e-38, 4194304.5, 16777217.0]),
])
I_EDGE = np.array([0, 1, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 31, 32, 33, 63, 0xFFFF, 0x10000, 0x00FFFFFF,
                   0x01000000, 0x00800000, 0xFF800000, 0xDEADBEEF, 0x7FFF8000, 0x8000FFFF, 0xFFFF0001, 16, 15,
                   0xFFFFFFF0, 0x3C003C00, 0x7C00FC00, 0x7E000001, 0x00010001, 0x80008000, 0x0400FBFF, 0x12345678,
                   0xCAFEF00D, 0x0000FFFF, 0x00000002], dtype=np.uint32)
# f16 pairs for the 2 x f16 ops: zero signs, inf, NaN, the largest, the smallest normal and denormal
H_EDGE = np.array([0x00008000, 0x7C00FC00, 0x7E00FE00, 0x7BFFFBFF, 0x04000001, 0x80013C00, 0x3C00BC00, 0x3555C000,
                   0x5640D640, 0x7BFF3C01, 0x00030200, 0x3800B800, 0x4200C200, 0x6400E400, 0x03FF83FF, 0x4B004BFF],
                  dtype=np.uint32)


def rows(*words):
    w = np.concatenate(words)
    return [w[i:i + 16] for i in range(0, len(w) - 15, 16)]


def pairs(words_a, words_b, shifts=(0, 1, 5, 11)):
    for a in rows(*words_a):
        for b in rows(*words_b):
            for k in shifts:
                yield a, np.roll(b, k)


def same_bits(got, want, is_float):
    """Equal words; two float NaNs are the same whatever their payload and sign."""
    got = np.asarray(got, dtype=np.int64).astype(np.uint32)
    want = np.asarray(want, dtype=np.uint32)
    if is_float:
        nan_g = ((got & 0x7F800000) == 0x7F800000) & ((got & 0x7FFFFF) != 0)
        nan_w = ((want & 0x7F800000) == 0x7F800000) & ((want & 0x7FFFFF) != 0)
        return bool(np.array_equal(nan_g, nan_w) and np.array_equal(got[~nan_g], want[~nan_w]))
    return bool(np.array_equal(got, want))


def check_flags(res_bits, carry, kind, want: spec.Result, msg):
    """Every push agrees: Z, N and C from the core's result as emu_spec reads them."""
    fa0 = np.zeros(16, dtype=np.uint8)
    fb0 = np.arange(16, dtype=np.uint8) & 1
    for pf, name in enumerate(spec.PUSH, start=1):
        got_a, got_b = core.flag_update(res_bits, kind, carry, pf, 0, fa0, fb0)
        want_a, want_b = spec.update_flags(fa0, fb0, want, push=name)
        assert np.array_equal(got_a, want_a) and np.array_equal(got_b, want_b), f"{msg}: {name}"


def core_op(alu, name, a, b, una=None, unb=None, lanes=None):
    lanes = lanes or spec.Lanes()
    code = (MUL_OP if alu == "mul" else ADD_OP)[name]
    rtop = lanes.rtop.copy()
    out, carry, kind = core.alu_op(alu == "mul", code, a.astype(np.int64), b.astype(np.int64), UNPACK_CODE[una],
                                   UNPACK_CODE[unb], lanes.qpu, lanes.thread, lanes.lr, lanes.fa.copy(),
                                   lanes.fb.copy(), rtop)
    return out, carry, kind, rtop


def check_op(alu, name, a, b, una=None, unb=None, lanes=None):
    op = (spec.MUL if alu == "mul" else spec.ADD)[name]
    want = op.run(a, b, unpack=(una, unb), lanes=lanes)
    out, carry, kind, _ = core_op(alu, name, a, b, una, unb, lanes)
    msg = f"{alu} {name}(a{'.' + una if una else ''}, b{'.' + unb if unb else ''}) a={a.tolist()} b={b.tolist()}"
    assert kind == (1 if want.kind == "float" else 0), msg + ": result kind"
    assert same_bits(out, want.bits, want.kind == "float"), (
        msg + f"\n core {np.asarray(out).astype(np.uint32).tolist()}\n spec {want.bits.tolist()}")
    check_flags(out, carry, kind, want, msg)


def ops_with(table, inputs, nsrc=None):
    return sorted(name for name, op in table.items() if op.inputs == inputs and (nsrc is None or op.nsrc == nsrc))


F32_UNPACKS = [None, "abs", "l", "h"]


@pytest.mark.parametrize("alu,name", [("add", n) for n in ops_with(spec.ADD, "f32", 2)]
                         + [("mul", n) for n in ops_with(spec.MUL, "f32", 2)])
def test_binary_float_ops_on_edge_lanes(alu, name):
    for a, b in pairs([F_EDGE, I_EDGE[:16]], [F_EDGE]):
        check_op(alu, name, a, b)
    for una in F32_UNPACKS:
        for unb in F32_UNPACKS:
            for a, b in pairs([F_EDGE[:32], H_EDGE], [H_EDGE, F_EDGE[16:32]], shifts=(0, 3)):
                check_op(alu, name, a, b, una, unb)


@pytest.mark.parametrize("alu,name", [("add", n) for n in ops_with(spec.ADD, "f32", 1)]
                         + [("mul", n) for n in ops_with(spec.MUL, "f32", 1)])
def test_unary_float_ops_on_edge_lanes(alu, name):
    for una in F32_UNPACKS:
        for a in rows(F_EDGE, I_EDGE, H_EDGE):
            check_op(alu, name, a, np.zeros(16, dtype=np.uint32), una)


@pytest.mark.parametrize("alu,name", [("add", n) for n in ops_with(spec.ADD, "int")]
                         + [("mul", n) for n in ops_with(spec.MUL, "int")])
def test_integer_ops_on_edge_lanes(alu, name):
    lanes = spec.Lanes(fa=(np.arange(16) % 3 == 0).astype(np.uint8), fb=(np.arange(16) % 2).astype(np.uint8))
    for a, b in pairs([I_EDGE, F_EDGE[:16]], [I_EDGE]):
        check_op(alu, name, a, b, lanes=lanes)


@pytest.mark.parametrize("alu,name", [("add", n) for n in ops_with(spec.ADD, "f16x2")]
                         + [("mul", n) for n in ops_with(spec.MUL, "f16x2")])
def test_2x16_float_ops_on_edge_lanes(alu, name):
    for una in [None, "ff", "ll", "hh", "swp"]:
        for a, b in pairs([H_EDGE, F_EDGE[:16]], [H_EDGE, I_EDGE[:16]], shifts=(0, 1, 7)):
            check_op(alu, name, a, b, una)


@pytest.mark.parametrize("name", ops_with(spec.ADD, "none"))
def test_context_ops(name):
    fa = (np.arange(16) % 3 == 0).astype(np.uint8)
    for lanes in (spec.Lanes(qpu=5, thread=2, lr=0x10000A48, fa=fa, fb=1 - fa), spec.Lanes(qpu=0, thread=3)):
        check_op("add", name, np.zeros(16, dtype=np.uint32), np.zeros(16, dtype=np.uint32), lanes=lanes)


def test_multop_then_umul24_is_a_32bit_product():
    for a, b in pairs([I_EDGE], [I_EDGE]):
        out, _, _, rtop = core_op("mul", "multop", a, b)
        want = spec.MUL["multop"].run(a, b)
        assert same_bits(out, want.bits, False) and same_bits(rtop, want.bits, False)
        lanes = spec.Lanes(rtop=rtop.copy())
        out, _, _, rtop_after = core_op("mul", "umul24", a, b, lanes=lanes)
        assert same_bits(out, spec.MUL["umul24"].run(a, b, lanes=lanes).bits, False)
        product = (a.astype(object) * b.astype(object)) & spec.MASK32     # numpy's own 32-bit product
        assert same_bits(out, np.array(product, dtype=np.uint64), False)
        assert not rtop_after.any()                                          # umul24 consumed it


@pytest.mark.parametrize("fn,name", enumerate(["recip", "rsqrt", "exp", "log", "sin", "rsqrt2"]))
def test_sfu_magic_writes_compute_the_add_alu_functions(fn, name):
    assert getattr(core, f"SFU_{name.upper()}") == fn
    for a in rows(F_EDGE, I_EDGE):
        assert same_bits(core.sfu_op(fn, a.astype(np.int64)), spec.SFU[name].run(a).bits, True), (name, a.tolist())


@pytest.mark.parametrize("pack,code", [("l", PK_L), ("h", PK_H)])
def test_output_packs_and_write_conditions(pack, code):
    old = I_EDGE[16:32]
    fa = (np.arange(16) % 3 == 0).astype(np.uint8)
    fb = (np.arange(16) % 2).astype(np.uint8)
    for a in rows(F_EDGE):
        got = core.write_lanes(old, a.astype(np.int64), 0, code, fa, fb)
        assert np.array_equal(got, spec.output_pack(old, a, pack)), (pack, a.tolist())
    for cond_code, cond in enumerate(spec.CONDS, start=1):
        got = core.write_lanes(old, I_EDGE[:16].astype(np.int64), cond_code, 0, fa, fb)
        assert np.array_equal(got, spec.conditional_write(old, I_EDGE[:16], cond, fa, fb)), cond
        got = core.write_lanes(old, F_EDGE[:16].astype(np.int64), cond_code, code, fa, fb)
        want = spec.conditional_write(old, spec.output_pack(old, F_EDGE[:16], pack), cond, fa, fb)
        assert np.array_equal(got, want), (cond, pack)


def test_flag_updates_follow_the_table():
    rng = np.random.default_rng(11)
    for a, b in pairs([I_EDGE, F_EDGE[:16]], [I_EDGE]):
        for alu, name in (("add", "sub"), ("add", "fsub"), ("add", "umax"), ("mul", "add")):
            want = (spec.MUL if alu == "mul" else spec.ADD)[name].run(a, b)
            out, carry, kind, _ = core_op(alu, name, a, b)
            fa = rng.integers(0, 2, 16).astype(np.uint8)
            fb = rng.integers(0, 2, 16).astype(np.uint8)
            for uf, update in enumerate(spec.UPDATE, start=1):
                got = core.flag_update(out, kind, carry, 0, uf, fa, fb)
                assert all(np.array_equal(g, w) for g, w in zip(got, spec.update_flags(fa, fb, want, update=update))), (
                    name, update)


def test_branch_conditions():
    patterns = [np.zeros(16), np.ones(16), np.eye(16)[0], 1 - np.eye(16)[0], np.eye(16)[5], np.arange(16) % 2]
    from pimoe.qpu import isa

    for code, name in enumerate(isa.BRANCH_CONDS):
        for fa in patterns:
            fa = fa.astype(np.uint8)
            assert core.branch_taken(code, fa) == spec.BRANCH_CONDS[name](fa), (name, fa.tolist())


def test_the_table_names_every_op_the_core_models():
    """An op the interpreter computes is in the table, and the reverse (the graphics-only ones fault)."""
    a = I_EDGE[:16].astype(np.int64)
    for alu, codes, table in (("add", ADD_OP, spec.ADD), ("mul", MUL_OP, spec.MUL)):
        modelled = set()
        for name, code in codes.items():
            if name == "nop":
                continue
            _, _, kind = core.alu_op(alu == "mul", code, a, a, 0, 0, 0, 0, 0, np.zeros(16, np.uint8),
                                     np.zeros(16, np.uint8), np.zeros(16, np.uint32))
            if kind >= 0:
                modelled.add(name)
        assert modelled == set(table), (alu, modelled ^ set(table))


# ---- every op through the interpreter loop: one generated program per ALU -------------------------------


DSL_NAME = {"and": "band", "or": "bor", "xor": "bxor", "not": "bnot", "min": "imin", "max": "imax"}
NOT_IN_DSL = {"vadd", "vsub"}       # the assembler has no mnemonic for these two


def _program_ops(alu):
    table = spec.MUL if alu == "mul" else spec.ADD
    return [n for n in sorted(table) if table[n].inputs != "none" and n not in NOT_IN_DSL | {"multop", "umul24"}]


def _emit(alu, name, nsrc):
    def emit():
        g = globals()                  # the DSL names while the kernel below is assembled
        args = [g["r0"], g["r1"], g["r2"]][:nsrc + 1]
        if alu == "mul":
            getattr(g["nop"](), name)(*args)
        else:
            g[DSL_NAME.get(name, name)](*args)
    return emit


@pytest.mark.parametrize("alu", ["add", "mul"])
def test_every_op_through_the_interpreter(alu):
    from pimoe.qpu import qpu
    from tests.qpu_run import emit_program_end, lane_addresses, run_kernel, store_row

    table = spec.MUL if alu == "mul" else spec.ADD
    names = _program_ops(alu)
    emitters = [_emit(alu, n, table[n].nsrc) for n in names]

    @qpu
    def k_each_op(asm):
        g = globals()
        lane_addresses(asm, g["rf0"], g["rf1"], g["rf2"])    # a, b, the output rows
        g["mov"](g["tmua"], g["rf0"])
        g["mov"](g["tmua"], g["rf1"])
        g["shl"](g["r3"], 4, 4)
        g["nop"](sig=g["ldtmu"](g["r1"]))
        g["nop"](sig=g["ldtmu"](g["r2"]))
        for emit in emitters:
            emit()
            store_row(asm, g["r0"], g["rf2"])
        emit_program_end(asm)

    for a, b in pairs([F_EDGE[:16], I_EDGE[:16], H_EDGE], [F_EDGE[16:32], I_EDGE[16:32]], shifts=(0,)):
        (_, _, y), _ = run_kernel(k_each_op, a, b, np.zeros((len(names), 16), dtype=np.uint32))
        for k, name in enumerate(names):
            want = table[name].run(a, b)
            assert same_bits(y[k], want.bits, want.kind == "float"), (alu, name, a.tolist(), b.tolist())
