"""Training data: pretraining token files and instruction masking (token by token), and
bad records reported by file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from linly_engine.templates import builtin_template
from linly_engine.tokenizer import load_tokenizer
from textdata import CHATML, train_bpe_json, train_spm

pytest.importorskip("linly_train")
from linly_train.data.instruct import IGNORE, SftSet, build_sft, encode_conversation  # noqa: E402
from linly_train.data.pretrain import PretrainSet, build_pretrain  # noqa: E402
from linly_train.data.reader import DataError  # noqa: E402


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    f = train_spm(tmp_path_factory.mktemp("spm"))
    return load_tokenizer({"tokenizer.model": f.read_bytes()})


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    folder = train_bpe_json(tmp_path_factory.mktemp("bpe"))
    return load_tokenizer({n: (folder / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")})


def write(path, lines_bytes):
    path.write_bytes(b"\n".join(lines_bytes) + b"\n")
    return path


@pytest.fixture
def corpus_files(tmp_path):
    docs = write(tmp_path / "docs.txt", ["春天来了，花都开了。".encode(), b"", b"   ", b"\xff\xfe broken bytes",
                                         "The quick brown fox.".encode(), "学习需要耐心。".encode()])
    jdocs = write(tmp_path / "docs.jsonl", [json.dumps({"text": "北京是中国的首都。"}, ensure_ascii=False).encode(),
                                            b'{"text": 12}', b'{"text": "unterminated', b'["a list"]'])
    pairs = write(tmp_path / "pairs.jsonl", [json.dumps({"zh": "你好", "en": "Hello"}, ensure_ascii=False).encode(),
                                             b'{"zh": "only chinese"}'])
    tsv = write(tmp_path / "pairs.tsv", ["早上好\tGood morning".encode(), "三\t列\t的".encode()])
    return docs, jdocs, pairs, tsv


def test_pretrain_data_layout_and_reports(tmp_path, spm_tok, corpus_files):
    docs, jdocs, pairs, tsv = corpus_files
    meta = build_pretrain(tmp_path / "pt", spm_tok, [docs, jdocs], [pairs, tsv], seq_len=8, val_fraction=0.25,
                          seed=3, progress=False)
    src = {s["path"]: s for s in meta["sources"]}
    assert src[str(docs)]["read"] == 3 and src[str(docs)]["skipped"] == 3  # empty, blank, bad bytes
    assert any(f"{docs}:4: not UTF-8" in e for e in src[str(docs)]["examples"])
    assert any(f"{docs}:2: empty line" in e for e in src[str(docs)]["examples"])
    assert any(f"{docs}:3: blank line" in e for e in src[str(docs)]["examples"])
    assert src[str(jdocs)]["read"] == 1 and src[str(jdocs)]["skipped"] == 3
    assert any(f"{jdocs}:3: broken JSON" in e for e in src[str(jdocs)]["examples"])
    assert any(f"{pairs}:2: missing or non-string field(s): en" in e for e in src[str(pairs)]["examples"])
    assert any(f"{tsv}:2: expected 'zh<TAB>en', got 3 column(s)" in e for e in src[str(tsv)]["examples"])
    assert meta["documents"] == 3 + 1 + 2 * 2  # each pair in both directions
    tokens = np.fromfile(tmp_path / "pt" / "tokens.bin", dtype=meta["dtype"])
    first = [spm_tok.bos_id] + spm_tok.encode("春天来了，花都开了。", add_special=False) + [spm_tok.eos_id]
    assert tokens[:len(first)].tolist() == first
    assert "翻译成英文：\n你好\nHello" in spm_tok.decode(tokens.tolist())
    assert "翻译成中文：\nHello\n你好" in spm_tok.decode(tokens.tolist())
    train, val = PretrainSet(tmp_path / "pt", "train"), PretrainSet(tmp_path / "pt", "val")
    assert len(train) + len(val) == meta["sequences"] == len(tokens) // 8
    assert not set(train.index.tolist()) & set(val.index.tolist())
    ids, labels = train[0]
    assert ids.shape == (8,) and (ids == labels).all()
    again = build_pretrain(tmp_path / "pt2", spm_tok, [docs, jdocs], [pairs, tsv], seq_len=8, val_fraction=0.25,
                           seed=3, progress=False)
    assert again["sequences"] == meta["sequences"]
    assert (np.load(tmp_path / "pt2" / "train.npy") == train.index).all()  # the shuffle is deterministic


def test_bad_records_can_stop_the_build(tmp_path, spm_tok, corpus_files):
    with pytest.raises(DataError, match=r"docs.txt:2: empty line"):
        build_pretrain(tmp_path / "x", spm_tok, [corpus_files[0]], seq_len=4, on_error="raise", progress=False)


CONVERSATIONS = [
    [{"role": "user", "content": "把这句话翻译成英文：我喜欢读书。"}, {"role": "assistant", "content": "I like reading."}],
    [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": "一加一？"},
     {"role": "assistant", "content": "二。"}, {"role": "user", "content": "再加三呢？"},
     {"role": "assistant", "content": "五。"}],
]


def answer_spans(text: str, answers: list[str], ends: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for a in answers:
        start = text.index(a, pos)
        end = start + len(a) + len(ends)
        assert text[start + len(a):end] == ends
        spans.append((start, end))
        pos = end
    return spans


@pytest.mark.parametrize("template, ends", [("chatml", "<|im_end|>\n"), ("linly-chatflow", "\n")])
@pytest.mark.parametrize("conv", [0, 1])
def test_labels_cover_exactly_the_answers(bpe_tok, spm_tok, template, ends, conv):
    """Token by token: a label is set iff the token's text lies inside an answer (with
    the template's end-of-turn text), and it equals the token."""
    tok = bpe_tok if template == "chatml" else spm_tok
    tpl = builtin_template(template)
    msgs = CONVERSATIONS[conv]
    ids, labels = encode_conversation(msgs, tpl, tok)
    full = tpl.render(msgs, add_generation_prompt=False)
    if ids[-1] == tok.eos_id and template != "chatml":
        assert labels[-1] == tok.eos_id  # EOS appended after the last answer: learned
        ids, labels = ids[:-1], labels[:-1]
    assert tok.decode(ids, skip_special=False) == full
    spans = answer_spans(full, [m["content"] for m in msgs if m["role"] == "assistant"], ends)
    for i, (t, lab) in enumerate(zip(ids, labels)):
        a = len(tok.decode(ids[:i], skip_special=False))
        b = len(tok.decode(ids[:i + 1], skip_special=False))
        inside = any(s <= a and b <= e for s, e in spans)
        assert (lab == t) if inside else (lab == IGNORE), (i, tok.decode([t], skip_special=False), inside)


def test_sft_build_sources_overflow_and_errors(tmp_path, bpe_tok):
    tpl = builtin_template("chatml")
    f = write(tmp_path / "sft.jsonl", [
        json.dumps({"instruction": "翻译成英文：", "input": "早上好", "output": "Good morning"}, ensure_ascii=False).encode(),
        json.dumps({"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]},
                   ensure_ascii=False).encode(),
        json.dumps({"instruction": "写一篇长文章", "output": "很长的文章。" * 200}, ensure_ascii=False).encode(),
        b'{"instruction": "no output"}',
        b'{"conversations": [{"from": "human", "value": "only a question"}]}',
        b"not json",
    ])
    meta = build_sft(tmp_path / "a", bpe_tok, tpl, [f], max_len=64, overflow="drop", val_fraction=0.34,
                     progress=False)
    skipped = meta["sources"][0]["examples"]
    assert meta["samples"] == 2 and len(skipped) == 4
    assert any(":3: " in e and "max_len 64 (dropped)" in e for e in skipped)
    assert any(":4: expected {instruction, input, output}" in e for e in skipped)
    assert any(":5: no assistant turn" in e for e in skipped)
    assert any(":6: broken JSON" in e for e in skipped)
    meta = build_sft(tmp_path / "b", bpe_tok, tpl, [f], max_len=64, overflow="truncate", val_fraction=0.34,
                     progress=False)
    assert meta["samples"] == 3 and meta["truncated"] == 1
    ds = SftSet(tmp_path / "b", "train")
    ids, labels = ds[0]
    assert len(ids) <= 64 and (labels != IGNORE).any()
    first = bpe_tok.decode(encode_conversation([{"role": "user", "content": "翻译成英文：\n早上好"},
                                                {"role": "assistant", "content": "Good morning"}], tpl, bpe_tok)[0],
                           skip_special=False)
    assert "翻译成英文：\n早上好" in first  # instruction, newline, input
