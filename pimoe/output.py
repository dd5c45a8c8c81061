"""Machine-readable output for the commands that print tables (`-o md|csv|json|jsonl`, as llama-bench has).

    md     the human table (default)
    csv    one line per row; a cell holding a list or a dict is written as JSON (never a Python repr)
    json   the whole record as one JSON object (the same numbers the results/ record holds)
    jsonl  one JSON object per row

add_output_argument(parser) adds the flag; emit(fmt, rows, record, text) prints the chosen form on stdout.
Notes meant for people go to stderr when the format is not md, so stdout stays parseable.
"""

from __future__ import annotations

import csv
import io
import json
import sys

FORMATS = ("md", "csv", "json", "jsonl")


def add_output_argument(parser, default: str = "md") -> None:
    parser.add_argument("-o", "--output", choices=FORMATS, default=default, dest="output_format",
                        help=f"output format on stdout: md (table), csv, json (the whole record), jsonl (one row "
                             f"per line) (default {default})")


def jsonable(obj):
    """Plain JSON types for numpy scalars/arrays, paths, tuples; NaN and inf become null."""
    import math
    from pathlib import Path

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):      # numpy arrays and scalars
        return jsonable(obj.tolist())
    if hasattr(obj, "to_json"):
        return jsonable(obj.to_json())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def csv_cell(value) -> object:
    """A CSV cell: numbers and text as they are; lists and dicts as JSON text; None as empty."""
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def csv_text(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: csv_cell(v) for k, v in row.items()})
    return buf.getvalue()


def render(fmt: str, rows: list[dict], record: dict | None = None, text: str | None = None) -> str:
    if fmt == "json":
        return json.dumps(jsonable(record if record is not None else rows), indent=1)
    if fmt == "jsonl":
        return "\n".join(json.dumps(jsonable(r)) for r in rows)
    if fmt == "csv":
        return csv_text(rows).rstrip("\n")
    if text is None:
        raise ValueError("md output needs the table text")
    return text


def emit(fmt: str, rows: list[dict], record: dict | None = None, text: str | None = None, file=None) -> None:
    print(render(fmt, rows, record, text), file=file or sys.stdout, flush=True)


def note_stream(fmt: str):
    """Where a command's human notes go: stdout for md, stderr for the machine formats."""
    return sys.stdout if fmt == "md" else sys.stderr
