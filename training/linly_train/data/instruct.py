"""Instruction data → (input ids, labels) with the loss on the answers only.

Sources (JSONL, one sample per line):
- Linly / Alpaca: {"instruction": ..., "input": ... (optional), "output": ...}; the
  user's turn is the instruction, then a newline and the input when there is one.
- ShareGPT: {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}
  (also {"role": ..., "content": ...} turns), several turns.

Conversations are rendered with the engine's chat template code (the same Jinja
rendering that serves the model). The text is cut where each assistant turn begins and
ends (each prefix must render as a prefix of the whole, which every common template
does), each piece is tokenised on its own, and the labels are -100 on everything but the
assistant pieces, which include the template's end-of-turn text (pieces after the first
are encoded as continuations: see ``continuation_ids``). When that piece does not
end in a stop token (templates without an end marker, e.g. Linly's), EOS is appended to
the last answer so the model learns to stop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from linly_engine.templates import ChatTemplate
from linly_train.data.reader import Report, records

IGNORE = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
         "system": "system"}


def to_messages(obj: Any) -> list[dict[str, str]] | str:
    """The conversation of one record, or the reason it is unusable."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    if "conversations" in obj:
        turns = obj["conversations"]
        if not isinstance(turns, list) or not turns:
            return "'conversations' must be a non-empty list"
        msgs = []
        for t in turns:
            if not isinstance(t, dict):
                return "a turn is not an object"
            role = ROLES.get(str(t.get("from", t.get("role", ""))).lower())
            text = t.get("value", t.get("content"))
            if role is None or not isinstance(text, str):
                return f"a turn lacks a known role or string text: {json.dumps(t, ensure_ascii=False)[:60]}"
            msgs.append({"role": role, "content": text})
        if not any(m["role"] == "assistant" for m in msgs):
            return "no assistant turn to learn from"
        return msgs
    if isinstance(obj.get("instruction"), str) and isinstance(obj.get("output"), str):
        extra = obj.get("input")
        if extra is not None and not isinstance(extra, str):
            return "'input' must be a string"
        user = obj["instruction"] + ("\n" + extra if extra else "")
        if not user.strip() or not obj["output"].strip():
            return "empty instruction or output"
        return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    return "expected {instruction, input, output} or {conversations: [...]}"


def continuation_ids(tokenizer, before: list[int], text: str) -> list[int]:
    """Ids of ``text`` as it continues the ids ``before``, so that the pieces decode to
    the whole. SentencePiece puts a word-start mark before any text it encodes alone
    (after "Bot: " that would add a second space); encoding "\n" + text and dropping the
    newline's tokens gives the ids a model sees when it continues mid-line."""
    plain = tokenizer.encode(text, add_special=False)
    shown = tokenizer.decode(before, skip_special=False)
    if tokenizer.decode(before + plain, skip_special=False) == shown + text:
        return plain
    joined = tokenizer.encode("\n" + text, add_special=False)
    for k in range(1, min(4, len(joined))):
        if tokenizer.decode(before + joined[k:], skip_special=False) == shown + text:
            return joined[k:]
    return plain  # no exact split exists; the plain ids decode closest


def encode_conversation(messages: Sequence[dict[str, str]], template: ChatTemplate, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one conversation; labels are IGNORE except on answers."""
    kw = dict(bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    # Character offsets where each assistant turn starts and ends in the full rendering.
    cuts: list[tuple[int, bool]] = []  # (end offset of a piece, is it an answer)
    full = template.render(messages, add_generation_prompt=False, **kw)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True, **kw) if i else ""
        through = template.render(messages[:i + 1], add_generation_prompt=False, **kw)
        if not (full.startswith(before) and full.startswith(through) and len(through) >= len(before)):
            raise ValueError(f"chat template '{template.name}' does not render prefixes of a conversation as "
                             "prefixes of the whole; it cannot mark answers")
        cuts += [(len(before), False), (len(through), True)]
    cuts.append((len(full), False))
    ids: list[int] = []
    labels: list[int] = []
    start = 0
    last_answer_end = None
    ends_turn = False
    for end, answer in cuts:
        if end <= start:
            continue
        piece = continuation_ids(tokenizer, ids, full[start:end]) if ids else \
            tokenizer.encode(full[start:end], add_special=False)
        ids += piece
        if answer:
            labels += piece
            last_answer_end = len(ids)
            ends_turn = any(t in tokenizer.stop_ids for t in piece)
        else:
            labels += [IGNORE] * len(piece)
        start = end
    if last_answer_end is not None and not ends_turn and tokenizer.eos_id is not None:
        ids.insert(last_answer_end, tokenizer.eos_id)
        labels.insert(last_answer_end, tokenizer.eos_id)
    return ids, labels


def build_sft(out: str | Path, tokenizer, template: ChatTemplate, paths: Sequence[str | Path], max_len: int = 1024,
              overflow: str = "truncate", val_fraction: float = 0.02, seed: int = 0, on_error: str = "skip",
              progress: bool = True) -> dict[str, Any]:
    """Writes ids.npy, labels.npy, offsets.npy, train.npy, val.npy and meta.json.
    overflow: "truncate" cuts samples longer than max_len, "drop" skips them (reported)."""
    from tqdm import tqdm

    if overflow not in ("truncate", "drop"):
        raise ValueError("overflow must be 'truncate' or 'drop'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_ids: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    sources = []
    truncated = 0
    for p in map(Path, paths):
        report = Report()
        for no, obj in tqdm(records(p, report, on_error), desc=p.name, unit="sample", disable=not progress):
            msgs = to_messages(obj)
            if isinstance(msgs, str):
                report.skip(p, no, msgs, on_error)
                continue
            ids, labels = encode_conversation(msgs, template, tokenizer)
            if len(ids) > max_len:
                if overflow == "drop":
                    report.skip(p, no, f"{len(ids)} tokens > max_len {max_len} (dropped)", on_error)
                    continue
                ids, labels = ids[:max_len], labels[:max_len]
                truncated += 1
            if all(v == IGNORE for v in labels[1:]):
                report.skip(p, no, "no answer token left within max_len", on_error)
                continue
            report.read += 1
            all_ids.append(np.asarray(ids, np.int32))
            all_labels.append(np.asarray(labels, np.int32))
        sources.append({"path": str(p), **report.summary()})
    if len(all_ids) < 2:
        raise ValueError("fewer than two usable samples")
    offsets = np.cumsum([0] + [len(a) for a in all_ids]).astype(np.int64)
    np.save(out / "ids.npy", np.concatenate(all_ids))
    np.save(out / "labels.npy", np.concatenate(all_labels))
    np.save(out / "offsets.npy", offsets)
    n = len(all_ids)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    np.save(out / "val.npy", np.sort(perm[:n_val]))
    np.save(out / "train.npy", perm[n_val:])
    meta = {"kind": "sft", "max_len": max_len, "template": template.name, "samples": n, "train_samples": n - n_val,
            "val_samples": n_val, "truncated": truncated, "tokens": int(offsets[-1]),
            "answer_tokens": int(sum(int((a != IGNORE).sum()) for a in all_labels)), "seed": seed,
            "sources": sources}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
    return meta


class SftSet:
    """``split[i]`` → (input ids, labels), variable length."""

    def __init__(self, folder: str | Path, split: str = "train") -> None:
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.index = np.load(folder / f"{split}.npy")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.index[i])
        a, b = self.offsets[k], self.offsets[k + 1]
        return np.asarray(self.ids[a:b], np.int64), np.asarray(self.labels[a:b], np.int64)
