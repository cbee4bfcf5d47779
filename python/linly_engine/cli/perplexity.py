"""``linly perplexity``: perplexity of a model on a text, and its distance from f32."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_perplexity(args: argparse.Namespace) -> int:
    import linly_engine as le
    from linly_engine import perplexity as P
    from linly_engine.engine import load_model_and_tokenizer

    try:
        text = Path(args.text).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.text} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    model, tok = load_model_and_tokenizer(args.model, threads=args.threads, quant=args.quant, max_context=args.ctx,
                                          activations=args.activations, kv_cache=args.kv_cache)
    ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(text, add_special=False)
    if args.max_tokens:
        ids = ids[:args.max_tokens]
    reference = None
    if args.kl:
        ref_model = le.Model(model.checkpoint, quant="f32", max_context=args.ctx, kv_cache="f32")
        reference = P.engine_runner(ref_model)
    result = {"model": str(args.model), "text": str(args.text), "tokens": len(ids), "ctx": args.ctx,
              "score": args.score,
              "engine": P.score(P.engine_runner(model), ids, args.ctx, args.score, reference, progress=True).as_dict()}
    if args.hf:
        result["transformers"] = P.score(P.hf_runner(args.hf, args.threads), ids, args.ctx, args.score,
                                         progress=True).as_dict()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        e = result["engine"]
        line = f"perplexity {e['ppl']:.4f} over {e['tokens']} scored tokens (ctx {args.ctx}, score {args.score})"
        if "kl" in e:
            line += f"; vs f32: mean KL {e['kl']:.5f}, top-1 agreement {100 * e['top1_agreement']:.2f} %"
        print(line)
        if args.hf:
            print(f"transformers (same ids, same windows): perplexity {result['transformers']['ppl']:.4f}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity on a text file (and KL / top-1 agreement vs f32)",
                       description="Tokenises the text once (BOS first), cuts it into non-overlapping windows of "
                                   "--ctx tokens, runs each from an empty cache and scores every predicted "
                                   "position (--score all) or the second half of each window as llama.cpp does "
                                   "(--score half).",
                       epilog="example: linly perplexity model.linly --text wiki.test.raw --ctx 512 --kl --hf ./hf-model",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: the default model)")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--score", choices=["all", "half"], default="all")
    p.add_argument("--quant", default=None, help="convert the weights in memory first (q4_0, q8_0, ...)")
    p.add_argument("--activations", choices=["int8x2", "int8"], default="int8x2")
    p.add_argument("--kv-cache", choices=["f16", "f32", "q8_0"], default="f16", help="KV cache precision")
    p.add_argument("--kl", action="store_true", help="also compare with the same checkpoint in f32 (KL, top-1)")
    p.add_argument("--hf", default=None, help="a Hugging Face folder to score with transformers on the same ids")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the text")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_perplexity)
