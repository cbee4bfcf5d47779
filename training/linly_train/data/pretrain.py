"""Pretraining data: documents and Chinese-English pairs → one token file → packed,
shuffled fixed-length sequences with a validation split.

Documents: ``.jsonl`` with {"text": ...}, or plain text with one document per line
(TencentPretrain's corpus convention). Pairs: ``.jsonl`` with {"zh": ..., "en": ...}, or
``.tsv`` with "zh<TAB>en". Each pair becomes two documents, one per direction, in the
layout of Linly's translation instructions:

    翻译成英文：\\n{zh}\\n{en}        翻译成中文：\\n{en}\\n{zh}

Every document is wrapped as BOS + tokens + EOS and appended to ``tokens.bin`` (uint16
when the vocabulary fits, else uint32), written once and memory-mapped when training.
Sequences are consecutive windows of ``seq_len`` tokens across document boundaries (the
tail shorter than one window is dropped and counted); a seeded permutation shuffles them
and its first ``val_fraction`` becomes the validation set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from linly_train.data.reader import Report, json_records, lines

TO_ENGLISH = "翻译成英文：\n{zh}\n{en}"
TO_CHINESE = "翻译成中文：\n{en}\n{zh}"


def documents(path: Path, report: Report, on_error: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        for _, obj in json_records(path, ["text"], report, on_error):
            yield obj["text"]
    else:
        for _, text in lines(path, report, on_error):
            report.read += 1
            yield text


def pair_documents(path: Path, report: Report, on_error: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        pairs = ((obj["zh"], obj["en"]) for _, obj in json_records(path, ["zh", "en"], report, on_error))
    else:
        def tsv():
            for no, text in lines(path, report, on_error):
                cols = text.split("\t")
                if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
                    report.skip(path, no, f"expected 'zh<TAB>en', got {len(cols)} column(s)", on_error)
                    continue
                report.read += 1
                yield cols[0], cols[1]
        pairs = tsv()
    for zh, en in pairs:
        yield TO_ENGLISH.format(zh=zh.strip(), en=en.strip())
        yield TO_CHINESE.format(zh=zh.strip(), en=en.strip())


def build_pretrain(out: str | Path, tokenizer, docs: Sequence[str | Path] = (), pairs: Sequence[str | Path] = (),
                   seq_len: int = 512, val_fraction: float = 0.02, seed: int = 0, on_error: str = "skip",
                   progress: bool = True) -> dict[str, Any]:
    """Writes tokens.bin, train.npy, val.npy and meta.json into ``out``; returns the meta."""
    from tqdm import tqdm

    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError("the tokenizer needs BOS and EOS tokens to separate documents")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    sources, total, n_docs = [], 0, 0
    with open(out / "tokens.bin", "wb") as f:
        for kind, paths, reader in (("documents", docs, documents), ("pairs", pairs, pair_documents)):
            for p in map(Path, paths):
                report = Report()
                tokens_before = total
                for text in tqdm(reader(p, report, on_error), desc=p.name, unit="doc", disable=not progress):
                    ids = [tokenizer.bos_id] + tokenizer.encode(text, add_special=False) + [tokenizer.eos_id]
                    f.write(np.asarray(ids, dtype=dtype).tobytes())
                    total += len(ids)
                    n_docs += 1
                sources.append({"path": str(p), "kind": kind, "tokens": total - tokens_before, **report.summary()})
    n_seq = total // seq_len
    if n_seq < 2:
        raise ValueError(f"only {total} tokens: not even two sequences of {seq_len}; add text or lower seq_len")
    perm = np.random.default_rng(seed).permutation(n_seq)
    n_val = max(1, int(round(n_seq * val_fraction))) if val_fraction > 0 else 0
    np.save(out / "val.npy", np.sort(perm[:n_val]))
    np.save(out / "train.npy", perm[n_val:])
    meta = {"kind": "pretrain", "seq_len": seq_len, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
            "documents": n_docs, "tokens": total, "sequences": n_seq, "train_sequences": n_seq - n_val,
            "val_sequences": n_val, "dropped_tail_tokens": total - n_seq * seq_len, "seed": seed,
            "layout": {"to_english": TO_ENGLISH, "to_chinese": TO_CHINESE}, "sources": sources}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
    return meta


class PretrainSet:
    """The packed sequences of a built pretraining set: ``split[i]`` → int64 [seq_len]."""

    def __init__(self, folder: str | Path, split: str = "train") -> None:
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.seq_len = self.meta["seq_len"]
        self.tokens = np.memmap(folder / "tokens.bin", dtype=self.meta["dtype"], mode="r")
        self.index = np.load(folder / f"{split}.npy")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, labels); every position is learned."""
        s = int(self.index[i]) * self.seq_len
        ids = np.asarray(self.tokens[s:s + self.seq_len], dtype=np.int64)
        return ids, ids.copy()
