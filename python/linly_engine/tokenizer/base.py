"""What the engine needs from a tokenizer, whatever file it came from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence


class TokenizerError(ValueError):
    """A tokenizer file the engine cannot use; the message says what to do."""


class Tokenizer(ABC):
    """Text ⇄ token ids, plus the special tokens that templates and stopping need.

    ``encode(text)`` with ``add_special=True`` adds what the model expects around a plain
    prompt (usually BOS); a rendered chat template already contains its special tokens,
    so it is encoded with ``add_special=False`` (as transformers' ``apply_chat_template``
    does). Special-token text inside the string (``<|im_start|>``, ``<s>``) becomes the
    special token's id.
    """

    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str | None = None
    kind: str = "?"
    extra_stop_ids: frozenset[int] = frozenset()  # generation_config.json's eos_token_id list

    @abstractmethod
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens are left out unless ``skip_special`` is False."""

    @property
    @abstractmethod
    def special_ids(self) -> frozenset[int]:
        """Ids of control tokens (BOS, EOS, chat markers), never printed as text."""

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a generation: EOS, and the end-of-turn markers of common chat
        formats when the vocabulary has them (as llama.cpp's end-of-generation set)."""
        ids = set(self.extra_stop_ids) | ({self.eos_id} if self.eos_id is not None else set())
        for marker in END_OF_TURN:
            i = self.token_id(marker)
            if i is not None and i in self.special_ids:
                ids.add(i)
        return frozenset(ids)

    @abstractmethod
    def token_id(self, piece: str) -> int | None:
        """The id of a vocabulary piece (``"<|im_end|>"``), or None."""

    def check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "</s>")
