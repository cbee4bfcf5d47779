"""Batch-1 decode of a random LLaMA-7B-shaped model on the GPU: the engine (q4_0, q4_g128,
q8_0, f16; CUDA graph on and off) against transformers fp16 ``generate``, tokens/s.

Both decode the same way: a prompt of --prompt tokens, then --gen greedy tokens. The
engine's weights are random codes with fixed scales (made directly in the packed block
layout: quantising 6.7 G random floats would take longer than the measurement); speed
does not depend on the values. transformers' model is a random ``LlamaForCausalLM`` in
fp16 with the same shapes. Decode tokens/s = gen / (time of prompt + gen − time of the
prompt alone), so prefill is not counted in either.

    python benchmarks/gpu/bench_decode.py [--engines hf,linly] [--formats q4_0,q8_0] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import numpy as np

SHAPE_7B = dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=4096)


def hf_decode_tps(prompt: int, gen: int, layers: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**SHAPE_7B, "num_hidden_layers": layers}, torch_dtype="float16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.float16)
        model = LlamaForCausalLM(cfg).eval()
        torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), device="cuda")

    def run(n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        assert out.shape[1] == prompt + n, out.shape
        return time.perf_counter() - t

    run(4)  # warm-up: kernels, allocator
    full = [run(gen) for _ in range(2)]
    pre = [run(1) for _ in range(3)]
    tps = (gen - 1) / (min(full) - min(pre))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"engine": "transformers fp16 generate", "fmt": "f16", "decode_tok/s": tps,
            "generate_s": min(full), "prompt_s": min(pre)}


def random_rows(fmt: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of random codes in `fmt`'s blocks, with the fp16 scale (and min or zero
    point) fields set so that weights are about ±0.01 and activations stay in fp16 range;
    for f16, random values of magnitude 2^-7..2^-6 made from random bits (fast)."""
    import linly_engine as le

    if fmt == "f16":
        bits = rng.integers(0, 1 << 16, size=(n, k), dtype=np.uint16)
        return ((bits & 0x83FF) | 0x2000).view(np.float16)
    info = le.format_info(fmt)
    rows = rng.integers(0, 256, size=(n, le.row_bytes(fmt, k)), dtype=np.uint8)
    blocks = rows.reshape(n, k // info["block_elems"], info["block_bytes"])
    scale = 0.0001 if fmt == "q8_0" else 0.003
    blocks[:, :, 0:2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)  # every block leads with d
    if fmt == "q4_1":
        blocks[:, :, 2:4] = np.frombuffer(np.float16(-8 * scale).tobytes(), np.uint8)  # m
    if fmt.startswith("q4_g"):
        blocks[:, :, 2] = 8  # zero point
        blocks[:, :, 3] = 0
    return rows


def linly_decode(fmt: str, prompt: int, gen: int, layers: int, device: str = "cuda") -> list[dict]:
    """The engine's decode tokens/s on one random model, with the decode graph and without."""
    import linly_engine as le
    from linly_engine.formats.checkpoint import Checkpoint, Tensor

    rng = np.random.default_rng(1)
    c = SHAPE_7B
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    tensors: dict[str, Tensor] = {}

    def mat(name: str, n: int, k: int) -> None:
        tensors[name] = Tensor(random_rows(fmt, n, k, rng), fmt, (n, k))

    mat("model.embed_tokens.weight", v, d)
    mat("lm_head.weight", v, d)
    tensors["model.norm.weight"] = Tensor(np.ones(d, np.float32), "f32", (d,))
    for i in range(layers):
        p = f"model.layers.{i}."
        for nm, n, k in (("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d), ("self_attn.v_proj", d, d),
                         ("self_attn.o_proj", d, d), ("mlp.gate_proj", f, d), ("mlp.up_proj", f, d),
                         ("mlp.down_proj", d, f)):
            mat(p + nm + ".weight", n, k)
        for nm in ("input_layernorm", "post_attention_layernorm"):
            tensors[p + nm + ".weight"] = Tensor(np.ones(d, np.float32), "f32", (d,))
    cfg = {"architecture": "llama", **c, "num_hidden_layers": layers, "head_dim": d // c["num_attention_heads"],
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "qkv_bias": False, "rope_scaling": None,
           "tie_word_embeddings": False}
    t0 = time.perf_counter()
    model = le.Model(Checkpoint(cfg, tensors, source="random 7B-shaped"), device=device, max_context=1024)
    load_s = time.perf_counter() - t0
    del tensors
    ids = rng.integers(0, v, prompt).tolist()

    def run(n: int) -> float:
        model.reset()
        t = time.perf_counter()
        logits = model.prefill(ids)
        for _ in range(n - 1):
            logits = model.decode(int(np.argmax(logits)))
        assert np.isfinite(logits).all(), "non-finite logits"
        return time.perf_counter() - t

    if os.environ.get("LINLY_PROFILE"):  # kernel time per decode step, through CUPTI (torch.profiler)
        from torch.profiler import ProfilerActivity, profile

        model._native.use_graph = False  # a graph shows as one launch; plain launches name each kernel
        run(4)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(17)
        print(f"kernels of a 16-token decode ({fmt}; totals over 16 steps plus one prompt):")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    out = []
    # bytes a decode step reads: every matrix, not the embedding table (one row of it)
    weight_gb = (model.info()["weight_bytes"] - 2 * v * d) / 1e9
    for graph in ((True, False) if fmt == "q4_0" and device == "cuda" else (True,)):
        if device == "cuda":
            model._native.use_graph = graph
        run(4)
        full = [run(gen) for _ in range(2)]
        pre = [run(1) for _ in range(2)]
        tps = (gen - 1) / (min(full) - min(pre))
        variant = " mma" if os.environ.get("LINLY_GEMV") == "mma" else ""
        out.append({"engine": f"linly cuda{variant}" + (" (graph)" if graph else " (no graph)"), "fmt": fmt,
                    "decode_tok/s": tps, "generate_s": min(full), "prompt_s": min(pre), "load_s": load_s,
                    "weight_GB": weight_gb, "weight_GB/s": weight_gb * tps})
        print(out[-1], flush=True)
    del model
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="hf,linly")
    ap.add_argument("--formats", default="q4_0,q8_0,f16")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    engines = args.engines.split(",")
    if "linly" in engines:
        for fmt in args.formats.split(","):
            rows += linly_decode(fmt, args.prompt, args.gen, args.layers)
    if "hf" in engines:
        r = hf_decode_tps(args.prompt, args.gen, args.layers)
        print(r, flush=True)
        rows.append(r)
    hf = next((r["decode_tok/s"] for r in rows if r["engine"].startswith("transformers")), None)
    print(f"\nLLaMA-7B shape ({args.layers} layers), prompt {args.prompt}, {args.gen} greedy tokens, batch 1")
    print("| engine | weights | decode tok/s | weight GB/s | vs transformers fp16 |\n|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['decode_tok/s'] / hf:.2f}x" if hf else ""
        gbs = f"{r['weight_GB/s']:.0f}" if "weight_GB/s" in r else ""
        print(f"| {r['engine']} | {r['fmt']} | {r['decode_tok/s']:.1f} | {gbs} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
