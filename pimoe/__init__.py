"""pimoe: Mixture-of-Experts language models on the Raspberry Pi, CPU vs VideoCore VI GPU.

    import pimoe
    model = pimoe.load_model("model.gguf", backend="cpu")
"""

from pimoe.errors import PimoeError

__all__ = ["PimoeError", "load_model"]
__version__ = "0.1.0"


def load_model(path, backend="cpu", **kwargs):
    """Open a GGUF MoE model (memory-mapped) and return a pimoe.model.Model."""
    from pimoe.model import load_model as _load_model

    return _load_model(path, backend=backend, **kwargs)
