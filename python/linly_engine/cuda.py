"""NVIDIA GPU kernels: weight-only int4 (W4A16) and int8 (W8A16) matrix products.

The weights are the engine's own quantised rows (``linly_engine.quantize`` or a packed
file's tensors), repacked at load into the order the kernels read best
(``csrc/gpu/layout.h``); activations and results are float16. One to eight rows run
the GEMV kernel (decode), more rows the tensor-core GEMM (prefill and batches).

>>> import numpy as np, linly_engine as le
>>> w = le.quantize(np.random.randn(4096, 4096).astype(np.float32), "q4_g128")
>>> lin = le.cuda.Linear(w, "q4_g128", k=4096)          # needs a CUDA build and a GPU
>>> y = lin(np.random.randn(1, 4096).astype(np.float16))  # [1, 4096] float16
"""

from __future__ import annotations

import numpy as np

from linly_engine import _C

W4_FORMATS = ("q4_0", "q4_1", "q4_g32", "q4_g64", "q4_g128")
W8_FORMATS = ("q8_0", "int8")


def built() -> bool:
    """Whether this build of the engine has the CUDA part (nvcc was found when it was built)."""
    return bool(_C.cuda_built())


def is_available() -> bool:
    """Whether CUDA can be used here: a CUDA build and a visible device."""
    return not _C.cuda_unavailable_reason()


def unavailable_reason() -> str:
    """Empty when CUDA can be used; otherwise what is missing and what to do about it."""
    return _C.cuda_unavailable_reason()


def require() -> None:
    """Raises RuntimeError with the reason when CUDA cannot be used."""
    why = unavailable_reason()
    if why:
        raise RuntimeError(f"CUDA was asked for but cannot be used: {why}")


def device_name(device: int = 0) -> str:
    """The GPU's name, compute capability, multiprocessor count and memory."""
    require()
    return _C.cuda_device_name(device)


class Linear:
    """``y = x @ W.T`` on the GPU, the weights resident in device memory.

    ``data``: uint8 rows of a q4_0 / q4_1 / q4_g32|64|128 / q8_0 matrix (what
    ``linly_engine.quantize`` returns) with ``k`` its number of columns, or float32
    ``[n, k]`` weights with ``fmt="int8"`` (int8 with one scale per output channel)."""

    def __init__(self, data: np.ndarray, fmt: str, k: int | None = None) -> None:
        if fmt not in W4_FORMATS + W8_FORMATS:
            raise ValueError(f"no GPU kernel for weight format {fmt!r}; choose one of: "
                             f"{', '.join(W4_FORMATS + W8_FORMATS)}")
        if fmt != "int8" and k is None:
            raise ValueError(f"k (the number of columns) is needed for {fmt} rows")
        require()
        self.fmt = fmt
        self._impl = _C.CudaLinear(data, fmt, int(k or 0))

    @property
    def shape(self) -> tuple[int, int]:
        """(n, k): output features, input features."""
        return self._impl.n, self._impl.k

    @property
    def weight_bytes(self) -> int:
        """Device bytes one product reads: codes plus scales (and zero points or minimums)."""
        return self._impl.weight_bytes

    def __call__(self, x: np.ndarray, force_gemm: bool = False) -> np.ndarray:
        """x: float16 ``[m, k]`` → float16 ``[m, n]``; ``force_gemm`` runs the tensor-core
        kernel even for m ≤ 8 (to test both paths)."""
        x = np.asarray(x)
        if x.dtype != np.float16:
            raise TypeError(f"x must be float16, got {x.dtype}")
        if x.ndim == 1:
            x = x[None]
        return self._impl.forward(np.ascontiguousarray(x), force_gemm).view(np.float16)

    def time_us(self, m: int, iters: int = 50, copies: int = 4) -> float:
        """Median µs of one product with ``m`` rows (CUDA events), cycling through
        ``copies`` copies of the weights so that the L2 cache does not serve them."""
        return self._impl.time_us(m, iters, copies)


def copy_bandwidth_gbs(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read plus written), the ceiling
    the GEMV kernels are measured against."""
    require()
    return _C.cuda_copy_bandwidth(nbytes, iters)


# The decoder's other operations on the GPU, one call each (the fp16 decoder that chains
# them with the matrices above is not built yet). float16 in and out.

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x²) + eps) · w`` per row: x float16 [rows, d], w float32 [d]."""
    require()
    return _C.cuda_rmsnorm(np.ascontiguousarray(x, np.float16), np.ascontiguousarray(w, np.float32), eps).view(np.float16)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``silu(gate) · up``, float16 [rows, ffn]."""
    require()
    return _C.cuda_swiglu(np.ascontiguousarray(gate, np.float16), np.ascontiguousarray(up, np.float16)).view(np.float16)


def rope(v: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding of float16 [rows, heads, head_dim] (element i pairs with
    i + head_dim/2, as transformers' rotate_half) at positions ``pos``, from float32
    tables [positions, head_dim/2] (the CPU decoder's)."""
    require()
    return _C.cuda_rope(np.ascontiguousarray(v, np.float16), np.asarray(pos, np.int32),
                        np.ascontiguousarray(cos, np.float32), np.ascontiguousarray(sin, np.float32)).view(np.float16)


def attention_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, scale: float) -> np.ndarray:
    """One position's attention: q float16 [heads, head_dim] over caches float16
    [len, kv_heads, head_dim] (query head h reads kv head h // (heads // kv_heads))."""
    require()
    return _C.cuda_attention_decode(np.ascontiguousarray(q, np.float16), np.ascontiguousarray(k_cache, np.float16),
                                    np.ascontiguousarray(v_cache, np.float16), scale).view(np.float16)
