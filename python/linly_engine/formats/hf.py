"""Hugging Face checkpoints: LLaMA-family and Qwen2 folders.

Weights: ``model.safetensors`` or sharded ``model-0000x-of-0000y.safetensors`` with
``model.safetensors.index.json``; or ``pytorch_model.bin`` (sharded likewise), which are
pickles and need torch to read. safetensors files are memory-mapped: the header is
parsed here (the format is a length-prefixed JSON header; the safetensors package
itself can't hand bf16 to numpy) and every tensor is a zero-copy view of the mapping.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from linly_engine.formats.checkpoint import Checkpoint, Tensor

SUPPORTED_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "llama"}
_ST_DTYPES = {"F32": ("f32", np.float32), "F16": ("f16", np.float16), "BF16": ("bf16", np.uint16),
              "I32": ("i32", np.int32)}  # I32: GPTQ/AWQ packed codes, zero points and g_idx


class CheckpointError(ValueError):
    """A checkpoint that can't be read, with what is wrong and what to do."""


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def rope_scaling_from_hf(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either the classic keys or transformers 5's
    ``rope_parameters``."""
    params = cfg.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if not scaling:
        return theta, None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        return theta, {
            "rope_type": "llama3",
            "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling["low_freq_factor"]),
            "high_freq_factor": float(scaling["high_freq_factor"]),
            "original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
        }
    raise CheckpointError(f"rope scaling '{kind}' is not supported (supported: linear, llama3)")


def config_from_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    archs = cfg.get("architectures") or []
    arch = next((SUPPORTED_ARCHS[a] for a in archs if a in SUPPORTED_ARCHS), None)
    if arch is None and cfg.get("model_type") in ("llama", "qwen2", "mistral"):
        arch = "qwen2" if cfg["model_type"] == "qwen2" else "llama"
    if arch is None:
        raise CheckpointError(f"architecture {archs or cfg.get('model_type')} is not supported; "
                              f"supported: {', '.join(SUPPORTED_ARCHS)}")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        theta, scaling = rope_scaling_from_hf(cfg)
        return {
            "architecture": arch,
            "vocab_size": int(cfg["vocab_size"]),
            "hidden_size": hidden,
            "num_hidden_layers": int(cfg["num_hidden_layers"]),
            "num_attention_heads": heads,
            "num_key_value_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
            "intermediate_size": int(cfg["intermediate_size"]),
            "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "rope_theta": theta,
            "rope_scaling": scaling,
            "qkv_bias": arch == "qwen2" or bool(cfg.get("attention_bias", False)),
            "max_position_embeddings": int(cfg.get("max_position_embeddings", 2048)),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        }
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e.args[0]!r}") from None


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Memory-maps one safetensors file; validates every offset against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header length)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path}: header length {hlen} is larger than the file; the file is corrupt")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: header is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt")
    data_start = 8 + hlen
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: entry for {name!r} is malformed") from None
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; supported: F32, F16, BF16 "
                                  "(and I32 in GPTQ/AWQ checkpoints)")
        fmt, np_dtype = _ST_DTYPES[dtype]
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= begin <= end and data_start + end <= size) or end - begin != count * np.dtype(np_dtype).itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} has offsets [{begin}, {end}) that don't fit its "
                                  f"shape {list(shape)} or the file ({size} bytes); the file is truncated or corrupt")
        arr = mm[data_start + begin:data_start + end].view(np_dtype).reshape(shape)
        out[name] = Tensor(arr, fmt, shape)
    return out


def read_torch_bin(path: Path) -> dict[str, Tensor]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), "
                              "or convert the checkpoint to safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a pickled {type(state).__name__}, not a state dict of named tensors")
    return {str(name): tensor_from_torch(t) for name, t in state.items() if isinstance(t, torch.Tensor)}


def tensor_from_torch(t) -> Tensor:
    import torch

    t = t.detach().contiguous()
    shape = tuple(t.shape)
    if t.dtype == torch.bfloat16:
        return Tensor(t.view(torch.int16).numpy().view(np.uint16), "bf16", shape)
    if t.dtype == torch.float16:
        return Tensor(t.numpy(), "f16", shape)
    if t.dtype == torch.int32:  # GPTQ/AWQ packed codes, zero points and g_idx
        return Tensor(t.numpy(), "i32", shape)
    return Tensor(t.float().numpy(), "f32", shape)


def read_json_file(path: Path) -> Any:
    """A JSON file, or a CheckpointError naming the file and the parse error."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def shard_names(index: Path) -> list[str]:
    """The shard file names an ``*.index.json`` (HF or TencentPretrain) maps weights to."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{index}: not a valid index file (needs a 'weight_map')") from None


def weight_files(folder: Path) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            shards = shard_names(index)
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}")
            return [folder / s for s in shards]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or their index files")


def load_hf(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    raw_cfg = read_json_file(folder / "config.json")
    config = config_from_hf(raw_cfg)
    tensors: dict[str, Tensor] = {}
    for f in weight_files(folder):
        tensors.update(read_safetensors(f) if f.suffix == ".safetensors" else read_torch_bin(f))
    if raw_cfg.get("quantization_config"):
        from linly_engine.formats.gptq_awq import import_quantized

        tensors = import_quantized(tensors, raw_cfg["quantization_config"], str(folder))
    stray = sorted(n for n, t in tensors.items() if t.fmt == "i32")
    if stray:
        raise CheckpointError(f"{folder}: integer tensors ({', '.join(stray[:3])}) but no GPTQ/AWQ "
                              "quantization_config in config.json to say how to read them")
    if "lm_head.weight" not in tensors:
        if "model.embed_tokens.weight" not in tensors:
            raise CheckpointError(f"{folder}: no model.embed_tokens.weight in the checkpoint")
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # tied head
    return Checkpoint(config, tensors, str(folder), {"hf_config": raw_cfg})
