"""A training run's checkpoint → a consolidated Hugging Face folder (safetensors) → the
engine's packed file, in one step."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def latest_tag(ckpt_dir: Path) -> str:
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{ckpt_dir} has no 'latest' file; is it a DeepSpeed checkpoint folder?")
    return latest.read_text().strip()


def export(run_dir: str | Path, out: str | Path, quant: str | None = "q4_0", tag: str | None = None,
           hf_dir: str | Path | None = None) -> dict[str, Any]:
    """``run_dir``: a trainer output folder (checkpoints/ and hf_files/). Writes the HF
    folder (default: next to ``out``, named ``<stem>-hf``) and the packed file ``out`` with
    its matrices in ``quant`` (None: f32, as the checkpoint holds them)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    run_dir, out = Path(run_dir), Path(out)
    ckpt_dir = run_dir / "checkpoints"
    tag = tag or latest_tag(ckpt_dir)
    if not (ckpt_dir / tag).is_dir():
        raise FileNotFoundError(f"no checkpoint {tag} in {ckpt_dir}")
    files = run_dir / "hf_files"
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    config = AutoConfig.from_pretrained(files)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"checkpoint {tag} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    hf = Path(hf_dir) if hf_dir else out.with_name(out.stem + "-hf")
    # Crash safety: the folder is written under a temporary name and renamed in when
    # complete (the packed file is written the same way by write_packed).
    tmp = hf.with_name(f".{hf.name}.tmp-{os.getpid()}")
    for stale in hf.parent.glob(f".{hf.name}.*-*"):  # dead writers' temporaries
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if ".old-" in stale.name and not hf.exists():  # killed between the two renames below
                os.replace(stale, hf)
            else:
                shutil.rmtree(stale, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in files.iterdir():
            if f.name != "config.json":
                shutil.copy(f, tmp / f.name)
        if hf.exists():  # a directory cannot be renamed over a full one: move the old one aside first
            old = hf.with_name(f".{hf.name}.old-{os.getpid()}")
            os.replace(hf, old)
            os.replace(tmp, hf)
            shutil.rmtree(old)
        else:
            os.replace(tmp, hf)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = write_packed(load_checkpoint(hf), out, quant)
    return {"checkpoint": str(ckpt_dir / tag), "hf": str(hf), **summary}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
