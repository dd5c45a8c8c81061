"""Will the qpu backend's copy of a model fit? The limits that are true for a Raspberry Pi 4.

The v3d kernel driver does not allocate from CMA: since V3D 3.3 an MMU sits between the GPU and the bus
and buffer objects are shmem pages ("allowing us to use shmem objects for our storage instead of CMA",
drivers/gpu/drm/v3d/v3d_bo.c). So the CMA pool (CmaFree) is irrelevant, and these bind instead:

1. GPU addresses: every BO of the device lives in one 32-bit GPU virtual address space (4 GiB; BOs are
   placed at 128 KiB alignment, and other GPU users - a desktop's Mesa - take their share). On the
   virtual device the space starts at the emulator's bus base, so 3.75 GiB are usable there.
2. RAM: a BO's pages are allocated and pinned when it is created and stay pinned until it is freed: the
   whole QPU copy must fit in MemAvailable, next to
3. the page cache the CPU side keeps using: the GGUF file is memory-mapped and the attention, router,
   embedding and output tensors are read from it every token, so those bytes must stay resident too;
   plus a reserve for the OS and this process (RESERVE: a stated allowance, not a measurement).

The emulator ("emu") keeps the copy in an ordinary numpy array: only RAM binds, and its address space is
the emulator's 3.75 GiB too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GiB, MiB = 1 << 30, 1 << 20
GPU_VA = 1 << 32                 # the v3d MMU's address space (32-bit), one for all BOs of the device
BO_ALIGN = 128 << 10             # CREATE_BO alignment (GMP granularity)
RESERVE = 256 * MiB              # left for the OS and the Python process (an allowance, stated)


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo as bytes per key ({} when unreadable)."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


@dataclass(frozen=True)
class MemoryFacts:
    """What bounds the QPU copy on this machine (bytes); `where` names the sources."""
    mem_available: int
    mem_total: int
    gpu_va: int                   # usable GPU address space for this route
    cma_free: int | None = None   # reported for information only: the v3d driver does not use CMA
    where: str = "/proc/meminfo"


def gpu_address_space(kind: str) -> int:
    if kind in ("virtual", "emu"):
        from pimoe.qpu.emulator import BUS_BASE

        return GPU_VA - BUS_BASE
    return GPU_VA - BO_ALIGN     # the first 128 KiB-aligned slot is the lowest BO address


def machine_facts(kind: str, meminfo: dict[str, int] | None = None) -> MemoryFacts:
    info = read_meminfo() if meminfo is None else meminfo
    avail = info.get("MemAvailable")
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    total = info.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryFacts(mem_available=int(avail), mem_total=int(total), gpu_va=gpu_address_space(kind),
                       cma_free=info.get("CmaFree"))


def bo_span(sizes) -> int:
    """GPU address space taken by BOs of these sizes (each rounded up to the 128 KiB placement)."""
    return sum(-(-int(s) // BO_ALIGN) * BO_ALIGN for s in sizes)


@dataclass(frozen=True)
class FitReport:
    ok: bool
    lines: list[str]              # one per limit: "name: need X, have Y"
    problems: list[str]

    def message(self) -> str:
        return "; ".join(self.problems)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def check_fit(bo_sizes, facts: MemoryFacts, *, cpu_resident: int = 0, memory_limit: int | None = None,
              kind: str = "hw") -> FitReport:
    """The QPU copy (BOs of `bo_sizes` bytes) against the GPU address space and RAM. cpu_resident: bytes of
    the model file the CPU side reads every token (they stay in the page cache). memory_limit replaces
    MemAvailable (a user's cap)."""
    sizes = [int(s) for s in bo_sizes]
    copy = sum(sizes)
    span = bo_span(sizes)
    ram = facts.mem_available if memory_limit is None else int(memory_limit)
    ram_src = "MemAvailable" if memory_limit is None else "memory_limit"
    if memory_limit is None:
        need_ram = copy + cpu_resident + RESERVE
        parts = (f"{_gib(copy)} pinned QPU copy + {_gib(cpu_resident)} of the file the CPU reads every token + "
                 f"{_gib(RESERVE)} reserve")
    else:                         # a user's cap on the QPU copy alone
        need_ram, parts = copy, f"{_gib(copy)} QPU copy"
    lines = [f"GPU addresses: {_gib(span)} of {_gib(facts.gpu_va)} ({'the emulator' if kind != 'hw' else 'the v3d MMU'}"
             f"'s 32-bit address space, one for all BOs)",
             f"RAM: {parts} = {_gib(need_ram)} of {_gib(ram)} {ram_src}"]
    if facts.cma_free is not None and kind == "hw":
        lines.append(f"CMA: not used by the v3d driver (CmaFree {_gib(facts.cma_free)} does not limit the QPU copy)")
    problems = []
    if span > facts.gpu_va:
        problems.append(f"the QPU copy needs {_gib(span)} of GPU addresses but the GPU has {_gib(facts.gpu_va)} "
                        f"({span - facts.gpu_va:,} bytes too many); all BOs share one 32-bit address space, so "
                        f"more RAM does not help")
    if need_ram > ram:
        problems.append(f"it needs {_gib(need_ram)} of RAM ({parts}) but {ram_src} is {_gib(ram)}")
    return FitReport(not problems, lines, problems)


WAY_OUT = ("use fewer layers on the QPU or a smaller weight type (Q4_0/Q4_K pack to fewer bytes than Q8_0), "
           "close other programs using RAM or the GPU, or run the cpu backend")
