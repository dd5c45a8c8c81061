"""`pimoe …` (also `python -m pimoe`).

Each subcommand lives in its own module under pimoe/commands/ and exposes
    HELP: str                        one line for `pimoe --help`
    add_arguments(parser) -> None    its options
    main(args) -> int                runs it; returns the exit code
Heavy imports (numpy, numba, the model) happen inside main(), so `pimoe --help` stays instant.
A PimoeError (bad input) is printed as one clear line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pimoe.errors import PimoeError

# subcommand name -> module under pimoe.commands (add a line when a command lands)
COMMANDS: dict[str, str] = {
    "run": "run", "info": "info", "make-model": "make_model",
    "disasm": "disasm",
    "compare": "compare", "bandwidth": "bandwidth", "plot": "plot",
    "bench": "bench", "doctor": "doctor", "calibrate": "calibrate", "fuzz": "fuzz",
}


def version_text() -> str:
    """'pimoe 0.1.0 (python 3.11.7, numpy 2.1.3, gguf 0.17.1)': package versions from their metadata (no imports)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import pimoe

    deps = []
    for name in ("numpy", "gguf", "numba"):
        try:
            deps.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            deps.append(f"{name} missing")
    return f"pimoe {pimoe.__version__} (python {platform.python_version()}, {', '.join(deps)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pimoe",
        description="Mixture-of-Experts LLMs on the Raspberry Pi: CPU vs VideoCore VI GPU (QPU) offload.",
    )
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print pimoe's version (and python's, numpy's, gguf's) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"pimoe.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except PimoeError as exc:
        print(f"pimoe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # output piped into `head` and closed early: not an error; silence the flush at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"pimoe {args.command}: interrupted", file=sys.stderr)
        return 130
