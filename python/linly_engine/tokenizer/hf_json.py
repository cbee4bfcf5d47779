"""Hugging Face ``tokenizer.json`` files, run by the ``tokenizers`` library.

The GGUF vocabularies are turned into the same kind of object (gguf_vocab.py), so one
class serves both.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from linly_engine.tokenizer.base import Tokenizer, TokenizerError


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    kind = "tokenizer.json"

    def __init__(self, backend, config: dict[str, Any] | None = None, *, bos_token: str | None = None,
                 eos_token: str | None = None, add_bos: bool | None = None, chat_template: str | None = None) -> None:
        """backend: a ``tokenizers.Tokenizer``; config: the parsed tokenizer_config.json."""
        config = config or {}
        self._tok = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token = bos_token or _token_text(config.get("bos_token"))
        self.eos_token = eos_token or _token_text(config.get("eos_token"))
        self.bos_id = self.token_id(self.bos_token) if self.bos_token else None
        self.eos_id = self.token_id(self.eos_token) if self.eos_token else None
        self.chat_template = chat_template
        # add_bos: True/False forces BOS on plain prompts; None leaves it to the file's
        # post-processor (how transformers' fast tokenizers behave).
        self._add_bos = add_bos if add_bos is not None else config.get("add_bos_token")
        self._special = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special) | frozenset(i for i in (self.bos_id, self.eos_id) if i is not None)

    @classmethod
    def from_bytes(cls, tokenizer_json: bytes, config: dict[str, Any] | None = None,
                   chat_template: str | None = None) -> "HFTokenizer":
        from tokenizers import Tokenizer as Backend

        try:
            backend = Backend.from_str(tokenizer_json.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception type for bad JSON
            raise TokenizerError(f"tokenizer.json is not a valid Hugging Face tokenizer ({e})") from None
        return cls(backend, config, chat_template=chat_template)

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    def token_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special).ids
        if add_special and self._add_bos is not None and self.bos_id is not None:
            has = bool(ids) and ids[0] == self.bos_id
            if self._add_bos and not has:
                ids = [self.bos_id] + ids
            elif not self._add_bos and has and not text.startswith(self.bos_token or "\0"):
                ids = ids[1:]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        self.check_ids(ids)
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)


def parse_config(blob: bytes | None) -> dict[str, Any]:
    if not blob:
        return {}
    try:
        cfg = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"tokenizer_config.json is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise TokenizerError("tokenizer_config.json must hold a JSON object")
    return cfg
