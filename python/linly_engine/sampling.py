"""Choosing the next token from the logits.

Order, as in transformers' logits processors: penalties on the raw logits, then
temperature, then the top-k, top-p and min-p filters, then one draw. ``temperature=0``
is greedy (argmax after the penalties). Everything is vectorised numpy over the
vocabulary; the only sort is over the few hundred best candidates (top-p needs its
candidates in order; it sorts all of them only when those few hundred do not reach p).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

import numpy as np

NUCLEUS_PROBE = 512  # candidates sorted first for top-p; enough for p<=0.95 on a peaked distribution


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    repetition_penalty: >1 discourages tokens already seen (logit/p if positive, logit*p
    if not, once per distinct token). With ``repetition_penalty_range=0`` it covers the
    prompt and everything generated (transformers' form); with a range N only the last N
    tokens, and ``repetition_penalty_slope`` > 0 makes older tokens in that window count
    less (the windowed form Linly inherited from KoboldAI; Linly's default is 1.15 over
    1024 tokens, slope 0). presence_penalty / frequency_penalty: subtracted from the
    logits of generated tokens, once / once per occurrence (OpenAI's form).
    """

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1: off
    min_p: float = 0.05  # 0: off
    repetition_penalty: float = 1.0
    repetition_penalty_range: int = 0
    repetition_penalty_slope: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = [int(i) for i in self.stop_token_ids]
        checks = [
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (np.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0 (0 is greedy)"),
            (self.top_k >= 0, "top_k must be >= 0 (0 turns it off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (np.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.repetition_penalty_range >= 0, "repetition_penalty_range must be >= 0 (0: the whole sequence)"),
            (self.repetition_penalty_slope >= 0, "repetition_penalty_slope must be >= 0"),
            (np.isfinite(self.presence_penalty), "presence_penalty must be a number"),
            (np.isfinite(self.frequency_penalty), "frequency_penalty must be a number"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def updated(self, **overrides: Any) -> "SamplingParams":
        """A copy with the given fields changed (None values are ignored); unknown names
        raise TypeError naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


def repetition_penalties(history: np.ndarray, penalty: float, window: int, slope: float) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, penalty per id) for the repetition penalty over ``history``.

    In the windowed form each position of the window gets a penalty that rises from 1
    (oldest) to ``penalty`` (newest) along a curve of steepness ``slope`` (0: flat, all
    equal to ``penalty``); a token seen several times takes its newest position's."""
    if window:
        history = history[-window:]
    if history.size == 0:
        return history.astype(np.int64), np.empty(0, np.float32)
    if window and slope > 0:
        x = np.arange(window, dtype=np.float64) / max(window - 1, 1) * 2 - 1  # -1 (oldest) .. 1 (newest)
        curve = slope * x / (1 + np.abs(x) * (slope - 1))
        per_pos = 1 + (curve + 1) / 2 * (penalty - 1)
        per_pos = per_pos[-history.size:]
    else:
        per_pos = np.full(history.size, penalty)
    # newest occurrence wins: unique over the reversed history gives first-from-the-end
    rev = history[::-1]
    ids, first = np.unique(rev, return_index=True)
    return ids.astype(np.int64), per_pos[::-1][first].astype(np.float32)


class Sampler:
    """Draws tokens for one generation: holds the random state and the counts that the
    presence and frequency penalties need."""

    def __init__(self, params: SamplingParams, vocab_size: int) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.counts = np.zeros(vocab_size, np.int32)  # occurrences among the generated tokens

    def apply_penalties(self, logits: np.ndarray, history: np.ndarray) -> np.ndarray:
        """The logits after repetition, presence and frequency penalties (a new array).
        ``history``: the prompt and generated ids so far."""
        p = self.params
        out = np.array(logits, dtype=np.float32, copy=True)
        if p.repetition_penalty != 1.0:
            ids, pen = repetition_penalties(np.asarray(history, np.int64), p.repetition_penalty,
                                            p.repetition_penalty_range, p.repetition_penalty_slope)
            v = out[ids]
            out[ids] = np.where(v > 0, v / pen, v * pen)
        if p.presence_penalty or p.frequency_penalty:
            seen = np.flatnonzero(self.counts)
            out[seen] -= p.presence_penalty + p.frequency_penalty * self.counts[seen]
        return out

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) that survive temperature, top-k, top-p and min-p; the
        probabilities sum to 1."""
        p = self.params
        ids = np.arange(logits.size)
        z = logits.astype(np.float64) / p.temperature
        if 0 < p.top_k < z.size:
            ids = np.argpartition(z, -p.top_k)[-p.top_k:]
            z = z[ids]
        z = z - z.max()
        prob = np.exp(z)
        prob /= prob.sum()
        if p.top_p < 1.0:
            ids, prob = _nucleus(ids, prob, p.top_p)
        if p.min_p > 0:
            keep = prob >= p.min_p * prob.max()
            ids, prob = ids[keep], prob[keep]
        return ids, prob / prob.sum()

    def sample(self, logits: np.ndarray, history: Sequence[int] | np.ndarray) -> int:
        """The next token id. ``logits`` [vocab]; ``history`` the ids before it."""
        scores = self.apply_penalties(logits, np.asarray(history))
        if self.params.greedy:
            token = int(np.argmax(scores))
        else:
            ids, prob = self.candidates(scores)
            pick = int(np.searchsorted(np.cumsum(prob), self.rng.random() * prob.sum(), side="right"))
            token = int(ids[min(pick, ids.size - 1)])
        self.counts[token] += 1
        return token


def _nucleus(ids: np.ndarray, prob: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest set of most likely tokens whose mass reaches top_p (at least one)."""
    probe = prob.size
    if prob.size > NUCLEUS_PROBE:
        part = np.argpartition(prob, -NUCLEUS_PROBE)[-NUCLEUS_PROBE:]
        if prob[part].sum() >= top_p:  # the nucleus lies inside the probe: sort only that
            probe = NUCLEUS_PROBE
    order = (part[np.argsort(-prob[part], kind="stable")] if probe == NUCLEUS_PROBE and prob.size > NUCLEUS_PROBE
             else np.argsort(-prob, kind="stable"))
    cum = np.cumsum(prob[order])
    n = int(np.searchsorted(cum, top_p, side="left")) + 1  # first index where the mass reaches p
    keep = order[:min(n, order.size)]
    return ids[keep], prob[keep]
