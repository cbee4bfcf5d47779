"""The engine's own model file (``.linly``): a GGUF container holding the canonical
tensor set, ready to memory-map and load without converting anything.

Why GGUF: it is the well-known single-file container for this job (typed key-value
metadata, aligned tensor data, memory-mappable, readable by gguf-py and llama.cpp's
tools), and it needs no code of our own to parse. What is ours is the content:

- ``linly.format_version`` (3; version 2 kept each panel whole along K, before the
  K-slices of ``panel.h``; version 1 kept each panel's scales at its end, before the
  chunked panels), ``linly.tool``, ``linly.source``: provenance;
- ``linly.config``: the decoder config (JSON); a tied LM head is stored once, as the
  embedding, with ``tie_word_embeddings`` true;
- ``linly.tensors``: JSON ``{name: {"fmt", "shape", "layout"}}``. Integer formats are
  stored in the kernels' 16-row panel layout (``csrc/quant/panel.h``), so loading copies
  the mapped bytes into the weight arena without repacking them; every tensor is stored
  as raw bytes (GGUF type I8) because q4_g and panels have no GGUF type of their own;
- ``linly.sha256``: the SHA-256 of all tensor bytes in ``linly.tensors`` order, then the
  files in ``linly.files`` order,
  checked by ``verify`` (not at every load: hashing gigabytes costs seconds);
- files carried along, each stored as a byte tensor named ``file:<name>`` and listed in
  ``linly.files``: a Hugging Face source's tokenizer and generation files, and a GGUF
  source's ``tokenizer.*`` fields as ``gguf_tokenizer.json``. (Not as GGUF metadata
  arrays: gguf-py parses those one element at a time, seconds for a 50k vocabulary.)

Writes go to a temporary name in the same folder and are renamed into place only when
complete, so an interrupted conversion never leaves a half-written file under the name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from linly_engine.formats.checkpoint import Checkpoint, Tensor
from linly_engine.formats.hf import CheckpointError
from linly_engine.precision import target_format

FORMAT_VERSION = 3
PANEL_FORMATS = ("q4_0", "q4_1", "q8_0", "q4_g32", "q4_g64", "q4_g128")
HF_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json", "chat_template.jinja")
MATRIX_NAMES = ("_proj.weight", "embed_tokens.weight", "lm_head.weight")


def is_packed_reader(reader) -> bool:
    """Whether a parsed GGUF file is one of ours."""
    return reader.get_field("linly.format_version") is not None


def convert_tensor(t: Tensor, target: str) -> Tensor:
    """One weight in the packed file's representation (target format; panels for integer formats)."""
    from linly_engine import _C

    n, k = t.shape
    if target != "f32" and k % _C.format_info(target)["block_elems"]:
        target = "f16"  # a K the block format can't split: keep it dense
    keep = t.fmt == target
    rows = t.row_bytes() if keep else _C.quantize(t.to_f32(), target)
    order = t.input_order if keep else None  # requantised weights are back in input order
    if target in PANEL_FORMATS:
        return Tensor(_C.repack_panels(rows, target, k), target, (n, k), "panel16", order)
    return Tensor(rows, target, (n, k), "rows", order)


def tensor_bytes(t: Tensor) -> list[np.ndarray]:
    """What the checksum covers for a tensor: its bytes, then its input order if any."""
    parts = [np.ascontiguousarray(t.array).view(np.uint8).reshape(-1)]
    if t.input_order is not None:
        parts.append(np.ascontiguousarray(t.input_order, dtype="<i4").view(np.uint8))
    return parts


def write_packed(ck: Checkpoint, out: str | Path, quant: str | None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Converts `ck` (matrices to `quant`, or kept as they are when None) and writes it
    atomically to `out`. Returns a summary (bytes, parameters, bits per weight)."""
    import gguf

    from linly_engine import __version__

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    remove_stale_temporaries(out)
    converted: dict[str, Tensor] = {}
    params = 0
    tied = ck.tensors.get("lm_head.weight") is ck.tensors.get("model.embed_tokens.weight")
    for name, t in ck.tensors.items():
        if progress:
            progress(name)
        if tied and name == "lm_head.weight":  # stored once, as the embedding
            continue
        if len(t.shape) == 2 and name.endswith(MATRIX_NAMES):
            c = convert_tensor(t, target_format(name, quant, t.fmt, t.shape[1]))
        else:
            c = Tensor(np.ascontiguousarray(t.to_f32()), "f32", t.shape)
        converted[name] = c
        params += int(np.prod(t.shape))

    files = carried_files(ck)
    digest = hashlib.sha256()
    table = {}
    for name, t in converted.items():
        for part in tensor_bytes(t):
            digest.update(memoryview(part))
        table[name] = {"fmt": t.fmt, "shape": list(t.shape), "layout": t.layout}
        if t.input_order is not None:
            table[name]["input_order"] = f"order:{name}"
    for blob in files.values():
        digest.update(blob)
    w = gguf.GGUFWriter(str(tmp), ck.config.get("architecture", "llama"))
    try:
        w.add_custom_alignment(64)
        w.add_uint32("linly.format_version", FORMAT_VERSION)
        w.add_string("linly.tool", f"linly-engine {__version__}")
        w.add_string("linly.source", str(ck.source))
        w.add_string("linly.config", json.dumps({**ck.config, "tie_word_embeddings": tied}))
        w.add_string("linly.tensors", json.dumps(table))
        w.add_string("linly.sha256", digest.hexdigest())
        w.add_string("linly.files", json.dumps(list(files)))
        for name, t in converted.items():
            raw = np.ascontiguousarray(t.array).view(np.int8).reshape(-1)
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.I8)
            if t.input_order is not None:
                w.add_tensor(f"order:{name}", tensor_bytes(t)[1].view(np.int8), raw_dtype=gguf.GGMLQuantizationType.I8)
        for name, blob in files.items():
            w.add_tensor(f"file:{name}", np.frombuffer(blob, np.int8), raw_dtype=gguf.GGMLQuantizationType.I8)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:  # includes KeyboardInterrupt: never leave the temporary behind
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    size = out.stat().st_size
    return {"path": str(out), "bytes": size, "parameters": params, "bits_per_weight": 8 * size / max(params, 1)}


def remove_stale_temporaries(out: Path) -> None:
    """Deletes temporaries of ``out`` left by writers that were killed (their process is gone)."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def carried_files(ck: Checkpoint) -> dict[str, bytes]:
    """The tokenizer and generation files that travel inside the packed file."""
    files: dict[str, bytes] = dict(ck.metadata.get("files") or {})
    fields = ck.metadata.get("gguf_tokenizer_fields")
    if fields and "gguf_tokenizer.json" not in files:
        files["gguf_tokenizer.json"] = json.dumps(fields, ensure_ascii=False).encode()
    if "files" in ck.metadata or fields:  # a packed or GGUF source carries its own
        return files
    # A Hugging Face or Meta folder holds its tokenizer files; a TencentPretrain .bin
    # or a Meta model folder may have tokenizer.model one level up (Meta's release layout).
    src = Path(ck.source)
    folder = src if src.is_dir() else src.parent
    for where, names in ((folder, HF_FILES), (folder.parent, ("tokenizer.model",))):
        for name in names:
            if name not in files and (where / name).is_file():
                files[name] = (where / name).read_bytes()
        if "tokenizer.model" in files or "tokenizer.json" in files:
            break
    return files


def read_packed(path: str | Path, reader=None) -> Checkpoint:
    from linly_engine.formats.gguf import _field, _reader

    path = Path(path)
    r = reader if reader is not None else _reader(path)
    version = _field(r, "linly.format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: packed format version {version} is not supported by this engine "
                              f"(it reads version {FORMAT_VERSION}); convert the model again")
    try:
        config = json.loads(_field(r, "linly.config"))
        table = json.loads(_field(r, "linly.tensors"))
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the model's config or tensor table is missing or corrupt") from None
    data = {t.name: t.data for t in r.tensors}
    tensors: dict[str, Tensor] = {}
    for name, spec in table.items():
        if name not in data:
            raise CheckpointError(f"{path}: tensor {name} is listed but absent; the file is corrupt")
        raw = np.asarray(data[name]).view(np.uint8).reshape(-1)
        t = Tensor(raw, spec["fmt"], tuple(spec["shape"]), spec["layout"])
        expected = _expected_bytes(t)
        if raw.size != expected:
            raise CheckpointError(f"{path}: tensor {name} has {raw.size} bytes but {spec['fmt']} "
                                  f"{spec['shape']} ({spec['layout']}) needs {expected}; the file is corrupt")
        if t.fmt == "f32":
            t = Tensor(raw.view(np.float32).reshape(t.shape), "f32", t.shape)
        if "input_order" in spec:
            order = data.get(spec["input_order"])
            k = t.shape[-1]
            if order is None or np.asarray(order).nbytes != 4 * k:
                raise CheckpointError(f"{path}: tensor {name}'s input order is missing or has the wrong size; "
                                      "the file is corrupt")
            order = np.asarray(order).view(np.uint8).reshape(-1).view("<i4")
            if not np.array_equal(np.sort(order), np.arange(k)):
                raise CheckpointError(f"{path}: tensor {name}'s input order is not a permutation; the file is corrupt")
            t.input_order = order
        tensors[name] = t
    if config.get("tie_word_embeddings") and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    try:
        names = json.loads(_field(r, "linly.files") or "[]")
        files = {n: np.asarray(data[f"file:{n}"]).tobytes() for n in names}
        fields = json.loads(files["gguf_tokenizer.json"]) if "gguf_tokenizer.json" in files else {}
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: the carried tokenizer files are missing or corrupt") from None
    meta = {"tool": _field(r, "linly.tool"), "sha256": _field(r, "linly.sha256"), "stored": list(table),
            "gguf_tokenizer_fields": fields, "files": files, "file_order": names}
    return Checkpoint(config, tensors, _field(r, "linly.source") or str(path), meta)


def _expected_bytes(t: Tensor) -> int:
    from linly_engine import _C

    k = t.shape[-1]
    rows = t.shape[0] if len(t.shape) == 2 else 1
    if t.layout == "panel16":
        return _C.panel_bytes(t.fmt, k) * ((rows + 15) // 16)
    return rows * _C.row_bytes(t.fmt, k)


def verify(path: str | Path) -> dict[str, Any]:
    """Re-hashes every tensor; raises CheckpointError if the file is not what was written."""
    ck = read_packed(path)
    digest = hashlib.sha256()
    for name in ck.metadata["stored"]:
        for part in tensor_bytes(ck.tensors[name]):
            digest.update(memoryview(part))
    for name in ck.metadata["file_order"]:
        digest.update(ck.metadata["files"][name])
    if not isinstance(ck.metadata["sha256"], str):
        raise CheckpointError(f"{path}: the file carries no checksum (linly.sha256 is missing or not text): "
                              "it is corrupt or was not written by linly; convert it again")
    if digest.hexdigest() != ck.metadata["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (stored {ck.metadata['sha256'][:16]}…, "
                              f"computed {digest.hexdigest()[:16]}…): the file is corrupt; convert it again")
    return {"path": str(path), "tensors": len(ck.metadata["stored"]), "sha256": digest.hexdigest(),
            "tool": ck.metadata["tool"]}
