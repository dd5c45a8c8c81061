"""pimoe.tokenizer against llama.cpp (through llama-cpp-python, vocab_only): the same ids for the same text.

The GGUF files are written by pimoe.synth.make_model (tiny models, whose vocabularies are the built-in
ones cut to 1000 tokens) and, for the real vocabulary sizes (151936 Qwen3, 50304 OLMoE, 32000 Mixtral),
by a vocab-only writer here, so padding to the full size is covered too.
"""

from __future__ import annotations

import ctypes
import itertools

import gguf
import pytest

from pimoe.errors import PimoeError
from pimoe.gguf_file import GGUFFile
from pimoe.synth import make_model
from pimoe.synth_vocab import add_tokenizer_metadata, builtin_tokenizer_metadata
from pimoe.tokenizer import PRE_PATTERNS, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_USER_DEFINED, Tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   leading and trailing spaces   ",
    "a  b   c    d     e",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "code:\n    if x:\n        return y\n\tdone",
    "12345678 3.14159 1,000,000 2024-11-28 0x1F",
    "I'm sure it'll work; they're done, aren't they? We've SAID DON'T, you'd agree.",
    "Ça marche très bien, Größe, señora, naïve café, Ångström",
    "语言模型把文本切成小块。你好，世界！",
    "こんにちは、世界。カタカナ",
    "안녕하세요, 세계!",
    "Привет, мир! Ελληνικά",
    "🙂😀🚀 emoji🔥✅ ❤️ 👍🏽 👨‍👩‍👧",
    "\u00a0non-breaking\u3000ideographic\u2009thin spaces",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "x<|endoftext|>y<|im_end|>",
    "<think>hmm, let me see</think> ok",
    "<s>hello</s> world <unk> end",
    "<|im_start|<|im_start|>>",
    "mixed: pimoe 🤖 läuft auf dem Pi 4 — 速度 3.2 GB/s!",
]

# (arch, tokenizer.ggml.model, tokenizer.ggml.pre) that synth writes
ARCH_STYLES = [("qwen3moe", "gpt2", "qwen2"), ("olmoe", "gpt2", "olmo"), ("llama", "llama", "default"),
               ("granitemoe", "gpt2", "refact")]


def _llama_vocab(path):
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def _compare(tok: Tokenizer, ref, texts=TEXTS) -> list[str]:
    """All (text, add_bos, parse_special) where pimoe's ids differ from llama.cpp's."""
    bad = []
    for text, add_special, parse_special in itertools.product(texts, (True, False), (True, False)):
        want = ref.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
        got = tok.encode(text, add_bos=None if add_special else False, parse_special=parse_special)
        if got != want:
            bad.append(f"{text!r} add_special={add_special} parse_special={parse_special}: "
                       f"pimoe {got} llama.cpp {want}")
    return bad


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return {arch: make_model(d / f"{arch}.gguf", arch=arch, preset="tiny") for arch, _, _ in ARCH_STYLES}


def _vocab_only_file(path, style, vocab_size, pre=None, drop=()):
    """A GGUF holding only tokenizer metadata (plus the few llama hparams llama.cpp reads first)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab_size)
    md = builtin_tokenizer_metadata(style, vocab_size, **({"pre": pre} if pre else {}))
    md = {k: v for k, v in md.items() if k not in drop}
    add_tokenizer_metadata(w, md)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return md


@pytest.mark.llama
@pytest.mark.parametrize("arch,model,pre", ARCH_STYLES)
def test_ids_equal_llama_cpp_on_synth_models(synth_files, arch, model, pre):
    f = GGUFFile(synth_files[arch])
    assert f.metadata["tokenizer.ggml.model"] == model
    assert f.metadata["tokenizer.ggml.pre"] == pre
    tok = Tokenizer.from_gguf_metadata(f.metadata, str(f.path))
    assert tok.vocab_size == f.config.vocab_size
    bad = _compare(tok, _llama_vocab(f.path))
    assert not bad, "\n".join(bad[:10])


@pytest.mark.llama
@pytest.mark.parametrize("style,vocab_size,pre", [("gpt2", 151936, "qwen2"), ("gpt2", 50304, "olmo"),
                                                   ("llama", 32000, None)])
def test_ids_equal_llama_cpp_at_real_vocab_sizes(tmp_path, style, vocab_size, pre):
    path = tmp_path / "vocab.gguf"
    md = _vocab_only_file(path, style, vocab_size, pre)
    ref = _llama_vocab(path)
    assert ref.n_vocab() == vocab_size
    # read back through pimoe's own GGUF reader path (python values from gguf.GGUFReader)
    reader = gguf.GGUFReader(str(path))
    md_read = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    assert md_read["tokenizer.ggml.tokens"] == md["tokenizer.ggml.tokens"]
    tok = Tokenizer.from_gguf_metadata(md_read, str(path))
    bad = _compare(tok, ref)
    assert not bad, "\n".join(bad[:10])
    # nothing ever tokenizes to a padding id
    n_real = sum(1 for t in md["tokenizer.ggml.token_type"] if t != TOKEN_UNUSED)
    for text in TEXTS:
        assert all(i < n_real for i in tok.encode(text))


def _llama_detokenize(ref, ids: list[int]) -> str:
    """llama.cpp's own llama_detokenize (the python wrapper's detokenize() only joins pieces)."""
    n = max(64, 8 * len(ids))
    buf = ctypes.create_string_buffer(n)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    got = llama_cpp.llama_detokenize(ref._model.vocab, arr, len(ids), buf, n, False, True)
    assert 0 <= got <= n
    return buf.raw[:got].decode("utf-8", errors="replace")


@pytest.mark.llama
@pytest.mark.parametrize("pre", sorted(PRE_PATTERNS) + [None])
def test_ids_equal_llama_cpp_for_every_pre_tokenizer(tmp_path, pre):
    """Every tokenizer.ggml.pre pimoe accepts splits words as llama.cpp does (None: the key is absent,
    which llama.cpp treats as 'default')."""
    path = tmp_path / "vocab.gguf"
    md = _vocab_only_file(path, "gpt2", 3000, pre or "qwen2", drop=() if pre else ("tokenizer.ggml.pre",))
    tok = Tokenizer.from_gguf_metadata(md, str(path))
    assert tok.pre == (pre or "default")
    bad = _compare(tok, _llama_vocab(path))
    assert not bad, "\n".join(bad[:10])


@pytest.mark.llama
@pytest.mark.parametrize("style,pre", [("gpt2", "qwen2"), ("llama", None)])
def test_decode_equals_llama_cpp_detokenize(tmp_path, style, pre):
    path = tmp_path / "vocab.gguf"
    md = _vocab_only_file(path, style, 4096, pre)
    ref = _llama_vocab(path)
    tok = Tokenizer.from_gguf_metadata(md, str(path))
    plain = [t for t in TEXTS if "<" not in t]
    for text in plain:
        ids = tok.encode(text, add_bos=False)
        want = _llama_detokenize(ref, ids)
        assert tok.decode(ids) == want, text
        assert want == text  # and both give the text back


@pytest.mark.parametrize("style,pre", [("gpt2", "qwen2"), ("gpt2", "olmo"), ("llama", None)])
def test_decode_round_trips(style, pre):
    md = builtin_tokenizer_metadata(style, 2000, **({"pre": pre} if pre else {}))
    tok = Tokenizer.from_gguf_metadata(md, "builtin")
    for text in TEXTS:
        assert tok.decode(tok.encode(text, add_bos=False)) == text
        assert tok.decode(tok.encode(text, add_bos=False, parse_special=False)) == text
        if "<" not in text:
            assert tok.decode(tok.encode(text), skip_special=True) == text


def test_builtin_metadata_is_consistent():
    for style, n in (("gpt2", 151936), ("gpt2", 1000), ("gpt2", 300), ("llama", 32000), ("llama", 1000),
                     ("llama", 300)):
        md = builtin_tokenizer_metadata(style, n)
        tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
        assert len(tokens) == len(types) == n
        assert len(set(tokens)) == n, "llama.cpp refuses duplicate token texts"
        assert types[-1] == TOKEN_UNUSED or n <= 1300
        if style == "gpt2":
            assert md["tokenizer.ggml.pre"] == "qwen2"
            vocab = set(tokens)
            for m in md["tokenizer.ggml.merges"]:
                left, right = m.split(" ")
                assert left in vocab and right in vocab and left + right in vocab
            assert tokens[md["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
            assert tokens[md["tokenizer.ggml.bos_token_id"]] == "<|endoftext|>"
            assert types[tokens.index("<|im_start|>")] == TOKEN_CONTROL
            assert types[tokens.index("<think>")] == TOKEN_USER_DEFINED
            assert md["tokenizer.ggml.add_bos_token"] is False
        else:
            assert tokens[:3] == ["<unk>", "<s>", "</s>"]
            assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
            assert set(types[3:259]) == {TOKEN_BYTE}
            assert "\u2581" in tokens
            assert len(md["tokenizer.ggml.scores"]) == n
            assert md["tokenizer.ggml.add_bos_token"] is True
    full = builtin_tokenizer_metadata("gpt2", 151936)
    assert len(full["tokenizer.ggml.merges"]) >= 500   # a real, if small, BPE vocabulary


def test_builtin_metadata_rejects_bad_requests():
    with pytest.raises(PimoeError, match="too small"):
        builtin_tokenizer_metadata("gpt2", 100)
    with pytest.raises(PimoeError, match="too small"):
        builtin_tokenizer_metadata("llama", 200)
    with pytest.raises(PimoeError, match="unknown tokenizer style"):
        builtin_tokenizer_metadata("wordpiece", 1000)
    with pytest.raises(PimoeError, match="unknown pre-tokenizer"):
        builtin_tokenizer_metadata("gpt2", 1000, pre="klingon")


def test_special_tokens_and_bos_rules():
    qwen = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("gpt2", 2000), "qwen-like")
    im_start = qwen.tokens.index("<|im_start|>")
    assert qwen.encode("<|im_start|>")[0] == im_start and len(qwen.encode("<|im_start|>")) == 1
    assert im_start not in qwen.encode("<|im_start|>", parse_special=False)
    think = qwen.tokens.index("<think>")
    assert qwen.encode("<think>", parse_special=False) == [think]   # user-defined: always one token
    assert qwen.encode("hi")[0] != qwen.bos_id                       # Qwen adds no BOS
    assert qwen.encode("hi", add_bos=True)[0] == qwen.bos_id
    assert qwen.tokens.index("<|im_end|>") in qwen.eog_ids
    assert qwen.tokens.index("<|endoftext|>") in qwen.eog_ids

    spm = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("llama", 2000), "mixtral-like")
    assert spm.encode("hi")[0] == spm.bos_id == 1
    assert spm.encode("hi", add_bos=False)[0] != 1
    assert spm.eos_id == 2 and 2 in spm.eog_ids
    # characters with no piece fall back to their UTF-8 bytes
    ids = spm.encode("\u263a", add_bos=False)   # ☺ is not in the corpus
    assert [spm.tokens[i] for i in ids] == ["\u2581", "<0xE2>", "<0x98>", "<0xBA>"]


def test_stream_decoder_holds_split_characters():
    spm = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("llama", 2000), "mixtral-like")
    ids = spm.encode("ok \u263a done", add_bos=False)
    dec = spm.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == " ok \u263a done"   # the stream keeps the leading space, like llama.cpp pieces
    assert all("\ufffd" not in p for p in pieces)
    byte_positions = [k for k, i in enumerate(ids) if spm.tokens[i].startswith("<0x")]
    assert pieces[byte_positions[0]] == "" and pieces[byte_positions[1]] == ""
    assert pieces[byte_positions[2]] == "\u263a"
    qwen = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("gpt2", 2000), "qwen-like")
    dec = qwen.stream_decoder()
    text = "".join(dec.push(i) for i in qwen.encode("a<|im_end|>b")) + dec.flush()
    assert text == "ab"   # control tokens are not printed
    big = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("gpt2", 5000), "padded")
    pad = 4321
    assert big.token_types[pad] == TOKEN_UNUSED and big.decode([pad]) == ""   # like llama.cpp: no text
    assert big.stream_decoder(show_unused=True).push(pad) == "[PAD4321]"
    assert big.stream_decoder().push(pad) == ""


def test_chat_templates():
    qwen = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("gpt2", 2000), "qwen-like")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    # ChatML, the format of Qwen's chat models
    assert qwen.apply_chat_template(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    ids = qwen.encode_chat(msgs)
    assert ids[0] == qwen.tokens.index("<|im_start|>")
    assert ids.count(qwen.tokens.index("<|im_end|>")) == 2

    spm = Tokenizer.from_gguf_metadata(builtin_tokenizer_metadata("llama", 2000), "mixtral-like")
    text = spm.apply_chat_template([{"role": "user", "content": "Hi!"}])
    assert text == "<s>[INST] Hi! [/INST]"
    ids = spm.encode_chat([{"role": "user", "content": "Hi!"}])
    assert ids[0] == spm.bos_id and ids[1] != spm.bos_id   # the template's <s> is not doubled

    # the template features real models' templates use: namespace, reversed slices, loop controls,
    # string methods, tojson, raise_exception (this template is written for the test)
    md = builtin_tokenizer_metadata("gpt2", 2000)
    md["tokenizer.chat_template"] = (
        "{%- set ns = namespace(last_user=-1) -%}"
        "{%- for m in messages[::-1] -%}{%- if m.role == 'user' -%}"
        "{%- set ns.last_user = messages|length - 1 - loop.index0 -%}{%- break -%}{%- endif -%}{%- endfor -%}"
        "{%- for m in messages -%}"
        "{%- if m.role not in ['user', 'assistant'] -%}{{- raise_exception('bad role ' + m.role) -}}{%- endif -%}"
        "{%- if loop.index0 == ns.last_user -%}{{- '<|im_start|>' + m.role + '\n' + m.content.strip() + "
        "' ' + {'n': 'é'}|tojson + '<|im_end|>' -}}{%- continue -%}{%- endif -%}"
        "{{- m.content.upper() -}}{%- endfor -%}")
    tok = Tokenizer.from_gguf_metadata(md, "fancy")
    msgs2 = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": " c "}]
    assert tok.apply_chat_template(msgs2) == 'AB<|im_start|>user\nc {"n": "é"}<|im_end|>'
    with pytest.raises(PimoeError, match="chat template failed: bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])

    md = builtin_tokenizer_metadata("gpt2", 2000)
    del md["tokenizer.chat_template"]
    with pytest.raises(PimoeError, match="no chat template"):
        Tokenizer.from_gguf_metadata(md, "plain.gguf").apply_chat_template(msgs)


def test_bad_metadata_gives_clear_errors():
    md = builtin_tokenizer_metadata("gpt2", 1000)
    with pytest.raises(PimoeError, match="no tokenizer"):
        Tokenizer.from_gguf_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.model"}, "m.gguf")
    with pytest.raises(PimoeError, match="m.gguf: pre-tokenizer 'klingon'"):
        Tokenizer.from_gguf_metadata(dict(md, **{"tokenizer.ggml.pre": "klingon"}), "m.gguf")
    with pytest.raises(PimoeError, match="tokenizer model 'bert'"):
        Tokenizer.from_gguf_metadata(dict(md, **{"tokenizer.ggml.model": "bert"}), "m.gguf")
    with pytest.raises(PimoeError, match="merges' is missing"):
        Tokenizer.from_gguf_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"}, "m.gguf")
    with pytest.raises(PimoeError, match="token_type has 3 entries"):
        Tokenizer.from_gguf_metadata(dict(md, **{"tokenizer.ggml.token_type": [1, 1, 1]}), "m.gguf")
    with pytest.raises(PimoeError, match="eos_token_id = 5000 is outside"):
        Tokenizer.from_gguf_metadata(dict(md, **{"tokenizer.ggml.eos_token_id": 5000}), "m.gguf")
    tok = Tokenizer.from_gguf_metadata(md, "m.gguf")
    with pytest.raises(PimoeError, match="outside the vocabulary"):
        tok.decode([1000])


@pytest.mark.llama
@pytest.mark.parametrize("style,pre", [("llama", None), ("gpt2", "qwen2"), ("gpt2", "olmo"), ("gpt2", "default")])
def test_ids_equal_llama_cpp_on_random_strings(tmp_path, style, pre):
    """Seeded random strings over a small alphabet (runs of spaces, tabs, newlines, '▁', apostrophes, digits,
    multi-byte characters); the SentencePiece vocabulary gets many equal scores so tie-breaking is exercised."""
    import random

    rng = random.Random(1)
    pool = list("aabbcc \u2581xy\u00e9\u4f60\U0001f642\n\t'0123") + [" "] * 3
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    path = tmp_path / "vocab.gguf"
    md = _vocab_only_file(path, style, 1500, pre, drop=("tokenizer.ggml.scores",) if style == "llama" else ())
    if style == "llama":   # scores with ties: 7 distinct values for 1241 pieces
        md["tokenizer.ggml.scores"] = [0.0 if i < 259 else float(-(i % 7)) for i in range(1500)]
        w = gguf.GGUFWriter(str(path), "llama")
        for add in (w.add_context_length, w.add_embedding_length, w.add_feed_forward_length):
            add(128)
        w.add_block_count(1)
        w.add_head_count(4)
        w.add_layer_norm_rms_eps(1e-6)
        add_tokenizer_metadata(w, md)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    tok = Tokenizer.from_gguf_metadata(md, str(path))
    bad = _compare(tok, _llama_vocab(path), texts)
    assert not bad, "\n".join(bad[:10])
