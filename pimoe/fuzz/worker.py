"""`python -m pimoe.fuzz.worker WORKDIR`: runs fuzz cases (JSON lines on stdin), one JSON line of outcomes
per case on stdout, under a memory cap (RLIMIT_AS from PIMOE_FUZZ_MEMORY_CAP). Started by pimoe.fuzz.engine."""

from __future__ import annotations

import json
import os
import resource
import sys


def warm_up(workdir) -> None:
    """Import and compile what the cases use (numba kernels, the emulator) before the first case."""
    import numpy as np

    import pimoe
    from pimoe.fuzz import targets
    from pimoe.fuzz.qpu_programs import seed_words

    targets.run_qpu(list(seed_words("add_one")))
    seed = os.environ.get("PIMOE_FUZZ_WARMUP_MODEL")
    if seed:
        with pimoe.load_model(seed, n_ctx=16) as model:
            model.forward([0, 1])
    np.zeros(1)


def main() -> int:
    cap = int(os.environ.get("PIMOE_FUZZ_MEMORY_CAP", "0"))
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                      # stray prints from the targets must not break the protocol
    from pathlib import Path

    from pimoe.fuzz.engine import execute

    workdir = Path(sys.argv[1])
    warm_up(workdir)
    out.write('"ready"\n')            # the parent's per-case clock starts now, not during imports and JIT
    out.flush()
    for line in sys.stdin:
        case = json.loads(line)
        try:
            result = execute(case, workdir)
        except MemoryError:
            result = [{"target": case["kind"], "status": "bug", "detail": "MemoryError: over the memory cap"}]
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
