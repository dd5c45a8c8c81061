"""The V3D register windows of /dev/mem, as the virtual V3D device (pimoe.qpu.vdev) serves them.

On a Pi 4 the V3D's registers sit at physical 0xFEC00000 (the hub, 16 KiB) and 0xFEC04000 (core 0,
16 KiB); a root process can map them through /dev/mem and read and write them with plain 32-bit loads
and stores (py-videocore6's RegisterMapping does, for its identity test and its performance counters).
Inside pimoe.qpu.vdev.virtual_v3d() those two windows are pages of memory (a memfd) that the device keeps
as the hardware would, since a load or store on a mapping cannot be intercepted:

- Identity registers (offsets from the kernel's drivers/gpu/drm/v3d/v3d_regs.h): hub UIFCFG 0x04,
  IDENT1 0x0C, IDENT2 0x10, IDENT3 0x14 and core CTL_IDENT0..2 0x00/0x04/0x08 hold the values GET_PARAM
  returns (pimoe.qpu.vdev.V3D42_REGISTERS, the one table; the kernel's GET_PARAM reads these registers).
  HUB_IDENT0 (0x08) has no GET_PARAM and no published Pi 4 value: it reads 0 here. A store to an identity
  register is undone (they are read-only).
- Performance counters of core 0 (v3d_regs.h; the kernel's v3d_perfmon.c programs them the same way):
  PCTR_0_EN 0x650 (bit i enables counter i), PCTR_0_CLR 0x654 (writing bit i zeroes counter i; reads 0
  after), PCTR_0_OVERFLOW 0x658 (bit i: counter i wrapped past 2^32; writing bit i clears it),
  PCTR_0_SRC_0_3..28_31 0x660..0x67C (four 7-bit source fields per word, counter 4k+j at bits 8j..8j+6),
  PCTR_0_PCTR0..31 0x680..0x6FC (the 32-bit counts).
  Sources modelled (numbers are the kernel's v3d_v42_performance_counters[] indices):
    32 cycle-count: the V3D clock, always running (a Pi 4 counts it idle too: py-videocore6's
       pctr_gpu_clock.py and the kernel's debugfs measure_clock read it across a sleep): the device's GPU
       clock (pimoe.qpu.vdev: host time, with each job's PREDICTED Pi 4 time in place of its emulation
       time) x pimoe.pi4.QPU_CLOCK_HZ.
    16 QPU-total-clk-cycles-executing-valid-instr: per job, its instructions on all QPUs x the timing
       model's cycles per instruction (a 16-lane instruction on 4 physical lanes).
    86 compute-active-cycles: per job, its predicted Pi 4 time (pimoe.qpu.timing) x the clock.
  Per-job counts are added when the emulator finishes the job, to the counters enabled then. Every other
  source counts nothing here (a graphics unit the compute route never uses, or a cache/stall figure the
  emulator does not model).
  The device sees stores only when it looks: every POLL_S seconds while a window is mapped, at every
  ioctl on the render node (so stores made before a SUBMIT_CSD apply to its job), after each WAIT_BO and
  when a job ends. It then advances the counts under the EN/SRC it saw last, and takes the stores made
  since (so between ioctls a counter starts, stops or clears up to POLL_S after the store, and reads up
  to POLL_S old: a short count is low by up to 2 POLL_S of cycles, never high); a store to OVERFLOW of
  exactly the flags already set is not seen (nothing changed in memory), so it does not clear them.

Any other range of /dev/mem is refused with EPERM, as a STRICT_DEVMEM kernel refuses RAM (the virtual
device serves no other physical address). Only mmap is served on the descriptor; the virtual device does
not ask for root (a Pi needs CAP_SYS_RAWIO to open /dev/mem).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import weakref

import numpy as np

from pimoe import pi4
from pimoe.qpu import v3d_uapi as U

DEVMEM_PATH = "/dev/mem"
HUB_BASE = 0xFEC00000            # Pi 4 physical address of the V3D hub registers (device tree: 0x7ec00000)
CORE0_BASE = 0xFEC04000          # and of core 0's
WINDOW = 0x4000                  # each block is 16 KiB
WINDOWS_END = CORE0_BASE + WINDOW

# register offsets (drivers/gpu/drm/v3d/v3d_regs.h)
HUB_UIFCFG, HUB_IDENT0, HUB_IDENT1, HUB_IDENT2, HUB_IDENT3 = 0x04, 0x08, 0x0C, 0x10, 0x14
CORE_IDENT0, CORE_IDENT1, CORE_IDENT2 = 0x00, 0x04, 0x08
PCTR_EN, PCTR_CLR, PCTR_OVERFLOW, PCTR_SRC_0_3, PCTR_0 = 0x650, 0x654, 0x658, 0x660, 0x680
N_COUNTERS = 32
SRC_BITS = 0x7F                  # V3D 4.2: 7-bit source fields

# performance counter sources (index in the kernel's v3d_v42_performance_counters[])
SRC_QPU_VALID_INSTR_CYCLES = 16  # QPU-total-clk-cycles-executing-valid-instr
SRC_CYCLE_COUNT = 32             # cycle-count
SRC_COMPUTE_ACTIVE = 86          # compute-active-cycles

# the register each GET_PARAM identity parameter reads (the kernel's v3d_get_param_ioctl), as a byte offset
# in the windows' memfd (hub at 0, core 0 at WINDOW)
PARAM_REGISTER = {U.PARAM_V3D_UIFCFG: HUB_UIFCFG, U.PARAM_V3D_HUB_IDENT1: HUB_IDENT1,
                  U.PARAM_V3D_HUB_IDENT2: HUB_IDENT2, U.PARAM_V3D_HUB_IDENT3: HUB_IDENT3,
                  U.PARAM_V3D_CORE0_IDENT0: WINDOW + CORE_IDENT0, U.PARAM_V3D_CORE0_IDENT1: WINDOW + CORE_IDENT1,
                  U.PARAM_V3D_CORE0_IDENT2: WINDOW + CORE_IDENT2}

POLL_S = 1e-3                    # how often the device looks at the windows while they are mapped


class V3DRegisters:
    """The hub and core-0 register windows (one memfd: hub at 0, core 0 at WINDOW) and the counters.

    identity: {hub or core byte offset in the memfd: value}; gpu_clock: the device's GPU clock (seconds)."""

    def __init__(self, identity: dict[int, int], gpu_clock, clock_hz: float = pi4.QPU_CLOCK_HZ):
        self.memfd = os.memfd_create("pimoe-v3d-regs", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, 2 * WINDOW)
        self._map = mmap.mmap(self.memfd, 2 * WINDOW, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = np.frombuffer(self._map, np.uint32)
        self.identity = {off // 4: value for off, value in identity.items()}
        self.clock_hz = float(clock_hz)
        self._gpu_clock = gpu_clock
        self._lock = threading.Lock()
        self._counts = np.zeros(N_COUNTERS, np.float64)   # exact counts (cycles may be fractional)
        self._overflow = 0
        self._last = gpu_clock()
        self._state = (0, np.zeros(N_COUNTERS, np.int64))    # (EN, sources) as the device last saw them
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._maps: list[weakref.ref] = []                   # the client's mappings of the windows
        for w, value in self.identity.items():
            self.words[w] = value

    # ---- the windows ---------------------------------------------------------------------------------------
    def map_offset(self, phys: int, length: int) -> int:
        """memfd offset for an mmap of /dev/mem at physical `phys`; EPERM outside the V3D windows."""
        if length <= 0 or phys % mmap.PAGESIZE or not HUB_BASE <= phys < phys + length <= WINDOWS_END:
            raise OSError(errno.EPERM, f"{os.strerror(errno.EPERM)} (/dev/mem 0x{phys:x}+0x{length:x}: the "
                          f"virtual V3D serves only its register windows 0x{HUB_BASE:x}..0x{WINDOWS_END:x}; "
                          "other physical memory is refused as a STRICT_DEVMEM kernel refuses RAM)")
        return phys - HUB_BASE

    def track(self, mapping: mmap.mmap) -> None:
        """A client's new mapping of the windows: the device looks at them while any is open."""
        with self._lock:
            self._maps.append(weakref.ref(mapping))
            if self._poller is None and not self._stop.is_set():
                self._poller = threading.Thread(target=self._poll, name="pimoe-vdev-pctr", daemon=True)
                self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.refresh()
            with self._lock:
                self._maps = [r for r in self._maps if r() is not None and not r().closed]
                if not self._maps:
                    self._poller = None
                    return

    # ---- the counters -------------------------------------------------------------------------------------
    def _core(self, offset: int) -> int:
        return (WINDOW + offset) // 4

    def _apply_stores(self) -> tuple[int, np.ndarray]:
        """Take the client's stores (CLR and OVERFLOW acted on, identity registers restored); returns (EN,
        the 32 counters' sources). Lock held."""
        w = self.words
        for i, value in self.identity.items():          # read-only
            if w[i] != value:
                w[i] = value
        clr = int(w[self._core(PCTR_CLR)])
        if clr:
            for i in range(N_COUNTERS):
                if clr >> i & 1:
                    self._counts[i] = 0.0
            w[self._core(PCTR_CLR)] = 0
        ovf = int(w[self._core(PCTR_OVERFLOW)])
        if ovf != self._overflow:                        # a store: write-one-to-clear
            self._overflow &= ~ovf
        src_words = w[self._core(PCTR_SRC_0_3): self._core(PCTR_SRC_0_3) + N_COUNTERS // 4].astype(np.int64)
        srcs = ((src_words[:, None] >> (8 * np.arange(4))) & SRC_BITS).reshape(-1)
        return int(w[self._core(PCTR_EN)]), srcs

    def _publish(self) -> None:
        wrapped = self._counts >= 2.0 ** 32
        if wrapped.any():
            self._overflow |= int(sum(1 << int(i) for i in np.flatnonzero(wrapped)))
            self._counts[wrapped] = np.mod(self._counts[wrapped], 2.0 ** 32)
        base = self._core(PCTR_0)
        self.words[base: base + N_COUNTERS] = self._counts.astype(np.uint64).astype(np.uint32)
        self.words[self._core(PCTR_OVERFLOW)] = self._overflow

    def _add(self, per_source: dict[int, float], en: int, srcs: np.ndarray) -> None:
        for i in range(N_COUNTERS):
            if en >> i & 1:
                self._counts[i] += per_source.get(int(srcs[i]), 0.0)

    def refresh(self) -> None:
        """Advance the counters to the GPU clock's now under the state the device last saw, then take the
        client's stores since (a store takes effect when the device looks: at most POLL_S late)."""
        with self._lock:
            if self.words is None:      # closed
                return
            now = self._gpu_clock()
            cycles = max(0.0, now - self._last) * self.clock_hz
            self._last = max(self._last, now)
            self._add({SRC_CYCLE_COUNT: cycles}, *self._state)
            self._state = self._apply_stores()
            self._publish()

    def add_job(self, counters, predicted_s: float, cycles_per_instruction: float) -> None:
        """Count a finished job (EmuCounters, its predicted Pi 4 seconds) on the counters enabled now."""
        self.refresh()
        with self._lock:
            if self.words is None:
                return
            self._add({SRC_COMPUTE_ACTIVE: predicted_s * self.clock_hz,
                       SRC_QPU_VALID_INSTR_CYCLES: counters.total_instructions * cycles_per_instruction},
                      *self._state)
            self._publish()

    def close(self) -> None:
        self._stop.set()
        poller = self._poller
        if poller is not None:
            poller.join(timeout=1.0)
        with self._lock:
            self.words = None
        try:
            self._map.close()
        except BufferError:          # a client still maps the windows: leave the pages to the GC
            pass
        os.close(self.memfd)
