"""Hugging Face GPTQ and AWQ checkpoints, imported into the group-wise 4-bit format
(``q4_gG``) without dequantising: the integer codes, fp16 scales and integer zero points
are moved as they are, so the engine computes exactly the weights the checkpoint defines.

What the two formats store for a linear layer W [N out, K in] with group size g:

- **GPTQ** (AutoGPTQ / GPTQModel, ``quant_method: gptq``): ``qweight`` int32 [K/8, N],
  eight codes per word along K, code j of word i in bits 4j..4j+3 (element 8i + j);
  ``qzeros`` int32 [K/g, N/8], eight zero points per word along N, same bit order;
  ``scales`` fp16 [K/g, N]; optional ``g_idx`` int32 [K] (input channel → group).
  Weight = scale · (code − zero), where the stored zero is zero − 1 in the original
  format (``checkpoint_format: gptq``, AutoGPTQ's long-standing offset) and the zero
  itself in ``gptq_v2``.
- **AWQ** (AutoAWQ GEMM kernels, ``quant_method: awq``, ``version: gemm``): ``qweight``
  int32 [K, N/8] and ``qzeros`` int32 [K/g, N/8], eight values per word along N in the
  interleaved order 0, 2, 4, 6, 1, 3, 5, 7 (nibble i holds column 8c + ORDER[i]);
  ``scales`` fp16 [K/g, N]. Weight = scale · (code − zero).

A group of g = 32·2^j inputs maps to q4_g groups of min(g, 128) (a larger group repeats
its scale and zero point in each). Not supported, with a clear error: bit widths other
than 4, AWQ's GEMV packing, groups that are not a multiple of 32.

Act-order (``desc_act``) checkpoints, whose ``g_idx`` scatters each group over the
inputs, are stored with their columns sorted by group (every group a contiguous run, as
the format needs) plus the permutation; the matrix gathers its inputs in that order
before multiplying (``Tensor.input_order``, ``PackedMatrix.set_input_order``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linly_engine.calibrate.groupwise import pack_rows
from linly_engine.formats.checkpoint import Tensor
from linly_engine.formats.hf import CheckpointError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a packed word holds column 8c + AWQ_ORDER[i]


class QuantizedCheckpointError(CheckpointError):
    """A GPTQ/AWQ checkpoint variant this engine can't import, with what to do instead."""


def nibbles(words: np.ndarray) -> np.ndarray:
    """int32 [..., w] → uint8 [..., w, 8]: nibble j of each word (bits 4j..4j+3)."""
    u = np.asarray(words).astype(np.int64) & 0xFFFFFFFF  # int32 bit patterns, sign ignored
    return ((u[..., None] >> (4 * np.arange(8))) & 0xF).astype(np.uint8)


def unpack_gptq(qweight: np.ndarray, qzeros: np.ndarray, v1_offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """codes [K, N], zeros [K/g, N] of a GPTQ layer (zeros with the v1 +1 applied)."""
    k8, n = qweight.shape
    codes = nibbles(qweight).transpose(0, 2, 1).reshape(k8 * 8, n)  # word i, nibble j → row 8i + j
    zeros = nibbles(qzeros).reshape(qzeros.shape[0], -1).astype(np.int16)
    return codes, zeros + 1 if v1_offset else zeros


def unpack_awq(qweight: np.ndarray, qzeros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """codes [K, N], zeros [K/g, N] of an AWQ (GEMM) layer."""
    def columns(words: np.ndarray) -> np.ndarray:
        nib = nibbles(words)  # [rows, N/8, 8]: nibble i is column ORDER[i] of the eight
        out = np.empty_like(nib)
        out[..., list(AWQ_ORDER)] = nib
        return out.reshape(words.shape[0], -1)
    return columns(qweight), columns(qzeros).astype(np.int16)


def import_layer(kind: str, parts: dict[str, np.ndarray], group: int, v1_offset: bool, name: str) -> Tensor:
    """One linear layer as a q4_g Tensor [N, K]."""
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    if scales.dtype != np.float16:
        raise QuantizedCheckpointError(f"{name}: scales are {scales.dtype}, not float16; the group-wise format "
                                       "stores fp16 scales, so this checkpoint can't be imported exactly")
    if kind == "gptq":
        codes, zeros = unpack_gptq(qweight, qzeros, v1_offset)
    else:
        codes, zeros = unpack_awq(qweight, qzeros)
    k, n = codes.shape
    if group <= 0:
        group = k  # per-channel: one group spanning the row
    if scales.shape != (k // group, n) or zeros.shape[0] != k // group or zeros.shape[1] < n or k % group:
        raise QuantizedCheckpointError(f"{name}: qweight {list(qweight.shape)}, qzeros {list(qzeros.shape)} and "
                                       f"scales {list(scales.shape)} don't agree with group size {group}; "
                                       "the checkpoint or its config is inconsistent")
    g_idx = parts.get("g_idx")
    order = None
    if g_idx is not None and not np.array_equal(np.asarray(g_idx).astype(np.int64), np.arange(k) // group):
        # Act-order: stored columns sorted by group make every group a contiguous run;
        # the matrix then reads its inputs through that order (PackedMatrix.set_input_order).
        g_idx = np.asarray(g_idx).astype(np.int64)
        if g_idx.shape != (k,) or g_idx.min() < 0 or np.bincount(g_idx, minlength=k // group).max() != group \
                or g_idx.max() >= k // group:
            raise QuantizedCheckpointError(f"{name}: g_idx does not assign exactly {group} inputs to each of the "
                                           f"{k // group} groups; the checkpoint is inconsistent")
        order = np.argsort(g_idx, kind="stable").astype(np.int32)
        codes = codes[order]
    if zeros.max(initial=0) > 255:
        raise QuantizedCheckpointError(f"{name}: zero point out of range")
    sub = next(s for s in (128, 64, 32) if group % s == 0)
    reps = group // sub
    d = np.repeat(scales.astype(np.float32).T, reps, axis=1)          # [N, K/sub]
    z = np.repeat(zeros[:, :n].T, reps, axis=1).astype(np.uint8)      # [N, K/sub]
    return Tensor(pack_rows(codes.T, d, z, sub), f"q4_g{sub}", (n, k), "rows", order)


def import_quantized(tensors: dict[str, Tensor], qcfg: dict[str, Any], source: str) -> dict[str, Tensor]:
    """Replaces each layer's qweight/qzeros/scales/g_idx by one ``.weight`` q4_g tensor."""
    kind = str(qcfg.get("quant_method", "")).lower()
    if kind not in ("gptq", "awq"):
        raise QuantizedCheckpointError(f"{source}: quantization method {kind or '?'!r} is not supported "
                                       "(GPTQ and AWQ are); give the unquantised checkpoint instead")
    bits = int(qcfg.get("bits", qcfg.get("w_bit", 4)))
    if bits != 4:
        raise QuantizedCheckpointError(f"{source}: {bits}-bit {kind.upper()} is not supported (4-bit is)")
    group = int(qcfg.get("group_size", qcfg.get("q_group_size", 128)))
    if group > 0 and group % 32:
        raise QuantizedCheckpointError(f"{source}: group size {group} is not a multiple of 32")
    if kind == "awq":
        version = str(qcfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise QuantizedCheckpointError(f"{source}: AWQ '{version}' packing is not supported (GEMM is)")
        if not qcfg.get("zero_point", True):
            raise QuantizedCheckpointError(f"{source}: AWQ without zero points is not supported")
    v1_offset = kind == "gptq" and str(qcfg.get("checkpoint_format", "gptq")).lower() != "gptq_v2"
    out = dict(tensors)
    prefixes = sorted({n[:-len(".qweight")] for n in tensors if n.endswith(".qweight")})
    for prefix in prefixes:
        parts = {}
        for part in ("qweight", "qzeros", "scales", "g_idx"):
            t = out.pop(f"{prefix}.{part}", None)
            if t is not None:
                parts[part] = np.asarray(t.array)
        missing = {"qweight", "qzeros", "scales"} - set(parts)
        if missing:
            raise QuantizedCheckpointError(f"{source}: {prefix} lacks {', '.join(sorted(missing))}")
        out[f"{prefix}.weight"] = import_layer(kind, parts, group, v1_offset, prefix)
    return out
