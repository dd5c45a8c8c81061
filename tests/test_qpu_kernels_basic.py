"""The basic QPU kernels (summation, memcpy, SGEMM tiles) equal numpy in the emulator on every thread
count they support, and the emulator's counters account for exactly the bytes they move."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe.errors import PimoeError
from pimoe.qpu import EmuDriver
from qpu_kernels import memcpy, sgemm, summation


@pytest.mark.parametrize("threads", summation.THREAD_COUNTS)
def test_summation_equals_numpy(threads):
    length = 16 * summation.DEPTH * threads * 8
    with EmuDriver(check_allocations=True, data_area_size=length * 4 + (1 << 14)) as drv:
        counters, _ = summation.run(drv, length=length, threads=threads, seed=threads)
    assert counters.tmu_read_bytes == 4 * length
    assert counters.tmu_write_bytes == 64 * threads        # one 16-lane partial per thread
    assert counters.barriers == threads
    assert counters.threads_per_qpu == (1 if threads <= 8 else 2 if threads <= 16 else 4)
    per_qpu = counters.instructions.sum(axis=1)
    assert np.count_nonzero(per_qpu) == min(threads, 8)


@pytest.mark.parametrize("threads", memcpy.THREAD_COUNTS)
def test_memcpy_equals_numpy(threads):
    nbytes = memcpy.BLOCK_BYTES * threads * 4
    with EmuDriver(check_allocations=True, data_area_size=2 * nbytes + (1 << 12)) as drv:
        counters, _ = memcpy.run(drv, nbytes=nbytes, threads=threads, seed=threads)
    assert counters.tmu_read_bytes == nbytes and counters.tmu_write_bytes == nbytes
    assert counters.tmu_writes == nbytes // 256              # one vec4 store per block


@pytest.mark.parametrize("threads", sgemm.THREAD_COUNTS)
def test_sgemm_tiles_equal_numpy(threads):
    with EmuDriver(check_allocations=True, data_area_size=1 << 18) as drv:
        counters, _, err = sgemm.run(drv, p=48, q=20, r=32, threads=threads, seed=threads)
    assert err < 1e-5
    tiles = (48 // 16) * (32 // 16)
    # per tile: Q columns of A and Q rows of B (16 lanes x 4 bytes each), 16 C rows, one tile-list entry;
    # per thread: one parameter row
    assert counters.tmu_read_bytes == tiles * (2 * 20 * 64 + 16 * 64 + 64) + 64 * threads
    assert counters.tmu_write_bytes == 48 * 32 * 4


def test_kernel_launchers_reject_bad_shapes():
    with EmuDriver(check_allocations=True, data_area_size=1 << 16) as drv:
        with pytest.raises(PimoeError, match="multiple"):
            summation.run(drv, length=100, threads=8)
        with pytest.raises(PimoeError, match="multiple"):
            memcpy.run(drv, nbytes=1000, threads=2)
        with pytest.raises(PimoeError, match="multiples of 16"):
            sgemm.run(drv, p=20, q=4, r=16, threads=1)
        with pytest.raises(PimoeError, match="supported"):
            sgemm.run(drv, p=16, q=4, r=16, threads=32)


def test_launch_check_equal_names_the_first_wrong_element():
    from qpu_kernels.launch import check_equal, check_sum

    check_equal(np.arange(5), np.arange(5), "same")
    with pytest.raises(PimoeError, match="element 3 is 9"):
        check_equal(np.array([0, 1, 2, 9, 4]), np.arange(5), "copy")
    check_sum(np.array([0xFFFFFFFF, 1], np.uint32), np.array([0], np.uint32), "wraps")   # 2^32 = 0 mod 2^32
    with pytest.raises(PimoeError, match="QPU sum 1 != numpy 0"):
        check_sum(np.array([1], np.uint32), np.array([0], np.uint32), "sum")
