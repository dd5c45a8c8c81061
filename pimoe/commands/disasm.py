"""`pimoe disasm SOURCE`: print QPU instructions as address, word and Mesa-syntax text.

SOURCE is either a file of 64-bit words (hex text: whitespace/comma separated, `#` comments; or raw
little-endian binary with --binary), `-` for hex text on stdin, or a kernel spec `module:function` /
`path/to/file.py:function` whose kernel is assembled first (arguments with --arg name=value).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import importlib.util
import os
import re
import sys

from pimoe.errors import PimoeError

HELP = "disassemble QPU words (a hex/binary file or a kernel module:function) into Mesa's syntax"

_HEX_WORD = re.compile(r"^(0[xX])?[0-9a-fA-F]{1,16}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="file of hex words, '-' for stdin, or a kernel spec module:function")
    parser.add_argument("--binary", action="store_true", help="the file holds raw little-endian 64-bit words")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                        help="keyword argument for a kernel spec (VALUE is a Python literal, else a string)")
    parser.add_argument("--base", type=lambda s: int(s, 0), default=0,
                        help="address of the first instruction (default 0)")
    parser.add_argument("--lint", action="store_true",
                        help="also list each of Mesa's code-generation rules the program breaks (pimoe.qpu.lint), "
                             "with PC and rule name; exit 1 if any")
    parser.add_argument("--allow", action="append", default=[], metavar="RULE",
                        help="with --lint: a rule the kernel breaks on purpose (repeatable)")


def parse_hex_words(text: str, where: str) -> list[int]:
    """Words from hex text; PimoeError naming the line and token that is not a 64-bit hex word."""
    words = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        for token in line.replace(",", " ").split():
            if not _HEX_WORD.match(token):
                raise PimoeError(f"{where}:{lineno}: {token!r} is not a 64-bit hex word")
            words.append(int(token, 16))
    return words


def read_words_file(path: str, binary: bool) -> list[int]:
    if path == "-":
        return parse_hex_words(sys.stdin.read(), "<stdin>")
    if not os.path.isfile(path):
        raise PimoeError(f"{path}: no such file")
    data = open(path, "rb").read()
    if binary:
        if len(data) % 8:
            raise PimoeError(f"{path}: {len(data)} bytes is not a whole number of 8-byte instructions")
        return [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data), 8)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PimoeError(f"{path}: not a text file of hex words (use --binary for raw words)") from None
    return parse_hex_words(text, path)


def _parse_kwargs(items: list[str]) -> dict[str, object]:
    kwargs = {}
    for item in items:
        if "=" not in item:
            raise PimoeError(f"--arg {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        try:
            kwargs[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[name] = value
    return kwargs


def load_kernel(spec: str):
    """`module:function` or `file.py:function` -> the function object."""
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name:
        raise PimoeError(f"kernel spec {spec!r}: expected module:function or file.py:function")
    if target.endswith(".py") or os.path.sep in target:
        if not os.path.isfile(target):
            raise PimoeError(f"kernel spec {spec!r}: no file {target}")
        mod_name = "_pimoe_disasm_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(target))[0])
        mspec = importlib.util.spec_from_file_location(mod_name, target)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        mspec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except (ImportError, ValueError) as exc:
            raise PimoeError(f"kernel spec {spec!r}: cannot import {target}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise PimoeError(f"kernel spec {spec!r}: {target} has no function {func_name!r}")
    return func


def listing(words: list[int], base: int = 0, labels: dict[int, list[str]] | None = None) -> tuple[list[str], int]:
    """Lines "address: word  text" (labels on their own lines); returns (lines, number of invalid words)."""
    from pimoe.qpu.disasm import disassemble_word
    from pimoe.qpu.isa import InvalidInstruction

    lines, bad = [], 0
    for i, word in enumerate(words):
        for name in (labels or {}).get(8 * i, []):
            lines.append(f"{name}:")
        try:
            text = disassemble_word(word)
        except InvalidInstruction as exc:
            text, bad = f"<{exc}>", bad + 1
        lines.append(f"{base + 8 * i:6x}: {word:016x}  {text}")
    return lines, bad


def main(args) -> int:
    src = args.source
    labels: dict[int, list[str]] = {}
    is_spec = ":" in src and not os.path.isfile(src) and src != "-"
    if is_spec:
        from pimoe.qpu.asm import assemble, get_label_positions

        func = load_kernel(src)
        kwargs = _parse_kwargs(args.arg)
        try:
            inspect.signature(func).bind(None, **kwargs)       # the first parameter is the assembler
        except TypeError as exc:
            raise PimoeError(f"kernel {src}: {exc} (pass keyword arguments with --arg NAME=VALUE)") from None
        try:
            words = assemble(func, **kwargs)
            for name, pos in get_label_positions(func, **kwargs).items():
                labels.setdefault(pos, []).append(name)
        except PimoeError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:   # an argument of the wrong kind or range
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise PimoeError(f"kernel {src} cannot be built with {shown or 'no arguments'}: "
                             f"{type(exc).__name__}: {exc}") from None
    else:
        if args.arg:
            raise PimoeError("--arg only applies to a kernel spec module:function")
        words = read_words_file(src, args.binary)
    lines, bad = listing(words, args.base, labels)
    print("\n".join(lines))
    if bad:
        print(f"pimoe disasm: {bad} of {len(words)} words are not valid V3D 4.2 instructions", file=sys.stderr)
        return 1
    if args.lint:
        from pimoe.qpu.lint import lint

        try:
            warnings = lint(words, allow=args.allow)
        except ValueError as exc:
            raise PimoeError(str(exc)) from None
        for w in warnings:
            print(f"lint: {w}")
        print(f"lint: {len(warnings)} warning(s)" + (f" (allowed: {', '.join(args.allow)})" if args.allow else ""))
        return 1 if warnings else 0
    return 0
