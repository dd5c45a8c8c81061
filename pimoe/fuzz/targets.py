"""What one fuzz case runs, inside a worker process: a mutated GGUF file through `pimoe info`,
`pimoe.load_model` (+ a forward pass) and `pimoe run`; a command line through `pimoe.cli.main`; a QPU
program through the emulator.

Each target returns a list of outcomes {"target", "status", "detail"}; status is
  "ok"      it ran,
  "error"   it refused the input with one clear line (a PimoeError / usage error) -- what we want,
  "bug"     anything else: a traceback, a multi-line or empty error message, a file written next to
            the input, or (QPU) memory outside the program's buffers changed without a fault.
Signals, hangs and memory blow-ups are seen by the parent (pimoe.fuzz.engine), which runs this in a
worker with a time and memory cap.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback
from pathlib import Path

import numpy as np

from pimoe.errors import PimoeError


def _bug(target: str, exc: BaseException) -> dict:
    tb = traceback.extract_tb(exc.__traceback__)
    frame = next((f for f in reversed(tb) if "/pimoe/" in f.filename or "qpu_kernels" in f.filename),
                 tb[-1] if tb else None)
    where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
    return {"target": target, "status": "bug", "detail": f"{type(exc).__name__} at {where}: {str(exc)[:300]}"}


def _cli(target: str, argv: list[str]) -> dict:
    """pimoe.cli.main(argv) with its output captured: a clean refusal is exit 2 with one stderr line."""
    from pimoe.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as exc:                   # argparse's usage errors
        rc = exc.code if isinstance(exc.code, int) else 2
        return {"target": target, "status": "error" if rc == 2 else "ok", "detail": err.getvalue()[-200:]}
    except Exception as exc:                    # noqa: BLE001 -- anything escaping main() is a finding
        return _bug(target, exc)
    text = err.getvalue().strip()
    if rc == 0:
        return {"target": target, "status": "ok", "detail": ""}
    lines = [ln for ln in text.splitlines() if ": error: " in ln]
    if rc == 2 and len(lines) == 1 and lines[0].startswith("pimoe ") and len(lines[0]) > 20:
        return {"target": target, "status": "error", "detail": lines[0][:300]}
    return {"target": target, "status": "bug", "detail": f"exit {rc}, stderr {text[-300:]!r}"}


def run_gguf(path: str, targets=("info", "load", "run")) -> list[dict]:
    """A (mutated) GGUF file through info, load_model + forward, and run."""
    p = Path(path)
    before = sorted(os.listdir(p.parent))
    results = []
    if "info" in targets:
        results.append(_cli("info", ["info", "-m", str(p)]))
    if "load" in targets:
        import pimoe

        try:
            with pimoe.load_model(p, n_ctx=16) as model:
                logits = model.forward([0, 1])
                results.append({"target": "load", "status": "ok", "detail": f"logits {logits.shape}"})
        except PimoeError as exc:
            msg = str(exc)
            ok = bool(msg) and "\n" not in msg
            results.append({"target": "load", "status": "error" if ok else "bug",
                            "detail": msg[:300] if ok else f"multi-line or empty PimoeError: {msg[:300]!r}"})
        except Exception as exc:                 # noqa: BLE001
            results.append(_bug("load", exc))
    if "run" in targets:
        results.append(_cli("run", ["run", "-m", str(p), "-p", "Hi there", "-n", "2", "--no-warmup",
                                    "--ctx", "16"]))
    after = sorted(os.listdir(p.parent))
    if after != before:
        results.append({"target": "files", "status": "bug",
                        "detail": f"files appeared next to the input: {sorted(set(after) - set(before))}"})
    return results


def run_cli(argv: list[str]) -> list[dict]:
    return [_cli("cli", list(argv))]


# ------------------------------------------------------------------------------------------------
# QPU programs

GUARD = 0xA5
PAGE = 4096


def run_qpu(words: list[int], max_instructions: int = 200_000, uniform_offset: int = 0) -> list[dict]:
    """Run a program (list of 64-bit words) on the emulator's device view (pimoe.qpu.emulator.run_csd) with
    one 4 KiB data buffer whose address is uniform 0, between two unmapped guard pages: holes in the GPU
    address space, as the v3d MMU sees pages no buffer holds. A fault (QPUFault/DriverError) is a clean
    refusal. An access into a hole must fault; a hole whose bytes changed without a fault means the
    emulator let the program write outside every buffer. (A write into another allocated buffer is legal,
    as on the hardware, and is not a finding.)

    Layout (GPU addresses from the memory's base): the scratch page, the uniforms buffer (4 KiB), a hole,
    the data page, a hole, then the code."""
    from pimoe.qpu.emulator import CSDDispatch, GPUMemory, run_csd

    res = {"target": "qpu"}
    try:
        mem = GPUMemory(1 << 20)
        unif = mem.alloc(PAGE)
        holes = [mem.alloc(PAGE)]
        data = mem.alloc(PAGE)
        holes.append(mem.alloc(PAGE))
        code_words = np.array([int(w) for w in words], dtype=np.uint64)
        code = mem.alloc(max(8, code_words.nbytes))
        for h in holes:
            mem.free(h)
            mem.view(h, PAGE)[:] = GUARD
        mem.view(data, PAGE).view(np.uint32)[:] = np.arange(PAGE // 4, dtype=np.uint32)
        mem.view(unif, PAGE).view(np.uint32)[:] = (data + uniform_offset) & 0xFFFFFFFF
        mem.view(code, code_words.nbytes)[:] = code_words.view(np.uint8)
        try:
            run_csd(mem, CSDDispatch.for_launch(code, unif), check_addresses=True, timeout_sec=5,
                    max_instructions=max_instructions)
            status, detail = "ok", ""
        except PimoeError as exc:
            msg = str(exc)
            clean = bool(msg) and "\n" not in msg and "  not modelled" not in msg
            status, detail = ("error", msg[:200]) if clean else ("bug", f"[emu] unclear fault text: {msg[:200]!r}")
        for name, h in zip(("before", "after"), holes):
            if (mem.view(h, PAGE) != GUARD).any():
                status, detail = "bug", (f"[emu] wrote into the unmapped page {name} the data buffer without a "
                                         f"fault ({detail or 'run completed'})")
                break
    except PimoeError as exc:
        status, detail = "error", str(exc)[:200]
    except Exception as exc:                     # noqa: BLE001
        return [_bug("qpu", exc)]
    res.update(status=status, detail=detail)
    return [res]
