"""GGUF files (llama.cpp's format), read with gguf-py's memory-mapped reader.

F32, F16, BF16, Q4_0, Q4_1 and Q8_0 tensors are used as they are (the engine's formats
are byte-compatible); K-quants (Q4_K, Q5_K, Q6_K) are dequantised and re-packed as q8_0
at load. llama.cpp stores LLaMA's q/k projection rows in Meta's interleaved rotary
order; they are permuted back to Hugging Face's order here (Qwen2 is stored unpermuted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from linly_engine.formats.checkpoint import Checkpoint, Tensor
from linly_engine.formats.hf import CheckpointError

MAGIC = b"GGUF"
DIRECT = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q8_0": "q8_0"}
CONVERTED = {"Q4_K", "Q5_K", "Q6_K"}
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


_CHECKED_READER = None


def _checked_reader_class():
    """gguf-py's reader, refusing reads past the end of the file. Its own slices just come
    back short there, so a metadata array that claims 2^32 elements was walked one
    element at a time for hours (found by fuzzing); now it stops at the file's end."""
    global _CHECKED_READER
    if _CHECKED_READER is None:
        import gguf

        class CheckedReader(gguf.GGUFReader):
            def _get(self, offset, dtype, count=1, *args, **kwargs):
                end = int(offset) + np.dtype(dtype).itemsize * int(count)
                if int(offset) < 0 or end > len(self.data):
                    raise ValueError(f"{count} x {np.dtype(dtype).name} at byte {int(offset)} run past the end of "
                                     f"the file ({len(self.data)} bytes)")
                return super()._get(offset, dtype, count, *args, **kwargs)

        _CHECKED_READER = CheckedReader
    return _CHECKED_READER


def _reader(path: Path):
    try:
        reader = _checked_reader_class()(path, "r")
    except Exception as e:  # gguf-py raises ValueError, struct errors, IndexError... on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                              "the file is truncated or corrupt") from None
    if reader.get_field("linly.format_version") is not None:
        check_packed_metadata(path, reader)
    return reader


# A dimension past this is no model's: it would overflow the byte counts computed from it.
MAX_DIM = 1 << 31


def check_packed_metadata(path: Path, reader) -> None:
    """The engine's own keys in a packed .linly file have the types and shapes its reader
    relies on (fuzzing found files whose tensor table lacked keys or held wrong types)."""
    import json

    def blob(key: str, kind: type, required: bool = True) -> Any:
        raw = _field(reader, key)
        if raw is None and not required:
            return None
        try:
            value = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, kind):
            raise CheckpointError(f"{path}: packed metadata '{key}' is missing or corrupt (expected a JSON "
                                  f"{kind.__name__}); convert the model again")
        return value

    blob("linly.config", dict)
    for name, spec in blob("linly.tensors", dict).items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not (isinstance(spec, dict) and isinstance(spec.get("fmt"), str)
                and spec.get("layout") in ("rows", "panel16") and isinstance(shape, list) and 1 <= len(shape) <= 2
                and all(type(d) is int and 0 < d < MAX_DIM for d in shape)):
            raise CheckpointError(f"{path}: packed tensor table entry {name!r} is corrupt (needs fmt, a shape of "
                                  f"1 or 2 positive sizes and a layout, got {spec!r:.120}); convert the model again")
    files = blob("linly.files", list, required=False)
    if files is not None and not all(isinstance(n, str) for n in files):
        raise CheckpointError(f"{path}: packed metadata 'linly.files' must list file names; convert the model again")
    for key in ("linly.sha256", "linly.tool", "linly.source"):
        if not isinstance(_field(reader, key, ""), str):
            raise CheckpointError(f"{path}: packed metadata '{key}' is not a string; convert the model again")


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        raise CheckpointError(f"GGUF metadata '{key}' is malformed") from None


def tokenizer_fields(reader) -> dict[str, Any]:
    """Every ``tokenizer.*`` field's value (strings, numbers or lists of them)."""
    out = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer."):
            try:
                value = f.contents()
            except Exception:
                raise CheckpointError(f"GGUF metadata '{key}' is malformed") from None
            out[key] = value.tolist() if hasattr(value, "tolist") else value
    return out


def canonical_name(name: str) -> str | None:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def unpermute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """Meta's interleaved rotary rows -> HF's rotate-half rows (inverse of llama.cpp's permute)."""
    rows = a.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise CheckpointError(f"a q/k weight of {rows} rows cannot be split into {n_head} heads of rotary pairs; "
                              "the head count in the model's metadata does not fit its weights")
    return np.ascontiguousarray(a.reshape(n_head, rows // n_head // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape))


def load_gguf(path: str | Path, reader=None) -> Checkpoint:
    import gguf

    path = Path(path)
    r = reader if reader is not None else _reader(path)
    arch = _field(r, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (supported: llama, qwen2)")

    def hp(key: str, default: Any = None, required: bool = True, kind: type = int) -> Any:
        v = _field(r, f"{arch}.{key}", default)
        if v is None:
            if required:
                raise CheckpointError(f"{path}: GGUF metadata lacks '{arch}.{key}'")
            return None
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                (kind is int and not 0 < v < (1 << 40)):
            raise CheckpointError(f"{path}: GGUF metadata '{arch}.{key}' is {v!r:.40}; it must be a "
                                  f"{'positive integer' if kind is int else 'number'}")
        return kind(v)

    tok_fields = tokenizer_fields(r)  # read once: the vocabulary arrays are the slow part
    tokens = tok_fields.get("tokenizer.ggml.tokens")
    heads = hp("attention.head_count")
    hidden = hp("embedding_length")
    kv_heads = hp("attention.head_count_kv", heads)
    scaling = None
    kind = _field(r, f"{arch}.rope.scaling.type")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": hp("rope.scaling.factor", kind=float)}
    elif kind not in (None, "none"):
        raise CheckpointError(f"{path}: rope scaling {kind!r} is not supported (supported: linear)")
    config = {
        "architecture": arch,
        "vocab_size": hp("vocab_size", len(tokens) if isinstance(tokens, list) and tokens else None),
        "hidden_size": hidden,
        "num_hidden_layers": hp("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hp("attention.key_length", hidden // heads),
        "intermediate_size": hp("feed_forward_length"),
        "rms_norm_eps": hp("attention.layer_norm_rms_epsilon", 1e-5, kind=float),
        "rope_theta": hp("rope.freq_base", 10000.0, kind=float),
        "rope_scaling": scaling,
        "qkv_bias": arch == "qwen2",
        "max_position_embeddings": hp("context_length", 2048),
    }

    tensors: dict[str, Tensor] = {}
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            raise CheckpointError(f"{path}: per-frequency rope factors (llama3 scaling in GGUF) are not supported yet")
        name = canonical_name(t.name)
        if name is None:
            continue
        qtype = gguf.GGMLQuantizationType(t.tensor_type).name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists ne0 (K) first
        if qtype in DIRECT:
            fmt = DIRECT[qtype]
            arr = t.data
        elif qtype in CONVERTED:
            deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            from linly_engine import _C

            fmt, arr = ("q8_0", _C.quantize(deq, "q8_0")) if shape[-1] % 32 == 0 and len(shape) == 2 else ("f32", deq)
        else:
            raise CheckpointError(f"{path}: tensor {t.name} has type {qtype}; supported: "
                                  f"{', '.join(list(DIRECT) + sorted(CONVERTED))}")
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            arr = unpermute_rows(np.asarray(arr), heads if ".q_proj." in name else kv_heads)
        tensors[name] = Tensor(arr, fmt, shape)
    if "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    meta = {"gguf_tokenizer_fields": tok_fields, "chat_template": tok_fields.get("tokenizer.chat_template"),
            "bos_token_id": tok_fields.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": tok_fields.get("tokenizer.ggml.eos_token_id")}
    return Checkpoint(config, tensors, str(path), meta)
