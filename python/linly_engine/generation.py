"""One sequence's path from logits to text: sample, end on a stop token, detokenise
without splitting characters, cut at stop strings, count. The single-sequence Engine
and the batching server both drive it, one step per forward pass."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from linly_engine.sampling import Sampler, SamplingParams
from linly_engine.stopping import StopStrings
from linly_engine.tokenizer import StreamDecoder, Tokenizer


class TokenStream:
    """``step(logits, history)`` → (token to run next or None when finished, text to show)."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams,
                 vocab_size: int, extra_stop: Sequence[str] = ()) -> None:
        self.params = params
        self.sampler = Sampler(params, vocab_size)
        self.stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else tokenizer.stop_ids)
        self.stops = StopStrings(list(params.stop) + list(extra_stop))
        self.detok = StreamDecoder(tokenizer, prompt_ids)
        self.generated = 0
        self.finish_reason: str | None = None if params.max_new_tokens > 0 else "length"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def step(self, logits: np.ndarray, history: Sequence[int]) -> tuple[int | None, str]:
        """Samples from ``logits`` (``history``: the ids before it, for the repetition
        penalty). Returns the token the model must run next (None when this sequence has
        finished) and the text that became ready."""
        p = self.params
        token = self.sampler.sample(logits, history if p.repetition_penalty != 1.0 else ())
        if token in self.stop_ids:
            return None, self.end("stop")
        self.generated += 1
        text, hit = self.stops.feed(self.detok.push(token))
        if hit:
            self.finish_reason = "stop"
            return None, text
        if self.generated >= p.max_new_tokens:
            return None, text + self.end("length")
        return token, text

    def end(self, reason: str) -> str:
        """Finishes the sequence (``reason``: "stop", "length", ...) and returns the text
        still held back (an incomplete character, a possible stop string's start)."""
        self.finish_reason = reason
        if self.stops.stopped:
            return ""
        tail, hit = self.stops.feed(self.detok.flush())
        if hit:
            self.finish_reason = "stop"
            return tail
        return tail + self.stops.flush()
