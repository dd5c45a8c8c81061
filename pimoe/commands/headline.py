"""`pimoe headline`: the answer for the MoE models a Raspberry Pi 4 can hold, in one table and one figure.

    pimoe headline                                   # every model x Q4_K_M-like / Q8_0 (hours on a busy 2-core box)
    pimoe headline --models granite-3.0-1b-a400m --types Q4_K_M     # one row (minutes)
    pimoe headline --fit-only                         # the memory columns only, instant
    pimoe headline -o json                            # the record on stdout, for scripts

Rows: OLMoE-1B-7B, Granite 3.0 1B-A400M and 3B-A800M, Qwen1.5-MoE-A2.7B, and Qwen3-30B-A3B (the row that
shows why a 30B does not fit). Columns: whether each fits a 4 GB and an 8 GB Pi 4 (file, KV cache, QPU
copy: arithmetic), and the decode tokens/s PREDICTED for a Pi 4 CPU-only and with the experts on the QPU
(a slice of a synthetic model of the real shape run through `pimoe compare`, scaled to full depth). See
pimoe/headline.py for what each figure is.
"""

from __future__ import annotations

import sys

HELP = "the headline table: which MoE models fit a Pi 4, and predicted CPU-only vs QPU-offload tokens/s"


def add_arguments(parser) -> None:
    from pimoe.output import add_output_argument

    parser.add_argument("--models", "--shapes", "--presets", "--preset", dest="models", default=None,
                        help="comma list of make-model presets (default: olmoe-1b-7b, granite-3.0-1b-a400m, "
                             "granite-3.0-3b-a800m, qwen1.5-moe-a2.7b, qwen3-30b-a3b)")
    parser.add_argument("--types", "--type", dest="types", default="Q4_K_M,Q8_0",
                        help="comma list of weight mixes: Q4_K_M (llama-quantize's recipe) or a weight type "
                             "(default Q4_K_M,Q8_0)")
    parser.add_argument("--layers", type=int, default=2, help="layers of each slice that run (default 2)")
    parser.add_argument("-p", "--n-prompt", type=int, default=1, metavar="N", help="prompt tokens (default 1)")
    parser.add_argument("-n", "--n-gen", "--n-predict", dest="n_gen", type=int, default=1, metavar="N",
                        help="decode steps whose Pi 4 time is predicted (default 1: the prediction comes from "
                             "the emulator's counts, which do not vary between steps)")
    parser.add_argument("-r", "--reps", "--repetitions", dest="reps", type=int, default=1,
                        help="repetitions (default 1: the prediction is from counts, not timings)")
    parser.add_argument("--ctx", type=int, default=None, metavar="N",
                        help="context positions the KV cache holds in the fit columns (default 2048)")
    parser.add_argument("--backends", default=None,
                        help="comma list (default cpu,qpu, plus hybrid when this pimoe has it)")
    parser.add_argument("--fit-only", action="store_true", help="the memory columns only: nothing runs")
    parser.add_argument("--quick", action="store_true",
                        help="every row's memory columns, but run only granite-3.0-1b-a400m Q4_K_M (13 min "
                             "with cpu,qpu,hybrid on a shared 2-core machine at load ~20)")
    parser.add_argument("--combine", nargs="+", metavar="RECORD", default=None,
                        help="no runs: one table, record and figure from the rows of earlier headline records "
                             "(each row keeps the name of its record; the memory columns are recomputed; a row "
                             "in several records is taken from the one given last)")
    parser.add_argument("-t", "--threads", type=int, default=None, help="CPU threads for the runs")
    parser.add_argument("--cache-dir", default=None, help="where the models are written once "
                                                          "(default ~/.cache/pimoe/headline)")
    add_output_argument(parser)
    parser.add_argument("--results", default="results", help="directory for the record and figure (default results/)")
    parser.add_argument("--no-record", action="store_true", help="print only: no record, no figure")


def main(args) -> int:
    from pathlib import Path

    from pimoe import headline as hl
    from pimoe.backends import available_backends
    from pimoe.errors import PimoeError
    from pimoe.output import emit, note_stream
    from pimoe.records import write_record
    from pimoe.synth import PRESETS

    notes = note_stream(args.output_format)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(hl.MODELS)
    for m in models:
        if m not in PRESETS:
            raise PimoeError(f"unknown model '{m}' (choose from {', '.join(PRESETS)})")
    mixes = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    if not mixes:
        raise PimoeError("--types: give at least one weight mix, e.g. Q4_K_M,Q8_0")
    if args.layers < 1 or args.n_prompt < 1 or args.n_gen < 1 or args.reps < 1:
        raise PimoeError("--layers, -p, -n and -r must each be at least 1")
    ctx = args.ctx if args.ctx is not None else hl.DEFAULT_CTX
    if ctx < 1:
        raise PimoeError(f"--ctx must be at least 1, got {ctx}")
    if args.threads is not None:
        import numba

        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise PimoeError(f"--threads must be 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
        numba.set_num_threads(args.threads)
    have = set(available_backends())
    if args.fit_only:
        backends: tuple[str, ...] = ()
    elif args.backends:
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        missing = [b for b in backends if b not in have]
        if missing:
            raise PimoeError(f"backend(s) {missing} not in this pimoe (available: {', '.join(sorted(have))})")
    else:
        backends = ("cpu", "qpu") + (("hybrid",) if "hybrid" in have else ())
    cache = Path(args.cache_dir) if args.cache_dir else None

    def on_row(row):
        took = f" in {row.run_seconds:.0f} s" if backends else ""
        tps = ", ".join(f"{b} {v:.2f}" for b, v in row.tps.items() if v)
        print(f"pimoe headline: {row.model} {row.mix}{took}" + (f": predicted Pi 4 t/s {tps}" if tps else ""),
              file=sys.stderr, flush=True)

    if args.combine:
        rows = hl.rows_from_records(args.combine)
        # a (model, mix) in several records: the record given last wins (a newer run of the same row)
        latest = {(r.model, r.mix): r for r in rows}
        rows = [r for r in rows if latest[(r.model, r.mix)] is r]
        if args.models or args.types != "Q4_K_M,Q8_0":
            rows = [r for r in rows if r.model in models and r.mix in mixes]
        order = {(m, x): i for i, (m, x) in enumerate((m, x) for m in models for x in mixes)}
        rows.sort(key=lambda r: order.get((r.model, r.mix), len(order)))
        for r in rows:      # the memory columns are arithmetic: recomputed, so every row has today's rules
            r.fit = hl.plan_fit(r.model, r.mix, ctx, cache)
        backends = tuple(sorted({b for r in rows for b in r.tps}))
    else:
        rows = hl.headline(models, mixes, on_row=on_row, layers=args.layers, n_prompt=args.n_prompt,
                           n_gen=args.n_gen, reps=args.reps, backends=backends, ctx=ctx, cache_dir=cache,
                           run_only={hl.QUICK} if args.quick else None)
    if not rows:
        raise PimoeError("no rows: the records hold none of the models and mixes asked for")
    command = "pimoe " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["headline"] else "pimoe headline"
    settings = {"models": models, "mixes": mixes, "layers": args.layers, "n_prompt": args.n_prompt,
                "n_gen": args.n_gen, "reps": args.reps, "ctx": ctx, "backends": list(backends),
                "combined_from": [str(p) for p in args.combine or ()]}
    rec = hl.to_record(rows, settings, command)
    text = hl.table_text(rows)
    emit(args.output_format, [r.flat() for r in rows], rec, text)
    print(f"\nfits: CPU-only needs the file + KV cache (f32, {rows[0].fit.ctx} positions), QPU offload the part of "
          f"the file the CPU reads every token + the QPU copy of the experts + KV, the copy within the GPU's 4 GiB "
          f"address space; a board has its nominal RAM less {rows[0].fit.reserve_bytes >> 20} MiB for the OS. "
          f"t/s: PREDICTED for a Pi 4 from a slice of the model's layers scaled to full depth; nothing here ran on "
          f"a Pi." + (" CPU+QPU: the hybrid backend (some of each layer's experts on the CPU while the QPU runs the "
                      "others, and the dense GEMVs split by rows between the two), the DRAM the two lanes "
                      "share taken from pimoe/dram.py's central scenario (an assumption)."
                      if any("hybrid" in r.tps for r in rows) else ""), file=notes)
    if args.quick:
        print("quick: only the granite-3.0-1b-a400m Q4_K_M row ran; `pimoe headline` runs every row "
              "(hours on a busy 2-core machine); the README's table is from such runs, combined", file=notes)
    bad = [f"{r.model} {r.mix} ({b})" for r in rows for b, ok in r.same_tokens.items() if not ok]
    if bad:
        print(f"WARNING: the QPU path chose other tokens than the CPU at a decisive margin: {', '.join(bad)}",
              file=sys.stderr)
    if not args.no_record:
        from pimoe.plots import plot_headline

        path, csv_path = write_record(rec, args.results, "headline", table=[r.flat() for r in rows])
        figs = plot_headline(dict(rec, record_file=path.name), path.parent) if any(r.tps for r in rows) else []
        print(f"record written: {path} (+ {csv_path.name})" +
              (f"; figure {figs[0]}" if figs else ""), file=notes)
    return 1 if bad else 0
