"""pimoe: Mixture-of-Experts language models on the Raspberry Pi, CPU vs VideoCore VI GPU.

    import pimoe
    with pimoe.load_model("model.gguf", backend="cpu") as model:
        ids = list(model.generate("Why is the sky blue?", max_tokens=32))   # stops at end-of-generation tokens
        print(model.tokenizer.decode(ids))
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pimoe.errors import PimoeError

if TYPE_CHECKING:
    from pimoe.model import Model

__all__ = ["PimoeError", "load_model", "__version__"]
__version__ = "0.1.0"


def load_model(path: str | os.PathLike[str], backend: str = "cpu", n_ctx: int | None = None,
               **backend_opts: Any) -> Model:
    """Open a GGUF MoE model (memory-mapped, never dequantized whole) and return a pimoe.model.Model.

    path     a GGUF file of a supported MoE architecture (qwen3moe, olmoe, qwen2moe, granitemoe,
             Mixtral-style llama).
    backend  where the routed expert FFNs run: "cpu" (default), "qpu" (the VideoCore VI GPU, or
             pimoe's emulator of it), "cpu-reference" / "qpu-reference" (slow numpy references);
             pimoe.backends.available_backends() lists what this install has.
    n_ctx    KV cache length in tokens (default: the model's trained context, at most 4096).

    Keyword arguments for backend="qpu":
    qpu           "auto" (default: the GPU when on a Pi 4, else the emulator) | "hw" | "virtual" | "emu"
    threads       QPU threads per dispatch, 1..8 (default 8)
    memory_limit  bytes the QPU copy of the experts may take (default: what the machine has)
    progress      show a progress bar while the experts are copied into the QPU layout (default True)

    Raises PimoeError (with the file and the reason) for a file pimoe cannot run.
    """
    from pimoe.model import load_model as _load_model

    return _load_model(path, backend=backend, n_ctx=n_ctx, **backend_opts)
