"""A virtual V3D device: the Linux v3d DRM UAPI, as a compute client uses it, served by pimoe's emulator.

    from pimoe.qpu.vdev import virtual_v3d
    with virtual_v3d() as dev:                    # in this process, until the block ends:
        fd = os.open("/dev/dri/renderD128", os.O_RDWR)      # ... is the virtual device
        fcntl.ioctl(fd, IOCTL_V3D_CREATE_BO, arg)           # ioctls on it go to `dev`
        mmap.mmap(fd, size, offset=mmap_offset)             # and so do mappings of its BOs

Inside the block `os.open` of the V3D device nodes (/dev/dri/renderD128 and py-videocore6's
/dev/dri/by-path/platform-fec00000.v3d-card), `os.close`, `fcntl.ioctl` and `mmap.mmap` on the returned
descriptor go to the virtual device; everything else passes through unchanged. Names already bound
elsewhere (`from fcntl import ioctl`, `from mmap import mmap`) are patched too, so an unmodified UAPI
client runs over the emulator: pimoe's own (pimoe.qpu.v3d_uapi) and py-videocore6's Driver.

What it serves (the kernel's include/uapi/drm/v3d_drm.h and drivers/gpu/drm/v3d/, errno as the kernel
returns them):
- GET_PARAM: the V3D 4.2 identity registers Mesa's drm-shim reports for a Pi 4 (src/broadcom/drm-shim/
  v3d_noop.c: IDENT0 0x04443356, IDENT1 0x81001422 = 2 slices x 4 QPUs, ...), SUPPORTS_CSD/TFU/
  CACHE_FLUSH = 1; PERFMON, MULTISYNC_EXT and CPU_QUEUE = 0 (not served here); pad or value != 0 or an
  unknown parameter -> EINVAL.
- CREATE_BO: zero-filled BOs in one 32-bit GPU address space shared by every open file (the v3d MMU has
  one page table), 128 KiB aligned; flags != 0 or size 0 -> EINVAL; no room -> ENOSPC. The virtual
  address space starts at the emulator's bus base (0x10000000), so 3.75 of the 4 GiB are usable here;
  its first page is the MMU's scratch page, never a BO.
- GET_BO_OFFSET, MMAP_BO (unknown handle -> ENOENT), GEM_CLOSE (unknown handle -> EINVAL).
- SUBMIT_CSD: the 7 configuration words decoded as the hardware does (pimoe.qpu.emulator.CSDDispatch), the
  job queued and run by the emulator (pimoe.qpu.emulator.run_csd) on a worker thread, in submission order;
  bad pad/flags, no BOs -> EINVAL, unknown BO handle, sync object or perfmon -> ENOENT (the virtual device
  has no sync objects). Neither pimoe nor py-videocore6 uses PERFMON: its ioctls are not served (EINVAL,
  as for an ioctl number the driver lacks) and GET_PARAM says SUPPORTS_PERFMON = 0.
- The MMU: the BOs are the only mapped pages of the address space (page-rounded, 128 KiB apart); a QPU
  access anywhere else goes to the scratch page, as the v3d MMU sends it there (run_csd with
  check_addresses=False), and is logged like the kernel's "MMU error" and counted (`VirtualV3D.mmu_faults`).
- WAIT_BO: waits for the last job that used the BO, its timeout judged as the hardware would: in Pi 4 time.
  The device keeps a GPU clock: host time, minus the time clients spent blocked waiting for the emulator
  (which is much slower than the QPUs), plus the Pi 4 time the emulator predicts for each job
  (pimoe.qpu.timing). A job finishes at start + predicted time, starting at its submission or when the
  job before it finishes; WAIT_BO returns when that is within the timeout, else ETIME (the kernel's code;
  timeout_ns written back as what is left). The host's own budget is separate: a job may emulate for
  `job_timeout` host seconds, so a slow host never turns into ETIME for a job that finishes in time on a
  Pi. A job longer than `gpu_timeout` seconds of predicted Pi 4 time, or one the emulator stops with a
  fault (an invalid instruction, a runaway program), makes WAIT_BO fail with EIO (the real GPU would hang
  until the kernel resets it; the fault is logged to the "pimoe.qpu.vdev" logger and kept in
  `VirtualV3D.faults`).

- /dev/mem (what py-videocore6's RegisterMapping maps): opening it gives a descriptor on which an mmap of
  the V3D register windows (physical 0xFEC00000 hub, 0xFEC04000 core 0, 16 KiB each) maps memory the
  device keeps as the registers: the identity registers hold V3D42_REGISTERS (the values GET_PARAM
  returns), and the performance counters count the V3D clock and each job's predicted cycles (the
  sources modelled and how: pimoe.qpu.vdev_regs). Any other range -> EPERM, as a STRICT_DEVMEM kernel.

BO memory is one memfd: the client's mappings and the emulator's memory are the same pages.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import queue
import struct
import sys
import threading
import time

from pimoe.qpu import v3d_uapi as U
from pimoe.qpu import vdev_regs
from pimoe.qpu.emulator import BUS_BASE, CSDDispatch, DriverError, GPUMemory, run_csd

log = logging.getLogger("pimoe.qpu.vdev")

RENDER_NODE = "/dev/dri/renderD128"
DEVICE_PATHS = (RENDER_NODE, "/dev/dri/by-path/platform-fec00000.v3d-card",
                "/dev/dri/by-path/platform-fec00000.v3d-render")

# V3D 4.2 identity registers as Mesa's drm-shim serves them for the Pi 4 (src/broadcom/drm-shim/v3d_noop.c)
V3D42_REGISTERS = {
    U.PARAM_V3D_UIFCFG: 0x00000045,
    U.PARAM_V3D_HUB_IDENT1: 0x000E1124,
    U.PARAM_V3D_HUB_IDENT2: 0x00000100,
    U.PARAM_V3D_HUB_IDENT3: 0x00000E00,
    U.PARAM_V3D_CORE0_IDENT0: 0x04443356,
    U.PARAM_V3D_CORE0_IDENT1: 0x81001422,
    U.PARAM_V3D_CORE0_IDENT2: 0x40078121,
}
V3D_FEATURES = {U.PARAM_SUPPORTS_TFU: 1, U.PARAM_SUPPORTS_CSD: 1, U.PARAM_SUPPORTS_CACHE_FLUSH: 1,
                U.PARAM_SUPPORTS_PERFMON: 0, U.PARAM_SUPPORTS_MULTISYNC_EXT: 0, U.PARAM_SUPPORTS_CPU_QUEUE: 0}
MMAP_OFFSET_BASE = 1 << 32          # DRM's fake mmap offsets start above 4 GiB (DRM_FILE_PAGE_OFFSET_START)
DEFAULT_JOB_TIMEOUT = 600.0         # host seconds a job may emulate before the device counts it hung
# predicted Pi 4 seconds a job may run before the device counts it hung (the kernel resets a CSD job that
# stops making progress; pv6's 1024^3 sgemm takes 0.55 s on a Pi 4)
DEFAULT_GPU_TIMEOUT = 60.0
SUBMIT_FLAG_EXTENSION = 0x02


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f" ({what})" if what else ""))


class BO:
    __slots__ = ("addr", "size", "last_job", "handle_count")

    def __init__(self, addr: int, size: int):
        self.addr, self.size, self.last_job, self.handle_count = addr, size, None, 0


class Job:
    """One SUBMIT_CSD: done (an Event); after it the emulator's counters or the fault, and the job's place
    on the device's GPU clock (gpu_start, gpu_end: seconds; gpu_end - gpu_start = its predicted Pi 4 time)."""

    def __init__(self, dispatch: CSDDispatch, bos: list[BO], file: "VirtualFile", submitted_gpu: float):
        self.dispatch, self.bos, self.file = dispatch, bos, file
        self.done = threading.Event()
        self.counters = None
        self.fault: str | None = None
        self.submitted_gpu = submitted_gpu
        self.gpu_start = self.gpu_end = submitted_gpu
        self.predicted = 0.0          # Pi 4 seconds (pimoe.qpu.timing)
        self.seconds = 0.0            # host seconds the emulation took


class VirtualFile:
    """One open DRM file: its GEM handles."""

    def __init__(self, dev: "VirtualV3D", fd: int):
        self.dev, self.fd = dev, fd
        self.handles: dict[int, BO] = {}
        self.next_handle = 1
        self.last_job: Job | None = None


class _DeviceMemory(GPUMemory):
    """The emulator's GPU address space over the device's memfd: a new BO's pages are dropped (they read
    as zero, like fresh shmem pages) instead of written."""

    def __init__(self, size: int, base: int, mapping: mmap.mmap):
        super().__init__(size, base=base, buffer=mapping)
        self._mapping = mapping

    def _zero(self, addr: int, nbytes: int) -> None:
        self._mapping.madvise(mmap.MADV_REMOVE, addr - self.base, nbytes)


class VirtualV3D:
    """The device: GPU address space (pimoe.qpu.emulator.GPUMemory), BOs, the CSD job queue run by
    pimoe.qpu.emulator.run_csd, and the GPU clock WAIT_BO's timeouts are judged by."""

    def __init__(self, job_timeout: float = DEFAULT_JOB_TIMEOUT, gpu_timeout: float = DEFAULT_GPU_TIMEOUT):
        self.base = BUS_BASE
        self.size = U.GPU_VA_SIZE - BUS_BASE
        self.job_timeout = float(job_timeout)
        self.gpu_timeout = float(gpu_timeout)
        self.memfd = os.memfd_create("pimoe-v3d", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, self.size)
        self._map = _ORIG["mmap"](self.memfd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.gpu = _DeviceMemory(self.size, self.base, self._map)
        self.memory = self.gpu.memory
        self.bos: dict[int, BO] = {}                  # by address
        self.files: dict[int, VirtualFile] = {}
        self.faults: list[str] = []
        self.mmu_faults = 0                           # accesses the MMU sent to the scratch page
        self.jobs_run = 0
        # (predicted Pi 4 seconds, host seconds emulating, fault or None) of the last jobs, oldest first
        self.job_log: collections.deque = collections.deque(maxlen=1000)
        self._lock = threading.RLock()
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stalled = 0.0                           # host seconds clients waited for the emulator
        self._waiting: list[float] = []               # GPU clock at the start of each wait in progress
        self._gpu_busy_until = 0.0                    # GPU clock: when the last finished job ended
        self.regs: vdev_regs.V3DRegisters | None = None   # the /dev/mem register windows, once opened

    # ---- the GPU clock -------------------------------------------------------------------------------
    def gpu_now(self) -> float:
        """Seconds on the device's GPU clock: host time minus the time clients spent waiting for the emulator
        beyond the Pi 4 time of what they waited for. It stands still while a client waits (it moves on by
        the Pi 4 time when the wait ends), so it never runs backwards."""
        now = _host_monotonic() - self._stalled
        waiting = tuple(self._waiting)   # a snapshot: any thread's time call lands here, unlocked
        return min(now, min(waiting)) if waiting else now

    def registers(self) -> vdev_regs.V3DRegisters:
        """The register windows /dev/mem maps (made on first use); identity = GET_PARAM's values."""
        with self._lock:
            if self.regs is None:
                identity = {vdev_regs.PARAM_REGISTER[p]: v for p, v in V3D42_REGISTERS.items()}
                self.regs = vdev_regs.V3DRegisters(identity, self.gpu_now)
            return self.regs

    # ---- address space ------------------------------------------------------------------------------
    def mapped_bytes(self) -> int:
        return sum(hi - lo for lo, hi in self.gpu.regions())

    # ---- files ---------------------------------------------------------------------------------------
    def open_file(self, fd: int) -> VirtualFile:
        with self._lock:
            f = VirtualFile(self, fd)
            self.files[fd] = f
            return f

    def close_file(self, fd: int) -> None:
        with self._lock:
            f = self.files.pop(fd, None)
            if f is not None:
                for handle in list(f.handles):
                    self._gem_close(f, handle)

    def _gem_close(self, f: VirtualFile, handle: int) -> None:
        bo = f.handles.pop(handle, None)
        if bo is None:
            raise _err(errno.EINVAL, f"GEM handle {handle}")
        bo.handle_count -= 1
        if bo.handle_count == 0:
            self.bos.pop(bo.addr, None)
            # the pages stay in use while a job that uses them runs (the kernel holds a reference)
            job = bo.last_job
            if job is not None and not job.done.is_set():
                threading.Thread(target=lambda: (job.done.wait(), self._free_bo(bo)), daemon=True).start()
            else:
                self._free_bo(bo)

    def _free_bo(self, bo: BO) -> None:
        with self._lock:
            if self.gpu is not None:
                self.gpu.free(bo.addr)

    def _lookup(self, f: VirtualFile, handle: int, code: int = errno.ENOENT) -> BO:
        bo = f.handles.get(handle)
        if bo is None:
            raise _err(code, f"no GEM handle {handle}")
        return bo

    def bo_at_mmap_offset(self, offset: int, length: int) -> BO:
        with self._lock:
            bo = self.bos.get(offset - MMAP_OFFSET_BASE + self.base)
            if bo is None or length > bo.size:
                raise _err(errno.EINVAL, f"mmap offset 0x{offset:x} length {length}")
            return bo

    # ---- ioctls ----------------------------------------------------------------------------------------
    def ioctl(self, f: VirtualFile, request: int, data: bytearray) -> bytearray:
        """`data` holds the kernel-sized struct (zero-extended); returns it updated."""
        nr = request & 0xFF
        if self.regs is not None:         # register stores the client made before this call take effect
            self.regs.refresh()
        with self._lock:
            if nr == U.NR_GET_PARAM:
                param, pad, value = U.GET_PARAM.unpack_from(data)
                if pad:
                    raise _err(errno.EINVAL, "pad")
                if param in V3D42_REGISTERS:
                    if value:
                        raise _err(errno.EINVAL, "value must be 0")
                    value = V3D42_REGISTERS[param]
                elif param in V3D_FEATURES:
                    value = V3D_FEATURES[param]
                else:
                    raise _err(errno.EINVAL, f"unknown parameter {param}")
                U.GET_PARAM.pack_into(data, 0, param, pad, value)
            elif nr == U.NR_CREATE_BO:
                size, flags, _, _ = U.CREATE_BO.unpack_from(data)
                if flags or size == 0:
                    raise _err(errno.EINVAL, "flags must be 0 and size > 0")
                size = -(-size // U.PAGE) * U.PAGE
                try:
                    addr = self.gpu.alloc(size, align=U.BO_ALIGN)
                except DriverError:
                    raise _err(errno.ENOSPC, f"no {size} bytes of GPU address space left") from None
                bo = BO(addr, size)
                bo.handle_count = 1
                self.bos[addr] = bo
                handle = f.next_handle
                f.next_handle += 1
                f.handles[handle] = bo
                U.CREATE_BO.pack_into(data, 0, size, flags, handle, addr)
            elif nr == U.NR_GET_BO_OFFSET:
                handle, _ = U.GET_BO_OFFSET.unpack_from(data)
                U.GET_BO_OFFSET.pack_into(data, 0, handle, self._lookup(f, handle).addr)
            elif nr == U.NR_MMAP_BO:
                handle, flags, _ = U.MMAP_BO.unpack_from(data)
                if flags:
                    raise _err(errno.EINVAL, "flags must be 0")
                bo = self._lookup(f, handle)
                U.MMAP_BO.pack_into(data, 0, handle, flags, MMAP_OFFSET_BASE + bo.addr - self.base)
            elif nr == U.NR_GEM_CLOSE:
                handle, _ = U.GEM_CLOSE.unpack_from(data)
                self._gem_close(f, handle)
            elif nr == U.NR_SUBMIT_CSD:
                self._submit_csd(f, data)
            elif nr == U.NR_WAIT_BO:
                handle, pad, timeout_ns = U.WAIT_BO.unpack_from(data)
                if pad:
                    raise _err(errno.EINVAL, "pad")
                job = self._lookup(f, handle, errno.EINVAL).last_job
            else:
                raise _err(errno.EINVAL, f"ioctl nr 0x{nr:02x} is not served by the virtual V3D device")
        if nr == U.NR_WAIT_BO:          # outside the lock: the worker must be able to finish the job
            self._wait_bo(handle, job, timeout_ns, data)
        return data

    def _wait_bo(self, handle: int, job: Job | None, timeout_ns: int, data: bytearray) -> None:
        """WAIT_BO judged on the GPU clock: block (host time) until the emulator has run the job, then
        return as a Pi 4 would have, `timeout_ns` after the call at the latest."""
        with self._lock:
            waited_from = self.gpu_now()
            host_start = _host_monotonic()
            self._waiting.append(waited_from)
        try:
            if job is not None:
                job.done.wait()   # bounded: the worker gives up on a job after job_timeout host seconds
        finally:
            with self._lock:      # the client's time blocked beyond what a Pi would take leaves the clock
                host = _host_monotonic() - host_start
                timeout = timeout_ns / 1e9
                pi_wait = 0.0 if job is None else max(0.0, job.gpu_end - waited_from)   # how long a Pi waits
                finished = pi_wait <= timeout
                self._stalled += host - (pi_wait if finished else timeout)
                self._waiting.remove(waited_from)
            if self.regs is not None:     # the counters see the GPU clock's step at once
                self.regs.refresh()
        left = max(0, timeout_ns - int(pi_wait * 1e9)) if finished else 0
        U.WAIT_BO.pack_into(data, 0, handle, 0, left)
        if job is not None and job.fault is not None:
            raise _err(errno.EIO, f"the job using BO {handle} faulted: {job.fault}")
        if not finished:
            raise _err(errno.ETIME, f"BO {handle}: job still running after {timeout_ns} ns on the GPU clock "
                                    f"(its predicted Pi 4 time is {job.predicted * 1e3:.3g} ms)")

    def _submit_csd(self, f: VirtualFile, data: bytearray) -> None:
        v = U.SUBMIT_CSD.unpack_from(data)
        cfg_words, ptr, count, in_sync, out_sync, perfmon, extensions, flags, pad = v[:7], *v[11:]
        if pad or flags & ~SUBMIT_FLAG_EXTENSION:
            raise _err(errno.EINVAL, "pad / flags")
        if flags & SUBMIT_FLAG_EXTENSION or extensions:
            raise _err(errno.EINVAL, "ioctl extensions are not served by the virtual device")
        if count == 0:
            raise _err(errno.EINVAL, "a job needs at least one BO")
        if ptr == 0:
            raise _err(errno.EFAULT, "bo_handles is NULL")
        handles = struct.unpack(f"<{count}I", ctypes.string_at(ptr, 4 * count))
        bos = [self._lookup(f, h) for h in handles]
        for what, value in (("in_sync", in_sync), ("out_sync", out_sync), ("perfmon_id", perfmon)):
            if value:
                raise _err(errno.ENOENT, f"{what} {value}: the virtual device has none")
        job = Job(CSDDispatch.decode(cfg_words), bos, f, self.gpu_now())
        for bo in bos:
            bo.last_job = job
        f.last_job = job
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_jobs, name="pimoe-vdev-csd", daemon=True)
            self._worker.start()
        self._queue.put(job)

    # ---- the CSD queue -----------------------------------------------------------------------------------
    def _run_jobs(self) -> None:
        from pimoe.qpu.timing import PI4, predict

        while True:
            job = self._queue.get()
            if job is None:
                return
            start = _host_monotonic()
            try:
                job.counters = run_csd(self.gpu, job.dispatch, check_addresses=False, timeout_sec=self.gpu_timeout,
                                       host_timeout_sec=self.job_timeout)
                job.predicted = float(predict(job.counters).seconds)
                if self.regs is not None:
                    self.regs.add_job(job.counters, job.predicted, PI4.cycles_per_instruction)
                if job.counters.scratch_accesses:
                    self.mmu_faults += job.counters.scratch_accesses
                    log.warning("v3d (virtual): MMU error: %d accesses outside every BO went to the scratch "
                                "page", job.counters.scratch_accesses)
            except Exception as exc:      # a QPU fault, or a dispatch the emulator refuses
                job.fault = str(exc)
                self.faults.append(job.fault)
                log.error("v3d (virtual): CSD job faulted: %s", job.fault)
            job.seconds = _host_monotonic() - start
            job.gpu_start = max(job.submitted_gpu, self._gpu_busy_until)
            job.gpu_end = self._gpu_busy_until = job.gpu_start + job.predicted
            self.jobs_run += 1
            self.job_log.append((job.predicted, job.seconds, job.fault))
            job.done.set()

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has run."""
        with self._lock:
            jobs = [f.last_job for f in self.files.values() if f.last_job is not None]
        return all(j.done.wait(timeout) for j in jobs)

    def shutdown(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=self.job_timeout)
        if self.regs is not None:
            self.regs.close()
        with self._lock:
            self.memory = self.gpu = None
        try:
            self._map.close()
        except BufferError:          # a client still holds a view of the pages: leave them to the GC
            pass
        os.close(self.memfd)


# ---- the patches ---------------------------------------------------------------------------------------
_ORIG = {"open": os.open, "close": os.close, "ioctl": fcntl.ioctl, "mmap": mmap.mmap}
_state = {"dev": None, "depth": 0}
_files: dict[int, VirtualFile] = {}
_devmem: dict[int, vdev_regs.V3DRegisters] = {}     # open /dev/mem descriptors inside the block: their windows


def current() -> VirtualV3D | None:
    """The active virtual device, or None."""
    return _state["dev"]


def is_virtual_fd(fd) -> bool:
    return isinstance(fd, int) and fd in _files


def job_counters(fd: int):
    """EmuCounters of the last finished job submitted on this (virtual) file, else None."""
    f = _files.get(fd)
    job = f.last_job if f is not None else None
    return job.counters if job is not None and job.done.is_set() else None


def _open(path, flags, mode=0o777, *, dir_fd=None):
    dev = _state["dev"]
    if dev is not None and dir_fd is None and os.fspath(path) in DEVICE_PATHS:
        fd = _ORIG["open"](os.devnull, os.O_RDWR | (flags & os.O_CLOEXEC))
        _files[fd] = dev.open_file(fd)
        return fd
    if dev is not None and dir_fd is None and os.fspath(path) == vdev_regs.DEVMEM_PATH:
        fd = _ORIG["open"](os.devnull, os.O_RDWR | (flags & os.O_CLOEXEC))
        _devmem[fd] = dev.registers()
        return fd
    if dir_fd is None:
        return _ORIG["open"](path, flags, mode)
    return _ORIG["open"](path, flags, mode, dir_fd=dir_fd)


def _close(fd):
    f = _files.pop(fd, None) if isinstance(fd, int) else None
    if f is not None:
        f.dev.close_file(fd)
    elif isinstance(fd, int):
        _devmem.pop(fd, None)
    return _ORIG["close"](fd)


def _ioctl(fd, request, arg=0, mutate_flag=True):
    fdn = fd if isinstance(fd, int) else (fd.fileno() if hasattr(fd, "fileno") else fd)
    f = _files.get(fdn) if isinstance(fdn, int) else None
    if f is None:
        return _ORIG["ioctl"](fd, request, arg, mutate_flag)
    request &= 0xFFFFFFFF
    if (request >> 8) & 0xFF != ord("d"):
        raise _err(errno.ENOTTY)
    direction, usize = request >> 30, (request >> 16) & 0x3FFF
    ksize = _KERNEL_SIZE.get(request & 0xFF)
    if ksize is None:
        raise _err(errno.EINVAL, f"ioctl nr 0x{request & 0xFF:02x}")
    if isinstance(arg, int):
        raise _err(errno.EFAULT, "an integer argument is not a struct")
    immutable = isinstance(arg, (bytes, str))
    raw = arg.encode() if isinstance(arg, str) else arg
    view = memoryview(raw).cast("B")
    if len(view) < usize:
        raise _err(errno.EFAULT, f"argument of {len(view)} bytes, the ioctl copies {usize}")
    data = bytearray(max(ksize, usize))
    if direction & U._IOC_WRITE:
        data[:usize] = view[:usize]
    f.dev.ioctl(f, request, data)
    out = bytes(data[:min(usize, ksize)]) if direction & U._IOC_READ else b""
    if immutable or not mutate_flag:          # fcntl's contract: a copy of the buffer with the result
        result = bytearray(view)
        result[:len(out)] = out
        return bytes(result)
    if out:
        view[:len(out)] = out
    return 0


_KERNEL_SIZE = {U.NR_GET_PARAM: U.GET_PARAM.size, U.NR_CREATE_BO: U.CREATE_BO.size, U.NR_MMAP_BO: U.MMAP_BO.size,
                U.NR_GET_BO_OFFSET: U.GET_BO_OFFSET.size, U.NR_WAIT_BO: U.WAIT_BO.size,
                U.NR_GEM_CLOSE: U.GEM_CLOSE.size, U.NR_SUBMIT_CSD: U.SUBMIT_CSD.size}


class _mmap(mmap.mmap):
    """mmap.mmap that maps a virtual V3D file's BO (at its MMAP_BO offset) onto the device's memfd, and a
    /dev/mem register window onto the register memfd."""

    def __new__(cls, fileno, length, *args, **kwargs):
        f = _files.get(fileno) if isinstance(fileno, int) else None
        regs = _devmem.get(fileno) if f is None and isinstance(fileno, int) else None
        if f is None and regs is None:
            return super().__new__(cls, fileno, length, *args, **kwargs)
        offset = kwargs.pop("offset", 0)
        if len(args) >= 4:
            offset, args = args[3], args[:3]
        if regs is not None:
            at = regs.map_offset(int(offset), int(length))
            window = super().__new__(cls, regs.memfd, length, *args, offset=at, **kwargs)
            regs.track(window)
            return window
        bo = f.dev.bo_at_mmap_offset(int(offset), int(length))
        return super().__new__(cls, f.dev.memfd, length, *args, offset=bo.addr - f.dev.base, **kwargs)


_REPLACEMENTS = {"open": _open, "close": _close, "ioctl": _ioctl, "mmap": _mmap}

# ---- the Pi 4 clock (virtual_v3d(pi_clock=True)) --------------------------------------------------------
_host_monotonic = time.monotonic
_CLOCKS = {"time": time.time, "time_ns": time.time_ns, "monotonic": time.monotonic,
           "monotonic_ns": time.monotonic_ns, "perf_counter": time.perf_counter,
           "perf_counter_ns": time.perf_counter_ns, "clock_gettime": time.clock_gettime,
           "clock_gettime_ns": time.clock_gettime_ns}
# the clock ids of clock_gettime that tell elapsed time (py-videocore6's sgemm.py times with CLOCK_MONOTONIC);
# CPU-time clocks stay the host's
_ELAPSED_CLOCK_IDS = {getattr(time, n) for n in ("CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_MONOTONIC_RAW",
                                                 "CLOCK_BOOTTIME", "CLOCK_TAI") if hasattr(time, n)}


def _lag() -> float:
    """Seconds the GPU clock is behind the host's, for the calling thread (0 on the device's own threads:
    the emulator's budgets are host time)."""
    dev = _state["dev"]
    if dev is None or threading.current_thread().name.startswith("pimoe-vdev"):
        return 0.0
    return _host_monotonic() - dev.gpu_now()


def _pi_clock(name: str):
    orig = _CLOCKS[name]
    if name.startswith("clock_gettime"):
        scale, kind = (1e9, int) if name.endswith("_ns") else (1.0, float)
        return lambda clk_id: orig(clk_id) - (kind(_lag() * scale) if clk_id in _ELAPSED_CLOCK_IDS else 0)
    if name.endswith("_ns"):
        return lambda: orig() - int(_lag() * 1e9)
    return lambda: orig() - _lag()


_PI_CLOCK = {name: _pi_clock(name) for name in _CLOCKS}


def _patch_all(table: dict) -> list:
    """Point every module-level name bound to an original at its replacement; returns what to undo."""
    undo = []
    by_id = {id(_ORIG[k]): (k, table[k]) for k in table}
    for name, mod in list(sys.modules.items()):
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict) or mod is sys.modules[__name__]:
            continue
        for attr, value in list(d.items()):
            hit = by_id.get(id(value))
            if hit is not None and value is _ORIG[hit[0]]:
                d[attr] = hit[1]
                undo.append((d, attr, value))
    return undo


@contextlib.contextmanager
def virtual_v3d(job_timeout: float = DEFAULT_JOB_TIMEOUT, gpu_timeout: float = DEFAULT_GPU_TIMEOUT,
                pi_clock: bool = False):
    """In this process, for the duration of the block, the V3D device nodes are a virtual V3D 4.2 served
    by the emulator. Re-entrant: a nested block shares the outer device. job_timeout: host seconds a job
    may emulate; gpu_timeout: predicted Pi 4 seconds it may run (past either, WAIT_BO fails with EIO).

    pi_clock=True: the time module's time/monotonic/perf_counter (and _ns forms), and clock_gettime(_ns) for
    the elapsed-time clock ids (_ELAPSED_CLOCK_IDS; CPU-time clocks stay the host's), read the device's GPU
    clock in every thread but the device's own, so a client that times its dispatches (py-videocore6's examples
    print MB/s, its test_parallel_16 compares two dispatches' wall time) sees the emulator's PREDICTED
    Pi 4 time for the GPU's part, and this host's own time for its CPU part."""
    if _state["dev"] is not None:
        _state["depth"] += 1
        try:
            yield _state["dev"]
        finally:
            _state["depth"] -= 1
        return
    dev = VirtualV3D(job_timeout=job_timeout, gpu_timeout=gpu_timeout)
    _state["dev"], _state["depth"] = dev, 1
    table = dict(_REPLACEMENTS)
    undo = _patch_all(table)
    if pi_clock:          # the time module's own functions only: the standard library's timeouts keep host time
        for name, fn in _PI_CLOCK.items():
            undo.append((time.__dict__, name, _CLOCKS[name]))
            table[name] = fn
            setattr(time, name, fn)
    try:
        yield dev
    finally:
        for fd in [fd for fd, f in _files.items() if f.dev is dev]:
            _files.pop(fd, None)
            with contextlib.suppress(OSError):
                _ORIG["close"](fd)
        for fd in [fd for fd, regs in _devmem.items() if regs is dev.regs]:
            _devmem.pop(fd, None)
            with contextlib.suppress(OSError):
                _ORIG["close"](fd)
        for d, attr, value in undo:
            if d.get(attr) is table.get(_name_of(value)):
                d[attr] = value
        _state["dev"], _state["depth"] = None, 0
        dev.shutdown()


def _name_of(value) -> str | None:
    for k, v in {**_ORIG, **_CLOCKS}.items():
        if v is value:
            return k
    return None
