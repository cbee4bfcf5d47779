"""The GPU weight layouts (csrc/gpu/layout.h), on the CPU: the repacking that every CUDA
kernel depends on stands for exactly the weights the engine's own dequantisers give, for
every format and awkward sizes; the CUDA entry points fail clearly where CUDA is absent."""

from __future__ import annotations

import numpy as np
import pytest

import linly_engine as le
from linly_engine import _C

W4 = ["q4_0", "q4_1", "q4_g32", "q4_g64", "q4_g128"]


def test_w4_word_order_puts_pairs_in_the_half2_lanes():
    shifts = [_C.gpu_w4_shift(j) for j in range(8)]
    # elements 2i, 2i+1 at bits 4i and 16 + 4i: (word >> 4i) & 0x000F000F holds both
    assert shifts == [0, 16, 4, 20, 8, 24, 12, 28]
    assert sorted(shifts) == list(range(0, 32, 4))  # a permutation of the 8 nibbles


@pytest.mark.parametrize("fmt", W4 + ["q8_0"])
@pytest.mark.parametrize("n,k", [(1, 128), (7, 384), (33, 1152), (130, 256)])
def test_gpu_layout_stands_for_the_same_weights(fmt, n, k, rng):
    group = int(fmt[4:]) if fmt.startswith("q4_g") else 32
    if k % group:
        pytest.skip(f"k={k} is not a multiple of {fmt}'s group")
    w = rng.standard_normal((n, k), dtype=np.float32) * rng.uniform(0.01, 3.0, (n, 1)).astype(np.float32)
    rows = le.quantize(w, fmt)
    np.testing.assert_array_equal(_C.gpu_layout_dequantize(rows, fmt, k), le.dequantize(rows, fmt, k))


@pytest.mark.parametrize("fmt", W4)
def test_w4_layout_arrays(fmt, rng):
    n, k = 5, 256
    rows = le.quantize(rng.standard_normal((n, k), dtype=np.float32), fmt)
    lay = _C.gpu_layout(rows, fmt, k)
    group = lay["group"]
    assert lay["qweight"].shape == (n, k // 8) and lay["qweight"].dtype == np.uint32
    assert lay["scales"].shape == (n, k // group)
    assert lay["mins"].size == (n * k // group if fmt == "q4_1" else 0)
    assert lay["zeros"].size == (n * k // group if fmt.startswith("q4_g") else 0)
    # element e of row r is nibble (e % 8) of word e // 8, at the documented shift
    deq = le.dequantize(rows, fmt, k)
    q = np.stack([(lay["qweight"] >> _C.gpu_w4_shift(j)) & 0xF for j in range(8)], axis=-1).reshape(n, k)
    d = lay["scales"].view(np.float16).astype(np.float32).repeat(group, axis=1)
    if fmt == "q4_1":
        expect = d * q + lay["mins"].view(np.float16).astype(np.float32).repeat(group, axis=1)
    else:
        z = 8 if fmt == "q4_0" else lay["zeros"].astype(np.int64).repeat(group, axis=1)
        expect = d * (q.astype(np.int64) - z)
    np.testing.assert_array_equal(expect.astype(np.float32), deq)


def test_int8_per_channel_is_within_half_a_step(rng):
    w = rng.standard_normal((9, 200), dtype=np.float32) * np.arange(1, 10, dtype=np.float32)[:, None]
    codes, scales, deq = _C.gpu_int8_per_channel(w)
    d = scales.view(np.float16).astype(np.float32)  # [9, 1]
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
    # round to nearest on a grid of d (d rounded to fp16 can clip the largest |w| by < d/2·2^-10·127)
    assert np.all(np.abs(deq - w) <= d * (0.5 + 127 * 2.0 ** -10) + 1e-7)
    np.testing.assert_array_equal(deq, d * codes.astype(np.float32))


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="no 4-bit GPU layout"):
        _C.gpu_layout(le.quantize(np.zeros((2, 32), np.float32), "f16"), "f16", 32)
    with pytest.raises(ValueError, match="k=48 is not a multiple"):
        _C.gpu_layout(np.zeros((2, 27), np.uint8), "q4_0", 48)
    with pytest.raises(ValueError):
        _C.gpu_layout(np.zeros((2, 17), np.uint8), "q4_0", 32)  # rows of the wrong byte length
    with pytest.raises(ValueError, match="no GPU kernel for weight format 'bf16'"):
        le.cuda.Linear(np.zeros((2, 64), np.uint8), "bf16", 32)


@pytest.mark.skipif(le.cuda.is_available(), reason="a GPU is here: tests/test_cuda_kernels.py runs instead")
def test_without_cuda_the_error_says_what_is_missing():
    why = le.cuda.unavailable_reason()
    assert why and ("no CUDA part" in why or "no usable CUDA device" in why)
    rows = le.quantize(np.ones((4, 64), np.float32), "q4_0")
    with pytest.raises(RuntimeError, match="CUDA was asked for but cannot be used"):
        le.cuda.Linear(rows, "q4_0", 64)
    with pytest.raises(RuntimeError):
        _C.CudaLinear(rows, "q4_0", 64)
