"""`pimoe run`: generate text from a GGUF MoE model, streaming it as tokens arrive, then tokens/s.

With no -m it uses the built-in tiny synthetic model (random weights, made once and cached), so the
command works on a fresh machine with no download; it says so, and how to point it at a real model.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HELP = "generate text from a GGUF MoE model (no -m: the built-in tiny random-weight model)"

DEFAULT_PROMPT = "Once upon a time"
# the built-in model: the tiny qwen3moe preset, F32 weights, seed 0 (pimoe.synth.make_model)
DEFAULT_ARCH, DEFAULT_PRESET, DEFAULT_TYPE = "qwen3moe", "tiny", "F32"
REAL_MODEL_HINT = ("to run a real model, download a GGUF of a supported MoE (qwen3moe, olmoe, qwen2moe, "
                   "granitemoe, Mixtral-style llama), e.g. OLMoE-1B-7B-0924-Q4_K_M.gguf, and run: "
                   "pimoe run -m /path/to/model.gguf -p \"your prompt\"")


def add_arguments(parser) -> None:
    parser.add_argument("-m", "--model", metavar="MODEL.gguf",
                        help="GGUF model file (default: the built-in tiny synthetic model)")
    parser.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help=f"prompt text (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("-n", "--n-predict", "--n-gen", dest="n_predict", type=int, default=64, metavar="N",
                        help="number of tokens to generate (default 64)")
    parser.add_argument("--backend", default="cpu", help="where the expert FFNs run (default cpu)")
    parser.add_argument("--qpu", choices=("auto", "hw", "virtual", "emu"), default="auto",
                        help="with --backend qpu: the VideoCore VI GPU (hw), the hardware route over the virtual V3D "
                             "device (virtual), pimoe's emulator (emu), or the GPU when present (auto, default)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="sampling temperature; 0 = greedy (default 0)")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="random seed for sampling (-1 or none: a random seed)")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt as a user message with the model's chat template")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up pass (then the first timings include JIT compilation)")
    parser.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: all numba threads), as on compare and bench")
    parser.add_argument("-c", "--ctx", type=int, default=None, metavar="N",
                        help="context length (KV cache size); default: the model's, at most 4096")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pimoe"


def default_model_path(progress=print) -> Path:
    """The built-in tiny model, written once per pimoe version into the cache directory."""
    import pimoe
    from pimoe.errors import PimoeError
    from pimoe.synth import make_model

    path = cache_dir() / f"tiny-{DEFAULT_ARCH}-{DEFAULT_TYPE}-pimoe{pimoe.__version__}.gguf"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PimoeError(f"cannot create the cache directory {path.parent}: {exc.strerror or exc}; "
                             f"set XDG_CACHE_HOME to a writable directory") from None
        progress(f"pimoe: making the built-in tiny model once: {path}")
        # write to a private name, then rename: a concurrent run never sees a half-written file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            make_model(tmp, arch=DEFAULT_ARCH, preset=DEFAULT_PRESET, qtype=DEFAULT_TYPE, seed=0)
            os.replace(tmp, path)
        except OSError as exc:
            raise PimoeError(f"cannot write the built-in model to {path}: {exc.strerror or exc}; "
                             f"set XDG_CACHE_HOME to a writable directory") from None
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


def is_synthetic(gguf_file) -> bool:
    return bool(gguf_file.metadata.get("pimoe.synthetic", False))


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_sampling_args(args) -> None:
    """The command-line values run (and compare) share, checked before any work: PimoeError if bad."""
    import math

    from pimoe.errors import PimoeError

    prompt = getattr(args, "prompt", None)
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:      # argv bytes that are not UTF-8 arrive as lone surrogates
            bad = prompt[exc.start:exc.end].encode("utf-8", "backslashreplace")
            raise PimoeError(f"-p: the prompt is not valid UTF-8 (byte {bad!r} at character {exc.start}); "
                             f"pass UTF-8 text") from None
    t = getattr(args, "temperature", 0.0)
    if not math.isfinite(t) or t < 0:
        raise PimoeError(f"--temperature must be a finite number >= 0, got {t}")
    if getattr(args, "seed", None) is not None and args.seed < 0:
        args.seed = None          # -1: a random seed (as llama.cpp's --seed -1)
    ctx = getattr(args, "ctx", None)
    if ctx is not None and ctx <= 0:
        raise PimoeError(f"--ctx must be a positive number of tokens, got {ctx}")


def main(args) -> int:
    import pimoe
    from pimoe.errors import PimoeError

    if args.n_predict < 0:
        raise PimoeError(f"-n must be 0 or more, got {args.n_predict}")
    check_sampling_args(args)
    if args.model is None:
        path = default_model_path(progress=_note)
        _note(f"pimoe: no model given (-m), using the built-in tiny synthetic model {path}")
    else:
        path = Path(args.model)
        if not path.exists():
            raise PimoeError(f"{path}: no such model file")

    if args.threads is not None:
        import numba

        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise PimoeError(f"--threads must be 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
        numba.set_num_threads(args.threads)
    t_load = time.perf_counter()
    backend_opts = {"qpu": args.qpu} if args.backend == "qpu" else {}
    model = pimoe.load_model(path, backend=args.backend, n_ctx=args.ctx, **backend_opts)
    t_load = time.perf_counter() - t_load
    if is_synthetic(model.file):
        _note("pimoe: NOTE: this is a random-weight synthetic model: its output is gibberish by design "
              "(it exercises the code path and measures speed only).")
        _note(f"pimoe: {REAL_MODEL_HINT}")
    tok = model.tokenizer
    if tok is None:
        raise PimoeError(f"{path}: the file has no tokenizer (tokenizer.ggml.* keys), so it cannot run text")

    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}])
        ids = tok.encode_chat([{"role": "user", "content": args.prompt}])
    else:
        text = args.prompt
        ids = tok.encode(args.prompt)
    if not ids:
        raise PimoeError("the prompt is empty: it gives no tokens to start from")
    # The cache holds the prompt and every generated token that is fed back, i.e. all but the last one:
    # a context of n_ctx positions generates up to n_ctx - len(prompt) + 1 tokens (as Model.generate does).
    room = model.n_ctx - len(ids) + 1
    if args.n_predict > room:
        if len(ids) > model.n_ctx:
            raise PimoeError(f"the prompt is {len(ids)} tokens but the context holds {model.n_ctx} "
                             f"(model {model.config.context_length}); shorten the prompt or raise --ctx")
        _note(f"pimoe: the context ({model.n_ctx} positions, prompt {len(ids)}) leaves room for {room} of the "
              f"{args.n_predict} requested tokens (the last generated token needs no position)")

    cfg = model.config
    _note(f"pimoe: {path.name}: {cfg.arch}, {cfg.n_layers} layers, {cfg.n_experts} experts "
          f"({cfg.n_experts_used} active), loaded in {t_load:.2f} s; backend {args.backend}; "
          f"prompt {len(ids)} tokens")

    if not args.no_warmup and args.n_predict > 0:
        # pimoe's kernels are compiled (numba) on their first call: a two-token pass and a one-token
        # decode step compile both code paths, so the timings below measure running, not compiling
        t_warm = time.perf_counter()
        model.logits(ids[:2])
        model.forward(ids[:1])
        model.reset()
        _note(f"pimoe: warm-up (kernel compilation, first page-in) {time.perf_counter() - t_warm:.2f} s, "
              f"not counted below")

    out = sys.stdout
    out.write(text)
    out.flush()
    decoder = tok.stream_decoder(show_unused=True)
    n_gen = n_yield = 0
    t0 = time.perf_counter()
    t_first = t_last = None
    if args.n_predict > 0:
        for tid in model.generate(ids, args.n_predict, temperature=args.temperature, seed=args.seed):
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            t_last = now
            n_yield += 1
            if tid in tok.eog_ids:
                break
            n_gen += 1
            out.write(decoder.push(tid))
            out.flush()
            if n_gen >= args.n_predict:
                break       # do not let the generator run one more forward pass nobody reads
    out.write(decoder.flush() + "\n")
    out.flush()

    # The first token comes after the whole prompt is processed (one forward over len(ids) tokens);
    # each later token costs one single-token forward (a decode step).
    if t_first is None:
        _note("pimoe: no tokens generated")
        return 0
    t_prompt = t_first - t0
    steps = n_yield - 1      # forward passes between the first and the last token we timed
    t_gen = t_last - t_first
    _note(f"pimoe: prompt: {len(ids)} tokens in {t_prompt:.3f} s ({len(ids) / t_prompt:.2f} tokens/s)")
    if steps and t_gen > 0:
        _note(f"pimoe: generation: {n_gen} tokens, {steps} decode steps in {t_gen:.3f} s "
              f"({steps / t_gen:.2f} tokens/s)")
    else:
        _note(f"pimoe: generation: {n_gen} token(s) (no decode step to time)")
    return 0
