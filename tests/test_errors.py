"""Bad arguments raise TypeError/ValueError that say what is wrong; nothing crashes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import linly_engine as le
from linly_engine import _C


@pytest.fixture(scope="module")
def mat():
    w = np.random.default_rng(0).standard_normal((9, 64)).astype(np.float32)
    return le.PackedMatrix(le.quantize(w, "q4_0"), "q4_0", 64)


def test_wrong_dtype_of_x(mat):
    with pytest.raises(TypeError, match=r"float32, got float64.*astype"):
        mat.matmul(np.zeros((1, 64)))


def test_wrong_shape_of_x_states_both_shapes(mat):
    with pytest.raises(ValueError, match=r"shape \(2, 63\).*n=9, k=64.*\(m, 64\)"):
        mat.matmul(np.zeros((2, 63), np.float32))
    with pytest.raises(ValueError, match=r"1 or 2 dimensions, got shape \(1, 1, 64\)"):
        mat.matmul(np.zeros((1, 1, 64), np.float32))


def test_non_contiguous_x(mat):
    x = np.zeros((64, 4), np.float32).T
    with pytest.raises(ValueError, match="C-contiguous"):
        mat.matmul(x)


def test_k_not_a_multiple_of_the_block():
    with pytest.raises(ValueError, match=r"k=48 is not a multiple of q4_0's block size 32"):
        le.quantize(np.zeros((2, 48), np.float32), "q4_0")
    with pytest.raises(ValueError, match=r"k=96 is not a multiple of q4_g64's block size 64"):
        le.PackedMatrix(np.zeros((2, 54), np.uint8), "q4_g64", 96)


def test_packed_data_checks():
    with pytest.raises(TypeError, match="must be uint8, got float32"):
        le.PackedMatrix(np.zeros((2, 36), np.float32), "q4_0", 64)
    with pytest.raises(ValueError, match="has 35 bytes per row but q4_0 with k=64 needs 36"):
        le.PackedMatrix(np.zeros((2, 35), np.uint8), "q4_0", 64)
    with pytest.raises(ValueError, match=r"2-D \[n, bytes_per_row\], got shape \(72,\)"):
        le.PackedMatrix(np.zeros(72, np.uint8), "q4_0", 64)
    with pytest.raises(ValueError, match="no rows"):
        le.PackedMatrix(np.zeros((0, 36), np.uint8), "q4_0", 64)
    with pytest.raises(ValueError, match="k must be positive"):
        le.dequantize(np.zeros((1, 4), np.uint8), "f32", 0)


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown weight format 'q5_0'; choose one of: f32, f16, bf16, q4_0"):
        le.quantize(np.zeros((1, 32), np.float32), "q5_0")


def test_unknown_or_unsupported_isa():
    data = np.zeros((1, 18), np.uint8)
    with pytest.raises(ValueError, match=r"unknown ISA 'sse9'; choose one of: scalar"):
        le.PackedMatrix(data, "q4_0", 32, isa="sse9")
    if "avx512" not in le.available_isas():
        with pytest.raises(ValueError, match="'avx512' is not supported by this CPU"):
            le.PackedMatrix(data, "q4_0", 32, isa="avx512")


def test_thread_count_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        le.set_num_threads(0)


def test_quantize_wants_a_matrix():
    with pytest.raises(ValueError, match=r"2 dimensions, got shape \(32,\)"):
        le.quantize(np.zeros(32, np.float32), "q8_0")
    with pytest.raises(TypeError, match="float32"):
        le.quantize(np.zeros((1, 32), np.int32), "q8_0")


def test_matmul_ref_checks_k():
    with pytest.raises(ValueError, match=r"x has shape \(1, 32\) but the weights have k=64"):
        _C.matmul_ref(np.zeros((1, 32), np.float32), np.zeros((1, 36), np.uint8), "q4_0", 64)


def run_with_isa(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LINLY_ISA=value)
    code = "import linly_engine as le; print(le.cpu_info()['selected'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("isa", le.available_isas())
def test_linly_isa_forces_a_path(isa):
    r = run_with_isa(isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa


def test_linly_isa_rejects_bad_values():
    r = run_with_isa("neon9")
    assert r.returncode != 0
    assert "LINLY_ISA: unknown ISA 'neon9'" in r.stderr
    if "avx512" not in le.available_isas():
        r = run_with_isa("avx512")
        assert r.returncode != 0 and "not supported by this CPU" in r.stderr


def test_cpu_info_reports_detection_and_choice():
    info = le.cpu_info()
    assert info["selected"] in info["available"]
    assert info["available"][0] == "scalar"
    assert set(info["detected"]) >= {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert info["threads"] == le.get_num_threads()
