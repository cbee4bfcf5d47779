"""Limits: a model that needs more memory than the machine has is refused before anything
is allocated, with the bytes it wanted; the service bounds request bodies (declared or
chunked), max_tokens (clamped to the context left) and its queue (429, test_serve)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

import linly_engine as le
from linly_engine.model import load_checkpoint, memory_needed
from serving import Server

PHYSICAL = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_memory_estimate_matches_the_native_model(chat_model_folder):
    ck = load_checkpoint(chat_model_folder)
    for kv, slots in (("f16", 1), ("f32", 3)):
        m = le.Model(ck, max_context=128, kv_cache=kv, slots=slots)
        need = memory_needed(m.config, ck.tensors, slots, kv)
        assert need["kv_cache"] == m.info()["kv_cache_bytes"]
        assert need["weights"] >= m.info()["weight_bytes"]  # f32 sources: the same bytes


def test_a_context_larger_than_memory_fails_early_with_the_bytes(chat_model_folder):
    ck = load_checkpoint(chat_model_folder)
    ctx = 2 ** 31 - 1
    need = memory_needed({**ck.config, "max_context": ctx}, ck.tensors, 4, "f16")["total"]
    assert need > PHYSICAL  # the premise: this machine cannot hold it
    t0 = time.time()
    with pytest.raises(ValueError) as e:
        le.Model(ck, max_context=ctx, slots=4)
    assert time.time() - t0 < 5  # refused up front, not after trying to allocate
    msg = str(e.value)
    assert f"needs about {need} bytes" in msg and f"machine has {PHYSICAL} bytes" in msg and "max_context" in msg


def test_cli_and_server_say_so(chat_model_folder):
    r = subprocess.run([sys.executable, "-m", "linly_engine", "generate", "hi", "-m", str(chat_model_folder),
                        "--max-context", str(2 ** 31 - 1)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "bytes" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    s = Server([str(chat_model_folder), "--max-context", str(2 ** 31 - 1)], wait=False)
    try:
        end = time.time() + 120
        while time.time() < end:
            try:
                h = httpx.get(s.url + "/health", timeout=2)
                if h.status_code == 503 and "error" in h.json().get("status", ""):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert "needs about" in h.json()["error"] and "bytes" in h.json()["error"]
    finally:
        s.stop()


@pytest.fixture(scope="module")
def small_server(chat_model_folder):
    s = Server([str(chat_model_folder), "--parallel", "2", "--threads", "1", "--max-request-bytes", "65536"])
    yield s
    s.stop()


def test_a_chunked_body_over_the_limit_is_refused(small_server):
    """No Content-Length to check up front: the body is counted as it arrives."""
    def body():
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * 4096
        yield b'", "max_tokens": 1}'

    r = httpx.post(small_server.url + "/v1/completions", content=body(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "at most 65536" in r.json()["error"]["message"], r.text
    ok = httpx.post(small_server.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_a_small_chunked_body_is_served(small_server):
    def body():
        yield b'{"prompt": "hello",'
        yield b' "max_tokens": 3, "temperature": 0}'

    r = httpx.post(small_server.url + "/v1/completions", content=body(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_max_tokens_is_clamped_to_the_context(small_server):
    r = httpx.post(small_server.url + "/v1/completions", timeout=60,
                   json={"prompt": "hello", "max_tokens": 10 ** 15, "ignore_eos": True, "temperature": 1.0})
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["prompt_tokens"] + u["completion_tokens"] == 256  # the model's whole context, not more
    assert r.json()["choices"][0]["finish_reason"] == "length"
