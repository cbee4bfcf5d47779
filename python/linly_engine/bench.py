"""The standard speed measurement behind ``linly bench``: prefill a prompt, then decode
tokens greedily, repeated, median taken; the machine's read bandwidth measured in the
same run so that decode can be read as a fraction of what memory allows. Engines compared
with each other take turns round by round, and their ratio is the median of the rounds'.

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
    # For a peer: median over rounds of linly's rate ÷ this engine's in the same round.
    linly_prefill_ratio: float | None = None
    linly_decode_ratio: float | None = None

    def row(self) -> dict:
        return asdict(self)


Runner = Callable[[], tuple[float, float]]  # one measurement: (prefill tok/s, decode tok/s)


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(median prefill tok/s, median decode tok/s) of measurements."""
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def interleaved(runners: dict[str, Runner], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Each round runs every engine once, in turn, so that the load of the neighbours on a
    shared machine, which drifts over seconds, lands on all engines alike; the ratio of
    two engines is best read per round (`paired_ratios`)."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, once in runners.items():
            runs[name].append(once())
    return runs


def paired_ratios(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> tuple[float, float]:
    """Median over rounds of a's rate ÷ b's rate in the same round: (prefill, decode)."""
    return (statistics.median(x[0] / y[0] for x, y in zip(a, b)),
            statistics.median(x[1] / y[1] for x, y in zip(a, b)))


def prompt_ids(vocab: int, n: int, seed: int = 1) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(min(100, vocab // 2), vocab, n)]


def linly_runner(path: Path, threads: int, prompt: int, gen: int,
                 activations: str = "int8x2", device: str = "cpu") -> tuple[Runner, int]:
    """The model loaded once; returns (one measurement, weight bytes read per decoded token)."""
    import linly_engine as le

    m = le.Model.load(path, threads=threads, max_context=prompt + gen + 8, activations=activations, device=device)
    ids = prompt_ids(m.config["vocab_size"], prompt)
    m.prefill(ids[:8])

    def once() -> tuple[float, float]:
        le.set_num_threads(threads)  # another runner of this process may have changed it
        m.reset()
        t0 = time.perf_counter()
        logits = m.prefill(ids)
        t1 = time.perf_counter()
        for _ in range(gen):
            logits = m.decode(int(np.argmax(logits)))
        t2 = time.perf_counter()
        return prompt / (t1 - t0), gen / (t2 - t1)

    if device == "cuda":  # the GPU keeps the embedding as its own fp16 table, one row of it read
        return once, int(m.info()["weight_bytes"]) - 2 * m.config["vocab_size"] * m.config["hidden_size"]
    # Per decoded token every weight is read once, except an untied embedding, of which
    # one row is read (a tied one is read in full as the head).
    emb, head = m._weights["model.embed_tokens.weight"], m._weights["lm_head.weight"]
    nbytes = int(m.info()["weight_bytes"]) - (emb.source_bytes if emb is not head else 0)
    return once, nbytes


def llama_cpp_runner(gguf: Path, threads: int, prompt: int, gen: int) -> Runner:
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

    return once


def transformers_runner(path: Path, threads: int, prompt: int, gen: int, dtype: str = "float32") -> Runner:
    """transformers on torch's CPU path; dtype "float32" or "bfloat16" (weights and arithmetic)."""
    import torch
    import transformers

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if path.is_dir():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
    model.eval()
    ids = torch.tensor([prompt_ids(model.config.vocab_size, prompt)])

    def once() -> tuple[float, float]:
        torch.set_num_threads(threads)
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

    return once


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


def _peer_runner(peer: str, path: Path, threads: int, prompt: int, gen: int) -> Runner:
    if peer == "llama.cpp":
        gguf = source_gguf(path)
        if gguf is None:
            raise ValueError("llama.cpp needs a GGUF: pass the .gguf, or a .linly converted from one "
                             "that is still in place, or name a GGUF with --peer-model")
        return llama_cpp_runner(gguf, threads, prompt, gen)
    if peer in ("transformers", "transformers-bf16"):
        src = path if path.is_dir() else source_gguf(path)
        if src is None:  # transformers would fail deep inside on the engine's own tensor types
            raise ValueError(f"transformers reads a model folder or a plain GGUF, not {path.name}: pass the folder "
                             "or GGUF it was converted from with --peer-model")
        return transformers_runner(src, threads, prompt, gen, "bfloat16" if peer.endswith("bf16") else "float32")
    raise ValueError(f"unknown peer '{peer}' (llama.cpp, transformers, transformers-bf16)")


def run(path: Path, threads: list[int], prompt: int, gen: int, repeat: int, vs: list[str],
        log: Callable[[str], None] = print, device: str = "cpu", peer_path: Path | None = None) -> dict:
    """Every engine × thread count, the engines of one thread count taking turns for
    `repeat` rounds (`interleaved`); returns {"bandwidth_gb_s": {threads: GB/s}, "rows": [...]}
    with each peer's row holding linly's paired ratios to it. device="cuda" measures the
    GPU decoder against the device's copy bandwidth (bytes read plus written); the peers
    run on the CPU, so they are not compared with it. peer_path: the model the peers run
    instead of `path` (linly on a mix4 .linly against llama.cpp on the Q4_0 GGUF of the
    same model: fewer bytes per token against the common format)."""
    import linly_engine as le

    if device == "cuda" and vs:
        raise ValueError("--vs compares engines on the CPU; for the GPU decoder against transformers on the GPU "
                         "use benchmarks/gpu/bench_decode.py")
    if peer_path is not None:
        if not vs:
            raise ValueError("--peer-model names the file the peers run: give the peers with --vs too")
        if not peer_path.exists():
            raise FileNotFoundError(f"--peer-model {peer_path} does not exist")
    rows: list[Result] = []
    bandwidth: dict[int, float] = {}
    for t in threads:
        le.set_num_threads(t)
        if device == "cuda":
            bw = le.cuda.copy_bandwidth_gbs(1 << 30, 10)
        else:
            bw = le.measure_read_bandwidth(512 << 20, 3)  # GB/s, best of 3 passes, this thread count
        bandwidth[t] = bw
        linly_once, nbytes = linly_runner(path, t, prompt, gen, device=device)
        runners: dict[str, Runner] = {"linly": linly_once}
        for peer in vs:
            try:
                runners[peer] = _peer_runner(peer, peer_path or path, t, prompt, gen)
            except ImportError as e:
                log(f"{peer:<12} skipped: {e.name or e} is not installed")
            except (ValueError, OSError) as e:
                log(f"{peer:<12} skipped: {e}")
        runs = interleaved(runners, repeat)
        pp, tg = medians(runs["linly"])
        gbs = nbytes * tg / 1e9
        rows.append(Result("linly", t, pp, tg, gbs, gbs / bw if bw > 0 else None))
        log(f"linly        threads={t}: prefill {pp:8.1f} tok/s, decode {tg:7.1f} tok/s ({gbs:.1f} GB/s, "
            f"read bandwidth {bw:.1f} GB/s)")
        for peer in runners:
            if peer == "linly":
                continue
            pp2, tg2 = medians(runs[peer])
            rpp, rtg = paired_ratios(runs["linly"], runs[peer])
            rows.append(Result(peer, t, pp2, tg2, linly_prefill_ratio=rpp, linly_decode_ratio=rtg))
            log(f"{peer:<12} threads={t}: prefill {pp2:8.1f} tok/s, decode {tg2:7.1f} tok/s "
                f"(linly/{peer}: {rpp:.2f}x / {rtg:.2f}x)")
    return {"model": str(path), "peer_model": str(peer_path or path), "prompt": prompt, "gen": gen, "repeat": repeat,
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
