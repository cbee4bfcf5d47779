"""Every SIMD kernel against its scalar twin, on every ISA this CPU has.

Tolerances: the integer block dot products must be exact, so one family of tests uses
data whose scales are exactly 1 (every float operation is then exact too) and demands
bit-equal results. Random Gaussian data is compared with rtol 1e-5 plus an absolute
1e-5 · max|y_ref| (summation order differs between kernels, and a value that cancels
to near zero can't keep a relative error).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

import linly_engine as le
from linly_engine import _C

ISAS = le.available_isas()
QUANT = ["q4_0", "q4_1", "q8_0", "q4_g32", "q4_g64", "q4_g128"]
DENSE = ["f32", "f16", "bf16"]
M_VALUES = (1, 3, 13, 17, 128)  # 13 = 8 + 4 + 1: every row group of the batched kernels


def k_values(fmt: str) -> tuple[int, ...]:
    if fmt in DENSE:
        return (1, 33, 4097)
    block = le.format_info(fmt)["block_elems"]
    # the smallest K, an odd number of blocks, and several thousand (odd block count)
    return (block, 3 * block, (4160 // block + (4160 // block + 1) % 2) * block)


CASES = [(fmt, n, k) for fmt in QUANT + DENSE for (n, k) in zip((5, 37, 129), k_values(fmt))]


@functools.lru_cache(maxsize=None)
def gaussian_case(fmt: str, n: int, k: int):
    # A seed that is the same in every process (hash() of a str is not), so that a failure
    # reproduces.
    rng = np.random.default_rng(zlib.crc32(f"{fmt}/{n}/{k}".encode()))
    w = rng.standard_normal((n, k)).astype(np.float32)
    data = le.quantize(w, fmt)
    xs = {m: (rng.standard_normal((m, k)) * 2).astype(np.float32) for m in M_VALUES}
    refs = {m: {p: _C.matmul_ref(x, data, fmt, k, p) for p in (False, True)} for m, x in xs.items()}
    return data, xs, refs


@pytest.mark.parametrize("activations", ["int8", "int8x2", "int8x2-prompt"])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,n,k", CASES)
def test_matmul_matches_scalar_reference(fmt, n, k, isa, nthreads, activations, threads):
    """int8x2-prompt (the decoder's prompt rows) is the int8x2 product through the many-row
    kernels (AVX-512: eight rows per pass, then four, then one; M = 13 takes all three.
    AVX2: int16 tiles of 256 columns, three rows per pass; M = 13 and 17 leave one and two,
    K = 4160 ends in a partial tile, n = 5 and 37 in a partial panel)."""
    le.set_num_threads(nthreads)
    data, xs, refs = gaussian_case(fmt, n, k)
    mat = le.PackedMatrix(data, fmt, k, isa=isa)
    assert mat.isa == isa
    precise = activations != "int8"
    for m in M_VALUES:
        y = mat.matmul(xs[m], activations=activations)
        assert y.shape == (m, n) and y.dtype == np.float32
        ref = refs[m][precise]
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()),
                                   err_msg=f"{fmt} n={n} k={k} m={m} isa={isa} threads={nthreads}")


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU (or OS) gives no AMX tile unit to this process")
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("fmt,n,k", CASES[:3 * len(QUANT)])
def test_amx_prompt_rows_are_bit_identical_to_avx512(fmt, n, k, nthreads, threads):
    """The tile kernel takes prompt rows 16 at a time and leaves the rest to the AVX-512
    loop; both form the same exact integers and the same float expression, so every row
    must come out bit for bit the same whichever kernel ran it (a sequence's logits must
    not depend on how its batch was cut). M = 16, 17 and 47 leave 0, 1 and 15 rows to the
    AVX-512 loop; n = 5 and 37 end in a partial panel, three threads split odd panel counts."""
    le.set_num_threads(nthreads)
    rng = np.random.default_rng(n * 7919 + k)
    data, _, _ = gaussian_case(fmt, n, k)
    amx = le.PackedMatrix(data, fmt, k, isa="amx")
    avx512 = le.PackedMatrix(data, fmt, k, isa="avx512")
    for m in (16, 17, 47, 128):
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(np.float32)
        y = amx.matmul(x, activations="int8x2-prompt")
        np.testing.assert_array_equal(y, avx512.matmul(x, activations="int8x2-prompt"),
                                      err_msg=f"{fmt} n={n} k={k} m={m} threads={nthreads}")
        # and each row alone (the AVX-512 one-row loop) gives the same bits as in the tile
        np.testing.assert_array_equal(y[m - 1:], amx.matmul(x[m - 1:], activations="int8x2-prompt"))


def amx_outlier_case(fmt: str, seed: int):
    """37 x 4224 weights (33 groups of 128, a partial panel) in fmt on the AMX row, and 47
    activation rows of mixed scale with an outlier channel, as LLaMA activations have;
    returns x, the matrix and the RMS error of a result against the f64 product, relative
    to the product's RMS."""
    rng = np.random.default_rng(seed)
    n, k = 37, 4224
    data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt)
    x = (rng.standard_normal((47, k)) * rng.uniform(0.1, 10, (47, 1))).astype(np.float32)
    x[:, 7] *= 40
    exact = x.astype(np.float64) @ le.dequantize(data, fmt, k).astype(np.float64).T

    def rms_rel(v):
        return float(np.sqrt(np.mean((v - exact) ** 2) / np.mean(exact ** 2)))

    return x, le.PackedMatrix(data, fmt, k, isa="amx"), rms_rel


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU (or OS) gives no AMX tile unit to this process")
@pytest.mark.parametrize("fmt", QUANT)
def test_amx_f32_prompt_rows_are_near_f32_and_batch_invariant(fmt, threads):
    """The AMX prompt kernel multiplies x and W each split into two bf16 parts (three tile
    products). Its error against the float64 product, as an RMS over all outputs, must stay
    at the few-ulp-of-bf16-squared level (dropping any one of the three products, or the
    split of either operand, costs about 1e-3) and below the int8x2 product's, which it
    replaces in the decoder's prompts. Every row comes out bit for bit the same alone, in a
    tile pair, in a partial last tile, at 1 and 3 threads."""
    x, mat, rms_rel = amx_outlier_case(fmt, 5)
    le.set_num_threads(1)
    y = mat.matmul(x, activations="f32")

    assert rms_rel(y) < 2e-5, (fmt, rms_rel(y))
    assert rms_rel(y) < rms_rel(mat.matmul(x, activations="int8x2")), fmt
    for nthreads in (1, 3):
        le.set_num_threads(nthreads)
        for rows in (slice(0, 1), slice(0, 16), slice(0, 17), slice(46, 47), slice(0, 47)):
            np.testing.assert_array_equal(mat.matmul(x[rows], activations="f32"), y[rows], err_msg=f"{fmt} {rows}")


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU (or OS) gives no AMX tile unit to this process")
@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q8_0", "q4_g128"])
def test_amx_bf16_prompt_rows_round_only_x_and_are_batch_invariant(fmt, threads):
    """The fast mode's AMX prompt kernel ('bf16-prompt') rounds x to bf16 and keeps the
    weights split in two bf16 parts (two tile products). Rounding x alone to bf16 costs
    at most 2^-9 of each |x| (about 1.7e-3 RMS of the product here); the test bounds it by
    4e-3 and asks for less than the int8 activations it replaces (about 7e-3), and more
    than the three-product kernel's (so the dropped product really is dropped). Rows are
    bit for bit the same alone, in a partial tile and at 1 and 3 threads."""
    x, mat, rms_rel = amx_outlier_case(fmt, 6)
    le.set_num_threads(1)
    y = mat.matmul(x, activations="bf16-prompt")

    assert rms_rel(y) < 4e-3, (fmt, rms_rel(y))
    assert rms_rel(y) < rms_rel(mat.matmul(x, activations="int8")), fmt
    assert rms_rel(y) > 10 * rms_rel(mat.matmul(x, activations="f32")), fmt
    for nthreads in (1, 3):
        le.set_num_threads(nthreads)
        for rows in (slice(0, 1), slice(0, 17), slice(46, 47), slice(0, 47)):
            np.testing.assert_array_equal(mat.matmul(x[rows], activations="bf16-prompt"), y[rows],
                                          err_msg=f"{fmt} {rows}")


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU (or OS) gives no AMX tile unit to this process")
def test_amx_f16_prompt_rows_split_weights_exactly(threads):
    """Row-major f16 weights on the AMX prompt tiles: each f16 (11 significant bits) is
    wh + wl exactly, so 'f32' keeps the few-ulp-of-bf16-squared error of the integer
    formats' kernel and 'bf16-prompt' only x's rounding. n = 37 leaves a partial panel;
    rows are bit for bit the same alone, in a partial tile and at 1 and 3 threads (the
    work is cut in whole 16-row panels). K not a multiple of 32 keeps the AVX-512 f32
    tiles, bit for bit."""
    x, mat, rms_rel = amx_outlier_case("f16", 7)
    le.set_num_threads(1)
    ys = {act: mat.matmul(x, activations=act) for act in ("f32", "bf16-prompt")}
    assert rms_rel(ys["f32"]) < 2e-5, rms_rel(ys["f32"])
    assert 10 * rms_rel(ys["f32"]) < rms_rel(ys["bf16-prompt"]) < 4e-3, rms_rel(ys["bf16-prompt"])
    for nthreads in (1, 3):
        le.set_num_threads(nthreads)
        for act, y in ys.items():
            for rows in (slice(0, 1), slice(0, 17), slice(46, 47), slice(0, 47)):
                np.testing.assert_array_equal(mat.matmul(x[rows], activations=act), y[rows], err_msg=f"{act} {rows}")
    rng = np.random.default_rng(8)
    n, k = 37, 4097
    data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), "f16")
    x = rng.standard_normal((20, k)).astype(np.float32)
    np.testing.assert_array_equal(le.PackedMatrix(data, "f16", k, isa="amx").matmul(x, activations="f32"),
                                  le.PackedMatrix(data, "f16", k, isa="avx512").matmul(x, activations="f32"))


@pytest.mark.parametrize("isa", [isa for isa in ISAS if isa != "amx"])
def test_bf16_prompt_is_f32_where_nothing_rounds_x(isa, rng):
    """'bf16-prompt' only lets a kernel round x to bf16; the ISAs without such a kernel
    compute exactly their 'f32' product."""
    for fmt in ("q4_0", "q8_0", "f16"):
        n, k = 21, 320
        data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt)
        x = rng.standard_normal((19, k)).astype(np.float32)
        mat = le.PackedMatrix(data, fmt, k, isa=isa)
        np.testing.assert_array_equal(mat.matmul(x, activations="bf16-prompt"), mat.matmul(x, activations="f32"))


@functools.lru_cache(maxsize=None)
def f32_refs(fmt: str, n: int, k: int):
    data, xs, _ = gaussian_case(fmt, n, k)
    return {m: _C.matmul_ref(x, data, fmt, k, f32_activations=True) for m, x in xs.items()}


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,n,k", CASES)
def test_f32_activation_matmul_matches_scalar_reference(fmt, n, k, isa, nthreads, threads):
    """The prompt path (x unquantised against weights dequantised tile by tile; on AVX2 a
    6x16 FMA micro-kernel over 256-column tiles, so K = 4160 spans a partial tile and
    odd n a partial panel; dense rows are transposed in 8 x 8 blocks, so K = 1, 33 and
    4097 leave partial blocks and n = 5, 37 partial tiles) against the scalar reference
    of the same product."""
    le.set_num_threads(nthreads)
    data, xs, _ = gaussian_case(fmt, n, k)
    refs = f32_refs(fmt, n, k)
    mat = le.PackedMatrix(data, fmt, k, isa=isa)
    # The AMX tiles take x and w as two bf16 parts each and drop xl·wl: each product is
    # within about 3·2^-18 of x·w (docs/formats.md), so their bound is 2^-15 of Σ|x·w|,
    # not a relative tolerance on the sum (which cancellation can make small; K = 32-128
    # with M = 1 drew errors near 1e-5 of max|y| on some seeds).
    bf16_tiles = isa == "amx" and (fmt not in DENSE or (fmt == "f16" and k % 32 == 0))
    w_abs = np.abs(le.dequantize(data, fmt, k)).astype(np.float64).T if bf16_tiles else None
    for m in M_VALUES:  # 1, 3 and 17 leave partial 6-row blocks
        y = mat.matmul(xs[m], activations="f32")
        where = f"{fmt} n={n} k={k} m={m} isa={isa} threads={nthreads}"
        if bf16_tiles:
            bound = 2.0**-15 * (np.abs(xs[m]).astype(np.float64) @ w_abs) + 1e-30
            assert np.all(np.abs(y - refs[m]) <= bound), where
        else:
            np.testing.assert_allclose(y, refs[m], rtol=1e-5, atol=1e-5 * float(np.abs(refs[m]).max()), err_msg=where)


def test_f32_activations_mean_the_dequantised_product(rng):
    """matmul(activations='f32') is x · dequantise(W)ᵀ to f32 rounding, for every format,
    and unknown activation names are refused."""
    for fmt in QUANT + DENSE:
        n, k = 45, 768
        data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt)
        x = rng.standard_normal((20, k)).astype(np.float32)
        exact = x.astype(np.float64) @ le.dequantize(data, fmt, k).astype(np.float64).T
        y = le.PackedMatrix(data, fmt, k).matmul(x, activations="f32")
        np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max(), err_msg=fmt)
    with pytest.raises(ValueError, match="unknown activations 'int4'.*'int8', 'int8x2', 'int8x2-prompt', 'f32' or 'bf16-prompt'"):
        le.PackedMatrix(data, fmt, k).matmul(x, activations="int4")


def exact_weights(fmt: str, n: int, k: int, rng) -> np.ndarray:
    """Integer weights whose quantisation has scale exactly 1 in every block."""
    if fmt == "q8_0":
        w = rng.integers(-127, 128, (n, k)); w[:, ::32] = 127
    elif fmt == "q4_0":
        w = rng.integers(-8, 8, (n, k)); w[:, ::32] = -8
    elif fmt == "q4_1":
        w = rng.integers(-5, 11, (n, k)); w[:, ::32] = -5; w[:, 1::32] = 10
    elif fmt.startswith("q4_g"):
        g = le.format_info(fmt)["block_elems"]
        w = rng.integers(-5, 11, (n, k)); w[:, ::g] = -5; w[:, 1::g] = 10
    else:
        w = rng.integers(-8, 8, (n, k))
    return w.astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", QUANT + DENSE)
def test_integer_accumulation_is_exact(fmt, isa, rng, threads):
    n, k, m = 37, 1024 if fmt in QUANT else 1000, 17
    w = exact_weights(fmt, n, k, rng)
    data = le.quantize(w, fmt)
    np.testing.assert_array_equal(le.dequantize(data, fmt, k), w)  # the scales really are 1
    x = rng.integers(-127, 128, (m, k)).astype(np.float32)
    x[:, ::32] = 127  # activation scale exactly 1 as well
    expected = (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.float32)  # |y| < 2^24: exact
    np.testing.assert_array_equal(_C.matmul_ref(x, data, fmt, k), expected)
    if fmt in QUANT:  # per 32-block terms, for the bound of the folded int8x2 batches below
        terms = np.einsum("mbj,nbj->mnb", x.reshape(m, -1, 32).astype(np.int64), w.reshape(n, -1, 32).astype(np.int64))
        block_bound = np.abs(terms).sum(-1) * 2.0**-21
    for nthreads in (1, 2):
        le.set_num_threads(nthreads)
        mat = le.PackedMatrix(data, fmt, k, isa=isa)
        np.testing.assert_array_equal(mat.matmul(x), expected)
        if fmt not in QUANT:  # dense formats have no residual: exact either way
            np.testing.assert_array_equal(mat.matmul(x, precise=True), expected)
            continue
        # Prompt rows on AVX-512 and AVX2, and every row on AVX2, fold both sums into
        # 254·Σw·q + Σw·r and scale that by d/254, one float rounding per block (1/254 is not a
        # binary fraction): each block's term within a few ulp of itself, so the error is
        # bounded by Σ|term| · 2^-21. Elsewhere the residual (all zero here) changes nothing.
        y = mat.matmul(x, precise=True)
        if isa == "avx2":
            np.testing.assert_array_less(np.abs(y - expected), block_bound + 1e-30)
        else:
            np.testing.assert_array_equal(y, expected)
        y = mat.matmul(x, activations="int8x2-prompt")
        np.testing.assert_array_less(np.abs(y - expected), block_bound + 1e-30)


@pytest.mark.parametrize("isa", ISAS)
def test_activation_quantisation_is_bit_identical(isa, rng):
    x = (rng.standard_normal((19, 4160)) * rng.uniform(0.01, 100, (19, 1))).astype(np.float32)
    x[3, :64] = 0.0  # an all-zero block: scale 0, codes 0
    x[4, 5] = 1e-30  # a denormal-sized value next to normal ones
    ref = _C.quantize_activations(x, "scalar")
    np.testing.assert_array_equal(_C.quantize_activations(x, isa), ref)
    blocks = ref.reshape(19, -1, 80)
    d, d2 = (blocks[:, :, o:o + 4].copy().view(np.float32)[..., 0] for o in (0, 4))
    s, s2 = (blocks[:, :, o:o + 4].copy().view(np.int32)[..., 0] for o in (8, 12))
    q = blocks[:, :, 16:48].view(np.int8).astype(np.int32)
    r = blocks[:, :, 48:80].view(np.int8).astype(np.int32)
    np.testing.assert_array_equal(s, q.sum(-1))
    np.testing.assert_array_equal(s2, r.sum(-1))
    xb = x.reshape(19, -1, 32).astype(np.float64)
    amax = np.abs(xb).max(-1)
    np.testing.assert_array_equal(d, (amax / 127).astype(np.float32))
    np.testing.assert_array_equal(d2, d / np.float32(254))
    assert np.abs(q).max() <= 127 and np.abs(r).max() <= 127
    # int8 alone: error ≤ d/2; with the residual: ≤ d2/2 (plus f32 rounding)
    one = d[..., None] * q
    two = one + d2[..., None] * r
    assert np.all(np.abs(xb - one) <= d[..., None] / 2 * (1 + 1e-5))
    assert np.all(np.abs(xb - two) <= d2[..., None] / 2 * (1 + 1e-3) + 1e-6 * np.abs(xb))


@pytest.mark.parametrize("isa", ISAS)
def test_f16_activation_rounding_matches_reference(isa, rng):
    """Every ISA rounds decode activations to the same f16 bits as numpy (nearest even,
    subnormals kept), over a length that leaves a partial vector, and refuses, so that
    the matmul keeps f32, anything that would round to Inf or is NaN/Inf."""
    x = (rng.standard_normal(1037) * np.logspace(-9, 4, 1037)).astype(np.float32)
    x[:3] = [65504.0, -65519.0, 6e-8]  # the largest finite, the last value rounding to it, a subnormal
    bits = _C.round_activations_f16(x, isa=isa)
    np.testing.assert_array_equal(bits, x.astype(np.float16).view(np.uint16))
    for bad in (65520.0, -1e6, np.inf, np.nan):
        for at in (0, 1030):  # in a full vector and in the tail
            y = x.copy(); y[at] = bad
            assert _C.round_activations_f16(y, isa=isa) is None, (bad, at)


@pytest.mark.parametrize("isa", ISAS)
def test_f16_decode_multiplies_f16_rounded_input(isa, rng):
    """f16 weights at one activation row multiply x rounded to f16 (llama.cpp's rule);
    several rows, the f32 activation path, other dense formats, and an input beyond the
    f16 range keep x in f32."""
    n, k = 41, 1000
    w = rng.standard_normal((n, k)).astype(np.float32)
    for fmt in DENSE:
        data = le.quantize(w, fmt)
        wd = le.dequantize(data, fmt, k).astype(np.float64)
        mat = le.PackedMatrix(data, fmt, k, isa=isa)
        x = rng.standard_normal((3, k)).astype(np.float32)
        big = x[:1].copy(); big[0, 5] = 7e4  # beyond f16: stays f32, so y is finite
        halved = x[:1].astype(np.float16).astype(np.float64)
        for xin, exact in ((x[:1], halved if fmt == "f16" else x[:1].astype(np.float64)),
                           (x, x.astype(np.float64)), (big, big.astype(np.float64))):
            e = exact @ wd.T
            y = mat.matmul(xin)
            np.testing.assert_allclose(y, e, rtol=1e-5, atol=1e-5 * np.abs(e).max(), err_msg=f"{fmt} {xin.shape}")
        e = x[:1].astype(np.float64) @ wd.T
        np.testing.assert_allclose(mat.matmul(x[:1], activations="f32"), e, rtol=1e-5, atol=1e-5 * np.abs(e).max())
        if fmt == "f16":  # the rounding is visible: the test would notice the rule going away
            assert np.abs(mat.matmul(x[:1]) - e).max() > 1e-4 * np.abs(e).max()


@pytest.mark.parametrize("fmt", QUANT + DENSE)
def test_reference_means_x_times_w_transposed(fmt, rng):
    """The scalar reference itself agrees with numpy on the dequantised weights; for the
    integer formats the gap is the int8 activation rounding (|Δx| ≤ amax/254 per block)."""
    n, k, m = 33, 512, 4
    data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt)
    wd = le.dequantize(data, fmt, k).astype(np.float64)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = _C.matmul_ref(x, data, fmt, k)
    exact = x.astype(np.float64) @ wd.T
    if fmt in DENSE:
        np.testing.assert_allclose(y, exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())
    else:
        xb = np.abs(x.reshape(m, -1, 32)).max(-1, keepdims=True) / 254  # per-element bound on |Δx|
        bound = (np.broadcast_to(xb, (m, k // 32, 32)).reshape(m, k) @ np.abs(wd).T) * 1.001 + 1e-5
        assert np.all(np.abs(y - exact) <= bound)


def test_panel_repack_round_trip(rng):
    for fmt in QUANT:
        block = le.format_info(fmt)["block_elems"]
        # one K-slice (1024 weights) or less; two full ones; several and a partial one
        for k in (3 * block, 2048, 2048 + 3 * block):
            for n in (1, 15, 16, 17, 45):
                data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt)
                panels = _C.repack_panels(data, fmt, k)
                assert panels.size % 64 == 0 and panels.size == _C.panel_bytes(fmt, k) * ((n + 15) // 16)
                np.testing.assert_array_equal(_C.unpack_panels(panels, fmt, n, k), data)


def test_panels_are_stored_slice_by_slice(rng):
    """panel.h: K-slices of 1024 weights, each holding every panel's piece side by side, so
    a GEMV's thread reads its pieces of one slice as one stream. Zeroing the first slice's
    bytes must zero exactly the first 1024 columns of every row."""
    n, k = 37, 2048 + 96
    data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), "q4_0")
    panels = _C.repack_panels(data, "q4_0", k)
    piece = 16 * 1024 // 32 * 18  # 16 rows x 32 blocks of 18 bytes, a multiple of 64
    panels[: 3 * piece] = 0  # slice 0: the pieces of panels 0, 1 and 2
    w = le.dequantize(_C.unpack_panels(panels, "q4_0", n, k), "q4_0", k)
    assert np.all(w[:, :1024] == 0) and np.all(np.abs(w[:, 1024:]).max(axis=1) > 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "f16", "f32"])
def test_matrix_keeps_its_own_copy_of_the_weights(fmt, isa, rng):
    """The source array may be overwritten or freed once the matrix exists."""
    k = 64
    data = le.quantize(rng.standard_normal((19, k)).astype(np.float32), fmt)
    x = rng.standard_normal((2, k)).astype(np.float32)
    mat = le.PackedMatrix(data, fmt, k, isa=isa)
    want = mat.matmul(x)
    assert mat.source_bytes == data.nbytes
    data[...] = 0
    del data
    np.testing.assert_array_equal(mat.matmul(x), want)
    panels = _C.repack_panels(le.quantize(rng.standard_normal((19, k)).astype(np.float32), "q4_0"), "q4_0", k)
    from_file = le.PackedMatrix.from_panels(panels, "q4_0", 19, k, isa=isa)
    want = from_file.matmul(x)
    panels[...] = 0
    np.testing.assert_array_equal(from_file.matmul(x), want)


def test_weight_arena_packs_small_matrices_together_and_frees_them(rng):
    """Repacked weights share huge-page slabs back to back and are released with them."""
    import gc

    gc.collect()
    before = _C.weight_arena_bytes()
    data = le.quantize(rng.standard_normal((48, 96)).astype(np.float32), "q4_0")
    x = rng.standard_normal((3, 96)).astype(np.float32)
    mats = [le.PackedMatrix(data, "q4_0", 96) for _ in range(200)]
    # In the arena, and 200 small matrices in one slab (or the rest of one already open).
    assert _C.weight_arena_bytes() > 0 and _C.weight_arena_bytes() - before <= 64 << 20
    want = mats[0].matmul(x)
    for m in mats[1:]:  # neighbours in a slab do not overlap
        np.testing.assert_array_equal(m.matmul(x), want)
    del m, mats
    gc.collect()
    assert _C.weight_arena_bytes() == before
    big = le.quantize(rng.standard_normal((4096, 4096)).astype(np.float32), "q8_0")  # 17 MiB each
    several = [le.PackedMatrix(big, "q8_0", 4096) for _ in range(5)]  # more than one slab holds
    assert _C.weight_arena_bytes() - before >= sum(m.weight_bytes for m in several)
    x = rng.standard_normal((2, 4096)).astype(np.float32)
    np.testing.assert_array_equal(several[4].matmul(x), several[0].matmul(x))
    del several
    gc.collect()
    assert _C.weight_arena_bytes() == before


def test_one_dimensional_x_is_a_single_row(rng):
    data = le.quantize(rng.standard_normal((7, 64)).astype(np.float32), "q4_0")
    mat = le.PackedMatrix(data, "q4_0", 64)
    x = rng.standard_normal(64).astype(np.float32)
    y = mat.matmul(x)
    assert y.shape == (7,)
    np.testing.assert_array_equal(y, mat.matmul(x[None])[0])


def test_many_small_calls_from_two_python_threads(threads, rng):
    """The pool is hit hundreds of times per token, possibly from several threads."""
    import threading

    le.set_num_threads(2)
    data = le.quantize(rng.standard_normal((64, 256)).astype(np.float32), "q4_0")
    mat = le.PackedMatrix(data, "q4_0", 256)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    want = mat.matmul(x)
    bad = []

    def hammer():
        for _ in range(500):
            if not np.array_equal(mat.matmul(x), want):
                bad.append(1)

    ts = [threading.Thread(target=hammer) for _ in range(2)]
    for t in ts:
        t.start()
    for _ in range(20):  # resizing the pool while others use it must be safe
        le.set_num_threads(1)
        le.set_num_threads(2)
    for t in ts:
        t.join()
    assert not bad


@pytest.mark.parametrize("fmt", QUANT)
def test_precise_activations_cut_the_error(fmt, rng):
    """int8x2 lands ~254x closer to the f64 product with the dequantised weights."""
    n, k = 64, 1024
    data = le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt)
    x = rng.standard_normal((8, k)).astype(np.float32)
    exact = x.astype(np.float64) @ le.dequantize(data, fmt, k).astype(np.float64).T
    mat = le.PackedMatrix(data, fmt, k)
    err_fast = np.abs(mat.matmul(x) - exact).mean()
    err_precise = np.abs(mat.matmul(x, precise=True) - exact).mean()
    assert err_precise < err_fast / 50


@pytest.mark.parametrize("cache", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd,length", [(64, 1), (64, 7), (64, 13), (128, 1000), (80, 33), (6, 5), (96, 3)])
def test_attention_kernels_match_reference(isa, hd, length, cache, rng):
    if cache == "q8_0" and hd % 32:
        with pytest.raises(ValueError, match="multiple of 32|hd % 32"):
            _C.attention_head(np.zeros(hd, np.float32), np.zeros((length, hd), np.float32),
                              np.zeros((length, hd), np.float32), isa, cache)
        return
    q = rng.standard_normal(hd).astype(np.float32) * 2
    k = rng.standard_normal((length, hd)).astype(np.float32)
    v = rng.standard_normal((length, hd)).astype(np.float32)
    got = _C.attention_head(q, k, v, isa, cache)
    ref = _C.attention_head(q, k, v, "scalar", cache)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    s = (k.astype(np.float64) @ q) / np.sqrt(hd)
    p = np.exp(s - s.max())
    exact = (p / p.sum()) @ v
    if cache == "q8_0":  # int8 K and V: per-value error ≤ max|block|/254 each; loose bound on the output
        np.testing.assert_allclose(ref, exact, atol=0.05 * np.abs(v).max())
    if cache == "f32":  # and the reference means softmax(q·kᵀ/√hd)·v
        np.testing.assert_allclose(ref, (p / p.sum()) @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("G,hd,length", [(1, 64, 1), (2, 64, 7), (3, 64, 13), (3, 64, 130), (4, 128, 33),
                                         (8, 64, 257), (5, 96, 5), (3, 40, 9), (7, 6, 4)])
def test_grouped_attention_matches_per_head(isa, G, hd, length, rng):
    """The G query heads of one KV head through the grouped kernels (each K/V row read once
    for them): bit-identical to the one-head kernels of the same ISA on an f16 cache, and
    within 1e-5 of the scalar reference. Awkward sizes: G not a multiple of three, head sizes
    that are not multiples of 32 or 8, lengths past the four-key passes."""
    q = rng.standard_normal((G, hd)).astype(np.float32) * 2
    k = rng.standard_normal((length, hd)).astype(np.float32)
    v = rng.standard_normal((length, hd)).astype(np.float32)
    got = _C.attention_group(q, k, v, isa)
    per_head = np.stack([_C.attention_head(q[g], k, v, isa, "f16") for g in range(G)])
    np.testing.assert_array_equal(got, per_head)
    ref = _C.attention_group(q, k, v, "scalar")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_grouped_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="need q"):
        _C.attention_group(np.zeros((2, 64), np.float32), np.zeros((3, 32), np.float32), np.zeros((3, 64), np.float32))
    with pytest.raises(ValueError, match="need q"):
        _C.attention_group(np.zeros((0, 64), np.float32), np.zeros((3, 64), np.float32), np.zeros((3, 64), np.float32))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 8, 1537])
def test_swiglu_matches_reference(isa, n, rng):
    """The decoder's SwiGLU step: every ISA within 1e-6 of the scalar twin (libm expf) and
    of float64 numpy, over ordinary values, large ones on both sides of exp's range, zero and
    NaN."""
    gate = (rng.standard_normal(n) * 4).astype(np.float32)
    up = rng.standard_normal(n).astype(np.float32)
    specials = np.array([0.0, -100.0, 100.0, -87.5, 88.5, np.nan, -20.0], np.float32)
    gate[: min(n, len(specials))] = specials[: min(n, len(specials))]
    got = _C.swiglu(gate, up, isa)
    ref = _C.swiglu(gate, up, "scalar")
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-30)
    g = gate.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = g / (1.0 + np.exp(-g)) * up
    np.testing.assert_allclose(ref, exact, rtol=1e-6, atol=1e-30)
    with pytest.raises(ValueError, match="same length"):
        _C.swiglu(gate, up[:-1] if n > 1 else np.zeros(2, np.float32), isa)


SHARED_GROUPS = [
    [("q4_0", 37), ("q8_0", 5), ("q4_1", 49)],    # odd rows: partial panels in the middle
    [("f16", 129), ("q4_0", 16), ("bf16", 3)],    # dense and integer in one job
    [("q4_g32", 33), ("q4_g32", 1)],
    [("f32", 7), ("f16", 2), ("q8_0", 17), ("q4_1", 31)],
]


@pytest.mark.parametrize("activations", ["int8", "int8x2", "f32"])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("group", range(len(SHARED_GROUPS)))
def test_shared_input_matmul_equals_one_by_one(group, isa, nthreads, activations, threads):
    """The decoder's Q/K/V and gate/up run as one job split by weight bytes across the
    matrices; each matrix's rows must come out bit-identical to its own matmul."""
    le.set_num_threads(nthreads)
    rng = np.random.default_rng(group)
    k = 96  # three blocks: not a multiple of the panels' chunk
    mats = [le.PackedMatrix(le.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt), fmt, k, isa=isa)
            for fmt, n in SHARED_GROUPS[group]]
    for m in (1, 3, 17):
        x = rng.standard_normal((m, k)).astype(np.float32)
        got = _C.matmul_shared_input(mats, x, activations)
        for mat, y in zip(mats, got):
            assert y.shape == (m, mat.n)
            np.testing.assert_array_equal(y, mat.matmul(x, activations=activations))


def test_shared_input_matmul_rejects_mismatched_k():
    a = le.PackedMatrix(le.quantize(np.ones((4, 64), np.float32), "q8_0"), "q8_0", 64)
    b = le.PackedMatrix(le.quantize(np.ones((4, 96), np.float32), "q8_0"), "q8_0", 96)
    with pytest.raises(ValueError, match="all matrices need k"):
        _C.matmul_shared_input([a, b], np.ones((1, 64), np.float32))
    with pytest.raises(ValueError, match="1 to 4 matrices"):
        _C.matmul_shared_input([], np.ones((1, 64), np.float32))
