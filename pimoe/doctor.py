"""`pimoe doctor`: what the QPU hardware route needs, checked one by one, then a self-test on the QPUs.

Each check is ok / missing (with the fix) / info. With `--qpu hw` (the default) every check must pass for
the route to work; with `--qpu virtual` the machine checks (Pi model, 64-bit OS, kernel, v3d driver) are
information only, and the device checks, the self-test and the streaming test run over the virtual V3D
device (pimoe.qpu.vdev), with the emulator's predicted times standing in for measurements.
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass

OK, MISSING, INFO = "ok", "missing", "info"


class _MachineChecks(list):
    def __init__(self, required: bool):
        super().__init__()
        self.required = required

    def append(self, c: "Check") -> None:
        if not self.required and c.status == MISSING:
            c = Check(c.name, INFO, c.detail + " (needed only for --qpu hw)", required=False)
        super().append(c)


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = {OK: "ok     ", MISSING: "MISSING", INFO: "info   "}[self.status]
        text = f"[{mark}] {self.name}: {self.detail}"
        if self.status == MISSING and self.fix:
            text += f"\n          fix: {self.fix}"
        return text


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def machine_checks(required: bool) -> list[Check]:
    """The Pi itself. Not required (the virtual route): a missing item is reported as information."""
    out = _MachineChecks(required)
    model = _read("/proc/device-tree/model")
    compatible = _read("/proc/device-tree/compatible") or ""
    is_pi4 = bool(model and "Raspberry Pi 4" in model) or "bcm2711" in compatible
    out.append(Check("Pi model and SoC", OK if is_pi4 else MISSING,
                     f"{model or 'not a Raspberry Pi (no /proc/device-tree/model)'}"
                     + (" (BCM2711)" if "bcm2711" in compatible else ""),
                     "run on a Raspberry Pi 4 / Pi 400 / CM4 (BCM2711, VideoCore VI)", required))
    machine = platform.machine()
    bits64 = machine in ("aarch64", "arm64") and struct.calcsize("P") == 8
    out.append(Check("64-bit OS", OK if bits64 else MISSING, f"{machine}, {8 * struct.calcsize('P')}-bit Python",
                     "install the 64-bit Raspberry Pi OS (arm64)", required))
    out.append(Check("kernel", INFO, f"Linux {platform.release()} (the v3d driver's compute support is "
                     f"checked below: SUPPORTS_CSD)", required=False))
    loaded = os.path.isdir("/sys/module/v3d")
    out.append(Check("v3d kernel driver", OK if loaded else MISSING,
                     "loaded (/sys/module/v3d)" if loaded else "not loaded",
                     "enable the KMS overlay: dtoverlay=vc4-kms-v3d in /boot/firmware/config.txt, then reboot",
                     required))
    return out


def device_checks(kind: str, client: str) -> tuple[list[Check], object]:
    """Render node, permissions, identity; returns (checks, identity or None)."""
    from pimoe.qpu.v3d_uapi import V3DDevice, find_render_node

    out = []
    node = find_render_node()
    virtual = kind == "virtual"
    if node is None:
        out.append(Check("render node", MISSING, "no /dev/dri/renderD* driven by v3d",
                         "load the v3d driver (dtoverlay=vc4-kms-v3d) and reboot"))
        return out, None
    out.append(Check("render node", OK, f"{node}" + (" (virtual V3D device)" if virtual else "")))
    if not virtual:
        can = os.access(node, os.R_OK | os.W_OK)
        out.append(Check("render node permissions", OK if can else MISSING,
                         "read/write for this user" if can else "no read/write access",
                         f"sudo usermod -aG render {os.environ.get('USER', '$USER')}, then log out and in"))
        if not can:
            return out, None
    try:
        with V3DDevice(node) as dev:
            ident = dev.identity()
    except OSError as exc:
        out.append(Check("V3D identity (GET_PARAM)", MISSING, f"{exc}", "check dmesg for v3d errors"))
        return out, None
    good = ident.version == (4, 2) and ident.supports_csd
    out.append(Check("V3D identity (GET_PARAM)", OK if good else MISSING, ident.describe(),
                     "pimoe's kernels are V3D 4.2 (Pi 4) code; this GPU is not one, or its kernel has no compute "
                     "shader dispatch (update the kernel)"))
    return out, ident


def qpu_clock_check(virtual: bool) -> Check:
    from pimoe.qpu.timing import PI4

    if virtual:
        return Check("QPU clock", INFO, f"{PI4.clock_hz / 1e6:.0f} MHz assumed by the timing model (virtual device)",
                     required=False)
    tool = shutil.which("vcgencmd")
    if tool:
        try:
            out = subprocess.run([tool, "measure_clock", "v3d"], capture_output=True, text=True, timeout=5).stdout
            hz = int(out.strip().split("=")[1])
            return Check("QPU clock", INFO, f"{hz / 1e6:.1f} MHz now (vcgencmd; the timing model assumes "
                         f"{PI4.clock_hz / 1e6:.0f} MHz, force_turbo=1)", required=False)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    return Check("QPU clock", INFO, "unknown (no vcgencmd)", required=False)


def ram_check() -> Check:
    from pimoe.backends.qpu_memory import read_meminfo

    info = read_meminfo()
    total, avail = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    return Check("RAM", INFO, f"{total / 2**30:.1f} GiB total, {avail / 2**30:.1f} GiB available (QPU buffers are "
                 f"pinned shmem pages, not CMA; one 4 GiB GPU address space)", required=False)


def self_tests(kind: str, client: str, stream_bytes: int) -> list[Check]:
    """A kernel's result against numpy, then a short streaming read."""
    from pimoe.errors import PimoeError
    from pimoe.qpu import open_driver
    from pimoe.qpu.timing import PREDICTED_LABEL, predict
    from qpu_kernels import summation

    out = []
    words = max(16 * summation.DEPTH * 8, stream_bytes // 4 // (16 * summation.DEPTH * 8) * (16 * summation.DEPTH * 8))
    try:
        with open_driver(kind, client=client, data_area_size=words * 4 + (1 << 20)) as drv:
            # self-test: every QPU adds its slice of random words; the sum must equal numpy's
            n = 16 * summation.DEPTH * 8 * 4
            summation.run(drv, length=n, threads=8, seed=1)
            out.append(Check("self-test kernel", OK, f"summation of {n} random uint32 on 8 QPUs equals numpy"))
            counters, seconds = summation.run(drv, length=words, threads=8, seed=2)
    except (PimoeError, OSError) as exc:
        out.append(Check("self-test kernel", MISSING, f"{exc}", "see the messages above; `dmesg | grep v3d`"))
        return out
    mb = words * 4 / 1e6
    if counters is not None and kind != "hw":
        p = predict(counters)
        out.append(Check("streaming test", OK, f"{mb:.1f} MB read and summed (equal to numpy); "
                         f"{mb / p.seconds:.0f} MB/s {PREDICTED_LABEL}, the emulator standing in "
                         f"({seconds:.2f} s emulated)"))
    else:
        out.append(Check("streaming test", OK, f"{mb:.1f} MB read and summed (equal to numpy) in "
                         f"{seconds * 1e3:.2f} ms: {mb / seconds:.0f} MB/s measured (one dispatch, including "
                         f"its submit and wait)"))
    return out


def run(kind: str = "hw", client: str | None = None, stream_bytes: int = 4 << 20) -> tuple[list[Check], bool]:
    """All checks; (checks, whether the route works)."""
    import contextlib

    from pimoe.qpu.driver import qpu_client

    client = qpu_client(client)
    virtual = kind == "virtual"
    checks = machine_checks(required=not virtual)
    checks.append(Check("driver route", INFO, f"--qpu {kind}, UAPI client {client}"
                        + (" (pimoe.qpu.v3d_uapi, standard library)" if client == "pimoe" else " (py-videocore6)"),
                        required=False))
    ctx = contextlib.nullcontext()
    if virtual:
        from pimoe.qpu.vdev import virtual_v3d

        ctx = virtual_v3d()
    with ctx:
        dev, ident = device_checks(kind, client)
        checks += dev
        checks.append(qpu_clock_check(virtual))
        checks.append(ram_check())
        if ident is not None and all(c.status != MISSING for c in checks if c.required):
            checks += self_tests(kind, client, stream_bytes)
        else:
            checks.append(Check("self-test kernel", MISSING, "not run: the checks above must pass first",
                                "fix the missing items above"))
    works = all(c.status != MISSING for c in checks if c.required)
    return checks, works
