"""``linly-train``: data preparation, vocabulary extension, training, export."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def cmd_pretrain_data(a: argparse.Namespace) -> int:
    from linly_train.data.pretrain import build_pretrain
    from linly_train.tokenizer import folder_tokenizer

    meta = build_pretrain(a.out, folder_tokenizer(a.model), a.docs, a.pairs, seq_len=a.seq_len,
                          val_fraction=a.val_fraction, seed=a.seed, on_error=a.on_error)
    report(meta)
    return 0


def cmd_sft_data(a: argparse.Namespace) -> int:
    from linly_train.data.instruct import build_sft
    from linly_train.tokenizer import folder_template, folder_tokenizer

    meta = build_sft(a.out, folder_tokenizer(a.model), folder_template(a.model, a.template), a.data,
                     max_len=a.max_len, overflow=a.overflow, val_fraction=a.val_fraction, seed=a.seed,
                     on_error=a.on_error)
    report(meta)
    return 0


def report(meta: dict) -> None:
    for s in meta.pop("sources", []):
        print(f"{s['path']}: {s['read']} read, {s['skipped']} skipped", file=sys.stderr)
        for e in s["examples"]:
            print(f"  skipped {e}", file=sys.stderr)
    print(json.dumps(meta, ensure_ascii=False, indent=1))


def cmd_extend_vocab(a: argparse.Namespace) -> int:
    from linly_train.vocab import extend_model

    heldout = open(a.heldout, encoding="utf-8").read() if a.heldout else None
    r = extend_model(a.model, a.out, a.corpus, a.vocab_size, heldout)
    r.pop("init")
    print(json.dumps(r, ensure_ascii=False, indent=1))
    return 0


def cmd_train(a: argparse.Namespace, rest: list[str]) -> int:
    """Runs the trainer under torchrun with --nproc processes on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
           "-m", "linly_train.trainer", *rest]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.nproc)))
    return subprocess.call(cmd, env=env)


def cmd_export(a: argparse.Namespace) -> int:
    from linly_train.export import export

    r = export(a.run, a.out, None if a.quant == "f32" else a.quant, tag=a.tag)
    print(f"exported {r['checkpoint']} -> {r['hf']} -> {r['path']} ({r['bytes'] / 1e6:.1f} MB, "
          f"{r['bits_per_weight']:.2f} bits/weight)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="linly-train", description="Linly's recipe: Chinese incremental pretraining, "
                                "instruction tuning, vocabulary extension (DeepSpeed ZeRO-3), export to the engine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("pretrain-data", help="documents and zh-en pairs -> packed token sequences")
    d.add_argument("out")
    d.add_argument("--model", required=True, help="model folder whose tokenizer to use")
    d.add_argument("--docs", nargs="*", default=[], help=".txt (a document per line) or .jsonl {text}")
    d.add_argument("--pairs", nargs="*", default=[], help=".jsonl {zh, en} or .tsv zh<TAB>en")
    d.add_argument("--seq-len", type=int, default=512)
    d.add_argument("--val-fraction", type=float, default=0.02)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--on-error", choices=["skip", "raise"], default="skip")
    d.set_defaults(func=cmd_pretrain_data)

    s = sub.add_parser("sft-data", help="instructions / conversations -> ids with answer-only labels")
    s.add_argument("out")
    s.add_argument("--model", required=True)
    s.add_argument("--data", nargs="+", required=True, help=".jsonl {instruction,input,output} or {conversations}")
    s.add_argument("--template", default=None, help="chat template (default: the model's own, else linly-chatflow)")
    s.add_argument("--max-len", type=int, default=1024)
    s.add_argument("--overflow", choices=["truncate", "drop"], default="truncate")
    s.add_argument("--val-fraction", type=float, default=0.02)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--on-error", choices=["skip", "raise"], default="skip")
    s.set_defaults(func=cmd_sft_data)

    v = sub.add_parser("extend-vocab", help="train Chinese pieces, merge them, grow the embeddings")
    v.add_argument("model")
    v.add_argument("out")
    v.add_argument("--corpus", nargs="+", required=True)
    v.add_argument("--vocab-size", type=int, default=8000, help="size of the Chinese model trained on the corpus")
    v.add_argument("--heldout", default=None, help="text to report tokens per Chinese character on")
    v.set_defaults(func=cmd_extend_vocab)

    t = sub.add_parser("train", help="run the DeepSpeed trainer here (torchrun); other options go to the trainer",
                       description="linly-train train --nproc 2 --model DIR --data DIR --out DIR --steps N ... "
                                   "(see python -m linly_train.trainer --help for the trainer's options)")
    t.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    t.set_defaults(func=None)

    e = sub.add_parser("export", help="checkpoint -> Hugging Face folder -> packed .linly file")
    e.add_argument("run", help="the trainer's --out folder")
    e.add_argument("out", help="the .linly file to write")
    e.add_argument("--quant", default="q4_0", help="q4_0, q4_1, q8_0, f16, f32, ...")
    e.add_argument("--tag", default=None, help="checkpoint tag (default: the latest)")
    e.set_defaults(func=cmd_export)

    if argv and argv[0] == "train":
        known, rest = t.parse_known_args(argv[1:])
        return cmd_train(known, rest)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except ImportError as err:
        print(f"linly-train {a.command}: {err.name or err} is missing; install the training extras: "
              "pip install torch==2.13.0 (or your CUDA build) && pip install 'linly-engine[train]'", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"linly-train {a.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
