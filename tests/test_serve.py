"""``linly serve`` in a subprocess, driven by the official openai client and raw HTTP:
answers, streaming, stop strings, usage, batching that changes nothing, and each kind of
bad request getting its status code while the server keeps serving."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import pytest

from serving import Server

openai = pytest.importorskip("openai")
GREEDY = dict(temperature=0)
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2+2?", "Who wrote Hamlet?",
             "What is the largest planet?", "Translate 'hello' into French.", "What is water made of?",
             "Say something about cats."]


@pytest.fixture(scope="module")
def server(default_home):
    s = Server(["--parallel", "4", "--max-context", "1024", "--temperature", "0"],  # greedy unless asked
               env={"LINLY_HOME": str(default_home)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_name(client):
    return client.models.list().data[0].id


def ask(client, model, q, **kw):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], max_tokens=24,
                                       **{**GREEDY, **kw})
    return r.choices[0].message.content


def test_chat_completion(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                       **GREEDY)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 2
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_and_length(client, model_name):
    r = client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=5, **GREEDY)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.choices[0].text


def test_streaming_equals_the_whole_answer(client, model_name):
    whole = ask(client, model_name, QUESTIONS[1])
    chunks = list(client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": QUESTIONS[1]}],
                                                 max_tokens=24, stream=True, stream_options={"include_usage": True},
                                                 **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens > 0
    stream = client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=8, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in stream)


def test_stop_strings(client, model_name):
    full = ask(client, model_name, QUESTIONS[0])
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                       stop=["Paris"], max_tokens=24, **GREEDY)
    assert r.choices[0].message.content == full[:full.index("Paris")]
    assert r.choices[0].finish_reason == "stop"


def test_concurrent_requests_get_the_answers_they_get_alone(client, model_name):
    alone = [ask(client, model_name, q) for q in QUESTIONS]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: ask(client, model_name, q), QUESTIONS))
    assert together == alone


def test_tokenize_models_metrics_and_linly_chat(server, model_name):
    toks = httpx.post(server.url + "/tokenize", json={"content": "你好，世界"}).json()["tokens"]
    assert httpx.post(server.url + "/detokenize", json={"tokens": toks}).json()["content"] == "你好，世界"
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == model_name
    r = httpx.post(server.url + "/chat", json={"question": "What is the capital of France?"}, timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "success" and "Paris" in r.json()["answer"][0]
    r = httpx.post(server.url + "/chat", json={"questions": "typo"})
    assert r.status_code == 400 and r.json()["status"] == "error"
    text = httpx.get(server.url + "/metrics").text
    for name in ("linly_requests_total", "linly_prompt_tokens_total", "linly_generated_tokens_total",
                 "linly_time_to_first_token_seconds_bucket", "linly_request_tokens_per_second_count",
                 "linly_queue_depth", "linly_decode_tokens_per_second"):
        assert name in text, name


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "role"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 400, "n=1"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}).encode(), 404, "gpt-9"),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 3000}]}).encode(), 400, "context is 1024"),
])
def test_bad_requests_get_their_status_and_the_server_goes_on(server, client, model_name, body, status, words):
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert words in err["message"] and err["type"] and "Traceback" not in r.text
    assert "Paris" in ask(client, model_name, QUESTIONS[0])


def test_an_oversized_body_is_refused_unread(server, client, model_name):
    body = json.dumps({"messages": [{"role": "user", "content": "x" * (5 << 20)}]})
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "at most 4194304" in r.json()["error"]["message"]
    assert "Paris" in ask(client, model_name, QUESTIONS[0])


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 2000, "stream": True,
            "temperature": 0.8, "seed": 1}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for i, _line in enumerate(r.iter_lines()):
            if i > 6:
                break  # leave after a few chunks
    end = time.time() + 10
    while time.time() < end:
        m = httpx.get(server.url + "/metrics").text
        if 'linly_requests_total{finish_reason="cancelled"}' in m and "linly_busy_slots 0.0" in m:
            return
        time.sleep(0.1)
    pytest.fail("the slot was not freed: " + m)


@pytest.fixture(scope="module")
def guarded(default_home):
    s = Server(["--parallel", "1", "--max-queue", "1", "--api-key", "s3cret", "--max-context", "1024"],
               env={"LINLY_HOME": str(default_home)})
    yield s
    s.stop()


def test_api_key_guards_everything_but_health(guarded):
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/").status_code == 401
    assert "linly chat" in httpx.get(guarded.url + "/?api_key=s3cret").text
    for path in ("/v1/models", "/metrics", "/tokenize"):
        assert httpx.get(guarded.url + path).status_code == 401
        assert httpx.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    c = openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    c = openai.OpenAI(base_url=guarded.url + "/v1", api_key="s3cret", max_retries=0)
    assert c.models.list().data


def test_full_queue_gets_429(guarded):
    headers = {"Authorization": "Bearer s3cret"}
    body = {"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "temperature": 1.0}

    def gauge(name):
        text = httpx.get(guarded.url + "/metrics", headers=headers).text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))

    def wait_until(cond):
        end = time.time() + 30
        while not cond():
            assert time.time() < end, "timed out"
            time.sleep(0.02)

    with cf.ThreadPoolExecutor(2) as pool:
        post = lambda: httpx.post(guarded.url + "/v1/completions", json=body, headers=headers, timeout=120)  # noqa: E731
        first = pool.submit(post)
        wait_until(lambda: gauge("linly_busy_slots") == 1)  # the only slot is taken
        second = pool.submit(post)
        wait_until(lambda: gauge("linly_queue_depth") == 1)  # the queue (bound 1) is full
        third = httpx.post(guarded.url + "/v1/completions", json=body, headers=headers, timeout=120)
        assert third.status_code == 429 and "busy" in third.json()["error"]["message"]
        assert first.result().status_code == 200 and second.result().status_code == 200  # the queued one ran
    ok = httpx.post(guarded.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, headers=headers,
                    timeout=60)
    assert ok.status_code == 200


def test_health_is_503_while_loading(default_home):
    from linly_engine.default_model import find_default_gguf

    s = Server([str(find_default_gguf())], wait=False)  # a GGUF takes seconds to parse
    try:
        statuses, while_loading = set(), set()
        end = time.time() + 120
        while time.time() < end:
            try:
                code = httpx.get(s.url + "/health", timeout=2).status_code
                statuses.add(code)
                if code == 503:
                    while_loading.add(httpx.get(s.url + "/v1/models").status_code)
                if code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert statuses == {503, 200}
        assert 503 in while_loading  # the API refuses politely until the model is there
    finally:
        s.stop()
