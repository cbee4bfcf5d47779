"""Soak test of ``linly serve`` (loopback only, the small random model): a few hundred
requests from concurrent clients with random sampling parameters, both endpoints,
streamed or not, clients that leave mid-stream, malformed bodies and over-long prompts.
Afterwards every slot is free, the queue is empty, the server's resident memory has not
grown past the bound below, and a final greedy request gets the answer it got before.

Bounds (stated here, checked below): REQUESTS requests from CLIENTS threads, the whole
soak within DEADLINE_S seconds, RSS growth after warm-up under RSS_GROWTH_MIB MiB."""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
import time

import httpx
import pytest

from serving import Server

REQUESTS = 400  # WARMUP and REQUESTS - WARMUP are multiples of CLIENTS
CLIENTS = 8
DEADLINE_S = 120
WARMUP = 80  # requests before the RSS baseline: allocator pools and caches fill first
RSS_GROWTH_MIB = 48
CONTEXT = 256  # the chat model's max_position_embeddings
PARALLEL = 4

QUESTION = [{"role": "user", "content": "床前明月光，疑是地上霜。What comes next?"}]
WORDS = "床前明月光 疑是地上霜 The quick brown fox jumps over the lazy dog 我们 使用 Python".split()


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def soak_server(chat_model_folder):
    s = Server([str(chat_model_folder), "--parallel", str(PARALLEL), "--max-queue", "64", "--threads", "1",
                "--template", "chatml"])
    yield s
    s.stop()


def greedy(url: str) -> str:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 16, "temperature": 0},
                   timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def one_request(url: str, rng: random.Random, client: httpx.Client) -> str:
    """Sends one random request and checks its answer; returns what kind it was."""
    kind = rng.choices(["ok", "ok_stream", "leave", "bad_json", "bad_type", "bad_utf8", "too_long", "huge_max"],
                       weights=[30, 30, 12, 6, 6, 6, 5, 5])[0]
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
    body: dict = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
    body.update(temperature=round(rng.uniform(0, 1.5), 3), top_p=round(rng.uniform(0.05, 1.0), 3),
                max_tokens=rng.randint(1, 40), seed=rng.randint(0, 2 ** 31))
    headers = {"Content-Type": "application/json"}
    if kind == "bad_json":
        r = client.post(url + path, content=json.dumps(body)[: rng.randint(1, 20)], headers=headers)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"], r.text
    elif kind == "bad_type":
        field, value = rng.choice([("max_tokens", "many"), ("temperature", "hot"), ("top_p", [1]),
                                   ("stream", {"x": 1}), ("messages" if chat else "prompt", 5), ("max_tokens", -3)])
        r = client.post(url + path, json={**body, field: value})
        assert r.status_code == 400 and field in r.text, r.text
    elif kind == "bad_utf8":
        raw = json.dumps(body).encode().replace(b'"temperature"', b'"\xff\xfetemp"', 1)
        raw = raw.replace(text.encode(), text.encode()[:5] + b"\xc3\x28\xed\xa0\x80", 1)
        r = client.post(url + path, content=raw, headers=headers)
        assert r.status_code == 400 and "error" in r.json(), r.text
    elif kind == "too_long":
        long = "word " * (CONTEXT * 2)
        r = client.post(url + path, json={**body, **({"messages": [{"role": "user", "content": long}]} if chat
                                                    else {"prompt": long})})
        assert r.status_code == 400 and f"context is {CONTEXT} tokens" in r.json()["error"]["message"], r.text
    elif kind == "huge_max":  # max_tokens past the context: clamped to the room left, never past it
        r = client.post(url + path, json={**body, "max_tokens": 10 ** 12, "ignore_eos": True, "temperature": 1.0})
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        assert u["prompt_tokens"] + u["completion_tokens"] <= CONTEXT
        assert r.json()["choices"][0]["finish_reason"] == "length"
    elif kind == "ok":
        r = client.post(url + path, json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["usage"]["completion_tokens"] <= body["max_tokens"]
        choice = data["choices"][0]
        assert isinstance(choice["message"]["content"] if chat else choice["text"], str)
        assert choice["finish_reason"] in ("stop", "length")
    else:  # streamed: to the end, or left after a few chunks
        leave_after = rng.randint(1, 4) if kind == "leave" else None
        with client.stream("POST", url + path, json={**body, "stream": True,
                                                      **({"max_tokens": 200, "ignore_eos": True}
                                                         if leave_after else {})}) as r:
            assert r.status_code == 200
            events = 0
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                json.loads(line[6:])
                events += 1
                if leave_after and events >= leave_after:
                    break
            else:
                pytest.fail("the stream ended without [DONE]")
    return kind


def test_soak(soak_server):
    url = soak_server.url
    pid = soak_server.proc.pid
    before = greedy(url)
    start = time.time()
    kinds: dict[str, int] = {}
    rss_base = None

    def client_loop(c: int, n: int) -> list[str]:
        rng = random.Random(1000 + c)
        with httpx.Client(timeout=60) as client:
            return [one_request(url, rng, client) for _ in range(n)]

    with cf.ThreadPoolExecutor(CLIENTS) as pool:
        # warm-up round, then the RSS baseline, then the rest
        for part in pool.map(lambda c: client_loop(c, WARMUP // CLIENTS), range(CLIENTS)):
            for k in part:
                kinds[k] = kinds.get(k, 0) + 1
        rss_base = rss_kib(pid)
        rest = (REQUESTS - WARMUP) // CLIENTS
        for part in pool.map(lambda c: client_loop(CLIENTS + c, rest), range(CLIENTS)):
            for k in part:
                kinds[k] = kinds.get(k, 0) + 1
    elapsed = time.time() - start
    assert sum(kinds.values()) == REQUESTS and elapsed < DEADLINE_S, (kinds, elapsed)
    assert all(kinds.get(k, 0) > 0 for k in ("ok", "ok_stream", "leave", "bad_json", "bad_type", "bad_utf8",
                                              "too_long", "huge_max")), kinds

    # cancelled streams are noticed at the scheduler's next step: give it a moment
    end = time.time() + 10
    while True:
        m = httpx.get(url + "/metrics").text
        if metric(m, "linly_busy_slots") == 0 and metric(m, "linly_queue_depth") == 0 or time.time() > end:
            break
        time.sleep(0.1)
    assert metric(m, "linly_busy_slots") == 0 and metric(m, "linly_queue_depth") == 0, m
    assert metric(m, 'linly_requests_total{finish_reason="cancelled"}') >= 1
    growth_mib = (rss_kib(pid) - rss_base) / 1024
    print(f"soak: {REQUESTS} requests {kinds} in {elapsed:.1f}s; RSS {rss_base / 1024:.1f} MiB after warm-up, "
          f"grew {growth_mib:.1f} MiB")
    assert growth_mib < RSS_GROWTH_MIB
    assert greedy(url) == before  # the server still answers, and the same as before
    assert soak_server.proc.poll() is None
