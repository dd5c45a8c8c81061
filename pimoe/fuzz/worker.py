"""`python -m pimoe.fuzz.worker WORKDIR`: runs fuzz cases (JSON lines on stdin), one JSON line of outcomes
per case on stdout, under a memory cap (RLIMIT_AS from PIMOE_FUZZ_MEMORY_CAP). Started by pimoe.fuzz.engine."""

from __future__ import annotations

import json
import os
import resource
import sys


def main() -> int:
    cap = int(os.environ.get("PIMOE_FUZZ_MEMORY_CAP", "0"))
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                      # stray prints from the targets must not break the protocol
    from pathlib import Path

    from pimoe.fuzz.engine import execute

    workdir = Path(sys.argv[1])
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
