"""The trainer end to end on the CPU: a tiny random LLaMA trained 24 steps with DeepSpeed
ZeRO-3 on 2 processes (gloo), exact resume from a checkpoint, export to the engine's
packed file."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

from proctree import run_tree  # noqa: E402
from textdata import CORPUS  # noqa: E402

TRAIN = ["--steps", "24", "--save-every", "12", "--lr", "3e-3", "--micro-batch", "2", "--eval-every", "12",
         "--eval-batches", "2", "--warmup", "3"]


def train(model, data, out, *extra):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = run_tree([sys.executable, "-m", "linly_train.cli", "train", "--nproc", "2", "--model", str(model),
                  "--data", str(data), "--out", str(out), *TRAIN, *extra], timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(chat_model_folder, tmp_path_factory):
    from linly_train.data.pretrain import build_pretrain
    from linly_train.tokenizer import folder_tokenizer

    root = tmp_path_factory.mktemp("train")
    build_pretrain(root / "data", folder_tokenizer(chat_model_folder), [CORPUS], seq_len=32, val_fraction=0.1,
                   progress=False)
    log = train(chat_model_folder, root / "data", root / "A")
    return root, log


def test_loss_falls_on_two_processes(run):
    root, log = run
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 24
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]
    assert (root / "A" / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (root / "A" / "checkpoints").iterdir() if p.is_dir()) == ["step12", "step24"]


def test_resume_reproduces_the_next_losses(run, chat_model_folder):
    """From the step-12 checkpoint, with activation checkpointing on (recomputation must
    not change the numbers either)."""
    root, log = run
    c = root / "C"
    (c / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "A" / "checkpoints" / "step12", c / "checkpoints" / "step12")
    (c / "checkpoints" / "latest").write_text("step12")
    resumed = train(chat_model_folder, root / "data", c, "--resume", "--grad-checkpointing")
    want = [r["loss"] for r in log if "loss" in r][12:]
    got = [r["loss"] for r in resumed if "loss" in r]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_export_matches_transformers(run, chat_model_folder):
    import linly_engine as le
    from linly_train.export import export

    root, _ = run
    summary = export(root / "A", root / "exported.linly", quant=None)
    trained = transformers.LlamaForCausalLM.from_pretrained(summary["hf"]).eval()
    start = transformers.LlamaForCausalLM.from_pretrained(chat_model_folder)
    assert not torch.equal(trained.model.embed_tokens.weight, start.model.embed_tokens.weight)  # it did train
    ids = [1, 50, 60, 70, 80, 90, 100, 5, 7]
    with torch.no_grad():
        want = trained(torch.tensor([ids])).logits[0].numpy()
    got = le.Model.load(root / "exported.linly", kv_cache="f32", max_context=64).prefill(ids, all_logits=True)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    eng = le.Engine.load(root / "exported.linly", template="linly")  # and it carries its tokenizer
    assert eng.tokenizer.encode("你好") == le.Engine.load(chat_model_folder, template="linly").tokenizer.encode("你好")
