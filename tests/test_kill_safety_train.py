"""Crash safety of training checkpoints and of `linly-train export`: a SIGKILL in the
middle of writing leaves the previous good checkpoint (and the `latest` pointer to it) or
the previous exported files in place, nothing half-written under a final name, and
resume picks a complete checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

from proctree import kill_tree_when, run_tree  # noqa: E402
from textdata import CORPUS  # noqa: E402

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
# Large enough (about 4M parameters: 16 MB of weights, 64 MB per ZeRO checkpoint with
# the Adam moments) that a checkpoint takes a while to write and the kill lands in it.
SIZE = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def train_cmd(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "linly_train.cli", "train", "--nproc", "1", "--model", str(model), "--data",
            str(data), "--out", str(out), "--lr", "1e-3", "--micro-batch", "1", "--no-bf16", *extra]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def setup(chat_model_folder, tmp_path_factory):
    from linly_train.data.pretrain import build_pretrain
    from linly_train.tokenizer import folder_tokenizer

    root = tmp_path_factory.mktemp("killtrain")
    model = root / "model"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=900, bos_token_id=1, eos_token_id=2, **SIZE)
    transformers.LlamaForCausalLM(cfg).save_pretrained(model, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        (model / f).write_bytes((chat_model_folder / f).read_bytes())
    build_pretrain(root / "data", folder_tokenizer(model), [CORPUS], seq_len=32, val_fraction=0.1, progress=False)
    return root, model


def test_sigkill_while_checkpointing_keeps_the_last_complete_one(setup):
    root, model = setup
    out = root / "run"
    ckpts = out / "checkpoints"
    staging = ckpts / ".incomplete"

    def writing_second_checkpoint() -> bool:
        # a checkpoint after the first complete one is being written
        try:
            return (ckpts / "latest").is_file() and any(p.is_file() for p in staging.glob("step*/*"))
        except FileNotFoundError:  # the folder was renamed away while we looked
            return False

    proc = subprocess.Popen(train_cmd(model, root / "data", out, "--steps", "60", "--save-every", "1",
                                      "--eval-batches", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    killed = kill_tree_when(proc, writing_second_checkpoint)
    assert killed, "training ended before a checkpoint write could be interrupted"
    latest = (ckpts / "latest").read_text().strip()
    tags = sorted((p.name for p in ckpts.iterdir() if p.is_dir() and p.name.startswith("step")),
                  key=lambda n: int(n[4:]))
    assert latest in tags and latest == tags[-1]
    # every checkpoint under its final name is whole: the same files as the first one
    reference = {name for name in files_of(ckpts / tags[0])}
    for tag in tags:
        assert set(files_of(ckpts / tag)) == reference, tag
    # the interrupted one sits only in the staging folder
    interrupted = [p.name for p in staging.iterdir()] if staging.exists() else []
    assert all(t not in tags for t in interrupted), (interrupted, tags)

    # resume takes the complete checkpoint and goes on; the leftovers are cleared
    step = int(latest[4:])
    r = run_tree(train_cmd(model, root / "data", out, "--resume", "--steps", str(step + 1), "--eval-batches", "1"),
                 timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"at step {step}" in r.stdout
    assert (ckpts / "latest").read_text().strip() == f"step{step + 1}"
    assert not staging.exists()


def test_resume_ignores_a_latest_that_points_at_nothing(tmp_path):
    from linly_train.trainer import complete_checkpoint

    ck = tmp_path / "checkpoints"
    for tag in ("step2", "step10", ".incomplete/step12"):
        (ck / tag).mkdir(parents=True)
    (ck / "latest").write_text("step12")  # e.g. written by an older trainer before it died
    assert complete_checkpoint(ck) == "step10"
    (ck / "latest").write_text("step2")
    assert complete_checkpoint(ck) == "step2"
    assert complete_checkpoint(tmp_path / "none") is None


def test_sigkill_during_export_keeps_the_old_files(setup, tmp_path):
    from linly_engine.formats.packed import verify

    root, model = setup
    run = root / "exportrun"
    r = run_tree(train_cmd(model, root / "data", run, "--steps", "2", "--eval-batches", "1"), timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "m.linly"
    export = [sys.executable, "-m", "linly_train.cli", "export", str(run), str(out)]
    r = run_tree(export + ["--quant", "q8_0"], timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    hf = tmp_path / "m-hf"
    # digests, not bytes: a failing comparison of megabytes would have pytest diff them for hours
    first = before = sha256(out)
    hf_before = {n: sha256(hf / n) for n in files_of(hf)}

    for what, prefix in (("the Hugging Face folder", ".m-hf.tmp-"), ("the packed file", ".m.linly.tmp-")):
        def writing() -> bool:
            try:
                return any(p.name.startswith(prefix) and (p.is_dir() and any(p.iterdir()) or p.is_file() and
                                                          p.stat().st_size > 0) for p in tmp_path.iterdir())
            except FileNotFoundError:  # renamed away while we looked
                return False

        for _attempt in range(5):
            proc = subprocess.Popen(export + ["--quant", "f32"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=ENV)
            assert kill_tree_when(proc, writing), f"export ended before {what} could be interrupted"
            assert verify(out)["tensors"] > 0  # never a torn file under the final name
            if sha256(out) == before:
                break
            # The write finished between the check and the kill (a tiny model writes in
            # milliseconds): a complete new file, not a torn one. Interrupt the next one.
            before = sha256(out)
        else:
            pytest.fail(f"five exports finished before {what} could be interrupted")
        assert {n: sha256(hf / n) for n in files_of(hf)} == hf_before, what
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m-hf", "m.linly"]
    # the next export clears the dead writers' temporaries and replaces both
    r = run_tree(export + ["--quant", "f32"], timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-hf", "m.linly"]
    assert sha256(out) != first and verify(out)["tensors"] > 0
    assert json.loads((hf / "config.json").read_text())["hidden_size"] == SIZE["hidden_size"]
