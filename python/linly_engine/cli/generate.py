"""``linly generate``: one prompt in, one answer out (for scripts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from linly_engine.cli.options import add_model_options, add_sampling_options, load_engine, sampling_from_args


def read_prompt(args: argparse.Namespace) -> str:
    if args.file:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if args.prompt not in (None, "-"):
        return args.prompt
    if args.prompt is None and sys.stdin.isatty():
        raise ValueError("no prompt: give it as an argument, with --file, or on stdin")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"stdin is not UTF-8 text ({e.reason} at byte {e.start})") from None


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = read_prompt(args)
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    engine = load_engine(args, args.model)
    params = sampling_from_args(args)
    # A model with its own chat template is a chat model: the prompt is the user's turn.
    # --template raw (or a model without one) continues the text as it is.
    use_chat = args.template != "raw" and (args.template != "auto" or engine.tokenizer.chat_template)
    if use_chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}]
        pieces = engine.chat_stream(msgs, **vars(params))
    else:
        pieces = engine.stream(prompt, **vars(params))
    out: list[str] = []
    try:
        for piece in pieces:
            out.append(piece)
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    s = engine.last_stats
    if args.json:
        print(json.dumps({"text": "".join(out), "finish_reason": s.finish_reason, "prompt_tokens": s.prompt_tokens,
                          "completion_tokens": s.generated_tokens,
                          "prompt_tokens_per_s": round(s.prefill_tokens_per_s, 2),
                          "completion_tokens_per_s": round(s.decode_tokens_per_s, 2)}, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        if not args.quiet:
            print(f"[{s.summary()}]", file=sys.stderr)
    return 130 if s.finish_reason == "interrupted" else 0


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="answer one prompt (argument, --file or stdin) and exit",
                       description="Generates from one prompt. Chat models (those with a chat template) get it as "
                                   "the user's message; --template raw continues the text as it is.",
                       epilog='example: linly generate "What is the capital of France?" --temperature 0',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", default=None, help="the prompt; '-' or nothing reads stdin")
    p.add_argument("-m", "--model", default=None, help="model file or folder (default: the default model)")
    p.add_argument("-f", "--file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("-s", "--system", default=None, help="system prompt (chat models)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the text, counts and speed")
    p.add_argument("-q", "--quiet", action="store_true", help="no speed line on stderr")
    add_model_options(p)
    add_sampling_options(p, max_tokens=256)
    p.set_defaults(func=cmd_generate)
