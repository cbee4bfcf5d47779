"""Calibrated quantisation of a whole model, layer by layer.

For each layer: run the float layer on the calibration hidden states (which come out of
the already *quantised* previous layers, so each layer also corrects what came before),
search activation-aware scales and fold them in (``awq``), quantise every matrix
(``gptq``: error-compensating rounding; otherwise round-to-nearest with a range search
weighted by the inputs' second moments), then run the quantised layer to make the next
layer's inputs. The result is a checkpoint whose matrices are already in their target
group-wise format (plus rescaled norm weights), which ``write_packed`` stores as is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from linly_engine.calibrate import awq
from linly_engine.calibrate.gptq import dequantize, gptq, inverse_factor
from linly_engine.calibrate.groupwise import GROUP_SIZES, pack_rows, round_groups
from linly_engine.calibrate.reference import Layer, layer_forward, rms_norm, rope_tables
from linly_engine.formats.checkpoint import Checkpoint, Tensor

METHODS = ("awq+gptq", "gptq", "awq")


def calibration_sequences(ids: Sequence[int], n_seqs: int, seq_len: int, bos: int | None) -> np.ndarray:
    """[S, T] token ids: windows of the calibration text spread evenly over it, each
    starting with BOS as a prompt would."""
    body = seq_len - (bos is not None)
    available = len(ids) // body
    if available < 1:
        raise ValueError(f"the calibration text has {len(ids)} tokens, fewer than one sequence of {seq_len}; "
                         "give a longer text (a few hundred sequences' worth is typical)")
    picks = np.linspace(0, available - 1, num=min(n_seqs, available)).round().astype(int)
    rows = [([bos] if bos is not None else []) + list(ids[p * body:(p + 1) * body]) for p in np.unique(picks)]
    return np.asarray(rows, dtype=np.int64)


def engine_rtn(w: np.ndarray, fmt: str) -> np.ndarray:
    """What the engine's own quantiser makes of ``w``, dequantised."""
    from linly_engine import _C

    return _C.dequantize(_C.quantize(np.ascontiguousarray(w, np.float32), fmt), fmt, w.shape[1]).reshape(w.shape)


class Calibrator:
    """Quantises ``ck``'s matrices to ``formats`` (name → format) with calibration data."""

    def __init__(self, ck: Checkpoint, formats: dict[str, str], method: str = "awq+gptq",
                 sample_rows: int = 1024, damp: float = 0.01) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        self.ck, self.formats, self.method = ck, formats, method
        self.sample_rows, self.damp = sample_rows, damp
        self.cfg = ck.config
        self.report: dict[str, Any] = {"method": method, "matrices": {}}

    def run(self, seqs: np.ndarray, progress: Callable[[str], None] | None = None) -> Checkpoint:
        cfg, ck = self.cfg, self.ck
        S, T = seqs.shape
        tensors = dict(ck.tensors)
        embed = ck.tensors["model.embed_tokens.weight"].to_f32()
        if seqs.max() >= embed.shape[0]:
            raise ValueError("calibration ids exceed the vocabulary: wrong tokenizer for this model?")
        x = embed[seqs].astype(np.float32)  # [S, T, dim]
        del embed
        cos, sin = rope_tables(cfg, T)
        self.sample = np.random.default_rng(0).choice(S * T, size=min(self.sample_rows, S * T), replace=False)
        for i in range(int(cfg["num_hidden_layers"])):
            L = Layer.from_checkpoint(ck, i)
            _, act = layer_forward(x, L, cfg, cos, sin, keep=True)
            if "awq" in self.method:
                self._scale(i, L, act)
            Lq = self._quantise(i, L, act, tensors)
            x, _ = layer_forward(x, Lq, cfg, cos, sin)
            prefix = f"model.layers.{i}."
            tensors[prefix + Layer.NAMES["attn_norm"]] = Tensor(L.attn_norm, "f32", L.attn_norm.shape)
            tensors[prefix + Layer.NAMES["ffn_norm"]] = Tensor(L.ffn_norm, "f32", L.ffn_norm.shape)
            if L.bv is not None:
                tensors[prefix + Layer.NAMES["bv"]] = Tensor(L.bv, "f32", L.bv.shape)
            if progress:
                progress(f"layer {i}")
        self._head(x, tensors)
        if progress:
            progress("head")
        return Checkpoint(dict(cfg), tensors, ck.source, {**ck.metadata, "calibration": self.report})

    # --- activation-aware scales -----------------------------------------------------
    def _scale(self, i: int, L: Layer, act) -> None:
        cfg = self.cfg
        H, KV, hd = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"]), int(cfg["head_dim"])
        name = lambda attr: f"model.layers.{i}.{Layer.NAMES[attr]}"

        def search(x, attrs, tie=None):
            fmts = [self.formats[name(a)] for a in attrs]
            group = GROUP_SIZES.get(fmts[0], 32)
            if x.shape[1] % group:  # no block structure to be aware of: leave these unscaled
                return np.ones(x.shape[1], np.float32)

            def quantize(w):  # each matrix with its own format
                out, row = [], 0
                for a, f in zip(attrs, fmts):
                    n = getattr(L, a).shape[0]
                    out.append(engine_rtn(w[row:row + n], f))
                    row += n
                return np.concatenate(out, axis=0)

            s, err, base = awq.search_scales(x[self.sample], np.abs(x).mean(axis=0), [getattr(L, a) for a in attrs],
                                             quantize, group, tie)
            self.report["matrices"].setdefault(name(attrs[0]), {})["awq_error_ratio"] = err / base if base else 1.0
            return s

        s = search(act.attn_in, ("wq", "wk", "wv"))
        L.attn_norm = L.attn_norm / s
        for a in ("wq", "wk", "wv"):
            setattr(L, a, getattr(L, a) * s[None, :])
        act.attn_in /= s

        s = search(act.o_in, ("wo",), awq.gqa_tie(H, KV, hd))
        sv = awq.value_row_scales(s, H, KV, hd)
        L.wv = L.wv / sv[:, None]
        if L.bv is not None:
            L.bv = L.bv / sv
        L.wo = L.wo * s[None, :]
        act.o_in /= s

        s = search(act.ffn_in, ("w_gate", "w_up"))
        L.ffn_norm = L.ffn_norm / s
        L.w_gate, L.w_up = L.w_gate * s[None, :], L.w_up * s[None, :]
        act.ffn_in /= s

        s = search(act.down_in, ("w_down",))
        L.w_up = L.w_up / s[:, None]
        L.w_down = L.w_down * s[None, :]
        act.down_in /= s

    # --- rounding ------------------------------------------------------------------------
    def _quantise(self, i: int, L: Layer, act, tensors: dict[str, Tensor]) -> Layer:
        inputs = {"wq": act.attn_in, "wk": act.attn_in, "wv": act.attn_in, "wo": act.o_in,
                  "w_gate": act.ffn_in, "w_up": act.ffn_in, "w_down": act.down_in}
        hessians: dict[int, np.ndarray] = {}
        dequantised = {}
        for attr in Layer.MATRICES:
            name = f"model.layers.{i}.{Layer.NAMES[attr]}"
            x = inputs[attr]
            if id(x) not in hessians:  # float32 products, float64 from here on (the inverse needs it)
                h = (x.T @ x).astype(np.float64)
                hessians[id(x)] = (h, inverse_factor(h, self.damp) if "gptq" in self.method else None)
            h, factor = hessians[id(x)]
            tensor, wq = self._quantise_matrix(name, getattr(L, attr), h, x[self.sample], factor)
            tensors[name] = tensor
            dequantised[attr] = wq
        return replace(L, **dequantised)

    def _quantise_matrix(self, name: str, w: np.ndarray, h: np.ndarray, x_sample: np.ndarray, factor=None):
        fmt = self.formats[name]
        n, k = w.shape
        group = GROUP_SIZES.get(fmt)
        if group is None or k % group:  # a format calibration doesn't round itself: the engine's RTN, at write
            from linly_engine import _C

            fits = k % _C.format_info(fmt)["block_elems"] == 0
            return Tensor(np.ascontiguousarray(w, np.float32), "f32", (n, k)), engine_rtn(w, fmt) if fits else w
        if "gptq" in self.method:
            codes, d, z = gptq(w, factor if factor is not None else h, group, self.damp, search=True)
        else:  # awq alone: round to nearest, each group's range searched against the inputs' second moments
            codes, d, z = round_groups(w, group, np.diag(h).astype(np.float32), search=True)
        wq = dequantize(codes, d, z, group)
        rtn_err = float(np.mean(np.square(x_sample @ (engine_rtn(w, fmt) - w).T)))
        err = float(np.mean(np.square(x_sample @ (wq - w).T)))
        power = float(np.mean(np.square(x_sample @ w.T))) or 1.0
        entry = self.report["matrices"].setdefault(name, {})
        entry.update(fmt=fmt, rel_error=err / power, rel_error_rtn=rtn_err / power)
        return Tensor(pack_rows(codes, d, z, group), fmt, (n, k), "rows"), wq

    def _head(self, x: np.ndarray, tensors: dict[str, Tensor]) -> None:
        name = "lm_head.weight"
        fmt = self.formats.get(name)
        if fmt not in GROUP_SIZES:
            return
        tied = self.ck.tensors.get(name) is self.ck.tensors.get("model.embed_tokens.weight")
        h = rms_norm(x, self.ck.tensors["model.norm.weight"].to_f32(), float(self.cfg["rms_norm_eps"]))
        h = h.reshape(-1, h.shape[-1])
        tensor, _ = self._quantise_matrix(name, self.ck.tensors[name].to_f32(), (h.T @ h).astype(np.float64),
                                          h[self.sample])
        tensors[name] = tensor
        if tied:
            tensors["model.embed_tokens.weight"] = tensor  # one matrix, stored once
