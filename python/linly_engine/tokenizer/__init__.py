"""Tokenizers: SentencePiece ``.model``, Hugging Face ``tokenizer.json`` and GGUF
vocabularies behind one interface, plus UTF-8-safe streaming detokenisation."""

from __future__ import annotations

import json
from typing import Any

from linly_engine.tokenizer.base import Tokenizer, TokenizerError
from linly_engine.tokenizer.gguf_vocab import tokenizer_from_gguf_fields
from linly_engine.tokenizer.hf_json import HFTokenizer, parse_config
from linly_engine.tokenizer.spm import SentencePieceTokenizer
from linly_engine.tokenizer.streaming import StreamDecoder

__all__ = ["HFTokenizer", "SentencePieceTokenizer", "StreamDecoder", "Tokenizer", "TokenizerError",
           "load_tokenizer", "tokenizer_from_gguf_fields"]


def _chat_template(config: dict[str, Any], files: dict[str, bytes]) -> str | None:
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].decode("utf-8", errors="strict")
    t = config.get("chat_template")
    if isinstance(t, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) else None


def _generation_stop_ids(files: dict[str, bytes]) -> frozenset[int]:
    blob = files.get("generation_config.json")
    if not blob:
        return frozenset()
    try:
        eos = json.loads(blob).get("eos_token_id")
    except (ValueError, AttributeError):
        raise TokenizerError("generation_config.json is not a valid JSON object") from None
    eos = eos if isinstance(eos, list) else [eos]
    return frozenset(int(i) for i in eos if isinstance(i, int))


def load_tokenizer(files: dict[str, bytes], gguf_fields: dict[str, Any] | None = None) -> Tokenizer:
    """The tokenizer a model carries: ``tokenizer.json`` (what transformers uses when a
    folder has both), else ``tokenizer.model``, else the GGUF vocabulary."""
    config = parse_config(files.get("tokenizer_config.json"))
    template = _chat_template(config, files)
    tok: Tokenizer
    if "tokenizer.json" in files:
        tok = HFTokenizer.from_bytes(files["tokenizer.json"], config, chat_template=template)
    elif "tokenizer.model" in files:
        tok = SentencePieceTokenizer(files["tokenizer.model"], config, chat_template=template)
    elif gguf_fields and "tokenizer.ggml.tokens" in gguf_fields:
        tok = tokenizer_from_gguf_fields(gguf_fields)
    else:
        raise TokenizerError("the model carries no tokenizer (no tokenizer.json, tokenizer.model or GGUF vocabulary); "
                             "put the tokenizer files next to the checkpoint and convert again")
    tok.extra_stop_ids = _generation_stop_ids(files)
    return tok
