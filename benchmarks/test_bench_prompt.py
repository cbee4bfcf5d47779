"""The prompt kernels (M = 128) on each SIMD path this CPU has, side by side.

Run:  pytest benchmarks/test_bench_prompt.py --benchmark-only -s [-k q4_0]

What the decoder runs for the rows of a prompt in its default (precise) mode: on AVX2 the
int16 tiles (activations "int8x2-prompt"; the f32 tiles and the int8 loops beside them);
on AVX-512 the folded vpdpbusd loop (activations "int8x2-prompt"); on AMX the three-bf16-product tile
kernel (activations "f32", KernelTable::f32_prompts), with the int8x2 tile kernel, which
gives the AVX-512 loop's bits, beside it. The fast mode's prompt kernels follow: int8
activations on AVX-512, and on AMX x rounded to bf16 with two tile products
("bf16-prompt", KernelTable::bf16_prompts). The variants take turns round by round in one
process and the ratio is the median of the per-round ratios (the neighbours' load on a
shared VM drifts within seconds). The weights
are one matrix, not a rotation: a prompt reuses every weight 128 times, so this measures
arithmetic, not memory. GOPS counts one multiply-add of the int8x2 product as two
operations, as GFLOP/s would for the f32 product it approximates.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

import linly_engine as le
from conftest import ROWS

SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632), (4096, 4096)]  # (n, k): TinyLlama, LLaMA-7B
FORMATS = ["q4_0", "q4_1", "q8_0", "q4_g128"]
M, ROUNDS = 128, 9
_AVX512 = (("avx512", "int8x2-prompt"), ("amx", "int8x2-prompt"), ("amx", "f32"), ("avx512", "int8"),
           ("amx", "bf16-prompt"))
# Without AVX-512: the AVX2 int16 tiles (the prompt rows' kernel since session 19), the f32
# tiles they replaced, and the fast mode's int8 panel loops.
_AVX2 = (("avx2", "int8x2-prompt"), ("avx2", "f32"), ("avx2", "int8"))
VARIANTS = [v for v in (_AVX512 if "avx512" in le.available_isas() else _AVX2) if v[0] in le.available_isas()]


@pytest.mark.skipif(not VARIANTS, reason="no AVX2 here: the prompt rows take the scalar reference")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_prompt_kernel(benchmark, n, k, fmt, threads):
    le.set_num_threads(threads)
    rng = np.random.default_rng(n + k)
    data = le.quantize(rng.standard_normal((n, k), dtype=np.float32), fmt)
    x = rng.standard_normal((M, k), dtype=np.float32)
    mats = {isa: le.PackedMatrix(data, fmt, k, isa=isa) for isa in {isa for isa, _ in VARIANTS}}
    for isa, act in VARIANTS:
        mats[isa].matmul(x, activations=act)  # warm: pool, scratch buffers
    times: dict[tuple[str, str], list[float]] = {v: [] for v in VARIANTS}

    def rounds():
        for _ in range(ROUNDS):
            for isa, act in VARIANTS:
                t0 = time.perf_counter()
                mats[isa].matmul(x, activations=act)
                times[(isa, act)].append(time.perf_counter() - t0)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    base = VARIANTS[0]
    for (isa, act), ts in times.items():
        t = statistics.median(ts)
        ratio = statistics.median(b / a for a, b in zip(ts, times[base]))
        row = {"shape": f"{n}x{k}", "fmt": fmt, "M": M, "threads": threads, "isa": isa, "activations": act,
               "time_us": f"{t * 1e6:.0f}", "GOPS": f"{2.0 * M * n * k / t / 1e9:.0f}",
               f"speed vs {base[0]} {base[1]}": f"{ratio:.2f}"}
        benchmark.extra_info[f"{isa} {act}"] = row
        ROWS.append(row)
