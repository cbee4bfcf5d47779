"""The ``linly`` command driven end to end in subprocesses: chat with piped stdin
(commands, Ctrl-C during an answer, an over-long message), generate from an argument,
a file or stdin, JSON output, and the errors users meet first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

LINLY = [sys.executable, "-m", "linly_engine"]


def run(args, env=None, input=None, timeout=120):
    return subprocess.run(LINLY + args, input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_lists_the_commands():
    out = run(["--help"]).stdout.decode()
    for cmd in ("chat", "generate", "convert", "verify", "info"):
        assert cmd in out
    assert "--temperature" in run(["generate", "--help"]).stdout.decode()


def test_generate_paris_on_the_default_model(default_home):
    r = run(["generate", "What is the capital of France?", "--temperature", "0"], env={"LINLY_HOME": str(default_home)})
    assert r.returncode == 0, r.stderr.decode()
    assert "Paris" in r.stdout.decode()
    assert "tok/s" in r.stderr.decode()  # the speed line


def test_generate_json_stdin_and_file(chat_model_folder, tmp_path):
    base = ["-m", str(chat_model_folder), "--temperature", "0", "-n", "5", "--ignore-eos"]
    r = run(["generate", "-", "--json"] + base, input="今天天气".encode())
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["completion_tokens"] == 5 and out["finish_reason"] == "length" and out["prompt_tokens"] > 1
    f = tmp_path / "p.txt"
    f.write_text("今天天气", encoding="utf-8")
    r2 = run(["generate", "--file", str(f), "--json"] + base)
    assert json.loads(r2.stdout)["text"] == out["text"]


def test_generate_errors_are_clear(chat_model_folder, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8 \xc3")
    r = run(["generate", "--file", str(bad), "-m", str(chat_model_folder)])
    assert r.returncode == 1 and "not UTF-8" in r.stderr.decode()
    r = run(["generate", "-", "-m", str(chat_model_folder)], input=b"\xe4\xb8")
    assert r.returncode == 1 and "stdin is not UTF-8" in r.stderr.decode()
    r = run(["generate", "天气" * 200, "-m", str(chat_model_folder), "-c", "64"])
    assert r.returncode == 1 and "context holds 64" in r.stderr.decode()
    r = run(["generate", "hi", "-m", str(tmp_path / "nowhere")])
    assert r.returncode == 1 and "no model at" in r.stderr.decode()
    r = run(["generate", "hi", "-m", str(chat_model_folder), "--top-p", "0"])
    assert r.returncode == 1 and "top_p must be in (0, 1]" in r.stderr.decode()
    r = run(["generate", "hi", "-m", str(chat_model_folder), "--template", "nope"])
    assert r.returncode == 1 and "unknown chat template" in r.stderr.decode()


def test_missing_default_model_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    from linly_engine import default_model
    from linly_engine.cli import main

    monkeypatch.setenv("LINLY_HOME", str(tmp_path))
    monkeypatch.setattr(default_model, "find_default_gguf", lambda: None)
    assert main(["generate", "hi"]) == 1
    assert default_model.FETCH_COMMAND in capsys.readouterr().err


class Chat:
    """A ``linly chat`` process with piped stdin; output is collected by threads."""

    def __init__(self, args, env=None):
        self.p = subprocess.Popen(LINLY + ["chat"] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        self.out, self.err = bytearray(), bytearray()
        for stream, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, buf), daemon=True).start()

    @staticmethod
    def _pump(stream, buf):
        while chunk := stream.read1(4096):
            buf.extend(chunk)

    def send(self, line: str):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def wait_for(self, pred, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; stdout={bytes(self.out)[-300:]!r} stderr={bytes(self.err)[-300:]!r}")

    def finish(self, timeout=60):
        self.p.stdin.close()
        rc = self.p.wait(timeout)
        time.sleep(0.2)
        return rc, self.out.decode(errors="replace"), self.err.decode(errors="replace")


def test_chat_commands_and_an_over_long_message(chat_model_folder):
    c = Chat([str(chat_model_folder), "-c", "64", "--temperature", "0", "-n", "4", "--ignore-eos"])
    c.send("天气" * 100)  # far longer than the 64-token context
    c.wait_for(lambda: b"context holds 64" in c.err)
    c.send("你好")  # the program keeps running and answers the next one
    c.wait_for(lambda: c.err.count(b"tok/s") >= 1)
    c.send("/system 简短回答")
    c.send("/reset")
    c.send("/nonsense")
    c.send("/exit")
    rc, out, err = c.finish()
    assert rc == 0
    assert "error: the message is" in err and "(system prompt set" in err and "(new conversation)" in err
    assert "unknown command /nonsense" in err


def test_ctrl_c_stops_the_answer_not_the_program(default_home):
    c = Chat(["--temperature", "0", "-n", "3000", "--ignore-eos"], env={"LINLY_HOME": str(default_home)})
    c.send("Write a very long story about a dragon who learns to fly.")
    c.wait_for(lambda: len(c.out) > 80)  # the answer is streaming
    c.p.send_signal(signal.SIGINT)
    c.wait_for(lambda: b"[stopped]" in c.err)
    c.wait_for(lambda: b"tok/s" in c.err)  # the partial answer's speed line
    c.send("/reset")  # the program still reads commands
    c.wait_for(lambda: b"(new conversation)" in c.err)
    c.send("/exit")
    rc, out, err = c.finish()
    assert rc == 0, err
    assert err.count("[stopped]") == 1


def test_bench_prints_a_table_and_writes_json(chat_model_folder, tmp_path):
    out = tmp_path / "bench.json"
    r = run(["bench", str(chat_model_folder), "--threads", "1,2", "--prompt", "8", "--gen", "4", "--repeat", "1",
             "--vs", "llama.cpp,nonsense,transformers", "--json", str(out)])
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode()
    assert "decode tok/s" in text and "llama.cpp    skipped: llama.cpp needs a GGUF" in text
    assert "nonsense" in text and "skipped" in text
    result = json.loads(out.read_text())
    rows = [row for row in result["rows"] if row["engine"] == "linly"]
    assert [row["threads"] for row in rows] == [1, 2]
    assert all(row["decode_tokens_per_s"] > 0 and 0 < row["of_read_bandwidth"] for row in rows)
    peers = [row for row in result["rows"] if row["engine"] == "transformers"]
    assert [row["threads"] for row in peers] == [1, 2]
    assert all(row["linly_prefill_ratio"] > 0 and row["linly_decode_ratio"] > 0 for row in peers)
    assert "linly/transformers:" in text
    r = run(["bench", str(chat_model_folder), "--threads", "0"])
    assert r.returncode == 1 and "--threads" in r.stderr.decode()


def test_bench_peer_model_gives_the_peers_another_file(chat_model_folder, tmp_path):
    # A packed file converted from a folder has no GGUF or folder behind it that a peer can
    # read; --peer-model hands the peers the folder (as for mix4 against a Q4_0 GGUF).
    packed = tmp_path / "m.linly"
    r = run(["convert", str(chat_model_folder), str(packed), "--quant", "q4_g32"])
    assert r.returncode == 0, r.stderr.decode()
    out = tmp_path / "bench.json"
    args = ["bench", str(packed), "--threads", "1", "--prompt", "8", "--gen", "4", "--repeat", "1", "--vs", "transformers"]
    r = run(args)
    assert r.returncode == 0, r.stderr.decode()
    assert "transformers skipped" in r.stdout.decode()
    r = run(args + ["--peer-model", str(chat_model_folder), "--json", str(out)])
    assert r.returncode == 0, r.stderr.decode()
    assert "linly/transformers:" in r.stdout.decode()
    result = json.loads(out.read_text())
    assert result["peer_model"] == str(chat_model_folder) and result["model"] == str(packed)
    assert [row["engine"] for row in result["rows"]] == ["linly", "transformers"]
    r = run(["bench", str(packed), "--peer-model", str(chat_model_folder)])
    assert r.returncode == 1 and "--vs" in r.stderr.decode()
    r = run(args + ["--peer-model", str(tmp_path / "missing.gguf")])
    assert r.returncode == 1 and "missing.gguf does not exist" in r.stderr.decode()
