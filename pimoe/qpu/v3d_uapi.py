"""pimoe's own client of the Linux v3d DRM UAPI (standard library only: os, fcntl, mmap, struct, ctypes).

This is what the hardware route talks to on a Raspberry Pi 4: the kernel's v3d driver through its render
node. It is pimoe's default client because a Pi user then needs nothing installed from git
(py-videocore6, the alternative, is not on the package index); `PIMOE_QPU_CLIENT=videocore6` selects
py-videocore6's Driver instead (see pimoe.qpu.driver).

    with V3DDevice() as dev:                      # /dev/dri/renderD* driven by "v3d"
        dev.identity()                            # V3D 4.2, 2 slices x 4 QPUs ... (GET_PARAM)
        handle, gpu_addr = dev.create_bo(1 << 20)
        buf = dev.map_bo(handle, 1 << 20)         # mmap of the render node at MMAP_BO's offset
        dev.submit_csd(CSDDispatch.for_launch(...).encode(), [handle])   # pimoe.qpu.emulator
        dev.wait_bo(handle, timeout_ns=10**9)     # OSError(ETIME) on timeout

Every ioctl number and struct layout below is the kernel's `include/uapi/drm/v3d_drm.h` and
`include/uapi/drm/drm.h` (asm-generic _IOC encoding, used by arm64 and x86-64 alike); the compute
dispatch's configuration words are pimoe.qpu.emulator.CSDDispatch's (Mesa's `broadcom/common/v3d_csd.h`).
Errors are the kernel's: an ioctl failure raises OSError with its errno (EINVAL, ENOENT, ETIME, ...).

Memory facts that matter for sizing (the kernel's drivers/gpu/drm/v3d/): buffer objects are shmem pages
behind the V3D MMU, not CMA; all BOs of the device share one 32-bit (4 GiB) GPU virtual address space;
a BO's pages are pinned while it exists; CREATE_BO places BOs at 128 KiB (GMP granularity) alignment.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import mmap
import os
import struct
import sys
from dataclasses import dataclass

# ---- ioctl numbers (asm-generic/ioctl.h) -------------------------------------------------------------
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("d") << 8) | nr


DRM_COMMAND_BASE = 0x40

# struct layouts, little-endian with the kernel's (natural) padding
GET_PARAM = struct.Struct("<IIQ")              # param, pad, value
CREATE_BO = struct.Struct("<IIII")             # size, flags, handle, offset
MMAP_BO = struct.Struct("<IIQ")                # handle, flags, offset
GET_BO_OFFSET = struct.Struct("<II")           # handle, offset
WAIT_BO = struct.Struct("<IIQ")                # handle, pad, timeout_ns
GEM_CLOSE = struct.Struct("<II")               # handle, pad
# cfg[7], coef[4], (4 bytes padding), bo_handles, bo_handle_count, in_sync, out_sync, perfmon_id,
# extensions, flags, pad
SUBMIT_CSD = struct.Struct("<7I4I4xQIIIIQII")
PERFMON_CREATE = struct.Struct("<II32B")       # id, ncounters, counters[32]
PERFMON_DESTROY = struct.Struct("<I")          # id
PERFMON_GET_VALUES = struct.Struct("<IIQ")     # id, pad, values_ptr

NR_GEM_CLOSE = 0x09
NR_WAIT_BO, NR_CREATE_BO, NR_MMAP_BO, NR_GET_PARAM, NR_GET_BO_OFFSET = (
    DRM_COMMAND_BASE + n for n in (0x01, 0x02, 0x03, 0x04, 0x05))
NR_SUBMIT_CSD = DRM_COMMAND_BASE + 0x07
NR_PERFMON_CREATE, NR_PERFMON_DESTROY, NR_PERFMON_GET_VALUES = (DRM_COMMAND_BASE + n for n in (0x08, 0x09, 0x0A))

IOCTL_GEM_CLOSE = _ioc(_IOC_WRITE, NR_GEM_CLOSE, GEM_CLOSE.size)
IOCTL_WAIT_BO = _ioc(_IOC_READ | _IOC_WRITE, NR_WAIT_BO, WAIT_BO.size)
IOCTL_CREATE_BO = _ioc(_IOC_READ | _IOC_WRITE, NR_CREATE_BO, CREATE_BO.size)
IOCTL_MMAP_BO = _ioc(_IOC_READ | _IOC_WRITE, NR_MMAP_BO, MMAP_BO.size)
IOCTL_GET_PARAM = _ioc(_IOC_READ | _IOC_WRITE, NR_GET_PARAM, GET_PARAM.size)
IOCTL_GET_BO_OFFSET = _ioc(_IOC_READ | _IOC_WRITE, NR_GET_BO_OFFSET, GET_BO_OFFSET.size)
IOCTL_SUBMIT_CSD = _ioc(_IOC_WRITE, NR_SUBMIT_CSD, SUBMIT_CSD.size)

# enum drm_v3d_param
(PARAM_V3D_UIFCFG, PARAM_V3D_HUB_IDENT1, PARAM_V3D_HUB_IDENT2, PARAM_V3D_HUB_IDENT3, PARAM_V3D_CORE0_IDENT0,
 PARAM_V3D_CORE0_IDENT1, PARAM_V3D_CORE0_IDENT2, PARAM_SUPPORTS_TFU, PARAM_SUPPORTS_CSD,
 PARAM_SUPPORTS_CACHE_FLUSH, PARAM_SUPPORTS_PERFMON, PARAM_SUPPORTS_MULTISYNC_EXT,
 PARAM_SUPPORTS_CPU_QUEUE) = range(13)

GPU_VA_SIZE = 1 << 32          # one 32-bit GPU virtual address space for all BOs of the device
BO_ALIGN = 128 << 10           # CREATE_BO places BOs at GMP granularity (v3d_bo.c: GMP_GRANULARITY)
PAGE = 4096

# ---- identity ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class V3DIdentity:
    ident0: int
    ident1: int
    ident2: int
    hub_ident1: int
    hub_ident3: int
    supports_csd: bool

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor) as Mesa's v3d_get_device_info reads them: IDENT0[31:24], IDENT1[3:0]."""
        return (self.ident0 >> 24) & 0xFF, self.ident1 & 0xF

    @property
    def slices(self) -> int:
        return (self.ident1 >> 4) & 0xF

    @property
    def qpus_per_slice(self) -> int:
        return (self.ident1 >> 8) & 0xF

    @property
    def qpus(self) -> int:
        return self.slices * self.qpus_per_slice

    def describe(self) -> str:
        major, minor = self.version
        return (f"V3D {major}.{minor}, {self.slices} slices x {self.qpus_per_slice} QPUs = {self.qpus} QPUs, "
                f"CSD {'yes' if self.supports_csd else 'no'} (IDENT0 0x{self.ident0:08x} IDENT1 0x{self.ident1:08x})")


# ---- finding the device --------------------------------------------------------------------------------
def _driver_of(node: str) -> str | None:
    link = f"/sys/class/drm/{os.path.basename(node)}/device/driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def find_render_node() -> str | None:
    """The render node driven by v3d (/dev/dri/renderD*), or None (the virtual device's node while one is
    active in this process: pimoe.qpu.vdev). The v3d node is usually renderD128
    on a Pi 4 (vc4, the display driver, has no render node); when sysfs does not say which driver owns a
    node, the first render node is taken."""
    vdev = sys.modules.get("pimoe.qpu.vdev")
    if vdev is not None and vdev.current() is not None:
        return vdev.RENDER_NODE
    nodes = sorted(glob.glob("/dev/dri/renderD*"))
    for node in nodes:
        if _driver_of(node) == "v3d":
            return node
    for node in nodes:
        if _driver_of(node) is None:
            return node
    return None


class V3DDevice:
    """An open v3d DRM file: the ioctls a compute client needs, one method each."""

    def __init__(self, path: str | None = None):
        path = path or find_render_node()
        if path is None:
            raise FileNotFoundError(errno.ENOENT, "no V3D render node (/dev/dri/renderD*)")
        self.path = path
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _ioctl(self, request: int, layout: struct.Struct, *values) -> tuple:
        import fcntl

        if self.fd is None:
            raise ValueError("the V3D device is closed")
        buf = bytearray(layout.pack(*values))
        fcntl.ioctl(self.fd, request, buf, True)
        return layout.unpack(buf)

    def get_param(self, param: int) -> int:
        return self._ioctl(IOCTL_GET_PARAM, GET_PARAM, param, 0, 0)[2]

    def identity(self) -> V3DIdentity:
        g = self.get_param
        try:
            csd = bool(g(PARAM_SUPPORTS_CSD))
        except OSError:
            csd = False
        return V3DIdentity(g(PARAM_V3D_CORE0_IDENT0), g(PARAM_V3D_CORE0_IDENT1), g(PARAM_V3D_CORE0_IDENT2),
                           g(PARAM_V3D_HUB_IDENT1), g(PARAM_V3D_HUB_IDENT3), csd)

    def create_bo(self, size: int, flags: int = 0) -> tuple[int, int]:
        """(GEM handle, GPU address) of a new zero-filled buffer object of `size` bytes."""
        _, _, handle, offset = self._ioctl(IOCTL_CREATE_BO, CREATE_BO, int(size), flags, 0, 0)
        return handle, offset

    def bo_offset(self, handle: int) -> int:
        return self._ioctl(IOCTL_GET_BO_OFFSET, GET_BO_OFFSET, handle, 0)[1]

    def mmap_offset(self, handle: int) -> int:
        return self._ioctl(IOCTL_MMAP_BO, MMAP_BO, handle, 0, 0)[2]

    def map_bo(self, handle: int, size: int) -> mmap.mmap:
        """The BO's pages mapped into this process (shared, read/write; uncached on a Pi)."""
        return mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                         offset=self.mmap_offset(handle))

    def gem_close(self, handle: int) -> None:
        self._ioctl(IOCTL_GEM_CLOSE, GEM_CLOSE, handle, 0)

    def submit_csd(self, cfg, bo_handles, *, in_sync: int = 0, out_sync: int = 0, perfmon_id: int = 0) -> None:
        """Queue one compute dispatch; returns at once (the job runs on the GPU). `cfg`: the 7 words."""
        handles = (ctypes.c_uint32 * max(1, len(bo_handles)))(*bo_handles)
        cfg = [int(v) & 0xFFFFFFFF for v in cfg]
        if len(cfg) != 7:
            raise ValueError(f"SUBMIT_CSD takes 7 configuration words, got {len(cfg)}")
        self._ioctl(IOCTL_SUBMIT_CSD, SUBMIT_CSD, *cfg, 0, 0, 0, 0, ctypes.addressof(handles), len(bo_handles),
                    in_sync, out_sync, perfmon_id, 0, 0, 0)

    def wait_bo(self, handle: int, timeout_ns: int) -> None:
        """Block until the last job using the BO is done; OSError(ETIME) when `timeout_ns` runs out."""
        self._ioctl(IOCTL_WAIT_BO, WAIT_BO, handle, 0, int(timeout_ns))
