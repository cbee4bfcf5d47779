"""The engine's tokenizer and chat template for a Hugging Face model folder: training
tokenises with the same code that will serve the model."""

from __future__ import annotations

import shutil
from pathlib import Path

from linly_engine.formats.packed import HF_FILES
from linly_engine.templates import ChatTemplate, choose_template
from linly_engine.tokenizer import Tokenizer, load_tokenizer


def folder_tokenizer(folder: str | Path) -> Tokenizer:
    folder = Path(folder)
    files = {n: (folder / n).read_bytes() for n in HF_FILES if (folder / n).is_file()}
    return load_tokenizer(files)


def copy_model_files(model_dir: str | Path, dest: str | Path) -> None:
    """A model folder's config, tokenizer and generation files (not its weights)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and f.suffix in (".json", ".model", ".jinja") and not f.name.endswith(".index.json"):
            shutil.copy(f, dest / f.name)


def folder_template(folder: str | Path, name: str | None = None) -> ChatTemplate:
    return choose_template(name, folder_tokenizer(folder).chat_template)
