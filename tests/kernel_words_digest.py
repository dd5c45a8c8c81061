"""The assembled words of every pimoe QPU kernel, hashed: a refactor of the kernel generators that
means to change nothing must leave every digest unchanged.

    PYTHONPATH=$PWD python3 tests/kernel_words_digest.py > before.txt   # then again after, and diff

Each line: kernel name, sha256 of its words (little-endian uint64), number of words. The last line is
the digest of all lines. The configurations are those the backends and benchmarks assemble (every
layout kind, token tile and mode) plus every standalone kernel with its default arguments.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np


def kernels():
    """(name, callable returning the words) for every kernel configuration checked."""
    from pimoe.qpu import assemble
    from qpu_kernels import calibration, gemv_f32, memcpy, memset, sgemm, summation, vec4_stream
    from qpu_kernels.gemv_kernel import KernelConfig, kernel_words

    out = []
    for kind, nsubs in (("f32", (0,)), ("q4", (1, 2)), ("q8", (1, 2))):
        for nsub in nsubs:
            for cols in (256, 768):
                for tokens in (1, 2, 4):
                    for mode, header in (("sum", False), ("swiglu", False), ("swiglu", True)):
                        if mode == "swiglu" and kind != "f32" and tokens > 2:
                            continue
                        cfg = KernelConfig(kind, nsub, cols, tokens, mode, header_out=header)
                        for threads in (8, 3):
                            out.append((f"gemv {kind} nsub={nsub} cols={cols} T={tokens} {mode} header={header} "
                                        f"threads={threads}", lambda c=cfg, t=threads: kernel_words(c, t)))
    for threads in (1, 8):
        out.append((f"summation threads={threads}", lambda t=threads: assemble(summation.qpu_summation, threads=t)))
        out.append((f"memcpy threads={threads}", lambda t=threads: assemble(memcpy.qpu_memcpy, threads=t)))
        out.append((f"sgemm threads={threads}", lambda t=threads: assemble(sgemm.qpu_sgemm, threads=t)))
        out.append((f"gemv_f32_simple threads={threads}",
                    lambda t=threads: assemble(gemv_f32.qpu_gemv_f32_simple, threads=t)))
    out.append(("memset", lambda: assemble(memset.qpu_memset)))
    out.append(("vec4_stream sum", lambda: assemble(vec4_stream.qpu_vec4_sum)))
    out.append(("vec4_stream scopy", lambda: assemble(vec4_stream.qpu_vec4_scopy)))
    out.append(("calibration sgemm_blocks", lambda: assemble(calibration.qpu_sgemm_blocks)))
    out.append(("calibration sgemm_naive", lambda: assemble(calibration.qpu_sgemm_naive)))
    return out


def digests() -> list[str]:
    lines = []
    for name, make in kernels():
        words = np.asarray(list(make()), dtype="<u8")
        lines.append(f"{name}: {hashlib.sha256(words.tobytes()).hexdigest()[:16]} {words.size}")
    lines.append("all: " + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16])
    return lines


if __name__ == "__main__":
    print("\n".join(digests()))
    sys.exit(0)
