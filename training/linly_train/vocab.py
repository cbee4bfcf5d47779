"""Vocabulary extension, as Chinese-LLaMA-2 did it: train a Chinese SentencePiece model on
the corpus, add its pieces the base tokenizer lacks, grow the embedding and the LM head,
and start each new row at the mean of the rows of the old tokens its text used to become.

- SentencePiece base (LLaMA, Linly): the new pieces are appended to the model proto
  with score 0 (Chinese-LLaMA's choice: they merge before the base pieces).
- Hugging Face tokenizer.json base (byte-level BPE): the new pieces (without the
  word-start mark) are added as non-special added tokens, matched before BPE.
Old ids and their rows never change; new ids follow the old vocabulary.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from linly_engine.tokenizer import Tokenizer

WORD_START = "\u2581"  # SentencePiece's "▁"


def train_spm(corpus: Sequence[str | Path], vocab_size: int, model_type: str = "bpe",
              character_coverage: float = 0.9995, max_sentences: int = 2_000_000) -> bytes:
    """A SentencePiece model trained on the corpus files (one sentence per line)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=",".join(str(p) for p in corpus), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, input_sentence_size=max_sentences, shuffle_input_sentence=True,
        split_digits=True, byte_fallback=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        minloglevel=2, num_threads=2)
    return buf.getvalue()


def new_pieces(addition: bytes) -> list[str]:
    """The ordinary pieces of a SentencePiece model, in its order."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(addition)
    return [p.piece for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]


def merge_sentencepiece(base: bytes, pieces: Sequence[str]) -> tuple[bytes, list[str]]:
    """``base`` with the pieces it lacks appended (score 0); returns the new model and the
    pieces actually added, in id order."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(base)
    have = {p.piece for p in m.pieces}
    added = []
    for piece in pieces:
        if piece in have:
            continue
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, 0.0, pb.ModelProto.SentencePiece.NORMAL
        have.add(piece)
        added.append(piece)
    return m.SerializeToString(), added


def extend_tokenizer_json(base: bytes, pieces: Sequence[str]) -> tuple[bytes, list[str]]:
    """A tokenizer.json with the pieces it cannot yet produce as one token added."""
    from tokenizers import AddedToken, Tokenizer as Backend

    tok = Backend.from_str(base.decode("utf-8"))
    added = []
    for piece in pieces:
        text = piece.replace(WORD_START, "")
        if len(text) < 1 or text in added or len(tok.encode(text, add_special_tokens=False).ids) == 1:
            continue
        added.append(text)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in added])
    return tok.to_str().encode("utf-8"), added


def old_ids_of(piece: str, old: Tokenizer) -> list[int]:
    """The old tokens that a new piece's text used to become (the rows its mean is made of).
    A piece without the word-start mark is mid-word text: SentencePiece's dummy prefix,
    which encoding it alone adds, is not part of it."""
    text = piece.replace(WORD_START, " ").lstrip(" ") if piece.startswith(WORD_START) else piece.replace(WORD_START, " ")
    ids = old.encode(text, add_special=False)
    lone = old.token_id(WORD_START)
    if not piece.startswith(WORD_START) and ids and lone is not None and ids[0] == lone and len(ids) > 1:
        ids = ids[1:]
    return ids


def tokens_per_char(tok: Tokenizer, text: str) -> float:
    """Tokens per Chinese character (CJK unified ideographs) over ``text``."""
    n_chars = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    return len(tok.encode(text, add_special=False)) / max(n_chars, 1)


def extend_model(model_dir: str | Path, out_dir: str | Path, corpus: Sequence[str | Path], vocab_size: int,
                 heldout: str | None = None) -> dict[str, Any]:
    """Writes ``out_dir``: the model with the extended vocabulary (safetensors), its
    tokenizer files and ``vocab_extension.json`` (pieces added, the old ids each new row
    averages, tokens per Chinese character before and after on ``heldout``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from linly_engine.tokenizer import load_tokenizer
    from linly_train.tokenizer import copy_model_files, folder_tokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    old = folder_tokenizer(model_dir)
    addition = train_spm(corpus, vocab_size)
    pieces = new_pieces(addition)
    copy_model_files(model_dir, out_dir)
    if (model_dir / "tokenizer.json").is_file():
        blob, added = extend_tokenizer_json((model_dir / "tokenizer.json").read_bytes(), pieces)
        (out_dir / "tokenizer.json").write_bytes(blob)
    elif (model_dir / "tokenizer.model").is_file():
        blob, added = merge_sentencepiece((model_dir / "tokenizer.model").read_bytes(), pieces)
        (out_dir / "tokenizer.model").write_bytes(blob)
    else:
        raise ValueError(f"{model_dir} has neither tokenizer.json nor tokenizer.model to extend")
    files = {f.name: f.read_bytes() for f in out_dir.iterdir() if f.is_file()}
    new = load_tokenizer(files)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n_old = model.get_input_embeddings().weight.shape[0]
    first_new = max(old.vocab_size, n_old)
    new_ids = {new.token_id(p): p for p in added}
    if None in new_ids or not all(i >= old.vocab_size for i in new_ids):
        raise RuntimeError("new pieces did not get ids after the old vocabulary")
    sources = {i: old_ids_of(p, old) for i, p in new_ids.items()}
    n_new = max(new.vocab_size, n_old)
    tied = model.config.tie_word_embeddings
    model.resize_token_embeddings(n_new, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        for i, ids in sources.items():
            emb[i] = emb[ids].mean(0)
            if not tied:
                head[i] = head[ids].mean(0)
    model.config.vocab_size = n_new
    model.save_pretrained(out_dir, safe_serialization=True)
    report: dict[str, Any] = {"base": str(model_dir), "trained_vocab_size": vocab_size, "added": len(added),
                              "old_vocab": n_old, "new_vocab": n_new, "first_new_id": first_new,
                              "init": {str(i): {"piece": new_ids[i], "old_ids": ids} for i, ids in sources.items()}}
    if heldout:
        report["tokens_per_chinese_char"] = {"before": round(tokens_per_char(old, heldout), 4),
                                             "after": round(tokens_per_char(new, heldout), 4)}
    (out_dir / "vocab_extension.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return report
