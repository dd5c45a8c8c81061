"""GGUFFile: one GGUF model file, memory-mapped, its tensors left in their stored block format.

GGUF layout (gguf-py/README, ggml/docs/gguf.md), all little-endian:
    magic "GGUF", u32 version (2 or 3), u64 tensor count, u64 key/value count,
    key/values: string key, u32 value type, value   (string = u64 length + UTF-8 bytes;
                array = u32 element type, u64 count, elements),
    tensor infos: string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset,
    padding to `general.alignment` (default 32), then the tensor data (offsets are relative to it).
ne[0] is the fastest-varying axis, so a tensor's numpy shape is ne reversed and its last axis is a row
of ne[0] values, stored as whole quantization blocks.

The header is parsed here with buffered reads: gguf.GGUFReader makes several numpy views per string,
which takes ~10 s for a 150k-token vocabulary (tokens + merges) on a fast x86 core and far longer on
a Pi; this parser does it in well under a second and says exactly where a damaged file goes wrong.
The tests check it against GGUFReader.  The tensor data is one numpy.memmap of the file: nothing is
read until a tensor's bytes are touched, so a 17 GB model opens on a 16 GB machine and only the
experts a token uses are paged in.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from pimoe.config import ModelConfig
from pimoe.errors import PimoeError, printable

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32

# GGUF value types (gguf.GGUFValueType): numpy dtype of the scalar ones; 8 = string, 9 = array
_SCALAR_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                  10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class _HeaderParser:
    """Reads the GGUF header from a buffered file; every short read is a PimoeError naming the spot."""

    def __init__(self, path: str, f, size: int):
        self.path, self.f, self.size, self.pos = path, f, size, 0

    def take(self, n: int, what: str) -> bytes:
        b = self.f.read(n)
        if len(b) < n:
            raise PimoeError(f"{self.path}: truncated: the file ends at byte {self.size} inside {what} "
                             f"(at byte {self.pos}, {n} bytes needed)")
        self.pos += n
        return b

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        if n > self.size:
            raise PimoeError(f"{self.path}: corrupt: {what} claims a string of {n} bytes (at byte {self.pos})")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PimoeError(f"{self.path}: corrupt: {what} is not UTF-8 ({exc})") from None

    def value(self, vtype: int, what: str):
        if vtype in _SCALAR_DTYPES:
            dt = np.dtype(_SCALAR_DTYPES[vtype])
            return np.frombuffer(self.take(dt.itemsize, what), dt)[0].item()
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            sub, count = self.u32(what), self.u64(what)
            if sub in _SCALAR_DTYPES:
                dt = np.dtype(_SCALAR_DTYPES[sub])
                if count * dt.itemsize > self.size:
                    raise PimoeError(f"{self.path}: corrupt: {what} claims {count} elements (at byte {self.pos})")
                return np.frombuffer(self.take(count * dt.itemsize, what), dt).tolist()
            if sub == _ARRAY:      # gguf.cpp refuses arrays of arrays (and unbounded nesting would recurse)
                raise PimoeError(f"{self.path}: corrupt: {what} is an array of arrays, which GGUF readers "
                                 f"(llama.cpp) refuse (at byte {self.pos})")
            if count > self.size:
                raise PimoeError(f"{self.path}: corrupt: {what} claims {count} elements (at byte {self.pos})")
            return [self.value(sub, what) for _ in range(count)]
        raise PimoeError(f"{self.path}: corrupt: {what} has unknown value type {vtype} (at byte {self.pos})")


GGML_MAX_DIMS = 4            # gguf.cpp refuses tensors with more dimensions
INT64_MAX = (1 << 63) - 1     # gguf.cpp: every ne and their product must fit in int64_t


def read_header(path: Path) -> tuple[int, dict[str, object], list[tuple[str, tuple[int, ...], int, int]], int]:
    """-> (version, metadata {key: python value}, tensor infos [(name, ne, ggml type id, offset)], data start).

    Applies gguf.cpp's rules: general.alignment a u32 power of two; at most 4 dimensions per tensor, each
    and their product within int64. (Offsets are checked against the tensors' sizes by GGUFFile.)
    """
    size = path.stat().st_size
    where = printable(path)
    with open(path, "rb", buffering=1 << 20) as f:
        p = _HeaderParser(where, f, size)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise PimoeError(f"{where}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
        p.pos = 4
        version = p.u32("the header")
        if version not in (2, 3):
            raise PimoeError(f"{where}: GGUF version {version} is not supported (pimoe reads versions 2 and 3)")
        n_tensors, n_kv = p.u64("the header"), p.u64("the header")
        if n_tensors > size or n_kv > size:
            raise PimoeError(f"{where}: corrupt header ({n_tensors} tensors, {n_kv} keys in {size} bytes)")
        metadata: dict[str, object] = {}
        types: dict[str, int] = {}
        for i in range(n_kv):
            key = p.string(f"key {i}")
            what = f"metadata '{printable(key)}'"
            if key in metadata:
                raise PimoeError(f"{where}: corrupt: {what} appears twice (at byte {p.pos})")
            types[key] = p.u32(what)
            metadata[key] = p.value(types[key], what)
        infos = []
        for i in range(n_tensors):
            name = p.string(f"tensor info {i}")
            what = f"tensor info '{printable(name)}'"
            n_dims = p.u32(what)
            if n_dims > GGML_MAX_DIMS:
                raise PimoeError(f"{where}: corrupt: tensor '{printable(name)}' has {n_dims} dimensions, more "
                                 f"than GGUF's {GGML_MAX_DIMS} (at byte {p.pos})")
            ne = tuple(p.u64(what) for _ in range(n_dims))
            n = 1
            for d in ne:          # Python ints: the product cannot wrap
                n *= d
            if any(d > INT64_MAX for d in ne) or n > INT64_MAX:
                raise PimoeError(f"{where}: corrupt: tensor '{printable(name)}' has dimensions {list(ne)} whose "
                                 f"element count {n} does not fit in int64 (at byte {p.pos})")
            infos.append((name, ne, p.u32(what), p.u64(what)))
        alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if "general.alignment" in metadata and types["general.alignment"] != 4:     # 4 = UINT32
            raise PimoeError(f"{where}: corrupt: general.alignment must be a u32, it is stored as GGUF value "
                             f"type {types['general.alignment']} ({alignment!r})")
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise PimoeError(f"{where}: corrupt: general.alignment is {alignment!r}, not a power of two")
        data_start = -(-p.pos // alignment) * alignment
    return version, metadata, infos, data_start


class GGUFFile:
    """A GGUF file: `metadata` (key -> python value), `tensors` (name -> QTensor), `config`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        where = printable(self.path)
        if not self.path.exists():
            raise PimoeError(f"{where}: no such file")
        if not self.path.is_file():
            raise PimoeError(f"{where}: not a file")
        self.file_size = self.path.stat().st_size
        self.version, self.metadata, infos, self.data_start = read_header(self.path)
        # read-only map of the whole file; slices of it are the tensors (no bytes are read here)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self.file_size else None
        self.alignment = int(self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        self.tensors = {}
        for name, ne, type_id, offset in infos:
            if name in self.tensors:
                raise PimoeError(f"{where}: tensor '{printable(name)}' appears twice")
            self.tensors[name] = self._make_qtensor(name, ne, type_id, offset)
        self._check_layout(infos)

        embd = self.tensors.get("token_embd.weight")
        vocab = embd.shape[0] if embd is not None and len(embd.shape) == 2 else None
        self.config = ModelConfig.from_metadata(self.metadata, where, vocab_size=vocab)

    def _make_qtensor(self, name: str, ne: tuple[int, ...], type_id: int, offset: int):
        import gguf

        from pimoe.quant import QTensor, check_supported

        where = f"{printable(self.path)}: tensor '{printable(name)}'"
        check_supported(type_id, where)
        qtype = gguf.GGMLQuantizationType(type_id)
        shape = tuple(int(d) for d in reversed(ne))          # GGUF ne is the reversed numpy shape
        if not shape or min(shape) <= 0:
            raise PimoeError(f"{where}: invalid shape {shape}")
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise PimoeError(f"{where}: row length {shape[-1]} is not a multiple of the "
                             f"{qtype.name} block size {block}")
        if offset % self.alignment:
            raise PimoeError(f"{where}: data offset {offset} is not a multiple of the file's alignment "
                             f"{self.alignment} (corrupt tensor info)")
        row_bytes = shape[-1] // block * type_size
        n_rows = 1
        for d in shape[:-1]:                                 # Python ints: cannot wrap
            n_rows *= d
        start = self.data_start + offset
        end = start + n_rows * row_bytes
        if end > self.file_size:
            raise PimoeError(f"{printable(self.path)}: truncated: tensor '{printable(name)}' (offset {offset}) "
                             f"needs bytes up to {end} but the file has only {self.file_size} "
                             f"(incomplete download or copy?)")
        data = self._map[start:end].reshape(*shape[:-1], row_bytes)   # uint8 [*leading, row_bytes], read-only
        return QTensor(name=name, qtype=qtype, shape=shape, data=data)

    def _check_layout(self, infos) -> None:
        """gguf.cpp's rule: the tensors' data lie back to back in the order of their infos, each padded to
        the alignment, so every offset is determined (no gaps, no overlaps, nothing outside the file)."""
        expected = 0
        for name, _ne, _type, offset in infos:
            if offset != expected:
                t = self.tensors[name]
                raise PimoeError(f"{printable(self.path)}: corrupt: tensor '{printable(name)}' has data offset "
                                 f"{offset}, expected {expected} (GGUF tensors lie back to back in order, each "
                                 f"padded to the {self.alignment}-byte alignment; it would "
                                 f"{'overlap the previous tensor' if offset < expected else 'leave a gap'}; "
                                 f"{t.nbytes} bytes)")
            expected += -(-self.tensors[name].nbytes // self.alignment) * self.alignment

    def tensor(self, name: str, shape: tuple[int, ...] | None = None):
        """The QTensor called `name`; PimoeError if it is missing or has another shape."""
        t = self.tensors.get(name)
        if t is None:
            raise PimoeError(f"{self.path}: tensor '{name}' is missing (arch {self.config.arch})")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise PimoeError(f"{self.path}: tensor '{name}' has shape {tuple(t.shape)} (GGUF ne "
                             f"{tuple(reversed(t.shape))}) but the model config needs {tuple(shape)}")
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
            n = int(np.prod(t.shape, dtype=np.int64))
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
