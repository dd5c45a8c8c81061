"""Pick the QPU driver: the VideoCore VI through the kernel's v3d driver, the same over the virtual V3D
device, or pimoe's emulator directly.

    from pimoe.qpu import open_driver
    with open_driver("auto", data_area_size=64 << 20) as drv:   # "auto" | "hw" | "virtual" | "emu"
        code = drv.program(kernel, ...); drv.execute(code, ...)
        job = drv.submit(code, ...); <CPU work>; job.wait()     # asynchronous dispatch, every route

- "hw": a Raspberry Pi 4's GPU through the v3d render node (/dev/dri/renderD128).
- "virtual": the complete hardware route (UAPI client, ioctls, BOs, mmap, SUBMIT_CSD, WAIT_BO) over
  pimoe.qpu.vdev.virtual_v3d(), whose jobs the emulator runs: what "hw" does, without a Pi.
- "emu": the emulator called directly (EmuDriver).
- "auto": "hw" when a V3D render node can be opened, else "emu".

The UAPI client ("hw" and "virtual") is pimoe's own, pimoe.qpu.v3d_uapi (standard library only, so a Pi
needs nothing installed from git), unless `client="videocore6"` or PIMOE_QPU_CLIENT=videocore6 selects
py-videocore6's Driver (pip install git+https://github.com/Idein/py-videocore6.git). Either way the
kernels are assembled by pimoe (the same words py-videocore6 would produce). All drivers expose the same
API: alloc / program / execute / submit / Array.addresses() / close.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu.emulator import EmuDriver

DRIVER_KINDS = ("auto", "hw", "virtual", "emu")
CLIENTS = ("pimoe", "videocore6")
DEFAULT_CODE_AREA_SIZE = 1 << 20
DEFAULT_DATA_AREA_SIZE = 32 << 20


def qpu_client(client: str | None = None) -> str:
    """The UAPI client to use: the argument, else $PIMOE_QPU_CLIENT, else "pimoe"."""
    name = client or os.environ.get("PIMOE_QPU_CLIENT") or "pimoe"
    if name not in CLIENTS:
        raise PimoeError(f"QPU client {name!r} (PIMOE_QPU_CLIENT): choose one of {', '.join(CLIENTS)}")
    return name


def hardware_available(client: str | None = None) -> tuple[bool, str]:
    """(True, "") when the V3D render node can be opened (and, for the videocore6 client, py-videocore6
    imports), else (False, why not)."""
    from pimoe.qpu.v3d_uapi import find_render_node

    name = qpu_client(client)
    if name == "videocore6":
        try:
            importlib.import_module("videocore6.driver")
        except Exception as exc:  # ImportError, or its dependencies failing to load
            return False, f"py-videocore6 is not importable ({exc.__class__.__name__}: {exc})"
    node = find_render_node()
    if node is None:
        return False, "no V3D render node /dev/dri/renderD* (not a Raspberry Pi 4 with the v3d kernel driver)"
    if not os.access(node, os.R_OK | os.W_OK):
        return False, f"{node} is not readable and writable by this user (add the user to the 'render' group)"
    return True, ""


class Job:
    """A submitted dispatch. wait(timeout=None) blocks until it is done and returns the emulator's
    counters when there are any (emu, virtual), else None (hardware)."""

    def __init__(self, wait, counters=None):
        self._wait, self._result, self._done = wait, counters, False

    def wait(self, timeout: float | None = None):
        if not self._done:
            r = self._wait(timeout)
            self._result = r if r is not None else self._result
            self._done = True
        return self._result


class _Closing:
    """`with driver:` closes it at the end (close() is idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class V3DDriver(_Closing):
    """py-videocore6's Driver API over pimoe's own UAPI client: a code BO and a data BO, bump-allocated."""

    def __init__(self, *, code_area_size: int = DEFAULT_CODE_AREA_SIZE, data_area_size: int = DEFAULT_DATA_AREA_SIZE,
                 path: str | None = None):
        from pimoe.qpu.emulator import Array
        from pimoe.qpu.v3d_uapi import V3DDevice

        self._Array = Array
        self.code_area_size, self.data_area_size = int(code_area_size), max(int(data_area_size), 4096)
        self.last_counters = None
        self.dev = None
        self._bos: list[tuple[int, object]] = []
        try:
            self.dev = V3DDevice(path)
            self.code_handle, self.code_addr, self.code_buf = self._bo(self.code_area_size)
            self.data_handle, self.data_addr, self.data_buf = self._bo(self.data_area_size)
        except OSError as exc:
            self.close()
            raise PimoeError(f"could not set up the V3D device ({exc}); run `pimoe doctor`") from exc
        self.handles = [self.code_handle, self.data_handle]
        self.code_pos = 0
        self.data_pos = 0

    def _bo(self, size: int):
        handle, addr = self.dev.create_bo(size)
        buf = self.dev.map_bo(handle, size)
        self._bos.append((handle, buf))
        return handle, addr, np.frombuffer(buf, dtype=np.uint8)

    def close(self) -> None:
        if self.dev is None:
            return
        self.code_buf = self.data_buf = None
        for handle, buf in reversed(self._bos):
            with contextlib.suppress(BufferError, OSError):
                buf.close()             # BufferError: an Array still refers to it; it is unmapped when freed
            with contextlib.suppress(OSError):
                self.dev.gem_close(handle)
        self._bos = []
        self.dev.close()
        self.dev = None

    def _check_open(self) -> None:
        if self.dev is None:
            raise PimoeError("the V3D driver is closed")

    def alloc(self, *args, **kwargs):
        self._check_open()
        probe = np.ndarray(*args, **kwargs)
        if self.data_pos + probe.nbytes > self.data_area_size:
            raise PimoeError(f"data area too small: {probe.nbytes} more bytes requested, "
                             f"{self.data_area_size - self.data_pos} left (data_area_size=...)")
        arr = self._Array(*args, phyaddr=self.data_addr + self.data_pos, buffer=self.data_buf, offset=self.data_pos,
                          **kwargs)
        self.data_pos += arr.nbytes
        return arr

    def program(self, prog, *args, **kwargs):
        self._check_open()
        if callable(prog):
            from pimoe.qpu.asm import assemble

            prog = assemble(prog, *args, **kwargs)
        words = [int(w) for w in prog]
        if not words:
            raise PimoeError("program() got an empty program")
        # a zero word after each program: the virtual device finds a program's end there (and 0 is not a
        # valid instruction, so the hardware never runs into it)
        if self.code_pos + 8 * (len(words) + 1) > self.code_area_size:
            raise PimoeError(f"code area too small for {len(words)} more instructions (code_area_size=...)")
        code = self._Array(shape=len(words), dtype=np.uint64, phyaddr=self.code_addr + self.code_pos,
                           buffer=self.code_buf, offset=self.code_pos)
        code[:] = np.array(words, dtype=np.uint64)
        self.code_pos += 8 * (len(words) + 1)
        return code

    def submit(self, code, local_invocation=None, uniforms=None, workgroup=(1, 1, 1), wgs_per_sg=16, thread=1,
               propagate_nan=False, single_seg=False, threading=False, timeout_sec: float = 10, **_ignored) -> Job:
        """Queue the dispatch (SUBMIT_CSD) and return at once; Job.wait() is WAIT_BO on the driver's BOs."""
        from pimoe.qpu.emulator import CSDDispatch

        self._check_open()
        if isinstance(local_invocation, (int, np.integer)) and uniforms is None:
            local_invocation, uniforms = None, int(local_invocation)   # the older execute(code, uniforms)
        cfg = CSDDispatch.for_launch(int(code.address), int(uniforms or 0), thread=thread,
                                     local_invocation=local_invocation or (16, 1, 1), workgroup=workgroup,
                                     wgs_per_sg=wgs_per_sg, threading=threading, single_seg=single_seg,
                                     propagate_nans=propagate_nan)
        self.dev.submit_csd(cfg.encode(), self.handles)
        default_timeout = timeout_sec

        def wait(timeout):
            t = default_timeout if timeout is None else timeout
            try:
                for h in self.handles:
                    self.dev.wait_bo(h, int(t * 1e9))
            except OSError as exc:
                if exc.errno in (errno.ETIME, errno.ETIMEDOUT, errno.EAGAIN):
                    raise PimoeError(f"QPU dispatch still running after {t} s (WAIT_BO timed out)") from exc
                raise PimoeError(f"QPU dispatch failed: {exc}") from exc
            from pimoe.qpu import vdev

            self.last_counters = vdev.job_counters(self.dev.fd)    # emulator counts on the virtual device
            return self.last_counters

        return Job(wait)

    def execute(self, code, local_invocation=None, uniforms=None, timeout_sec: float = 10, workgroup=(1, 1, 1),
                wgs_per_sg=16, thread=1, propagate_nan=False, single_seg=False, threading=False, **kwargs):
        return self.submit(code, local_invocation, uniforms, workgroup=workgroup, wgs_per_sg=wgs_per_sg,
                           thread=thread, propagate_nan=propagate_nan, single_seg=single_seg, threading=threading,
                           timeout_sec=timeout_sec).wait()


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

    def submit(self, code, local_invocation=None, uniforms=None, workgroup=(1, 1, 1), wgs_per_sg=16, thread=1,
               timeout_sec=10, **kwargs) -> Job:
        """py-videocore6's dispatcher submits on dispatch() and waits (WAIT_BO) when its block ends."""
        csd = self._drv.compute_shader_dispatcher(timeout_sec)
        csd.__enter__()
        csd.dispatch(code, local_invocation=local_invocation or (16, 1, 1), uniforms=uniforms, workgroup=workgroup,
                     wgs_per_sg=wgs_per_sg, thread=thread, **kwargs)

        def wait(timeout):
            if timeout is not None:
                csd.timeout_sec = timeout
            csd.__exit__(None, None, None)
            return None

        return Job(wait)

    def __getattr__(self, name):
        return getattr(self._drv, name)


class _Virtual(_Closing):
    """A hardware-route driver over the virtual V3D device, which lives as long as the driver."""

    def __init__(self, make):
        from pimoe.qpu.vdev import virtual_v3d

        self._stack = contextlib.ExitStack()
        self.device = self._stack.enter_context(virtual_v3d())
        try:
            self._drv = make()
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        drv, self._drv = self.__dict__.get("_drv"), None
        if drv is not None:
            (drv.close if hasattr(drv, "close") else drv.__exit__)()
            self._stack.close()

    def __getattr__(self, name):
        drv = self.__dict__.get("_drv")
        if drv is None:
            raise AttributeError(name)
        return getattr(drv, name)


def _hardware_driver(client: str, kwargs):
    if client == "videocore6":
        return HardwareDriver(**kwargs)
    return V3DDriver(**kwargs)


def open_driver(kind: str = "auto", *, client: str | None = None, **kwargs):
    """A driver context manager: "emu" the emulator, "hw" the GPU (PimoeError if absent), "virtual" the
    hardware route over the virtual V3D device, "auto" the GPU when present else the emulator.
    kwargs: code_area_size, data_area_size."""
    if kind not in DRIVER_KINDS:
        raise PimoeError(f"driver {kind!r}: choose one of {', '.join(DRIVER_KINDS)}")
    if kind == "emu":
        return EmuDriver(**kwargs)
    name = qpu_client(client)
    if kind == "virtual":
        if name == "videocore6":
            ok, why = hardware_available(name)
            if not ok and "py-videocore6" in why:
                raise PimoeError(f"driver 'virtual' with client videocore6: {why}")
        return _Virtual(lambda: _hardware_driver(name, kwargs))
    ok, why = hardware_available(name)
    if kind == "hw":
        if not ok:
            raise PimoeError(f"driver 'hw' requested but the QPU hardware is not usable: {why}. Run on a "
                             f"Raspberry Pi 4 (see `pimoe doctor`), or use driver 'virtual' or 'emu'.")
        return _hardware_driver(name, kwargs)
    return _hardware_driver(name, kwargs) if ok else EmuDriver(**kwargs)
