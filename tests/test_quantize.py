"""Quantise -> dequantise error of every format on Gaussian data, against the rounding
bound each format guarantees, and bit compatibility with GGUF's block layouts."""

from __future__ import annotations

import numpy as np
import pytest

import linly_engine as le

F16_EPS = 2.0**-11  # relative rounding of an f16-stored scale or min


def f16_err(v):
    """Largest rounding error of storing v in f16: half an ulp, and below 2^-14 (the
    subnormal range, reached by scales of very small weights) the fixed ulp of 2^-24."""
    return np.maximum(np.abs(v) * F16_EPS, 2.0**-25)


def blocks(a: np.ndarray, size: int) -> np.ndarray:
    return a.reshape(a.shape[0], -1, size)


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 1024)).astype(np.float32)
    w[0] *= 1e-3  # small and large rows: the bound must scale with the block
    w[1] *= 1e3
    w[2, :128] = 0.0  # an all-zero block
    w[3, :128] = 0.75  # a constant block
    return w


def err_blocks(w, fmt, size):
    back = le.dequantize(le.quantize(w, fmt), fmt, w.shape[1])
    return blocks(np.abs(back.astype(np.float64) - w), size), blocks(w.astype(np.float64), size)


def test_q4_0_bound(gaussian):
    # d = -max/8 with the signed extreme: codes cover [-8d, 7d]; rounding costs d/2, the
    # one end that sits on +8d is clamped to 7d (cost d), and d itself is rounded to f16.
    err, wb = err_blocks(gaussian, "q4_0", 32)
    d = np.abs(wb).max(-1, keepdims=True) / 8
    assert np.all(err <= d + 8 * f16_err(d) + 1e-12)


def test_q4_1_bound(gaussian):
    # d = (max-min)/15, rounding to nearest code: d/2; f16 storage of d (×15 codes) and min.
    err, wb = err_blocks(gaussian, "q4_1", 32)
    mn, mx = wb.min(-1, keepdims=True), wb.max(-1, keepdims=True)
    d = (mx - mn) / 15
    assert np.all(err <= d / 2 + f16_err(mn) + 15 * f16_err(d) + 1e-12)


def test_q8_0_bound(gaussian):
    # d is searched among amax/k, k = 127..80 (no code clips): rounding d/2, plus f16
    # rounding of d times at most 127 codes.
    err, wb = err_blocks(gaussian, "q8_0", 32)
    dmax = np.abs(wb).max(-1, keepdims=True) / 80
    assert np.all(err <= dmax / 2 + 127 * f16_err(dmax) + 1e-12)


@pytest.mark.parametrize("g", [32, 64, 128])
def test_q4_group_bound(gaussian, g):
    # Range widened to include 0, s = range/15 stored in f16 (codes use the stored s),
    # integer zero point z: inside the grid the error is s/2; the grid may end short of
    # max by s/2 + 15·|Δs|.
    fmt = f"q4_g{g}"
    data = le.quantize(gaussian, fmt)
    err, wb = err_blocks(gaussian, fmt, g)
    s = (np.maximum(wb.max(-1, keepdims=True), 0) - np.minimum(wb.min(-1, keepdims=True), 0)) / 15
    assert np.all(err <= s / 2 + 16 * f16_err(s) + 1e-12)
    raw = data.reshape(64, -1, le.format_info(fmt)["block_bytes"])
    assert raw[..., 2].max() <= 15 and not raw[..., 3].any()  # z in range, reserved byte zero


def test_zero_and_constant_blocks_are_exact(gaussian):
    for fmt in ("q4_1", "q8_0", "q4_g32", "q4_g128", "q4_0"):
        back = le.dequantize(le.quantize(gaussian, fmt), fmt, 1024)
        assert not back[2, :128].any()
        if fmt in ("q4_0", "q4_1"):  # q4_0: d = 0.75/-8, code 0 gives -8d; q4_1: d = 0, min 0.75
            np.testing.assert_array_equal(back[3, :128], 0.75)


@pytest.mark.parametrize("fmt", ["f16", "bf16"])
def test_half_formats_round_to_nearest_even(fmt):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((8, 256)) * np.logspace(-9, 4, 256)).astype(np.float32)
    w[0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    back = le.dequantize(le.quantize(w, fmt), fmt, 256)
    if fmt == "f16":
        np.testing.assert_array_equal(back, w.astype(np.float16).astype(np.float32))
    else:  # bf16 reference: round-to-nearest-even on the f32 bits
        bits = w.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
        np.testing.assert_array_equal(back, rounded.view(np.float32))


def test_nan_survives_f16():
    w = np.full((1, 8), np.nan, np.float32)
    assert np.isnan(le.dequantize(le.quantize(w, "f16"), "f16", 8)).all()


gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q8_0", "f16", "bf16"])
def test_layout_is_gguf_compatible(fmt, gaussian):
    """Bytes we write decode identically in gguf-py, and gguf-py's bytes decode identically here."""
    qt = getattr(gguf.GGMLQuantizationType, fmt.upper())
    ours = le.quantize(gaussian, fmt)
    np.testing.assert_array_equal(gguf.quants.dequantize(ours, qt).reshape(gaussian.shape),
                                  le.dequantize(ours, fmt, gaussian.shape[1]))
    theirs = np.ascontiguousarray(gguf.quants.quantize(gaussian, qt)).view(np.uint8).reshape(64, -1)
    np.testing.assert_array_equal(le.dequantize(theirs, fmt, gaussian.shape[1]),
                                  gguf.quants.dequantize(theirs, qt).reshape(gaussian.shape))
    if fmt == "q8_0":
        # ours searches the block scale for the least squared error: never worse than
        # gguf-py's amax/127 on any block, better overall
        sq = lambda b: ((le.dequantize(b, fmt, gaussian.shape[1]) - gaussian) ** 2).reshape(-1, 32).sum(1)
        assert np.all(sq(ours) <= sq(theirs) * (1 + 1e-6)) and sq(ours).sum() < 0.99 * sq(theirs).sum()
    else:  # the same rounding, so the quantisers agree on all but rounding ties
        assert np.mean(theirs == ours) > 0.999
