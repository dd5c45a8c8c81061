"""Plots come from records alone and produce PNG + SVG files."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from pimoe.cli import main as cli_main
from pimoe.errors import PimoeError


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A compare record (tiny model) and a bandwidth record, copied alone into a fresh directory."""
    import os

    work = tmp_path_factory.mktemp("runs")
    home = tmp_path_factory.getbasetemp() / "xdg-cache"
    home.mkdir(exist_ok=True)
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    try:
        assert cli_main(["compare", "-p", "3", "-n", "2", "-r", "1", "--backends", "cpu,cpu-reference",
                         "--results", str(work)]) == 0
        assert cli_main(["bandwidth", "--small", "--threads", "1", "--results", str(work)]) == 0
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old
    alone = tmp_path_factory.mktemp("records-only")
    recs = []
    for p in sorted(work.glob("*.json")):
        if not p.name.endswith(".trace.json"):
            recs.append(shutil.copy(p, alone))
    return alone, recs


def test_plot_command_makes_every_figure(recorded, capsys):
    alone, recs = recorded
    assert cli_main(["plot", *map(str, recs)]) == 0
    written = capsys.readouterr().out.split()
    kinds = {w.rsplit("-", 1)[-1] for w in written}
    assert kinds == {"bandwidth.png", "bandwidth.svg", "breakdown.png", "breakdown.svg", "tokens.png",
                     "tokens.svg", "experts.png", "experts.svg", "roofline.png", "roofline.svg"}
    for w in written:
        data = open(w, "rb").read()
        assert len(data) > 2000
        if w.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.fromstring(data).tag.endswith("svg")


def test_roofline_points_from_record(recorded):
    from pimoe.plots import roofline_points
    from pimoe.records import read_record

    _, recs = recorded
    comp = read_record(next(p for p in recs if "compare-" in str(p)))
    pts = roofline_points(comp, None)
    whole = [p for p in pts if p.get("token")]
    assert len(whole) == len(comp["runs"])
    run = comp["runs"][0]
    b = sum(v.get("bytes", 0) for v in run["tg_regions"].values())
    f = sum(v.get("flops", 0) for v in run["tg_regions"].values())
    assert whole[0]["intensity"] == pytest.approx(f / b)
    assert whole[0]["gflops"] == pytest.approx(f / run["tg_predicted"]["tg"] / 1e9)


def test_plot_rejects_a_trace(tmp_path):
    t = tmp_path / "x.trace.json"
    t.write_text('{"traceEvents": []}')
    with pytest.raises(PimoeError):
        from pimoe.plots import plot_records

        plot_records([t])


def test_plotting_leaves_matplotlib_backend_and_pyplot_alone(recorded, tmp_path):
    """A notebook that plots records keeps its own (inline) backend and its pyplot figures: pimoe.plots
    draws on its own Agg canvases. Run in a fresh interpreter with a backend chosen first."""
    import subprocess
    import sys
    import textwrap

    alone, recs = recorded
    code = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        before = plt.figure()
        from pimoe import plots
        written = plots.plot_records({[str(r) for r in recs]!r}, out_dir={str(tmp_path)!r})
        assert written, "no figures"
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert plt.get_fignums() == [before.number], plt.get_fignums()
        print("ok", len(written))
    """)
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]      # this tree's pimoe, not another install's
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=repo,
                         env=env)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]
