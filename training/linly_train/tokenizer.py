"""The engine's tokenizer and chat template for a Hugging Face model folder: training
tokenises with the same code that will serve the model."""

from __future__ import annotations

from pathlib import Path

from linly_engine.formats.packed import HF_FILES
from linly_engine.templates import ChatTemplate, choose_template
from linly_engine.tokenizer import Tokenizer, load_tokenizer


def folder_tokenizer(folder: str | Path) -> Tokenizer:
    folder = Path(folder)
    files = {n: (folder / n).read_bytes() for n in HF_FILES if (folder / n).is_file()}
    return load_tokenizer(files)


def folder_template(folder: str | Path, name: str | None = None) -> ChatTemplate:
    return choose_template(name, folder_tokenizer(folder).chat_template)
