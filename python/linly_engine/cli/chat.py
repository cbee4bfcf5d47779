"""``linly chat``: an interactive conversation that streams its answers.

Ctrl-C during an answer stops that answer (what was said stays in the conversation);
Ctrl-C or Ctrl-D at the prompt, or /exit, ends the program.
"""

from __future__ import annotations

import argparse
import sys

from linly_engine.cli.options import add_model_options, add_sampling_options, load_engine, sampling_from_args

HELP = """commands:
  /reset        start a new conversation (keeps the system prompt)
  /system TEXT  set the system prompt and start a new conversation
  /exit         quit (also Ctrl-D)
Ctrl-C stops the current answer."""


def cmd_chat(args: argparse.Namespace) -> int:
    from linly_engine.engine import ContextOverflowError

    engine = load_engine(args, args.model or args.model_option)
    params = sampling_from_args(args)
    system = args.system
    messages: list[dict[str, str]] = []
    err = sys.stderr
    print(f"linly chat · {engine.model.checkpoint.source} · template {engine.template.name} · "
          f"context {engine.max_context} · /help for commands", file=err, flush=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=err)
            return 0
        except KeyboardInterrupt:
            print(file=err)
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, rest = text.partition(" ")
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/reset":
                messages.clear()
                print("(new conversation)", file=err, flush=True)
            elif cmd == "/system":
                system = rest.strip() or None
                messages.clear()
                print(f"(system prompt {'set' if system else 'cleared'}; new conversation)", file=err, flush=True)
            elif cmd == "/help":
                print(HELP, file=err, flush=True)
            else:
                print(f"unknown command {cmd}; /help lists them", file=err, flush=True)
            continue
        messages.append({"role": "user", "content": line})
        convo = ([{"role": "system", "content": system}] if system else []) + messages
        answer: list[str] = []
        try:
            for piece in engine.chat_stream(convo, **vars(params)):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            print("[stopped]", file=err, flush=True)
        except ContextOverflowError as e:
            messages.pop()
            print(f"error: {e}", file=err, flush=True)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": "".join(answer)})
        print(f"[{engine.last_stats.summary()}]", file=err, flush=True)


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk with a model (streams answers; Ctrl-C stops one)",
                       description="Interactive chat. With no MODEL it uses the default model, "
                                   "SmolLM2-135M-Instruct, converted once into ~/.cache/linly.",
                       epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: the default model)")
    p.add_argument("-m", "--model", dest="model_option", default=None, help=argparse.SUPPRESS)
    p.add_argument("-s", "--system", default=None, help="system prompt")
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=cmd_chat)
