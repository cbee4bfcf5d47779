"""``linly serve``: the OpenAI-compatible HTTP service."""

from __future__ import annotations

import argparse
import os
import sys

from linly_engine.cli.options import add_sampling_options, sampling_from_args


def cmd_serve(args: argparse.Namespace) -> int:
    from linly_engine.serve import ServerConfig, serve

    if args.parallel < 1:
        raise ValueError("--parallel must be at least 1")
    api_key = args.api_key or os.environ.get("LINLY_API_KEY")
    if args.device == "cuda" and args.parallel != 1:
        print("linly serve: the GPU decoder runs one sequence at a time; using --parallel 1", file=sys.stderr)
        args.parallel = 1
    config = ServerConfig(model_path=args.model, model_name=args.model_name, api_key=api_key, parallel=args.parallel,
                          max_queue=args.max_queue, threads=args.threads, max_context=args.max_context,
                          template=args.template, kv_cache=args.kv_cache, activations=args.activations,
                          defaults=sampling_from_args(args), max_request_bytes=args.max_request_bytes,
                          device=args.device)
    print(f"linly serve: http://{args.host}:{args.port}/ (OpenAI API under /v1; {args.parallel} slots"
          f"{', API key required' if api_key else ''})", flush=True)
    serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible API, batched)",
                       description="Starts an OpenAI-compatible server: /v1/chat/completions, /v1/completions, "
                                   "/v1/models, /health, /metrics, /tokenize, /detokenize, Linly's /chat, and a "
                                   "chat page at /. Concurrent requests share each decoding step.",
                       epilog="example: linly serve model.linly --port 8000 --parallel 4",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: the default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set LINLY_API_KEY)")
    p.add_argument("--parallel", "-np", type=int, default=4, help="sequences decoded together (KV slots, default 4)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot before 429")
    p.add_argument("--max-request-bytes", type=int, default=4 << 20, help="larger bodies get 413 (default 4 MiB)")
    p.add_argument("--model-name", default=None, help="the name /v1/models reports (default: the file name)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-c", "--max-context", type=int, default=None, help="context per slot (default: model's, ≤4096)")
    p.add_argument("--template", default="auto", help="chat template (auto: the model's own)")
    p.add_argument("--kv-cache", choices=["f16", "f32", "q8_0"], default="f16")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (default) or cuda (the GPU decoder)")
    p.add_argument("--activations", choices=["int8x2", "int8"], default="int8x2",
                   help="int8 roughly doubles batched throughput at llama.cpp's activation precision")
    add_sampling_options(p, max_tokens=1024)  # defaults for what a request leaves out
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
