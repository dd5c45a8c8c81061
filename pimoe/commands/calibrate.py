"""`pimoe calibrate --qpu hw|virtual`: the calibration kernels, one expert layer and a dispatch-overhead test
on the QPU route, measured next to the timing model's predictions; the model refitted to this Pi and
stored as the timing profile `pimoe compare` uses. Over the virtual device (runs anywhere) the emulator's
predicted times stand in for measurements, labelled so. See pimoe.bench.qpu_calibrate.
"""

from __future__ import annotations

from pathlib import Path

HELP = "measure the QPU kernels and the dispatch overhead on a Pi (--qpu hw), refit the timing model, store it"


def add_arguments(parser) -> None:
    parser.add_argument("--qpu", default="hw", choices=("hw", "virtual"),
                        help="the GPU (hw, default) or the virtual V3D device (virtual: predictions stand in)")
    parser.add_argument("-r", "--reps", type=int, default=5, help="repetitions per kernel on hw, median (default 5)")
    parser.add_argument("--dispatches", type=int, default=100,
                        help="empty dispatches timed for the overhead on hw, median (default 100)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test of the procedure)")
    parser.add_argument("--results", default="results", help="directory for the record (default results/)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="where to store the timing profile (default $PIMOE_TIMING_PROFILE or "
                             "~/.config/pimoe/qpu-timing-profile.json)")
    parser.add_argument("--no-profile", action="store_true", help="write the record only")


def main(args) -> int:
    import sys

    from pimoe.bench import qpu_calibrate as qc
    from pimoe.errors import PimoeError
    from pimoe.records import environment, write_record

    if args.reps < 1 or args.dispatches < 1:
        raise PimoeError("--reps and --dispatches must be at least 1")
    rec = qc.calibrate(args.qpu, reps=args.reps, dispatches=args.dispatches, quick=args.quick,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    rec["environment"] = environment(backend=f"qpu ({args.qpu})")
    print(f"| item | size | {'measured' if args.qpu == 'hw' else 'stand-in (predicted)'} ms | predicted ms | "
          f"ratio | predicted after refit ms |")
    print("|---|---|---|---|---|---|")
    for r in rec["rows"]:
        print(f"| {r['item']} | {r['size']} | {r['measured_seconds'] * 1e3:.3f} | {r['predicted_seconds'] * 1e3:.3f} | "
              f"{r['ratio_measured_to_predicted']:.2f} | {r['predicted_seconds_refit'] * 1e3:.3f} |")
    before, after = rec["params_before"], rec["params_after"]
    for name in rec["refitted"]:
        print(f"{name}: {before[name]:.6g} -> {after[name]:.6g}")
    for note in rec["notes"]:
        print(f"note: {note}")
    if args.qpu == "virtual":
        print(f"({qc.STAND_IN_LABEL}; the refit gives back the model's own parameters)")
    path, _ = write_record(rec, args.results, kind=f"qpu-calibration-{args.qpu}", table=rec["rows"])
    print(f"record: {path}")
    if not args.no_profile:
        prof = qc.store_profile(rec, str(path), args.profile)
        print(f"timing profile: {prof} (pimoe compare uses it from now on)")
    return 0
