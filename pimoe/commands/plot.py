"""`pimoe plot RECORD…`: figures (PNG + SVG) from results records only; nothing is recomputed.

compare records give the per-token breakdown, tokens/s and expert-usage heatmap; bandwidth records the
bandwidth curves; together (or alone) the roofline. Files go next to each record unless --out is given.
"""

from __future__ import annotations

HELP = "plots from results records: bandwidth, roofline, per-token breakdown, tokens/s, expert usage"


def add_arguments(parser) -> None:
    parser.add_argument("records", nargs="+", metavar="RECORD", help="results/*.json from compare / bandwidth")
    parser.add_argument("--out", default=None, help="output directory (default: each record's directory)")


def main(args) -> int:
    from pimoe.plots import plot_records

    for path in plot_records(args.records, args.out):
        print(path)
    return 0
