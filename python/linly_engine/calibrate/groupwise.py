"""The group-wise asymmetric 4-bit format (``q4_gG``) in numpy: fit a group's scale and
zero point, round, and pack codes into the engine's bytes (docs/formats.md).

The kernels' own quantiser (``_C.quantize``) is round-to-nearest over the group's full
range. Calibrated quantisation needs two things it does not offer: the codes of a weight
that changes while it is being quantised (GPTQ moves each column's error onto the columns
not yet done), and scales chosen to minimise an error rather than to cover the range.
Both produce codes, scales and zero points, which `pack_rows` writes in the same layout.
"""

from __future__ import annotations

import numpy as np

QK = 32  # nibble runs: each 32 elements' 16 bytes hold element j low, j + 16 high
GROUP_SIZES = {"q4_g32": 32, "q4_g64": 64, "q4_g128": 128}
# Clip ratios tried by `fit_groups(search=True)`: shrinking the range trades clipped
# outliers for a finer step; 1.0 first so that a tie keeps the full range.
CLIP_GRID = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.70)


def fit_groups(w: np.ndarray, weight: np.ndarray | None = None, search: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale d (float32 holding f16 values) and integer zero point z per row of ``w`` [n, G].

    As the engine's quantiser: the range is widened to include 0, ``d = f16((max-min)/15)``,
    ``z = clamp(rint(-min/d), 0, 15)``. With ``search``, each row also tries the ranges of
    CLIP_GRID and keeps the one with the least squared error, weighted per column by
    ``weight`` ([G], or [n, G]: the inputs' second moments, the error that reaches the
    output)."""
    w = np.asarray(w, dtype=np.float32)
    mn = np.minimum(w.min(axis=1), 0.0)
    mx = np.maximum(w.max(axis=1), 0.0)
    best_d, best_z = _fit(mn, mx)
    if not search:
        return best_d, best_z
    best_err = _group_error(w, best_d, best_z, weight)
    for r in CLIP_GRID[1:]:
        d, z = _fit(mn * r, mx * r)
        err = _group_error(w, d, z, weight)
        better = err < best_err
        best_d = np.where(better, d, best_d)
        best_z = np.where(better, z, best_z)
        best_err = np.where(better, err, best_err)
    return best_d, best_z


def _fit(mn: np.ndarray, mx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((mx - mn) / np.float32(15.0)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(d != 0, np.clip(np.rint(-mn / d), 0, 15), 0)
    return d, z.astype(np.float32)


def quantize_codes(w: np.ndarray, d: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Codes in [0, 15] of ``w`` [n, c] for per-row d, z [n] (broadcast over columns)."""
    d = d.reshape(-1, 1) if d.ndim == 1 else d
    z = z.reshape(-1, 1) if z.ndim == 1 else z
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d != 0, np.rint(w / d) + z, z)
    return np.clip(q, 0, 15)


def _group_error(w: np.ndarray, d: np.ndarray, z: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    q = quantize_codes(w, d, z)
    e = (w - d[:, None] * (q - z[:, None])) ** 2
    return (e * (weight if weight.ndim == 2 else weight[None, :])).sum(1) if weight is not None else e.sum(1)


def round_groups(w: np.ndarray, group: int, weight: np.ndarray | None = None,
                 search: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest of ``w`` [n, k] in groups of ``group``: codes [n, k] (uint8),
    scales d and zero points z [n, k/group]; ``weight`` [k] and ``search`` as in `fit_groups`."""
    n, k = w.shape
    g = np.asarray(w, np.float32).reshape(n * (k // group), group)
    wt = None if weight is None else np.tile(np.asarray(weight, np.float32).reshape(-1, group), (n, 1))
    d, z = fit_groups(g, wt, search)
    codes = quantize_codes(g, d, z).reshape(n, k).astype(np.uint8)
    return codes, d.reshape(n, k // group), z.reshape(n, k // group)


def pack_rows(codes: np.ndarray, d: np.ndarray, z: np.ndarray, group: int) -> np.ndarray:
    """The q4_gG row bytes (uint8 [n, k/G · (4 + G/2)]) of codes [n, k] in [0, 15] with
    per-group scales d and zero points z [n, k/G]."""
    n, k = codes.shape
    if k % group:
        raise ValueError(f"k = {k} is not a multiple of the group size {group}")
    nb = k // group
    c = codes.astype(np.uint8).reshape(n, nb, group // QK, 2, QK // 2)
    qs = (c[:, :, :, 0, :] | (c[:, :, :, 1, :] << 4)).reshape(n, nb, group // 2)
    head = np.zeros((n, nb, 4), np.uint8)
    head[:, :, 0:2] = np.asarray(d, np.float32).astype(np.float16).reshape(n, nb, 1).view(np.uint8)
    head[:, :, 2] = np.asarray(z).astype(np.uint8).reshape(n, nb)
    return np.concatenate([head, qs], axis=2).reshape(n, nb * (4 + group // 2))
