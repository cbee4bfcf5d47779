"""The standard speed measurement behind ``linly bench``: prefill a prompt, then decode
tokens greedily, repeated, median taken; the machine's read bandwidth measured in the
same run so that decode can be read as a fraction of what memory allows.

Peers run the same model in the same process when they are installed: llama.cpp through
llama-cpp-python (it needs a GGUF: the model itself, or the GGUF a packed file was made
from) and transformers on torch (``transformers``: f32 weights; ``transformers-bf16``:
bf16 weights and arithmetic, torch's fast CPU path where the CPU has AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Result:
    engine: str
    threads: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    weight_gb_per_s: float | None = None  # weights read per decoded token × decode rate
    of_read_bandwidth: float | None = None  # weight_gb_per_s ÷ the measured read bandwidth

    def row(self) -> dict:
        return asdict(self)


def _median_runs(run: Callable[[], tuple[float, float]], repeat: int) -> tuple[float, float]:
    runs = [run() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def prompt_ids(vocab: int, n: int, seed: int = 1) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(min(100, vocab // 2), vocab, n)]


def bench_linly(path: Path, threads: int, prompt: int, gen: int, repeat: int,
                activations: str = "int8x2") -> tuple[tuple[float, float], int]:
    """((prefill tok/s, decode tok/s), weight bytes read per decoded token)."""
    import linly_engine as le

    m = le.Model.load(path, threads=threads, max_context=prompt + gen + 8, activations=activations)
    ids = prompt_ids(m.config["vocab_size"], prompt)
    m.prefill(ids[:8])

    def once() -> tuple[float, float]:
        m.reset()
        t0 = time.perf_counter()
        logits = m.prefill(ids)
        t1 = time.perf_counter()
        for _ in range(gen):
            logits = m.decode(int(np.argmax(logits)))
        t2 = time.perf_counter()
        return prompt / (t1 - t0), gen / (t2 - t1)

    # Per decoded token every weight is read once, except an untied embedding, of which
    # one row is read (a tied one is read in full as the head).
    emb, head = m._weights["model.embed_tokens.weight"], m._weights["lm_head.weight"]
    nbytes = int(m.info()["weight_bytes"]) - (emb.data.nbytes if emb is not head else 0)
    return _median_runs(once, repeat), nbytes


def bench_llama_cpp(gguf: Path, threads: int, prompt: int, gen: int, repeat: int) -> tuple[float, float]:
    import llama_cpp

    n_ctx = prompt + gen + 8
    # n_batch = n_ctx: llama-cpp-python keeps n_batch rows of scores, indexed by position
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                          n_ctx=n_ctx, n_batch=n_ctx, verbose=False)
    ids = prompt_ids(llm.n_vocab(), prompt)
    llm.eval(ids[:8])

    def once() -> tuple[float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(gen):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t2 = time.perf_counter()
        return prompt / (t1 - t0), gen / (t2 - t1)

    return _median_runs(once, repeat)


def bench_transformers(path: Path, threads: int, prompt: int, gen: int, repeat: int,
                       dtype: str = "float32") -> tuple[float, float]:
    """transformers on torch's CPU path; dtype "float32" or "bfloat16" (weights and arithmetic)."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if path.is_dir():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
    model.eval()
    ids = torch.tensor([prompt_ids(model.config.vocab_size, prompt)])

    def once() -> tuple[float, float]:
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            t1 = time.perf_counter()
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            for _ in range(gen):
                out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            t2 = time.perf_counter()
        return prompt / (t1 - t0), gen / (t2 - t1)

    return _median_runs(once, repeat)


def source_gguf(path: Path) -> Path | None:
    """The GGUF llama.cpp can read for this model: the file itself, or the GGUF a packed
    file was converted from, if it is still there."""
    from linly_engine.formats import gguf, packed

    if path.is_file() and gguf.is_gguf(path):
        reader = gguf._reader(path)
        if not packed.is_packed_reader(reader):
            return path
        src = Path(gguf._field(reader, "linly.source") or "")
        if src.is_file() and gguf.is_gguf(src) and not packed.is_packed_reader(gguf._reader(src)):
            return src
    return None


def run(path: Path, threads: list[int], prompt: int, gen: int, repeat: int, vs: list[str],
        log: Callable[[str], None] = print) -> dict:
    """Every engine × thread count; returns {"bandwidth_gb_s": {threads: GB/s}, "rows": [...]}."""
    import linly_engine as le

    rows: list[Result] = []
    bandwidth: dict[int, float] = {}
    for t in threads:
        le.set_num_threads(t)
        bw = le.measure_read_bandwidth(512 << 20, 3)  # GB/s, best of 3 passes, this thread count
        bandwidth[t] = bw
        (pp, tg), nbytes = bench_linly(path, t, prompt, gen, repeat)
        gbs = nbytes * tg / 1e9
        rows.append(Result("linly", t, pp, tg, gbs, gbs / bw if bw > 0 else None))
        log(f"linly        threads={t}: prefill {pp:8.1f} tok/s, decode {tg:7.1f} tok/s ({gbs:.1f} GB/s, "
            f"read bandwidth {bw:.1f} GB/s)")
        for peer in vs:
            try:
                if peer == "llama.cpp":
                    gguf = source_gguf(path)
                    if gguf is None:
                        raise ValueError("llama.cpp needs a GGUF: pass the .gguf, or a .linly converted from one "
                                         "that is still in place")
                    pp2, tg2 = bench_llama_cpp(gguf, t, prompt, gen, repeat)
                elif peer in ("transformers", "transformers-bf16"):
                    pp2, tg2 = bench_transformers(path if path.is_dir() else (source_gguf(path) or path), t, prompt,
                                                  gen, repeat, "bfloat16" if peer.endswith("bf16") else "float32")
                else:
                    raise ValueError(f"unknown peer '{peer}' (llama.cpp, transformers, transformers-bf16)")
            except ImportError as e:
                log(f"{peer:<12} skipped: {e.name or e} is not installed")
                continue
            except (ValueError, OSError) as e:
                log(f"{peer:<12} skipped: {e}")
                continue
            rows.append(Result(peer, t, pp2, tg2))
            log(f"{peer:<12} threads={t}: prefill {pp2:8.1f} tok/s, decode {tg2:7.1f} tok/s")
    return {"model": str(path), "prompt": prompt, "gen": gen, "repeat": repeat,
            "bandwidth_gb_s": bandwidth, "rows": [r.row() for r in rows]}


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    width = 0.8 / len(engines)
    colors = {"linly": "#c44"} | {e: c for e, c in zip([e for e in engines if e != "linly"], ("#888", "#48a", "#9b6", "#c93"))}
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, title in zip(axes, ("prefill_tokens_per_s", "decode_tokens_per_s"),
                              (f"prefill ({result['prompt']} tokens)", f"decode ({result['gen']} tokens)")):
        for i, e in enumerate(engines):
            xs = [j + (i - (len(engines) - 1) / 2) * width for j, t in enumerate(threads)]
            vals = [next((r[key] for r in rows if r["engine"] == e and r["threads"] == t), 0.0) for t in threads]
            bars = ax.bar(xs, vals, width, label=e, color=colors[e])
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(threads)), [f"{t} thread{'s' if t > 1 else ''}" for t in threads])
        ax.set_title(title)
        ax.set_ylabel("tokens/s")
    axes[0].legend(fontsize=8)
    fig.suptitle(Path(result["model"]).name)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
