"""SentencePiece ``.model`` files (LLaMA, Linly, Chinese-LLaMA-2), run by ``sentencepiece``.

sentencepiece itself treats ``<s>`` in a string as plain text; transformers and
llama.cpp parse special-token text into the token. So the text is split on the special
tokens first and each piece between them is encoded on its own, which is what Meta's
LLaMA-2 chat code and transformers' legacy LLaMA tokenizer do.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from linly_engine.tokenizer.base import Tokenizer, TokenizerError
from linly_engine.tokenizer.hf_json import _token_text


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, config: dict[str, Any] | None = None,
                 chat_template: str | None = None) -> None:
        import sentencepiece

        config = config or {}
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # RuntimeError / OSError depending on the version
            raise TokenizerError(f"tokenizer.model is not a SentencePiece model ({e})") from None
        n = self._sp.get_piece_size()
        # Tokens added on top of the .model (tokenizer_config.json's added_tokens_decoder):
        # id -> (text, special).
        self._added: dict[int, tuple[str, bool]] = {}
        for key, tok in (config.get("added_tokens_decoder") or {}).items():
            text = _token_text(tok)
            if text is not None and str(key).isdigit():
                self._added[int(key)] = (text, bool(tok.get("special", True)) if isinstance(tok, dict) else True)
        self.vocab_size = max([n] + [i + 1 for i in self._added])
        control = {i for i in range(n) if self._sp.is_control(i)}
        # Text that must become one token: control pieces, user-defined added tokens.
        literal = {self._sp.id_to_piece(i): i for i in control if self._sp.id_to_piece(i)}
        literal.update({t: i for i, (t, _) in self._added.items()})
        self._literal = literal
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(literal, key=len, reverse=True)) + ")") \
            if literal else None
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        self.bos_token = _token_text(config.get("bos_token")) or (self._sp.id_to_piece(bos) if bos >= 0 else None)
        self.eos_token = _token_text(config.get("eos_token")) or (self._sp.id_to_piece(eos) if eos >= 0 else None)
        self.bos_id = self.token_id(self.bos_token) if self.bos_token else None
        self.eos_id = self.token_id(self.eos_token) if self.eos_token else None
        self.chat_template = chat_template
        self._add_bos = bool(config.get("add_bos_token", True))
        self._add_eos = bool(config.get("add_eos_token", False))
        self._special = frozenset(control | {i for i, (_, sp) in self._added.items() if sp} |
                                  {i for i in (self.bos_id, self.eos_id) if i is not None})

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    def token_id(self, piece: str) -> int | None:
        if piece in self._literal:
            return self._literal[piece]
        i = self._sp.piece_to_id(piece)
        return i if i != self._sp.unk_id() or piece == self._sp.id_to_piece(self._sp.unk_id()) else None

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids: list[int] = []
        parts = self._split.split(text) if self._split else [text]
        for k, part in enumerate(parts):
            if k % 2:  # the separators captured by the split: special-token text
                ids.append(self._literal[part])
            elif part:
                ids.extend(self._sp.encode(part))
        if add_special:
            if self._add_bos and self.bos_id is not None and not (ids and ids[0] == self.bos_id):
                ids.insert(0, self.bos_id)
            if self._add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        self.check_ids(ids)
        n = self._sp.get_piece_size()
        out: list[str] = []
        run: list[int] = []  # consecutive ordinary ids decode together (byte pieces join into characters)
        for i in map(int, ids):
            if i < n and i not in self._special:
                run.append(i)
                continue
            if run:
                out.append(self._sp.decode(run))
                run = []
            if not skip_special:
                out.append(self._added[i][0] if i in self._added else self._sp.id_to_piece(i))
            elif i in self._added and not self._added[i][1]:
                out.append(self._added[i][0])
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)
