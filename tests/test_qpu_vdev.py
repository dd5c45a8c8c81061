"""The virtual V3D device (pimoe.qpu.vdev) and pimoe's UAPI client (pimoe.qpu.v3d_uapi): the kernel's v3d
UAPI served by the emulator. References: the kernel's include/uapi/drm/v3d_drm.h and drivers/gpu/drm/v3d/
(ioctl numbers, struct layouts, errno), Mesa's drm-shim (the V3D 4.2 identity registers) and numpy (a
kernel's results)."""

from __future__ import annotations

import errno
import logging
import os
import struct

import numpy as np
import pytest

from pimoe.qpu import qpu
from pimoe.qpu import v3d_uapi as U
from pimoe.qpu.asm import *  # noqa: F401,F403  (the kernel DSL's names)
from pimoe.qpu.emulator import CSDDispatch
from pimoe.qpu.vdev import virtual_v3d
from qpu_kernels.emit import emit_program_end


@qpu
def k_count(asm):
    """out[eidx] = n, counted one by one in a loop of n iterations (uniforms: out address, n)."""
    nop(sig=ldunifrf(rf0))
    nop(sig=ldunifrf(rf1))
    mov(r1, 0)
    L.loop
    sub(rf1, rf1, 1, cond="pushz")
    b(R.loop, cond="anyna")
    add(r1, r1, 1)
    nop()
    nop()
    eidx(r0)
    shl(r0, r0, 2)
    mov(tmud, r1)
    add(tmua, rf0, r0)
    tmuwt()
    emit_program_end(asm)


@qpu
def k_ldtmu_without_load(asm):
    nop(sig=ldtmu(r0))
    emit_program_end(asm)


def _errno(fn, *args, **kwargs) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def _judged_wait(vd, dev, handle, timeout_s: float, margin: float = 2e-3):
    """WAIT_BO(timeout_s) on the device's GPU clock: returns (finished, Pi 4 seconds the job still had to
    run when the client called). Checks the verdict against that whenever it is clear by `margin` (the
    client's own host time counts as GPU time, so on a loaded host a job may be done before the call)."""
    t = vd.gpu_now()
    try:
        dev.wait_bo(handle, int(timeout_s * 1e9))
        finished = True
    except OSError as exc:
        assert exc.errno == errno.ETIME, exc           # the kernel's code
        finished = False
    late = vd.files[dev.fd].last_job.gpu_end - t
    if abs(late - timeout_s) > margin:
        assert finished == (late <= timeout_s), (finished, late, timeout_s)
    return finished, late


def _program(dev, words):
    """A code BO holding `words` (then a zero word), mapped; returns (handle, address, mapping)."""
    size = 8 * (len(words) + 1)
    h, addr = dev.create_bo(size)
    m = dev.map_bo(h, size)
    np.frombuffer(m, np.uint64)[: len(words)] = words
    return h, addr, m


def test_identity_is_v3d_4_2_with_8_qpus():
    with virtual_v3d(), U.V3DDevice() as dev:
        assert dev.path == "/dev/dri/renderD128"
        ident = dev.identity()
        assert ident.version == (4, 2) and ident.slices == 2 and ident.qpus == 8 and ident.supports_csd
        assert dev.get_param(U.PARAM_V3D_HUB_IDENT1) == 0x000E1124      # Mesa drm-shim's V3D 4.2 values
        assert dev.get_param(U.PARAM_V3D_CORE0_IDENT2) == 0x40078121
        assert _errno(dev.get_param, 99) == errno.EINVAL                 # unknown parameter
        assert _errno(dev._ioctl, U.IOCTL_GET_PARAM, U.GET_PARAM, 0, 1, 0) == errno.EINVAL   # pad != 0
        assert _errno(dev._ioctl, U.IOCTL_GET_PARAM, U.GET_PARAM, 4, 0, 7) == errno.EINVAL   # value != 0


def test_ioctl_numbers_are_the_kernels():
    # _IOWR('d', 0x40 + 0x02, struct drm_v3d_create_bo) and _IOW('d', 0x40 + 0x07, struct drm_v3d_submit_csd)
    assert U.IOCTL_CREATE_BO == 0xC0106442
    assert U.IOCTL_GET_PARAM == 0xC0106444
    assert U.IOCTL_SUBMIT_CSD == 0x40586447 and U.SUBMIT_CSD.size == 88
    assert U.IOCTL_GEM_CLOSE == 0x40086409


def test_buffers_are_allocated_mapped_and_shared_with_the_gpu():
    with virtual_v3d() as vd, U.V3DDevice() as dev:
        h1, a1 = dev.create_bo(5000)
        h2, a2 = dev.create_bo(1 << 20)
        assert h1 != h2 and a1 % U.BO_ALIGN == 0 and a2 % U.BO_ALIGN == 0 and a2 >= a1 + 8192
        assert dev.bo_offset(h2) == a2
        m = dev.map_bo(h2, 1 << 20)
        x = np.frombuffer(m, np.float32)
        x[:] = np.arange(x.size, dtype=np.float32)
        gpu = vd.memory[a2 - vd.base: a2 - vd.base + (1 << 20)].view(np.float32)   # what the GPU sees
        assert np.array_equal(gpu, np.arange(x.size, dtype=np.float32))
        del x, gpu
        m.close()
        dev.gem_close(h2)
        h3, a3 = dev.create_bo(1 << 20)             # reuses the freed addresses, zero-filled as shmem pages are
        assert a3 == a2
        assert not np.frombuffer(dev.map_bo(h3, 1 << 20), np.uint8).any()
        # the kernel's errno for misuse
        assert _errno(dev.gem_close, 777) == errno.EINVAL
        assert _errno(dev.mmap_offset, 777) == errno.ENOENT
        assert _errno(dev.bo_offset, 777) == errno.ENOENT
        assert _errno(dev.create_bo, 4096, flags=1) == errno.EINVAL
        assert _errno(dev.create_bo, 0) == errno.EINVAL
        assert _errno(dev.create_bo, 0xFFFFF000) == errno.ENOSPC       # more than the GPU address space left
        assert _errno(dev.map_bo, h1, 1 << 20) == errno.EINVAL          # longer than the BO
        assert _errno(dev._ioctl, U.IOCTL_WAIT_BO, U.WAIT_BO, 777, 0, 0) == errno.EINVAL
        import fcntl
        assert _errno(fcntl.ioctl, dev.fd, (3 << 30) | (16 << 16) | (ord("d") << 8) | 0x4F, bytearray(16)) == errno.EINVAL


def test_a_kernel_runs_through_the_uapi_and_its_results_are_right():
    with virtual_v3d() as vd, U.V3DDevice() as dev:
        from pimoe.qpu import assemble

        hc, code, _ = _program(dev, assemble(k_count))
        hd, data = dev.create_bo(4096)
        out = np.frombuffer(dev.map_bo(hd, 4096), np.uint32)
        out[:2] = [data + 64, 37]                   # uniforms, then the output at +64
        words = CSDDispatch.for_launch(code, data, thread=1).encode()
        dev.submit_csd(words, [hc, hd])
        dev.wait_bo(hd, 30 * 10**9)
        assert np.array_equal(out[16:32], np.full(16, 37))
        assert vd.jobs_run == 1 and not vd.faults
        # errno of a bad submission
        assert _errno(dev.submit_csd, words, []) == errno.EINVAL                 # a job needs BOs
        assert _errno(dev.submit_csd, words, [hd, 999]) == errno.ENOENT         # unknown BO
        assert _errno(dev.submit_csd, words, [hd], in_sync=5) == errno.ENOENT   # no such sync object


def test_a_timed_out_wait_and_asynchronous_submit():
    with virtual_v3d() as vd, U.V3DDevice() as dev:
        from pimoe.qpu import assemble

        hc, code, _ = _program(dev, assemble(k_count))
        hd, data = dev.create_bo(4096)
        out = np.frombuffer(dev.map_bo(hd, 4096), np.uint32)
        out[:2] = [data + 64, 400_000]              # ~2M instructions in the emulator, ~16 ms on a Pi 4
        timed_out = 0
        for _ in range(4):
            dev.submit_csd(CSDDispatch.for_launch(code, data).encode(), [hc, hd])   # returns at once
            timed_out += not _judged_wait(vd, dev, hd, 0.0)[0]     # a poll right after the submit
            dev.wait_bo(hd, 120 * 10**9)
            assert np.array_equal(out[16:32], np.full(16, 400_000))
            if timed_out:
                break
        assert timed_out


def test_a_faulting_job_makes_wait_fail_with_eio_and_is_logged(caplog):
    with virtual_v3d() as vd, U.V3DDevice() as dev:
        from pimoe.qpu import assemble

        hc, code, _ = _program(dev, assemble(k_ldtmu_without_load))
        with caplog.at_level(logging.ERROR, logger="pimoe.qpu.vdev"):
            dev.submit_csd(CSDDispatch.for_launch(code, 0).encode(), [hc])
            assert _errno(dev.wait_bo, hc, 30 * 10**9) == errno.EIO
        assert "ldtmu" in vd.faults[0] and "ldtmu" in caplog.text


def test_csd_words_decoded_as_the_hardware_does():
    # py-videocore6 writes wgs_per_sg=16 as (16 << 8), which spills into bit 12, the batches-per-supergroup
    # field's lowest bit: the hardware reads wgs_per_sg 0 (= 16), and with a 1-invocation workgroup
    # (1 batch per supergroup, field 0) one batch more per supergroup
    pyvc6_cfg3 = ((-(-16 * 1 // 16) - 1) << 12) | (16 << 8) | 1
    d = CSDDispatch.decode([1 << 16, 1 << 16, 1 << 16, pyvc6_cfg3, 7, 0x10000000, 0])
    assert (d.wgs_per_sg, d.batches_per_sg, d.wg_size, d.num_batches) == (16, 2, 1, 8)


def test_wait_bo_timeouts_are_judged_in_pi4_time_not_host_time():
    """WAIT_BO's timeout counts GPU time: a job whose predicted Pi 4 time fits the timeout is waited for
    however long the emulator takes on this host, and one whose Pi 4 time does not gets ETIME."""
    from pimoe.qpu import assemble
    from pimoe.qpu.timing import predict

    with virtual_v3d() as vd, U.V3DDevice() as dev:
        hc, code, _ = _program(dev, assemble(k_count))
        hd, data = dev.create_bo(4096)
        out = np.frombuffer(dev.map_bo(hd, 4096), np.uint32)
        out[:2] = [data + 64, 200_000]
        words = CSDDispatch.for_launch(code, data).encode()
        dev.submit_csd(words, [hc, hd])
        dev.wait_bo(hd, 120 * 10**9)
        job = vd.files[dev.fd].last_job
        pi4 = float(predict(job.counters).seconds)
        assert job.predicted == pi4 and job.gpu_end - job.gpu_start == pytest.approx(pi4)
        assert job.seconds > 2 * pi4         # emulating is slower than the QPUs (else this test shows nothing)
        out[16:32] = 0
        dev.submit_csd(words, [hc, hd])
        assert _judged_wait(vd, dev, hd, 1.5 * pi4)[0]       # waited for, though the host took longer
        assert np.array_equal(out[16:32], np.full(16, 200_000))
        assert vd.files[dev.fd].last_job.seconds > 1.5 * pi4
        verdicts = []
        for _ in range(3):
            dev.submit_csd(words, [hc, hd])
            verdicts.append(_judged_wait(vd, dev, hd, 0.5 * pi4))   # a Pi 4 is not done yet either: ETIME
            dev.wait_bo(hd, 120 * 10**9)                      # the job itself goes on, as on the GPU
            if not verdicts[-1][0]:
                break
        assert not verdicts[-1][0], verdicts
        assert not vd.faults


_host_gettime = __import__("time").clock_gettime


def test_pi_clock_shows_the_client_predicted_pi4_time_for_the_gpu_part():
    """virtual_v3d(pi_clock=True): a client timing a dispatch with time.perf_counter sees the job's
    predicted Pi 4 time (plus its own CPU time), not the host's much longer emulation; the clocks are the
    time module's own again after the block."""
    import time

    from pimoe.qpu import assemble

    host_clock = time.perf_counter
    with virtual_v3d(pi_clock=True) as vd, U.V3DDevice() as dev:
        hc, code, _ = _program(dev, assemble(k_count))
        hd, data = dev.create_bo(4096)
        np.frombuffer(dev.map_bo(hd, 4096), np.uint32)[:2] = [data + 64, 50_000]
        words = CSDDispatch.for_launch(code, data).encode()
        dev.submit_csd(words, [hc, hd])
        dev.wait_bo(hd, 60 * 10**9)                  # warm (the first job compiles nothing, but imports)
        t0, h0 = time.perf_counter(), host_clock()
        m0, c0 = time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
        dev.submit_csd(words, [hc, hd])
        dev.wait_bo(hd, 60 * 10**9)
        seen, host = time.perf_counter() - t0, host_clock() - h0
        seen_m = time.clock_gettime(time.CLOCK_MONOTONIC) - m0     # how py-videocore6's sgemm.py times
        cpu = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID) - c0
        job = vd.files[dev.fd].last_job
        for t in (seen, seen_m):
            assert job.predicted <= t < job.predicted + 0.5 * (host - job.predicted)
        assert seen < job.seconds                    # the emulation took longer than what the client saw
        assert cpu > seen_m                          # a CPU-time clock stays the host's (the worker's CPU)
    assert time.perf_counter is host_clock and time.clock_gettime is _host_gettime


def test_an_access_outside_every_bo_goes_to_the_mmu_scratch_page(caplog):
    """The MMU: only BO pages are mapped; a store into the hole after a BO neither faults nor lands in
    the next BO (it hits the scratch page), and is logged and counted."""
    from pimoe.qpu import assemble

    with virtual_v3d() as vd, U.V3DDevice() as dev:
        hc, code, _ = _program(dev, assemble(k_count))
        hd, data = dev.create_bo(4096)
        hn, nxt = dev.create_bo(4096)
        assert nxt - data == U.BO_ALIGN      # a 124 KiB hole between the two BOs
        uni = np.frombuffer(dev.map_bo(hd, 4096), np.uint32)
        neighbour = np.frombuffer(dev.map_bo(hn, 4096), np.uint32)
        uni[:2] = [data + 4096, 3]           # the first byte past the data BO's only page
        with caplog.at_level(logging.WARNING, logger="pimoe.qpu.vdev"):
            dev.submit_csd(CSDDispatch.for_launch(code, data).encode(), [hc, hd, hn])
            dev.wait_bo(hd, 60 * 10**9)
        assert vd.mmu_faults == 16 and "scratch page" in caplog.text and not vd.faults
        assert not neighbour.any() and not uni[2:].any()


def test_names_bound_before_the_block_are_patched_and_restored():
    import types

    mod = types.ModuleType("bound_names")
    exec("from fcntl import ioctl\nfrom mmap import mmap\nfrom os import open as os_open", mod.__dict__)
    import sys
    sys.modules["bound_names"] = mod
    try:
        import fcntl
        import mmap
        orig = (mod.ioctl, mod.mmap, mod.os_open)
        with virtual_v3d():
            assert mod.ioctl is not orig[0] and mod.mmap is not orig[1] and mod.os_open is not orig[2]
            fd = mod.os_open("/dev/dri/renderD128", os.O_RDWR)
            buf = bytearray(U.CREATE_BO.pack(4096, 0, 0, 0))
            assert mod.ioctl(fd, U.IOCTL_CREATE_BO, buf) == 0
            size, _, handle, addr = U.CREATE_BO.unpack(buf)
            buf = bytearray(U.MMAP_BO.pack(handle, 0, 0))
            mod.ioctl(fd, U.IOCTL_MMAP_BO, buf)
            m = mod.mmap(fd, 4096, offset=struct.unpack_from("<Q", buf, 8)[0])
            m[:4] = b"pimo"
            # immutable arguments get the result back, as fcntl.ioctl does
            out = mod.ioctl(fd, U.IOCTL_GET_PARAM, U.GET_PARAM.pack(U.PARAM_V3D_CORE0_IDENT1, 0, 0))
            assert U.GET_PARAM.unpack(out)[2] == 0x81001422
            m.close()
            os.close(fd)
        assert (mod.ioctl, mod.mmap, mod.os_open) == orig and fcntl.ioctl is orig[0] and mmap.mmap is orig[1]
    finally:
        del sys.modules["bound_names"]


def test_open_driver_virtual_runs_the_hardware_route():
    from pimoe.qpu import open_driver
    from pimoe.qpu.driver import V3DDriver

    with open_driver("virtual", data_area_size=1 << 16) as drv:
        assert isinstance(drv._drv, V3DDriver)
        code = drv.program(k_count)
        out = drv.alloc(16, dtype=np.uint32)
        unif = drv.alloc(2, dtype=np.uint32)
        unif[:] = [out.addresses()[0], 9]
        job = drv.submit(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0])
        counters = job.wait(timeout=60)
        assert np.array_equal(out, np.full(16, 9))
        assert counters.total_instructions > 9 * 5     # the emulator's counts come back over the route
    from pimoe.qpu.vdev import current
    assert current() is None


def test_qpu_backend_logits_through_virtual_equal_emu(tiny_model):
    from pimoe import load_model

    path = tiny_model("qwen3moe", "Q4_K")
    tokens = [1, 17, 42, 7]
    with load_model(path, backend="qpu", qpu="virtual", threads=4) as mv:
        lv = mv.logits(tokens)
        assert mv.backend.driver_kind == "virtual" and mv.backend.stats["instructions"] > 0
    with load_model(path, backend="qpu", qpu="emu", threads=4) as me:
        le = me.logits(tokens)
    assert np.array_equal(lv, le)


def test_doctor_virtual_passes_and_doctor_says_what_is_missing_off_a_pi(capsys):
    from pimoe.cli import main
    from pimoe.qpu.driver import hardware_available

    assert main(["doctor", "--qpu", "virtual", "--stream-mb", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "[ok     ] V3D identity (GET_PARAM): V3D 4.2, 2 slices x 4 QPUs" in out
    assert "[ok     ] self-test kernel" in out and "predicted" in out and "MISSING" not in out
    if hardware_available()[0]:
        return
    assert main(["doctor", "--stream-mb", "0.3"]) == 1
    out = capsys.readouterr().out
    assert "[MISSING] render node" in out and "fix:" in out and "does not work here" in out


def test_compare_runs_through_the_virtual_route(tmp_path, monkeypatch, capsys):
    from pimoe.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))      # the built-in model is made here

    rc = main(["compare", "-p", "3", "-n", "2", "-r", "1", "--backends", "cpu,qpu", "--qpu", "virtual", "--no-record"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "| qpu" in out.out and "predicted" in out.out


def test_running_into_the_zero_word_after_a_program_is_an_invalid_word_fault():
    """The virtual device decodes a BO's code up to its first all-zero word, which does not decode: a
    program without its end runs into it and faults naming that PC, as a whole-buffer decode would."""
    from pimoe.qpu import assemble

    @qpu
    def k_no_end(asm):
        nop()
        nop()

    with virtual_v3d() as vd, U.V3DDevice() as dev:
        hc, code, _ = _program(dev, assemble(k_no_end))
        dev.submit_csd(CSDDispatch.for_launch(code, 0).encode(), [hc])
        assert _errno(dev.wait_bo, hc, 30 * 10**9) == errno.EIO
        assert "PC 2" in vd.faults[0] and "invalid" in vd.faults[0] and "0x0000000000000000" in vd.faults[0]


@qpu
def k_payload(asm):
    """Each lane stores its compute payload: rf0 (workgroup x | y << 16) at out + 128 tidx + 4 lane, rf2
    (workgroup z | scaled local index << 16) 64 bytes further (uniform: out)."""
    tidx(r0, sig=ldunifrf(rf3))
    shl(r0, r0, 7)
    eidx(r1)
    shl(r1, r1, 2)
    add(r0, r0, r1)
    add(r0, r0, rf3)
    mov(r2, 1)
    shl(r2, r2, 6)
    mov(tmud, rf0)
    mov(tmua, r0)
    mov(tmud, rf2)
    add(tmua, r0, r2)
    tmuwt()
    emit_program_end(asm)


@pytest.mark.parametrize("local,threading", [((3, 1, 1), False), ((16, 1, 1), True), ((8, 2, 1), False)])
def test_one_dispatch_through_emudriver_and_the_virtual_device_is_the_same_dispatch(local, threading):
    """EmuDriver.execute(arguments) and the virtual device given the CSD words py-videocore6's Driver writes
    for the same arguments run the same dispatch: the same payload in every lane (workgroup ids, local
    index), the same thread mode and the same counts. The words are written here from the v3d_csd.h layout
    as py-videocore6 fills it: CFG3 = (ceil(wgs_per_sg * wg_size / 16) - 1) << 12 | wgs_per_sg << 8 |
    wg_size, wgs_per_sg unmasked (16 spills into bit 12: a 3-invocation workgroup makes it 4 batches per
    supergroup, not 3); CFG4 = batches - 1; CFG5 = code | threading."""
    from pimoe.qpu import EmuDriver, assemble

    wg_count, wgs_per_sg, batches = (5, 4, 3), 16, 16
    wg_size = local[0] * local[1] * local[2]
    with EmuDriver(data_area_size=1 << 16) as drv:
        code = drv.program(k_payload)
        out = drv.alloc(32 * 32, dtype=np.uint32)      # 32 tidx values x (rf0, rf2) x 16 lanes
        out[:] = 0xDEADBEEF
        unif = drv.alloc(1, dtype=np.uint32)
        unif[0] = out.addresses()[0]
        emu = drv.execute(code, local_invocation=local, uniforms=unif.addresses()[0], workgroup=wg_count,
                          wgs_per_sg=wgs_per_sg, thread=batches, threading=threading)
        emu_out = np.array(out)
    with virtual_v3d() as vd, U.V3DDevice() as dev:
        hc, code_addr, _ = _program(dev, assemble(k_payload))
        hd, data = dev.create_bo(8192)
        mem = np.frombuffer(dev.map_bo(hd, 8192), np.uint32)
        mem[:1024] = 0xDEADBEEF
        mem[1024] = data
        cfg3 = ((-(-wgs_per_sg * wg_size // 16) - 1) << 12) | (wgs_per_sg << 8) | wg_size
        words = [wg_count[0] << 16, wg_count[1] << 16, wg_count[2] << 16, cfg3, batches - 1,
                 code_addr | int(threading), data + 4096]
        dev.submit_csd(words, [hc, hd])
        dev.wait_bo(hd, 120 * 10**9)
        dev_out = mem[:1024].copy()
        job = vd.files[dev.fd].last_job
        assert not vd.faults
    assert np.array_equal(emu_out, dev_out)
    assert (emu_out != 0xDEADBEEF).sum() == 2 * 16 * batches        # every batch stored its 2 x 16 words
    assert emu.threads_per_qpu == job.counters.threads_per_qpu == (2 if batches > 8 else 1)
    for name in ("instructions", "tmu_writes", "uniforms_read"):
        assert np.array_equal(emu.per_thread[name], job.counters.per_thread[name]), name
