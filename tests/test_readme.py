"""The README's code must stay true: its QPU kernel example runs (in the emulator here) and checks
itself, its first command's job runs on the built-in model, and its layout names what is in the tree."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1).splitlines()
    assert first[0].startswith("pip install . && pimoe headline --quick")
    assert first[1].startswith('pip install -e ".[test]" && python3 -m pytest')
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m pytest\n" in ci and 'pip install -e ".[test]"' in ci


def test_readme_qpu_kernel_example_runs_and_checks_itself(capsys):
    block = next(b for b in python_blocks() if "@qpu" in b)
    exec(compile(block, str(README), "exec"), {})           # asserts x == arange(16) + 1 inside
    listing = capsys.readouterr().out
    assert "ldtmu.r1" in listing and "tmuwt" in listing


def test_readme_layout_names_every_package_and_module():
    """The Layout section is drawn from the tree: every pimoe module and subpackage, and every kernel file,
    must be named in it (a new one makes this fail until the drawing has it)."""
    text = README.read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    root = README.parent
    names = {p.name for p in (root / "pimoe").glob("*.py") if p.stem not in ("__init__", "__main__")}
    names |= {p.name + "/" for p in (root / "pimoe").iterdir() if (p / "__init__.py").exists()}
    names |= {p.stem for p in (root / "pimoe" / "qpu").glob("*.py") if p.stem != "__init__"}
    names |= {p.stem for p in (root / "qpu_kernels").glob("*.py") if p.stem != "__init__"}
    missing = sorted(n for n in names if not re.search(r"(?<![\w.])" + re.escape(n.rstrip("/").removesuffix(".py"))
                                                       + r"(?![\w])", layout))
    assert missing == [], f"README Layout does not name {missing}"


def test_readme_headline_table_is_the_table_its_record_prints():
    """The headline table, and the figure under it, come from the record the text below the table names:
    `pimoe.headline.table_text` on that record's rows must print the README's table cell for cell."""
    from pimoe.headline import Row, table_text
    from pimoe.records import read_record

    text = README.read_text()
    section = text[text.index("## The answer"):]
    section = section[:section.index("\n## ", 3)]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    cited = re.search(r"Record `(results/headline-[0-9-]+\.json)`", section)
    assert cited, "the text under the headline table names no results/headline-*.json record"
    record = README.parent / cited.group(1)
    rows = [Row.from_json(r) for r in read_record(record)["rows"]]
    assert table == table_text(rows)
    figure = re.search(r"!\[[^\]]*\]\((results/headline-[0-9-]+\.png)\)", section)
    assert figure and figure.group(1) == cited.group(1).removesuffix(".json") + ".png"
    assert (README.parent / figure.group(1)).exists()
