"""llama.cpp as the reference, loaded so that it runs on every x86 CPU the tests run on.

Used by the tests (through tests/llama_ref.py, which runs it in a child process) and by the CPU
benchmark's llama.cpp worker. llama-cpp-python builds llama.cpp from source for the machine it is
installed on. On a CPU with AMX (Intel Sapphire Rapids and later) that build turns on ggml's AMX
"extra buffer type", and llama.cpp 0.3.x crashes in `ggml_backend_amx_mul_mat` on the first quantized
matmul (SIGSEGV/SIGILL: the whole process dies, no Python exception). The high-level `llama_cpp.Llama`
class cannot turn extra buffer types off, so this module loads models through the low-level API with
`llama_model_params.use_extra_bufts = False`: weights then stay in ordinary CPU buffers and every
matmul takes ggml's generic CPU path (the same numbers; the repacked/AMX paths are speed-ups only).

`Reference(path)`: F32 KV cache, flash attention off, 1 thread by default: set up for exact comparison.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from pimoe.errors import PimoeError

GGML_TYPE_F32 = 0

# What to do when llama.cpp kills its process: said by the tests and the benchmark.
REBUILD_ADVICE = (
    "llama.cpp (llama-cpp-python) crashed. It was built from source for this CPU; on CPUs with AMX "
    "(Sapphire Rapids and later) its AMX/repacked matmul paths are known to crash. pimoe already loads "
    "models with extra buffer types off; if it still crashes, rebuild llama-cpp-python portable: "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" '
    "pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python llama-cpp-python "
    "(see README, 'The llama.cpp reference')")


def cpu_has_amx(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """True if the CPU advertises any AMX feature (amx_tile / amx_int8 / amx_bf16 ...)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return any(f.startswith("amx") for f in line.split(":", 1)[-1].split())
    return False


def describe_exit(returncode: int) -> str:
    """'killed by SIGSEGV (signal 11)' or 'exited with status 3'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-returncode})"
    return f"exited with status {returncode}"


_backend_ready = False


def _llama_cpp():
    global _backend_ready
    try:
        import llama_cpp
    except ImportError as exc:
        raise PimoeError(f"llama-cpp-python is not installed ({exc}); `pip install -e \".[test]\"` builds it") \
            from None
    if not _backend_ready:
        if not os.environ.get("PIMOE_LLAMA_VERBOSE"):
            from llama_cpp import _logger   # llama-cpp-python's log callback: errors only

            _logger.set_verbose(False)
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def model_params(extra_bufts: bool = False):
    """llama_model_params for a reference load: mmap'd, CPU only, extra buffer types off by default."""
    llama_cpp = _llama_cpp()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_extra_bufts = bool(extra_bufts)
    return mp


class Reference:
    """One llama.cpp model + context. logits(tokens): one batch from an empty cache; decode(tokens):
    one token per llama_decode through the KV cache; both -> float32 [T, n_vocab]."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 128, *, n_batch: int | None = None,
                 n_threads: int = 1, extra_bufts: bool = False):
        llama_cpp = _llama_cpp()
        self._lib = llama_cpp
        self.path = str(path)
        self.params = model_params(extra_bufts)
        self.extra_bufts = bool(self.params.use_extra_bufts)
        self.model = llama_cpp.llama_model_load_from_file(self.path.encode("utf-8"), self.params)
        if not self.model:
            raise PimoeError(f"{self.path}: llama.cpp could not load this model")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.model))
        n_batch = int(n_batch or n_ctx)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = int(n_ctx), n_batch, n_batch
        cp.n_threads = cp.n_threads_batch = int(n_threads)
        cp.type_k = cp.type_v = GGML_TYPE_F32
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            self.model = None
            raise PimoeError(f"{self.path}: llama.cpp could not create a context (n_ctx {n_ctx})")
        self.n_ctx, self.n_batch = int(n_ctx), n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_past = 0

    def reset(self) -> None:
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def eval(self, tokens, all_logits: bool = True) -> np.ndarray:
        """Append `tokens` to the cache (in batches of n_batch) -> logits f32 [T or 1, n_vocab]."""
        tokens = [int(t) for t in tokens]
        if self.n_past + len(tokens) > self.n_ctx:
            raise PimoeError(f"{self.path}: {self.n_past + len(tokens)} tokens exceed the context {self.n_ctx}")
        out = []
        b = self._batch
        for s in range(0, len(tokens), self.n_batch):
            chunk = tokens[s:s + self.n_batch]
            last_chunk = s + self.n_batch >= len(tokens)
            for i, t in enumerate(chunk):
                b.token[i] = t
                b.pos[i] = self.n_past + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = all_logits or (last_chunk and i == len(chunk) - 1)
            b.n_tokens = len(chunk)
            rc = self._lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise PimoeError(f"{self.path}: llama_decode returned {rc}")
            for i in range(len(chunk)):
                if b.logits[i]:
                    ptr = self._lib.llama_get_logits_ith(self.ctx, i)
                    out.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
            self.n_past += len(chunk)
        return np.array(out, dtype=np.float32).reshape(-1, self.n_vocab)

    def logits(self, tokens) -> np.ndarray:
        self.reset()
        return self.eval(tokens)

    def decode(self, tokens) -> np.ndarray:
        self.reset()
        return np.concatenate([self.eval([t]) for t in tokens]) if len(tokens) else \
            np.zeros((0, self.n_vocab), np.float32)

    def close(self) -> None:
        lib = self._lib
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lib.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

