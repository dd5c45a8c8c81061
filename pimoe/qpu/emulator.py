r"""An instruction-level emulator of the VideoCore VI QPUs (V3D 4.2) behind py-videocore6's Driver API.

    from pimoe.qpu import EmuDriver
    with EmuDriver(data_area_size=1 << 20) as drv:
        code = drv.program(kernel, num_qpus=8)           # a @qpu kernel (+ its kwargs) or a list of words
        x = drv.alloc((8, 16), dtype=np.float32)          # an ndarray living in the emulated GPU memory
        unif = drv.alloc(2, dtype=np.uint32); unif[:] = [x.addresses()[0, 0], 8]
        drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=8)
        drv.last_counters.instructions.sum()             # what the dispatch did (EmuCounters)

Memory is one byte buffer holding a code area then a data area, as py-videocore6 lays out its single
buffer object; bus addresses start at `BUS_BASE`. `execute` pre-decodes the code area once (cached) and
runs the compiled interpreter in pimoe.qpu.emu_core. Any fault stops the dispatch with a QPUFault naming
the QPU, thread, PC and the disassembled instruction. Real faults stay faults: an address outside memory,
a runaway program (max_instructions, host_timeout_sec), an ldtmu that can never be answered, a barrier
that cannot complete. Mesa's code-generation rules (qpu_validate.c) are NOT faults here: the silicon runs
programs that break them; pimoe.qpu.lint reports them.

Semantic decisions and their evidence ("pv6" = py-videocore6's tests/ and examples/, which pass on a Pi 4;
"Mesa" = Mesa's broadcom/ driver and compiler; "none" = no evidence found, stated):

| behaviour | emulator | evidence |
|---|---|---|
| thread mode | from the dispatch's CFG5 THREADING bit (execute(threading=)), not the batch count: off = up to 2 threads per QPU with 64 registers each, on = up to 4 with 32 each; batch b starts on QPU b % 8; batches beyond 8 x slots wait for a thread to end; tidx = qpu << 2 \| thread in quarters (0/2 or 0..3) | pv6 test_barrier / test_parallel_16 (16 batches, threading off, 2 threads per QPU told apart by tidx, rf32 used); Mesa v3d_csd.h (the bit); 32 registers with 4 threads: none (Mesa's allocator is stricter) |
| the dispatch execute() runs | the CSD words py-videocore6's Driver writes for the same arguments, decoded as the hardware reads them (CSDDispatch.for_launch): its unmasked wgs_per_sg=16 leaves the 4-bit field 0 (= 16) and sets bit 0 of batches per supergroup - 1 (an odd workgroup size gets one batch more per supergroup); the virtual device decodes the same words, so both run the same dispatch | Mesa v3d_csd.h (fields, 0 = 16); pv6 driver.py dispatch() (the words); what the hardware does with the extra batch: none |
| TMU write + ldtmu (or SFU, barrier) in one instruction | executed | pv6 summation, scopy (published 7241 / 2424 MB/s); Mesa's qpu_validate forbids it for its compiler only |
| TMU config (tmuc, tmuau's uniform) | one config byte per lookup, the word shifts right a byte per lookup, filling 0xff (plain 32-bit) | pv6 test_tmu_vec_* (config words for 4 lookups), summation/scopy |
| vec2/3/4 loads and stores | one lookup, n ldtmu results / n tmud words; component k of a lane at (a & ~15) \| ((a + 4k) & 15); counted as one request per lane of up to 16 bytes | pv6 test_tmu_vec_read/_write, _naive_read/_write |
| several tmud with a plain config | consecutive words | none (pimoe's own kernels rely on it; 16-byte aligned it equals vec4) |
| prefetch (config op 0 on a load) | no ldtmu result; counted | pv6 scopy (unroll 1: config 0xfc80fcfc); op numbering Mesa v3d_tmu |
| atomics, per-quad lookups | fault "not modelled" | - |
| flapush / flbpush / flpop | x << 2 \| 3 * flag / x >> 2 (flags unchanged) | pv6 test_cond_flx (its effect on the flags: none) |
| vfla/vflna/vflb/vflnb | the flag as an int16 in both halves | pv6 test_cond_vflx |
| branch with a register uniform address (unif_addr(reg)) | the smallest non-zero lane value | pv6 test_uniform_branch_reg (address in lane 1, others 0), test_unifa (ascending lanes: lane 0; quad-rotated: lane 1): the one rule fitting all three |
| branch target from a register, unifa address | lane 0 | pv6 test_unifa ("address is taken from element zero"); targets: none beyond uniform values |
| ldunifa with a unifa write in the same instruction | reads the old stream | pv6 test_unifa |
| a not-taken branch with a uniform destination | does not consume the uniform | pv6 memset/scopy/summation loops (unif_addr(absolute=False)) |
| results | written at the end of the instruction; conditions read the flags from before it | Mesa; pv6 test_condition_codes |
| r5 | one value per quad (a write stores each quad's first lane); r5rep lane 0 | pv6 test_signals (quad broadcast) |
| rotate | mul ALU only; accumulators across 16 lanes, register-file operands within each quad; lane i takes lane i - n | pv6 test_signals |
| floats | denormals flushed (sign kept); +, -, * correctly rounded; fmin/fmax return the non-NaN operand; fcmp = a - b; flags Z = (x == 0), N = (x < 0), C = (x <= 0) | pv6 test_alu; Mesa (fge via fcmp + pushc) |
| integers | C: carry of add, borrow of sub, a > b for min/max; ftoi* saturate, NaN -> 0; multop + umul24 = 32-bit product; vadd/vsub wrap per 16-bit half | pv6 test_alu; Mesa imul idiom; vadd/vsub: none |
| SFU | float64 math rounded to f32 (more exact than the hardware's ~1e-4); exp = 2^x, log = log2, sin = sin(pi x) on [-0.5, 0.5] and -1 / +1 beyond; r4 readable 2 instructions after the write | pv6 test_sfu |
| store visibility | a load of a word this thread stored without a tmuwt between faults (check_memory_order=False allows it) | the hardware only promises visibility after tmuwt (pv6 tests use tmuwt) |
| EmuDriver address check | an access outside the buffer object (code + data areas) faults; inside it, past the last Array, it is legal (EmuDriver(check_allocations=True) faults there, for debugging) | pv6 Driver: one BO for code and data; pv6 examples/sgemm.py reads 16 words of an 11-word last row (hardware-tested) |
| uniform reads of words stored by the TMU in the same dispatch | see the OLD value: memory as the dispatch found it (every stored 4 KiB page is kept before its first store; EmuCounters.stale_uniform_reads counts the reads that got an old word; if the host refuses to reserve a slot for every reachable page, SHADOW_FALLBACK_PAGES are kept and a store past them is counted in unshadowed_stores with a RuntimeWarning) | pv6 test_tmu_read_tmu_write_uniform_read (stored 2, waited with tmuwt, the uniform read returns 1); why (uniforms fetched around the TMU's write-back cache): assumed |
| TMU result FIFO | 16 / (threads used per QPU) entries per thread | Broadcom's FIFO sizes per QPU, split by threads (Mesa) |
| which thread switches make a thread wait (the timing model's input) | counted (thread_switches_with_loads) when the switch takes effect, after the thrsw's 2 delay slots (a thrsw in the last slot of another chains), with ldtmu results not yet taken: lookups issued before or in the delay slots, less results read in them. Not counted: a switch with only stores pending (tmuwt is where a thread waits for its stores, counted as tmuwt), prefetches (no result), the program-end switch. A switch counts however long ago the outstanding lookup was issued (its result may have arrived: the rule does not look at the issue time the emulator keeps for the load-to-use bins) | none direct. Indirect: under this rule py-videocore6's published 1024^3 sgemm (2 such switches per k step) and its 2019 naive sgemm (1; its second thrsw comes after both results were read) imply round trips of 167 and 150 cycles; charging every thrsw they imply 167 and 75 (results/calibration-20261204-184104.json, -182310.json) |
| /dev/mem inside virtual_v3d() (pimoe.qpu.vdev_regs) | the V3D register windows only (hub 0xFEC00000, core 0 0xFEC04000, 16 KiB each); identity registers hold GET_PARAM's values (HUB_IDENT0: 0), read-only; performance counters: source 32 (cycle-count) on the device's GPU clock, 16 (valid-instr cycles) = a job's instructions x the timing model's 4 cycles each, 86 (compute-active) = its PREDICTED Pi 4 time x 500 MHz, every other source 0; the client's stores take effect when the device looks (every 1 ms while mapped, and at each ioctl); any other physical range EPERM | the kernel's v3d_regs.h (offsets, fields), v3d_perfmon.c and v3d_performance_counters.h (programming, source numbers), drivers/char/mem.c (STRICT_DEVMEM); pv6 test_v3d.py and examples/pctr_gpu_clock.py (499.1 MHz printed, a Pi 4 500.5) pass over it (results/vdev-pyvideocore6-20261204-1857.json); the counts of 16 and 86 on a Pi, and HUB_IDENT0's value: none |
| timeout_sec | bounds the PREDICTED Pi 4 time of the dispatch (pimoe.qpu.timing); the emulator's own budgets are max_instructions / host_timeout_sec | the hardware's wait is on real time; pv6's 1024^3 sgemm (0.55 s on a Pi 4) must not time out on a slow host |
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from pimoe.errors import PimoeError
from pimoe.qpu import emu_core as core
from pimoe.qpu.emu_decode import N_FIELDS, DecodedProgram

DEFAULT_CODE_AREA_SIZE = 1024 * 1024
DEFAULT_DATA_AREA_SIZE = 32 * 1024 * 1024
BUS_BASE = 0x10000000  # bus address of the first byte of emulated memory (address 0 faults)
CHUNK_INSTRUCTIONS = 4_000_000  # the interpreter returns to python this often (timeout, progress)


class DriverError(PimoeError):
    """Misuse of the driver (closed, out of memory, bad dispatch parameters)."""


class QPUFault(PimoeError):
    """A kernel did something the hardware would not survive (or a hazard that breaks real kernels)."""


class Array(np.ndarray):
    """An ndarray living in the emulated GPU memory; `addresses()` gives each element's 32-bit bus address.

    Views (slices, reshapes, transposes) know their own address; results that are copies (x + 1, x.copy())
    are plain arrays in host memory and have no address.
    """

    def __new__(cls, *args, phyaddr: int, **kwargs):
        obj = super().__new__(cls, *args, **kwargs)
        buf = kwargs["buffer"]
        obj._mem_lo = buf.__array_interface__["data"][0]  # host pointer of bus address BUS_BASE
        obj._mem_hi = obj._mem_lo + buf.nbytes
        obj._bus_lo = phyaddr - kwargs.get("offset", 0)  # bus address of the buffer's first byte
        obj.address = phyaddr
        return obj

    def __array_finalize__(self, obj) -> None:
        lo = getattr(obj, "_mem_lo", None)
        hi = getattr(obj, "_mem_hi", None)
        self._mem_lo, self._mem_hi, self.address = lo, hi, None
        self._bus_lo = getattr(obj, "_bus_lo", BUS_BASE)
        if lo is not None:
            ptr = self.__array_interface__["data"][0]
            if lo <= ptr < hi:
                self.address = self._bus_lo + ptr - lo

    def addresses(self) -> np.ndarray:
        """uint32 array of the same shape: the bus address of every element (strided views too)."""
        if self.address is None:
            raise DriverError("this array does not live in QPU memory (it was copied out of it)")
        start = int(self.address)
        if self.flags.c_contiguous:
            return np.arange(start, start + self.nbytes, self.itemsize, dtype=np.uint64).astype(
                np.uint32).reshape(self.shape)
        addr = np.full(self.shape, start, dtype=np.int64)
        for axis, (n, stride) in enumerate(zip(self.shape, self.strides)):
            shape = [1] * self.ndim
            shape[axis] = n
            addr += (np.arange(n, dtype=np.int64) * stride).reshape(shape)
        return addr.astype(np.uint32)


@dataclass
class EmuCounters:
    """What one `execute` did. Per-thread arrays are [8 QPUs, 4 thread slots] (summed over the batches a
    slot ran); the scalar totals are sums over them. This is the timing model's input."""

    threads_per_qpu: int
    batches: int
    wall_seconds: float
    per_thread: dict[str, np.ndarray] = field(repr=False)
    scratch_accesses: int = 0  # accesses the MMU model sent to the scratch page (run_csd(check_addresses=False))
    # uniform reads that returned a word the dispatch had since overwritten through the TMU (what a Pi 4
    # returns: see the docstring's table), and stores whose page could not be kept for them (consecutive
    # stores to one page count once; 0 unless the host refused the shadow's reservation: a RuntimeWarning
    # says so)
    stale_uniform_reads: int = 0
    unshadowed_stores: int = 0

    @property
    def instructions(self) -> np.ndarray:
        return self.per_thread["instructions"]

    @property
    def total_instructions(self) -> int:
        return int(self.per_thread["instructions"].sum())

    def total(self, name: str) -> int:
        return int(self.per_thread[name].sum())

    def __getattr__(self, name: str):
        per = self.__dict__.get("per_thread")
        if per is not None and name in per:
            return int(per[name].sum())
        raise AttributeError(name)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {name: int(v.sum()) for name, v in self.per_thread.items()}
        d["instructions_per_qpu"] = self.per_thread["instructions"].sum(axis=1).tolist()
        d.update(threads_per_qpu=self.threads_per_qpu, batches=self.batches, wall_seconds=self.wall_seconds)
        return d


_FAULT_TEXT = {
    core.FLT_INVALID_WORD: ("invalid instruction word", ": {error}"),
    core.FLT_PC_RANGE: "program counter left the code area (ran off the end of the program, or a missing "
                       "program-end thrsw)",
    core.FLT_MEM_RANGE: ("memory access outside the driver's memory",
                        ": address {addr} in lane {a2} is outside every allocated buffer (memory {lo}..{hi})"),
    core.FLT_MEM_ALIGN: ("misaligned memory access", ": address {addr} is not {a2}-byte aligned"),
    core.FLT_R4_TOO_SOON: "r4 read too soon after an SFU write (the result arrives 2 instructions later)",
    core.FLT_MULTI_UNIT: "more than one of TMU write / SFU write / barrier / ldtmu in one instruction",
    core.FLT_ROTATE_SRC: "rotate source (or the r5 rotate amount) written by the previous instruction",
    core.FLT_UNIFA_TOO_SOON: "ldunifa less than 3 instructions after the write to unifa",
    core.FLT_THRSW_IN_BRANCH: "thrsw in a branch delay slot",
    core.FLT_BRANCH_IN_BRANCH: "branch in a branch delay slot",
    core.FLT_SFU_IN_THRSW: "SFU write in a thrsw delay slot (the result would land in the other thread)",
    core.FLT_THRSW_TOO_CLOSE: "thrsw in the delay slots of another thrsw",
    core.FLT_LDTMU_EMPTY: "ldtmu with no TMU load outstanding (the hardware would hang)",
    core.FLT_FIFO_OVERFLOW: ("too many TMU load results outstanding for this thread's FIFO (16 / threads "
                             "entries; the hardware would stall forever)", " ({a1} > {a2})"),
    core.FLT_TMUD_OVERFLOW: "more than 4 tmud writes before the address",
    core.FLT_UNSUPPORTED: "not modelled by the emulator",
    core.FLT_REG_RANGE: ("register outside this thread's part of the register file",
                        ": rf{a1}, but in this thread mode (execute(threading=...)) a thread has rf0..rf{last}"),
    core.FLT_BARRIER_DEADLOCK: ("barrier deadlock: not every thread of the supergroup can reach the barrier",
                               " ({a1} of {a2} threads arrived; the rest cannot run: too few thread slots, or "
                               "they ended)"),
    core.FLT_BUDGET: ("instruction budget exhausted (runaway program?)", " after {a1} instructions"),
    core.FLT_ROTATE_MUX: "rotate with a register-file operand read through raddr_b (which holds the amount)",
    core.FLT_BRANCH_TARGET: ("branch target outside the code area or not 8-byte aligned", ": {addr}"),
    core.FLT_R4_WRITE_TOO_SOON: "r4 written too soon after an SFU write",
    core.FLT_SFU_TOO_SOON: "SFU write too soon after another SFU write",
    core.FLT_BRANCH_IN_THRSW: "branch in a thrsw delay slot",
    core.FLT_TWO_LAST_THRSW: "second last-thrsw marker (two thrsw pairs)",
    core.FLT_RF_AFTER_END: "register-file write in the delay slots of the program-end thrsw",
    core.FLT_LOAD_BEFORE_TMUWT: ("load of a word this thread stored without a tmuwt in between (the store "
                                 "need not be visible yet; EmuDriver(check_memory_order=False) allows it)",
                                 ": address {addr} in lane {a2}"),
}
# (a fault's text, or (text, detail): the detail is formatted with the fault's arguments a1, a2, addr = a1 as
# a bus address, last = a2 - 1, lo..hi = the memory's bus range, error = why the word does not decode)
_UNSUPPORTED_TEXT = {core.UNS_ADD_OP: "add-ALU op", core.UNS_MUL_OP: "mul-ALU op", core.UNS_SIGNAL: "signal",
                     core.UNS_MAGIC: "magic write address", core.UNS_TMU_CONFIG: "TMU config word",
                     core.UNS_BRANCH: "uniform branch destination"}


def thread_mode(batches: int, threading: bool, threads_per_qpu: int | None = None) -> tuple[int, int, int]:
    """(thread slots per QPU, registers per thread, threads per QPU actually used) of a dispatch.

    The hardware takes the mode from the dispatch's CFG5 THREADING bit, not from the batch count: off, a
    QPU runs up to 2 threads with 64 registers each (py-videocore6's hardware-tested 16-batch programs
    test_barrier / test_parallel_16 run 2 threads per QPU, tell them apart by tidx and use rf32); on, up
    to 4 threads (32 registers each: no hardware test shows it, stated). Batches go round-robin over the
    8 QPUs; batches beyond 8 x slots wait for a thread to end. threads_per_qpu (1, 2, 4) overrides the
    slots (pimoe's extension; 4 slots have 32 registers)."""
    if threads_per_qpu is not None:
        slots = int(threads_per_qpu)
        if slots not in (1, 2, 4):
            raise DriverError(f"threads_per_qpu={threads_per_qpu}: the QPU runs 1, 2 or 4 threads")
    else:
        slots = 4 if threading else 2
    nregs = 32 if slots == 4 else 64
    used = min(slots, -(-int(batches) // core.N_QPUS))
    used = 4 if used == 3 else used
    return slots, nregs, used


class Dispatcher:
    """py-videocore6's compute_shader_dispatcher(): dispatches run one after another."""

    def __init__(self, drv: "EmuDriver", timeout_sec: float):
        self._drv, self._timeout = drv, timeout_sec

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def dispatch(self, code, local_invocation=None, uniforms=None, workgroup=(1, 1, 1), wgs_per_sg=16,
                 thread=1, **kwargs):
        return self._drv.execute(code, local_invocation, uniforms, timeout_sec=self._timeout, workgroup=workgroup,
                                 wgs_per_sg=wgs_per_sg, thread=thread, **kwargs)


class EmuDriver:
    """py-videocore6's Driver, emulated: alloc / program / execute over an in-process QPU model."""

    def __init__(self, *, code_area_size: int = DEFAULT_CODE_AREA_SIZE, data_area_size: int = DEFAULT_DATA_AREA_SIZE,
                 check_registers: bool = True, check_memory_order: bool = True, check_allocations: bool = False):
        # check_allocations: fault on an access outside the Arrays allocated so far (a debugging aid for
        # pimoe's own kernels). Off by default: on the Pi, py-videocore6's Driver maps code and data as ONE
        # buffer object, so the silicon reads past the last Array without complaint (py-videocore6's
        # hardware-tested examples/sgemm.py reads 16 words of an 11-word row at the end of its data).
        if code_area_size <= 0 or code_area_size % 8 or data_area_size < 0:
            raise DriverError(f"code_area_size {code_area_size} must be a positive multiple of 8 and "
                              f"data_area_size {data_area_size} non-negative")
        self.code_area_size = int(code_area_size)
        self.data_area_size = int(data_area_size)
        total = self.code_area_size + self.data_area_size
        total = (total + 3) // 4 * 4
        if BUS_BASE + total > 1 << 32:
            raise DriverError(f"{total} bytes of QPU memory do not fit the 32-bit bus address space")
        self.code_area_base = 0
        self.data_area_base = self.code_area_size
        self.code_pos = self.code_area_base
        self.data_pos = self.data_area_base
        self.check_registers = check_registers
        self.check_memory_order = check_memory_order
        self.check_allocations = check_allocations
        self.memory = np.zeros(total, dtype=np.uint8)
        self._mem32 = self.memory.view(np.uint32)
        self._blocks: list[tuple[int, DecodedProgram]] = []  # (word offset, decoded block)
        self.last_counters: EmuCounters | None = None
        self._closed = False
        import threading

        self._lock = threading.RLock()  # one dispatch at a time (submit() queues behind a running one)

    # ---- py-videocore6 API ---------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("the driver is closed")

    def alloc(self, *args, **kwargs) -> Array:
        """Allocate an Array in the data area (same arguments as np.ndarray(shape, dtype))."""
        self._check_open()
        offset = self.data_pos
        left = self.data_area_base + self.data_area_size - offset
        probe = np.ndarray(*args, **kwargs) if "buffer" not in kwargs else None  # size only, no data
        if probe is not None and probe.nbytes > left:
            raise DriverError(f"data area too small: {probe.nbytes} more bytes requested, {left} left "
                              f"(EmuDriver(data_area_size=...))")
        arr = Array(*args, phyaddr=BUS_BASE + offset, buffer=self.memory, offset=offset, **kwargs)
        self.data_pos += arr.nbytes
        return arr

    def program(self, prog, *args, **kwargs) -> Array:
        """Assemble a @qpu kernel (with its arguments) or take a list of 64-bit words; place it in the
        code area and return it as an Array of uint64 (its addresses() give the code address)."""
        self._check_open()
        if callable(prog):
            from pimoe.qpu.asm import assemble

            words = assemble(prog, *args, **kwargs)
        elif isinstance(prog, (list, tuple, np.ndarray)):
            words = [int(w) for w in prog]
        else:
            raise DriverError(f"program() takes a @qpu kernel or a list of words, not {type(prog).__name__}")
        if not words:
            raise DriverError("program() got an empty program")
        for i, w in enumerate(words):
            if not 0 <= w < 1 << 64:
                raise DriverError(f"program word {i} ({w!r}) is not a 64-bit unsigned value")
        offset = self.code_pos
        n = len(words)
        if offset + 8 * n > self.code_area_base + self.code_area_size:
            raise DriverError(f"code area too small for {n} more instructions (EmuDriver(code_area_size=...))")
        code = Array(shape=n, dtype=np.uint64, phyaddr=BUS_BASE + offset, buffer=self.memory, offset=offset)
        code[:] = np.array(words, dtype=np.uint64)
        self.code_pos += 8 * n
        self._blocks.append((offset // 8, DecodedProgram(np.asarray(code))))
        return code

    def dump_code(self, code, *, file=sys.stdout) -> None:
        for w in code:
            print(f"{int(w):#018x}", file=file)

    def dump_program(self, prog, *args, file=sys.stdout, **kwargs) -> None:
        from pimoe.qpu.asm import assemble

        self.dump_code(assemble(prog, *args, **kwargs), file=file)

    def compute_shader_dispatcher(self, timeout_sec: float = 10) -> Dispatcher:
        self._check_open()
        return Dispatcher(self, timeout_sec)

    def execute(self, code, local_invocation=None, uniforms=None, timeout_sec: float = 10,
                workgroup=(1, 1, 1), wgs_per_sg: int = 16, thread: int = 1, propagate_nan: bool = False,
                single_seg: bool = False, threading: bool = False, *, threads_per_qpu: int | None = None,
                max_instructions: int | None = None, host_timeout_sec: float | None = None,
                progress: bool = True) -> EmuCounters:
        """Run `thread` 16-lane batches of `code` to completion; returns (and keeps in last_counters) the
        EmuCounters. timeout_sec bounds the PREDICTED Pi 4 time of the dispatch (pimoe.qpu.timing), as
        the hardware's timeout bounds its real time. Extensions over py-videocore6: threads_per_qpu
        (1/2/4), max_instructions and host_timeout_sec (the emulator's own budgets)."""
        self._check_open()
        if isinstance(local_invocation, (int, np.integer)) and uniforms is None:
            # the older py-videocore6 signature: execute(code, uniforms, ...)
            local_invocation, uniforms = None, int(local_invocation)
        entry = self._entry_index(code)
        # the dispatch as the hardware reads the CSD words py-videocore6's Driver writes for these arguments
        # (the virtual device decodes the same words: both run the same dispatch)
        csd = CSDDispatch.for_launch(BUS_BASE + self.code_area_base + 8 * entry,
                                     0 if uniforms is None else int(uniforms) & 0xFFFFFFFF, thread=thread,
                                     local_invocation=(16, 1, 1) if local_invocation is None else local_invocation,
                                     workgroup=workgroup, wgs_per_sg=wgs_per_sg, threading=threading,
                                     single_seg=single_seg, propagate_nans=propagate_nan)
        table, errors = self._decoded_table()
        # an access must stay in py-videocore6's single buffer object (code and data areas), as the v3d MMU
        # maps it; with check_allocations, in the code and Arrays allocated so far. A stray address faults
        # naming the instruction.
        if self.check_allocations:
            regions = [(BUS_BASE + self.code_area_base, BUS_BASE + self.code_pos)]
            if self.data_pos > self.data_area_base:
                regions.append((BUS_BASE + self.data_area_base, BUS_BASE + self.data_pos))
        else:
            regions = [(BUS_BASE, BUS_BASE + len(self.memory))]
        with self._lock:
            self.last_counters = _run_dispatch(
                self.memory, BUS_BASE, table, errors, BUS_BASE + self.code_area_base, entry,
                uniforms=csd.uniforms_addr, wg_size=csd.wg_size, batches_per_sg=csd.batches_per_sg,
                workgroup=csd.wg_count, wgs_per_sg=csd.wgs_per_sg, thread=csd.num_batches,
                single_seg=csd.single_seg, threading=csd.threading, threads_per_qpu=threads_per_qpu,
                check_registers=self.check_registers, check_memory_order=self.check_memory_order,
                regions=regions, check_addresses=True, scratch_offset=0, timeout_sec=timeout_sec,
                max_instructions=max_instructions, host_timeout_sec=host_timeout_sec, progress=progress)
        return self.last_counters

    def submit(self, code, *args, **kwargs) -> "Job":
        """execute() in the background (same arguments): returns a Job at once; Job.wait() gives the
        EmuCounters (or raises the dispatch's fault). The interpreter releases the GIL, so Python threads
        (e.g. CPU expert work) run meanwhile; jobs of one driver run one after another, as on the GPU."""
        self._check_open()
        return Job(lambda: self.execute(code, *args, **kwargs))

    # ---- internals ------------------------------------------------------------------------------------
    def _entry_index(self, code) -> int:
        addr = getattr(code, "address", None)
        if addr is None:
            addr = int(np.asarray(code.addresses()).reshape(-1)[0])
        rel = int(addr) - (BUS_BASE + self.code_area_base)
        if rel < 0 or rel % 8 or rel >= self.code_pos:
            raise DriverError(f"code at address 0x{int(addr):08x} is not a program of this driver")
        return rel // 8

    def _decoded_table(self) -> tuple[np.ndarray, dict[int, str]]:
        """The decoded code area (re-decoding a block whose words the host changed since program())."""
        n = self.code_pos // 8
        table = np.zeros((n, N_FIELDS), dtype=np.int32)
        table[:, 0] = 2  # gaps decode as invalid
        errors: dict[int, str] = {}
        words = self.memory[: self.code_pos].view(np.uint64)
        for k, (start, block) in enumerate(self._blocks):
            cur = words[start: start + len(block.words)]
            if not np.array_equal(cur, block.words):
                block = DecodedProgram(cur)
                self._blocks[k] = (start, block)
            table[start: start + len(block.words)] = block.table
            for i, e in block.errors.items():
                errors[start + i] = e
        return table, errors


class Job:
    """A dispatch running in the background (EmuDriver.submit, submit_csd): wait() for its result."""

    def __init__(self, fn):
        import threading

        self._result = None
        self._error: BaseException | None = None
        self._done = threading.Event()

        def body():
            try:
                self._result = fn()
            except BaseException as exc:  # handed to wait()
                self._error = exc
            finally:
                self._done.set()

        self._thread = threading.Thread(target=body, name="pimoe-qpu-job", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None):
        """The dispatch's EmuCounters; raises its QPUFault, or TimeoutError if not done within `timeout`
        seconds of host time."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"QPU job still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result


# ==========================================================================================================
# the device view: one GPU address space, CSD configuration words, run_csd (contract 1 of INTERFACES.md)

PAGE = 4096
SHADOW_FALLBACK_PAGES = 4096   # stored pages kept for uniform reads when the host refuses to reserve them all


class GPUMemory:
    """One flat GPU virtual address space, as the v3d kernel driver gives a DRM file (32-bit, 4 GiB): a
    byte buffer of `size` bytes at GPU address `base`, buffers allocated in it. Its first page is the MMU's
    scratch page (never allocated): with run_csd(check_addresses=False) an access outside every buffer
    goes there, as the v3d MMU sends unmapped addresses to its scratch page."""

    def __init__(self, size: int = 256 << 20, *, base: int = BUS_BASE, buffer=None):
        """buffer: an existing writable byte buffer of `size` bytes to use as the memory (e.g. the shared
        mapping pimoe.qpu.vdev's clients also map) instead of fresh zero pages."""
        if size < 2 * PAGE or size % PAGE or base % PAGE or base + size > 1 << 32 or base < 0:
            raise DriverError(f"GPUMemory(size={size}, base=0x{base:x}): whole pages inside 4 GiB, at least 2")
        import threading

        self.base = int(base)
        self.size = int(size)
        # zero pages cost nothing until touched
        self.memory = np.zeros(self.size, dtype=np.uint8) if buffer is None else \
            np.frombuffer(buffer, dtype=np.uint8, count=self.size)
        self._allocs: dict[int, int] = {}                     # address -> size
        self._free: list[tuple[int, int]] = [(self.base + PAGE, self.base + self.size)]
        self._decoded: dict[int, tuple[np.ndarray, DecodedProgram]] = {}
        self.lock = threading.RLock()                         # one dispatch at a time on this device

    @property
    def scratch_address(self) -> int:
        return self.base

    def alloc(self, nbytes: int, align: int = PAGE) -> int:
        """GPU address of a new zero-filled buffer of nbytes (rounded up to whole pages, as BOs are)."""
        nbytes = int(nbytes)
        if nbytes <= 0 or align <= 0 or align & (align - 1):
            raise DriverError(f"alloc({nbytes}, align={align}): a positive size and a power-of-two alignment")
        need = -(-nbytes // PAGE) * PAGE
        for i, (lo, hi) in enumerate(self._free):
            start = -(-lo // align) * align
            if start + need <= hi:
                pieces = [(lo, start)] if start > lo else []
                if start + need < hi:
                    pieces.append((start + need, hi))
                self._free[i:i + 1] = pieces
                self._allocs[start] = need
                self._zero(start, need)
                return start
        raise DriverError(f"GPUMemory: no room for {nbytes} bytes (size {self.size}; GPUMemory(size=...))")

    def _zero(self, addr: int, nbytes: int) -> None:
        """A new buffer reads as zeros (pimoe.qpu.vdev frees the pages instead of writing them)."""
        self.view(addr, nbytes)[:] = 0

    def free(self, addr: int) -> None:
        addr = int(addr)
        if addr not in self._allocs:
            raise DriverError(f"free(0x{addr:08x}): not an allocated buffer")
        size = self._allocs.pop(addr)
        self._decoded.pop(addr, None)
        self._free.append((addr, addr + size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in self._free:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        self._free = merged

    def view(self, addr: int, nbytes: int) -> np.ndarray:
        """A writable uint8 view (no copy) of nbytes at GPU address addr."""
        off = int(addr) - self.base
        if off < 0 or nbytes < 0 or off + nbytes > self.size:
            raise DriverError(f"view(0x{int(addr):08x}, {nbytes}) is outside GPU memory "
                              f"0x{self.base:08x}..0x{self.base + self.size:08x}")
        return self.memory[off: off + int(nbytes)]

    def buffer_of(self, addr: int) -> tuple[int, int] | None:
        """(start, size) of the allocated buffer holding addr, or None."""
        for start, size in self._allocs.items():
            if start <= addr < start + size:
                return start, size
        return None

    def regions(self) -> list[tuple[int, int]]:
        return sorted((a, a + n) for a, n in self._allocs.items())

    def decoded(self, start: int, size: int) -> DecodedProgram:
        """The decoded words of a buffer (cached while its bytes are unchanged)."""
        words = self.view(start, size).view(np.uint64)
        hit = self._decoded.get(start)
        if hit is not None and len(hit[0]) == len(words) and np.array_equal(hit[0], words):
            return hit[1]
        prog = DecodedProgram(words)
        self._decoded[start] = (words.copy(), prog)
        return prog


# CSD configuration word fields (Mesa's broadcom/common/v3d_csd.h)
CFG012_WG_COUNT_SHIFT = 16
CFG3_OVERLAP_WITH_PREV = 1 << 26
CFG3_MAX_SG_ID_SHIFT = 20
CFG3_BATCHES_PER_SG_M1_SHIFT = 12
CFG3_WGS_PER_SG_SHIFT = 8
CFG5_PROPAGATE_NANS = 1 << 2
CFG5_SINGLE_SEG = 1 << 1
CFG5_THREADING = 1 << 0


@dataclass(frozen=True)
class CSDDispatch:
    """A compute dispatch as the 7 CSD configuration words describe it (what DRM_IOCTL_V3D_SUBMIT_CSD
    carries in cfg[7]; encode/decode as the hardware reads them)."""

    shader_addr: int
    uniforms_addr: int
    num_batches: int
    wg_count: tuple[int, int, int] = (1, 1, 1)
    wg_size: int = 16
    wgs_per_sg: int = 16
    batches_per_sg: int = 1
    threading: bool = False
    single_seg: bool = False
    propagate_nans: bool = False
    overlap_with_prev: bool = False
    max_sg_id: int = 0

    @classmethod
    def for_launch(cls, shader_addr: int, uniforms_addr: int, *, thread: int = 1, local_invocation=(16, 1, 1),
                   workgroup=(1, 1, 1), wgs_per_sg: int = 16, threading: bool = False, single_seg: bool = False,
                   propagate_nans: bool = False) -> "CSDDispatch":
        """The dispatch the hardware reads from the words py-videocore6's dispatch() writes for the same
        arguments. It writes wgs_per_sg unmasked at bit 8 of CFG3, so its default 16 leaves the 4-bit field
        0 (= 16 in Mesa's v3d_csd.h) and sets bit 12, the lowest bit of batches per supergroup - 1: with an
        odd workgroup size the hardware reads one batch more per supergroup than the invocations fill."""
        local = tuple(int(v) for v in local_invocation)
        wg = tuple(int(v) for v in workgroup)
        if len(local) != 3 or min(local) < 1:
            raise DriverError(f"local_invocation {local_invocation} must be 3 positive sizes")
        if len(wg) != 3 or min(wg) < 1:
            raise DriverError(f"workgroup {workgroup} must be 3 positive sizes")
        if int(shader_addr) & 7:
            raise DriverError(f"shader address 0x{int(shader_addr):08x} is not 8-byte aligned")
        if int(thread) < 1 or int(wgs_per_sg) < 1:
            raise DriverError(f"thread={thread}, wgs_per_sg={wgs_per_sg}: both at least 1")
        wg_size = local[0] * local[1] * local[2]
        # what the words' fields cannot hold: py-videocore6 would write it anyway and the hardware read another
        # dispatch (a 512-invocation workgroup as 512 & 0xFF = 0 = 256, its batch count spilling into MAX_SG_ID)
        # (a wgs_per_sg above 16 is not refused: it spills into the batch count as 16 does, see above)
        if wg_size > 256 or max(wg) > 0xFFFF:
            raise DriverError(f"local_invocation {local} ({wg_size} invocations), workgroup {wg}: the CSD words "
                              f"hold at most 256 invocations per workgroup and 65535 workgroups per dimension "
                              f"(Mesa v3d_csd.h)")
        cfg3 = ((-(-int(wgs_per_sg) * wg_size // 16) - 1) << CFG3_BATCHES_PER_SG_M1_SHIFT) \
            | (int(wgs_per_sg) << CFG3_WGS_PER_SG_SHIFT) | (wg_size & 0xFF)
        cfg5 = int(shader_addr) | (CFG5_PROPAGATE_NANS if propagate_nans else 0) \
            | (CFG5_SINGLE_SEG if single_seg else 0) | (CFG5_THREADING if threading else 0)
        return cls.decode([v << CFG012_WG_COUNT_SHIFT for v in wg] + [cfg3, int(thread) - 1, cfg5,
                                                                     int(uniforms_addr)])

    def encode(self) -> tuple[int, ...]:
        if self.shader_addr & 7:
            raise DriverError(f"shader address 0x{self.shader_addr:08x} is not 8-byte aligned")
        x, y, z = self.wg_count
        cfg3 = ((self.batches_per_sg - 1) << CFG3_BATCHES_PER_SG_M1_SHIFT) \
            | ((self.wgs_per_sg & 0xF) << CFG3_WGS_PER_SG_SHIFT) | (self.wg_size & 0xFF) \
            | (self.max_sg_id << CFG3_MAX_SG_ID_SHIFT) | (CFG3_OVERLAP_WITH_PREV if self.overlap_with_prev else 0)
        cfg5 = self.shader_addr | (CFG5_PROPAGATE_NANS if self.propagate_nans else 0) \
            | (CFG5_SINGLE_SEG if self.single_seg else 0) | (CFG5_THREADING if self.threading else 0)
        return (x << CFG012_WG_COUNT_SHIFT, y << CFG012_WG_COUNT_SHIFT, z << CFG012_WG_COUNT_SHIFT, cfg3,
                self.num_batches - 1, cfg5, self.uniforms_addr)

    @classmethod
    def decode(cls, words) -> "CSDDispatch":
        w = [int(v) & 0xFFFFFFFF for v in words]
        if len(w) != 7:
            raise DriverError(f"CSD configuration: 7 words, got {len(w)}")
        wg_size = w[3] & 0xFF
        wgs = (w[3] >> CFG3_WGS_PER_SG_SHIFT) & 0xF
        return cls(shader_addr=w[5] & ~7, uniforms_addr=w[6], num_batches=w[4] + 1,
                   wg_count=tuple(v >> CFG012_WG_COUNT_SHIFT for v in w[:3]),
                   wg_size=wg_size if wg_size else 256, wgs_per_sg=wgs if wgs else 16,
                   batches_per_sg=((w[3] >> CFG3_BATCHES_PER_SG_M1_SHIFT) & 0xFF) + 1,
                   threading=bool(w[5] & CFG5_THREADING), single_seg=bool(w[5] & CFG5_SINGLE_SEG),
                   propagate_nans=bool(w[5] & CFG5_PROPAGATE_NANS),
                   overlap_with_prev=bool(w[3] & CFG3_OVERLAP_WITH_PREV),
                   max_sg_id=(w[3] >> CFG3_MAX_SG_ID_SHIFT) & 0x3F)


EmuResult = EmuCounters  # what run_csd returns (scratch_accesses: accesses the MMU sent to the scratch page)


def run_csd(memory: GPUMemory, dispatch: CSDDispatch | tuple | list, *, check_addresses: bool = True,
            timeout_sec: float = 10, check_registers: bool = True, check_memory_order: bool = True,
            max_instructions: int | None = None, host_timeout_sec: float | None = None,
            progress: bool = False) -> EmuResult:
    """Run one compute dispatch on the emulated V3D over `memory` (the hardware route's virtual device).

    The shader runs from dispatch.shader_addr to the end of the buffer holding it. check_addresses=True: an
    access outside every allocated buffer faults (naming instruction and address); False: the v3d MMU's
    behaviour (the scratch page; counted in the result's scratch_accesses)."""
    if not isinstance(dispatch, CSDDispatch):
        dispatch = CSDDispatch.decode(dispatch)
    buf = memory.buffer_of(dispatch.shader_addr)
    if buf is None:
        raise DriverError(f"shader address 0x{dispatch.shader_addr:08x} is not in an allocated buffer")
    start, size = buf
    # the code area is the buffer up to and including the first all-zero word at or after the shader: 0 does
    # not decode (mul op 0 without branch signal bits; Mesa's v3d_qpu_instr_unpack refuses it too), so
    # executing it faults as an invalid word with its PC, as a whole-buffer decode would; a branch past it
    # faults with PC and target. A buffer of code then data (py-videocore6's one BO) decodes only its code.
    words = memory.view(dispatch.shader_addr, start + size - dispatch.shader_addr).view(np.uint64)
    n, step = 0, 4096
    while n < len(words):
        zero = np.flatnonzero(words[n: n + step] == 0)
        if len(zero):
            size = dispatch.shader_addr - start + 8 * (n + int(zero[0]) + 1)
            break
        n, step = n + step, step * 2
    prog = memory.decoded(start, size)
    entry = (dispatch.shader_addr - start) // 8
    with memory.lock:
        return _run_dispatch(
            memory.memory, memory.base, prog.table, prog.errors, start, entry,
            uniforms=dispatch.uniforms_addr, wg_size=dispatch.wg_size, batches_per_sg=dispatch.batches_per_sg,
            workgroup=dispatch.wg_count, wgs_per_sg=dispatch.wgs_per_sg, thread=dispatch.num_batches,
            single_seg=dispatch.single_seg, threading=dispatch.threading, threads_per_qpu=None,
            check_registers=check_registers, check_memory_order=check_memory_order, regions=memory.regions(),
            check_addresses=check_addresses, scratch_offset=memory.scratch_address - memory.base,
            timeout_sec=timeout_sec, max_instructions=max_instructions, host_timeout_sec=host_timeout_sec,
            progress=progress)


def submit_csd(memory: GPUMemory, dispatch, **kwargs) -> Job:
    """run_csd in the background: a Job whose wait() gives the EmuResult (the interpreter releases the GIL)."""
    return Job(lambda: run_csd(memory, dispatch, **kwargs))


# ==========================================================================================================
# one dispatch over a memory buffer (shared by EmuDriver.execute and run_csd)


def _run_dispatch(memory, mem_base, table, errors, code_base, entry, *, uniforms, workgroup, wgs_per_sg, thread,
                  single_seg, threading, threads_per_qpu, check_registers, check_memory_order, regions,
                  check_addresses, scratch_offset, timeout_sec, max_instructions, host_timeout_sec, progress,
                  wg_size, batches_per_sg) -> EmuCounters:
    """One dispatch as the hardware reads its CSD words (the arguments are a decoded CSDDispatch's fields)."""
    wg = tuple(int(v) for v in workgroup)
    if len(wg) != 3 or min(wg) < 1:
        raise DriverError(f"workgroup {workgroup} must be 3 positive sizes")
    thread = int(thread)
    if thread < 1:
        raise DriverError(f"thread={thread}: need at least one batch")
    mode, nregs, used = thread_mode(thread, threading, threads_per_qpu)
    bps = int(batches_per_sg)
    pow2 = max(1 << (wg_size - 1).bit_length(), 64)
    iid_shift = max(0, 16 - int(math.log2(pow2)))
    mem32 = memory[: len(memory) // 4 * 4].view(np.uint32)

    # the shadow of stored pages for uniform reads (emu_core D_SHADOW_AT): a page table over the memory and a
    # slot for every page a store can reach: the pages of the buffers an access may touch, and the MMU's
    # scratch page. np.zeros maps it lazily: only the slots a dispatch fills cost memory.
    n_pages = -(-len(memory) // PAGE)
    reach = sum(((hi - 1 - mem_base) >> 12) - ((lo - mem_base) >> 12) + 1 for lo, hi in regions if hi > lo)
    cap = min(n_pages, reach + 1)
    at = core.N_DISP + 2 * len(regions)
    try:
        disp = np.zeros(at + n_pages + cap * core.PAGE_WORDS, dtype=np.int64)
    except MemoryError:   # a host that will not reserve it: fewer slots; a store past them is counted and warned
        cap = min(cap, SHADOW_FALLBACK_PAGES)
        disp = np.zeros(at + n_pages + cap * core.PAGE_WORDS, dtype=np.int64)
    disp[core.D_SHADOW_AT] = at
    disp[core.D_SHADOW_DATA] = at + n_pages
    disp[core.D_SHADOW_CAP] = cap
    disp[core.D_SHADOW_LAST] = -1
    disp[core.D_ENTRY] = entry
    disp[core.D_UNIF] = 0 if uniforms is None else int(uniforms) & 0xFFFFFFFF
    disp[core.D_NBATCH] = thread
    disp[core.D_MODE] = mode
    disp[core.D_WGX], disp[core.D_WGY], disp[core.D_WGZ] = wg
    disp[core.D_WGSIZE] = wg_size
    disp[core.D_WGS_PER_SG] = int(wgs_per_sg)
    disp[core.D_BPS] = bps
    disp[core.D_NCODE] = len(table)
    disp[core.D_SINGLE_SEG] = int(bool(single_seg))
    disp[core.D_REGCHECK] = int(check_registers)
    disp[core.D_CODE_BASE] = code_base
    disp[core.D_MEM_BASE] = mem_base
    disp[core.D_SLICE] = 4096
    disp[core.D_IID_SHIFT] = iid_shift
    disp[core.D_MEMCHECK] = int(check_memory_order)
    disp[core.D_NREGS] = nregs
    disp[core.D_FIFO_CAP] = core.FIFO_MAX // used
    disp[core.D_ADDRCHECK] = int(check_addresses)
    disp[core.D_NREGIONS] = len(regions)
    disp[core.D_SCRATCH_OFF] = int(scratch_offset)
    for k, (lo, hi) in enumerate(sorted(regions)):
        disp[core.N_DISP + 2 * k] = lo
        disp[core.N_DISP + 2 * k + 1] = hi

    acc = np.zeros((core.CTX, 6, 16), dtype=np.uint32)
    rf = np.zeros((core.CTX, 64, 16), dtype=np.uint32)
    fa = np.zeros((core.CTX, 16), dtype=np.uint8)
    fb = np.zeros((core.CTX, 16), dtype=np.uint8)
    ist = np.zeros((core.CTX, core.N_IST), dtype=np.int64)
    cnt = np.zeros((core.CTX, core.N_CNT), dtype=np.int64)
    tmud = np.zeros((core.CTX, 4, 16), dtype=np.uint32)
    fifo = np.zeros((core.CTX, core.FIFO_MAX, 16), dtype=np.uint32)
    rtop = np.zeros((core.CTX, 16), dtype=np.uint32)
    bar = np.zeros(max(1, -(-thread // bps)), dtype=np.int64)
    fault = np.zeros(8, dtype=np.int64)
    pend = np.zeros((core.CTX, core.PEND_MAX), dtype=np.int64)
    resident = min(thread, core.N_QPUS * mode)
    for b in range(resident):
        c = (b % core.N_QPUS) * core.SLOTS + b // core.N_QPUS
        core.start_batch(c, b, acc, rf, fa, fb, ist, tmud, fifo, rtop, disp)
    disp[core.D_NEXT] = resident

    words = memory[code_base - mem_base: code_base - mem_base + 8 * len(table)].view(np.uint64)

    def message(f, extra=None):
        return _fault_message(f, ist, words, code_base, mem_base, len(memory), errors, extra)

    budget = int(max_instructions) if max_instructions is not None else 1 << 62
    start = time.monotonic()
    executed = 0
    bar_ui = None
    try:
        while True:
            chunk = min(CHUNK_INSTRUCTIONS, budget - executed)
            executed += core.run(table, acc, rf, fa, fb, ist, cnt, tmud, fifo, rtop, memory, mem32, disp, bar,
                                 fault, chunk, pend)
            if fault[0] != 0:
                break
            if not np.any((ist[:, core.I_STATUS] == core.ST_RUN) | (ist[:, core.I_STATUS] == core.ST_WAIT)):
                break
            elapsed = time.monotonic() - start
            if executed >= budget:
                fault[:5] = (core.FLT_BUDGET, _running_ctx(ist), 0, budget, 0)
                fault[2] = ist[fault[1], core.I_PC]
                break
            # timeout_sec bounds the dispatch's predicted Pi 4 time, as the hardware's wait does; the
            # host's own budget is host_timeout_sec (and max_instructions)
            predicted = _predicted_seconds(cnt, thread, used)
            over = predicted > timeout_sec
            if over or (host_timeout_sec is not None and elapsed > host_timeout_sec):
                c0 = _running_ctx(ist)
                why = (f"timeout: predicted Pi 4 time {predicted:.3g} s exceeds timeout_sec={timeout_sec} "
                       f"(execute(timeout_sec=...))" if over else
                       f"host timeout: still running after {elapsed:.1f} s of host time "
                       f"(execute(host_timeout_sec=...))")
                raise QPUFault(message(np.array([core.FLT_BUDGET, c0, ist[c0, core.I_PC], executed, 0, 0, 0, 0]),
                                       extra=f"{why} after {executed} instructions"))
            if progress and elapsed > 2.0 and bar_ui is None:
                from tqdm import tqdm

                bar_ui = tqdm(desc="emulating QPU instructions", unit=" instr", unit_scale=True,
                              initial=executed, file=sys.stderr)
            elif bar_ui is not None:
                bar_ui.update(executed - bar_ui.n)
    finally:
        if bar_ui is not None:
            bar_ui.close()
    wall = time.monotonic() - start
    per_thread = {name: cnt[:, i].reshape(core.N_QPUS, core.SLOTS).copy()
                  for i, name in enumerate(core.COUNTER_NAMES)}
    counters = EmuCounters(threads_per_qpu=used, batches=thread, wall_seconds=wall, per_thread=per_thread,
                           scratch_accesses=int(disp[core.D_SCRATCH_HITS]),
                           stale_uniform_reads=int(disp[core.D_STALE_UNIF]),
                           unshadowed_stores=int(disp[core.D_SHADOW_MISSED]))
    if counters.unshadowed_stores:
        warnings.warn(f"QPU dispatch: {counters.unshadowed_stores} TMU stores went to pages the emulator could not "
                      f"keep for uniform reads (more stored pages than the {cap} it sized for): uniform reads of "
                      f"those pages saw the new words, where a Pi 4 reads the old ones", RuntimeWarning,
                      stacklevel=3)
    if fault[0] != 0:
        raise QPUFault(message(fault))
    predicted = _predicted_seconds(cnt, thread, used)
    if predicted > timeout_sec:
        raise QPUFault(f"QPU dispatch timed out: predicted Pi 4 time {predicted:.3g} s exceeds "
                       f"timeout_sec={timeout_sec} (execute(timeout_sec=...)); the emulation itself finished")
    return counters


def _predicted_seconds(cnt, batches: int, used: int) -> float:
    from pimoe.qpu.timing import predict

    per = {name: cnt[:, i].reshape(core.N_QPUS, core.SLOTS).astype(np.float64)
           for i, name in enumerate(core.COUNTER_NAMES)}
    return float(predict({"batches": int(batches), "threads_per_qpu": used, "per_thread": per}).seconds)


def _running_ctx(ist) -> int:
    running = np.nonzero(ist[:, core.I_STATUS] == core.ST_RUN)[0]
    return int(running[0]) if len(running) else 0


def _fault_text(code: int) -> tuple[str, str]:
    """A fault code's text and its detail template (see _FAULT_TEXT)."""
    entry = _FAULT_TEXT.get(code, f"fault {code}")
    return entry if isinstance(entry, tuple) else (entry, "")


def _fault_message(fault, ist, words, code_base, mem_base, mem_size, errors, extra: str | None = None) -> str:
    from pimoe.qpu.disasm import disassemble_word

    code, c, pc, a1, a2 = (int(v) for v in fault[:5])
    qpu, slot = divmod(c, core.SLOTS)
    batch = int(ist[c, core.I_BATCH])
    where = f"QPU {qpu} thread {slot} (batch {batch}), PC {pc}"
    if 0 <= pc < len(words):
        word = int(words[pc])
        try:
            text = disassemble_word(word)
        except Exception as exc:  # an invalid word: say why it does not decode
            text = errors.get(pc, str(exc))
        where += f" (address 0x{code_base + 8 * pc:08x}, word 0x{word:016x}: {text})"
    text, detail = _fault_text(code)
    what = extra or text
    if code == core.FLT_UNSUPPORTED:
        # e.g. "signal not modelled by the emulator": the instruction text in `where` names which one
        what = " ".join(p for p in (_UNSUPPORTED_TEXT.get(a1, "?"), str(a2) if a1 == core.UNS_MAGIC else "", what) if p)
        if a1 == core.UNS_TMU_CONFIG:
            what += f" (config byte 0x{a2 & 0xFF:02x}: per-pixel regular loads/stores and prefetch only)"
    elif not (code == core.FLT_BUDGET and extra is not None):
        what += detail.format(a1=a1, a2=a2, addr=f"0x{a1 & 0xFFFFFFFF:08x}", last=a2 - 1, lo=f"0x{mem_base:08x}",
                              hi=f"0x{mem_base + mem_size:08x}", error=errors.get(pc, ""))
    return f"QPU fault at {where}: {what}"
