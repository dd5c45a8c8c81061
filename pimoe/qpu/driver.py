"""Pick the QPU driver: py-videocore6's real Driver on a Raspberry Pi 4, else pimoe's emulator.

    from pimoe.qpu import open_driver
    with open_driver("auto", data_area_size=64 << 20) as drv:   # "auto" | "emu" | "hw"
        code = drv.program(kernel, ...); drv.execute(code, ...)

Both expose the same API (alloc / program / execute / Array.addresses()), so host code and kernels do
not change. The hardware path needs py-videocore6, which is not on the package index; on a Pi 4
(64-bit Raspberry Pi OS, user in the `render` group so /dev/dri/card* is accessible):

    pip install git+https://github.com/Idein/py-videocore6.git

Kernels written with pimoe's DSL assemble to the same words as py-videocore6's, so `program()` on the
hardware driver is given pimoe-assembled words (a list), never py-videocore6's assembler.
"""

from __future__ import annotations

import glob
import importlib

from pimoe.errors import PimoeError
from pimoe.qpu.emulator import EmuDriver

DRIVER_KINDS = ("auto", "emu", "hw")


def hardware_available() -> tuple[bool, str]:
    """(True, "") when py-videocore6 imports and a V3D render device exists, else (False, why not)."""
    try:
        importlib.import_module("videocore6.driver")
    except Exception as exc:  # ImportError, or its C extension failing to load off a Pi
        return False, f"py-videocore6 is not importable ({exc.__class__.__name__}: {exc})"
    if not glob.glob("/dev/dri/card*") and not glob.glob("/dev/dri/renderD*"):
        return False, "no /dev/dri device (not a Raspberry Pi 4 with the v3d kernel driver)"
    return True, ""


class HardwareDriver:
    """py-videocore6's Driver with pimoe's assembler in front: program() takes a pimoe @qpu kernel (or
    words); everything else is forwarded unchanged (alloc, execute, Array.addresses(), close)."""

    def __init__(self, **kwargs):
        from videocore6.driver import Driver

        try:
            self._drv = Driver(**kwargs)
        except Exception as exc:
            raise PimoeError(f"could not open the V3D device through py-videocore6: {exc}") from exc
        self.last_counters = None  # the hardware has no instruction counters

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._drv.close()
        return False

    def program(self, prog, *args, **kwargs):
        if callable(prog):
            from pimoe.qpu.asm import assemble

            prog = assemble(prog, *args, **kwargs)
        words = [int(w) for w in prog]
        try:
            return self._drv.program(words)  # py-videocore6 >= 2024 takes a word list
        except (TypeError, AttributeError):
            # older py-videocore6 only calls `prog(asm)` on its Assembly list: hand it the words that way
            return self._drv.program(lambda asm: asm.extend(words))

    def execute(self, code, local_invocation=None, uniforms=None, timeout_sec=10, workgroup=(1, 1, 1),
                wgs_per_sg=16, thread=1, **kwargs):
        import inspect

        params = inspect.signature(self._drv.execute).parameters
        if "local_invocation" in params:
            return self._drv.execute(code, local_invocation=local_invocation, uniforms=uniforms,
                                     timeout_sec=timeout_sec, workgroup=workgroup, wgs_per_sg=wgs_per_sg,
                                     thread=thread, **kwargs)
        # older py-videocore6: its `workgroup` argument is the local size (16, 1, 1) by default
        return self._drv.execute(code, uniforms=uniforms, timeout_sec=timeout_sec,
                                 workgroup=local_invocation or (16, 1, 1), wgs_per_sg=wgs_per_sg, thread=thread)

    def __getattr__(self, name):
        return getattr(self._drv, name)


def open_driver(kind: str = "auto", **kwargs):
    """A driver context manager: "emu" the emulator, "hw" the GPU (PimoeError if absent), "auto" the GPU
    when present else the emulator. kwargs: code_area_size, data_area_size."""
    if kind not in DRIVER_KINDS:
        raise PimoeError(f"driver {kind!r}: choose one of {', '.join(DRIVER_KINDS)}")
    if kind == "emu":
        return EmuDriver(**kwargs)
    ok, why = hardware_available()
    if kind == "hw":
        if not ok:
            raise PimoeError(f"driver 'hw' requested but the QPU hardware is not usable: {why}. Run on a "
                             f"Raspberry Pi 4 with py-videocore6 installed, or use driver 'emu'.")
        return HardwareDriver(**kwargs)
    return HardwareDriver(**kwargs) if ok else EmuDriver(**kwargs)
