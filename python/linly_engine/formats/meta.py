"""Meta's original LLaMA checkpoints (``consolidated.NN.pth`` + ``params.json``) and
TencentPretrain/Linly ``.bin`` state dicts (the format Linly-Chinese-LLaMA and
Linly-ChatFlow were released in).

Both keep q/k projection rows in Meta's interleaved rotary order, and TencentPretrain's
names are a pure rename of Meta's; both are mapped onto the canonical HF names and
rotary order here. Both formats are PyTorch pickles, so reading them needs torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from linly_engine.formats.checkpoint import Checkpoint, Tensor
from linly_engine.formats.gguf import unpermute_rows
from linly_engine.formats.hf import CheckpointError, read_json_file, read_torch_bin, shard_names

# Meta / TencentPretrain per-layer name -> HF per-layer name
META_LAYER = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
TP_LAYER = {
    "self_attn.linear_layers.0": "self_attn.q_proj", "self_attn.linear_layers.1": "self_attn.k_proj",
    "self_attn.linear_layers.2": "self_attn.v_proj", "self_attn.final_linear": "self_attn.o_proj",
    "feed_forward.linear_gate": "mlp.gate_proj", "feed_forward.linear_1": "mlp.up_proj",
    "feed_forward.linear_2": "mlp.down_proj", "layer_norm_1": "input_layernorm", "layer_norm_2": "post_attention_layernorm",
}
META_GLOBAL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
TP_GLOBAL = {"embedding.word.embedding.weight": "model.embed_tokens.weight",
             "encoder.layer_norm.weight": "model.norm.weight", "target.lm.output_layer.weight": "lm_head.weight"}
# Tensor-parallel shards of consolidated.NN.pth: which axis each weight was split on.
META_SPLIT_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def is_meta_folder(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file() and any(path.glob("consolidated.*.pth"))


def is_tencentpretrain(path: Path) -> bool:
    """A TencentPretrain .bin file, or a folder with one (or its index) plus a config."""
    if path.is_dir():
        return any(path.glob("tencentpretrain_model*.bin.index.json")) or (
            any(path.glob("*.bin")) and tp_config_file(path) is not None and not (path / "config.json").is_file())
    return path.suffix == ".bin" and path.is_file()


def tp_config_file(folder: Path) -> Path | None:
    for name in ("tencentpretrain_config.json", "llama_config.json"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*config*.json"))
    return found[0] if found else None


def _rename(state: dict[str, Tensor], layer_map: dict[str, str], global_map: dict[str, str],
            layer_re: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    pattern = re.compile(layer_re)
    for name, t in state.items():
        if name in global_map:
            out[global_map[name]] = t
            continue
        m = pattern.fullmatch(name)
        if m and m.group(2) in layer_map:
            out[f"model.layers.{m.group(1)}.{layer_map[m.group(2)]}.{m.group(3)}"] = t
    return out


def _unpermute_qk(tensors: dict[str, Tensor], heads: int, kv_heads: int) -> None:
    for name, t in list(tensors.items()):
        if ".q_proj." in name or ".k_proj." in name:
            n = heads if ".q_proj." in name else kv_heads
            tensors[name] = Tensor(unpermute_rows(np.asarray(t.array), n), t.fmt, t.shape)


def _finish(tensors: dict[str, Tensor], where: Path, dim: int, layers: int, heads: int, kv_heads: int,
            eps: float, theta: float, max_pos: int) -> dict[str, Any]:
    """Checks the renamed tensors are all there, puts q/k in HF order, returns the config
    (vocabulary and FFN sizes read off the weights: neither format states them reliably)."""
    if min(dim, layers, heads, kv_heads) <= 0 or dim % heads:
        raise CheckpointError(f"{where}: the config's sizes (dim {dim}, layers {layers}, heads {heads}, kv heads "
                              f"{kv_heads}) must be positive, with dim a multiple of heads")
    _check_complete(tensors, layers, where)
    _unpermute_qk(tensors, heads, kv_heads)
    return {
        "architecture": "llama", "vocab_size": tensors["model.embed_tokens.weight"].shape[0], "hidden_size": dim,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": dim // heads, "intermediate_size": tensors["model.layers.0.mlp.gate_proj.weight"].shape[0],
        "rms_norm_eps": eps, "rope_theta": theta, "rope_scaling": None, "qkv_bias": False,
        "max_position_embeddings": max_pos,
    }


def _concat_shards(shards: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if len(shards) == 1:
        return shards[0]
    out: dict[str, Tensor] = {}
    for name, t in shards[0].items():
        key = name.split(".")[-2] if name.count(".") >= 1 else name
        axis = META_SPLIT_AXIS.get(key)
        if axis is None or len(t.shape) == 1:
            out[name] = t  # replicated (norms)
            continue
        parts = [s[name].to_f32() for s in shards]
        arr = np.concatenate(parts, axis=axis)
        out[name] = Tensor(arr, "f32", arr.shape)
    return out


def load_meta(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    params = read_json_file(folder / "params.json")
    shards = [read_torch_bin(p) for p in sorted(folder.glob("consolidated.*.pth"))]
    state = _concat_shards(shards)
    tensors = _rename(state, META_LAYER, META_GLOBAL, r"layers\.(\d+)\.(.+)\.(weight)")
    try:
        dim, heads, layers = int(params["dim"]), int(params["n_heads"]), int(params["n_layers"])
    except KeyError as e:
        raise CheckpointError(f"{folder / 'params.json'} lacks {e.args[0]!r}") from None
    cfg = _finish(tensors, folder, dim, layers, heads, int(params.get("n_kv_heads") or heads),
                  float(params.get("norm_eps", 1e-6)), float(params.get("rope_theta", 10000.0)),
                  int(params.get("max_seq_len", 2048)))
    return Checkpoint(cfg, tensors, str(folder), {"params": params})


def load_tencentpretrain(path: str | Path, config_path: str | Path | None = None) -> Checkpoint:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        index = next(iter(sorted(folder.glob("*model*.bin.index.json"))), None)
        if index is not None:
            files = [folder / f for f in shard_names(index)]
        else:
            files = sorted(folder.glob("*.bin"))
    else:
        files = [path]
    state: dict[str, Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"shard {f} is missing")
        state.update(read_torch_bin(f))
    tensors = _rename(state, TP_LAYER, TP_GLOBAL, r"encoder\.transformer\.(\d+)\.(.+)\.(weight)")
    cfg_file = Path(config_path) if config_path else tp_config_file(folder)
    if cfg_file is None:
        raise CheckpointError(f"{path}: a TencentPretrain checkpoint needs its config JSON (e.g. llama_7b_config.json) "
                              "next to it")
    try:
        tp = json.loads(Path(cfg_file).read_text())
        dim, heads, layers = int(tp["emb_size"]), int(tp["heads_num"]), int(tp["layers_num"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: not a TencentPretrain config ({e})") from None
    cfg = _finish(tensors, path, dim, layers, heads, int(tp.get("kv_heads_num") or heads),
                  float(tp.get("layernorm_eps", 1e-6)), float(tp.get("rope_theta", 10000.0)),
                  int(tp.get("max_seq_length", 2048)))
    return Checkpoint(cfg, tensors, str(path), {"tencentpretrain_config": tp})


def _check_complete(tensors: dict[str, Tensor], layers: int, where: Path) -> None:
    need = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{n}.weight" for i in range(layers) for n in META_LAYER.values()]
    missing = [n for n in need if n not in tensors]
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} weights missing for a {layers}-layer model, "
                              f"e.g. {missing[0]} (is layers_num right?)")
