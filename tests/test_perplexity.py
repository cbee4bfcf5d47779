"""Perplexity: the engine and transformers score the same ids to the same number; KL and
top-1 agreement against f32; the window protocol; the CLI and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import linly_engine as le
from linly_engine import perplexity as P
from textdata import CORPUS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ids(chat_model_folder):
    tok = le.Engine.load(chat_model_folder, template="linly").tokenizer
    return [tok.bos_id] + tok.encode(CORPUS.read_text(encoding="utf-8"), add_special=False)[:200]


def test_engine_and_transformers_agree(chat_model_folder, ids):
    f32 = le.Model.load(chat_model_folder, kv_cache="f32", max_context=64)
    ours = P.score(P.engine_runner(f32), ids, 64)
    theirs = P.score(P.hf_runner(chat_model_folder), ids, 64)
    assert ours.tokens == theirs.tokens == sum(len(w) - 1 for w in P.windows(ids, 64))
    assert ours.ppl == pytest.approx(theirs.ppl, rel=1e-4)
    # one window by hand: transformers' own loss is the mean NLL over the window
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_model_folder).eval()
    with torch.no_grad():
        loss = model(torch.tensor([ids[:64]]), labels=torch.tensor([ids[:64]])).loss.item()
    assert P.score(P.engine_runner(f32), ids[:64], 64).nll == pytest.approx(loss, rel=1e-4)


def test_half_scores_the_second_half_of_each_window(chat_model_folder, ids):
    f32 = le.Model.load(chat_model_folder, kv_cache="f32", max_context=64)
    s = P.score(P.engine_runner(f32), ids[:128], 64, "half")
    assert s.tokens == 2 * (64 - 1 - 32)


def test_kl_and_agreement_against_f32(chat_model_folder, ids):
    f32 = le.Model.load(chat_model_folder, kv_cache="f32", max_context=64)
    ref = le.Model.load(chat_model_folder, kv_cache="f32", max_context=64)
    same = P.score(P.engine_runner(f32), ids, 64, reference=P.engine_runner(ref))
    assert abs(same.kl) < 1e-9 and same.top1_agreement == 1.0
    q4 = le.Model.load(chat_model_folder, quant="q4_0", max_context=64)
    s = P.score(P.engine_runner(q4), ids, 64, reference=P.engine_runner(ref))
    assert 0 < s.kl < 0.5 and 0 < s.top1_agreement <= 1


def test_cli(chat_model_folder, tmp_path):
    r = subprocess.run([sys.executable, "-m", "linly_engine", "perplexity", str(chat_model_folder), "--text",
                        str(CORPUS), "--ctx", "64", "--max-tokens", "150", "--kl", "--hf", str(chat_model_folder),
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["engine"]["ppl"] > 1 and "kl" in out["engine"] and out["tokens"] == 150
    assert out["transformers"]["ppl"] == pytest.approx(out["engine"]["ppl"], rel=1e-2)  # int8x2 activations here
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    r = subprocess.run([sys.executable, "-m", "linly_engine", "perplexity", str(chat_model_folder), "--text", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not UTF-8" in r.stderr
