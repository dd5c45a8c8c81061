"""Tokenizers rebuilt from GGUF metadata (the built-in vocabularies of synthetic models: pimoe.synth_vocab).

Two families, as llama.cpp names them in `tokenizer.ggml.model`:

* "gpt2": byte-level BPE (Qwen, OLMoE). Every byte maps to one printable unicode character (GPT-2's
  table), a regex chosen by `tokenizer.ggml.pre` splits the text into words, and ranked merges
  (`tokenizer.ggml.merges`, "left right" strings) join characters inside each word.
* "llama": SentencePiece-style BPE (Mixtral). Spaces become "▁" (U+2581), a space is put in front of
  the text (`tokenizer.ggml.add_space_prefix`), pieces merge greedily by `tokenizer.ggml.scores`
  (highest first) as long as the merged text is a vocabulary entry, and characters with no piece fall
  back to the byte tokens <0x00>..<0xFF>.

Special tokens (token types CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text before either,
longest first, so "<|im_start|>" in a prompt is one token. These rules follow what llama.cpp's
vocabulary loader does, so that the ids equal llama.cpp's (tests/test_tokenizer*.py checks it).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from pimoe.errors import PimoeError, printable

# GGUF token types (gguf.TokenType; llama.cpp's LLAMA_TOKEN_TYPE_*)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

SPM_SPACE = "\u2581"  # "▁": SentencePiece's visible space

# Pre-tokenizer regexes (HF tokenizer.json spelling), by tokenizer.ggml.pre.
# qwen2: words with one optional leading non-letter, single digits, punctuation runs, newline runs.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# gpt2 (also olmo, mpt, ...): GPT-2's original split, digits grouped, one optional leading space.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama3 family: like qwen2 but digits in groups of up to three.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's fallback split (pre "default", or no pre key): four regexes applied one after another,
# each cutting every piece further (punctuation runs, GPT-2 words, digit runs, digit triples).
DEFAULT_PATTERNS = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")
# tokenizer.ggml.pre -> the regexes that split text into words, applied in order (as llama.cpp does)
PRE_PATTERNS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_PATTERNS,
    **{name: (QWEN2_PATTERN,) for name in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez")},
    **{name: (GPT2_PATTERN,) for name in ("gpt-2", "olmo", "mpt", "phi-2")},
    **{name: (LLAMA3_PATTERN,) for name in ("llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe")},
    # starcoder family: every digit on its own, then the GPT-2 split
    **{name: (r"\p{N}", GPT2_PATTERN) for name in ("starcoder", "refact", "smollm", "codeshell")},
}


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes
    (controls, space, soft hyphen, ...) are given the characters U+0100, U+0101, ... in byte order.
    So the space byte 0x20 is 'Ġ' (U+0120) and newline 0x0A is 'Ċ' (U+010A).
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {}
    next_extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + next_extra)
            next_extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


# ----------------------------------------------------------------------------------------------
# Tokenizer from GGUF metadata
# ----------------------------------------------------------------------------------------------

# Texts llama.cpp treats as end-of-generation in any vocabulary (besides eos/eot ids from the keys).
_EOG_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>",
              "<|end_of_text|>", "</s>", "<EOT>")
# pre-tokenizers whose llama.cpp setting looks whole words up before merging (HF "ignore_merges")
_IGNORE_MERGES_PRES = {"llama3", "llama-bpe", "llama-v3"}
_SPECIAL_TYPES = (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)
_SPM_BYTE_TEXT = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _as_list(md: dict, key: str, where: str, required: bool = True) -> list | None:
    value = md.get(key)
    if value is None:
        if required:
            raise PimoeError(f"{where}: tokenizer key '{key}' is missing")
        return None
    try:
        return list(value)
    except TypeError:
        raise PimoeError(f"{where}: tokenizer key '{key}' should be an array, "
                         f"got {type(value).__name__}") from None


def _as_id(md: dict, key: str, n_vocab: int, where: str) -> int | None:
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):   # an array, a float (NaN, Inf, 1.5), a string
        raise PimoeError(f"{where}: {key} is {value!r}, expected an integer token id")
    if not 0 <= value < n_vocab:
        raise PimoeError(f"{where}: {key} = {value} is outside the vocabulary (0..{n_vocab - 1})")
    return value


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary, giving the same ids as llama.cpp.

    kind: "bpe" (tokenizer.ggml.model "gpt2") or "spm" (tokenizer.ggml.model "llama").
    """

    def __init__(self, *, kind: str, tokens: list[str], token_types: list[int], where: str,
                 merges: list[str] | None = None, scores: list[float] | None = None, pre: str = "default",
                 bos_id: int | None = None, eos_id: int | None = None, eot_id: int | None = None,
                 unk_id: int | None = None, pad_id: int | None = None, add_bos: bool = False,
                 add_eos: bool = False, add_space_prefix: bool = False, chat_template: str | None = None):
        self.kind = kind
        self.where = where
        self.tokens = tokens                       # id -> token text as stored in the file
        self.token_types = token_types             # id -> TOKEN_* type
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.pre = pre
        self.bos_id, self.eos_id, self.eot_id, self.unk_id, self.pad_id = bos_id, eos_id, eot_id, unk_id, pad_id
        self.add_bos, self.add_eos, self.add_space_prefix = add_bos, add_eos, add_space_prefix
        self.chat_template = chat_template
        eog = {i for i in (eos_id, eot_id) if i is not None}
        eog |= {self.token_to_id[t] for t in _EOG_TEXTS if t in self.token_to_id}
        self.eog_ids: frozenset[int] = frozenset(eog)
        # special tokens cut out of the text before tokenizing, longest first (as llama.cpp does)
        self._special_ids = sorted((i for i, tt in enumerate(token_types) if tt in _SPECIAL_TYPES),
                                   key=lambda i: (-len(tokens[i].encode("utf-8")), i))
        if kind == "bpe":
            self._hf = self._build_hf_bpe(merges or [])
        else:
            self._scores = [float(s) for s in scores] if scores is not None else [0.0] * len(tokens)
            # llama.cpp's token_to_byte reads a BYTE token's text as <0xNN>; refuse anything else at load,
            # not at the first generated token
            for i, tt in enumerate(token_types):
                if tt == TOKEN_BYTE and not _SPM_BYTE_TEXT.fullmatch(tokens[i]):
                    raise PimoeError(f"{where}: token {i} has type BYTE but its text {printable(repr(tokens[i]))} "
                                     f"is not of the form <0xNN>")
            self._byte_ids = self._spm_byte_ids()
        self._piece_cache: dict[int, bytes] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, md: dict[str, object], where: str) -> "Tokenizer":
        """Build from the tokenizer.* keys of a GGUF file (md: key -> python value; where: file name)."""
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise PimoeError(f"{where}: the file has no tokenizer (key 'tokenizer.ggml.model' is missing)")
        model = str(model)
        tokens = [str(t) for t in _as_list(md, "tokenizer.ggml.tokens", where)]
        n = len(tokens)
        if n == 0:
            raise PimoeError(f"{where}: tokenizer.ggml.tokens is empty")
        types = _as_list(md, "tokenizer.ggml.token_type", where, required=False)
        if types is None:
            token_types = [TOKEN_NORMAL] * n
        else:
            if len(types) < n:
                raise PimoeError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
            token_types = types[:n]
            bad = next((t for t in token_types if isinstance(t, bool) or not isinstance(t, int)), None)
            if bad is not None:
                raise PimoeError(f"{where}: tokenizer.ggml.token_type holds {bad!r}, expected integers")
        ids = {k: _as_id(md, f"tokenizer.ggml.{k}_token_id", n, where)
               for k in ("bos", "eos", "eot", "unknown", "padding")}

        def flag(key: str, default: bool) -> bool:
            value = md.get(f"tokenizer.ggml.{key}")
            return default if value is None else bool(value)

        template = md.get("tokenizer.chat_template")
        common = dict(tokens=tokens, token_types=token_types, where=where, eot_id=ids["eot"],
                      pad_id=ids["padding"], chat_template=None if template is None else str(template))
        if model == "gpt2":
            pre = str(md.get("tokenizer.ggml.pre") or "default")
            if pre not in PRE_PATTERNS:
                raise PimoeError(f"{where}: pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported by pimoe "
                                 f"(supported: {', '.join(sorted(PRE_PATTERNS))})")
            merges = [str(m) for m in _as_list(md, "tokenizer.ggml.merges", where)]
            # llama.cpp's BPE defaults: bos = eos = id 11 unless the keys say otherwise; llama3 adds BOS
            bos = ids["bos"] if ids["bos"] is not None else (11 if n > 11 else None)
            eos = ids["eos"] if ids["eos"] is not None else (11 if n > 11 else None)
            return cls(kind="bpe", merges=merges, pre=pre, bos_id=bos, eos_id=eos, unk_id=ids["unknown"],
                       add_bos=flag("add_bos_token", pre in _IGNORE_MERGES_PRES),
                       add_eos=flag("add_eos_token", False), add_space_prefix=False, **common)
        if model == "llama":
            scores = _as_list(md, "tokenizer.ggml.scores", where, required=False)
            if scores is not None and len(scores) < n:
                raise PimoeError(f"{where}: tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
            if scores is not None and any(isinstance(v, bool) or not isinstance(v, (int, float))
                                          for v in scores[:n]):
                raise PimoeError(f"{where}: tokenizer.ggml.scores holds a non-number")
            # llama.cpp's SentencePiece defaults: unk 0, bos 1, eos 2, BOS added, space prefix on
            return cls(kind="spm", scores=scores[:n] if scores is not None else None, pre="default",
                       bos_id=ids["bos"] if ids["bos"] is not None else 1,
                       eos_id=ids["eos"] if ids["eos"] is not None else 2,
                       unk_id=ids["unknown"] if ids["unknown"] is not None else 0,
                       add_bos=flag("add_bos_token", True), add_eos=flag("add_eos_token", False),
                       add_space_prefix=flag("add_space_prefix", True), **common)
        raise PimoeError(f"{where}: tokenizer model '{model}' (tokenizer.ggml.model) is not supported by pimoe "
                         f"(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")

    def _build_hf_bpe(self, merges: list[str]):
        from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        pairs = []
        for rank, m in enumerate(merges):
            cut = m.find(" ", 1)   # the first space after the first character separates the two parts
            if cut < 0:
                raise PimoeError(f"{self.where}: tokenizer.ggml.merges[{rank}] = {m!r} is not 'left right'")
            left, right = m[:cut], m[cut + 1:]
            if left not in self.token_to_id or right not in self.token_to_id or left + right not in self.token_to_id:
                # llama.cpp keeps such a rank but it can never produce a token; HF would refuse the model
                continue
            pairs.append((left, right))
        b2u = byte_to_unicode()
        missing = [b for b in range(256) if b2u[b] not in self.token_to_id]
        if missing:
            raise PimoeError(f"{self.where}: byte-level BPE vocabulary lacks the token for byte 0x{missing[0]:02X} "
                             f"({b2u[missing[0]]!r}); {len(missing)} of 256 byte tokens are missing")
        model = models.BPE(vocab=dict(self.token_to_id), merges=pairs,
                           ignore_merges=self.pre in _IGNORE_MERGES_PRES)
        hf = HFTokenizer(model)
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            *(pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_PATTERNS[self.pre]),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        return hf

    def _spm_byte_ids(self) -> list[int | None]:
        ids: list[int | None] = []
        for b in range(256):
            i = self.token_to_id.get(f"<0x{b:02X}>")
            if i is None:
                i = self.token_to_id.get(chr(b)) if b < 128 else None
            ids.append(i)
        return ids

    # -- encoding -------------------------------------------------------------------------------

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special-token texts out of `text`: a list of raw strings and token ids, in order."""
        fragments: list[str | int] = [text] if text else []
        for sid in self._special_ids:
            if not parse_special and self.token_types[sid] != TOKEN_USER_DEFINED:
                continue   # control/unknown tokens are text unless parse_special (user-defined always count)
            piece = self.tokens[sid]
            if not piece:
                continue
            out: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or piece not in frag:
                    out.append(frag)
                    continue
                parts = frag.split(piece)
                for k, part in enumerate(parts):
                    if k:
                        out.append(sid)
                    if part:
                        out.append(part)
            fragments = out
        return fragments

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of `text`.

        add_bos None: add BOS (and EOS) as the file says (tokenizer.ggml.add_bos_token / add_eos_token, like
        llama.cpp's add_special=True); True/False: force BOS on/off (EOS then never added).
        parse_special: special-token texts in `text` (e.g. "<|im_start|>") become their single ids.
        """
        if not isinstance(text, str):
            raise PimoeError(f"encode() needs a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:   # lone surrogates, e.g. from non-UTF-8 bytes in a command line
            raise PimoeError(f"the text is not valid Unicode: {text[exc.start:exc.end]!r} at character "
                             f"{exc.start} (was it read from bytes that are not UTF-8?)") from None
        want_bos = self.add_bos if add_bos is None else bool(add_bos)
        want_eos = self.add_eos if add_bos is None else False
        out: list[int] = []
        if want_bos:
            if self.bos_id is None:
                raise PimoeError(f"{self.where}: a BOS token was requested but the vocabulary has none")
            out.append(self.bos_id)
        prev_special = True   # SentencePiece: a space goes in front of text that starts the prompt or follows a special token
        for frag in self._split_special(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.kind == "bpe":
                out.extend(self._hf.encode(frag, add_special_tokens=False).ids)
            else:
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(self._spm_encode(frag.replace(" ", SPM_SPACE)))
            prev_special = False
        if want_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _spm_encode(self, text: str) -> list[int]:
        """SentencePiece BPE: merge the adjacent pair whose joined text is the best-scoring vocabulary entry,
        leftmost first on ties, until no pair joins to an entry; characters with no entry become bytes."""
        import heapq

        n = len(text)
        if n == 0:
            return []
        start = list(range(n))          # symbol i covers text[start[i]:start[i]+length[i]]
        length = [1] * n
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []   # (-score, left, right, joined length)

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            size = length[left] + length[right]
            tid = self.token_to_id.get(text[start[left]:start[left] + size])
            if tid is not None:
                heapq.heappush(heap, (-self._scores[tid], left, right, size))

        for i in range(1, n):
            push(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue   # stale: one side has merged since this pair was queued
            length[left] = size
            length[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        out: list[int] = []
        i = 0
        while i != -1:
            piece = text[start[i]:start[i] + length[i]]
            tid = self.token_to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                for b in piece.encode("utf-8"):
                    bid = self._byte_ids[b]
                    if bid is None:
                        if self.unk_id is None:
                            raise PimoeError(f"{self.where}: no token for byte 0x{b:02X} and no <unk> token")
                        bid = self.unk_id
                    out.append(bid)
            i = nxt[i]
        return out

    # -- decoding -------------------------------------------------------------------------------

    def token_bytes(self, tid: int, special: bool = True) -> bytes:
        """The bytes one token stands for (llama.cpp's token_to_piece). Control/unknown tokens give their
        text when `special`, else nothing; unused (padding) tokens give nothing."""
        if not 0 <= tid < len(self.tokens):
            raise PimoeError(f"token id {tid} is outside the vocabulary (0..{len(self.tokens) - 1})")
        ttype = self.token_types[tid]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return self.tokens[tid].encode("utf-8") if special else b""
        cached = self._piece_cache.get(tid)
        if cached is not None:
            return cached
        text = self.tokens[tid]
        if ttype == TOKEN_USER_DEFINED:
            piece = text.encode("utf-8")
        elif ttype == TOKEN_BYTE:
            piece = bytes([int(text[3:5], 16)]) if self.kind == "spm" else self._bpe_bytes(text)
        elif ttype == TOKEN_UNUSED:
            piece = b""
        elif self.kind == "spm":
            piece = text.replace(SPM_SPACE, " ").encode("utf-8")
        else:
            piece = self._bpe_bytes(text)
        self._piece_cache[tid] = piece
        return piece

    def _bpe_bytes(self, text: str) -> bytes:
        u2b = unicode_to_byte()
        try:
            return bytes(u2b[c] for c in text)
        except KeyError:   # not a byte-level string (odd vocabularies): take it as UTF-8 text
            return text.encode("utf-8")

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of a token sequence; decode(encode(s)) == s.

        For SentencePiece vocabularies the space that encode() put in front of the text (and after each
        special token) is removed again. skip_special drops control tokens (bos, eos, <|im_end|>, ...).
        """
        chunks: list[bytes] = []
        strip_next = self.add_space_prefix
        for tid in ids:
            tid = int(tid)
            piece = self.token_bytes(tid, special=not skip_special)
            is_special = self.token_types[tid] in _SPECIAL_TYPES
            if strip_next and not is_special and piece.startswith(b" "):
                piece = piece[1:]
            strip_next = self.add_space_prefix and is_special
            chunks.append(piece)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def stream_decoder(self, show_unused: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, show_unused)

    # -- chat -----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render `messages` ([{"role": ..., "content": ...}]) with the file's tokenizer.chat_template."""
        if not self.chat_template:
            raise PimoeError(f"{self.where}: the file has no chat template (tokenizer.chat_template); "
                             f"run without --chat or use a model that has one")
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise PimoeError("chat templates need the jinja2 package: pip install jinja2") from None

        def raise_exception(message):
            raise TemplateError(message)

        # the environment HF-style chat templates expect: trimmed blocks, {% break %}/{% continue %},
        # raise_exception(), tojson that keeps non-ASCII text, strftime_now() for date-stamping templates
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        try:
            template = env.from_string(self.chat_template)
            return template.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.tokens[self.bos_id] if self.bos_id is not None else "",
                eos_token=self.tokens[self.eos_id] if self.eos_id is not None else "")
        except TemplateError as exc:
            raise PimoeError(f"{self.where}: the chat template failed: {exc}") from None

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered chat; no second BOS when the template already starts with one."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        has_bos = self.bos_id is not None and text.startswith(self.tokens[self.bos_id])
        return self.encode(text, add_bos=False if has_bos else None, parse_special=True)


class StreamDecoder:
    """Turns generated ids into text as they arrive: holds back the bytes of a UTF-8 character that is
    split across tokens, and skips control tokens (so "<|im_end|>" is not printed).

    show_unused: print unused (padding) tokens as their names, e.g. "[PAD5000]", instead of nothing.
    A trained model never picks them; a random-weight one mostly does, and should not look silent.
    """

    def __init__(self, tokenizer: Tokenizer, show_unused: bool = False):
        import codecs

        self.tokenizer = tokenizer
        self.show_unused = show_unused
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, tid: int) -> str:
        tid = int(tid)
        if self.show_unused and 0 <= tid < self.tokenizer.vocab_size \
                and self.tokenizer.token_types[tid] == TOKEN_UNUSED:
            return self._utf8.decode(self.tokenizer.tokens[tid].encode("utf-8"))
        return self._utf8.decode(self.tokenizer.token_bytes(tid, special=False))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
