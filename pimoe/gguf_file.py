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


# byte sizes of GGUF scalar value types (gguf.GGUFValueType: 8 = string, 9 = array)
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _diagnose(path: Path) -> str:
    """Walk the GGUF header by hand to say where a file that gguf.GGUFReader rejected goes wrong."""
    import struct

    import gguf

    size = path.stat().st_size
    f = open(path, "rb")
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        b = f.read(n)
        if len(b) < n:
            raise PimoeError(f"{path}: truncated: the file ends at byte {size} inside {what} "
                             f"(at byte {pos}, {n} bytes needed)")
        pos += n
        return b

    def u32(what):
        return struct.unpack("<I", take(4, what))[0]

    def u64(what):
        return struct.unpack("<Q", take(8, what))[0]

    def skip_value(vtype: int, what: str):
        if vtype == 8:
            take(u64(what), what)
        elif vtype == 9:
            sub, count = u32(what), u64(what)
            if sub in _SCALAR_SIZES:
                take(_SCALAR_SIZES[sub] * count, what)
            else:
                for _ in range(count):
                    skip_value(sub, what)
        elif vtype in _SCALAR_SIZES:
            take(_SCALAR_SIZES[vtype], what)
        else:
            raise PimoeError(f"{path}: corrupt: {what} has unknown value type {vtype} (byte {pos})")

    with f:
        take(4, "the magic")
        version = u32("the header")
        n_tensors, n_kv = u64("the header"), u64("the header")
        if version not in (2, 3) or n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise PimoeError(f"{path}: corrupt header (version {version}, {n_tensors} tensors, {n_kv} keys)")
        alignment = 32
        for i in range(n_kv):
            key = take(u64(f"key {i}"), f"key {i}").decode("utf-8", "replace")
            vtype = u32(f"metadata '{key}'")
            if key == "general.alignment" and vtype == 4:
                alignment = u32(f"metadata '{key}'")
            else:
                skip_value(vtype, f"metadata '{key}'")
        infos = []
        for i in range(n_tensors):
            name = take(u64(f"tensor info {i}"), f"tensor info {i}").decode("utf-8", "replace")
            dims = [u64(f"tensor info '{name}'") for _ in range(u32(f"tensor info '{name}'"))]
            qtype, offset = u32(f"tensor info '{name}'"), u64(f"tensor info '{name}'")
            infos.append((name, dims, qtype, offset))
        start = -(-pos // alignment) * alignment
        for name, dims, qtype, offset in infos:
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
            except (ValueError, KeyError):
                raise PimoeError(f"{path}: tensor '{name}' has unknown type id {qtype}") from None
            end = start + offset + int(np.prod(dims, dtype=np.int64)) // block * type_size
            if end > size:
                raise PimoeError(f"{path}: truncated: tensor '{name}' needs bytes up to {end} but the file "
                                 f"has only {size} (incomplete download or copy?)")
    return ""


def _open_reader(path: Path):
    # GGUFReader fails with numpy errors from deep inside when the header or the tensor data runs
    # past the end of the file; say instead where the file ends and what was being read.
    import gguf

    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a broken file, not a pimoe bug
        detail = f"{type(exc).__name__}: {exc}"
    _diagnose(path)   # raises a precise PimoeError when it can tell what is wrong
    raise PimoeError(f"{path}: not a readable GGUF file ({path.stat().st_size} bytes; corrupt?): {detail}")


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
