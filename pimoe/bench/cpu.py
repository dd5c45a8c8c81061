"""`pimoe bench cpu`: pimoe's CPU path against llama.cpp on the same file, with the napkin math.

What it measures, in one run, on this machine:
  1. the read bandwidth ceiling: numpy summing a 512 MB array (1 thread) and a numba parallel byte
     sum with the benchmark's thread count; the larger is the ceiling;
  2. the expert GEMVs alone (Qwen3-30B-A3B expert shapes 768x2048 gate/up and 2048x768 down, Q4_K and
     Q8_0), cycling over 128 experts so the weights come from DRAM, not cache: us per GEMV and GB/s;
  3. whole models: synthetic GGUFs of the Qwen3-30B-A3B shape with a few layers (Q8_0, and a
     Q4_K_M-like mix: Q4_K with Q6_K output head and Q6_K attn_v/ffn_down_exps in the layers
     llama-quantize's use_more_bits picks), each run by pimoe and by llama.cpp (pimoe.llamaref: the
     low-level API, loaded without its extra buffer types: the AMX/repack buffers crashed a host in
     issue 10 and are not what a Pi runs) in separate worker processes with the same thread count:
     prompt tokens/s (pp: one forward over P tokens, all-position logits in both engines), decode
     tokens/s (tg: N single-token forwards), bytes of weights read per decode token and GB/s next to
     the ceiling, peak RSS, and how close the two engines' logits are.

--threads takes a list (1,2,4): each count is measured in the same run. Timings on a shared machine
are noisy: every figure is the median of repeats (tg: per-token times), and the engines run in
paired rounds (pimoe and llama.cpp back to back, the order alternating): each round gives one
pimoe/llama.cpp ratio measured under the same load, and the reported ratio is their median. A
result record (JSON) is written under results/ with a new timestamped name; nothing is overwritten.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HELP = "CPU kernels and whole-model decode/prompt speed: pimoe vs llama.cpp on the same synthetic GGUF"

# numba, llama_cpp (optional) and the model are imported inside the functions that use them: `pimoe bench`
# imports every target module to build its parser, and `pimoe --help` must not start numba.

DEFAULT_CACHE = Path(os.environ.get("PIMOE_CACHE", Path.home() / ".cache" / "pimoe")) / "bench"


def add_arguments(parser) -> None:
    parser.add_argument("--threads", "-t", type=_thread_list, default=[min(2, os.cpu_count() or 1)],
                        help="thread counts for both engines, e.g. 1,2,4: each is measured in this run "
                             "(default: 2 or the CPU count)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the Qwen3-30B-A3B-shaped model (default 4)")
    parser.add_argument("--models", default="Q8_0,Q4_K_M",
                        help="comma list of weight mixes: Q8_0, Q4_K_M, Q4_K, Q6_K, F16 … (default Q8_0,Q4_K_M)")
    parser.add_argument("-p", "--n-prompt", "--prompt", dest="prompt", type=int, default=32, help="prompt tokens for pp (default 32)")
    parser.add_argument("-n", "--n-gen", "--decode", dest="decode", type=int, default=16, help="decode tokens for tg (default 16)")
    parser.add_argument("-r", "--reps", type=int, default=3, help="repeats of pp (default 3)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="paired rounds (pimoe and llama.cpp back to back, order alternating; default 2): "
                             "the ratio reported is the median of the rounds' ratios, the t/s each engine's best")
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp (pimoe only)")
    parser.add_argument("--micro-only", action="store_true", help="only the bandwidth and GEMV microbenchmarks")
    parser.add_argument("--no-micro", action="store_true", help="skip the GEMV microbenchmark")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where the synthetic models are written once and reused (default {DEFAULT_CACHE})")
    parser.add_argument("--results", type=Path, default=Path("results"), help="directory for the JSON record")


def _thread_list(text) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (an int is a one-element list)."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple)):
        return [int(t) for t in text]
    try:
        out = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"--threads wants positive integers separated by commas, got {text!r}")
    return out


# --- environment ------------------------------------------------------------------------------------

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(threads) -> dict:
    import numba

    env = {"cpu": _cpu_name(), "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
           "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "git_commit": _git_commit(), "load_average": os.getloadavg()}
    try:
        import llama_cpp

        env["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        env["llama_cpp_python"] = None
    return env


# --- 1. read bandwidth -------------------------------------------------------------------------------

def _numba_read_kernel():
    from numba import njit, prange

    @njit(cache=True, parallel=True)
    def read_bytes(a, out):  # a uint8 [rows, cols]: every byte read once, summed per row
        for r in prange(a.shape[0]):
            row = a[r]
            s = np.int32(0)
            for k in range(row.shape[0]):
                s = np.int32(s + np.int32(row[k]))
            out[r] = s

    return read_bytes


def _numba_threads(threads: int) -> int:
    """threads, capped at this process's numba pool (NUMBA_NUM_THREADS, the CPU count by default): the
    microbenchmarks run here, the models in workers started with NUMBA_NUM_THREADS=threads."""
    import numba

    n = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def read_bandwidth(threads: int, mbytes: int = 512, reps: int = 5) -> dict:
    """GB/s of plain sequential reads: numpy sum (1 thread) and a numba parallel byte sum."""
    threads = _numba_threads(threads)
    a = np.ones(mbytes * (1 << 20) // 4, np.float32)
    t_np = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        t_np.append(time.perf_counter() - t0)
    b = a.view(np.uint8).reshape(-1, 1 << 16)
    out = np.zeros(b.shape[0], np.int32)
    kernel = _numba_read_kernel()
    kernel(b[:4], out[:4])
    t_nb = []
    for _ in range(reps):
        t0 = time.perf_counter()
        kernel(b, out)
        t_nb.append(time.perf_counter() - t0)
    gb = a.nbytes / 1e9
    res = {"bytes": a.nbytes, "numpy_sum_1thread_GBps": gb / float(np.median(t_np)),
           "numba_read_GBps": gb / float(np.median(t_nb)), "numba_threads": threads,
           "numpy_best_GBps": gb / min(t_np), "numba_best_GBps": gb / min(t_nb)}
    # the ceiling is what the machine has shown it can do: the best repeat of either reader
    res["ceiling_GBps"] = max(res["numpy_best_GBps"], res["numba_best_GBps"])
    return res


# --- 2. expert GEMV microbenchmark ------------------------------------------------------------------

def gemv_micro(threads: int, ceiling: float, n_experts: int = 128, sweeps: int = 5) -> list[dict]:
    from gguf import GGMLQuantizationType as QT

    from pimoe import quant

    threads = _numba_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for qtype in (QT.Q4_K, QT.Q8_0):
        for out_rows, in_len, what in ((768, 2048, "gate/up 768x2048"), (2048, 768, "down 2048x768")):
            w = quant.random_qtensor("bench", qtype, (n_experts, out_rows, in_len), rng)
            x = rng.standard_normal((1, in_len)).astype(np.float32)
            quant.matmul(w[0], x)  # compile / load the cached kernels
            per, cpu = [], []
            for _ in range(sweeps):
                t0, c0 = time.perf_counter(), time.process_time()
                for e in range(n_experts):
                    quant.matmul(w[e], x)
                per.append((time.perf_counter() - t0) / n_experts)
                cpu.append((time.process_time() - c0) / n_experts)
            t = float(np.median(per))
            nbytes = w.nbytes // n_experts
            gbps = nbytes / t / 1e9
            rows.append({"qtype": qtype.name, "shape": what, "out": out_rows, "in": in_len,
                         "bytes_per_gemv": nbytes, "us_median": t * 1e6, "us_best": min(per) * 1e6,
                         "GBps": gbps, "GBps_best": nbytes / min(per) / 1e9,
                         "fraction_of_ceiling": gbps / ceiling, "threads": threads,
                         # CPU-seconds (all threads) per GEMV: robust to other load on a shared machine
                         "cpu_us_best": min(cpu) * 1e6, "GBps_per_core": nbytes / min(cpu) / 1e9})
            print(f"  {qtype.name:5s} {what:18s} {t * 1e6:8.1f} us  {gbps:6.2f} GB/s  "
                  f"({100 * gbps / ceiling:4.1f} % of {ceiling:.1f} GB/s)   per core-second: "
                  f"{nbytes / min(cpu) / 1e9:5.2f} GB/s", flush=True)
    return rows


# --- 3. whole models ----------------------------------------------------------------------------------

def _more_bits_layers(n_layers: int) -> list[int]:
    """Layers where llama-quantize's Q4_K_M gives attn_v / ffn_down the larger type (use_more_bits)."""
    return [i for i in range(n_layers)
            if i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2]


def model_recipe(mix: str, n_layers: int) -> tuple[str, dict[str, str]]:
    """(default type, {tensor name: type}) for a weight mix name (synth.make_model's tensor_types: exact
    names). Q4_K_M as llama-quantize makes it for Qwen3-30B-A3B: Q4_K, except output.weight Q6_K and
    attn_v / ffn_down_exps in the use_more_bits layers Q6_K (attn_output stays Q4_K: its Q5_K bump is for
    8-expert models only)."""
    if mix.upper() == "Q4_K_M":
        types = {"output.weight": "Q6_K"}
        for i in _more_bits_layers(n_layers):
            types[f"blk.{i}.attn_v.weight"] = "Q6_K"
            types[f"blk.{i}.ffn_down_exps.weight"] = "Q6_K"
        return "Q4_K", types
    return mix.upper(), {}


def ensure_model(cache_dir: Path, mix: str, n_layers: int) -> Path:
    from pimoe.synth import make_model

    qtype, types = model_recipe(mix, n_layers)
    path = cache_dir / f"qwen3-30b-a3b-{n_layers}L-{mix.upper()}.gguf"
    if path.exists() and not _types_follow_recipe(path, qtype, types):
        # written before synth matched tensor names exactly (attn_output then became Q6_K too)
        print(f"{path}: its tensor types are not the {mix.upper()} recipe's; writing it again", flush=True)
        path.unlink()
    if not path.exists():
        print(f"writing {path} (once; reused by later runs)", flush=True)
        tmp = path.with_suffix(".part")
        make_model(tmp, preset="qwen3-30b-a3b", qtype=qtype, n_layers=n_layers, tensor_types=types,
                   progress=True)
        tmp.rename(path)
    return path


def _types_follow_recipe(path: Path, qtype: str, types: dict[str, str]) -> bool:
    """Whether every matrix of the cached model has the type the recipe gives it."""
    from pimoe.gguf_file import GGUFFile

    try:
        tensors = GGUFFile(path).tensors
    except Exception:      # a damaged cache file: write it again
        return False
    for name, t in tensors.items():
        if t.qtype.name == "F32":
            continue       # norms and router (the recipe never gives F32)
        if t.qtype.name != types.get(name, qtype):
            return False
    return True


def weight_bytes_per_token(path: Path) -> dict:
    """Bytes of weights one decode token reads: every matrix, k/E of each expert tensor, one embedding row."""
    from pimoe.gguf_file import GGUFFile

    f = GGUFFile(path)
    cfg = f.config
    total = dense = experts = 0
    for name, t in f.tensors.items():
        total += t.nbytes
        if name == "token_embd.weight":
            dense += t.row_bytes
        elif "_exps" in name:
            experts += t.nbytes * cfg.n_experts_used // cfg.n_experts
        else:
            dense += t.nbytes
    return {"file_bytes": path.stat().st_size, "tensor_bytes": total, "bytes_per_token": dense + experts,
            "dense_bytes_per_token": dense, "expert_bytes_per_token": experts,
            "params": int(sum(int(np.prod(t.shape)) for t in f.tensors.values())),
            "vocab": cfg.vocab_size}


def _run_worker(engine: str, path: Path, threads: int, prompt: list[int], n_decode: int, reps: int,
                tmpdir: str) -> dict:
    spec = {"engine": engine, "path": str(path), "threads": threads, "prompt": prompt, "n_decode": n_decode,
            "reps": reps, "logits_out": os.path.join(tmpdir, f"{engine}.npy")}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "pimoe.bench.cpu", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"engine": engine, "error": worker_failure(proc.returncode, proc.stderr or proc.stdout)}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["logits_file"] = spec["logits_out"]
    return res


def worker_failure(returncode: int, output: str) -> list[str]:
    """What a failed worker reports: its last lines, and the signal's name when one killed it (a crash
    in llama.cpp's native code leaves no Python traceback, only e.g. SIGSEGV or SIGILL)."""
    from pimoe.llamaref import describe_exit

    return (output or "").strip().splitlines()[-5:] + [f"worker {describe_exit(returncode)}"]


def _worker(spec: dict) -> dict:
    """Runs in its own process: load, warm up, time pp and tg, report peak RSS."""
    engine, path, threads = spec["engine"], spec["path"], spec["threads"]
    prompt, n_decode, reps = spec["prompt"], spec["n_decode"], spec["reps"]
    decode_tokens = [(prompt[i % len(prompt)] * 7 + 3) % 1000 for i in range(n_decode)]
    t0 = time.perf_counter()
    if engine == "pimoe":
        import numba

        import pimoe

        numba.set_num_threads(threads)
        model = pimoe.load_model(path)
        # fault in every page of the mapping once (llama.cpp does the same at load with MAP_POPULATE),
        # so neither engine's timings include first-touch page faults
        for t in model.file.tensors.values():
            flat = t.data.reshape(-1)
            int(flat[::4096].sum())
        step, reset = model.forward, model.reset
    else:
        from pimoe.llamaref import Reference

        # the low-level API with extra buffer types off (pimoe.llamaref: the AMX/repack buffers crash
        # some hosts and a Pi has none); all-position logits for a prompt, like pimoe's forward
        llm = Reference(path, n_ctx=len(prompt) + n_decode + 8, n_batch=max(512, len(prompt)), n_threads=threads)
        step, reset = llm.eval, llm.reset
    load_s = time.perf_counter() - t0
    step(prompt[:2])  # warm-up: loads pimoe's cached kernels
    step(decode_tokens[:2])
    reset()

    def run_prompt():
        reset()
        return step(prompt)[-1]

    def run_token(tok):
        step([tok])

    pp, pp_cpu = [], []
    last_logits = None
    for _ in range(reps):
        t1, c1 = time.perf_counter(), time.process_time()
        last_logits = run_prompt()
        pp.append(time.perf_counter() - t1)
        pp_cpu.append(time.process_time() - c1)
    tg, tg_cpu = [], []
    for tok in decode_tokens:
        t1, c1 = time.perf_counter(), time.process_time()
        run_token(tok)
        tg.append(time.perf_counter() - t1)
        tg_cpu.append(time.process_time() - c1)
    np.save(spec["logits_out"], np.asarray(last_logits, np.float32))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"engine": engine, "threads": threads, "load_s": load_s, "pp_tokens": len(prompt),
            "pp_s": pp, "pp_tps": len(prompt) / float(np.median(pp)), "tg_tokens": n_decode, "tg_s": tg,
            "tg_tps": 1.0 / float(np.median(tg)), "tg_tps_mean": n_decode / float(np.sum(tg)),
            "tg_sd_s": float(np.std(tg)), "peak_rss_bytes": rss_kb * 1024,
            # process CPU-seconds (all threads; llama.cpp's include its spin-waits)
            "pp_cpu_s": pp_cpu, "tg_cpu_s": tg_cpu}


def bench_model(path: Path, mix: str, args, ceiling: float, tmpdir: str) -> dict:
    info = weight_bytes_per_token(path)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(10, min(info["vocab"], 1000), size=args.prompt)]
    engines = ["pimoe"] + ([] if args.no_llama else ["llama.cpp"])
    runs, tg_rounds, paired = {}, {}, []
    rounds = max(1, getattr(args, "rounds", 1))
    for rnd in range(rounds):
        this_round = {}
        for engine in (engines if rnd % 2 == 0 else engines[::-1]):   # alternate who goes first
            print(f"  {engine:9s} running ({args.threads} threads, round {rnd + 1}/{rounds}) …", flush=True)
            r = _run_worker(engine, path, args.threads, prompt, args.decode, args.reps, tmpdir)
            this_round[engine] = r
            if "error" not in r:
                r["tg_GBps"] = info["bytes_per_token"] * r["tg_tps"] / 1e9
                r["tg_fraction_of_ceiling"] = r["tg_GBps"] / ceiling
                # CPU-seconds per token: with 1 thread a load-robust cost figure for both engines
                r["tg_cpu_tps"] = 1.0 / float(np.median(r["tg_cpu_s"]))
                r["pp_cpu_tps"] = r["pp_tokens"] / float(np.median(r["pp_cpu_s"]))
                r["round"] = rnd + 1
            tg_rounds.setdefault(engine, []).append(r.get("tg_tps"))
            prev = runs.get(engine)
            if prev is None or "error" in prev or ("error" not in r and r["tg_tps"] > prev["tg_tps"]):
                runs[engine] = r  # (each engine's logits are deterministic: any round's file will do)
        p_r, l_r = this_round.get("pimoe", {}), this_round.get("llama.cpp", {})
        if "tg_tps" in p_r and "tg_tps" in l_r:
            paired.append({"round": rnd + 1, "tg": p_r["tg_tps"] / l_r["tg_tps"],
                           "pp": p_r["pp_tps"] / l_r["pp_tps"]})
            print(f"  round {rnd + 1}: pimoe / llama.cpp decode {paired[-1]['tg']:.2f}x, "
                  f"prompt {paired[-1]['pp']:.2f}x", flush=True)
    for engine, r in runs.items():
        r["all_rounds_tg_tps"] = tg_rounds[engine]
    rec = {"model": path.name, "mix": mix, "threads": args.threads, "weights": info, "runs": runs}
    p, l = runs.get("pimoe", {}), runs.get("llama.cpp", {})
    if "tg_tps" in p and "tg_tps" in l:
        # paired: the median of the rounds' ratios (each measured under one load); best/best beside it
        rec["paired_rounds"] = paired
        rec["ratio_tg"] = float(np.median([q["tg"] for q in paired]))
        rec["ratio_pp"] = float(np.median([q["pp"] for q in paired]))
        rec["ratio_tg_best"] = p["tg_tps"] / l["tg_tps"]
        rec["ratio_pp_best"] = p["pp_tps"] / l["pp_tps"]
        if args.threads == 1:  # llama.cpp's CPU time includes no spin-waiting only with one thread
            rec["ratio_tg_cpu_time"] = p["tg_cpu_tps"] / l["tg_cpu_tps"]
            rec["ratio_pp_cpu_time"] = p["pp_cpu_tps"] / l["pp_cpu_tps"]
        a, b = np.load(p["logits_file"]), np.load(l["logits_file"])
        rec["last_logits_max_abs_diff"] = float(np.abs(a - b).max())
        rec["last_logits_scale"] = float(np.abs(b).max())
        rec["same_argmax"] = bool(int(a.argmax()) == int(b.argmax()))
    for r in runs.values():
        r.pop("logits_file", None)
    return rec


def _table(records: list[dict], threads: int) -> str:
    head = "| model | size | params | engine | threads | test | t/s | GB/s |\n|---|---|---|---|---|---|---|---|"
    lines = [head]
    for rec in records:
        w = rec["weights"]
        for engine, r in rec["runs"].items():
            if "error" in r:
                lines.append(f"| {rec['model']} | | | {engine} | {threads} | error | {r['error'][-1]} | |")
                continue
            size = f"{w['file_bytes'] / 2**30:.2f} GiB"
            params = f"{w['params'] / 1e9:.2f} B"
            pp_sd = float(np.std([r["pp_tokens"] / s for s in r["pp_s"]]))
            tg_rates = [1.0 / s for s in r["tg_s"]]
            lines.append(f"| {rec['mix']} | {size} | {params} | {engine} | {threads} | pp{r['pp_tokens']} | "
                         f"{r['pp_tps']:.2f} ± {pp_sd:.2f} | |")
            lines.append(f"| {rec['mix']} | {size} | {params} | {engine} | {threads} | tg{r['tg_tokens']} | "
                         f"{r['tg_tps']:.2f} ± {float(np.std(tg_rates)):.2f} | {r['tg_GBps']:.2f} |")
    return "\n".join(lines)


def _new_record_path(results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = results / f"cpu-bench-{stamp}.json"
    n = 1
    while path.exists():
        path = results / f"cpu-bench-{stamp}-{n}.json"
        n += 1
    return path


def _command_args() -> list[str]:
    """The options this run was given, whether started as `pimoe bench cpu …` or `python -m pimoe.bench.cpu …`."""
    if sys.argv[1:3] == ["bench", "cpu"]:
        return sys.argv[3:]
    if sys.argv and sys.argv[0].endswith("cpubench.py"):
        return sys.argv[1:]
    return []


def _bench_threads(args, threads: int, tmpdir: str) -> dict:
    """Everything for one thread count: ceiling, GEMVs, models."""
    import copy

    a = copy.copy(args)
    a.threads = threads
    out = {"threads": threads}
    print(f"== {threads} thread{'s' if threads > 1 else ''} (load {os.getloadavg()[0]:.1f})")
    bw = read_bandwidth(threads)
    out["read_bandwidth"] = bw
    ceiling = bw["ceiling_GBps"]
    print(f"read bandwidth: numpy sum (1 thread) {bw['numpy_sum_1thread_GBps']:.1f} GB/s, "
          f"numba read ({threads} threads) {bw['numba_read_GBps']:.1f} GB/s (medians) -> ceiling "
          f"{ceiling:.1f} GB/s (best repeat)")
    if not args.no_micro:
        print("expert GEMVs (decode, 1 token; 128 experts cycled so weights stream from DRAM):")
        out["gemv"] = gemv_micro(threads, ceiling)
    out["models"] = []
    if args.micro_only:
        return out
    for mix in [m.strip() for m in args.models.split(",") if m.strip()]:
        path = ensure_model(args.cache_dir, mix, args.layers)
        print(f"model {path.name}:", flush=True)
        rec = bench_model(path, mix, a, ceiling, tmpdir)
        out["models"].append(rec)
        w = rec["weights"]
        for engine, r in rec["runs"].items():
            if "error" in r:
                print(f"  {engine}: error: {' | '.join(r['error'])}")
                continue
            print(f"  {engine:9s} pp{r['pp_tokens']} {r['pp_tps']:7.2f} t/s   tg{r['tg_tokens']} "
                  f"{r['tg_tps']:6.2f} t/s x {w['bytes_per_token'] / 1e6:.0f} MB of weights per token = "
                  f"{r['tg_GBps']:.2f} GB/s ({100 * r['tg_fraction_of_ceiling']:.0f} % of the {ceiling:.1f} GB/s "
                  f"ceiling)   peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (file {w['file_bytes'] / 2**30:.2f} GiB)")
        if "ratio_tg_cpu_time" in rec:
            print(f"  by CPU-seconds per token (1 thread, insensitive to other load): decode "
                  f"{rec['ratio_tg_cpu_time']:.2f}x, prompt {rec['ratio_pp_cpu_time']:.2f}x")
        if "ratio_tg" in rec:
            print(f"  pimoe / llama.cpp (median of {len(rec['paired_rounds'])} paired rounds): decode "
                  f"{rec['ratio_tg']:.2f}x, prompt {rec['ratio_pp']:.2f}x (best/best {rec['ratio_tg_best']:.2f}x, "
                  f"{rec['ratio_pp_best']:.2f}x); last-token logits max |diff| {rec['last_logits_max_abs_diff']:.2e} "
                  f"(max |logit| {rec['last_logits_scale']:.2f}), same argmax: {rec['same_argmax']}")
    if out["models"]:
        print()
        print(_table(out["models"], threads))
    return out


def main(args) -> int:
    from pimoe.errors import PimoeError

    threads = _thread_list(args.threads)
    if min(threads) < 1:
        raise PimoeError(f"--threads must be at least 1, got {args.threads}")
    record = {"kind": "cpu-bench", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "environment": environment(threads), "threads": threads,
              "command": "pimoe bench cpu " + " ".join(_command_args())}
    print(f"CPU: {record['environment']['cpu']}, threads {threads}, load {record['environment']['load_average']}")
    with tempfile.TemporaryDirectory() as tmpdir:
        record["by_threads"] = [_bench_threads(args, t, tmpdir) for t in threads]
    record["summary"] = [{"mix": m["mix"], "threads": m["threads"], "ratio_tg": m.get("ratio_tg"),
                          "ratio_pp": m.get("ratio_pp"),
                          "ratio_tg_rounds": [q["tg"] for q in m.get("paired_rounds", [])]}
                         for b in record["by_threads"] for m in b["models"]]
    if record["summary"]:
        print("\npimoe / llama.cpp decode (median of paired rounds):")
        for row in record["summary"]:
            if row["ratio_tg"] is not None:
                print(f"  {row['mix']:7s} {row['threads']} thread(s): {row['ratio_tg']:.2f}x  "
                      f"(rounds {', '.join(f'{v:.2f}' for v in row['ratio_tg_rounds'])}), prompt {row['ratio_pp']:.2f}x")
    from pimoe.records import write_record

    out, _ = write_record(record, args.results, "cpu-bench")      # schema, kind, the same naming as every record
    print(f"\nrecord written: {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m pimoe.bench.cpu", description=HELP)
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
