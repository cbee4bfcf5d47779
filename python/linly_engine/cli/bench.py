"""``linly bench``: the standard speed measurement, optionally side by side with peers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_bench(args: argparse.Namespace) -> int:
    from linly_engine import bench
    from linly_engine.default_model import ensure_default_model

    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        raise ValueError("--threads takes a comma-separated list of positive counts, e.g. 1,2")
    if args.prompt < 1 or args.gen < 1 or args.repeat < 1:
        raise ValueError("--prompt, --gen and --repeat must be at least 1")
    vs = [v.strip() for v in args.vs.split(",") if v.strip()] if args.vs else []
    path = Path(args.model) if args.model else ensure_default_model()
    if args.device == "cuda":
        import linly_engine as le

        le.cuda.require()
    result = bench.run(path, threads, args.prompt, args.gen, args.repeat, vs, device=args.device,
                       peer_path=Path(args.peer_model) if args.peer_model else None)
    rows = result["rows"]
    # Ratios read "linly is N× the peer" (above 1: linly faster), per thread count.
    print(f"\n{'engine':<18}{'threads':>7}{'prefill tok/s':>15}{'decode tok/s':>14}{'GB/s':>8}{'% of read bw':>14}"
          f"{'linly/peer prefill':>20}{'linly/peer decode':>19}")
    for r in rows:
        gbs = f"{r['weight_gb_per_s']:.1f}" if r["weight_gb_per_s"] else "-"
        of = f"{100 * r['of_read_bandwidth']:.0f}%" if r["of_read_bandwidth"] else "-"
        pre = f"{r['linly_prefill_ratio']:.2f}x" if r["linly_prefill_ratio"] else ""  # paired, per round
        dec = f"{r['linly_decode_ratio']:.2f}x" if r["linly_decode_ratio"] else ""
        print(f"{r['engine']:<18}{r['threads']:>7}{r['prefill_tokens_per_s']:>15.1f}{r['decode_tokens_per_s']:>14.1f}"
              f"{gbs:>8}{of:>14}{pre:>20}{dec:>19}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        bench.plot(result, Path(args.plot))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill and decode speed (optionally against llama.cpp, transformers)",
                       description="Prefill a random prompt, then decode greedily; repeated, median reported, with "
                                   "the weights' GB/s and the share of the read bandwidth measured in the same run.",
                       epilog="example: linly bench model.gguf --threads 1,2 --vs llama.cpp,transformers --plot b.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: the default model)")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--gen", type=int, default=128, help="decoded tokens (default 128)")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds, each running every engine once in turn; medians reported, ratios paired per round")
    p.add_argument("--vs", default="", help="peers to run side by side: llama.cpp,transformers,transformers-bf16")
    p.add_argument("--peer-model", default=None,
                   help="the file the --vs peers run instead of MODEL, e.g. llama.cpp on model-q4_0.gguf against "
                        "MODEL converted with --quant mix4 (default: MODEL, or the GGUF it was converted from)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default) or cuda: the GPU decoder, against the device's copy bandwidth")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="draw a bar chart (PNG) here (needs matplotlib)")
    p.set_defaults(func=cmd_bench)
