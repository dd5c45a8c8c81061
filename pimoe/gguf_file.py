"""GGUFFile: one GGUF model file, memory-mapped, its tensors left in their stored block format.

GGUF layout (gguf-py/README, ggml/docs/gguf.md): magic "GGUF", version, tensor count, key/value count,
the key/values, the tensor infos (name, n_dims, ne[], type, offset), padding to `general.alignment`,
then the tensor data. ne[0] is the fastest-varying axis, so a tensor's numpy shape is ne reversed and
its last axis is a row of ne[0] values, stored as whole quantization blocks.

The file is opened with numpy.memmap (through gguf.GGUFReader): nothing is read until a tensor's bytes
are touched, so a 17 GB model opens on a 16 GB machine and only the experts a token uses are paged in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pimoe.config import ModelConfig
from pimoe.errors import PimoeError

GGUF_MAGIC = b"GGUF"


def _open_reader(path: Path):
    # GGUFReader raises ValueError/IndexError/KeyError/struct errors from deep inside when the header
    # or tensor table runs past the end of the file; turn all of them into one message about the file.
    import gguf

    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a broken file, not a pimoe bug
        size = path.stat().st_size
        raise PimoeError(f"{path}: not a readable GGUF file ({size} bytes; truncated or corrupt?): "
                         f"{type(exc).__name__}: {exc}") from None


class GGUFFile:
    """A GGUF file: `metadata` (key -> python value), `tensors` (name -> QTensor), `config`."""

    def __init__(self, path: str | os.PathLike):
        from pimoe.quant import QTensor  # noqa: F401 - fail early if quant is unavailable

        self.path = Path(path)
        where = str(self.path)
        if not self.path.exists():
            raise PimoeError(f"{where}: no such file")
        if not self.path.is_file():
            raise PimoeError(f"{where}: not a file")
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head != GGUF_MAGIC:
            raise PimoeError(f"{where}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")
        self.file_size = self.path.stat().st_size

        reader = _open_reader(self.path)
        self._reader = reader
        self.metadata: dict[str, object] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue  # the reader's pseudo-fields for the header (version, counts)
            self.metadata[name] = field.contents()
        self.version = int(reader.fields["GGUF.version"].contents())

        self.tensors = {}
        for rt in reader.tensors:
            self.tensors[rt.name] = self._make_qtensor(rt)

        embd = self.tensors.get("token_embd.weight")
        vocab = embd.shape[0] if embd is not None and len(embd.shape) == 2 else None
        self.config = ModelConfig.from_metadata(self.metadata, where, vocab_size=vocab)

    def _make_qtensor(self, rt):
        from pimoe.quant import QTensor, check_supported
        import gguf

        where = f"{self.path}: tensor '{rt.name}'"
        check_supported(rt.tensor_type, where)
        shape = tuple(int(d) for d in reversed(rt.shape.tolist()))  # GGUF ne is reversed numpy shape
        block, type_size = gguf.GGML_QUANT_SIZES[rt.tensor_type]
        row = shape[-1] if shape else 1
        if row % block:
            raise PimoeError(f"{where}: row length {row} is not a multiple of the "
                             f"{rt.tensor_type.name} block size {block}")
        row_bytes = row // block * type_size
        end = rt.data_offset + rt.n_bytes
        if end > self.file_size:
            raise PimoeError(f"{where}: data at offset {rt.data_offset}..{end} runs past the end of the file "
                             f"({self.file_size} bytes): truncated file")
        raw = self._reader.data[rt.data_offset:end]            # uint8 memmap view, read-only
        data = raw.reshape(*shape[:-1], row_bytes)             # [*leading, row_bytes]
        return QTensor(name=rt.name, qtype=rt.tensor_type, shape=shape, data=data)

    def tensor(self, name: str, shape: tuple[int, ...] | None = None, check_type: bool = True):
        """The QTensor called `name`; PimoeError if it is missing, has another shape, or an unsupported type."""
        from pimoe.quant import check_supported

        t = self.tensors.get(name)
        if t is None:
            raise PimoeError(f"{self.path}: tensor '{name}' is missing (arch {self.config.arch})")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise PimoeError(f"{self.path}: tensor '{name}' has shape {tuple(t.shape)} (GGUF ne "
                             f"{tuple(reversed(t.shape))}) but the model config needs {tuple(shape)}")
        if check_type:
            check_supported(t.qtype, f"{self.path}: tensor '{name}'")
        return t

    def has(self, name: str) -> bool:
        return name in self.tensors

    def stats(self) -> dict[str, object]:
        """Parameter and byte counts: total, and what one decode token reads (active).

        Active = every non-expert weight, n_used/n_experts of each expert tensor, one row of the token
        embedding (a lookup, not a matmul) unless it doubles as the output head.
        """
        cfg = self.config
        frac = cfg.n_experts_used / cfg.n_experts
        tied = "output.weight" not in self.tensors
        total_p = total_b = active_p = active_b = 0.0
        by_type: dict[str, int] = {}
        for name, t in self.tensors.items():
            n = int(np.prod(t.shape))
            b = t.nbytes
            total_p += n
            total_b += b
            by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + 1
            if "_exps" in name:
                active_p += n * frac
                active_b += b * frac
            elif name == "token_embd.weight" and not tied:
                active_p += t.shape[-1]
                active_b += t.row_bytes
            else:
                active_p += n
                active_b += b
        return {"total_params": int(total_p), "total_bytes": int(total_b),
                "active_params": int(active_p), "active_bytes": int(active_b),
                "tensor_types": by_type}

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, arch={self.config.arch}, tensors={len(self.tensors)})"
