"""The prompt kernel (int8x2 activations, M = 128) on each SIMD path this CPU has, side by side.

Run:  pytest benchmarks/test_bench_prompt.py --benchmark-only -s [-k q4_0]

What the decoder runs for the rows of a prompt (Activations::Int8x2Prompt): on AVX-512
the folded vpdpbusd loop, on AMX the tile kernel (kernels_amx.cpp), which gives the same
bits. The ISAs take turns round by round in one process and the ratio is the median of the
per-round ratios (the neighbours' load on a shared VM drifts within seconds). The weights
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
PROMPT_ISAS = [isa for isa in ("avx512", "amx") if isa in le.available_isas()]


@pytest.mark.skipif(not PROMPT_ISAS, reason="no AVX-512 VNNI here: the prompt rows take the int8x2 panel loops")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_prompt_kernel(benchmark, n, k, fmt, threads):
    le.set_num_threads(threads)
    rng = np.random.default_rng(n + k)
    data = le.quantize(rng.standard_normal((n, k), dtype=np.float32), fmt)
    x = rng.standard_normal((M, k), dtype=np.float32)
    mats = {isa: le.PackedMatrix(data, fmt, k, isa=isa) for isa in PROMPT_ISAS}
    for mat in mats.values():
        mat.matmul(x, activations="int8x2-prompt")  # warm: pool, scratch buffers
    times: dict[str, list[float]] = {isa: [] for isa in mats}

    def rounds():
        for _ in range(ROUNDS):
            for isa, mat in mats.items():
                t0 = time.perf_counter()
                mat.matmul(x, activations="int8x2-prompt")
                times[isa].append(time.perf_counter() - t0)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    base = PROMPT_ISAS[0]
    for isa, ts in times.items():
        t = statistics.median(ts)
        ratio = statistics.median(b / a for a, b in zip(ts, times[base]))
        row = {"shape": f"{n}x{k}", "fmt": fmt, "M": M, "threads": threads, "isa": isa,
               "time_us": f"{t * 1e6:.0f}", "GOPS": f"{2.0 * M * n * k / t / 1e9:.0f}",
               f"speed vs {base}": f"{ratio:.2f}"}
        benchmark.extra_info[isa] = row
        ROWS.append(row)
