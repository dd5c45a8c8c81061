"""The emulator as an executable ISA spec: every ALU op against a numpy definition, flags, branches, TMU,
SFU, rotate/broadcast, thread modes and every fault.

Reference semantics come from numpy plus the hardware-verified facts in py-videocore6's tests (rotate
directions, quad rotate of register-file operands, r5 quad broadcast, flag update truth tables, unifa
and register uniform branches from lane 0, fcmp = a - b, shifts mod 32). Denormals: the QPU flushes them to zero,
so the reference flushes f32 inputs and outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from pimoe.errors import PimoeError
from pimoe.qpu import EmuDriver, QPUFault, qpu
from pimoe.qpu.emulator import BUS_BASE
from tests.qpu_run import emit_program_end, lane_addresses, run_kernel, store_and_end, store_row

# ---------------------------------------------------------------------------------------------------------
# lane values

F_EDGE = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 3.0e38, -2.5, 1.5, 0.5, -0.75, 1e-20,
                   65504.0, 7.0, -3.25], dtype=np.float32)
I_EDGE = np.array([0, 1, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 31, 32, 33, 63, 0xFFFF, 0x10000, 5, 0xDEADBEEF,
                   0x00FFFFFF, 0x01000000, 12345], dtype=np.uint32)


def f32(x):
    return np.asarray(x, dtype=np.float32)


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def ftz(x):
    x = f32(x).copy()
    u = x.view(np.uint32)
    den = (u & 0x7F800000) == 0
    u[den] &= 0x80000000
    return x


def f16_lo(u):
    return (u & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float32)


def f16_hi(u):
    return (u >> 16).astype(np.uint16).view(np.float16).astype(np.float32)


def to_f16_bits(x):
    with np.errstate(over="ignore"):
        return f32(x).astype(np.float16).view(np.uint16).astype(np.uint32)


def same_float(got_u, want_f, ignore_zero_sign=False):
    got = got_u.view(np.float32)
    want = f32(want_f)
    nan = np.isnan(want)
    if ignore_zero_sign:
        return bool(np.all(np.isnan(got[nan])) and np.array_equal(got[~nan], want[~nan]))
    return bool(np.all(np.isnan(got[nan])) and np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)))


# ---------------------------------------------------------------------------------------------------------
# a kernel harness: r1, r2 = two 16-lane inputs; each emitter computes r0; r0 is stored as one output row


@qpu
def k_ops(asm, *, emitters):
    lane_addresses(asm, rf0, rf1, rf2)
    mov(tmua, rf0)
    mov(tmua, rf1)
    shl(r3, 4, 4)
    nop(sig=ldtmu(r1))
    nop(sig=ldtmu(r2))
    for emit in emitters:
        mov(r0, 0)
        emit()
        store_row(asm, r0, rf2)
    emit_program_end(asm)


def run_ops(emitters, a, b):
    """Run k_ops on inputs a, b (any 4-byte dtype, 16 lanes); returns uint32 [len(emitters), 16]."""
    with EmuDriver(data_area_size=1 << 16) as drv:
        code = drv.program(k_ops, emitters=emitters)
        x = drv.alloc((2, 16), dtype=np.uint32)
        y = drv.alloc((len(emitters), 16), dtype=np.uint32)
        unif = drv.alloc(3, dtype=np.uint32)
        x[0] = np.asarray(a).view(np.uint32)
        x[1] = np.asarray(b).view(np.uint32)
        y[:] = 0xCCCCCCCC
        unif[:] = [x.addresses()[0, 0], x.addresses()[1, 0], y.addresses()[0, 0]]
        drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=1)
        return np.array(y)


def _g():
    """The DSL namespace while a kernel is being assembled (the @qpu kernel's module globals)."""
    return globals()


# ---------------------------------------------------------------------------------------------------------
# float ops with pack / unpack

F_UNPACK = {None: lambda u: ftz(u.view(np.float32)), "abs": lambda u: ftz(np.abs(u.view(np.float32))),
            "l": lambda u: ftz(f16_lo(u)), "h": lambda u: ftz(f16_hi(u))}
F_BINARY = {"fadd": np.add, "faddnf": np.add, "fsub": np.subtract, "fmul": np.multiply, "fcmp": np.subtract,
            "fmin": np.fmin, "fmax": np.fmax}


def _float_inputs(rng):
    a = np.concatenate([F_EDGE[:8], rng.standard_normal(8).astype(np.float32)])
    b = np.concatenate([rng.standard_normal(8).astype(np.float32), F_EDGE[8:]])
    b[2] = -0.0
    return a, b


@pytest.mark.parametrize("op", sorted(F_BINARY))
def test_float_binary_ops_with_pack_unpack(op):
    rng = np.random.default_rng(1)
    a, b = _float_inputs(rng)
    # half-precision halves for the l/h unpacks: lo = a-ish, hi = b-ish values
    h = to_f16_bits(rng.standard_normal(16)) | (to_f16_bits(rng.standard_normal(16)) << 16)
    cases = []
    for un1 in (None, "abs", "l", "h"):
        for un2 in (None, "abs", "l", "h"):
            for pk in (None, "l", "h"):
                cases.append((un1, un2, pk))

    def emitter(un1, un2, pk):
        def emit():
            g = _g()
            dst = g["r0"] if pk is None else g["r0"].pack(pk)
            s1 = g["r1"] if un1 is None else g["r1"].unpack(un1)
            s2 = g["r2"] if un2 is None else g["r2"].unpack(un2)
            if op == "fmul":
                g["nop"]().fmul(dst, s1, s2)
            else:
                g[op](dst, s1, s2)
        return emit

    # full f32 inputs for none/abs, packed halves for l/h: run twice and pick per case
    y_f = run_ops([emitter(*c) for c in cases], a, b)
    y_h = run_ops([emitter(*c) for c in cases], h, h.copy())
    for k, (un1, un2, pk) in enumerate(cases):
        half = un1 in ("l", "h") or un2 in ("l", "h")
        ua = (h if half else a.view(np.uint32))
        ub = (h if half else b.view(np.uint32))
        y = y_h[k] if half else y_f[k]
        with np.errstate(all="ignore"):
            want = ftz(F_BINARY[op](F_UNPACK[un1](ua), F_UNPACK[un2](ub)).astype(np.float32))
        msg = f"{op}(r0{'.' + pk if pk else ''}, r1{'.' + un1 if un1 else ''}, r2{'.' + un2 if un2 else ''})"
        if pk is None:
            assert same_float(y, want, ignore_zero_sign=op in ("fmin", "fmax")), msg
        else:
            got16 = (y & 0xFFFF) if pk == "l" else (y >> 16)
            other = (y >> 16) if pk == "l" else (y & 0xFFFF)
            want16 = to_f16_bits(want)
            nan = np.isnan(want)
            assert np.array_equal(got16[~nan], want16[~nan]) or op in ("fmin", "fmax") and np.array_equal(
                got16[~nan] & 0x7FFF, want16[~nan] & 0x7FFF), msg
            assert np.all(other == 0), msg + ": the other half must be kept (it was 0)"


def test_fmin_fmax_pick_the_number_over_nan():
    a = f32([np.nan, 1.0, -np.inf, 2.0] * 4)
    b = f32([3.0, np.nan, 5.0, np.inf] * 4)
    g = _g
    y = run_ops([lambda: g()["fmin"](g()["r0"], g()["r1"], g()["r2"]),
                 lambda: g()["fmax"](g()["r0"], g()["r1"], g()["r2"])], a, b)
    assert same_float(y[0], np.fmin(a, b)) and same_float(y[1], np.fmax(a, b))


def test_float_unary_and_conversions():
    rng = np.random.default_rng(2)
    a = np.concatenate([f32([0.5, 1.5, 2.5, -0.5, -1.5, 3e9, -3e9, np.nan]),
                        (rng.standard_normal(8) * 100).astype(np.float32)])
    ints = I_EDGE.copy()
    g = _g
    names = ["fround", "ftrunc", "ffloor", "fceil", "ftoin", "ftoiz", "ftouz", "fmov"]
    ems = []
    for n in names:
        if n == "fmov":
            ems.append(lambda: g()["nop"]().fmov(g()["r0"], g()["r1"]))
        else:
            ems.append(lambda n=n: g()[n](g()["r0"], g()["r1"]))
    ems += [lambda: g()["itof"](g()["r0"], g()["r2"]), lambda: g()["utof"](g()["r0"], g()["r2"]),
            lambda: g()["clz"](g()["r0"], g()["r2"])]
    y = run_ops(ems, a, ints)
    af = ftz(a)
    with np.errstate(all="ignore"):
        assert same_float(y[0], np.rint(af))
        assert same_float(y[1], np.trunc(af))
        assert same_float(y[2], np.floor(af))
        assert same_float(y[3], np.ceil(af))
        finite = ~np.isnan(af)
        sat = lambda v: np.clip(v.astype(np.float64), -2.0 ** 31, 2.0 ** 31 - 1)  # noqa: E731  (saturating)
        assert np.array_equal(y[4][finite].view(np.int32), sat(np.rint(af[finite])).astype(np.int32))
        assert np.array_equal(y[5][finite].view(np.int32), sat(np.trunc(af[finite])).astype(np.int32))
        assert np.array_equal(y[6][finite], np.clip(np.trunc(af[finite]).astype(np.float64), 0, 2.0 ** 32 - 1).astype(np.uint32))
        assert y[4][~finite][0] == 0 and y[5][~finite][0] == 0
    assert same_float(y[7], af)
    assert same_float(y[8], ints.view(np.int32).astype(np.float32))
    assert same_float(y[9], ints.astype(np.float32))
    clz = np.array([32 - int(v).bit_length() for v in ints], dtype=np.uint32)
    assert np.array_equal(y[10], clz)


def test_fdx_fdy_lane_pairs():
    a = (np.arange(16) ** 2).astype(np.float32)
    g = _g
    y = run_ops([lambda: g()["fdx"](g()["r0"], g()["r1"]), lambda: g()["fdy"](g()["r0"], g()["r1"])], a, a)
    fdx = (a[1::2] - a[0::2]).repeat(2)
    quads = a.reshape(4, 4)
    fdy = np.concatenate([np.tile(q[2:4] - q[0:2], 2) for q in quads])
    assert same_float(y[0], fdx) and same_float(y[1], fdy)


# ---------------------------------------------------------------------------------------------------------
# integer ops

def _s(u):
    return (np.asarray(u).astype(np.uint64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32).astype(np.int64)


I_BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
    "imin": lambda a, b: np.where(_s(a) < _s(b), a, b), "imax": lambda a, b: np.where(_s(a) > _s(b), a, b),
    "umin": np.minimum, "umax": np.maximum,
    "shl": lambda a, b: a << (b & 31), "shr": lambda a, b: a >> (b & 31),
    "asr": lambda a, b: (_s(a) >> (b & 31)).astype(np.int64),
    "ror": lambda a, b: (a >> (b & 31)) | (a << ((32 - (b & 31)) & 31)),
    "band": np.bitwise_and, "bor": np.bitwise_or, "bxor": np.bitwise_xor,
}


@pytest.mark.parametrize("alu", ["add", "mul"])
def test_integer_ops(alu):
    a = np.concatenate([I_EDGE[:8], I_EDGE[8:]])
    b = I_EDGE[::-1].copy()
    g = _g
    if alu == "add":
        names = list(I_BINARY)
        ems = [lambda n=n: g()[n](g()["r0"], g()["r1"], g()["r2"]) for n in names]
        ems += [lambda: g()["bnot"](g()["r0"], g()["r1"]), lambda: g()["neg"](g()["r0"], g()["r1"])]
    else:
        names = ["add", "sub"]
        ems = [lambda n=n: getattr(g()["nop"](), n)(g()["r0"], g()["r1"], g()["r2"]) for n in names]
        ems += [lambda: g()["nop"]().umul24(g()["r0"], g()["r1"], g()["r2"]),
                lambda: g()["nop"]().smul24(g()["r0"], g()["r1"], g()["r2"]),
                lambda: g()["nop"]().mov(g()["r0"], g()["r1"])]
    y = run_ops(ems, a, b)
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    for k, n in enumerate(names):
        want = (I_BINARY[n](a64, b64) & 0xFFFFFFFF).astype(np.uint32)
        assert np.array_equal(y[k], want), n
    if alu == "add":
        assert np.array_equal(y[-2], ~a) and np.array_equal(y[-1], (-a64 & 0xFFFFFFFF).astype(np.uint32))
    else:
        assert np.array_equal(y[2], (((a64 & 0xFFFFFF) * (b64 & 0xFFFFFF)) & 0xFFFFFFFF).astype(np.uint32))
        sx = lambda v: ((v & 0xFFFFFF) ^ 0x800000) - 0x800000  # noqa: E731  (sign-extend 24 bits)
        assert np.array_equal(y[3], ((sx(a64) * sx(b64)) & 0xFFFFFFFF).astype(np.uint32))
        assert np.array_equal(y[4], a)


def test_multop_umul24_is_a_32bit_multiply():
    a = I_EDGE.copy()
    b = (I_EDGE[::-1] * 7 + 3).astype(np.uint32)
    g = _g

    def emit():
        g()["nop"]().multop(g()["null"], g()["r1"], g()["r2"])
        g()["nop"]().umul24(g()["r0"], g()["r1"], g()["r2"])

    y = run_ops([emit], a, b)
    assert np.array_equal(y[0], ((a.astype(np.uint64) * b.astype(np.uint64)) & 0xFFFFFFFF).astype(np.uint32))


def test_2x16_float_ops():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(16).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    hb = to_f16_bits(rng.standard_normal(16)) | (to_f16_bits(rng.standard_normal(16)) << 16)
    g = _g
    ems = [lambda: g()["vfpack"](g()["r0"], g()["r1"], g()["r2"])]
    y = run_ops(ems, a, b)
    assert np.array_equal(y[0], to_f16_bits(a) | (to_f16_bits(b) << 16))
    # vfmin/vfmax/vfmul: a operand unpacks: r32 (f32 -> f16 both halves), rl2h, rh2l, swap; b is 2 x f16
    ha = to_f16_bits(rng.standard_normal(16)) | (to_f16_bits(rng.standard_normal(16)) << 16)
    un = {"rl2h": lambda u: (u & 0xFFFF) * 0x10001, "rh2l": lambda u: (u >> 16) * 0x10001,
          "swap": lambda u: ((u & 0xFFFF) << 16) | (u >> 16)}
    ops = {"vfmin": np.minimum, "vfmax": np.maximum, "vfmul": np.multiply}
    cases = [(op, m) for op in ops for m in un]
    ems = []
    for op, m in cases:
        if op == "vfmul":
            ems.append(lambda m=m: g()["nop"]().vfmul(g()["r0"], g()["r1"].unpack(m), g()["r2"]))
        else:
            ems.append(lambda op=op, m=m: g()[op](g()["r0"], g()["r1"].unpack(m), g()["r2"]))
    y = run_ops(ems, ha, hb)
    for k, (op, m) in enumerate(cases):
        ua = un[m](ha.astype(np.uint64)).astype(np.uint32)
        lo = ops[op](f16_lo(ua), f16_lo(hb))
        hi = ops[op](f16_hi(ua), f16_hi(hb))
        assert np.array_equal(y[k], to_f16_bits(lo) | (to_f16_bits(hi) << 16)), (op, m)


# ---------------------------------------------------------------------------------------------------------
# flags and conditions (scenarios of py-videocore6's hardware tests, expectations derived in numpy)

@qpu
def k_flags(asm, *, steps):
    lane_addresses(asm, rf2)
    shl(r3, 4, 4)
    for step in steps:
        step()
        store_row(asm, r0, rf2)
    emit_program_end(asm)


def run_steps(steps):
    (y,), _ = run_kernel(k_flags, np.zeros((len(steps), 16), dtype=np.uint32), kernel_kw=dict(steps=steps))
    return y


LANE = np.arange(16)


def test_push_flags_and_conditions():
    g = _g

    def push_then_if(push, cond, k, alu):
        def step():
            G = g()
            G["eidx"](G["r0"])
            G["sub"](G["r0"], G["r0"], k, cond=push)
            G["mov"](G["r0"], 0)
            if alu == "add":
                G["mov"](G["r0"], 1, cond=cond)
            else:
                G["nop"]().mov(G["r0"], 1, cond=cond)
        return step

    cases = [(p, c, k, alu) for p in ("pushz", "pushn", "pushc") for c in ("ifa", "ifna") for k in (0, 5, 10)
             for alu in ("add", "mul")]
    y = run_steps([push_then_if(*c) for c in cases])
    diff = LANE - 0  # eidx - k as a 32-bit value
    for i, (p, c, k, alu) in enumerate(cases):
        r = (LANE - k) & 0xFFFFFFFF
        flag = {"pushz": r == 0, "pushn": (r >> 31) == 1, "pushc": LANE < k}[p]
        want = flag if c == "ifa" else ~flag
        assert np.array_equal(y[i], want.astype(np.uint32)), (p, c, k, alu)
    del diff


def test_push_moves_a_into_b_and_updates_touch_only_a():
    g = _g
    ups = ["andz", "andnz", "nornz", "norz", "andn", "andnn", "nornn", "norn", "andc", "andnc", "nornc", "norc"]

    def step_update(uf, cond):
        def step():
            G = g()
            G["eidx"](G["r0"])
            G["sub"](G["null"], G["r0"], 3, cond="pushz")       # B will hold this (lane 3)
            G["band"](G["null"], G["r0"], 1, cond="pushz")      # A = even lanes, B = lane 3
            G["sub"](G["r0"], G["r0"], 5, cond=uf)              # A = A op F(eidx - 5)
            G["mov"](G["r0"], 0)
            G["mov"](G["r0"], 1, cond=cond)
        return step

    y = run_steps([step_update(u, "ifa") for u in ups] + [step_update("andz", "ifb")])
    A = LANE % 2 == 0
    r = (LANE - 5) & 0xFFFFFFFF
    F = {"z": r == 0, "n": (r >> 31) == 1, "c": LANE < 5}
    for i, u in enumerate(ups):
        suffix = u[3:]                       # z nz n nn c nc: the tested condition X on the result
        x = F[suffix[-1]] if len(suffix) == 1 else ~F[suffix[-1]]
        # and: A = A and X; nor: A = not (A or X) (truth tables of py-videocore6's hardware test)
        want = (A & x) if u.startswith("and") else (~A & ~x)
        assert np.array_equal(y[i], want.astype(np.uint32)), u
    assert np.array_equal(y[-1], (LANE == 3).astype(np.uint32)), "B must keep the flag pushed before"


def test_conditions_use_flags_from_before_the_instruction():
    g = _g

    def step():
        G = g()
        G["eidx"](G["r0"])
        G["sub"](G["null"], G["r0"], 10, cond="pushz")       # A = lane 10
        G["eidx"](G["r0"])
        G["sub"](G["null"], G["r0"], 5, cond="pushn").mov(G["r0"], 5, cond="ifa")  # mul sees old A
        G["mov"](G["r0"], 0, cond="ifa")                      # now A = (eidx - 5 < 0)

    y = run_steps([step])
    want = np.where(LANE == 10, 5, LANE)
    want[LANE < 5] = 0
    assert np.array_equal(y[0], want.astype(np.uint32))


def test_float_flags():
    g = _g

    def step(cond_push, x):
        def s():
            G = g()
            G["eidx"](G["r0"])
            G["itof"](G["r0"], G["r0"])
            G["fsub"](G["null"], G["r0"], x, cond=cond_push)
            G["mov"](G["r0"], 0)
            G["mov"](G["r0"], 1, cond="ifa")
        return s

    y = run_steps([step("pushz", 4.0), step("pushn", 4.0), step("pushc", 4.0)])
    assert np.array_equal(y[0], (LANE == 4).astype(np.uint32))
    assert np.array_equal(y[1], (LANE < 4).astype(np.uint32))
    assert np.array_equal(y[2], (LANE <= 4).astype(np.uint32))


# ---------------------------------------------------------------------------------------------------------
# branches


@qpu
def k_branches(asm, *, absolute_target):
    eidx(r0, sig=ldunifrf(rf0))       # out address
    nop(sig=ldunifrf(rf1))            # code address of L.reg_target
    shl(r0, r0, 2)
    add(rf0, rf0, r0)
    shl(r3, 4, 4)
    mov(r2, 1)
    shl(rf9, r2, 9)                   # bit 9 marks code that must be skipped
    shl(rf6, r2, 6)
    shl(rf4, r2, 4)
    shl(rf5, r2, 5)
    mov(r1, 0)
    b(R.rel, cond="always")
    add(r1, r1, 1)                    # delay slots always execute
    add(r1, r1, 2)
    add(r1, r1, 4)
    bor(r1, r1, rf9)                 # skipped
    L.rel
    b(absolute_target, absolute=True, cond="always")
    nop()
    nop()
    nop()
    bor(r1, r1, rf9)                 # skipped
    L.abs_target
    b(rf1, cond="always")
    nop()
    nop()
    nop()
    bor(r1, r1, rf9)
    L.reg_target
    b(R.sub, cond="always", set_link=True)
    nop()
    nop()
    nop()
    add(r1, r1, 8)                    # the subroutine returns here
    # conditional: flags A = lane < 3; a0 taken, alla not taken, anya taken, allna not taken
    eidx(r2)
    sub(null, r2, 3, cond="pushc")
    # each branch skips one bor: rf4 and rf5 mark the ones that must execute (alla and allna are false)
    for k, (cond, mark) in enumerate((("alla", rf4), ("a0", rf9), ("allna", rf5), ("anyna", rf9))):
        b(getattr(R, f"c{k}"), cond=cond)
        nop()
        nop()
        nop()
        bor(r1, r1, mark)
        getattr(L, f"c{k}")
    store_and_end(asm, r1, rf0)
    L.sub
    bor(r1, r1, rf6)
    b(link, cond="always")
    nop()
    nop()
    nop()


def test_branch_forms_and_delay_slots():
    with EmuDriver(data_area_size=1 << 16) as drv:
        probe = drv.program(k_branches, absolute_target=0)
        from pimoe.qpu.asm import get_label_positions  # label positions of the same program
        labels = dict(get_label_positions(k_branches, absolute_target=0))
        base = int(probe.addresses()[0]) + 8 * len(probe)
        code = drv.program(k_branches, absolute_target=base + labels["abs_target"])
        y = drv.alloc(16, dtype=np.uint32)
        unif = drv.alloc(2, dtype=np.uint32)
        unif[:] = [y.addresses()[0], base + labels["reg_target"]]
        c = drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=1)
        assert np.all(y == 1 + 2 + 4 + 64 + 8 + 16 + 32)
        assert c.branches_taken == 7


@qpu
def k_uniform_branch(asm, *, mode):
    lane_addresses(asm, rf0, rf1)  # rf1: for modes "reg*": a vector holding the new address
    mov(tmua, rf1)
    nop(sig=ldtmu(rf2))
    if mode == "rel":
        b(R.t, cond="always").unif_addr()
    elif mode == "abs":
        b(R.t, cond="always").unif_addr(absolute=True)
    else:
        b(R.t, cond="always").unif_addr(rf2)
    nop()
    nop()
    nop()
    L.t
    nop(sig=ldunifrf(tmud))
    mov(tmua, rf0)
    tmuwt()
    emit_program_end(asm)


@pytest.mark.parametrize("mode", ["rel", "abs", "reg", "reg_rotated"])
def test_uniform_stream_branches(mode):
    with EmuDriver(data_area_size=1 << 16) as drv:
        code = drv.program(k_uniform_branch, mode=mode)
        y = drv.alloc(16, dtype=np.uint32)
        vec = drv.alloc(16, dtype=np.uint32)
        unif = drv.alloc(8, dtype=np.uint32)
        unif[:] = [y.addresses()[0], vec.addresses()[0], 0, 5, 6, 7, 8, 9]
        if mode == "rel":
            unif[2] = 8          # read at unif[2]; the stream continues 8 bytes after it: unif[5]
            want = 7
        elif mode == "abs":
            unif[2] = unif.addresses()[4]
            want = 6
        elif mode == "reg":
            # the smallest non-zero lane: py-videocore6's test_uniform_branch_reg has the address in lane 1
            # only (the other lanes 0)
            vec[:] = 0
            vec[1] = unif.addresses()[6]
            want = 8
        else:
            # ... its test_unifa section 3 quad-rotates address + 4 * lane by one, so lane 1 holds the
            # smallest value (lane 0 the quad's largest): the branch takes lane 1's
            vec[:] = unif.addresses()[6] + 4 * np.array([3, 0, 1, 2] * 4) + 16 * np.repeat(np.arange(4), 4)
            want = 8
        drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=1)
        assert np.all(y == want)


# ---------------------------------------------------------------------------------------------------------
# TMU


@qpu
def k_tmu_config(asm, *, ncomp):
    eidx(r0, sig=ldunifrf(rf0))      # src
    nop(sig=ldunifrf(rf1))           # dst
    shl(r1, r0, 4)                   # 16 bytes per lane (vec4 rows)
    add(rf0, rf0, r1)
    add(rf1, rf1, r1)
    mov(tmuau, rf0)                  # config word from the uniform stream
    for i in range(ncomp):
        nop(sig=ldtmu(rf[10 + i]))
    for i in range(ncomp):
        mov(tmud, rf[10 + i])
    mov(tmua, rf1)                   # a vector store of ncomp words
    tmuwt()
    emit_program_end(asm)


@pytest.mark.parametrize("ncomp", [2, 3, 4])
def test_tmu_vector_load_and_store(ncomp):
    x = np.arange(64, dtype=np.uint32).reshape(16, 4) * 3 + 1
    # the config uniform: per-pixel, regular op, vecN (py-videocore6: 0xfa..0xfc)
    (x, y), c = run_kernel(k_tmu_config, x, np.zeros((16, 4), dtype=np.uint32), kernel_kw=dict(ncomp=ncomp),
                           extra_uniforms=[0xFFFFFFF8 | ncomp])
    assert np.array_equal(y[:, :ncomp], x[:, :ncomp]) and np.all(y[:, ncomp:] == 0)
    assert c.tmu_read_bytes == 16 * 4 * ncomp and c.tmu_write_bytes == 16 * 4 * ncomp


@qpu
def k_tmu_narrow(asm, *, cfgs):
    eidx(r0, sig=ldunifrf(rf0))      # byte base
    shl(r1, r0, 1)                   # 2 bytes per lane
    add(rf0, rf0, r1)
    for _ in cfgs:
        mov(tmuau, rf0)
    nop(sig=ldunifrf(rf1))           # out
    shl(r0, r0, 2)
    add(rf1, rf1, r0)
    shl(r3, 4, 4)
    for _ in cfgs:
        nop(sig=ldtmu(r1))
        store_row(asm, r1, rf1)
    emit_program_end(asm)


def test_tmu_8_and_16_bit_loads_sign_and_zero_extend():
    types = {0: np.int8, 1: np.int16, 5: np.uint8, 6: np.uint16}
    cfgs = list(types)
    with EmuDriver(data_area_size=1 << 16) as drv:
        code = drv.program(k_tmu_narrow, cfgs=cfgs)
        x = drv.alloc(32, dtype=np.uint8)
        unif = drv.alloc(2 + len(cfgs), dtype=np.uint32)
        y = drv.alloc((len(cfgs), 16), dtype=np.uint32)
        x[:] = np.array([0x80, 0xFF, 0x7F, 0x01] * 8, dtype=np.uint8)
        unif[0] = x.addresses()[0]
        unif[1:1 + len(cfgs)] = [0xFFFFFFF8 | t for t in cfgs]  # per-pixel, regular op
        unif[1 + len(cfgs)] = y.addresses()[0, 0]
        drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=1)
        for k, t in enumerate(cfgs):
            dt = types[t]
            raw = np.array(x).view(np.uint8)
            vals = np.array([raw[2 * l: 2 * l + np.dtype(dt).itemsize].view(dt)[0] for l in range(16)])
            assert np.array_equal(y[k], vals.astype(np.int64).astype(np.uint32)), dt


@qpu
def k_store_then_load(asm):
    lane_addresses(asm, rf0)
    eidx(r1)
    add(r1, r1, 12)
    mov(tmud, r1)
    mov(tmua, rf0)
    tmuwt()                          # the store is done before the load below is issued
    mov(tmua, rf0)
    nop(sig=ldtmu(r2))
    add(r2, r2, 1)
    store_and_end(asm, r2, rf0)


def test_store_tmuwt_load_sees_the_store():
    (y,), _ = run_kernel(k_store_then_load, np.full(16, 7, dtype=np.uint32))
    assert np.array_equal(y, LANE + 13)


# ---------------------------------------------------------------------------------------------------------
# SFU, rotate, broadcast


@qpu
def k_sfu(asm, *, units=("recip", "rsqrt", "exp", "log", "sin", "rsqrt2"), add_alu=False):
    """Each unit of x (the first buffer) into a row of the second: through the SFU's magic write address (the
    result lands in r4), or with add_alu through the add-ALU op of the same name."""
    lane_addresses(asm, rf0, rf1)
    shl(r3, 4, 4)
    mov(tmua, rf0)
    nop(sig=ldtmu(r1))
    for unit in units:
        if add_alu:
            globals()[unit](rf2, r1)     # the add-ALU form writes its destination directly
            store_row(asm, rf2, rf1)
            continue
        mov(globals()[unit], r1)
        nop()
        nop()
        store_row(asm, r4, rf1)          # r4 is ready two instructions after the SFU write
    emit_program_end(asm)


def test_sfu_accuracy():
    x = np.array([0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 7.5, 10.0, 0.01, 0.25, 0.45, 4.0, 5.5, 100.0, 0.3, 0.49],
                 dtype=np.float32)
    (_, y), c = run_kernel(k_sfu, x, np.zeros((6, 16), dtype=np.float32))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y[0], 1 / x64, rtol=1e-4)
    np.testing.assert_allclose(y[1], 1 / np.sqrt(x64), rtol=1e-4)
    np.testing.assert_allclose(y[2], 2 ** x64, rtol=1e-4)
    np.testing.assert_allclose(y[3], np.log2(x64), rtol=1e-4, atol=1e-6)
    # sin(pi x) on [-0.5, 0.5], saturating to +-1 outside (hardware, py-videocore6's test_sfu)
    sin_ref = np.where(x64 > 0.5, 1.0, np.where(x64 < -0.5, -1.0, np.sin(np.pi * x64)))
    np.testing.assert_allclose(y[4], sin_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y[5], 1 / np.sqrt(x64), rtol=1e-4)
    assert c.sfu_ops == 6


@qpu
def k_rotate(asm):
    lane_addresses(asm, rf0)
    shl(r3, 4, 4)
    eidx(r0)
    shl(r0, r0, 1)
    add(r0, r0, 7)
    mov(rf5, r0)
    nop()                                        # the rotated source must not be written just before
    for n in (1, -1, 5, -15):
        nop().add(r1, r0, r0, sig=rot(n))        # accumulator: full 16-lane rotate
        store_row(asm, r1, rf0)
        nop().add(r1, rf5, rf5, sig=rot(n))      # register file: rotate within each quad
        store_row(asm, r1, rf0)
    mov(r5, 3)
    nop()
    nop().mov(r1, r0, sig=rot(r5))               # amount from r5
    store_row(asm, r1, rf0)
    nop().mov(r5rep, r0, sig=rot(2))             # r5rep: lane 0 of the rotated value to every lane
    store_row(asm, r5, rf0)
    nop().mov(r5, r0)                            # r5: one value per quad (its first lane)
    store_row(asm, r5, rf0)
    emit_program_end(asm)


def test_rotate_quad_rotate_and_broadcasts():
    (y,), _ = run_kernel(k_rotate, np.zeros((11, 16), dtype=np.uint32))
    x = 2 * LANE + 7
    for k, n in enumerate((1, -1, 5, -15)):
        full = x[(LANE - n) % 16]                      # lane i takes lane i - n
        quad = x[(LANE & ~3) | ((LANE - n) % 4)]
        assert np.array_equal(y[2 * k], 2 * full), n
        assert np.array_equal(y[2 * k + 1], 2 * quad), n
    assert np.array_equal(y[8], x[(LANE - 3) % 16])
    assert np.all(y[9] == x[(0 - 2) % 16])
    assert np.array_equal(y[10], x[LANE & ~3])


# ---------------------------------------------------------------------------------------------------------
# threads, tidx, payload


@qpu
def k_ids(asm):
    tidx(r0, sig=ldunifrf(rf3))
    mov(rf4, rf0)                   # payload: wg x/y
    mov(rf5, rf2)                   # payload: wg z / local index
    # row = batch-ish index from tidx: qpu + 8 * (thread quarter)
    shr(r1, r0, 2)
    band(r1, r1, 7)
    band(r2, r0, 3)
    shl(r2, r2, 3)
    add(r1, r1, r2)                 # 0..31 unique per (qpu, thread slot)
    shl(r1, r1, 8)                  # 256 bytes per row: tidx, rf0, rf2, pad
    eidx(r2)
    shl(r2, r2, 2)
    add(r1, r1, r2)
    add(r1, r1, rf3)
    shl(r3, 4, 4)
    mov(tmud, r0)
    mov(tmua, r1).add(r1, r1, r3)
    mov(tmud, rf4)
    mov(tmua, r1).add(r1, r1, r3)
    store_and_end(asm, rf5, r1)


# the thread mode comes from the dispatch's CFG5 THREADING bit (execute(threading=)), not the batch count:
# off, 2 thread slots per QPU (tidx quarter 0 or 2), on, 4 (quarters 0..3); batches beyond 8 x slots
# wait for a slot and reuse it
@pytest.mark.parametrize("threads,threading,mode,slots", [(8, False, 1, 2), (16, False, 2, 2), (32, False, 2, 2),
                                                          (8, True, 1, 4), (16, True, 2, 4), (32, True, 4, 4)])
def test_tidx_and_thread_modes(threads, threading, mode, slots):
    (y,), c = run_kernel(k_ids, np.full((32, 4, 16), 0xFFFFFFFF, dtype=np.uint32), thread=threads,
                         workgroup=(threads, 1, 1), wgs_per_sg=16, threading=threading)
    assert c.threads_per_qpu == mode
    seen = set()
    for row in range(32):
        if y[row, 0, 0] == 0xFFFFFFFF:
            continue
        t = int(y[row, 0, 0])
        qpu, quarter = t >> 2, t & 3
        assert quarter % (4 // slots) == 0
        seen.add((qpu, quarter))
    assert len(seen) == min(threads, 8 * slots)
    # batch b < 8 x slots starts on QPU b % 8, slot b // 8: its workgroup id (local 16 -> one workgroup
    # per batch); later batches take whichever slot ends first
    ids = []
    for qpu, quarter in seen:
        slot = quarter // (4 // slots)
        batch = int(y[qpu + 8 * quarter, 1, 0]) & 0xFFFF
        assert batch == qpu + 8 * slot or (threads > 8 * slots and batch < threads)
        ids.append(batch)
    assert len(set(ids)) == len(ids)
    assert np.all(c.instructions.sum(axis=1) > 0)


@qpu
def k_high_regs(asm):
    nop(sig=ldunifrf(rf0))           # y
    tidx(rf40)                       # rf40 .. rf63 exist with threading off (64 registers per thread)
    mov(rf63, rf40)
    nop(sig=thrsw)                   # the QPU's other thread runs meanwhile and writes its own rf63
    nop()
    nop()
    shr(r0, rf63, 2)
    band(r0, r0, 7)
    shl(r0, r0, 1)
    band(r1, rf63, 3)
    shr(r1, r1, 1)
    add(r0, r0, r1)                  # row = 2 * qpu + slot
    shl(r0, r0, 6)
    eidx(r1)
    shl(r1, r1, 2)
    add(r0, r0, r1)
    add(r0, r0, rf0)
    store_and_end(asm, rf63, r0)


def test_threading_off_gives_each_of_two_threads_64_registers():
    # py-videocore6's test_barrier (16 batches, 2 threads per QPU, told apart by tidx) writes rf32 and
    # passes on a Pi 4: with THREADING off each of the 2 threads has 64 registers
    (y,), c = run_kernel(k_high_regs, np.zeros((16, 16), dtype=np.uint32), thread=16)
    assert c.threads_per_qpu == 2
    want = np.array([(q << 2) | (2 * s) for q in range(8) for s in range(2)], dtype=np.uint32)
    assert np.array_equal(y, np.repeat(want[:, None], 16, axis=1))
    expect_fault(k_high_regs, "rf40", thread=16, threading=True)  # 4 slots: rf0..rf31


# ---------------------------------------------------------------------------------------------------------
# faults: each names QPU, thread, PC and the instruction

def expect_fault(kernel, pattern, thread=1, uniforms=None, **execute_kw):
    with EmuDriver(data_area_size=1 << 16) as drv:
        code = drv.program(kernel)
        buf = drv.alloc(64, dtype=np.uint32)
        unif = drv.alloc(4, dtype=np.uint32)
        unif[:] = [buf.addresses()[0], 0, 0, 0] if uniforms is None else uniforms(buf)
        with pytest.raises(QPUFault, match=pattern) as info:
            drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=thread,
                        **execute_kw)
        msg = str(info.value)
        assert "QPU 0 thread 0" in msg and "PC" in msg
        assert "word 0x" in msg or "left the code area" in msg
        return msg


@qpu
def f_r4_too_soon(asm):
    mov(recip, 2.0)
    mov(r0, r4)          # the result arrives 2 instructions after the SFU write
    emit_program_end(asm)


@qpu
def f_two_units(asm):
    nop(sig=ldunifrf(rf0))
    mov(tmua, rf0)
    mov(exp, 1.0, sig=ldtmu(r1))
    emit_program_end(asm)


@qpu
def f_rotate_source(asm):
    eidx(r0)
    nop().mov(r1, r0, sig=rot(1))
    emit_program_end(asm)


@qpu
def f_unifa(asm):
    nop(sig=ldunifrf(rf0))
    mov(unifa, rf0)
    nop()
    nop(sig=ldunifa)
    emit_program_end(asm)


@qpu
def f_thrsw_in_branch_delay(asm):
    b(R.x, cond="always")
    nop(sig=thrsw)
    nop()
    nop()
    L.x
    emit_program_end(asm)


@qpu
def f_branch_in_delay(asm):
    b(R.x, cond="always")
    b(R.x, cond="always")
    nop()
    nop()
    L.x
    nop()
    nop()
    nop()
    emit_program_end(asm)


@qpu
def f_out_of_range(asm):
    mov(tmua, 0)         # bus address 0 is below the driver's memory
    nop(sig=ldtmu(r1))
    emit_program_end(asm)


@qpu
def f_runaway(asm):
    L.top
    b(R.top, cond="always")
    nop()
    nop()
    nop()


@qpu
def f_ldtmu_empty(asm):
    nop(sig=ldtmu(r0))
    emit_program_end(asm)


@qpu
def f_barrier(asm):
    barrierid(syncb, sig=thrsw)
    nop()
    nop()
    emit_program_end(asm)


@qpu
def f_regs(asm):
    mov(rf40, 1)
    emit_program_end(asm)


@qpu
def f_no_end(asm):
    nop()
    nop()


@qpu
def f_invalid(asm):
    raw(0)               # mul op 0 with a non-branch signal: not an instruction
    emit_program_end(asm)


@qpu
def f_misaligned(asm):
    nop(sig=ldunifrf(rf0))
    add(r0, rf0, 2)
    mov(tmua, r0)
    nop(sig=ldtmu(r1))
    emit_program_end(asm)


@pytest.mark.parametrize("kernel,pattern", [
    (f_r4_too_soon, "r4 read too soon"),
    (f_rotate_source, "rotate source"),
    (f_unifa, "ldunifa less than 3"),
    (f_thrsw_in_branch_delay, "thrsw in a branch delay slot"),
    (f_branch_in_delay, "branch in a branch delay slot"),
    (f_ldtmu_empty, "ldtmu with no TMU load"),
    (f_invalid, "invalid instruction"),
    (f_no_end, "left the code area"),
])
def test_faults_name_the_hazard(kernel, pattern):
    msg = expect_fault(kernel, pattern)
    if kernel is f_r4_too_soon:
        assert "PC 1" in msg and "or r0, r4, r4" in msg


def test_faults_memory_runaway_barrier_registers():
    msg = expect_fault(f_out_of_range, "outside the driver's memory")
    assert "address 0x00000000" in msg
    expect_fault(f_misaligned, "not 4-byte aligned")
    msg = expect_fault(f_runaway, "instruction budget", max_instructions=10_000)
    assert "b" in msg
    # 17 threads in one supergroup of 32 batches but only 16 thread slots (2 per QPU): deadlock
    expect_fault(f_barrier, "barrier deadlock", thread=17, threads_per_qpu=2, wgs_per_sg=32)
    expect_fault(f_regs, "rf40", thread=16, threading=True)  # 4 thread slots per QPU: rf0..rf31 only


def test_driver_errors():
    with EmuDriver(data_area_size=1024) as drv:
        with pytest.raises(PimoeError, match="data area too small"):
            drv.alloc(2048, dtype=np.uint8)
        a = drv.alloc((4, 4), dtype=np.uint32)
        assert int(a[1:].addresses()[0, 0]) == int(a.addresses()[1, 0])
        assert int(a.T.addresses()[0, 1]) == int(a.addresses()[1, 0])
        assert (a + 1).address is None
        with pytest.raises(PimoeError, match="not a 64-bit"):
            drv.program([1 << 64])
    with pytest.raises(PimoeError, match="closed"):
        drv.alloc(4, dtype=np.uint32)


@qpu
def f_sfu_in_thrsw_slot(asm):
    nop(sig=thrsw)
    mov(exp, 1.0)
    nop()
    emit_program_end(asm)


@qpu
def f_fifo_overflow(asm):
    nop(sig=ldunifrf(rf0))
    for _ in range(17):
        mov(tmua, rf0)
    emit_program_end(asm)


@qpu
def f_tmud_overflow(asm):
    for _ in range(5):
        mov(tmud, 1)
    emit_program_end(asm)


@qpu
def f_vpm(asm):
    mov(vpm, 1)
    emit_program_end(asm)


@qpu
def f_rf_write_after_end(asm):
    nop(sig=thrsw)
    nop(sig=thrsw)
    nop()
    nop()
    nop(sig=thrsw)
    mov(rf3, 1)           # the register file belongs to the next thread already
    nop()
    nop()


@pytest.mark.parametrize("kernel,pattern", [
    (f_sfu_in_thrsw_slot, "SFU write in a thrsw delay slot"),
    (f_fifo_overflow, "too many TMU load results"),
    (f_tmud_overflow, "more than 4 tmud"),
    (f_vpm, "magic write address 14 not modelled"),
    (f_rf_write_after_end, "delay slots of the program-end thrsw"),
])
def test_more_faults(kernel, pattern):
    expect_fault(kernel, pattern)


def test_timeout_stops_a_runaway_kernel(monkeypatch):
    from pimoe.qpu import emulator
    monkeypatch.setattr(emulator, "CHUNK_INSTRUCTIONS", 50_000)
    expect_fault(f_runaway, "timeout", timeout_sec=0.0)


@qpu
def k_write_n(asm, *, n):
    eidx(r0, sig=ldunifrf(rf0))
    shl(r0, r0, 2)
    mov(tmud, n)
    add(tmua, rf0, r0)
    tmuwt()
    emit_program_end(asm)


def test_py_videocore6_call_forms():
    """execute(code, uniforms, thread=...) (the older positional form) and compute_shader_dispatcher."""
    with EmuDriver(data_area_size=1 << 12) as drv:
        a = drv.program(k_write_n, n=2)
        b = drv.program(k_write_n, n=3)
        data = drv.alloc((2, 16), dtype=np.uint32)
        unif = drv.alloc(2, dtype=np.uint32)
        data[:] = 0
        unif[:] = data.addresses()[:, 0]
        drv.execute(a, unif.addresses()[0])
        assert np.all(data[0] == 2) and np.all(data[1] == 0)
        with drv.compute_shader_dispatcher() as csd:
            csd.dispatch(b, (16, 1, 1), unif.addresses()[0])
            csd.dispatch(a, (16, 1, 1), unif.addresses()[1])
        assert np.all(data[0] == 3) and np.all(data[1] == 2)
        # words from elsewhere (a list) run the same as a kernel
        from pimoe.qpu import assemble
        c = drv.program(assemble(k_write_n, n=5))
        drv.execute(c, local_invocation=(16, 1, 1), uniforms=unif.addresses()[1])
        assert np.all(data[1] == 5)


def test_open_driver():
    from pimoe.qpu import open_driver
    from pimoe.qpu.driver import hardware_available
    with open_driver("emu", data_area_size=1024) as drv:
        assert isinstance(drv, EmuDriver)
    ok, why = hardware_available()
    if not ok:
        assert why
        with open_driver("auto", data_area_size=1024) as drv:
            assert isinstance(drv, EmuDriver)
        with pytest.raises(PimoeError, match="hardware is not usable"):
            open_driver("hw")
    with pytest.raises(PimoeError, match="choose one of"):
        open_driver("gpu")


def test_denormals_are_flushed():
    a = f32([1e-40, -1e-40, 1e-20, 1.0] * 4)
    b = f32([0.0, 0.0, 1e-20, 1e-40] * 4)
    g = _g
    y = run_ops([lambda: g()["fadd"](g()["r0"], g()["r1"], g()["r2"]),
                 lambda: g()["nop"]().fmul(g()["r0"], g()["r1"], g()["r2"])], a, b)
    # denormal inputs read as zero (keeping their sign); a denormal product is written as zero
    assert same_float(y[0], f32([0.0, 0.0, 2e-20, 1.0] * 4))  # (-0) + (+0) = +0
    assert same_float(y[1], f32([0.0, -0.0, 0.0, 0.0] * 4))


def test_register_check_can_be_relaxed():
    """py-videocore6's 16-thread barrier test uses rf32 and passes on hardware: with
    check_registers=False every thread gets 64 private registers instead of a fault."""
    relaxed = dict(thread=16, data_area_size=1 << 12, driver_kw=dict(check_registers=False))
    (buf,), _ = run_kernel(k_write_n, np.zeros((16, 16), dtype=np.uint32), kernel_kw=dict(n=9), **relaxed)
    assert np.all(buf[0] == 9)
    run_kernel(f_regs, np.zeros((16, 16), dtype=np.uint32), **relaxed)  # no fault


@qpu
def k_payload_row(asm):
    # row = workgroup x id from the compute payload (rf0 low half); writes tidx to buf[row]
    nop(sig=ldunifrf(rf3))
    shl(r0, rf0, -16)                 # shift amounts are taken mod 32: -16 shifts by 16
    shr(r0, r0, -16)
    shl(r0, r0, 6)                    # 64 bytes per row
    eidx(r1)
    shl(r1, r1, 2)
    add(r0, r0, r1)
    add(r0, r0, rf3)
    tidx(r2)
    store_and_end(asm, r2, r0)


def test_more_batches_than_thread_slots_queue_for_a_free_slot():
    (buf,), c = run_kernel(k_payload_row, np.full((24, 16), 0xFFFFFFFF, dtype=np.uint32), thread=24,
                           data_area_size=1 << 14, workgroup=(24, 1, 1), threads_per_qpu=2)
    assert np.all(buf != 0xFFFFFFFF)             # every batch ran and found its workgroup id
    assert np.all(buf[:, 0][:, None] == buf)      # tidx is uniform across lanes
    # the first 16 batches start at once, batch b on QPU b % 8; the rest take whichever thread slot
    # frees first (any QPU, 2-thread mode register quarters 0 or 2)
    assert np.array_equal(buf[:16, 0] >> 2, np.arange(16) % 8)
    assert np.all((buf[16:, 0] >> 2) < 8) and np.all((buf[16:, 0] & 3) % 2 == 0)
    assert c.batches == 24 and c.threads_per_qpu == 2


def test_sfu_add_alu_forms_and_negative_inputs():
    x = np.linspace(-2.0, 2.0, 16).astype(np.float32)
    x[8] = 0.3
    (_, y), c = run_kernel(k_sfu, x, np.zeros((3, 16), dtype=np.float32), data_area_size=1 << 14,
                           kernel_kw=dict(units=("recip", "exp", "sin"), add_alu=True))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y[0], 1 / x64, rtol=1e-4)
    np.testing.assert_allclose(y[1], 2 ** x64, rtol=1e-4)
    sin_ref = np.where(x64 > 0.5, 1.0, np.where(x64 < -0.5, -1.0, np.sin(np.pi * x64)))
    np.testing.assert_allclose(y[2], sin_ref, rtol=1e-4, atol=1e-6)
    assert c.sfu_ops == 3


def test_hardware_adapter_with_a_stand_in_py_videocore6(monkeypatch):
    """open_driver('hw') wraps py-videocore6's Driver: pimoe assembles, the real driver gets the words."""
    import sys
    import types

    from pimoe.qpu import assemble, driver

    calls = {}

    class FakeDriver:
        def __init__(self, **kw):
            calls["init"] = kw

        def program(self, prog):
            if callable(prog):          # the older API: only callables
                raise TypeError("old API")
            calls["words"] = list(prog)
            return "code"

        def execute(self, code, local_invocation=None, uniforms=None, timeout_sec=10, workgroup=(1, 1, 1),
                    wgs_per_sg=16, thread=1):
            calls["execute"] = (code, local_invocation, uniforms, thread)

        def close(self):
            calls["closed"] = True

    pkg = types.ModuleType("videocore6")
    mod = types.ModuleType("videocore6.driver")
    mod.Driver = FakeDriver
    monkeypatch.setitem(sys.modules, "videocore6", pkg)
    monkeypatch.setitem(sys.modules, "videocore6.driver", mod)
    monkeypatch.setenv("PIMOE_QPU_CLIENT", "videocore6")     # py-videocore6's Driver as the UAPI client
    monkeypatch.setattr("pimoe.qpu.v3d_uapi.find_render_node", lambda: "/dev/dri/renderD128")
    monkeypatch.setattr(driver.os, "access", lambda path, mode: True)
    with driver.open_driver("hw", data_area_size=4096) as drv:
        assert isinstance(drv, driver.HardwareDriver)
        assert drv.program(k_write_n, n=4) == "code"
        drv.execute("code", local_invocation=(16, 1, 1), uniforms=123, thread=8)
    assert calls["init"] == {"data_area_size": 4096}
    assert calls["words"] == assemble(k_write_n, n=4)
    assert calls["execute"] == ("code", (16, 1, 1), 123, 8)
    assert calls["closed"]


@qpu
def f_load_before_tmuwt(asm):
    lane_addresses(asm, rf0)
    mov(tmud, 1)
    mov(tmua, rf0)
    mov(tmua, rf0)                   # reads the word just stored, without tmuwt
    nop(sig=ldtmu(r1))
    emit_program_end(asm)


def test_load_of_an_unwaited_store_faults():
    msg = expect_fault(f_load_before_tmuwt, "without a tmuwt")
    assert "lane 0" in msg
    (buf,), _ = run_kernel(f_load_before_tmuwt, np.zeros(16, dtype=np.uint32), data_area_size=1 << 12,
                           driver_kw=dict(check_memory_order=False))
    assert np.all(buf == 1)


# ---------------------------------------------------------------------------------------------------------
# load-to-use distance (the ldtmu_near* counters the timing model's waits="ldtmu" reads)


@qpu
def k_plan_distance(asm, *, plan):
    """plan: ("ld", n) a load of n 32-bit words per lane (n > 1: vec-n, its config the next uniform),
    ("nop", n) n nops, ("use", n) n ldtmu, ("thrsw", 3) a thread switch and its 2 delay slots."""
    eidx(r0, sig=ldunifrf(rf0))
    shl(r0, r0, 4)                   # 16 bytes per lane
    add(rf0, rf0, r0)
    for op, n in plan:
        if op == "ld" and n == 1:
            mov(tmua, rf0)
        elif op == "ld":
            mov(tmuau, rf0)
        elif op == "thrsw":
            nop(sig=thrsw)
            nop()
            nop()
        else:
            for _ in range(n):
                nop(sig=ldtmu(r1)) if op == "use" else nop()
    emit_program_end(asm)


def _plan_bins(plan, threads=1):
    vec = [n for op, n in plan if op == "ld" and n > 1]
    with EmuDriver(data_area_size=1 << 16) as drv:
        code = drv.program(k_plan_distance, plan=plan)
        x = drv.alloc((16, 4), dtype=np.uint32)
        unif = drv.alloc(1 + len(vec), dtype=np.uint32)
        unif[:] = [x.addresses()[0, 0]] + [0xFFFFFFF8 | n for n in vec]   # per-pixel vec-n 32-bit loads
        c = drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=threads)
    uses = sum(n for op, n in plan if op == "use")
    assert c.ldtmu == uses * threads
    return ({k[len("ldtmu_near"):]: int(v.sum()) for k, v in c.per_thread.items()
             if k.startswith("ldtmu_near") and v.sum()}, c)


def load_then_use(gaps, switch_before=()):
    """A plan: for each gap one load, gap instructions, its ldtmu (a thrsw among them if listed)."""
    plan = []
    for i, gap in enumerate(gaps):
        plan.append(("ld", 1))
        if i in switch_before:           # a thread switch while the load is in flight: the thrsw waits
            plan.append(("thrsw", 3))
            gap = max(0, gap - 3)
        plan += [("nop", gap), ("use", 1)]
    return plan


def test_ldtmu_distance_bins_count_loads_used_soon_after_issue():
    """The ldtmu right after its load is 1 instruction from it (bin 0); 5 nops in between make 6 (bin 4);
    63 make 64 (past the last bin, never a stall); a thrsw between load and ldtmu takes the wait itself."""
    gaps = [0, 2, 5, 5, 62, 63, 200, 9]
    bins, c = _plan_bins(load_then_use(gaps, switch_before={7}))
    assert len([n for n in c.per_thread if n.startswith("ldtmu_near")]) == 16 and c.ldtmu == len(gaps)
    # distances 1, 3 -> bin 0; 6, 6 -> bin 4; 63 -> bin 60; 64, 201 and the switched one: not binned
    assert bins == {"00": 2, "04": 2, "60": 1}


def test_ldtmu_distance_of_vector_loads_and_a_wrapping_fifo():
    """Every FIFO entry of a vec-n load carries its load's issue time: a vec4 read back over the next 4
    instructions is at distances 1-4. Three rounds of 15 entries (4+4+4+3 words, 20 nops, 15 ldtmu) wrap
    the 16-entry ring; each entry is timed from its own load (d 24-27, 27-30, 30-33, 33-35 per round)."""
    assert _plan_bins([("ld", 4), ("use", 4)])[0] == {"00": 3, "04": 1}
    round_ = [("ld", 4), ("ld", 4), ("ld", 4), ("ld", 3), ("nop", 20), ("use", 15)]
    assert _plan_bins(round_ * 3)[0] == {"24": 15, "28": 15, "32": 15}
    # 2 threads per QPU: each thread slot bins its own loads (and has an 8-entry FIFO)
    bins, c = _plan_bins([("ld", 4), ("use", 4)], threads=2)
    assert bins == {"00": 6, "04": 2}
    per_slot = c.per_thread["ldtmu_near00"]
    assert sorted(per_slot[per_slot > 0].tolist()) == [3, 3]       # two thread slots, 3 each


# ---------------------------------------------------------------------------------------------------------
# semantics the silicon has (issue 12): each against its definition, the behaviour py-videocore6's
# hardware-tested programs show


@qpu
def k_tmu_write_and_ldtmu(asm):
    lane_addresses(asm, rf0, rf1)  # rf0: src, rf1: dst
    shl(r3, 4, 4)
    mov(tmua, rf0).add(rf0, rf0, r3)
    mov(tmua, rf0, sig=ldtmu(r1))    # a TMU write and an ldtmu in one instruction (py-videocore6 summation)
    mov(tmud, r1, sig=ldtmu(r2))     # ... and a tmud write with one (its scopy)
    mov(tmua, rf1).add(rf1, rf1, r3)
    store_and_end(asm, r2, rf1)


def test_tmu_write_and_ldtmu_share_an_instruction():
    x = np.arange(32, dtype=np.uint32).reshape(2, 16) * 7 + 3
    (_, y), _ = run_kernel(k_tmu_write_and_ldtmu, x, np.zeros((2, 16), dtype=np.uint32))
    assert np.array_equal(y, x)


@qpu
def k_tmuc_vec(asm, *, vec, offset):
    eidx(r0, sig=ldunifrf(rf0))      # src: 16 lanes x 16 bytes
    nop(sig=ldunifrf(rf1))           # dst: vec rows of 16 words, then one row of a plain load
    shl(r1, r0, 4)
    add(r1, r1, 4 * offset)
    add(rf0, rf0, r1)                # a lane's vector starts `offset` words into its 16-byte block
    shl(r0, r0, 2)
    add(rf1, rf1, r0)
    bnot(tmuc, 7 - vec)              # config word ~(7 - vec): this lookup vec-n, the next ones plain (0xff)
    mov(tmua, rf0)
    for i in range(vec):
        nop(sig=ldtmu(rf[10 + i]))
    mov(tmua, rf0)                   # the config byte has been shifted out: a plain 32-bit load
    nop(sig=ldtmu(rf[10 + vec]))
    shl(r3, 4, 4)
    for i in range(vec + 1):
        mov(tmud, rf[10 + i])
        mov(tmua, rf1).add(rf1, rf1, r3)
    tmuwt()
    emit_program_end(asm)


@pytest.mark.parametrize("vec", [2, 3, 4])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_tmuc_vector_load_wraps_in_16_bytes(vec, offset):
    # py-videocore6 test_tmu_vec_read / _naive_read: component k of a lane's vector at address a comes from
    # (a & ~15) | ((a + 4k) & 15); several ldtmu results for one lookup
    x = np.arange(64, dtype=np.uint32).reshape(16, 4) * 5 + 1
    (_, y), c = run_kernel(k_tmuc_vec, x, np.zeros((vec + 1, 16), dtype=np.uint32),
                           kernel_kw=dict(vec=vec, offset=offset))
    for k in range(vec):
        assert np.array_equal(y[k], x[np.arange(16), (offset + k) % 4])
    assert np.array_equal(y[vec], x[:, offset])
    assert c.tmu_reads == 2 and c.tmu_read_requests == 32 and c.tmu_read_bytes == 16 * 4 * (vec + 1)


@qpu
def k_vec_store(asm, *, vec, offset):
    eidx(r0, sig=ldunifrf(rf0))
    shl(r1, r0, 4)
    add(r1, r1, 4 * offset)
    add(rf0, rf0, r1)
    for i in range(vec):
        add(tmud, r0, 2 * (i + 1))
    mov(tmuau, rf0)                  # config from the uniform stream: a vec-n store
    tmuwt()
    emit_program_end(asm)


@pytest.mark.parametrize("vec", [2, 3, 4])
def test_vector_store_wraps_in_16_bytes(vec):
    # py-videocore6 test_tmu_vec_write: config bytes 0xfa/0xfb/0xfc; the vector wraps in its 16 bytes
    offset = 3
    (y,), c = run_kernel(k_vec_store, np.full((16, 4), 0xDEADBEEF, dtype=np.uint32),
                         kernel_kw=dict(vec=vec, offset=offset),
                         extra_uniforms=[0xFFFFFF00 | {2: 0xFA, 3: 0xFB, 4: 0xFC}[vec]])
    want = np.full((16, 4), 0xDEADBEEF, dtype=np.uint32)
    for k in range(vec):
        want[:, (offset + k) % 4] = LANE + 2 * (k + 1)
    assert np.array_equal(y, want)
    assert c.tmu_write_requests == 16 and c.tmu_write_bytes == 16 * 4 * vec


@qpu
def k_prefetch(asm):
    nop(sig=ldunifrf(rf0))
    mov(tmuau, rf0)                  # config byte 0x80: a prefetch, no result for ldtmu
    mov(tmua, rf0)                   # next byte 0xff: a plain load
    nop(sig=ldtmu(r1))
    store_and_end(asm, r1, rf0)


def test_prefetch_returns_no_result():
    # py-videocore6 scopy (unroll 1): config 0xfc80fcfc, the 0x80 lookup prefetches the next source
    (y,), c = run_kernel(k_prefetch, np.full(16, 41, dtype=np.uint32), extra_uniforms=[0xFFFFFF80])
    assert np.all(y == 41) and c.tmu_prefetches == 1 and c.tmu_reads == 1 and c.ldtmu == 1


@qpu
def k_flags_ops(asm):
    lane_addresses(asm, rf0, rf1)  # rf0: x, rf1: y: 7 rows
    mov(tmua, rf0)
    nop(sig=ldtmu(r1))
    eidx(r2)
    band(null, r2, 1, cond='pushz')  # a = lane even
    band(null, r2, 2, cond='pushz')  # b = lane even, a = lane & 2 == 0
    shl(r3, 4, 4)
    for op in ("flapush", "flbpush", "flpop"):
        globals()[op](tmud, r1)
        mov(tmua, rf1).add(rf1, rf1, r3)
    for op in ("vfla", "vflna", "vflb", "vflnb"):
        globals()[op](tmud)
        mov(tmua, rf1).add(rf1, rf1, r3)
    tmuwt()
    emit_program_end(asm)


def test_flag_push_pop_and_vflx():
    # py-videocore6 test_cond_flx: flapush/flbpush = x << 2 | 3 * flag, flpop = x >> 2;
    # test_cond_vflx: vfl* give the flag as an int16 in both halves
    (x, y), _ = run_kernel(k_flags_ops, np.array(I_EDGE[:16], dtype=np.uint32), np.zeros((7, 16), dtype=np.uint32))
    xs = np.asarray(x).astype(np.uint64)
    fa = ((LANE & 2) == 0).astype(np.uint64)
    fb = ((LANE & 1) == 0).astype(np.uint64)
    assert np.array_equal(y[0], ((xs << 2) & 0xFFFFFFFF) | 3 * fa)
    assert np.array_equal(y[1], ((xs << 2) & 0xFFFFFFFF) | 3 * fb)
    assert np.array_equal(y[2], xs >> 2)
    for row, f in zip(y[3:], (fa, 1 - fa, fb, 1 - fb)):
        assert np.array_equal(np.asarray(row).view(np.int16), np.repeat(f, 2).astype(np.int16))


@qpu
def k_unifa_same_instruction(asm):
    eidx(r0, sig=ldunifrf(rf0))      # y
    nop(sig=ldunifrf(rf1))           # stream A
    nop(sig=ldunifrf(rf2))           # stream B
    shl(r0, r0, 2)
    add(rf0, rf0, r0)
    mov(unifa, rf1)
    nop()
    nop()
    nop()
    nop(sig=ldunifa).mov(unifa, rf2)  # reads stream A, then points unifa at stream B
    mov(rf3, r5)
    nop()
    nop()
    nop(sig=ldunifa)                 # stream B
    shl(r3, 4, 4)
    mov(tmud, rf3)
    mov(tmua, rf0).add(rf0, rf0, r3)
    store_and_end(asm, r5, rf0)


def test_ldunifa_reads_before_the_same_instructions_unifa_write():
    # py-videocore6 test_unifa: `mov(tmua, .., sig=ldunifa).mov(unifa, ..)` reads the old stream
    stream_a = np.array([11, 12, 13, 14], dtype=np.uint32)
    (y, _, _), _ = run_kernel(k_unifa_same_instruction, np.zeros((2, 16), dtype=np.uint32), stream_a, stream_a + 10)
    assert np.all(y[0] == 11) and np.all(y[1] == 21)


@qpu
def k_long_loop(asm, *, trips):
    assert trips & (trips - 1) == 0 and 1 << 10 <= trips <= 1 << 25
    mov(r0, 1)
    shl(r0, r0, 10)
    shl(r0, r0, trips.bit_length() - 11)
    L.trip                           # 5 instructions a trip: the count, the branch, its 3 delay slots
    sub(r0, r0, 1, cond='pushz')
    b(R.trip, cond='na0')
    nop()
    nop()
    nop()
    emit_program_end(asm)


def test_timeout_is_on_predicted_hardware_time():
    # 2^20 trips x 5 instructions x 4 cycles at 500 MHz = 42 ms predicted: over a 10 ms timeout, under 1 s,
    # whatever the host's speed
    with EmuDriver(data_area_size=1 << 12) as drv:
        code = drv.program(k_long_loop, trips=1 << 20)
        with pytest.raises(QPUFault, match="predicted Pi 4 time"):
            drv.execute(code, thread=1, timeout_sec=0.01)
        c = drv.execute(code, thread=1, timeout_sec=1)
        assert c.total_instructions > 5 << 20
        with pytest.raises(QPUFault, match="host timeout"):
            drv.execute(code, thread=1, timeout_sec=1, host_timeout_sec=0.0, max_instructions=None)


# ---------------------------------------------------------------------------------------------------------
# the device view (INTERFACES contract 1): GPUMemory, CSD configuration words, run_csd, submit / wait


def test_csd_words_encode_as_py_videocore6_dispatch_writes_them():
    from pimoe.qpu.emulator import CSDDispatch, DriverError

    # py-videocore6's dispatch(): cfg3 = (roundup(wgs_per_sg * wg_size, 16) - 1) << 12 | wgs_per_sg << 8 |
    # wg_size; cfg5 = code | pnan << 2 | singleseg << 1 | threading (Mesa v3d_csd.h field positions)
    d = CSDDispatch.for_launch(0x10001000, 0x10002000, thread=16, local_invocation=(16, 1, 1),
                               workgroup=(3, 2, 1), wgs_per_sg=4, threading=True, single_seg=True)
    words = d.encode()
    assert words == (3 << 16, 2 << 16, 1 << 16, (4 - 1) << 12 | 4 << 8 | 16, 15, 0x10001000 | 2 | 1, 0x10002000)
    assert CSDDispatch.decode(words) == d
    # its default wgs_per_sg=16 is written unmasked: bit 12 (batches per supergroup - 1, bit 0) set, the 4-bit
    # field 0 (= 16); with 3-invocation workgroups the hardware reads 4 batches per supergroup, not 3
    d = CSDDispatch.for_launch(0x10001000, 0, thread=16, local_invocation=(3, 1, 1), wgs_per_sg=16)
    assert d.encode()[3] == (3 - 1) << 12 | 16 << 8 | 3
    assert (d.wgs_per_sg, d.batches_per_sg, d.wg_size) == (16, 4, 3)
    # the largest the fields hold decode back; one more is refused, not silently read as another dispatch
    d = CSDDispatch.for_launch(0x10001000, 0, thread=16, local_invocation=(16, 16, 1), wgs_per_sg=1,
                               workgroup=(0xFFFF, 1, 1))
    assert (d.wg_size, d.batches_per_sg, d.wg_count) == (256, 16, (0xFFFF, 1, 1))
    for bad in ({"local_invocation": (16, 16, 2)}, {"workgroup": (0x10000, 1, 1)}):
        with pytest.raises(DriverError, match="CSD words hold at most"):
            CSDDispatch.for_launch(0x10001000, 0, thread=16, **bad)


@qpu
def k_store_eidx_plus_uniform(asm):
    eidx(r0, sig=ldunifrf(rf0))      # dst
    nop(sig=ldunifrf(rf1))           # an offset in bytes added to dst (to go out of bounds)
    shl(r1, r0, 2)
    add(r1, r1, rf0)
    add(r1, r1, rf1)
    store_and_end(asm, r0, r1)


def test_run_csd_over_gpu_memory_and_the_mmu_scratch_page():
    from pimoe.qpu.asm import assemble
    from pimoe.qpu.emulator import CSDDispatch, GPUMemory, run_csd

    mem = GPUMemory(1 << 20)
    words = np.array(assemble(k_store_eidx_plus_uniform), dtype=np.uint64)
    code = mem.alloc(words.nbytes)
    mem.view(code, words.nbytes)[:] = words.view(np.uint8)
    y = mem.alloc(64)
    unif = mem.alloc(8)
    u = mem.view(unif, 8).view(np.uint32)
    u[:] = [y, 0]
    res = run_csd(mem, CSDDispatch.for_launch(code, unif).encode())
    assert np.array_equal(mem.view(y, 64).view(np.uint32), LANE)
    assert res.scratch_accesses == 0
    u[1] = 8192                          # past the end of y's page: in no buffer
    with pytest.raises(QPUFault, match="outside every allocated buffer"):
        run_csd(mem, CSDDispatch.for_launch(code, unif))
    res = run_csd(mem, CSDDispatch.for_launch(code, unif), check_addresses=False)
    assert res.scratch_accesses == 16
    assert np.array_equal(mem.view(mem.scratch_address, 64).view(np.uint32), LANE)  # landed in the scratch page
    mem.free(y)
    assert mem.alloc(4096) == y          # the freed page is reused


def test_emudriver_maps_its_whole_buffer_object_as_the_pi_does():
    """py-videocore6's Driver maps code and data as one buffer object, so on the Pi an access past the last
    Array but inside the data area is legal (its hardware-tested sgemm example reads past its last row);
    outside the buffer object it is not. check_allocations=True is the stricter debugging check."""
    for strict in (False, True):
        with EmuDriver(data_area_size=1 << 16, check_allocations=strict) as drv:
            code = drv.program(k_store_eidx_plus_uniform)
            y = drv.alloc(16, dtype=np.uint32)
            unif = drv.alloc(2, dtype=np.uint32)
            unif[:] = [y.addresses()[0], 4096]   # a page past y: in the data area, in no Array
            if strict:
                with pytest.raises(QPUFault, match="outside every allocated buffer"):
                    drv.execute(code, unif.addresses()[0], thread=1)
            else:
                drv.execute(code, unif.addresses()[0], thread=1)
                at = int(y.addresses()[0]) - BUS_BASE + 4096     # where the store landed in the BO
                assert np.array_equal(drv.memory[at: at + 64].view(np.uint32), LANE)
            unif[1] = (1 << 16) + 8192           # past the end of the data area: outside the buffer object
            with pytest.raises(QPUFault, match="outside every allocated buffer"):
                drv.execute(code, unif.addresses()[0], thread=1)


def test_submit_overlaps_python_work_and_wait_returns_the_counters():
    import time

    with EmuDriver(data_area_size=1 << 12) as drv:
        code = drv.program(k_long_loop, trips=1 << 20)
        drv.execute(code, thread=1)      # compiled and warm
        t0 = time.perf_counter()
        job = drv.submit(code, thread=1)
        spins = 0
        while not job.done():            # Python work runs while the dispatch is emulated (nogil)
            spins += 1
        c = job.wait(timeout=60)
        assert c.total_instructions > 5 << 20 and spins > 0
        bad = drv.submit(code, thread=1, timeout_sec=1e-4)
        with pytest.raises(QPUFault, match="predicted"):
            bad.wait()
        assert time.perf_counter() - t0 < 60


def test_unsupported_signal_fault_is_one_clear_line():
    """A graphics-only signal (ldvary: a fragment shader's varyings, meaningless in a compute dispatch)
    is refused with one line naming the PC and the instruction, not a blank where the kind goes (the
    fuzzer's finding: "signal  not modelled")."""
    from pimoe.qpu.emulator import EmuDriver
    word = 0x3D00318138811000          # add r1, r1, r2 ; nop ; ldvary.rf0
    with EmuDriver() as drv:
        code = drv.program([word])
        with pytest.raises(PimoeError) as info:
            drv.execute(code, thread=1, timeout_sec=1, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "  " not in msg.split(": ", 1)[-1].split("ldvary", 1)[-1]
    assert "PC 0" in msg and "ldvary" in msg and "signal not modelled by the emulator" in msg


@qpu
def k_uniform_after_tmu_store(asm, pages=1):
    # py-videocore6 test_tmu_read_tmu_write_uniform_read, written again: data = x + 1 through the TMU (waited
    # for), then a uniform read of data[0] through a branch that moves the uniform stream there. pages > 1:
    # first the same store (x + 1 in 16 lanes) to the pages before, 4 KiB apart, and the read is of the last
    lane_addresses(asm, rf0, rf1)    # rf0: data, rf1: result
    if pages > 1:
        mov(r1, 1)
        shl(r1, r1, 12)              # 4096
    for page in range(pages):
        mov(tmua, rf0, sig=thrsw)
        nop()
        nop()
        nop(sig=ldtmu(r0))
        if page < pages - 1:
            add(tmud, r0, 1)
            mov(tmua, rf0)
            tmuwt()
            add(rf0, rf0, r1)
    b(R.moved, cond="always").unif_addr(rf0)
    add(tmud, r0, 1)                 # the store, waited for, in the branch's delay slots
    mov(tmua, rf0)
    tmuwt()
    L.moved
    nop(sig=ldunifrf(r0))
    add(tmud, r0, 1)
    mov(tmua, rf1)
    tmuwt()
    emit_program_end(asm)


def test_a_uniform_read_does_not_see_the_dispatchs_own_tmu_store():
    """On a Pi 4 the uniform read returns the word as it was before the dispatch stored to it (py-videocore6's
    test asserts result == 2, 'not 3'), while the TMU store itself landed (data == 2)."""
    (data, result), c = run_kernel(k_uniform_after_tmu_store, np.ones(16, dtype=np.uint32),
                                   np.zeros(16, dtype=np.uint32))
    assert np.all(data == 2)
    assert np.all(result == 2)


SHADOW_TEST_PAGES = 20   # more than the 16 pages the first model kept


def test_uniform_reads_see_no_stores_in_any_number_of_pages():
    """The stale uniform read holds whatever number of pages the dispatch stored to (the first model kept
    16 and let a read of the 17th and later see the store, silently), and the counters say it happened."""
    x = (np.arange(SHADOW_TEST_PAGES * 1024, dtype=np.uint32) * 7 + 5).reshape(SHADOW_TEST_PAGES, 1024)
    x[:, 16:] = 0                   # the words past each page's 16 lanes stay as they were
    (data, result), c = run_kernel(k_uniform_after_tmu_store, x, np.zeros(16, dtype=np.uint32),
                                   kernel_kw={"pages": SHADOW_TEST_PAGES}, data_area_size=1 << 20)
    want = x.copy()
    want[:, :16] += 1
    assert np.array_equal(data, want)                        # every store landed
    assert np.all(result == x[-1, 0] + 1)                    # the uniform read got the word before its store
    assert c.stale_uniform_reads == 1 and c.unshadowed_stores == 0


def test_a_store_the_shadow_could_not_keep_is_counted_and_warned(monkeypatch):
    """If the host refuses to reserve a slot for every reachable page (MemoryError), the emulator keeps
    fewer; a store to a page past them is counted in unshadowed_stores and a RuntimeWarning names the
    consequence (the uniform read of that page sees the store, unlike a Pi 4), never silently."""
    import pimoe.qpu.emulator as emu

    real_zeros = np.zeros

    def refusing_zeros(shape, *args, **kwargs):
        if kwargs.get("dtype") is np.int64 and isinstance(shape, int) and shape > 8 * 1024:
            raise MemoryError                                # the shadow's reservation (over 8 slots)
        return real_zeros(shape, *args, **kwargs)

    monkeypatch.setattr(emu, "SHADOW_FALLBACK_PAGES", 2)
    monkeypatch.setattr(emu.np, "zeros", refusing_zeros)
    x = np.zeros((SHADOW_TEST_PAGES, 1024), dtype=np.uint32)
    with pytest.warns(RuntimeWarning, match="uniform reads of those pages saw the new words"):
        (data, result), c = run_kernel(k_uniform_after_tmu_store, x, np.zeros(16, dtype=np.uint32),
                                       kernel_kw={"pages": SHADOW_TEST_PAGES}, data_area_size=1 << 20)
    assert c.unshadowed_stores >= SHADOW_TEST_PAGES - 2
    assert np.all(result == 2)                               # 0 stored as 1, read back by the uniform, + 1
