"""``Model``: a checkpoint's weights packed for the native decoder, with its KV cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from linly_engine import _C
from linly_engine.formats.checkpoint import Checkpoint, Tensor
from linly_engine.precision import target_format

MATRIX_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")
DENSE = ("f32", "f16", "bf16")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads any supported source into the canonical tensor set: a packed .linly file, a
    Hugging Face folder, a GGUF file, a Meta folder (params.json + consolidated.*.pth) or a TencentPretrain
    .bin (file, or folder with its config JSON)."""
    from linly_engine.formats import gguf, hf, meta, packed

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no model at {p}")
    if hf.is_hf_folder(p):
        return hf.load_hf(p)
    if p.is_file() and gguf.is_gguf(p):  # a .linly file is a GGUF container too: parse once
        reader = gguf._reader(p)
        return packed.read_packed(p, reader) if packed.is_packed_reader(reader) else gguf.load_gguf(p, reader)
    if meta.is_meta_folder(p):
        return meta.load_meta(p)
    if meta.is_tencentpretrain(p):
        return meta.load_tencentpretrain(p)
    raise ValueError(f"{p}: not a model this engine reads (expected a Hugging Face folder with config.json, "
                     "a .gguf file, a Meta folder with params.json, or a TencentPretrain .bin)")


def pack(t: Tensor, quant: str | None) -> _C.PackedMatrix:
    """A weight matrix as the decoder runs it, in its own copy of the weights. quant=None
    keeps the source format (GGUF blocks repacked into panels, a .linly file's panels
    as they are, dense rows as rows); otherwise converts to `quant`."""
    n, k = t.shape
    target = quant or t.fmt
    if target == t.fmt:
        raw = np.ascontiguousarray(t.array).view(np.uint8)  # zero-copy where possible
        if t.layout == "panel16":
            m = _C.PackedMatrix.from_panels(raw.reshape(-1), target, n, k)
        else:
            m = _C.PackedMatrix(raw.reshape(n, -1), target, k)
        if t.input_order is not None:
            m.set_input_order(np.ascontiguousarray(t.input_order, dtype=np.int32))
        return m
    block = _C.format_info(target)["block_elems"]
    if k % block:
        target = "f16" if target not in DENSE else target  # K the format can't block: keep precision
    return _C.PackedMatrix(_C.quantize(t.to_f32(), target), target, k)


GPU_MATRIX_FORMATS = ("q4_0", "q4_1", "q4_g32", "q4_g64", "q4_g128", "q8_0")


def gpu_matrix(t: Tensor, quant: str | None) -> tuple[str, np.ndarray]:
    """A weight matrix as the GPU decoder takes it: (format, on-disk rows) for the formats
    with a GPU layout, otherwise ("f16", float16 [n, k]) dequantised on the host (f32,
    bf16, K-quants, act-order checkpoints). quant converts first, as on the CPU."""
    n, k = t.shape
    if quant and quant != t.fmt:
        block = _C.format_info(quant)["block_elems"]
        if quant in GPU_MATRIX_FORMATS and k % block == 0:
            return quant, _C.quantize(t.to_f32(), quant)
        return "f16", t.to_f32().astype(np.float16)
    if t.fmt in GPU_MATRIX_FORMATS and t.input_order is None:
        return t.fmt, np.ascontiguousarray(t.row_bytes())
    if t.fmt == "f16" and t.layout == "rows":
        return "f16", np.ascontiguousarray(np.asarray(t.array).view(np.float16).reshape(n, k))
    return "f16", t.to_f32().astype(np.float16)


def gpu_weights(checkpoint: Checkpoint, quant: str | None) -> dict[str, Any]:
    """The tensor set as ``_C.CudaLlamaModel`` takes it: (format, array) per matrix
    (``gpu_matrix``), the embedding as float16 [vocab, dim] (the GPU gathers rows of it),
    norms and biases as float32. With ``quant`` the embedding takes the values the CPU
    decoder's quantised table holds, and a tied head the embedding's format, so that both
    decoders run the same model."""
    weights: dict[str, Any] = {}
    targets: dict[int, str | None] = {}  # a tensor shared by two names gets one format, as on the CPU
    for name, t in checkpoint.tensors.items():
        if len(t.shape) != 2:
            weights[name] = np.ascontiguousarray(t.to_f32())
            continue
        wanted = name.endswith(MATRIX_SUFFIXES + ("embed_tokens.weight", "lm_head.weight"))
        target = targets.setdefault(id(t), target_format(name, quant, t.fmt, t.shape[1]) if wanted and quant else None)
        if name == "model.embed_tokens.weight":
            emb = t.to_f32()
            if target and target != t.fmt and emb.shape[1] % _C.format_info(target)["block_elems"] == 0:
                emb = _C.dequantize(_C.quantize(emb, target), target, emb.shape[1]).reshape(emb.shape)
            weights[name] = np.ascontiguousarray(emb.astype(np.float16))
        else:
            weights[name] = gpu_matrix(t, target)
    if "lm_head.weight" not in weights:  # tied head: the embedding's matrix, in the embedding's format
        t = checkpoint.tensors["model.embed_tokens.weight"]
        weights["lm_head.weight"] = gpu_matrix(t, targets.get(id(t)))
    return weights


def gpu_memory_needed(cfg: dict[str, Any], weights: dict[str, Any]) -> int:
    """Device bytes the GPU decoder allocates: weights as uploaded, the fp16 KV cache for
    the whole context, and its step buffers (prompt chunks of 256 rows, logits, attention
    scratch)."""
    nbytes = 0
    for w in weights.values():
        nbytes += int((w[1] if isinstance(w, tuple) else w).nbytes)
    layers, ctx = int(cfg["num_hidden_layers"]), int(cfg["max_context"])
    heads, hd = int(cfg["num_attention_heads"]), int(cfg["head_dim"])
    kvd, dim, ffn = int(cfg["num_key_value_heads"]) * hd, int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    kv = 2 * layers * ctx * kvd * 2
    chunk, qd = 256, heads * hd  # rows per prompt step (decoder.cu kChunk)
    # per row: residual f32, normed, Q|K|V, rotated Q, attention out, sublayer out, gate|up,
    # SwiGLU (fp16), logits f32
    steps = chunk * (8 * dim + 6 * qd + 4 * kvd + 6 * ffn + 4 * int(cfg["vocab_size"]))
    scratch = 4 * heads * (hd + 2) * max(chunk * -(-ctx // 256), -(-ctx // 32))  # attention splits
    return nbytes + kv + steps + scratch


def check_gpu_memory(cfg: dict[str, Any], weights: dict[str, Any]) -> None:
    """Refuses, before anything is uploaded, a model the GPU has no room for."""
    free, total = _C.cuda_memory_info()
    need = gpu_memory_needed(cfg, weights)
    if need > free:
        raise ValueError(f"this model needs about {need / 2**30:.1f} GiB of GPU memory (weights, an f16 KV cache of "
                         f"{cfg['max_context']} positions, step buffers) but the GPU has {free / 2**30:.1f} GiB free "
                         f"of {total / 2**30:.1f}; use a smaller max_context or a smaller (quantised) model")


def memory_needed(cfg: dict[str, Any], tensors: dict[str, Tensor], slots: int, kv_cache: str) -> dict[str, int]:
    """Bytes a model will hold, from its config and its weights' declared shapes: weights,
    KV cache (every slot, the whole context) and the decoder's scratch for one
    context-long step. Python integers, so absurd sizes cannot overflow."""
    def dim(key: str) -> int:
        try:
            return max(0, int(cfg.get(key) or 0))
        except (TypeError, ValueError):
            return 0  # the native config check names the bad key

    hidden, layers, heads = dim("hidden_size"), dim("num_hidden_layers"), dim("num_attention_heads")
    head_dim = dim("head_dim") or (hidden // heads if heads else 0)
    kv_dim = (dim("num_key_value_heads") or heads) * head_dim
    ctx, ffn, vocab = dim("max_context"), dim("intermediate_size"), dim("vocab_size")
    weights = 0
    for t in {id(t): t for t in tensors.values()}.values():  # a tied head counted once
        n = 1
        for d in t.shape:
            n *= max(0, int(d))
        info = _C.format_info(t.fmt) if len(t.shape) == 2 else {"block_elems": 1, "block_bytes": 4}
        weights += max(int(np.asarray(t.array).nbytes), -(-n // info["block_elems"]) * info["block_bytes"])
    per_value = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}.get(kv_cache, 2.0)  # q8_0: 34-byte blocks of 32
    kv = int(2 * max(1, slots) * layers * ctx * kv_dim * per_value)
    scratch = 4 * ctx * (3 * hidden + 2 * heads * head_dim + 2 * kv_dim + 2 * ffn + head_dim) + 4 * vocab
    return {"weights": weights, "kv_cache": kv, "scratch": scratch, "total": weights + kv + scratch}


def check_memory(cfg: dict[str, Any], tensors: dict[str, Tensor], slots: int, kv_cache: str) -> None:
    """Refuses, before anything is allocated, a model that needs more memory than the
    machine has (a file with a huge vocabulary or context would otherwise end in an
    allocation failure deep in the native code, or in the OOM killer)."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: nothing to compare with
        return
    need = memory_needed(cfg, tensors, slots, kv_cache)
    if need["total"] > physical:
        raise ValueError(
            f"this model needs about {need['total']} bytes ({need['total'] / 2**30:.1f} GiB: weights "
            f"{need['weights']}, KV cache {need['kv_cache']} for {slots} slot(s) x {cfg.get('max_context')} "
            f"positions, scratch {need['scratch']}) but this machine has {physical} bytes of memory; "
            "use a smaller max_context, fewer slots or a smaller (quantised) model")


class Model:
    """A LLaMA-family model ready to run: ``prefill`` a prompt, then ``decode`` tokens."""

    def __init__(self, checkpoint: Checkpoint, *, quant: str | None = None, max_context: int | None = None,
                 kv_cache: str = "f16", activations: str = "int8x2", slots: int = 1, device: str = "cpu") -> None:
        cfg = dict(checkpoint.config)
        ctx = int(max_context or min(cfg.get("max_position_embeddings", 4096), 4096))
        if ctx < 1:
            raise ValueError(f"max_context must be >= 1, got {ctx}")
        cfg["max_context"] = ctx
        self.config = cfg
        self.checkpoint = checkpoint
        self.device = device
        if device == "cuda":
            self._init_cuda(quant, kv_cache, slots)
            return
        if device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        check_memory(cfg, checkpoint.tensors, slots, kv_cache)
        weights: dict[str, Any] = {}
        packed: dict[int, _C.PackedMatrix] = {}  # a tied head shares the embedding's matrix
        for name, t in checkpoint.tensors.items():
            if len(t.shape) == 2:
                if id(t) not in packed:
                    wanted = name.endswith(MATRIX_SUFFIXES + ("embed_tokens.weight", "lm_head.weight"))
                    packed[id(t)] = pack(t, target_format(name, quant, t.fmt, t.shape[1]) if wanted and quant else None)
                weights[name] = packed[id(t)]
            else:
                weights[name] = np.ascontiguousarray(t.to_f32())
        self._native = _C.LlamaModel(cfg, weights, kv_cache, activations, slots)
        self.activations = activations
        self._weights = weights

    def _init_cuda(self, quant: str | None, kv_cache: str, slots: int) -> None:
        """The fp16 GPU decoder (cuda/decoder.h): matrices in their GPU layouts (or fp16),
        fp16 activations with f32 accumulation, an fp16 KV cache, decode in a CUDA graph."""
        from linly_engine import cuda

        cuda.require()
        if slots != 1:
            raise ValueError(f"the GPU decoder runs one sequence; slots must be 1, got {slots}")
        if kv_cache != "f16":
            raise ValueError(f"the GPU decoder keeps an f16 KV cache; kv_cache={kv_cache!r} is CPU-only")
        weights = gpu_weights(self.checkpoint, quant)
        check_gpu_memory(self.config, weights)
        self._native = _C.CudaLlamaModel(self.config, weights)
        self.activations = "f16"
        self._weights = {}

    @classmethod
    def load(cls, path: str | os.PathLike, *, threads: int | None = None, quant: str | None = None,
             max_context: int | None = None, kv_cache: str = "f16", activations: str = "int8x2",
             slots: int = 1, device: str = "cpu") -> "Model":
        """Loads a Hugging Face folder or a GGUF file.

        quant: converts the matrices (``q4_0``, ``q8_0``, ``f16`` …) in memory; None keeps
        the source's formats. activations: how integer matmuls see the activations,
        ``int8x2`` (int8 plus an int8 residual: ~254× smaller activation error, the
        default; on AVX2, prompt segments of 16 tokens or more are multiplied in f32
        against dequantised weight tiles instead, which is exact and faster) or
        ``int8`` (faster, the precision llama.cpp uses). kv_cache: ``f16``
        (default, as llama.cpp: half the memory traffic at long contexts), ``f32``, or
        ``q8_0`` (int8 with an f16 scale per 32 values: 47 % less than f16; needs
        head_dim % 32 == 0).
        slots: independent sequences with their own KV cache (for batched serving).
        device: ``cpu`` (default) or ``cuda``, the fp16 GPU decoder (one sequence, f16 KV
        cache; quantised matrices run as W4A16 / W8A16, others as fp16)."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            from linly_engine import cuda

            cuda.require()  # before reading gigabytes of weights
        if threads is not None:
            _C.set_num_threads(threads)
        return cls(load_checkpoint(path), quant=quant, max_context=max_context, kv_cache=kv_cache,
                   activations=activations, slots=slots, device=device)

    @property
    def position(self) -> int:
        """Tokens in the KV cache."""
        return self._native.position

    @property
    def max_context(self) -> int:
        return self._native.max_context

    def prefill(self, ids: Iterable[int], all_logits: bool = False) -> np.ndarray:
        """Runs the prompt ids after what is cached; returns the last position's logits
        [vocab], or all positions' [n, vocab] with ``all_logits``."""
        return self._native.forward(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids), all_logits)

    def decode(self, token_id: int) -> np.ndarray:
        """Runs one token; returns the next logits [vocab]."""
        return self._native.forward(np.array([token_id], dtype=np.int32), False)

    def forward_batch(self, segments: Sequence[tuple[int, Sequence[int]]]) -> np.ndarray:
        """One step for several sequences at once: each (slot, ids) continues that slot's
        cached sequence. Returns each segment's last logits [len(segments), vocab]."""
        slots = np.array([s for s, _ in segments], dtype=np.int32)
        lengths = np.array([len(ids) for _, ids in segments], dtype=np.int32)
        ids = np.concatenate([np.asarray(ids, dtype=np.int32) for _, ids in segments]) if segments else \
            np.zeros(0, np.int32)
        return self._native.forward_batch(ids, slots, lengths)

    @property
    def slots(self) -> int:
        return self._native.slots

    def slot_position(self, slot: int) -> int:
        """Tokens cached in a slot."""
        return self._native.slot_position(slot)

    def reset(self) -> None:
        """Empties the KV cache (every slot)."""
        for slot in range(self._native.slots):
            self._native.truncate(0, slot)

    def truncate(self, n: int, slot: int = 0) -> None:
        """Keeps the first n cached tokens of a slot (a shared prompt prefix)."""
        self._native.truncate(n, slot)

    def info(self) -> dict[str, Any]:
        """Architecture, hyper-parameters, formats and sizes."""
        if self.device == "cuda":
            fmts: dict[str, int] = {}
            for name, t in self.checkpoint.tensors.items():
                if len(t.shape) == 2:
                    fmts[t.fmt] = fmts.get(t.fmt, 0) + 1
            return {**self.config, "source": self.checkpoint.source, "device": "cuda", "matrix_formats": fmts,
                    "weight_bytes": self._native.weight_bytes, "kv_cache_bytes": self._native.kv_cache_bytes,
                    "activations": self.activations}
        formats: dict[str, int] = {}
        nbytes = 0
        seen = set()
        for w in self._weights.values():
            if id(w) in seen:
                continue
            seen.add(id(w))
            if isinstance(w, _C.PackedMatrix):
                formats[w.fmt] = formats.get(w.fmt, 0) + 1
                nbytes += w.source_bytes
            else:
                nbytes += w.nbytes
        return {
            **{k: v for k, v in self.config.items()},
            "source": self.checkpoint.source,
            "matrix_formats": formats,
            "weight_bytes": nbytes,
            "kv_cache_bytes": self._native.kv_cache_bytes,
            "activations": self.activations,
            "device": "cpu",
        }
