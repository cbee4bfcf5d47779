"""Writers for the checkpoint formats the loaders read, used to build test fixtures from
one small random transformers model (so every loader can be checked against the same
logits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def to_meta_order(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half q/k rows -> Meta's interleaved pairs (what llama.cpp's converter does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def write_torch_bin_folder(model, path: Path) -> Path:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(path / "config.json")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path / "pytorch_model.bin")
    return path


META_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
              "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
              "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
              "post_attention_layernorm": "ffn_norm"}
TP_NAMES = {"self_attn.q_proj": "self_attn.linear_layers.0", "self_attn.k_proj": "self_attn.linear_layers.1",
            "self_attn.v_proj": "self_attn.linear_layers.2", "self_attn.o_proj": "self_attn.final_linear",
            "mlp.gate_proj": "feed_forward.linear_gate", "mlp.up_proj": "feed_forward.linear_1",
            "mlp.down_proj": "feed_forward.linear_2", "input_layernorm": "layer_norm_1",
            "post_attention_layernorm": "layer_norm_2"}


def _renamed(model, layer_names, global_names, layer_fmt) -> dict[str, np.ndarray]:
    cfg = model.config
    state = hf_state(model)
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    out = {}
    for name, w in state.items():
        if name in global_names:
            out[global_names[name]] = w
            continue
        parts = name.split(".")
        i, sub = parts[2], ".".join(parts[3:-1])
        if ".q_proj" in name:
            w = to_meta_order(w, cfg.num_attention_heads)
        elif ".k_proj" in name:
            w = to_meta_order(w, cfg.num_key_value_heads)
        out[layer_fmt.format(i=i, name=layer_names[sub])] = w
    return out


def write_meta_folder(model, path: Path, shards: int = 1) -> Path:
    import torch

    cfg = model.config
    state = _renamed(model, META_NAMES, {"model.embed_tokens.weight": "tok_embeddings.weight",
                                         "model.norm.weight": "norm.weight", "lm_head.weight": "output.weight"},
                     "layers.{i}.{name}.weight")
    path.mkdir(parents=True, exist_ok=True)
    axis = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
    for s in range(shards):
        part = {}
        for name, w in state.items():
            a = axis.get(name.split(".")[-2])
            part[name] = torch.from_numpy(np.ascontiguousarray(np.array_split(w, shards, axis=a)[s] if a is not None and w.ndim == 2 else w))
        torch.save(part, path / f"consolidated.{s:02d}.pth")
    (path / "params.json").write_text(json.dumps({
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads, "norm_eps": cfg.rms_norm_eps, "vocab_size": -1, "multiple_of": 32}))
    return path


def write_tencentpretrain(model, path: Path) -> Path:
    import torch

    cfg = model.config
    state = _renamed(model, TP_NAMES, {"model.embed_tokens.weight": "embedding.word.embedding.weight",
                                       "model.norm.weight": "encoder.layer_norm.weight",
                                       "lm_head.weight": "target.lm.output_layer.weight"},
                     "encoder.transformer.{i}.{name}.weight")
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path / "linly_model.bin")
    (path / "llama_config.json").write_text(json.dumps({
        "emb_size": cfg.hidden_size, "feedforward_size": cfg.intermediate_size, "hidden_size": cfg.hidden_size,
        "heads_num": cfg.num_attention_heads, "kv_heads_num": cfg.num_key_value_heads,
        "layers_num": cfg.num_hidden_layers, "max_seq_length": 2048, "layernorm_eps": cfg.rms_norm_eps}))
    return path / "linly_model.bin"


GGUF_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(model, path: Path, matrix_type: str = "F32") -> Path:
    import gguf

    cfg = model.config
    state = _renamed(model, GGUF_LAYER, {"model.embed_tokens.weight": "token_embd.weight",
                                         "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"},
                     "blk.{i}.{name}.weight")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(cfg.vocab_size)
    qt = getattr(gguf.GGMLQuantizationType, matrix_type)
    for name, arr in state.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 2 and matrix_type != "F32":
            data = gguf.quants.quantize(arr, qt)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
