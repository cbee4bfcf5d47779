"""Activation-aware scaling (AWQ, Lin et al., 2023).

A few input channels carry much larger activations than the rest, and the weights that
meet them matter most. Multiplying those weight columns by s > 1 (and the inputs by 1/s,
folded into whatever produces them: an RMSNorm weight or the previous matrix's rows)
leaves the float function unchanged but shrinks their relative rounding error. The
scales are s = x̄^α / w̄^(1−α) (x̄: mean |input| per channel, w̄: mean of each weight's
magnitude relative to its group's maximum), with α chosen on a grid by the error of the
quantised block's output on calibration inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

GRID = 20  # α = 0, 1/20, …, 19/20, as the paper's search


def weight_magnitude(w: np.ndarray, group: int) -> np.ndarray:
    """w̄ [k]: per input channel, the mean over rows of |w| / max |w| of its group."""
    n, k = w.shape
    g = np.abs(w).reshape(n, k // group, group)
    rel = g / np.maximum(g.max(axis=2, keepdims=True), 1e-12)
    return rel.reshape(n, k).mean(axis=0)


def search_scales(x: np.ndarray, x_mean: np.ndarray, weights: Sequence[np.ndarray],
                  quantize: Callable[[np.ndarray], np.ndarray], group: int,
                  tie: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, float, float]:
    """The per-channel scales s [k] for matrices ``weights`` (each [n_i, k]) that read the
    same inputs ``x`` [m, k] (a sample of calibration rows); ``x_mean`` [k] is mean |x|
    over all calibration rows; ``quantize`` maps a float matrix to its dequantised
    quantised version. ``tie`` (optional) projects a scale vector onto the ones the
    producer of ``x`` can absorb (for grouped-query attention, channels that share a
    value row must share a scale).

    Returns (s, error with s, error with s = 1): mean squared output error of the
    quantised matrices on ``x``. s = 1 (α = 0 with w̄ ignored) is always a candidate, so
    the search never does worse than plain rounding on this sample."""
    w = np.concatenate(weights, axis=0).astype(np.float32)
    w_mean = weight_magnitude(w, group)

    def error(s: np.ndarray) -> float:
        delta = quantize(w * s[None, :]) / s[None, :] - w
        return float(np.mean(np.square(x @ delta.T)))

    ones = np.ones(w.shape[1], np.float32)
    base = error(ones)
    best_s, best = ones, base
    for i in range(1, GRID):
        alpha = i / GRID
        s = (np.power(np.maximum(x_mean, 1e-8), alpha) / (np.power(w_mean, 1 - alpha) + 1e-4)).astype(np.float32)
        s = np.maximum(s, 1e-4)
        s = s / np.sqrt(s.max() * s.min())  # centre the scales around 1: f16 scales stay in range
        if tie is not None:
            s = tie(s)
        e = error(s)
        if e < best:
            best, best_s = e, s
    return best_s, best, base


def gqa_tie(n_heads: int, n_kv_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """For o_proj's input (the attention output, [heads · head_dim]): the value row a
    channel comes from is shared by ``n_heads / n_kv_heads`` heads, so a scale folded into
    that row must be the same for all of them. Averages in log space over the sharing heads."""
    group = n_heads // n_kv_heads

    def tie(s: np.ndarray) -> np.ndarray:
        logs = np.log(s).reshape(n_kv_heads, group, head_dim).mean(axis=1, keepdims=True)
        return np.exp(np.broadcast_to(logs, (n_kv_heads, group, head_dim))).reshape(-1).astype(np.float32)

    return tie


def value_row_scales(s_o: np.ndarray, n_heads: int, n_kv_heads: int, head_dim: int) -> np.ndarray:
    """The v_proj row scales [kv_heads · head_dim] that a tied o_proj scale vector implies."""
    return s_o.reshape(n_kv_heads, n_heads // n_kv_heads, head_dim)[:, 0, :].reshape(-1)
