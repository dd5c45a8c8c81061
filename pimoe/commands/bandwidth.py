"""`pimoe bandwidth`: CPU read/copy/triad over sizes and 1..N threads, the QPU streaming kernels
(measured on a Pi 4's GPU, else predicted for a Pi 4 from the emulator's counts), CPU + QPU at once.
Writes a results record (JSON + CSV) under results/. See pimoe/bench/bandwidth.py for what each kernel does."""

from __future__ import annotations

HELP = "memory bandwidth: CPU read/copy/triad x threads x sizes, QPU streaming kernels, both at once"


def _sizes(text: str) -> tuple[int, ...]:
    from pimoe.errors import PimoeError

    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    out = []
    for part in text.split(","):
        part = part.strip().lower().rstrip("ib").rstrip("b") if part.strip() else ""
        if not part:
            continue
        mult = units.get(part[-1], 1)
        num = part[:-1] if part[-1] in units else part
        try:
            out.append(int(float(num) * mult))
        except ValueError:
            raise PimoeError(f"bad size '{part}' (examples: 64K, 1M, 128M)") from None
    return tuple(out)


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="32K,256K,2M,16M,128M",
                        help="CPU bytes per array, comma list with K/M/G (default 32K,256K,2M,16M,128M)")
    parser.add_argument("-t", "--threads", default=None,
                        help="CPU thread counts, comma list (default 1..all numba threads)")
    parser.add_argument("--kernels", default="read,copy,triad", help="CPU kernels (default read,copy,triad)")
    parser.add_argument("--qpu-sizes", default="64K,1M,16M",
                        help="QPU bytes per kernel run (default 64K,1M,16M; the emulator runs each)")
    parser.add_argument("--qpu-threads", default="8,32",
                        help="QPU 16-lane threads per dispatch: 8 = 1 per QPU, 16 = 2, 32 = 4 (default 8,32)")
    parser.add_argument("--qpu", default="auto", choices=("auto", "emu", "virtual", "hw"),
                        help="QPU driver: the GPU when present (auto), the emulator, the hardware route over the "
                             "virtual V3D device (predicted times), or require hardware")
    parser.add_argument("--no-qpu", action="store_true", help="CPU only")
    parser.add_argument("-r", "--reps", type=int, default=5, help="timed repeats per point, median reported (default 5)")
    parser.add_argument("--small", action="store_true", help="CI-sized run (64K,1M,4M CPU; 64K QPU on 8 threads; 3 reps)")
    parser.add_argument("--results", default="results", help="directory for the record (default results/)")
    parser.add_argument("--no-record", action="store_true", help="print only, write no record")
    from pimoe.output import add_output_argument

    add_output_argument(parser)
    parser.add_argument("--concurrent", action="store_true",
                        help="only CPU and QPU streaming at once: measured on a Pi (CPU read loop while the QPU "
                             "sums 16 MiB), elsewhere the DRAM-sharing model's prediction (pimoe.dram)")


def concurrent_main(args) -> int:
    """`pimoe bandwidth --concurrent`: the combined DRAM figure the hybrid predictions use."""
    from pimoe import dram
    from pimoe.bench import bandwidth
    from pimoe.qpu.driver import hardware_available
    from pimoe.records import environment, write_record

    hw = args.qpu == "hw" or (args.qpu == "auto" and hardware_available()[0])
    rows = []
    if hw:
        m = bandwidth._measure_concurrent(1 << 24)
        print(f"measured on this Pi: CPU {m['cpu_GBps']:.2f} GB/s + QPU {m['qpu_GBps']:.2f} GB/s = "
              f"{m['GBps']:.2f} GB/s combined (use it as the DRAM-sharing ceiling: share={m['GBps'] * 1e9:.3g})")
        rows.append(m)
    from pimoe.cpumodel import PI4_CPU

    cpu_alone = PI4_CPU.decode_bandwidth
    if not hw:
        print("no V3D here: the combined CPU + QPU DRAM figure is not measurable; the DRAM-sharing model "
              f"(pimoe.dram) assumes, and predicts for a CPU decode read ({cpu_alone / 1e9:.2f} GB/s alone) "
              "beside a QPU summation (its read ceiling alone) streaming 1 GB each:")
    for name in dram.SCENARIO_NAMES:
        sc = dram.scenario(name)
        qpu_alone = dram.scenarios()["pessimistic"].combined
        ov = dram.concurrent(1e9 / cpu_alone, 1e9, 1e9 / qpu_alone, 1e9, sc)
        row = {"device": "cpu+qpu", "kernel": "decode read + summation", "source": "predicted (assumption)",
               "scenario": name, "combined_GBps": sc.combined / 1e9, "slowdown": ov.slowdown,
               "cpu_GBps": 1.0 / ov.cpu_seconds, "qpu_GBps": 1.0 / ov.qpu_seconds, "assumption": sc.source}
        rows.append(row)
        print(f"  {name:11s} ceiling {sc.combined / 1e9:5.2f} GB/s: both at {ov.slowdown:.2f} of their own speed "
              f"while together; CPU {row['cpu_GBps']:.2f} GB/s, QPU {row['qpu_GBps']:.2f} GB/s over their spans "
              f"({sc.source})")
    if not args.no_record:
        path, _ = write_record({"kind": "bandwidth-concurrent", "environment": environment(), "rows": rows},
                               args.results, "bandwidth-concurrent", table=rows)
        print(f"record written: {path}")
    return 0


def main(args) -> int:
    if getattr(args, "concurrent", False):
        return concurrent_main(args)
    from pimoe import prediction
    from pimoe.bench import bandwidth
    from pimoe.errors import PimoeError
    from pimoe.records import environment, write_record

    sizes = _sizes(args.sizes)
    qsizes = _sizes(args.qpu_sizes)
    reps = args.reps
    if args.small:
        sizes, qsizes, reps = bandwidth.SMALL_SIZES, (1 << 16,), 3
    if reps < 1:
        raise PimoeError(f"--reps must be at least 1, got {reps}")
    threads = None
    if args.threads:
        try:
            threads = [int(t) for t in args.threads.split(",") if t.strip()]
        except ValueError:
            raise PimoeError(f"--threads: comma list of integers, got '{args.threads}'") from None
    kernels = tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    env = environment()
    from pimoe.output import note_stream

    print(f"CPU: {env['cpu']}, {env['cpu_count']} CPUs, load average {env['load_average'][0]:.2f} "
          f"(a busy machine lowers the multi-thread figures)", file=note_stream(args.output_format))
    rows = bandwidth.cpu_bandwidth(sizes, threads, kernels, reps=reps)
    try:
        qthreads = tuple(int(t) for t in args.qpu_threads.split(",") if t.strip())
    except ValueError:
        raise PimoeError(f"--qpu-threads: comma list of integers, got '{args.qpu_threads}'") from None
    if args.small:
        qthreads = (8,)
    qrows = [] if args.no_qpu else bandwidth.qpu_bandwidth(qsizes, threads=qthreads, driver=args.qpu)
    both = [] if args.no_qpu else bandwidth.concurrent_bandwidth(rows, qrows, driver=args.qpu)
    from pimoe.output import emit
    from pimoe.records import command_line

    notes = note_stream(args.output_format)
    rec = {"kind": "bandwidth", "command": command_line(), "environment": env, "cpu": rows, "qpu": qrows,
           "concurrent": both,
           "settings": {"sizes": list(sizes), "qpu_sizes": list(qsizes), "qpu_threads": list(qthreads) if not args.no_qpu else [], "reps": reps, "kernels": kernels,
                        "threads": threads, "qpu_driver": args.qpu},
           "pi4_ceilings": prediction.pi4_ceilings()}
    emit(args.output_format, rows + qrows + both, rec, bandwidth.table_text(rows + qrows + both))
    if any(r["source"] == "predicted" for r in qrows):
        print("qpu rows marked predicted: the kernels ran in the emulator (checked against numpy) and the "
              "Pi 4 time comes from pimoe.qpu.timing; they are not measurements.", file=notes)
    if not args.no_record:
        path, csv_path = write_record(rec, args.results, "bandwidth", table=rows + qrows + both)
        print(f"record written: {path} (+ {csv_path.name})", file=notes)
    return 0
