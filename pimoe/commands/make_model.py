"""`pimoe make-model`: write a synthetic MoE GGUF (random weights, a small real tokenizer).

The files load in llama.cpp and in pimoe alike; the real-shape presets with a few layers give
honest per-layer timings for models nobody has to download.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write a synthetic random-weight MoE GGUF of a chosen architecture, shape and weight type"

# "mixtral" is what people call it; in GGUF, Mixtral is arch "llama" with experts
ARCH_ALIASES = {"mixtral": "llama"}


def add_arguments(parser) -> None:
    from pimoe.config import ARCHS
    from pimoe.synth import PRESET_NAMES

    parser.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="file to write")
    parser.add_argument("--arch", choices=sorted(set(ARCHS) | set(ARCH_ALIASES)), default=None,
                        help="architecture (default: the preset's; qwen3moe for tiny); mixtral = llama")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="tiny",
                        help="shape: tiny, or a real model's shapes (default tiny)")
    parser.add_argument("--layers", type=int, default=None, metavar="N",
                        help="number of layers (default: the preset's)")
    parser.add_argument("--type", default="F32", metavar="TYPE",
                        help="weight type of the matrices: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K..Q6_K "
                             "(default F32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a shape field, e.g. --set hidden=128 --set n_experts=16 (repeatable)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.gguf if it exists")


def _parse_overrides(items: list[str]) -> dict[str, object]:
    from pimoe.errors import PimoeError

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PimoeError(f"--set {item!r}: expected FIELD=VALUE")
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
            continue
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                raise PimoeError(f"--set {item!r}: value must be a number or true/false") from None
    return out


def main(args) -> int:
    import struct
    import time

    from pimoe.commands.info import _fmt_bytes, _fmt_count, read_per_token
    from pimoe.errors import PimoeError
    from pimoe.gguf_file import GGUFFile
    from pimoe.synth import make_model

    out = Path(args.output)
    if out.exists() and not args.force:
        raise PimoeError(f"{out}: already exists; choose another -o or pass --force to overwrite it")
    if out.exists() and not out.is_file():
        raise PimoeError(f"{out}: exists and is not a regular file")
    if args.seed < 0:
        raise PimoeError(f"--seed must be 0 or more, got {args.seed}")
    if args.layers is not None and args.layers < 1:
        raise PimoeError(f"--layers must be 1 or more, got {args.layers}")
    arch = ARCH_ALIASES.get(args.arch, args.arch)
    overrides = _parse_overrides(args.set)
    t0 = time.perf_counter()
    # write next to the target and rename at the end, so a failed run leaves no half-written model
    tmp = out.with_name(f"{out.name}.partial")
    try:
        try:
            make_model(tmp, arch=arch, preset=args.preset, qtype=args.type, n_layers=args.layers, seed=args.seed,
                       progress=True, **overrides)
        except OSError as exc:
            raise PimoeError(f"{out}: cannot write the model: {exc.strerror or exc}") from None
        except (ValueError, TypeError, OverflowError, ZeroDivisionError, MemoryError, struct.error) as exc:
            # a --set value the shape cannot take (negative, zero, too large for memory)
            shown = " ".join(f"--set {x}" for x in args.set)
            raise PimoeError(f"cannot make a model with {shown or 'these settings'}: "
                             f"{type(exc).__name__}: {exc}") from None
        GGUFFile(tmp)            # a file pimoe itself refuses (e.g. --set n_experts_used=99) is not kept
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    dt = time.perf_counter() - t0
    f = GGUFFile(out)
    cfg = f.config
    groups = read_per_token(f)
    total_p = sum(g["params"] for g in groups.values())
    act_b = sum(g["active_bytes"] for g in groups.values())
    types = sorted({t.qtype.name for t in f.tensors.values()})
    print(f"wrote {out} ({_fmt_bytes(f.file_size)}) in {dt:.1f} s: {cfg.arch}, preset {args.preset}, "
          f"{cfg.n_layers} layers, hidden {cfg.hidden}, {cfg.n_experts} experts ({cfg.n_experts_used} active), "
          f"vocab {cfg.vocab_size}, weights {args.type.upper()} (tensor types {', '.join(types)})")
    print(f"{_fmt_count(total_p)} parameters, {_fmt_bytes(act_b)} read per decode token; random weights "
          f"(text output is gibberish). Run it: pimoe run -m {out}")
    return 0
