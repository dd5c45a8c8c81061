"""Build the notebooks from their sources and execute them, so the committed .ipynb carry real outputs.

Each notebook's source is a plain Python file in notebooks/src/ in the "percent" format (as jupytext
writes it): a line `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose lines are
commented with "# "; in code cells a commented magic (`# %matplotlib inline`) becomes the magic. Sources diff and review like code; the .ipynb next to this file are what users
open (and tests/test_notebooks.py checks the two agree, then runs every notebook from scratch).

    python notebooks/build.py            # convert + execute every notebook (a few minutes)
    python notebooks/build.py 01 04      # only the notebooks whose names start with 01 or 04
    python notebooks/build.py --no-run   # convert only (outputs empty)

Execution uses nbclient with the python3 kernel and notebooks/ as the working directory, the same
way the tests run them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"


def parse_percent(text: str) -> list[tuple[str, str]]:
    """[(cell_type, source)] from a percent-format script. Text before the first marker is ignored."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
            continue
        if not cells:
            continue
        kind, lines = cells[-1]
        if kind == "code" and line.startswith("# %") and line[3:4].isalpha():
            line = line[2:]                      # a commented IPython magic, as jupytext writes it
        elif kind == "markdown":
            if line.startswith("# "):
                line = line[2:]
            elif line.strip() == "#":
                line = ""
        lines.append(line)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():   # blank lines between cells belong to neither
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        out.append((kind, "\n".join(lines)))
    return out


def to_notebook(src: Path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in parse_percent(src.read_text()):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        nb.cells.append(cell)
    # stable cell ids, so rebuilding an unchanged source gives an unchanged file (apart from outputs)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{src.stem[:2]}-{i:03d}"
    return nb


def execute(nb, timeout: int = 900):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def main(argv: list[str]) -> int:
    import nbformat

    run = "--no-run" not in argv
    prefixes = [a for a in argv if not a.startswith("--")]
    sources = sorted(p for p in SRC.glob("*.py") if not prefixes or any(p.name.startswith(x) for x in prefixes))
    if not sources:
        print(f"no notebook sources match {prefixes} in {SRC}", file=sys.stderr)
        return 1
    for src in sources:
        nb = to_notebook(src)
        out = HERE / f"{src.stem}.ipynb"
        if run:
            t0 = time.perf_counter()
            execute(nb)
            print(f"{out.name}: executed in {time.perf_counter() - t0:.1f} s", flush=True)
        nbformat.write(nb, out)
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
