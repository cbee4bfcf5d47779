"""Vocabulary extension: old ids and rows unchanged, new pieces shorten Chinese text,
new rows are the means of the old rows their text used to become."""

from __future__ import annotations

import json

import numpy as np
import pytest

from linly_engine.tokenizer import load_tokenizer
from textdata import CORPUS, train_bpe_json, train_spm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
from linly_train.vocab import extend_model, old_ids_of, tokens_per_char  # noqa: E402

HELDOUT = "我们在周末去图书馆读书，然后在公园里散步。深圳的天气很好，很多人来这里工作和学习。"


def base_model(folder, vocab):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer.json"])
def test_extend_vocabulary(tmp_path, kind):
    base = tmp_path / "base"
    if kind == "sentencepiece":
        english = tmp_path / "english.txt"  # a base that saw no Chinese: Chinese characters are bytes
        english.write_text("\n".join(l for l in CORPUS.read_text(encoding="utf-8").splitlines()
                                     if l.isascii()), encoding="utf-8")
        train_spm(base, vocab_size=400, corpus=english)
        (base / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    else:
        train_bpe_json(base, vocab_size=400)
    files = lambda d: {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}  # noqa: E731
    old_tok = load_tokenizer(files(base))
    base_model(base, old_tok.vocab_size)
    old = transformers.LlamaForCausalLM.from_pretrained(base)

    report = extend_model(base, tmp_path / "ext", [CORPUS], vocab_size=1200, heldout=HELDOUT)
    new_tok = load_tokenizer(files(tmp_path / "ext"))
    new = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ext")
    n_old = old_tok.vocab_size
    assert report["added"] > 50 and new_tok.vocab_size == n_old + report["added"]
    assert new.config.vocab_size == new_tok.vocab_size

    # old ids: same tokens, same rows
    assert [new_tok.decode([i]) for i in range(n_old)] == [old_tok.decode([i]) for i in range(n_old)]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        o, n = old.state_dict()[name], new.state_dict()[name]
        assert torch.equal(n[:n_old], o)

    # new rows: the mean of the old rows of the old tokens each piece's text became
    saved = json.loads((tmp_path / "ext" / "vocab_extension.json").read_text())["init"]
    assert len(saved) == report["added"]
    for i, entry in saved.items():
        i = int(i)
        assert entry["old_ids"] == old_ids_of(entry["piece"], old_tok)
        assert new_tok.decode([i]).strip() == entry["piece"].replace("\u2581", " ").strip()
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            want = old.state_dict()[name][entry["old_ids"]].mean(0)
            np.testing.assert_allclose(new.state_dict()[name][i].numpy(), want.numpy(), rtol=1e-6, atol=1e-7)

    # Chinese text gets shorter
    before, after = report["tokens_per_chinese_char"]["before"], report["tokens_per_chinese_char"]["after"]
    assert after < before
    assert tokens_per_char(new_tok, HELDOUT) == pytest.approx(after, abs=1e-4)
    # and still round-trips
    assert new_tok.decode(new_tok.encode(HELDOUT, add_special=False)) == HELDOUT
