"""pimoe.qpu.lint: Mesa's code-generation rules as warnings (PC + rule name), and pimoe's kernels lint-clean."""

from __future__ import annotations

import pytest

from pimoe.qpu import assemble, qpu
from pimoe.qpu.lint import RULES, lint
from qpu_kernels.emit import emit_program_end


@qpu
def k_one_unit(asm):
    nop(sig=ldunifrf(rf0))
    mov(tmua, rf0)
    mov(tmua, rf0, sig=ldtmu(r0))        # pc 2: py-videocore6 summation's idiom
    mov(tmud, r0, sig=ldtmu(r1))         # pc 3: its scopy's
    mov(exp, r1)                         # pc 4
    nop()
    mov(tmud, r1)
    mov(tmua, rf0)
    emit_program_end(asm)


@qpu
def k_r4(asm):
    mov(recip, 1.0)                      # pc 0
    mov(r0, r4)                          # pc 1: too soon
    nop()
    mov(r1, r4)                          # pc 3: fine
    emit_program_end(asm)


@qpu
def k_unifa(asm):
    nop(sig=ldunifrf(rf0))
    mov(unifa, rf0)                      # pc 1
    nop()
    nop(sig=ldunifa)                     # pc 3: 2 after
    nop(sig=ldunifa)                     # pc 4: 3 after, fine
    emit_program_end(asm)


@qpu
def k_rotate(asm):
    eidx(r0)                             # pc 0
    nop().mov(r1, r0, sig=rot(1))        # pc 1: r0 written by the previous instruction
    nop()
    nop().mov(r2, r1, sig=rot(1))        # pc 3: r1 written two before, fine
    emit_program_end(asm)


@qpu
def k_delays(asm):
    b(R.t, cond="always")                # pc 0
    nop(sig=thrsw)                       # pc 1: thrsw in a branch delay slot
    nop()
    nop()
    L.t
    nop(sig=thrsw)                       # pc 4
    mov(exp, 1.0)                        # pc 5: SFU in a thrsw delay slot
    nop()
    emit_program_end(asm)


@pytest.mark.parametrize("kernel,want", [
    (k_one_unit, [(2, "one-unit"), (3, "one-unit")]),
    (k_r4, [(1, "r4-too-soon")]),
    (k_unifa, [(3, "unifa-too-soon")]),
    (k_rotate, [(1, "rotate-source")]),
    (k_delays, [(1, "thrsw-in-branch-delay"), (5, "sfu-in-thrsw-delay")]),
])
def test_each_rule_names_its_pc(kernel, want):
    got = [(w.pc, w.rule) for w in lint(assemble(kernel))]
    assert got == want
    for w in lint(assemble(kernel)):
        assert w.rule in RULES and str(w).startswith(f"pc {w.pc}: {w.rule}: ")


def test_allow_list_and_invalid_words():
    assert lint(assemble(k_one_unit), allow={"one-unit"}) == []
    with pytest.raises(ValueError, match="unknown rules"):
        lint([], allow={"no-such-rule"})
    assert [w.rule for w in lint([0xFFFFFFFFFFFFFFFF])] == ["invalid-word"]


def _pimoe_kernels():
    from qpu_kernels import calibration, gemv_f32, memcpy, memset, sgemm, summation, vec4_stream
    from qpu_kernels.gemv_kernel import KernelConfig, kernel_words

    out = {
        "vec4_stream.sum": assemble(vec4_stream.qpu_vec4_sum),
        "vec4_stream.scopy": assemble(vec4_stream.qpu_vec4_scopy),
        "calibration.sgemm_blocks": assemble(calibration.qpu_sgemm_blocks),
        "calibration.sgemm_naive": assemble(calibration.qpu_sgemm_naive),
        "memset": assemble(memset.qpu_memset),
        "gemv_f32": assemble(gemv_f32.qpu_gemv_f32_simple, threads=8),
        "sgemm": assemble(sgemm.qpu_sgemm, threads=8),
    }
    for t in (8, 32):
        out[f"memcpy{t}"] = assemble(memcpy.qpu_memcpy, threads=t)
        out[f"summation{t}"] = assemble(summation.qpu_summation, threads=t)
    for cfg in (KernelConfig("q4", 1, 512, 1, "sum"), KernelConfig("q4", 1, 2048, 4, "sum"),
                KernelConfig("q8", 2, 256, 2, "swiglu", header_out=True), KernelConfig("q8", 1, 512, 1, "sum"),
                KernelConfig("f32", 0, 512, 1, "sum"), KernelConfig("f32", 0, 256, 2, "swiglu")):
        out[f"gemv {cfg}"] = list(kernel_words(cfg))
    return out


# a kernel that breaks a rule on purpose names it here (by name, or name prefix), with the reason
ALLOWED: dict[str, set[str]] = {
    # the published summation and scopy (behind 7241 and 2424 MB/s on a Pi 4) issue the next TMU lookup or
    # store data in the instruction that reads a result; the calibration kernels have their instruction mix
    "vec4_stream.sum": {"one-unit"},
    "vec4_stream.scopy": {"one-unit"},
    # qpu_kernels.gemv_sched lets a TMU write (tmua/tmuc) share an instruction with an ldtmu, as
    # py-videocore6's hardware-tested summation and scopy do on every loop trip
    "gemv KernelConfig(": {"one-unit"},
}


def test_pimoe_kernels_are_lint_clean():
    for name, words in _pimoe_kernels().items():
        bad = lint(words, allow=set().union(*(v for k, v in ALLOWED.items() if name.startswith(k))))
        assert bad == [], f"{name}: " + "; ".join(map(str, bad[:5]))


def test_disasm_lint_cli(capsys):
    from pimoe.cli import main

    rc = main(["disasm", "--lint", "tests.test_qpu_lint:k_one_unit"])
    out = capsys.readouterr().out
    assert rc == 1 and "pc 2: one-unit: tmua and ldtmu in one instruction" in out
    rc = main(["disasm", "--lint", "--allow", "one-unit", "tests.test_qpu_lint:k_one_unit"])
    assert rc == 0 and "pc 2: one-unit" not in capsys.readouterr().out
