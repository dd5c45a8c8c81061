"""Shared fixtures: tiny synthetic GGUF models (written once per session) and llama.cpp as the reference."""

from __future__ import annotations

import numpy as np
import pytest

ARCHS = ("qwen3moe", "olmoe", "qwen2moe", "llama", "granitemoe")
ALL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch, qtype="F32", **make_model_kwargs) -> Path, written once per session per argument set."""
    from pimoe.synth import make_model

    root = tmp_path_factory.mktemp("models")
    cache: dict[tuple, object] = {}

    def make(arch: str, qtype: str = "F32", **kw):
        key = (arch, qtype, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            name = f"{arch}-{qtype}-{len(cache)}.gguf"
            cache[key] = make_model(root / name, arch=arch, qtype=qtype, **kw)
        return cache[key]

    return make


class LlamaRef:
    """llama.cpp through llama-cpp-python, set up for exact comparison: F32 KV cache, no flash attention."""

    def __init__(self, path, n_ctx: int = 128):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                                   type_k=0, type_v=0,   # GGML_TYPE_F32 for the K and V caches
                                   flash_attn=False, verbose=False, n_threads=1, n_threads_batch=1)

    def logits(self, tokens) -> np.ndarray:
        """Whole sequence in one batch from an empty cache -> f32 [T, vocab]."""
        tokens = [int(t) for t in tokens]
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[:len(tokens)], dtype=np.float32)

    def decode(self, tokens) -> np.ndarray:
        """One token per llama_decode call (incremental decode through the KV cache) -> f32 [T, vocab]."""
        tokens = [int(t) for t in tokens]
        self.llm.reset()
        for t in tokens:
            self.llm.eval([t])
        return np.array(self.llm.scores[:len(tokens)], dtype=np.float32)

    def close(self):
        self.llm.close()


@pytest.fixture(scope="session")
def llama_ref():
    """llama_ref(path) -> LlamaRef, one instance per model file per session."""
    pytest.importorskip("llama_cpp")
    refs: dict[str, LlamaRef] = {}

    def get(path):
        key = str(path)
        if key not in refs:
            refs[key] = LlamaRef(path)
        return refs[key]

    yield get
    for r in refs.values():
        r.close()
