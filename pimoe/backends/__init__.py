"""Expert-FFN backends behind one seam (see base.py). Registry: name -> "module:Class" or a factory.

Other backends (the QPU one) register themselves with register_backend() or by adding a line here.
"""

from __future__ import annotations

import importlib

from pimoe.errors import PimoeError

_REGISTRY: dict[str, object] = {
    "cpu": "pimoe.backends.cpu:CPUBackend",
    "cpu-reference": "pimoe.backends.cpu:CPUReferenceBackend",
    "qpu": "pimoe.backends.qpu:QPUBackend",
    "qpu-reference": "pimoe.backends.qpu:QPUReferenceBackend",
    "hybrid": "pimoe.backends.hybrid:HybridBackend",
}


def register_backend(name: str, factory) -> None:
    """factory: a class or callable (gguf_file, config, **opts) -> Backend, or a "module:Class" string."""
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, gguf_file, config, **opts):
    entry = _REGISTRY.get(name)
    if entry is None:
        raise PimoeError(f"unknown backend '{name}' (available: {', '.join(available_backends())})")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry(gguf_file, config, **opts)
