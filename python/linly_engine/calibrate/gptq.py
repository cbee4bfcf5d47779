"""GPTQ: rounding that compensates its own error (Frantar et al., 2022).

Quantising one input column of W adds an output error X·Δwᵀ. GPTQ rounds the columns in
order and, after each, moves the rounding error onto the columns not yet rounded in the
proportions that minimise ‖X·(W − Q)ᵀ‖² given the input statistics H = XᵀX (the
optimal-brain-surgeon update, with H⁻¹ kept as its Cholesky factor). Group parameters
(scale, zero point) are fitted when the rounding reaches a group, on the columns as
updated by then, so they see the compensation they will have to carry.
"""

from __future__ import annotations

import numpy as np

from linly_engine.calibrate.groupwise import fit_groups, quantize_codes

BLOCK = 128  # columns updated together; the lazy batch of the paper (a multiple of every group size)


def inverse_factor(h: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, diag H, dead) for inputs with second moments ``h`` [k, k]: U is the upper
    Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, row i holding column i's update
    coefficients; ``dead`` marks inputs that never fire (their weights don't matter).
    Matrices that read the same inputs share it."""
    k = h.shape[0]
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    u = np.linalg.cholesky(np.linalg.inv(h)).T.astype(np.float32)
    return u, np.diag(h).astype(np.float32), dead


def gptq(w: np.ndarray, h: np.ndarray | tuple, group: int, damp: float = 0.01,
         search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantises ``w`` [n, k] for inputs with second moments ``h`` [k, k] (XᵀX).

    ``h`` may also be `inverse_factor`'s result, computed once for matrices sharing inputs.
    Returns codes [n, k] (uint8, 0..15), scales d and zero points z [n, k/group]; the
    dequantised weight is ``d · (codes − z)`` group by group. ``damp`` adds that fraction
    of the mean diagonal to H (the paper's 1 %: keeps the inverse well conditioned);
    ``search`` fits each group's range to least weighted squared error (groupwise.py)."""
    n, k = w.shape
    if k % group or BLOCK % group:
        raise ValueError(f"k = {k} must be a multiple of the group size {group}, and {BLOCK} too")
    u, diag_h, dead = h if isinstance(h, tuple) else inverse_factor(h, damp)
    w = np.array(w, dtype=np.float32)  # updated in place as errors are moved onto it
    w[:, dead] = 0.0

    codes = np.zeros((n, k), np.uint8)
    d_all = np.zeros((n, k // group), np.float32)
    z_all = np.zeros((n, k // group), np.float32)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        wb = w[:, b0:b1]  # a view: updates land in w
        err = np.zeros((n, b1 - b0), np.float32)
        for i in range(b1 - b0):
            col = b0 + i
            if col % group == 0:
                gi = col // group
                d_all[:, gi], z_all[:, gi] = fit_groups(wb[:, i:i + group], diag_h[col:col + group], search)
            gi = col // group
            d, z = d_all[:, gi], z_all[:, gi]
            q = quantize_codes(wb[:, i:i + 1], d, z)[:, 0]
            codes[:, col] = q
            e = (wb[:, i] - d * (q - z)) / u[col, col]
            wb[:, i:] -= np.outer(e, u[col, col:b1])
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return codes, d_all, z_all


def dequantize(codes: np.ndarray, d: np.ndarray, z: np.ndarray, group: int) -> np.ndarray:
    """float32 [n, k] of what `gptq` returns."""
    n, k = codes.shape
    c = codes.astype(np.float32).reshape(n, k // group, group)
    return (d[:, :, None] * (c - z[:, :, None])).reshape(n, k)
