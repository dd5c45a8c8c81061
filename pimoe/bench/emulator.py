"""`pimoe bench emulator`: how many QPU instructions per second the emulator executes.

Two workloads, both run on every QPU (thread=8) and checked against numpy so a fast wrong emulator
cannot score: an ALU loop (float and integer ops on both ALUs, flags, a branch per iteration) and
the summation kernel (TMU loads, ldtmu, thread switches, a barrier). Prints the median of repeats and
writes a record (results/emulator-bench-*.json) with the same rows.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from pimoe.errors import PimoeError

# The emulator and the kernels are imported inside the functions that use them: `pimoe bench` imports every
# target module to build its parser, and `pimoe --help` must not start numba.


def add_arguments(parser) -> None:
    parser.add_argument("--iterations", type=int, default=20000, help="ALU loop trips per QPU (default 20000)")
    parser.add_argument("--length", type=int, default=1 << 20, help="summation elements (default 1Mi)")
    parser.add_argument("-r", "--reps", "--repeats", dest="repeats", type=int, default=3,
                        help="timed repeats, median reported (default 3)")
    parser.add_argument("--results", default="results", help="directory for the record (default results/)")
    parser.add_argument("--no-record", action="store_true", help="print only")


def _alu_loop_kernel():
    from pimoe.qpu.asm import qpu
    from qpu_kernels.emit import emit_program_end

    @qpu
    def alu_loop(asm):
        # rf0: out address, rf1: trips. r0 float accumulator, r1 int accumulator, r2 = eidx
        eidx(r2, sig=ldunifrf(rf0))
        nop(sig=ldunifrf(rf1))
        tidx(r3)
        shr(r3, r3, 2)
        band(r3, r3, 7)
        shl(r3, r3, 7)  # 128 bytes (two 16-lane rows) per QPU
        add(rf0, rf0, r3)
        shl(r3, r2, 2)
        add(rf0, rf0, r3)
        itof(r0, r2)
        mov(r1, r2)
        mov(r5, 1)
        with loop as l:
            fadd(r0, r0, 1.0).add(r1, r1, r2)
            sub(rf1, rf1, r5, cond='pushz').fmul(r3, r0, 0.5)
            fsub(r0, r0, r3).add(r1, r1, r5)
            bxor(r3, r1, r2).fmul(r4, r0, r0)
            l.b(cond='anyna')
            fmax(r0, r0, 0.0)
            add(r1, r1, r2)
            nop()
        mov(tmud, r0)
        mov(tmua, rf0)
        tmuwt()
        shl(r3, 4, 4)
        add(rf0, rf0, r3)
        mov(tmud, r1)
        mov(tmua, rf0)
        tmuwt()
        emit_program_end(asm)

    return alu_loop


def _alu_loop_reference(trips: int) -> tuple[np.ndarray, np.ndarray]:
    lane = np.arange(16, dtype=np.uint32)
    x = lane.astype(np.float32)
    acc = lane.copy()
    for _ in range(trips):
        x = x + np.float32(1.0)
        acc = acc + lane
        x = x - x * np.float32(0.5)
        acc = acc + np.uint32(1)
        x = np.maximum(x, np.float32(0.0))
        acc = acc + lane
    return x, acc


def run_alu_loop(drv, trips: int):
    code = drv.program(_alu_loop_kernel())
    out = drv.alloc((8, 2, 16), dtype=np.uint32)
    unif = drv.alloc(2, dtype=np.uint32)
    out[:] = 0
    unif[:] = [out.addresses()[0, 0, 0], trips]
    t0 = time.perf_counter()
    counters = drv.execute(code, local_invocation=(16, 1, 1), uniforms=unif.addresses()[0], thread=8,
                           timeout_sec=600)
    dt = time.perf_counter() - t0
    x_ref, acc_ref = _alu_loop_reference(trips)
    if not (np.array_equal(out[:, 0].view(np.float32), np.broadcast_to(x_ref, (8, 16)))
            and np.array_equal(out[:, 1], np.broadcast_to(acc_ref, (8, 16)))):
        raise PimoeError("benchmark ALU loop: emulator result differs from numpy")
    return counters.total_instructions, dt


def main(args) -> int:
    from pimoe.qpu.emulator import EmuDriver
    from qpu_kernels import summation

    trips, length, repeats = args.iterations, args.length, max(1, args.repeats)
    if trips < 1 or length < 1:
        raise PimoeError("--iterations and --length must be positive")
    print("pimoe bench emulator: QPU instructions emulated per second (8 QPUs, numpy-checked)")
    with EmuDriver(data_area_size=16 << 20) as drv:  # warm up: numba compiles or loads its cache
        run_alu_loop(drv, 10)
    rows = []
    for name in ("alu-loop", "summation"):
        times, counts = [], 0
        for _ in range(repeats):
            with EmuDriver(data_area_size=(length * 4) + (4 << 20)) as drv:
                if name == "alu-loop":
                    counts, dt = run_alu_loop(drv, trips)
                else:
                    counters, dt = summation.run(drv, length=length, threads=8, check=True)
                    counts = counters.total_instructions
            times.append(dt)
        rows.append((name, counts, statistics.median(times)))
    print(f"{'workload':<12} {'instructions':>14} {'seconds':>9} {'M instr/s':>10} {'M lane-ops/s':>13} "
          f"{'vs 1 M/s goal':>14}")
    table = []
    for name, counts, sec in rows:
        rate = counts / sec
        # each instruction is 16 lanes wide; the goal is 1 M emulated instructions per second
        print(f"{name:<12} {counts:>14,} {sec:>9.3f} {rate / 1e6:>10.2f} {16 * rate / 1e6:>13.1f} "
              f"{rate / 1e6:>13.1f}x")
        table.append({"workload": name, "instructions": counts, "seconds_median": sec,
                      "M_instr_per_s": rate / 1e6, "M_lane_ops_per_s": 16 * rate / 1e6, "repeats": repeats})
    if not args.no_record:
        from pimoe.records import environment, write_record

        rec = {"kind": "emulator-bench", "environment": environment(backend="qpu-emu"),
               "settings": {"iterations": trips, "length": length, "repeats": repeats},
               "notes": "measured on this machine: the emulator's speed, not a Pi 4 figure"}
        path, _ = write_record(rec, args.results, "emulator-bench", table=table)
        print(f"record: {path}")
    return 0
