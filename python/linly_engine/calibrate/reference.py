"""The decoder in numpy float32, one layer at a time: calibration has to see the inputs
of every matrix, which the native decoder keeps to itself. Same arithmetic as
csrc/model/llama.cpp (HF conventions: rotate-half rotary, RMSNorm with weight after the
scale); speed is not the point, so it batches whole sequences through numpy's BLAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from linly_engine.formats.checkpoint import Checkpoint


def inverse_frequencies(cfg: dict[str, Any]) -> np.ndarray:
    """Rotary inverse frequencies with linear or llama3 scaling (as the native decoder)."""
    hd = int(cfg["head_dim"])
    inv = (1.0 / np.power(np.float32(cfg["rope_theta"]),
                          np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))).astype(np.float32)
    s = cfg.get("rope_scaling") or {}
    kind = s.get("rope_type")
    if kind == "linear":
        inv = inv / np.float32(s["factor"])
    elif kind == "llama3":
        old = float(s["original_max_position_embeddings"])
        low_wl, high_wl = old / s["low_freq_factor"], old / s["high_freq_factor"]
        wavelen = 2 * np.pi / inv
        smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        blended = (1 - smooth) * inv / s["factor"] + smooth * inv
        inv = np.where(wavelen > low_wl, inv / s["factor"], np.where(wavelen >= high_wl, blended, inv))
    return inv.astype(np.float32)


def rope_tables(cfg: dict[str, Any], length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [length, head_dim/2]."""
    angle = np.arange(length, dtype=np.float32)[:, None] * inverse_frequencies(cfg)[None, :]
    return np.cos(angle.astype(np.float64)).astype(np.float32), np.sin(angle.astype(np.float64)).astype(np.float32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * weight


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [S, T, heads, hd]; element i pairs with i + hd/2 (HF rotate_half)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q [S, T, H, hd], k/v [S, T, KV, hd] → [S, T, H·hd], causal, grouped-query.

    Hundreds of small products (one per sequence and KV head): OpenBLAS's threads cost more
    than they bring at this size (15× slower here with 2 threads on a busy machine), so
    these run on one BLAS thread."""
    from threadpoolctl import threadpool_limits

    S, T, H, hd = q.shape
    KV = k.shape[2]
    G = H // KV
    with threadpool_limits(1, user_api="blas"):
        qg = np.ascontiguousarray(q.reshape(S, T, KV, G, hd).transpose(0, 2, 3, 1, 4)).reshape(S, KV, G * T, hd)
        scores = np.matmul(qg, np.ascontiguousarray(k.transpose(0, 2, 3, 1))).reshape(S, KV, G, T, T)
        scores *= np.float32(1.0 / np.sqrt(hd))
        scores[..., ~np.tril(np.ones((T, T), bool))] = -np.inf
        scores -= scores.max(-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(-1, keepdims=True)
        out = np.matmul(scores.reshape(S, KV, G * T, T), np.ascontiguousarray(v.transpose(0, 2, 1, 3)))
    return out.reshape(S, KV, G, T, hd).transpose(0, 3, 1, 2, 4).reshape(S, T, H * hd)


@dataclass
class Layer:
    """One decoder layer's float weights (the calibration works on and edits these)."""

    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None

    MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    NAMES = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
             "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
             "ffn_norm": "post_attention_layernorm.weight", "w_gate": "mlp.gate_proj.weight",
             "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight", "bq": "self_attn.q_proj.bias",
             "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias"}

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint, index: int) -> "Layer":
        prefix = f"model.layers.{index}."
        found = {}
        for attr, name in cls.NAMES.items():
            t = ck.tensors.get(prefix + name)
            found[attr] = None if t is None else np.array(t.to_f32(), dtype=np.float32)
        return cls(**found)


@dataclass
class Activations:
    """The inputs each matrix of a layer reads, for S sequences of T tokens (rows S·T)."""

    attn_in: np.ndarray   # [S·T, dim]   q/k/v input (after the attention RMSNorm)
    o_in: np.ndarray      # [S·T, H·hd]  o_proj input (attention output)
    ffn_in: np.ndarray    # [S·T, dim]   gate/up input (after the MLP RMSNorm)
    down_in: np.ndarray   # [S·T, ffn]   down_proj input (SwiGLU output)


def layer_forward(x: np.ndarray, L: Layer, cfg: dict[str, Any], cos: np.ndarray, sin: np.ndarray,
                  keep: bool = False) -> tuple[np.ndarray, Activations | None]:
    """x [S, T, dim] → the layer's output (and, with ``keep``, every matrix's input)."""
    S, T, dim = x.shape
    H, KV, hd = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"]), int(cfg["head_dim"])
    eps = float(cfg["rms_norm_eps"])
    h = rms_norm(x, L.attn_norm, eps).reshape(S * T, dim)
    q, k, v = h @ L.wq.T, h @ L.wk.T, h @ L.wv.T
    if L.bq is not None:
        q, k, v = q + L.bq, k + L.bk, v + L.bv
    q = apply_rope(q.reshape(S, T, H, hd), cos[:T], sin[:T])
    k = apply_rope(k.reshape(S, T, KV, hd), cos[:T], sin[:T])
    a = causal_attention(q, k, v.reshape(S, T, KV, hd)).reshape(S * T, H * hd)
    x = x + (a @ L.wo.T).reshape(S, T, dim)
    f = rms_norm(x, L.ffn_norm, eps).reshape(S * T, dim)
    g = f @ L.w_gate.T
    m = (g / (1.0 + np.exp(-g))) * (f @ L.w_up.T)
    x = x + (m @ L.w_down.T).reshape(S, T, dim)
    return x, (Activations(h, a, f, m) if keep else None)
