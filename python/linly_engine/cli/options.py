"""Arguments shared by the commands that load a model and generate."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from linly_engine.sampling import SamplingParams


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("-c", "--max-context", type=int, default=None,
                   help="context window in tokens (default: the model's, at most 4096)")
    g.add_argument("--template", default="auto",
                   help="chat template: auto (the model's own), linly-chatflow, chinese-llama-2, llama-2, chatml, raw")
    g.add_argument("--quant", default=None, help="convert the weights in memory at load (q4_0, q8_0, f16, ...)")
    g.add_argument("--kv-cache", choices=["f16", "f32", "q8_0"], default="f16",
                   help="KV cache precision (default f16; q8_0: int8, 47 %% less memory)")
    g.add_argument("--activations", choices=["int8x2", "int8"], default="int8x2",
                   help="activation precision of the integer matmuls (default int8x2, closest to float)")
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default) or cuda: the fp16 GPU decoder (needs a CUDA build and an NVIDIA GPU)")


def add_sampling_options(p: argparse.ArgumentParser, max_tokens: int = 512) -> None:
    d = SamplingParams()
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens, help=f"most tokens to generate (default {max_tokens})")
    g.add_argument("--temperature", "--temp", type=float, default=d.temperature,
                   help=f"0 is greedy (default {d.temperature})")
    g.add_argument("--top-k", type=int, default=d.top_k, help=f"0 turns it off (default {d.top_k})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"1 turns it off (default {d.top_p})")
    g.add_argument("--min-p", type=float, default=d.min_p, help=f"0 turns it off (default {d.min_p})")
    g.add_argument("--repeat-penalty", type=float, default=d.repetition_penalty,
                   help="repetition penalty, 1 is off (Linly used 1.15)")
    g.add_argument("--repeat-range", type=int, default=d.repetition_penalty_range,
                   help="penalise only the last N tokens, 0 for all (Linly used 1024)")
    g.add_argument("--repeat-slope", type=float, default=d.repetition_penalty_slope,
                   help="older tokens in the range count less (0: flat)")
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repeat_penalty,
                          repetition_penalty_range=args.repeat_range, repetition_penalty_slope=args.repeat_slope,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)


def load_engine(args: argparse.Namespace, model: Any):
    """The Engine for ``model`` (None: the default model), saying what it does."""
    from linly_engine.engine import Engine

    return Engine.load(model, template=args.template, threads=args.threads, quant=args.quant,
                       max_context=args.max_context, kv_cache=args.kv_cache, activations=args.activations,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True), device=args.device)
