"""QPU programs for fuzzing the emulator: a few seed kernels (written here in the DSL, plus the
repository's summation kernel) and mutations of them, and programs of random words.

Every program gets uniform 0 = the address of a 4 KiB data buffer (pimoe.fuzz.targets.run_qpu)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _seed_add_one():
    from pimoe.qpu import qpu

    @qpu
    def add_one(asm):                          # the README's example: data[i] += 1.0 for 16 lanes
        eidx(r0).mov(r2, 4)                    # noqa: F821 -- DSL names exist while the kernel runs
        nop(sig=ldunifrf(rf0))                 # noqa: F821
        umul24(r0, r0, r2)                     # noqa: F821
        add(tmua, rf0, r0)                     # noqa: F821
        nop(sig=ldtmu(r1))                     # noqa: F821
        fadd(tmud, r1, 1.0)                    # noqa: F821
        add(tmua, rf0, r0)                     # noqa: F821
        tmuwt()                                # noqa: F821
        nop(sig=thrsw); nop(sig=thrsw); nop(); nop(); nop(sig=thrsw); nop(); nop(); nop()  # noqa: E702,F821
    return add_one


def _seed_loop():
    from pimoe.qpu import qpu

    @qpu
    def loop_store(asm):                       # 8 iterations: store the lane index to data[16*i + lane]
        eidx(r0).mov(r2, 4)                    # noqa: F821
        nop(sig=ldunifrf(rf0))                 # noqa: F821
        umul24(r0, r0, r2)                     # noqa: F821
        add(r1, rf0, r0)                       # noqa: F821
        mov(r3, 8)                             # noqa: F821
        with loop as l:                        # noqa: F821
            sub(r3, r3, 1, cond="pushz")       # noqa: F821
            eidx(tmud)                         # noqa: F821
            mov(tmua, r1)                      # noqa: F821
            l.b(cond="na0")                    # noqa: F821
            shl(r2, 4, 4)                      # noqa: F821  (64 bytes per iteration, in the delay slots)
            add(r1, r1, r2)                    # noqa: F821
            nop()                              # noqa: F821
        tmuwt()                                # noqa: F821
        nop(sig=thrsw); nop(sig=thrsw); nop(); nop(); nop(sig=thrsw); nop(); nop(); nop()  # noqa: E702,F821
    return loop_store


@lru_cache(maxsize=None)
def seed_words(name: str) -> tuple[int, ...]:
    from pimoe.qpu.asm import assemble

    if name == "add_one":
        return tuple(int(w) for w in assemble(_seed_add_one()))
    if name == "loop_store":
        return tuple(int(w) for w in assemble(_seed_loop()))
    if name == "summation":
        from qpu_kernels.summation import qpu_summation

        return tuple(int(w) for w in assemble(qpu_summation, threads=1))
    raise KeyError(name)


SEEDS = ("add_one", "loop_store", "summation")


def _decodes(word: int) -> bool:
    from pimoe.qpu.disasm import disassemble_word

    try:
        disassemble_word(word)
        return True
    except Exception:               # noqa: BLE001 -- InvalidInstruction
        return False


def m_random(words, rng):
    return [int(w) for w in rng.integers(0, 2**64, int(rng.integers(1, 64)), dtype=np.uint64)]


def m_random_valid(words, rng):
    out = []
    for _ in range(int(rng.integers(4, 48))):
        for _try in range(64):
            w = int(rng.integers(0, 2**64, dtype=np.uint64))
            if _decodes(w):
                break
        out.append(w)
    return out + list(words[-8:])     # the seed's ending (thread end) after random valid instructions


def m_bitflip(words, rng):
    out = list(words)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(64))
    return out


def m_splice(words, rng):
    out = list(words)
    for _ in range(int(rng.integers(1, 4))):
        out[int(rng.integers(len(out)))] = int(rng.integers(0, 2**64, dtype=np.uint64))
    return out


def m_shuffle(words, rng):
    out = list(words)
    i, j = rng.integers(len(out), size=2)
    out[int(i)], out[int(j)] = out[int(j)], out[int(i)]
    return out


def m_truncate(words, rng):
    return list(words[:max(1, int(rng.integers(len(words))))])


MUTATIONS = {"random": m_random, "random_valid": m_random_valid, "bitflip": m_bitflip, "splice": m_splice,
             "shuffle": m_shuffle, "truncate": m_truncate}


def program(seed: str, mutation: str, rng_seed: int) -> list[int]:
    return MUTATIONS[mutation](seed_words(seed), np.random.default_rng(rng_seed))
