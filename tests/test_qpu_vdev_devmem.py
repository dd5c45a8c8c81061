"""/dev/mem inside pimoe.qpu.vdev.virtual_v3d(): the V3D register windows py-videocore6's RegisterMapping maps.
References: the kernel's drivers/gpu/drm/v3d/v3d_regs.h (offsets, fields), v3d_perfmon.c (how counters are
programmed) and v3d_performance_counters.h (source numbers), drivers/char/mem.c (EPERM), and the device's own
GET_PARAM (identity values) and job log (predicted time)."""

from __future__ import annotations

import errno
import mmap
import os
import time

import numpy as np
import pytest

from pimoe.qpu import assemble
from pimoe.qpu import v3d_uapi as U
from pimoe.qpu.emulator import CSDDispatch
from pimoe.qpu.vdev import virtual_v3d
from tests.test_qpu_vdev import _program, k_count

HUB, CORE0, SIZE = 0xFEC00000, 0xFEC04000, 0x4000      # Pi 4 physical addresses of the V3D blocks
CLOCK_HZ = 500e6                                         # the Pi 4's V3D clock (py-videocore6 README)
# v3d_regs.h
EN, CLR, OVERFLOW, SRC_0_3, PCTR0 = 0x650, 0x654, 0x658, 0x660, 0x680
CYCLE_COUNT, VALID_INSTR_CYCLES, COMPUTE_ACTIVE = 32, 16, 86   # v3d_v42_performance_counters[] indices


def _windows():
    """(hub, core) as uint32 views, mapped as py-videocore6 maps them (keyword arguments, descriptor closed)."""
    fd = os.open("/dev/mem", os.O_RDWR)
    maps = [mmap.mmap(offset=base, length=SIZE, fileno=fd, flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE) for base in (HUB, CORE0)]
    os.close(fd)
    return [np.frombuffer(m, np.uint32) for m in maps]


def _reg(words, offset):
    return int(words[offset // 4])


def _start(core, sources, enable):
    """Program the counters as the kernel's v3d_perfmon_start does: EN=0, sources, CLR, OVERFLOW, EN."""
    core[EN // 4] = 0
    for k in range(0, len(sources), 4):
        core[(SRC_0_3 + k) // 4] = sum(s << (8 * j) for j, s in enumerate(sources[k:k + 4]))
    core[CLR // 4] = (1 << len(sources)) - 1
    core[OVERFLOW // 4] = (1 << len(sources)) - 1
    core[EN // 4] = enable


def test_identity_registers_hold_what_get_param_returns():
    with virtual_v3d(), U.V3DDevice() as dev:
        hub, core = _windows()
        for param, words, offset in ((U.PARAM_V3D_UIFCFG, hub, 0x04), (U.PARAM_V3D_HUB_IDENT1, hub, 0x0C),
                                     (U.PARAM_V3D_HUB_IDENT2, hub, 0x10), (U.PARAM_V3D_HUB_IDENT3, hub, 0x14),
                                     (U.PARAM_V3D_CORE0_IDENT0, core, 0x00), (U.PARAM_V3D_CORE0_IDENT1, core, 0x04),
                                     (U.PARAM_V3D_CORE0_IDENT2, core, 0x08)):
            assert _reg(words, offset) == dev.get_param(param), hex(offset)
        # the fields a Pi 4's V3D has: version 4.2, one core, 2 slices x 4 QPUs
        ident1 = _reg(hub, 0x0C)
        assert (ident1 & 0xF, ident1 >> 4 & 0xF, ident1 >> 8 & 0xF) == (4, 2, 1)
        core1 = _reg(core, 0x04)
        assert _reg(core, 0x00) >> 24 == 4 and (core1 >> 4 & 0xF, core1 >> 8 & 0xF) == (2, 4)
        hub[0x0C // 4] = 0xDEAD                   # identity registers are read-only
        time.sleep(0.05)
        assert _reg(hub, 0x0C) == dev.get_param(U.PARAM_V3D_HUB_IDENT1)


def test_the_cycle_counter_counts_the_v3d_clock_while_idle():
    # what py-videocore6's pctr_gpu_clock.py and the kernel's debugfs measure_clock do: count across a sleep
    with virtual_v3d():
        _, core = _windows()
        t0 = time.monotonic()
        _start(core, [CYCLE_COUNT], 1)
        time.sleep(0.4)
        count = _reg(core, PCTR0)
        elapsed = time.monotonic() - t0
        assert 0.3 * CLOCK_HZ <= count <= elapsed * CLOCK_HZ, (count, elapsed)
        core[EN // 4] = 0                        # disabled: it stops
        time.sleep(0.02)
        stopped = _reg(core, PCTR0)
        time.sleep(0.05)
        assert _reg(core, PCTR0) == stopped
        core[CLR // 4] = 1                       # cleared
        time.sleep(0.05)
        assert _reg(core, PCTR0) == 0 and _reg(core, CLR) == 0


def test_counters_advance_by_a_jobs_predicted_cycles():
    with virtual_v3d() as vd, U.V3DDevice() as dev:
        _, core = _windows()
        hc, code, _ = _program(dev, assemble(k_count))
        hd, data = dev.create_bo(4096)
        out = np.frombuffer(dev.map_bo(hd, 4096), np.uint32)
        out[:2] = [data + 64, 20_000]
        gpu_before = vd.gpu_now()
        # counters 0..2 enabled, 3 (also compute-active) not
        _start(core, [COMPUTE_ACTIVE, VALID_INSTR_CYCLES, CYCLE_COUNT, COMPUTE_ACTIVE], 0b0111)
        dev.submit_csd(CSDDispatch.for_launch(code, data, thread=1).encode(), [hc, hd])
        dev.wait_bo(hd, 30 * 10**9)
        counts = [_reg(core, PCTR0 + 4 * i) for i in range(4)]
        gpu_after = vd.gpu_now()
        predicted, _, fault = vd.job_log[-1]
        job = vd.files[dev.fd].last_job
        assert fault is None and predicted > 0
        assert abs(counts[0] - predicted * CLOCK_HZ) <= 1                   # the job's predicted cycles
        assert counts[1] == job.counters.total_instructions * 4             # 16 lanes on 4: 4 cycles each
        assert predicted * CLOCK_HZ <= counts[2] <= (gpu_after - gpu_before) * CLOCK_HZ + 1   # the clock ran
        assert counts[3] == 0                                               # not enabled
        assert _reg(core, OVERFLOW) == 0


def test_other_physical_ranges_are_refused_with_eperm_and_nothing_changes_outside():
    with virtual_v3d():
        fd = os.open("/dev/mem", os.O_RDWR)
        for offset, length in ((0, 4096), (CORE0 + SIZE, 4096), (HUB - 4096, 8192), (HUB, 3 * SIZE)):
            with pytest.raises(PermissionError) as info:
                mmap.mmap(fd, length, offset=offset)
            assert info.value.errno == errno.EPERM and "STRICT_DEVMEM" in str(info.value)
        both = mmap.mmap(fd, 2 * SIZE, offset=HUB)     # hub and core 0 are one contiguous range
        assert np.frombuffer(both, np.uint32)[SIZE // 4] >> 24 == 4
        os.close(fd)
    from pimoe.qpu import vdev

    assert os.open is vdev._ORIG["open"] and mmap.mmap is vdev._ORIG["mmap"] and not vdev._devmem
