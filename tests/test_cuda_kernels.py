"""The CUDA kernels on a GPU (skipped without one): GEMV (1-8 rows) and the tensor-core
GEMM against the engine's own dequantised weights in float64, and against torch on the
GPU, on random data of awkward sizes (odd N, K not a multiple of 128 where the format
allows, M across the GEMV/GEMM boundary)."""

from __future__ import annotations

import numpy as np
import pytest

import linly_engine as le

pytestmark = pytest.mark.skipif(not le.cuda.is_available(), reason=f"no CUDA: {le.cuda.unavailable_reason()}")

FORMATS = ["q4_0", "q4_1", "q4_g32", "q4_g64", "q4_g128", "q8_0", "int8"]
SHAPES = [(1, 32), (37, 96), (1001, 4096), (4096, 1152), (11008, 4096)]


_CACHE: dict = {}


def weights(fmt: str, n: int, k: int, rng):
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    if fmt == "int8":
        _, _, deq = le._C.gpu_int8_per_channel(w)
        return le.cuda.Linear(w, "int8"), deq
    rows = le.quantize(w, fmt)
    return le.cuda.Linear(rows, fmt, k), le.dequantize(rows, fmt, k)


def group_of(fmt):
    return int(fmt[4:]) if fmt.startswith("q4_g") else 32


def rel_err(y, ref):
    return np.linalg.norm(y.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)


@pytest.mark.parametrize("m", [1, 3, 8, 9, 64, 200])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_the_dequantised_reference(fmt, n, k, m):
    if k % group_of(fmt):
        pytest.skip("k is not a multiple of the group")
    rng = np.random.default_rng(n * 31 + k + m)
    if (fmt, n, k) not in _CACHE:  # one upload per matrix; the m cases reuse it
        _CACHE.clear()
        _CACHE[(fmt, n, k)] = weights(fmt, n, k, np.random.default_rng(n + k))
    lin, deq = _CACHE[(fmt, n, k)]
    x = rng.standard_normal((m, k)).astype(np.float16)
    ref = x.astype(np.float64) @ deq.astype(np.float64).T
    for force_gemm in ([False, True] if m <= 8 else [False]):
        y = lin(x, force_gemm=force_gemm)
        assert y.shape == (m, n) and y.dtype == np.float16
        assert np.isfinite(y).all()
        # fp16 products (one rounding each) summed in fp32, output rounded to fp16
        assert rel_err(y, ref) < 3e-3, (fmt, n, k, m, force_gemm, rel_err(y, ref))


@pytest.mark.parametrize("fmt", ["q4_0", "q4_g128", "q8_0"])
def test_matches_torch_on_the_gpu(fmt):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    rng = np.random.default_rng(5)
    n, k = 4096, 4096
    lin, deq = weights(fmt, n, k, rng)
    for m in (1, 128):
        x = rng.standard_normal((m, k)).astype(np.float16)
        ref = (torch.from_numpy(x).cuda() @ torch.from_numpy(deq).cuda().half().T).float().cpu().numpy()
        assert rel_err(lin(x), ref.astype(np.float64)) < 3e-3


def test_every_output_is_written():
    # the kernels write each y once: no stale value survives (two different inputs)
    rng = np.random.default_rng(9)
    lin, deq = weights("q4_0", 333, 128, rng)
    for m in (1, 5, 77):
        a, b = (rng.standard_normal((m, 128)).astype(np.float16) for _ in range(2))
        ya, yb = lin(a), lin(b)
        ref_b = b.astype(np.float64) @ deq.astype(np.float64).T
        assert rel_err(yb, ref_b) < 3e-3 and not np.array_equal(ya, yb)


def test_bad_input_is_refused():
    rng = np.random.default_rng(1)
    lin, _ = weights("q4_0", 64, 128, rng)
    with pytest.raises(ValueError, match=r"shape \(m, 128\)"):
        lin(np.zeros((2, 64), np.float16))
    with pytest.raises(TypeError, match="float16"):
        lin(np.zeros((2, 128), np.float32))


@pytest.mark.parametrize("rows,d", [(1, 576), (5, 2048), (3, 4097)])
def test_rmsnorm(rows, d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((rows, d)).astype(np.float16)
    w = rng.uniform(0.5, 1.5, d).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    assert rel_err(le.cuda.rmsnorm(x, w, 1e-5), ref) < 2e-3


def test_swiglu():
    rng = np.random.default_rng(2)
    g, u = (rng.standard_normal((3, 1537)).astype(np.float16) for _ in range(2))
    g64 = g.astype(np.float64)
    assert rel_err(le.cuda.swiglu(g, u), g64 / (1 + np.exp(-g64)) * u) < 2e-3


@pytest.mark.parametrize("heads,hd", [(9, 64), (4, 6), (32, 128)])
def test_rope_matches_rotate_half(heads, hd):
    rng = np.random.default_rng(hd)
    inv = 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(300)[:, None] * inv[None]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    v = rng.standard_normal((5, heads, hd)).astype(np.float16)
    pos = np.array([0, 7, 299, 3, 150])
    a, b = v[..., : hd // 2].astype(np.float64), v[..., hd // 2:].astype(np.float64)
    c, s = cos[pos][:, None], sin[pos][:, None]
    ref = np.concatenate([a * c - b * s, b * c + a * s], -1)
    assert rel_err(le.cuda.rope(v, pos, cos, sin), ref) < 2e-3
    with pytest.raises(ValueError, match="outside the rotary tables"):
        le.cuda.rope(v, np.array([0, 0, 0, 0, 300]), cos, sin)


@pytest.mark.parametrize("length,heads,kv,hd", [(1, 4, 2, 64), (37, 9, 3, 80), (1000, 32, 4, 128), (11264, 8, 8, 64)])
def test_attention_decode(length, heads, kv, hd):
    rng = np.random.default_rng(length)
    q = rng.standard_normal((heads, hd)).astype(np.float16)
    k = rng.standard_normal((length, kv, hd)).astype(np.float16)
    v = rng.standard_normal((length, kv, hd)).astype(np.float16)
    scale = hd ** -0.5
    kh = np.repeat(k.astype(np.float64), heads // kv, axis=1)  # [len, heads, hd]
    vh = np.repeat(v.astype(np.float64), heads // kv, axis=1)
    s = np.einsum("hd,lhd->hl", q.astype(np.float64), kh) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("hl,lhd->hd", p, vh)
    assert rel_err(le.cuda.attention_decode(q, k, v, scale), ref) < 3e-3
    with pytest.raises(ValueError, match="cache length must be"):
        le.cuda.attention_decode(q, np.zeros((11265, kv, hd), np.float16), np.zeros((11265, kv, hd), np.float16), scale)
