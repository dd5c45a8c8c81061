"""The small built-in vocabularies of pimoe's synthetic models, as GGUF tokenizer metadata.

    md = builtin_tokenizer_metadata("gpt2", vocab_size=2000, pre="qwen2")   # or "llama" (SentencePiece)
    add_tokenizer_metadata(gguf_writer, md)

Two vocabularies trained once on pimoe/data/corpus.txt with the `tokenizers` package and committed as
package data (pimoe/data/bpe_vocab.json, spm_vocab.json), so synthetic models are reproducible without the
trainer; `python -m pimoe.synth_vocab --train` rebuilds them. pimoe.tokenizer reads what this writes,
as it reads any GGUF file's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from pimoe.errors import PimoeError
from pimoe.tokenizer import (PRE_PATTERNS, QWEN2_PATTERN, SPM_SPACE, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL,
                             TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_USER_DEFINED, byte_to_unicode)

DATA_DIR = Path(__file__).parent / "data"

BPE_VOCAB_FILE = DATA_DIR / "bpe_vocab.json"
SPM_VOCAB_FILE = DATA_DIR / "spm_vocab.json"
CORPUS_FILE = DATA_DIR / "corpus.txt"

# Qwen-like special tokens, appended after the learned tokens (as in Qwen's own vocabulary).
# CONTROL tokens are split out only when parse_special; USER_DEFINED ones always (like Qwen3's <think>).
GPT2_SPECIAL_TOKENS: list[tuple[str, int]] = [
    ("<|endoftext|>", TOKEN_CONTROL),
    ("<|im_start|>", TOKEN_CONTROL),
    ("<|im_end|>", TOKEN_CONTROL),
    ("<think>", TOKEN_USER_DEFINED),
    ("</think>", TOKEN_USER_DEFINED),
]

# ChatML, the format Qwen's chat models use. Written for pimoe; llama.cpp recognises it by <|im_start|>.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Mistral-instruct style ([INST] ... [/INST]) for the SentencePiece ("llama") vocabulary, as Mixtral uses.
INST_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '[INST] ' + message['content'] + ' [/INST]' -}}"
    "{%- elif message['role'] == 'system' -%}{{- '[INST] ' + message['content'] + ' [/INST]' -}}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def _train_builtin_vocabularies(corpus_path: Path = CORPUS_FILE, out_dir: Path = DATA_DIR) -> None:
    """Train the two small vocabularies on pimoe/data/corpus.txt and write them as JSON.

    Run once by hand (`python -m pimoe.synth_vocab --train`); the results are committed package data,
    so synthetic models are reproducible without the trainer. Needs the `tokenizers` package.
    """
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    text = corpus_path.read_text(encoding="utf-8")

    # byte-level BPE, words split with the qwen2 regex (so the merges suit the "qwen2" pre-tokenizer)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=4000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([text], trainer)
    merges = [tuple(m) if isinstance(m, (list, tuple)) else tuple(m.split(" ", 1))
              for m in json.loads(hf.to_str())["model"]["merges"]]
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)]          # byte tokens in byte order
    seen = set(tokens)
    kept_merges = []
    for left, right in merges:
        merged = left + right
        if merged in seen:                         # a second route to an existing token: keep the rank only
            kept_merges.append(f"{left} {right}")
            continue
        seen.add(merged)
        tokens.append(merged)
        kept_merges.append(f"{left} {right}")
    (out_dir / "bpe_vocab.json").write_text(
        json.dumps({"source": "pimoe/data/corpus.txt, tokenizers BpeTrainer, qwen2 split, min_frequency=2",
                    "tokens": tokens, "merges": kept_merges}, ensure_ascii=False, indent=0),
        encoding="utf-8")

    # SentencePiece-style: "▁" for spaces, BPE inside "▁word" pieces, lines trained separately so that
    # newlines and tabs stay out of the alphabet (they are written with byte tokens, like Llama's vocab)
    lines = [ln.replace("\t", " ") for ln in text.splitlines() if ln.strip()]
    spm = HFTokenizer(models.BPE())
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=4000, min_frequency=2, show_progress=False)
    spm.train_from_iterator(lines, trainer)
    spm_merges = json.loads(spm.to_str())["model"]["merges"]
    char_freq: dict[str, int] = {}
    for ln in lines:
        for ch in SPM_SPACE + ln.replace(" ", SPM_SPACE):
            char_freq[ch] = char_freq.get(ch, 0) + 1
    merged_pieces: list[str] = []
    seen = set(char_freq)
    for m in spm_merges:
        left, right = m if isinstance(m, (list, tuple)) else m.split(" ", 1)
        if left + right not in seen:
            seen.add(left + right)
            merged_pieces.append(left + right)
    alphabet = sorted(char_freq, key=lambda c: (-char_freq[c], c))
    # score = minus the rank: merged pieces first (in merge order), then single characters by frequency,
    # which is how SentencePiece BPE vocabularies are laid out
    pieces = merged_pieces + alphabet
    (out_dir / "spm_vocab.json").write_text(
        json.dumps({"source": "pimoe/data/corpus.txt, tokenizers BpeTrainer, Metaspace, min_frequency=2",
                    "n_merged": len(merged_pieces), "pieces": pieces}, ensure_ascii=False, indent=0),
        encoding="utf-8")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PimoeError(f"built-in vocabulary {path} is missing (reinstall pimoe)") from None


def _pad_tokens(start: int, stop: int) -> list[str]:
    # Unused ids get distinct names (llama.cpp rejects duplicate token texts), type UNUSED, so that no
    # text ever tokenizes to them; "[PAD<id>]" is the name llama.cpp's converter uses for the same job.
    return [f"[PAD{i}]" for i in range(start, stop)]


def builtin_tokenizer_metadata(style: str, vocab_size: int, pre: str = "qwen2") -> dict[str, object]:
    """GGUF tokenizer.* keys for a small real vocabulary padded to vocab_size.

    style "gpt2": byte-level BPE with Qwen-like special tokens and a ChatML template; `pre` is the
    tokenizer.ggml.pre name ("qwen2" like Qwen3/Qwen2-MoE, or "olmo"/"default" for the GPT-2 split).
    style "llama": SentencePiece-style vocabulary (<unk> <s> </s>, <0x00>..<0xFF>, "▁" pieces with scores).
    If vocab_size is smaller than the trained vocabulary, the latest-learned merges are dropped.
    Value types: lists of str / int / float, int ids, bools, str; write them with
    `add_tokenizer_metadata(writer, md)` so each key gets the GGUF type llama.cpp expects.
    """
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise PimoeError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if style == "gpt2":
        return _gpt2_metadata(vocab_size, pre)
    if style == "llama":
        return _llama_metadata(vocab_size)
    raise PimoeError(f"unknown tokenizer style {style!r} (expected 'gpt2' or 'llama')")


def _gpt2_metadata(vocab_size: int, pre: str) -> dict[str, object]:
    if pre not in PRE_PATTERNS:
        raise PimoeError(f"unknown pre-tokenizer {pre!r} (known: {', '.join(sorted(PRE_PATTERNS))})")
    data = _load_json(BPE_VOCAB_FILE)
    tokens: list[str] = list(data["tokens"])
    merges: list[str] = list(data["merges"])
    n_special = len(GPT2_SPECIAL_TOKENS)
    minimum = 256 + n_special
    if vocab_size < minimum:
        raise PimoeError(f"vocab_size {vocab_size} is too small for the byte-level BPE vocabulary "
                         f"(needs at least {minimum}: 256 bytes + {n_special} special tokens)")
    if len(tokens) + n_special > vocab_size:
        tokens = tokens[: vocab_size - n_special]
        kept = set(tokens)
        # keep only merges whose parts and result all survive the cut
        merges = [m for m in merges if (lambda l, r: l in kept and r in kept and l + r in kept)(*m.split(" ", 1))]
    token_types = [TOKEN_NORMAL] * len(tokens)
    special_ids = {}
    for text, ttype in GPT2_SPECIAL_TOKENS:
        special_ids[text] = len(tokens)
        tokens.append(text)
        token_types.append(ttype)
    tokens += _pad_tokens(len(tokens), vocab_size)
    token_types += [TOKEN_UNUSED] * (vocab_size - len(token_types))
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.merges": merges,
        # as in Qwen3's GGUF files: <|endoftext|> doubles as bos and padding, the turn end is eos,
        # and no BOS is put in front of prompts
        "tokenizer.ggml.bos_token_id": special_ids["<|endoftext|>"],
        "tokenizer.ggml.eos_token_id": special_ids["<|im_end|>"],
        "tokenizer.ggml.padding_token_id": special_ids["<|endoftext|>"],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    }


def _llama_metadata(vocab_size: int) -> dict[str, object]:
    data = _load_json(SPM_VOCAB_FILE)
    pieces: list[str] = list(data["pieces"])
    n_merged = int(data["n_merged"])
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    head_types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    if vocab_size < len(head) + 1:
        raise PimoeError(f"vocab_size {vocab_size} is too small for the SentencePiece vocabulary "
                         f"(needs at least {len(head) + 1}: <unk> <s> </s>, 256 byte tokens and '▁')")
    # scores: merged pieces by merge order, then the single characters by frequency (both descending)
    scores_all = [-float(i) for i in range(len(pieces))]
    room = vocab_size - len(head)
    if len(pieces) > room:
        # drop the last-learned merged pieces first; single characters go only if still too many
        n_drop_merged = min(len(pieces) - room, n_merged)
        keep = list(range(n_merged - n_drop_merged)) + list(range(n_merged, len(pieces)))
        keep = keep[:room]
        pieces = [pieces[i] for i in keep]
        scores_all = [scores_all[i] for i in keep]
    tokens = head + pieces
    scores = [0.0] * len(head) + scores_all
    token_types = head_types + [TOKEN_NORMAL] * len(pieces)
    n_pad = vocab_size - len(tokens)
    tokens += _pad_tokens(len(tokens), vocab_size)
    scores += [-1000.0] * n_pad
    token_types += [TOKEN_UNUSED] * n_pad
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,
        "tokenizer.chat_template": INST_TEMPLATE,
    }


# GGUF value type of every key builtin_tokenizer_metadata returns (llama.cpp reads ids as uint32,
# token types as int32 arrays, scores as float32 arrays; a wrong type makes it refuse the key).
_ID_KEYS = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id",
            "tokenizer.ggml.eot_token_id"}


def add_tokenizer_metadata(writer, md: dict[str, object]) -> None:
    """Write tokenizer.* keys from `md` into a gguf.GGUFWriter with the types llama.cpp expects."""
    for key, value in md.items():
        if key in _ID_KEYS:
            writer.add_uint32(key, int(value))
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif key == "tokenizer.ggml.scores":
            writer.add_array(key, [float(v) for v in value])  # float -> FLOAT32 array
        elif key == "tokenizer.ggml.token_type":
            writer.add_array(key, [int(v) for v in value])    # int -> INT32 array
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            raise TypeError(f"tokenizer metadata key {key!r} has unexpected value type {type(value).__name__}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--train"]:
        _train_builtin_vocabularies()
        print(f"wrote {BPE_VOCAB_FILE} and {SPM_VOCAB_FILE}")
    else:
        print("usage: python -m pimoe.synth_vocab --train   (rebuilds the built-in vocabularies)")
