"""GGUF files taken apart into fields and put back together, so mutations can aim at one field.

`GGUFParts.read(path)` splits a well-formed file into its header, key/values (each with its GGUF value
type and its encoded bytes), tensor infos (name, ne, type, offset) and the data section; `.to_bytes()`
writes them back (byte-identical for an unmodified file). The mutations in MUTATIONS each change one
thing a damaged or hostile file could hold; `mutate(parts, kind, rng)` applies one and says what it did.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64: "<d"}


def encode_value(vtype: int, value, sub: int | None = None) -> bytes:
    """The bytes GGUF stores for a value of type `vtype` (arrays: element type `sub`)."""
    if vtype == STRING:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARRAY:
        items = list(value)
        return struct.pack("<IQ", sub, len(items)) + b"".join(
            encode_value(sub, v, None if sub != ARRAY else U32) for v in items)
    return struct.pack(_FMT[vtype], value)


@dataclass
class KV:
    key: bytes
    vtype: int
    raw: bytes          # the encoded value


@dataclass
class TensorInfo:
    name: bytes
    ne: list[int]
    ttype: int
    offset: int


@dataclass
class GGUFParts:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data: bytes
    alignment: int = 32
    n_tensors: int | None = None      # override the counts written in the header
    n_kv: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path) -> "GGUFParts":
        b = Path(path).read_bytes()
        pos = 4
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", b, pos)
        pos += 20

        def string(p):
            n = struct.unpack_from("<Q", b, p)[0]
            return b[p + 8:p + 8 + n], p + 8 + n

        def skip_value(vt, p):
            if vt in _FMT:
                return p + struct.calcsize(_FMT[vt])
            if vt == STRING:
                return string(p)[1]
            sub, n = struct.unpack_from("<IQ", b, p)
            p += 12
            if sub in _FMT:
                return p + n * struct.calcsize(_FMT[sub])
            for _ in range(n):
                p = skip_value(sub, p)
            return p

        kvs = []
        alignment = 32
        for _ in range(n_kv):
            key, pos = string(pos)
            vt = struct.unpack_from("<I", b, pos)[0]
            end = skip_value(vt, pos + 4)
            kvs.append(KV(key, vt, b[pos + 4:end]))
            if key == b"general.alignment" and vt == U32:
                alignment = struct.unpack_from("<I", b, pos + 4)[0]
            pos = end
        tensors = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            nd = struct.unpack_from("<I", b, pos)[0]
            ne = list(struct.unpack_from(f"<{nd}Q", b, pos + 4))
            pos += 4 + 8 * nd
            ttype, offset = struct.unpack_from("<IQ", b, pos)
            pos += 12
            tensors.append(TensorInfo(name, ne, ttype, offset))
        start = -(-pos // alignment) * alignment
        return cls(version, kvs, tensors, b[start:], alignment)

    def to_bytes(self) -> bytes:
        out = bytearray(b"GGUF")
        out += struct.pack("<IQQ", self.version,
                           len(self.tensors) if self.n_tensors is None else self.n_tensors,
                           len(self.kvs) if self.n_kv is None else self.n_kv)
        for kv in self.kvs:
            out += encode_value(STRING, kv.key) + struct.pack("<I", kv.vtype) + kv.raw
        for t in self.tensors:
            out += encode_value(STRING, t.name) + struct.pack("<I", len(t.ne))
            out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.ne)
            out += struct.pack("<IQ", t.ttype, t.offset & (2**64 - 1))
        out += bytes(-len(out) % self.alignment)
        out += self.data
        return bytes(out)

    def write(self, path) -> Path:
        Path(path).write_bytes(self.to_bytes())
        return Path(path)

    # -- helpers for mutations -------------------------------------------------------------------

    def kv(self, key: str) -> KV | None:
        k = key.encode()
        return next((kv for kv in self.kvs if kv.key == k), None)

    def set_kv(self, key: str, vtype: int, value, sub: int | None = None) -> None:
        raw = encode_value(vtype, value, sub)
        kv = self.kv(key)
        if kv is None:
            self.kvs.append(KV(key.encode(), vtype, raw))
        else:
            kv.vtype, kv.raw = vtype, raw

    def arch(self) -> str:
        kv = self.kv("general.architecture")
        return kv.raw[8:].decode("utf-8", "replace") if kv is not None else "llama"

    def tensor(self, name: str) -> TensorInfo | None:
        n = name.encode()
        return next((t for t in self.tensors if t.name == n), None)

    def tensor_bytes(self, t: TensorInfo) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ttype)]
        n = 1
        for d in t.ne:
            n *= d
        return n // block * size


# ------------------------------------------------------------------------------------------------
# mutations: name -> function(parts, rng) -> description (parts is changed in place)

def _int_key(parts, rng):
    arch = parts.arch()
    keys = [k for k in ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
                        "expert_count", "expert_used_count", "context_length", "feed_forward_length",
                        "expert_feed_forward_length", "attention.key_length") if parts.kv(f"{arch}.{k}")]
    return f"{arch}.{keys[int(rng.integers(len(keys)))]}"


def m_dim_overflow(parts, rng):
    t = parts.tensors[int(rng.integers(len(parts.tensors)))]
    big = [2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**32][int(rng.integers(5))]
    if len(t.ne) < 2:
        t.ne.append(big)
    else:
        t.ne[1 + int(rng.integers(len(t.ne) - 1))] = big
    return f"tensor {t.name.decode()} ne -> {t.ne}"


def m_no_tensors(parts, rng):
    parts.tensors, parts.data = [], b""
    return "n_tensors = 0"


def m_norm_non_finite(parts, rng):
    import gguf

    norms = [t for t in parts.tensors if b"norm" in t.name and t.ttype == gguf.GGMLQuantizationType.F32]
    if not norms:
        return m_byte_flip(parts, rng)
    t = norms[int(rng.integers(len(norms)))]
    value = [np.inf, -np.inf, np.nan, 3e38][int(rng.integers(4))]
    data = bytearray(parts.data)
    i = int(rng.integers(max(1, parts.tensor_bytes(t) // 4)))
    data[t.offset + 4 * i:t.offset + 4 * i + 4] = np.float32(value).tobytes()
    parts.data = bytes(data)
    return f"tensor {t.name.decode()}[{i}] = {value}"


def m_offset_shift(parts, rng):
    t = parts.tensors[int(rng.integers(len(parts.tensors)))]
    d = int(rng.integers(1, 8)) * (1 if rng.random() < 0.5 else -1)
    t.offset = max(0, t.offset + d)
    return f"tensor {t.name.decode()} offset -> {t.offset}"


def m_offset_overlap(parts, rng):
    if len(parts.tensors) < 2:
        return m_offset_shift(parts, rng)
    i, j = rng.choice(len(parts.tensors), 2, replace=False)
    parts.tensors[int(i)].offset = parts.tensors[int(j)].offset
    return f"tensor {parts.tensors[int(i)].name.decode()} offset = that of {parts.tensors[int(j)].name.decode()}"


def m_alignment(parts, rng):
    choice = int(rng.integers(6))
    if choice == 0:
        parts.set_kv("general.alignment", BOOL, True)
        return "general.alignment = bool True"
    if choice == 1:
        parts.set_kv("general.alignment", F32, 32.0)
        return "general.alignment = f32 32.0"
    value = [1, 3, 0, 48, 2**31][choice - 2]
    parts.set_kv("general.alignment", U32, value)
    return f"general.alignment = u32 {value}"


def m_float_hparam(parts, rng):
    arch = parts.arch()
    key = [f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.rope.freq_base",
           f"{arch}.rope.scaling.factor"][int(rng.integers(3))]
    value = [-1e-6, 0.0, np.nan, np.inf, -np.inf, -4.0][int(rng.integers(6))]
    parts.set_kv(key, F32, value)
    return f"{key} = f32 {value}"


def m_int_as_float(parts, rng):
    key = _int_key(parts, rng)
    value = [np.inf, -np.inf, np.nan, 2.5, 1e30][int(rng.integers(5))]
    parts.set_kv(key, F32, value)
    return f"{key} = f32 {value}"


def m_int_as_array(parts, rng):
    key = _int_key(parts, rng)
    kind = int(rng.integers(4))
    if kind == 0:
        parts.set_kv(key, ARRAY, [[1, 2], [3]], sub=ARRAY)
        return f"{key} = nested array"
    if kind == 1:
        parts.set_kv(key, ARRAY, [], sub=U32)
        return f"{key} = empty array"
    if kind == 2:
        parts.set_kv(key, ARRAY, [b"x", b"y"], sub=STRING)
        return f"{key} = array of strings"
    parts.set_kv(key, STRING, "12")
    return f"{key} = string '12'"


def m_int_range(parts, rng):
    key = _int_key(parts, rng)
    value = [0, -1, 2**31 - 1, 2**40, 99][int(rng.integers(5))]
    parts.set_kv(key, I64, value)
    return f"{key} = i64 {value}"


def m_token_id(parts, rng):
    key = f"tokenizer.ggml.{['bos', 'eos', 'padding', 'unknown', 'eot'][int(rng.integers(5))]}_token_id"
    kind = int(rng.integers(5))
    if kind == 0:
        parts.set_kv(key, ARRAY, [1, 2], sub=U32)
        return f"{key} = array"
    if kind in (1, 2):
        value = [np.nan, np.inf][kind - 1]
        parts.set_kv(key, F32, value)
        return f"{key} = f32 {value}"
    if kind == 3:
        parts.set_kv(key, I32, -5)
        return f"{key} = -5"
    parts.set_kv(key, U32, 2**32 - 1)
    return f"{key} = 2^32-1"


def m_byte_token_text(parts, rng):
    """A SentencePiece vocabulary's BYTE token (type 6) whose text is not <0xNN>."""
    kv_model, kv_tok, kv_types = (parts.kv(f"tokenizer.ggml.{k}") for k in ("model", "tokens", "token_type"))
    if kv_tok is None or kv_types is None:
        return m_key_control_chars(parts, rng)
    n = struct.unpack_from("<Q", kv_types.raw, 4)[0]
    types = list(np.frombuffer(kv_types.raw[12:12 + 4 * n], "<i4"))
    idx = int(rng.integers(n))
    types[idx] = 6
    kv_types.raw = encode_value(ARRAY, types, sub=I32)
    parts.set_kv("tokenizer.ggml.model", STRING, "llama")
    if parts.kv("tokenizer.ggml.scores") is None:
        parts.set_kv("tokenizer.ggml.scores", ARRAY, [0.0] * n, sub=F32)
    return f"token {idx} type BYTE with its own text; tokenizer.ggml.model = llama"


def m_key_control_chars(parts, rng):
    kv = parts.kvs[int(rng.integers(len(parts.kvs)))]
    ch = [b"\n", b"\x1b[31m", b"\r", b"\x00", b"\xe2\x80\xae"][int(rng.integers(5))]
    kv.key = kv.key + ch + b"x"
    return f"key {kv.key!r}"


def m_tensor_type(parts, rng):
    t = parts.tensors[int(rng.integers(len(parts.tensors)))]
    t.ttype = [4, 5, 16, 20, 39, 255, 2**31][int(rng.integers(7))]
    return f"tensor {t.name.decode()} type {t.ttype}"


def m_n_dims(parts, rng):
    t = parts.tensors[int(rng.integers(len(parts.tensors)))]
    t.ne = t.ne + [1] * int(rng.integers(1, 6)) if rng.random() < 0.7 else []
    return f"tensor {t.name.decode()} ne -> {t.ne}"


def m_counts(parts, rng):
    if rng.random() < 0.5:
        parts.n_tensors = [len(parts.tensors) + 1, 2**40, 2**64 - 1][int(rng.integers(3))]
        return f"header n_tensors = {parts.n_tensors}"
    parts.n_kv = [len(parts.kvs) + 1, 2**40, 2**64 - 1][int(rng.integers(3))]
    return f"header n_kv = {parts.n_kv}"


def m_duplicate(parts, rng):
    if rng.random() < 0.5 and parts.tensors:
        parts.tensors.append(copy.deepcopy(parts.tensors[int(rng.integers(len(parts.tensors)))]))
        return f"duplicate tensor {parts.tensors[-1].name.decode()}"
    parts.kvs.append(copy.deepcopy(parts.kvs[int(rng.integers(len(parts.kvs)))]))
    return f"duplicate key {parts.kvs[-1].key!r}"


def m_value_type(parts, rng):
    kv = parts.kvs[int(rng.integers(len(parts.kvs)))]
    kv.vtype = int(rng.integers(0, 16))
    return f"key {kv.key!r} value type -> {kv.vtype}"


def m_truncate(parts, rng):
    b = parts.to_bytes()
    cut = int(rng.integers(0, len(b)))
    parts.extra["raw"] = b[:cut]
    return f"truncated at byte {cut} of {len(b)}"


def m_byte_flip(parts, rng):
    b = bytearray(parts.to_bytes())
    header_end = len(b) - len(parts.data)
    n = int(rng.integers(1, 9))
    where = []
    for _ in range(n):
        i = int(rng.integers(0, header_end if rng.random() < 0.8 else len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        where.append(i)
    parts.extra["raw"] = bytes(b)
    return f"bit flips at bytes {where}"


def m_data_garbage(parts, rng):
    """Random bytes over one tensor's data (quantized scales become NaN/Inf/huge)."""
    t = parts.tensors[int(rng.integers(len(parts.tensors)))]
    n = parts.tensor_bytes(t)
    data = bytearray(parts.data)
    data[t.offset:t.offset + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    parts.data = bytes(data)
    return f"tensor {t.name.decode()} data random"


MUTATIONS = {
    "dim_overflow": m_dim_overflow, "no_tensors": m_no_tensors, "norm_non_finite": m_norm_non_finite,
    "offset_shift": m_offset_shift, "offset_overlap": m_offset_overlap, "alignment": m_alignment,
    "float_hparam": m_float_hparam, "int_as_float": m_int_as_float, "int_as_array": m_int_as_array,
    "int_range": m_int_range, "token_id": m_token_id, "byte_token_text": m_byte_token_text,
    "key_control_chars": m_key_control_chars, "tensor_type": m_tensor_type, "n_dims": m_n_dims,
    "counts": m_counts, "duplicate": m_duplicate, "value_type": m_value_type, "truncate": m_truncate,
    "byte_flip": m_byte_flip, "data_garbage": m_data_garbage,
}


def mutate(parts: GGUFParts, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Apply mutation `kind` to a copy of `parts` -> (file bytes, what was done)."""
    p = copy.deepcopy(parts)
    what = MUTATIONS[kind](p, rng)
    return (p.extra["raw"] if "raw" in p.extra else p.to_bytes()), what
