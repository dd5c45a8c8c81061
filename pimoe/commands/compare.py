"""`pimoe compare`: the same prompt CPU-only and with QPU offload; a llama-bench-like table with GB/s, the
per-region breakdown of a decode token, and the Pi 4 prediction; a results record and a Perfetto trace.

    pimoe compare                                   # built-in tiny model, cpu vs qpu vs hybrid, pp16/tg8 x3
    pimoe compare -m model.gguf -p 512 -n 128       # llama-bench's pp512 / tg128
    pimoe compare --shape qwen3-30b-a3b --layers 2  # synthetic real-shape model, scaled to 48 layers
    pimoe compare -o json                           # the record on stdout (exactly as written), for scripts
    pimoe compare --qpu hw                          # on a Pi: measured QPU rows next to the predicted ones
    pimoe compare --qpu virtual                     # the same over the virtual V3D device (a labelled stand-in)
"""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "CPU-only, QPU offload and CPU+QPU (hybrid) on one model: t/s, GB/s, regions, Pi 4 prediction, record"


def add_arguments(parser) -> None:
    from pimoe.synth import PRESETS        # = pimoe.compare.SHAPES: every make-model preset but tiny

    parser.add_argument("-m", "--model", metavar="MODEL.gguf", help="GGUF model (default: the built-in tiny model)")
    parser.add_argument("--shape", "--preset", dest="shape", choices=tuple(PRESETS),
                        help="a synthetic model of this real shape (a make-model preset) instead of -m")
    parser.add_argument("--layers", type=int, default=2, help="layers of the --shape model (default 2)")
    parser.add_argument("--type", default="Q8_0", help="weight type of the --shape model (default Q8_0)")
    parser.add_argument("-p", "--n-prompt", type=int, default=16, metavar="N", help="prompt tokens, ppN (default 16)")
    parser.add_argument("-n", "--n-gen", "--n-predict", dest="n_gen", type=int, default=8, metavar="N", help="generated tokens, tgN (default 8)")
    parser.add_argument("-r", "--reps", type=int, default=3, help="repetitions, t/s mean ± sd (default 3)")
    parser.add_argument("--backends", default="cpu,qpu,hybrid",
                        help="comma list, first is the reference (default cpu,qpu,hybrid: CPU-only, QPU offload, "
                             "and both on the same layer's experts)")
    parser.add_argument("--qpu", default=None, choices=("auto", "hw", "virtual", "emu"),
                        help="QPU driver for the qpu and hybrid backends (default: the backend's own, auto). hw / "
                             "virtual run each of them twice: over the emulator (the Pi 4 prediction) and on the "
                             "device (hw: measured on this Pi; virtual: the emulator's predicted times stand in)")
    parser.add_argument("--no-timing-profile", action="store_true",
                        help="predict with the model's own parameters, not the profile `pimoe calibrate` stored")
    parser.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all numba threads)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where --shape models are written once (default ~/.cache/pimoe/compare)")
    parser.add_argument("--results", default="results", help="directory for the record and trace (default results/)")
    parser.add_argument("--no-record", action="store_true", help="print only: no record, no trace")
    from pimoe.output import add_output_argument

    add_output_argument(parser)


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _no_hw_message(why: str) -> str:
    """--qpu hw without a usable V3D device: what `pimoe doctor` finds missing, with the fixes."""
    from pimoe import doctor

    lines = [c.line() for c in doctor.machine_checks(required=True) if c.status == doctor.MISSING]
    try:
        from pimoe.qpu.driver import qpu_client

        dev, _ = doctor.device_checks("hw", qpu_client())
        lines += [c.line() for c in dev if c.status == doctor.MISSING]
    except Exception:  # noqa: BLE001 -- the message must come out whatever the probe hits
        pass
    return ("--qpu hw: the QPU hardware route is not usable here: " + why + "\n" + "\n".join(lines)
            + "\nRun `pimoe doctor` for the full check; on any machine `--qpu virtual` runs the same route over the "
              "virtual V3D device (the emulator's predicted times standing in for measurements).")


def main(args) -> int:
    import json

    import numba

    from pimoe import compare as cmp
    from pimoe.backends import available_backends
    from pimoe.commands.run import cache_dir, default_model_path
    from pimoe.errors import PimoeError
    from pimoe import prediction
    from pimoe.output import emit, note_stream
    from pimoe.records import write_record

    fmt = args.output_format
    out = note_stream(fmt)       # the human tables: stdout for md, stderr when stdout is JSON/CSV

    def say(*parts):
        print(*parts, file=out, flush=True)

    if args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise PimoeError(f"--threads must be 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
        numba.set_num_threads(args.threads)
    for flag, value, low in (("-p", args.n_prompt, 1), ("-n", args.n_gen, 1), ("-r", args.reps, 1),
                             ("--layers", args.layers, 1)):
        if value < low:
            raise PimoeError(f"{flag} must be {low} or more, got {value}")
    if args.model and args.shape:
        raise PimoeError("give either -m MODEL.gguf or --shape, not both")
    if args.shape:
        path = cmp.shape_model_path(args.shape, args.layers, args.type, args.cache_dir or cache_dir() / "compare")
        _note(f"pimoe compare: synthetic {args.shape} model with {args.layers} of its layers, {args.type}: {path}")
    elif args.model:
        path = Path(args.model)
        if not path.exists():
            raise PimoeError(f"{path}: no such model file")
    else:
        path = default_model_path(progress=_note)
        _note(f"pimoe compare: no model given (-m), using the built-in tiny model {path}")

    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    have = set(available_backends())
    backends = [b for b in wanted if b in have]
    for b in wanted:
        if b not in have:
            _note(f"pimoe compare: backend '{b}' is not in this pimoe (available: {', '.join(sorted(have))}); "
                  f"skipped")
    if not backends:
        raise PimoeError(f"none of the backends {wanted} exists (available: {', '.join(sorted(have))})")
    route = args.qpu
    if route in ("hw", "auto"):
        from pimoe.qpu.driver import hardware_available

        ok, why = hardware_available()
        if route == "auto":
            route = "hw" if ok else None               # auto on a Pi: measured next to predicted
        elif not ok:
            raise PimoeError(_no_hw_message(why))
    opts = {}
    if route in cmp.DEVICE_ROUTES:
        backends = cmp.with_device(backends, route)    # qpu over the emulator (predicted), then qpu@hw / @virtual
    elif args.qpu:
        opts = {b: {"qpu": args.qpu} for b in cmp.QPU_BACKENDS if b in backends}

    from pimoe.bench.qpu_calibrate import describe_profile, load_profile

    tprof = None if args.no_timing_profile else load_profile()
    if tprof is not None:
        prediction.use_timing_params(tprof["params"])
        _note(f"pimoe compare: Pi 4 QPU predictions use the {describe_profile(tprof)}")
    try:
        result = cmp.compare(path, backends, args.n_prompt, args.n_gen, args.reps, shape=args.shape,
                             backend_opts=opts)
    finally:
        prediction.use_timing_params(None)
    rec, rows = cmp.to_record(result, {"command": "pimoe " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["compare"]
                                       else "pimoe compare"})
    if tprof is not None:
        rec["qpu_timing_profile"] = {"path": tprof["path"], "route": tprof["route"], "label": tprof.get("label"),
                                     "created_utc": tprof.get("created_utc"), "record": tprof.get("record"),
                                     "params": tprof["params"].as_dict()}
    if tprof is not None:
        for r in result.runs:
            if r.pi4_measured:
                r.pi4_measured["predicted_with"] = describe_profile(tprof)
        rec["runs"] = [r.to_json() for r in result.runs]
    if route == "hw":
        _note("pimoe compare: each QPU backend ran twice: over the emulator (its '(Pi 4)' row: predicted from the "
              "emulator's counts) and on this Pi's GPU (its '(hw)' rows and the '(Pi 4, hw)' row: measured)")
    elif route == "virtual":
        _note("pimoe compare: each QPU backend ran twice: over the emulator (its '(Pi 4)' row: predicted) and the "
              "hardware route end to end over the virtual V3D device (--qpu virtual: ioctls, buffer objects, jobs "
              "run by the emulator); where a Pi would measure its GPU, the emulator's predicted Pi 4 times of the "
              "device's jobs stand in: the '(Pi 4, virtual stand-in)' row, not a measurement")
    say(cmp.table_text(rows))
    say()
    say(f"per decode token (mean over {args.reps} x {args.n_gen} steps; Pi 4 figures are predicted):")
    say(cmp.regions_text(result))
    offload = cmp.offload_text(result)
    if offload:
        say(offload)
    measured = cmp.measured_text(result)
    if measured:
        say()
        say(measured)
    status = 0
    ref_name = result.reference.backend
    for r in result.runs[1:]:
        a = r.agreement
        head = (f"tokens: {r.name} vs {ref_name}, {a.n_tokens} greedy steps on the same inputs "
                f"(teacher-forced): ")
        if a.same_tokens:
            say(head + f"all equal; logits max |diff| {a.logits_max_abs_diff:.2e} "
                       f"({a.logits_max_rel_diff:.1e} of max |logit|)")
        else:
            # Only a flip at a decisive margin means a wrong computation; a near-tie flip is what two
            # correct paths with different rounding (f32 vs llama.cpp-style quantized activations) give.
            if a.decisive_mismatches:
                status = 1
            say(head + f"{a.n_agree} equal, {len(a.mismatches)} DIFFER "
                       f"({a.decisive_mismatches} at a decisive margin); logits max |diff| "
                       f"{a.logits_max_abs_diff:.2e} (median per step {a.logits_median_max_abs_diff:.2e})")
            for m in a.mismatches:
                kind = ("near-tie: margin below the logit difference, either token is consistent"
                        if m.near_tie else "DECISIVE: margin above the logit difference")
                say(f"  step {m.step}: {ref_name} {m.reference}, {r.name} {m.other}; "
                    f"{ref_name}'s margin between them {m.margin:.3e}, |diff| of logits at that step "
                    f"{m.logits_max_abs_diff:.3e} ({kind})")
    for r in result.runs:
        for note in r.notes:
            say(f"note ({r.label}): {note}")
    if result.layers_full != result.layers_run:
        say(f"scaled rows: per-layer regions x {result.layers_full}/{result.layers_run} + embedding, "
            f"output head and sampling once (see pimoe/compare.py)")
    if not args.no_record:
        json_path, csv_path = write_record(rec, args.results, "compare", table=rows)
        trace = json_path.with_suffix(".trace.json")
        events = []
        n = len(result.runs)
        for i, r in enumerate(result.runs):
            events += r.profiler.trace_events(pid=i + 1, process_name=f"pimoe {r.label} (measured)")
            if r.tg_predicted:
                events += prediction.predicted_trace_events(
                    r.profiler, lambda reg: reg.name == "tg", pid=n + i + 1,
                    process_name=f"pimoe {r.name} on a Pi 4, PREDICTED (decode steps only)")
        trace.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        say(f"record written: {json_path} (+ {csv_path.name}); trace: {trace} (open in ui.perfetto.dev)")
        rec = json.loads(json_path.read_text())       # -o json: exactly the record as written
    else:
        rec = dict(rec, table=rows)
    if fmt != "md":
        emit(fmt, rows, rec)
    return status
