"""The notebooks: each runs top to bottom from scratch, and the committed copies are real runs of the sources.

Each notebook asserts what it claims (byte counts against independent arithmetic, QPU results against
numpy, logits against the cpu backend), so executing it is the test: nbclient raises on the first cell
that fails. They run as a user would: python3 kernel, notebooks/ as the working directory, the built-in
default model made fresh in an empty cache directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in (NOTEBOOKS / "src").glob("*.py"))


def _build_module():
    spec = importlib.util.spec_from_file_location("pimoe_notebooks_build", NOTEBOOKS / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_source_has_a_committed_notebook():
    assert len(NAMES) >= 1
    for name in NAMES:
        assert (NOTEBOOKS / f"{name}.ipynb").exists(), f"{name}.ipynb missing: run python notebooks/build.py"


def test_percent_format_parsing():
    build = _build_module()
    cells = build.parse_percent("ignored\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\n# %matplotlib inline\nx = 1\n\n\n"
                                "# %%\ny = 2  # %d\n")
    assert cells == [("markdown", "# Title\n\ntext"), ("code", "%matplotlib inline\nx = 1"), ("code", "y = 2  # %d")]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source_and_carries_outputs(name):
    build = _build_module()
    want = build.to_notebook(NOTEBOOKS / "src" / f"{name}.py")
    got = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in got.cells] == [(c.cell_type, c.source) for c in want.cells], \
        f"{name}.ipynb is out of date with src/{name}.py: run python notebooks/build.py {name[:2]}"
    code = [c for c in got.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}.ipynb was not executed in full"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{name}.ipynb was saved with an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}.ipynb has no figure"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_from_scratch(name, tmp_path, monkeypatch):
    # a fresh machine: empty cache (the built-in model is made anew), no model chosen by the environment
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PIMOE_MODEL", raising=False)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
