"""``linly``: the command line. Thin: parse arguments, call the library, print."""

from __future__ import annotations

import argparse
import sys

from linly_engine.cli import bench, chat, convert, generate, perplexity, serve

EPILOG = """examples:
  linly chat                                   chat with the default model (SmolLM2-135M-Instruct)
  linly generate "What is the capital of France?" --temperature 0
  linly convert ./Chinese-LLaMA-2-7b-hf model.linly --quant q4_0
  linly chat model.linly --template chinese-llama-2
  linly serve model.linly --port 8000 --parallel 4
  linly bench model.gguf --threads 1,2 --vs llama.cpp
  linly info model.linly"""


def build_parser() -> argparse.ArgumentParser:
    from linly_engine import __version__

    p = argparse.ArgumentParser(prog="linly", description="Run LLaMA-family models (Chinese ones first) fast on CPUs.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"linly-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chat.add_parser(sub)
    generate.add_parser(sub)
    serve.add_parser(sub)
    bench.add_parser(sub)
    perplexity.add_parser(sub)
    convert.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError, TypeError, RuntimeError) as e:
        # RuntimeError: what the native core raises for an unusable device (CUDA asked for, none there)
        # CheckpointError, TokenizerError, ContextOverflowError are ValueErrors
        print(f"linly {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"linly {args.command}: interrupted", file=sys.stderr)
        return 130
