"""Times the CUDA weight-only kernels on the GPU it finds and prints a table:
GEMV (M=1) at LLaMA-7B shapes (µs, GB/s of weight bytes, % of the device copy bandwidth
measured in the same run) and the tensor-core GEMM at M=16..512 (µs, TFLOP/s), with
torch's fp16 matmul (cuBLAS) on the same shapes beside them when torch sees the GPU.

    python benchmarks/gpu/bench_kernels.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

import linly_engine as le

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]  # (n, k): attention, up/gate, down, head
FORMATS = ["q4_0", "q4_g128", "q4_1", "q8_0", "int8"]
GEMM_M = [16, 64, 128, 256, 512]


_W: dict = {}


def linear(fmt: str, n: int, k: int) -> le.cuda.Linear:
    if (n, k) not in _W:
        _W.clear()
        _W[(n, k)] = np.random.default_rng(n + k).standard_normal((n, k), dtype=np.float32) * 0.02
    w = _W[(n, k)]
    return le.cuda.Linear(w, "int8") if fmt == "int8" else le.cuda.Linear(le.quantize(w, fmt), fmt, k)


def torch_fp16_us(n: int, k: int, m: int, copies: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    for w in ws:
        x @ w.T
    torch.cuda.synchronize()
    times = []  # as the engine's: batches of back-to-back products between two events
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(50):
            x @ ws[i % copies].T
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / 50)
    del ws
    torch.cuda.empty_cache()
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--no-gemm", action="store_true", help="time the GEMV only")
    ap.add_argument("--variants", default="scalar,mma", help="GEMV variants (LINLY_GEMV values) to time")
    args = ap.parse_args()
    formats = args.formats.split(",")
    le.cuda.require()
    print("device:", le.cuda.device_name())
    copy_bw = le.cuda.copy_bandwidth_gbs(1 << 30, 20)
    print(f"device-to-device copy: {copy_bw:.0f} GB/s (read + write)")
    rows = []
    # Enough copies of each matrix that the 50-60 MB L2 cannot hold them: >= 512 MB in all.
    variants = args.variants.split(",")
    for n, k in SHAPES:
        for fmt in formats:
            lin = linear(fmt, n, k)
            copies = max(2, math.ceil((512 << 20) / lin.weight_bytes))
            for variant in variants:  # LINLY_GEMV is read at every launch
                os.environ["LINLY_GEMV"] = variant
                us = lin.time_us(1, 100, copies)
                gbs = lin.weight_bytes / (us * 1e3)
                rows.append({"kind": "gemv", "shape": f"{n}x{k}", "fmt": f"{fmt} {variant}", "m": 1, "us": us,
                             "GB/s": gbs, "of_copy_bw": gbs / copy_bw})
            os.environ.pop("LINLY_GEMV", None)
        t16 = torch_fp16_us(n, k, 1, max(2, math.ceil((512 << 20) / (2 * n * k))))
        if t16 is not None:
            rows.append({"kind": "gemv", "shape": f"{n}x{k}", "fmt": "torch fp16", "m": 1, "us": t16,
                         "GB/s": 2 * n * k / (t16 * 1e3), "of_copy_bw": 2 * n * k / (t16 * 1e3) / copy_bw})
    for n, k in [] if args.no_gemm else SHAPES[:3]:
        for fmt in ("q4_g128", "q8_0"):
            lin = linear(fmt, n, k)
            for m in GEMM_M:
                us = lin.time_us(m, 30, 2)
                rows.append({"kind": "gemm", "shape": f"{n}x{k}", "fmt": fmt, "m": m, "us": us,
                             "TFLOP/s": 2 * m * n * k / (us * 1e6)})
        for m in GEMM_M:
            t16 = torch_fp16_us(n, k, m, 2)
            if t16 is not None:
                rows.append({"kind": "gemm", "shape": f"{n}x{k}", "fmt": "torch fp16", "m": m, "us": t16,
                             "TFLOP/s": 2 * m * n * k / (t16 * 1e6)})
    print("\n| kernel | shape | fmt | M | µs | GB/s | % copy bw | TFLOP/s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        gb = f"{r['GB/s']:.0f}" if "GB/s" in r else ""
        pct = f"{100 * r['of_copy_bw']:.0f}%" if "of_copy_bw" in r else ""
        tf = f"{r['TFLOP/s']:.1f}" if "TFLOP/s" in r else ""
        print(f"| {r['kind']} | {r['shape']} | {r['fmt']} | {r['m']} | {r['us']:.1f} | {gb} | {pct} | {tf} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": le.cuda.device_name(), "copy_GB/s": copy_bw, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
