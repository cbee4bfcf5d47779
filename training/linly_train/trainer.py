"""Full-parameter training of a LLaMA (``LlamaForCausalLM``) with DeepSpeed, ZeRO-3 by
default: one process per device, launched by ``torchrun`` or ``deepspeed``:

    torchrun --nproc_per_node 2 -m linly_train.trainer --model DIR --data DIR --out DIR ...
    deepspeed --num_gpus 8 --module linly_train.trainer ... --config training/configs/zero3_bf16.json

On a CPU the processes talk over gloo; on GPUs over NCCL. Linear warm-up then cosine
decay, gradient accumulation and clipping (from the DeepSpeed config), optional
activation checkpointing, validation loss and perplexity every ``--eval-every`` steps,
checkpoints every ``--save-every`` steps that resume exactly (the data order is a pure
function of the step), logs on stdout and in ``log.jsonl``, and ``loss.png`` at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

# Installed: linly_train/configs (CMake installs training/configs there); from a checkout: training/configs.
CONFIGS = next((d for d in (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parent.parent / "configs")
                if d.is_dir()), Path(__file__).resolve().parent / "configs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="linly_train.trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face LLaMA folder to start from")
    p.add_argument("--data", required=True, help="a folder made by `linly-train pretrain-data` or `sft-data`")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, log.jsonl, loss.png, hf_files/")
    p.add_argument("--config", default=str(CONFIGS / "zero3_bf16.json"), help="DeepSpeed JSON config")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps to reach")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per process per micro-step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr × this")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping norm")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: only at the end)")
    p.add_argument("--eval-batches", type=int, default=8, help="micro-batches per process per validation")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 even if the config enables bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def open_data(folder: str | Path, split: str):
    from linly_train.data.instruct import SftSet
    from linly_train.data.pretrain import PretrainSet

    kind = json.loads((Path(folder) / "meta.json").read_text())["kind"]
    return PretrainSet(folder, split) if kind == "pretrain" else SftSet(folder, split)


class Order:
    """Which sample each (step, micro-step, rank, row) reads: a fresh seeded permutation
    per pass over the data, so the order depends on the step only (exact resume)."""

    def __init__(self, n: int, seed: int, micro: int, accum: int, world: int) -> None:
        self.n, self.seed, self.micro, self.accum, self.world = n, seed, micro, accum, world
        self._perms: dict[int, np.ndarray] = {}

    def indices(self, step: int, micro_step: int, rank: int) -> list[int]:
        per_step = self.micro * self.accum * self.world
        first = step * per_step + (micro_step * self.world + rank) * self.micro
        out = []
        for g in range(first, first + self.micro):
            epoch, k = divmod(g, self.n)
            if epoch not in self._perms:
                self._perms = {epoch: np.random.default_rng(self.seed + epoch).permutation(self.n)}
            out.append(int(self._perms[epoch][k]))
        return out


def collate(samples, pad_id: int):
    """Right-padded batch: input_ids, labels (-100 on padding), attention_mask."""
    import torch

    width = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for r, (x, y) in enumerate(samples):
        ids[r, :len(x)] = torch.from_numpy(x)
        labels[r, :len(y)] = torch.from_numpy(y)
        mask[r, :len(x)] = 1
    return ids, labels, mask


def ds_config(args: argparse.Namespace, world: int) -> dict[str, Any]:
    cfg = json.loads(Path(args.config).read_text())
    cfg["train_micro_batch_size_per_gpu"] = args.micro_batch
    cfg["gradient_accumulation_steps"] = args.grad_accum
    cfg["train_batch_size"] = args.micro_batch * args.grad_accum * world
    cfg["gradient_clipping"] = args.clip
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})
    cfg["optimizer"].setdefault("params", {}).update({"lr": args.lr, "weight_decay": args.weight_decay})
    cfg["steps_per_print"] = 10 ** 9  # we log ourselves
    if args.no_bf16:
        cfg.pop("bf16", None)
    return cfg


INCOMPLETE = ".incomplete"  # checkpoints being written live here until every rank is done


def save_checkpoint(engine, ckpt_dir: Path, tag: str, client_state: dict[str, Any], rank: int) -> None:
    """A crash-safe DeepSpeed checkpoint: every rank writes into ``.incomplete/<tag>``;
    once all have finished, rank 0 renames the folder to ``<tag>`` and then points
    ``latest`` at it (written to a temporary and renamed). A process killed at any moment
    leaves the previous checkpoint and ``latest`` as they were, and nothing under a
    checkpoint's final name that is not complete."""
    import shutil

    import torch.distributed as dist

    staging = ckpt_dir / INCOMPLETE
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftovers
        staging.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()  # every rank's shards are on disk
    if rank == 0:
        final = ckpt_dir / tag
        if final.exists():  # the same step saved again (a rerun): the new one replaces it
            shutil.rmtree(final)
        os.replace(staging / tag, final)
        for script in staging.glob("*.py"):  # DeepSpeed's zero_to_fp32.py and kin, beside the checkpoints
            os.replace(script, ckpt_dir / script.name)
        write_atomic(ckpt_dir / "latest", tag)
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The checkpoint to resume from: the one ``latest`` names if its folder is there,
    else the highest ``step<N>`` folder; never one under ``.incomplete``."""
    latest = ckpt_dir / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if tag and tag != INCOMPLETE and (ckpt_dir / tag).is_dir():
            return tag
    steps = [p.name for p in ckpt_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return max(steps, key=lambda n: int(n[4:]), default=None)


def plot_losses(log_file: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from linly_train.tokenizer import copy_model_files, folder_tokenizer

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        copy_model_files(args.model, out / "hf_files")  # so the run can be exported on its own
        if not args.resume and (out / "log.jsonl").exists():
            (out / "log.jsonl").unlink()
    dist.barrier()

    cfg = ds_config(args, world)
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    torch.manual_seed(args.seed)
    dschf = HfDeepSpeedConfig(cfg) if stage == 3 else None  # noqa: F841  (must live while the model loads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.config.use_cache = False
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
    sched_fn = lr_lambda(args.warmup, args.steps, args.min_lr_ratio)
    engine, _, _, sched = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=cfg,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched_fn))

    train, val = open_data(args.data, "train"), open_data(args.data, "val")
    tok = folder_tokenizer(args.model)
    pad_id = tok.eos_id if tok.eos_id is not None else 0
    order = Order(len(train), args.seed, args.micro_batch, args.grad_accum, world)

    start = 0
    if args.resume:
        tag = complete_checkpoint(ckpt_dir)
        if tag is None:
            raise SystemExit(f"--resume: no complete checkpoint in {ckpt_dir}")
        path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if path is None:
            raise SystemExit(f"--resume: checkpoint {tag} in {ckpt_dir} could not be loaded")
        start = int(client["step"])
        if rank == 0:
            print(f"resumed from {path} at step {start}", flush=True)

    def log(row: dict[str, Any]) -> None:
        if rank == 0:
            print(json.dumps(row, ensure_ascii=False), flush=True)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def evaluate() -> tuple[float, float]:
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64)  # summed loss × tokens, tokens
        n = len(val)
        per_rank = max(1, min(args.eval_batches, math.ceil(n / (world * args.micro_batch))))
        with torch.no_grad():
            for b in range(per_rank):  # the same count on every rank: ZeRO-3 gathers weights collectively
                idx = [((b * world + rank) * args.micro_batch + i) % n for i in range(args.micro_batch)]
                ids, labels, mask = collate([val[i] for i in idx], pad_id)
                loss = engine(input_ids=ids, labels=labels, attention_mask=mask).loss
                tokens = int((labels[:, 1:] != -100).sum())
                total += torch.tensor([float(loss) * tokens, tokens], dtype=torch.float64)
        dist.all_reduce(total)
        engine.train()
        mean = float(total[0] / max(total[1], 1))
        return mean, math.exp(min(mean, 50))

    def save(step: int) -> None:
        save_checkpoint(engine, ckpt_dir, f"step{step}", {"step": step}, rank)

    engine.train()
    t_start = time.perf_counter()
    for step in range(start, args.steps):
        t0 = time.perf_counter()
        stats = torch.zeros(3, dtype=torch.float64)  # loss sum, micro-steps, tokens
        for m in range(args.grad_accum):
            ids, labels, mask = collate([train[i] for i in order.indices(step, m, rank)], pad_id)
            loss = engine(input_ids=ids, labels=labels, attention_mask=mask).loss
            engine.backward(loss)
            engine.step()
            stats += torch.tensor([float(loss), 1, int(mask.sum())], dtype=torch.float64)
        dist.all_reduce(stats)
        dt = time.perf_counter() - t0
        row: dict[str, Any] = {"step": step + 1, "loss": round(float(stats[0] / stats[1]), 5),
                               "lr": sched.get_last_lr()[0], "tokens_per_s": round(float(stats[2]) / dt, 1),
                               "seconds": round(dt, 3)}
        if args.eval_every and (step + 1) % args.eval_every == 0 and (step + 1) < args.steps:
            row["val_loss"], row["val_ppl"] = evaluate()
        if (step + 1) % args.log_every == 0 or "val_loss" in row:
            log(row)
        if args.save_every and (step + 1) % args.save_every == 0 and (step + 1) < args.steps:
            save(step + 1)
    val_loss, val_ppl = evaluate()
    log({"step": args.steps, "val_loss": val_loss, "val_ppl": val_ppl,
         "train_seconds": round(time.perf_counter() - t_start, 1)})
    save(args.steps)
    if rank == 0:
        plot_losses(out / "log.jsonl", out / "loss.png")
    dist.barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
