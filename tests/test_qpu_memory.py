"""The qpu backend's memory check with the limits that bind on a Pi 4 (pimoe.backends.qpu_memory): V3D
buffers are shmem pages behind the GPU's MMU (the kernel's drivers/gpu/drm/v3d/v3d_bo.c), so CMA does not
limit them; RAM and the 32-bit GPU address space do."""

from __future__ import annotations

import pytest

from pimoe.backends import qpu_memory as qm

GB = 10**9

# /proc/meminfo of an 8 GB Pi 4 running a 64-bit Raspberry Pi OS with the default 64 MB CMA pool
# (MemTotal of a 8 GB Pi 4 as the kernel reports it; MemAvailable after boot)
PI4_8GB = {"MemTotal": 7_999_936 * 1024, "MemAvailable": 7_553_120 * 1024, "CmaTotal": 65536 * 1024,
           "CmaFree": 60_000 * 1024}


def test_a_3_5_gb_qpu_copy_fits_an_8_gb_pi4_with_a_64_mb_cma_pool():
    facts = qm.machine_facts("hw", PI4_8GB)
    assert facts.gpu_va == (1 << 32) - (128 << 10)
    rep = qm.check_fit([4 << 20, int(3.5 * GB)], facts, cpu_resident=300 * 10**6, kind="hw")
    assert rep.ok, rep.problems
    assert any("CMA: not used" in line for line in rep.lines)


def test_more_than_4_gib_of_gpu_addresses_is_refused_with_the_numbers():
    facts = qm.machine_facts("hw", {**PI4_8GB, "MemAvailable": 16 * GB})
    need = int(4.8 * GB)           # OLMoE-1B-7B's experts in the 6-bit q4 layout
    rep = qm.check_fit([4 << 20, need], facts, kind="hw")
    assert not rep.ok
    msg = rep.message()
    assert "GPU addresses" in msg and "4.47 GiB" in msg and "4.00 GiB" in msg
    over = qm.bo_span([4 << 20, need]) - facts.gpu_va
    assert f"{over:,} bytes too many" in msg


def test_ram_is_checked_with_the_cpu_side_and_the_reserve():
    facts = qm.machine_facts("hw", {**PI4_8GB, "MemTotal": 4 * GB, "MemAvailable": 3 * GB})
    rep = qm.check_fit([4 << 20, int(2.9 * GB)], facts, cpu_resident=200 * 10**6, kind="hw")
    assert not rep.ok and "MemAvailable is 2.79 GiB" in rep.message()
    assert qm.check_fit([4 << 20, int(2.9 * GB)], facts, memory_limit=3 * GB).ok   # a cap on the copy alone


def test_virtual_device_has_the_emulators_address_space():
    from pimoe.qpu.emulator import BUS_BASE

    assert qm.machine_facts("virtual", PI4_8GB).gpu_va == (1 << 32) - BUS_BASE


def test_backend_refuses_with_numbers_and_a_way_out(tiny_model):
    from pimoe import load_model
    from pimoe.errors import PimoeError

    path = tiny_model("qwen3moe", "Q8_0")
    with pytest.raises(PimoeError, match=r"does not fit: .*RAM.* memory_limit is 4\.0 KiB|does not fit: .* but "
                                         r"memory_limit is .*Way out: use fewer layers"):
        load_model(path, backend="qpu", qpu="emu", memory_limit=4096)
