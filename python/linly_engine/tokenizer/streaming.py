"""Detokenising one token at a time without ever printing half a character.

A Chinese character can be split over several byte tokens (SentencePiece byte fallback,
byte-level BPE), and SentencePiece drops the space of a word-initial piece when it
starts the decoded text. So the new text of each step is the difference between
decoding a short window that ends with the new token and the same window without the
tokens not yet shown; it is released only when it does not end in an incomplete UTF-8
sequence (which decodes to U+FFFD).
"""

from __future__ import annotations

from typing import Sequence

from linly_engine.tokenizer.base import Tokenizer

REPLACEMENT = "\ufffd"
CONTEXT = 4  # tokens of already-shown text kept in the window, for word-boundary spaces


class StreamDecoder:
    """Feed generated ids with ``push``; it returns the text ready to show (maybe "")."""

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int] = ()) -> None:
        self.tok = tokenizer
        self.ids: list[int] = [int(i) for i in context_ids[-CONTEXT:]]
        self.prefix = 0  # window start
        self.read = len(self.ids)  # ids before this are already shown

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        shown = self.tok.decode(self.ids[self.prefix:self.read])
        text = self.tok.decode(self.ids[self.prefix:])
        if len(text) <= len(shown) or text.endswith(REPLACEMENT):
            return ""  # nothing new yet, or a character still incomplete
        new = text[len(shown):]
        self.prefix = max(self.read, len(self.ids) - CONTEXT)
        self.read = len(self.ids)
        if self.prefix > 64:  # keep the list short in long generations
            drop = self.prefix - CONTEXT
            self.ids = self.ids[drop:]
            self.prefix -= drop
            self.read -= drop
        return new

    def flush(self) -> str:
        """Whatever is held back at the end (an incomplete character shows as U+FFFD)."""
        shown = self.tok.decode(self.ids[self.prefix:self.read])
        text = self.tok.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(shown):]
