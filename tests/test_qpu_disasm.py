"""Disassembler and ISA decode/encode tests against Mesa's V3D 4.2 test vectors and random words.

The vectors (word, expected text) are the devinfo ver 42 entries of Mesa's
src/broadcom/qpu/tests/qpu_disasm.c; like Mesa's test, every vector must also unpack and repack to the same
word, after swapping the operands of the commutative fadd/faddnf/fmin/fmax ops (the encoding tells those
apart by operand order, so the swap checks that the encoder re-derives the order).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from pimoe.errors import PimoeError
from pimoe.qpu import disassemble
from pimoe.qpu.disasm import assemble_text, disassemble_word, parse_instr
from pimoe.qpu.isa import InvalidInstruction, decode, encode, NOP_WORD

MESA_V42_VECTORS = [
    (0x3d003186bb800000, "nop                           ; nop                         ; ldvary.rf0"),
    (0x3c20318105829000, "fadd r1, r1, r5               ; nop                         ; thrsw"),
    (0x3c403186bb81d000, "vpmsetup -, r5                ; nop                         ; ldunif"),
    (0x3c002380b6edb000, "or rf0, r3, r3                ; mov vpm, r3"),
    (0x9c094adef634b000, "ffloor.ifb rf30.l, r3         ; fmul.pushz rf43.l, r5, r1.h"),
    (0xb0044c56ba326840, "flpop rf22, rf33              ; fmul.pushz rf49.l, r4.h, r1.abs"),
    (0x101e8b6e8aad4000, "fmax.nornn rf46, r4.l, r2.l   ; vfmul.ifnb rf45, r3, r5"),
    (0x1857d3c219825000, "faddnf.norc r2.l, r5.l, r4    ; vfmul.ifb rf15, r0.ll, r4   ; ldunif"),
    (0x1c0a0dfde2294000, "fcmp.ifna rf61.h, r4.abs, r2.l; vfmul rf55, r2.hh, r1"),
    (0x2011c89b402cc000, "fsub.norz rf27, r4.abs, r1.abs; vfmul.ifa rf34, r3.swp, r1"),
    (0xe01b42ab3bb063c0, "vfpack.andnc rf43, rf15.l, r0.h; fmul.ifna rf10.h, r4.l, r5.abs"),
    (0x600b8b87fb4d1000, "fdx.ifnb rf7.h, r1.l          ; fmul.pushn rf46, r3.l, r2.abs"),
    (0x5de24398bbdc6218, "vflb.andnn rf24               ; fmul rf14, -8, rf8.h"),
    (0x25ef83d8b166f00f, "vfmin.pushn rf24, 15.ff, r5   ; smul24.ifnb rf15, r1, r3"),
    (0xadedcdf70839f990, "faddnf.pushc rf55, -16.l, r3.abs; fmul.ifb rf55.l, rf38.l, r1.h"),
    (0x7dff89fa6a01f020, "fsub.nornc rf58.h, 0x3b800000.l, r3.l; fmul.ifnb rf39, r0.h, r0.h"),
    (0x02000006002034c0, "b.anyap  rf19"),
    (0x02679356b4201000, "b.anyap  -1268280496"),
    (0x02b76a2dd0400000, "b.anynaq  zero_addr+0xd0b76a28"),
    (0x0200000500402000, "b.anynaq  lri"),
    (0x0216fe167301c8c0, "bu.anya  zero_addr+0x7316fe10, rf35"),
    (0x020000050040e000, "bu.anynaq  lri, r:unif"),
    (0x0200000300006000, "bu.na0  lri, a:unif"),
    (0x3c00318735808000, "vfpack tlb, r0, r1            ; nop"),
    (0xe0571c938e8d5000, "fmax.andc recip, r5.h, r2.l   ; fmul.ifb rf50.h, r3.l, r4.abs; ldunif"),
    (0xc04098d4382c9000, "add.pushn rsqrt, r1, r1       ; fmul rf35.h, r3.abs, r1.abs ; ldunif"),
    (0x481edcd6b3184500, "vfmin.norn log, r4.hh, r0     ; fmul.ifnb rf51, rf20.abs, r0.l"),
    (0x041618d57c453000, "shl.andn exp, r3, r2          ; add.ifb rf35, r1, r2"),
    (0x7048e5da49272800, "fsub.ifa rf26, r2.l, rf32     ; fmul.pushc sin, r1.h, r1.abs; ldunif"),
    (0x1f010520cf60a000, "fcmp.andz rf32, r2.h, r1.h    ; vfmul rf20, r0.hh, r3       ; ldunifa"),
    (0x932045e6c16ea000, "fcmp rf38, r2.abs, r5         ; fmul rf23.l, r3, r3.abs     ; ldunifarf.rf1"),
    (0xd72f0434e43ae5c0, "fcmp rf52.h, rf23, r5.abs     ; fmul rf16.h, rf23, r1       ; ldunifarf.rf60"),
    (0xdb3048eb9d533780, "fmax rf43.l, r3.h, rf30       ; fmul rf35.h, r4, r2.l       ; ldunifarf.r1"),
    (0x733620471e6ce700, "faddnf rf7.l, rf28.h, r1.l    ; fmul r1, r3.h, r3.abs       ; ldunifarf.rsqrt2"),
    (0x3de020c7bdfd200d, "ldvpmg_in rf7, r2, r2         ; mov r3, 13"),
    (0x3de02040f8ff7201, "stvpmv 1, rf8                 ; mov r1, 1"),
    (0xd8000e50bb2d3000, "sampid rf16                   ; fmul rf57.h, r3, r1.l"),
    (0xe98d60c1ba2aef80, "recip rf1, rf62               ; fmul r3.h, r2.l, r1.l       ; ldunifrf.rf53"),
    (0x7d87c2debc51c000, "rsqrt rf30, r4                ; fmul rf11, r4.h, r2.h       ; ldunifrf.rf31"),
    (0xb182475abc2bb000, "rsqrt2 rf26, r3               ; fmul rf29.l, r2.h, r1.abs   ; ldunifrf.rf9"),
    (0x79880808bc0b6900, "sin rf8, rf36                 ; fmul rf32, r2.h, r0.l       ; ldunifrf.rf32"),
    (0x04092094bc5a28c0, "exp.ifb rf20, r2              ; add r2, rf35, r2"),
    (0xe00648bfbc32a000, "log rf63, r2                  ; fmul.andnn rf34.h, r4.l, r1.abs"),
    (0x3c203192bb814000, "barrierid syncb               ; nop                         ; thrsw"),
]


@pytest.mark.parametrize("word,text", MESA_V42_VECTORS, ids=[f"{w:016x}" for w, _ in MESA_V42_VECTORS])
def test_mesa_vector_text(word, text):
    assert disassemble_word(word) == text


@pytest.mark.parametrize("word,text", MESA_V42_VECTORS, ids=[f"{w:016x}" for w, _ in MESA_V42_VECTORS])
def test_mesa_vector_repack(word, text):
    instr = decode(word)
    assert encode(instr) == word
    if instr.type == "alu" and instr.add.op in ("fadd", "faddnf", "fmin", "fmax"):
        a = instr.add
        swapped = replace(instr, add=replace(a, a=a.b, b=a.a, a_unpack=a.b_unpack, b_unpack=a.a_unpack))
        assert encode(swapped) == word


def test_decoded_fields_of_one_vector():
    # "fmax.andc recip, r5.h, r2.l   ; fmul.ifb rf50.h, r3.l, r4.abs; ldunif"
    i = decode(0xE0571C938E8D5000)
    assert i.type == "alu" and i.sig.ldunif and not i.sig.small_imm
    assert (i.add.op, i.add.a, i.add.b, i.add.waddr, i.add.magic_write) == ("fmax", 5, 2, 19, True)
    assert (i.add.a_unpack, i.add.b_unpack, i.add.output_pack) == ("h", "l", None)
    assert (i.mul.op, i.mul.a, i.mul.b, i.mul.waddr, i.mul.magic_write) == ("fmul", 3, 4, 50, False)
    assert (i.mul.output_pack, i.mul.a_unpack, i.mul.b_unpack) == ("h", "l", "abs")
    assert (i.flags.auf, i.flags.mc, i.flags.ac, i.flags.apf) == ("andc", "ifb", None, None)


def test_small_immediate_and_branch_fields():
    i = decode(0x5DE24398BBDC6218)  # vflb.andnn rf24 ; fmul rf14, -8, rf8.h
    assert i.sig.small_imm and i.small_imm == (-8) & 0xFFFFFFFF and i.raddr_a == 8
    b = decode(0x02679356B4201000).branch  # b.anyap  -1268280496
    assert (b.cond, b.msfign, b.bdi, b.ub) == ("anya", "p", "rel", False)
    assert b.signed_offset == -1268280496
    b = decode(0x0216FE167301C8C0).branch  # bu.anya  zero_addr+0x7316fe10, rf35
    assert (b.bdi, b.bdu, b.ub, b.raddr_a, b.offset) == ("abs", "rf", True, 35, 0x7316FE10)


def test_nop_word():
    assert NOP_WORD == 0x3C003186BB800000
    assert disassemble([NOP_WORD]) == ["nop                           ; nop"]


@pytest.mark.parametrize("word,why", [
    (0x0000000000000000, "not a branch"),             # mul op 0 with an ALU signal
    (0x3F403186BB800000, "signal 26 is reserved"),     # signal field 26
    (0x3C003186BB800000 | (0x10 << 46), "reserved"),  # cond 0x10 (reserved flags encoding)
    (0x3C003186BB800000 & ~(0xFF << 24) | (48 << 24), "no add-ALU op"),  # add op 48 (7.1-only vfadd)
    (0x2C003186BB800000, "no mul-ALU op"),             # mul op 11
    (0x0200000100000000, "condition code 1"),          # branch cond 1
    (0x3de03186bb800000 | (1 << 5), "small immediate index 32"[:24]),  # smimm index 33 is fine ...
])
def test_invalid_words_raise(word, why):
    if why.startswith("small immediate"):
        word = (word & ~0x3F) | 50  # ... but index 50 does not exist
    with pytest.raises(InvalidInstruction, match=f"0x{word:016x}") as exc:
        decode(word)
    assert isinstance(exc.value, PimoeError)
    assert (why if not why.startswith("small") else "small immediate index") in str(exc.value)


def test_disassemble_names_the_bad_index():
    with pytest.raises(InvalidInstruction, match="instruction 1 \\(byte offset 0x8\\)"):
        disassemble([NOP_WORD, 0])


def test_random_words_repack_exactly():
    """Every random 64-bit word that decodes re-encodes to itself (branch words up to their unused bits
    20:18 and 5:0), and prints without error."""
    rng = random.Random(1234)
    decoded = branches = 0
    for _ in range(6000):
        word = rng.getrandbits(64)
        if rng.random() < 0.2:  # make branches common enough
            word = (word & ~((0x3F << 58) | (0x3 << 56))) | (0b10 << 56)
        try:
            instr = decode(word)
        except InvalidInstruction:
            continue
        decoded += 1
        mask = (1 << 64) - 1
        if instr.type == "branch":
            branches += 1
            mask &= ~((0x7 << 18) | 0x3F)
        assert encode(instr) == word & mask, f"{word:016x}"
        assert disassemble_word(word)
    assert decoded > 1500 and branches > 300  # the test really exercised both kinds


def test_cli_disasm_hex_file(tmp_path, capsys):
    from pimoe.cli import main

    path = tmp_path / "prog.hex"
    path.write_text("# two words\n0x3c203192bb814000, 02fffef3ff009000\n")
    assert main(["disasm", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "     0: 3c203192bb814000  barrierid syncb               ; nop                         ; thrsw"
    assert out[1] == "     8: 02fffef3ff009000  b.na0  -272"


def test_cli_disasm_bad_inputs(tmp_path, capsys):
    from pimoe.cli import main

    path = tmp_path / "bad.hex"
    path.write_text("3c003186bb800000\nnop\n")
    assert main(["disasm", str(path)]) == 2
    assert "bad.hex:2: 'nop' is not a 64-bit hex word" in capsys.readouterr().err
    path.write_text("0000000000000000\n")
    assert main(["disasm", str(path)]) == 1
    assert "not a branch" in capsys.readouterr().out
    assert main(["disasm", str(tmp_path / "missing.hex")]) == 2


def test_cli_disasm_kernel_spec(tmp_path, capsys):
    from pimoe.cli import main

    path = tmp_path / "kern.py"
    path.write_text(
        "from pimoe.qpu import qpu\n"
        "@qpu\n"
        "def k(asm, *, n):\n"
        "    L.top\n"
        "    for _ in range(n):\n"
        "        nop(sig=thrsw)\n"
        "    b(R.top, cond='always')\n"
    )
    assert main(["disasm", f"{path}:k", "--arg", "n=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "top:",
        "     0: 3c203186bb800000  nop                           ; nop                         ; thrsw",
        "     8: 3c203186bb800000  nop                           ; nop                         ; thrsw",
        "    10: 02ffffd0ff009000  b  -48",  # (0 - 2 - 4) * 8 = -48 = 0xffffffd0: bits 23:3 -> 55:35, 31:24 -> 31:24
    ]


@pytest.mark.parametrize("word,text", MESA_V42_VECTORS, ids=[f"{w:016x}" for w, _ in MESA_V42_VECTORS])
def test_mesa_text_parses_back(word, text):
    """Mesa's text -> parse_instr -> encode -> disassemble gives Mesa's text again; the word itself is the
    same up to fields the text does not show (bdu of a non-uniform branch, stvpm's magic bit)."""
    w2 = encode(parse_instr(text))
    assert disassemble_word(w2) == text
    hidden = (0x7 << 15) if decode(word).type == "branch" else (1 << 44)
    assert w2 & ~hidden == word & ~hidden


def test_assemble_text_program_and_errors():
    words = assemble_text([
        "# a tiny program in Mesa syntax",
        "eidx r0                       ; nop                         ; ldunifrf.rf0",
        "shl r0, r0, 2                 ; nop",
        "",
        "add.pushz rf1, rf0, r0        ; fmul rf2.h, rf0.abs, 0x3f800000",
        "b.na0  -32  ; set_link",
        "nop                           ; mov r5rep, r1               ; rot -3",
    ])
    assert words[0] == 0x3D803180BB802000 and words[1] == 0x3DE031807C838002
    i = decode(words[2])
    assert (i.add.op, i.flags.apf, i.mul.op, i.mul.output_pack, i.small_imm) == ("add", "pushz", "fmul", "h",
                                                                                   0x3F800000)
    b = decode(words[3]).branch
    assert (b.cond, b.signed_offset, b.set_link) == ("na0", -32, True)
    assert decode(words[4]).sig.rotate and decode(words[4]).rot_amount == 13
    for bad, why in [("fadd r0, r1", "takes 3 operands"), ("add r0, r1, r2 ; fmul r0, rf1, rf2 ; ldtmu.r9",
                                                           "bad signal destination"),
                     ("fadd r0, rf1, rf2 ; fmul r1, rf3, r0", "more than two register-file reads"),
                     ("add r0, r1, 99 ; nop", "not a small immediate"), ("b.sometimes  8", "unknown branch"),
                     ("frob r0, r1, r2 ; nop", "not an add-ALU op"),
                     ("nop ; fadd r0, r1, r2", "not a mul-ALU op")]:
        with pytest.raises(InvalidInstruction, match=why):
            assemble_text(["nop ; nop", bad])
    with pytest.raises(InvalidInstruction, match="line 2"):
        assemble_text(["nop ; nop", "fadd r0, r1"])
