"""Benchmark of the QPU expert kernels in the emulator (`pimoe bench kernels`).

Per kernel and shape (the expert matrices of Qwen3-30B-A3B: 768x2048 gate/up and 2048x768 down; OLMoE-
1B-7B: 1024x2048 and 2048x1024) it reports, for one dispatch:

    instructions per weight   QPU instructions x 16 lanes / weights (x tokens for token tiles): the
                              compute cost; the aim for quantized GEMVs is <= 2
    bytes read per token      TMU bytes the kernel read (weights in the QPU layout + work descriptors)
                              divided by the tokens that share them
    emulator wall time        how long pimoe's emulator took (a property of this machine, not of a Pi)
    predicted Pi 4 time       pimoe.qpu.timing's model, always labelled predicted, and the read
                              bandwidth it implies next to the 7.24 GB/s py-videocore6 summation anchor

Every run is checked against numpy first. A new timestamped JSON record goes under results/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pimoe import pi4

# The kernels, the emulator and the records are imported inside the functions that use them: `pimoe bench`
# imports every target module to build its parser, and `pimoe --help` must not start numba (the emulator).

QPU_READ_ANCHOR_GBPS = pi4.PYVC6_SUMMATION_BANDWIDTH / 1e9   # py-videocore6 summation on a Pi 4
DEFAULT_TYPES = "F32,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K"


def add_arguments(parser) -> None:
    parser.add_argument("--types", "--type", dest="types", default=DEFAULT_TYPES,
                        help=f"comma list of GGUF weight types (default {DEFAULT_TYPES})")
    parser.add_argument("--tokens", default="1,4",
                        help="comma list of tokens sharing the weights (1 = decode GEMV; default 1,4)")
    parser.add_argument("--shapes", default="all", choices=("all", "qwen3", "olmoe"),
                        help="which expert shapes (default all)")
    parser.add_argument("--qpu-threads", "--threads", dest="threads", type=int, default=8,
                        help="QPU threads, one per QPU (default 8; --threads is the old spelling)")
    parser.add_argument("--no-expert", action="store_true", help="skip the fused expert-layer benchmark")
    parser.add_argument("--results", type=Path, default=Path("results"), help="directory for the JSON record")


def _prediction(counters):
    from qpu_kernels.gemv_quant import predicted

    p = predicted(counters)
    if p is None:
        return None
    gbps = counters.tmu_read_bytes / p.seconds / 1e9
    return {"label": p.label, "seconds": p.seconds, "bound": p.bound, "read_GBps": gbps,
            "fraction_of_qpu_read_anchor": gbps / QPU_READ_ANCHOR_GBPS, "breakdown_seconds": dict(p.breakdown)}


def bench_gemv(qtype, rows, cols, tokens, threads) -> dict:
    from pimoe.errors import PimoeError
    from pimoe.qpu import open_driver
    from qpu_kernels import qpu_layout as lay
    from qpu_kernels.gemv_quant import run

    with open_driver("emu", data_area_size=64 << 20) as drv:
        err, c, seconds = run(drv, qtype, rows, cols, tokens=tokens, threads=threads)
    if err > 1e-5:
        raise PimoeError(f"kernel bench: gemv {qtype.name} {rows}x{cols} x{tokens} differs from numpy ({err:.1e})")
    spec = lay.spec_for(qtype)
    return {"kernel": f"gemv-{spec.kind}" + (f"x{spec.nsub}" if spec.nsub == 2 else ""), "type": qtype.name,
            "rows": rows, "cols": cols, "tokens": tokens, "threads": threads,
            "layout_bits_per_weight": spec.bits_per_weight, "max_rel_error": err,
            "instructions": c.total_instructions,
            "instructions_per_weight": c.total_instructions * 16 / (rows * cols * tokens),
            "tmu_read_bytes": c.tmu_read_bytes, "bytes_read_per_token": c.tmu_read_bytes / tokens,
            "uniforms_read": c.total("uniforms_read"),
            "emulator_seconds": c.wall_seconds, "host_seconds": seconds,
            "predicted": _prediction(c)}


def expert_layer_predictions(counters) -> list:
    """The timing model's Pi 4 predictions of one decode token's expert dispatches (one: swiglu, barrier,
    down_sum; or two with one_dispatch=False), each with its kernel's timing_args (the GEMV loops wait on
    ldtmu without thrsw: waits="ldtmu"). `pimoe compare` predicts the same dispatches through the profiler
    from the timing_args the backend reports; tests check that the two agree."""
    from pimoe.qpu.timing import predict

    from qpu_kernels.gemv_kernel import timing_args

    return [predict(c, **timing_args()) for c in counters]


def bench_expert_layer(qtype, hidden, ff, k, tokens, threads) -> dict:
    from pimoe.errors import PimoeError
    from pimoe.qpu import open_driver

    from qpu_kernels.expert_ffn import run_check

    with open_driver("emu", data_area_size=256 << 20) as drv:
        err, counters, seconds = run_check(drv, qtype, hidden=hidden, ff=ff, n_experts=k, k=k, tokens=tokens,
                                           threads=threads)
    if err > 1e-5:
        raise PimoeError(f"kernel bench: expert layer {qtype.name} differs from numpy ({err:.1e})")
    weights = 3 * k * hidden * ff
    instr = sum(c.total_instructions for c in counters)
    tmu = sum(c.tmu_read_bytes for c in counters)
    from qpu_kernels import qpu_layout as lay

    rec = {"kernel": f"expert-ffn ({len(counters)} dispatch{'es' if len(counters) > 1 else ''})",
           "dispatches": len(counters), "layout_bits_per_weight": lay.spec_for(qtype).bits_per_weight,
           "type": qtype.name, "hidden": hidden, "ff": ff, "k": k,
           "tokens": tokens, "max_rel_error": err, "instructions": instr,
           "instructions_per_weight": instr * 16 / (weights * tokens), "tmu_read_bytes": tmu,
           "bytes_read_per_token": tmu / tokens, "emulator_seconds": sum(c.wall_seconds for c in counters),
           "host_seconds": seconds}
    preds = expert_layer_predictions(counters)
    total = sum(p.seconds for p in preds)
    rec["predicted"] = {"label": preds[0].label, "seconds": total, "bounds": [p.bound for p in preds],
                        "read_GBps": tmu / total / 1e9,
                        "fraction_of_qpu_read_anchor": tmu / total / 1e9 / QPU_READ_ANCHOR_GBPS,
                        # each dispatch's terms (issue, latency, memory, ...): which one binds, by how much
                        "breakdown_seconds": [dict(p.breakdown) for p in preds]}
    return rec


def main(args) -> int:
    from gguf import GGMLQuantizationType as QT

    from pimoe.errors import PimoeError
    from pimoe.records import environment, write_record
    from qpu_kernels.gemv_quant import REAL_SHAPES

    try:
        types = [QT[t.strip().upper()] for t in args.types.split(",") if t.strip()]
    except KeyError as exc:
        raise PimoeError(f"--types: unknown weight type {exc.args[0]}") from None
    try:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    except ValueError:
        raise PimoeError(f"--tokens: {args.tokens!r} is not a comma list of integers") from None
    if not tokens or min(tokens) < 1 or max(tokens) > 4:
        raise PimoeError("--tokens: token counts 1..4 (a tile of the GEMM variant)")
    if not 1 <= args.threads <= 8:
        raise PimoeError(f"--qpu-threads {args.threads}: 1..8 (one per QPU)")
    shapes = {n: s for n, s in REAL_SHAPES.items() if args.shapes == "all" or n.startswith(args.shapes)}
    record = {"kind": "kernel-bench", "environment": environment(backend="qpu-emu", threads=args.threads),
              "qpu_read_anchor_GBps": QPU_READ_ANCHOR_GBPS, "gemv": [], "expert_layer": []}
    print(f"{'kernel':10s} {'type':5s} {'shape':22s} {'T':>2s} {'instr/w':>7s} {'bytes/token':>11s} "
          f"{'emu s':>6s} {'pred. ms':>8s} {'pred. GB/s':>10s} {'of 7.24':>7s}  bound")
    for qt in types:
        for name, (rows, cols) in shapes.items():
            for T in tokens:
                r = bench_gemv(qt, rows, cols, T, args.threads)
                r["shape"] = name
                record["gemv"].append(r)
                p = r["predicted"]
                pred = (f"{p['seconds'] * 1e3:8.3f} {p['read_GBps']:10.2f} {p['fraction_of_qpu_read_anchor']:7.0%}  "
                        f"{p['bound']} (predicted)") if p else "   (no timing model)"
                print(f"{r['kernel']:10s} {qt.name:5s} {name:22s} {T:2d} {r['instructions_per_weight']:7.2f} "
                      f"{r['bytes_read_per_token']:11.0f} {r['emulator_seconds']:6.2f} {pred}", flush=True)
    if not args.no_expert:
        for qt in types:
            for label, (hidden, ff) in {"qwen3-30b-a3b": (2048, 768), "olmoe-1b-7b": (2048, 1024)}.items():
                if args.shapes not in ("all", label.split("-")[0]):
                    continue
                r = bench_expert_layer(qt, hidden, ff, 8, 1, args.threads)
                r["shape"] = f"{label} layer, k=8"
                record["expert_layer"].append(r)
                p = r["predicted"]
                print(f"{'expert-ffn':10s} {qt.name:5s} {r['shape']:22s} {1:2d} {r['instructions_per_weight']:7.2f} "
                      f"{r['bytes_read_per_token']:11.0f} {r['emulator_seconds']:6.2f} {p['seconds'] * 1e3:8.3f} "
                      f"{p['read_GBps']:10.2f} {p['fraction_of_qpu_read_anchor']:7.0%}  {'/'.join(p['bounds'])} "
                      f"(predicted)", flush=True)
    path, _ = write_record(record, args.results, kind="kernel-bench")
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
