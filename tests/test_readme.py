"""The README's code must stay true: its QPU kernel example runs (in the emulator here) and checks
itself, and its first command's job runs on the built-in model."""

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
