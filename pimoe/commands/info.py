"""`pimoe info`: what a GGUF MoE file holds, and what one decode token has to read.

Per decode token (batch 1) the model reads: the attention weights and norms of every layer, the router,
the weights of only the n_used active experts in each layer (plus a shared expert where the arch has
one), one row of the token embedding (a lookup), and the whole output head. That byte count divided by
memory bandwidth is the napkin ceiling on tokens/s.
"""

from __future__ import annotations

from pathlib import Path

HELP = "show a GGUF model's config, tensor types, total vs active parameters and bytes read per token"



def add_arguments(parser) -> None:
    parser.add_argument("-m", "--model", metavar="MODEL.gguf",
                        help="GGUF model file (default: the built-in tiny synthetic model)")


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _fmt_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def tensor_group(name: str) -> str:
    """Which part of the model a tensor belongs to (for the bytes-per-token breakdown)."""
    if name == "token_embd.weight":
        return "embedding"
    if name == "output.weight":
        return "output head"
    if "_exps" in name:
        return "experts (routed)"
    if "_shexp" in name:
        return "shared expert"
    if "ffn_gate_inp" in name:
        return "router"
    if ".attn_" in name:
        return "attention"
    return "norms"


def read_per_token(gguf_file) -> dict[str, dict[str, float]]:
    """group -> {"params", "bytes", "active_params", "active_bytes"} (active: read by one decode token)."""
    import numpy as np

    cfg = gguf_file.config
    frac = cfg.n_experts_used / cfg.n_experts
    tied = "output.weight" not in gguf_file.tensors
    groups: dict[str, dict[str, float]] = {}
    for name, t in gguf_file.tensors.items():
        g = groups.setdefault(tensor_group(name), dict(params=0, bytes=0, active_params=0.0, active_bytes=0.0))
        n, b = int(np.prod(t.shape)), int(t.nbytes)
        g["params"] += n
        g["bytes"] += b
        if "_exps" in name:                              # only n_used of n_experts are read
            g["active_params"] += n * frac
            g["active_bytes"] += b * frac
        elif name == "token_embd.weight" and not tied:   # a lookup reads one row
            g["active_params"] += t.shape[-1]
            g["active_bytes"] += t.row_bytes
        else:                                            # incl. a tied embedding used as the output head
            g["active_params"] += n
            g["active_bytes"] += b
    return groups


def main(args) -> int:
    from pimoe import pi4
    from pimoe.commands.run import default_model_path, is_synthetic, REAL_MODEL_HINT
    from pimoe.errors import PimoeError, printable
    from pimoe.gguf_file import GGUFFile

    if args.model is None:
        path = default_model_path()
        print("(no -m given: the built-in tiny synthetic model)")
    else:
        path = Path(args.model)
        if not path.exists():
            raise PimoeError(f"{path}: no such model file")
    f = GGUFFile(path)
    cfg = f.config
    md = f.metadata
    print(f"file            {f.path}  ({_fmt_bytes(f.file_size)}, GGUF v{f.version}, {len(f.tensors)} tensors)")
    if md.get("general.name"):
        print(f"name            {printable(md['general.name'])}")
    if is_synthetic(f):
        print("NOTE            random-weight synthetic model (pimoe make-model): its text output is gibberish")
        print(f"                {REAL_MODEL_HINT}")
    print()
    print("config")
    for line in cfg.describe().splitlines():
        print(f"  {line}")

    if "tokenizer.ggml.model" in md:
        from pimoe.tokenizer import Tokenizer

        tok = Tokenizer.from_gguf_metadata(md, str(path))
        name = lambda i: "-" if i is None else f"{i} {printable(repr(tok.tokens[i]))}"  # noqa: E731
        print()
        print("tokenizer")
        print(f"  model           {printable(md['tokenizer.ggml.model'])} (pre {tok.pre}), {tok.vocab_size} tokens")
        print(f"  bos / eos       {name(tok.bos_id)} / {name(tok.eos_id)}; add_bos {tok.add_bos}")
        print(f"  chat template   {'yes' if tok.chat_template else 'no'}")

    groups = read_per_token(f)
    total_p = sum(g["params"] for g in groups.values())
    total_b = sum(g["bytes"] for g in groups.values())
    act_p = sum(g["active_params"] for g in groups.values())
    act_b = sum(g["active_bytes"] for g in groups.values())

    print()
    print("tensor types")
    counts: dict[str, list[int]] = {}
    for t in f.tensors.values():
        c = counts.setdefault(t.qtype.name, [0, 0])
        c[0] += 1
        c[1] += int(t.nbytes)
    for qname, (count, nbytes) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
        print(f"  {qname:8s} {count:5d} tensors  {_fmt_bytes(nbytes):>10s}")

    print()
    print(f"parameters      total {_fmt_count(total_p)} ({total_p:,}), "
          f"active per token {_fmt_count(act_p)} ({int(act_p):,}; "
          f"{cfg.n_experts_used} of {cfg.n_experts} experts per layer)")
    print(f"weights         {_fmt_bytes(total_b)} in the file, "
          f"{_fmt_bytes(act_b)} read per decode token"
          + (f" ({100 * act_b / total_b:.1f} %)" if total_b else ""))
    print()
    print("bytes read per decode token")
    order = ["experts (routed)", "shared expert", "attention", "router", "norms", "embedding", "output head"]
    for gname in order:
        g = groups.get(gname)
        if g is None:
            continue
        note = {"experts (routed)": f"  ({cfg.n_experts_used}/{cfg.n_experts} of {_fmt_bytes(g['bytes'])})",
                "embedding": "  (one row)"}.get(gname, "")
        print(f"  {gname:18s} {_fmt_bytes(g['active_bytes']):>10s}{note}")
    print(f"  {'total':18s} {_fmt_bytes(act_b):>10s}")
    # Pi 4-class decode bandwidth implied by published llama.cpp speeds (pimoe.pi4 has the sources)
    gbps = pi4.CPU_DECODE_BANDWIDTH / 1e9
    print()
    if not act_b:
        print("napkin ceiling  - (the file holds no weights)")
        return 0
    print(f"napkin ceiling  {gbps * 1e9 / act_b:.2f} tokens/s at {gbps} GB/s (Pi 4-class CPU decode bandwidth, "
          f"published; pimoe.pi4): bandwidth / bytes per token, an upper bound, not a measurement")
    return 0
