"""Shared fixtures: tiny synthetic GGUF models (written once per session) and llama.cpp as the reference."""

from __future__ import annotations

import numpy as np
import pytest

from llama_ref import LlamaRef  # noqa: F401  (tests import it from here)

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


@pytest.fixture(scope="session")
def llama_ref():
    """llama_ref(path) -> LlamaRef (tests/llama_ref.py: llama.cpp in a child process, extra buffer types
    off), one instance per model file per session."""
    pytest.importorskip("llama_cpp")
    import llama_ref as mod

    refs: dict[str, LlamaRef] = {}

    def get(path):
        key = str(path)
        if key not in refs:
            refs[key] = LlamaRef(path)
        return refs[key]

    yield get
    for r in refs.values():
        try:
            r.close()
        except AssertionError:       # the child died in the last test: that test already failed
            pass
    mod.shutdown()
