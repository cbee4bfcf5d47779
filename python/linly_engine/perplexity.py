"""Perplexity, and how far a quantised model's distributions are from the f32 model's.

Protocol (``linly perplexity``): the text is tokenised once with the model's tokenizer,
BOS first, and cut into consecutive non-overlapping windows of ``ctx`` tokens; each
window is run from an empty cache. ``score="all"`` scores every predicted position of
every window; ``score="half"`` scores only the second half of each window, so every
scored token has at least ctx/2 tokens of context (llama.cpp's perplexity tool does
this). ppl = exp(mean negative log-likelihood over the scored positions).

Against a reference (the same checkpoint in f32, run by the engine), it also reports the
mean KL divergence KL(reference ‖ model) and the top-1 agreement over the same positions.
The same windows can be scored by transformers (``hf_perplexity``), so the two numbers
are comparable one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np


@dataclass
class Scores:
    ppl: float
    nll: float
    tokens: int  # scored positions
    kl: float | None = None
    top1_agreement: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def windows(ids: Sequence[int], ctx: int) -> list[list[int]]:
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    out = [list(ids[i:i + ctx]) for i in range(0, len(ids), ctx)]
    return [w for w in out if len(w) >= 2]


def first_scored(window_len: int, ctx: int, score: str) -> int:
    """Index of the first logit row scored in a window (row t predicts token t+1)."""
    if score == "all":
        return 0
    if score == "half":  # rows ctx/2 .. end, as llama.cpp's perplexity (a short last window: its last row)
        return min(ctx // 2, window_len - 2)
    raise ValueError("score must be 'all' or 'half'")


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def window_logits(run: Callable[[list[int]], np.ndarray], ids: Sequence[int], ctx: int,
                  score: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(log-probabilities [n, vocab], targets [n]) of the scored rows, window by window."""
    for w in windows(ids, ctx):
        logits = run(w)[:-1]  # row t predicts w[t+1]
        s = first_scored(len(w), ctx, score)
        yield log_softmax(logits[s:]), np.asarray(w[s + 1:], dtype=np.int64)


def engine_runner(model) -> Callable[[list[int]], np.ndarray]:
    def run(w: list[int]) -> np.ndarray:
        model.reset()
        return model.prefill(w, all_logits=True)
    return run


def hf_runner(model_dir, threads: int | None = None) -> Callable[[list[int]], np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(w: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([w])).logits[0].numpy()
    return run


def score(run: Callable[[list[int]], np.ndarray], ids: Sequence[int], ctx: int, mode: str = "all",
          reference: Callable[[list[int]], np.ndarray] | None = None, progress: bool = False) -> Scores:
    """Perplexity of ``run`` over ``ids`` (and KL / top-1 agreement against ``reference``)."""
    from tqdm import tqdm

    nll_sum, n, kl_sum, agree = 0.0, 0, 0.0, 0
    ref_iter = window_logits(reference, ids, ctx, mode) if reference else None
    total = len(windows(ids, ctx))
    for logp, targets in tqdm(window_logits(run, ids, ctx, mode), total=total, unit="window", disable=not progress):
        nll_sum -= float(logp[np.arange(len(targets)), targets].sum())
        n += len(targets)
        if ref_iter is not None:
            ref_logp, _ = next(ref_iter)
            kl_sum += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
            agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
    if n == 0:
        raise ValueError("nothing to score: the text is shorter than two tokens")
    nll = nll_sum / n
    return Scores(float(np.exp(nll)), nll, n, kl_sum / n if reference else None, agree / n if reference else None)
