"""The canonical form every loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Tensor:
    """One weight as it lies in the source: a float array (f32/f16, or bf16 kept as its
    uint16 bits) or already-packed rows of an engine format."""

    array: np.ndarray
    fmt: str  # "f32" | "f16" | "bf16" | "q4_0" | "q4_1" | "q8_0" | "q4_g32" | ...
    shape: tuple[int, ...]  # logical shape: (n, k) for matrices, (n,) for vectors
    layout: str = "rows"  # "rows": on-disk rows of blocks; "panel16": the kernels' layout (panel.h)
    # act-order (GPTQ desc_act) matrices: stored column j multiplies input input_order[j]
    input_order: np.ndarray | None = None

    def to_f32(self) -> np.ndarray:
        """The weight as float32 of its logical shape (dequantising if needed)."""
        from linly_engine import _C

        if self.fmt == "f32":
            return np.ascontiguousarray(self.array, dtype=np.float32).reshape(self.shape)
        if self.fmt == "f16":
            return np.asarray(self.array, dtype=np.float16).astype(np.float32).reshape(self.shape)
        if self.fmt == "bf16":
            bits = np.asarray(self.array).view(np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32).reshape(self.shape)
        w = _C.dequantize(self.row_bytes(), self.fmt, self.shape[-1]).reshape(self.shape)
        if self.input_order is not None:  # back to the inputs' order
            out = np.empty_like(w)
            out[:, self.input_order] = w
            return out
        return w

    def row_bytes(self) -> np.ndarray:
        """The weight as uint8 [n, bytes_per_row] in the on-disk row layout."""
        from linly_engine import _C

        rows = self.shape[0] if len(self.shape) == 2 else 1
        raw = np.ascontiguousarray(self.array).view(np.uint8)
        if self.layout == "panel16":
            return _C.unpack_panels(raw.reshape(-1), self.fmt, rows, self.shape[-1])
        return raw.reshape(rows, -1)


@dataclass
class Checkpoint:
    """Config (native decoder keys), canonical tensors, and where they came from."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
