"""The quality table of README.md: perplexity, bits per weight, KL divergence and top-1
agreement of each quantisation, on held-out English and Chinese text, for SmolLM2-135M
(the default model) and the miniature Linly model of training/README.md, with
llama.cpp's own Q4_0 and Q8_0 scored on the same token ids and windows.

    python benchmarks/quality/report.py WORK [--mini DIR] [--ctx 256] [--tokens 4096]

WORK holds the texts, converted models and results (quality.json, quality.md); DIR is
the miniature run's work folder (training/scripts/mini_linly.py), whose held-out
Chinese paragraphs and training text are reused. Everything comes from packages
(Debian's debian-reference-en for English); nothing is downloaded from a model hub.

Protocol: linly_engine.perplexity (BOS, then non-overlapping windows of --ctx tokens,
every position scored). "f32" is the checkpoint as the engine runs it in float32 (for
SmolLM2, its Q4_1 GGUF dequantised: the weights the model ships with); KL and top-1
agreement are measured against it. Bits per weight count the 2-D weight matrices only
(the embedding/head included, norms and tokenizer excluded), from the bytes stored.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import linly_engine as le
from linly_engine import perplexity as P
from linly_engine.formats.packed import carried_files, write_packed
from linly_engine.model import load_checkpoint
from linly_engine.tokenizer import load_tokenizer

# (label, --quant, calibrated): the rows of the table
VARIANTS = [
    ("f32", "f32", False),
    ("q8_0", "q8_0", False),
    ("q4_0", "q4_0", False),
    ("q4_1", "q4_1", False),
    ("g128 RTN", "q4_g128", False),
    ("g128 calibrated", "q4_g128", True),
    ("mix4 calibrated", "mix4", True),
]
CALIB_SEQS, CALIB_LEN = 128, 128


def english_paragraphs(work: Path) -> list[str]:
    pkgs = work / "packages"
    pkgs.mkdir(parents=True, exist_ok=True)
    if not list(pkgs.glob("debian-reference-en_*.deb")):
        subprocess.run(["apt-get", "download", "debian-reference-en"], cwd=pkgs, check=True, stdout=subprocess.DEVNULL)
    root = pkgs / "root"
    subprocess.run(["dpkg", "-x", str(next(pkgs.glob("debian-reference-en_*.deb"))), str(root)], check=True)
    text = gzip.open(next(root.glob("usr/share/debian-reference/debian-reference.en.txt*")), "rt", encoding="utf-8").read()
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if 200 <= len(p) < 1500 and len(re.findall(r"[A-Za-z]+", p)) >= 30]


def texts(work: Path, mini: Path) -> dict[str, Path]:
    """Held-out English and Chinese, and a calibration text disjoint from both."""
    out = {k: work / f"{k}.txt" for k in ("heldout_en", "heldout_zh", "calibration")}
    if all(p.exists() for p in out.values()):
        return out
    en = english_paragraphs(work)
    random.Random(0).shuffle(en)
    held_en, calib_en = en[:80], en[80:480]
    out["heldout_en"].write_text("\n".join(held_en) + "\n", encoding="utf-8")
    out["heldout_zh"].write_text((mini / "data" / "heldout_zh.txt").read_text(encoding="utf-8"), encoding="utf-8")
    zh_train = (mini / "data" / "zh_docs.txt").read_text(encoding="utf-8").splitlines()
    random.Random(1).shuffle(zh_train)
    calib = [ln for pair in zip(zh_train, calib_en) for ln in pair]
    out["calibration"].write_text("\n".join(calib) + "\n", encoding="utf-8")
    return out


def convert(src: Path, out: Path, quant: str, calib: Path | None, log) -> Path:
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "linly_engine", "convert", str(src), str(out), "--quant", quant, "--quiet"]
    if calib is not None:
        cmd += ["--calib", str(calib), "--calib-seqs", str(CALIB_SEQS), "--calib-len", str(CALIB_LEN)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    log(f"  converted {out.name} in {time.perf_counter() - t0:.0f} s")
    return out


def bits_per_weight_packed(path: Path) -> float:
    from linly_engine import _C
    ck = load_checkpoint(path)
    bits = elems = 0
    seen = set()
    for t in ck.tensors.values():
        if len(t.shape) == 2 and id(t) not in seen:
            seen.add(id(t))
            n = int(np.prod(t.shape))
            info = _C.format_info(t.fmt)
            bits += n * 8 * info["block_bytes"] / info["block_elems"]
            elems += n
    return bits / elems


def bits_per_weight_gguf(path: Path) -> float:
    import gguf

    r = gguf.GGUFReader(str(path))
    bits = elems = 0
    for t in r.tensors:
        if len([d for d in t.shape if d > 1]) == 2:
            bits += 8 * int(t.n_bytes)
            elems += int(t.n_elements)
    return bits / elems


def llama_cpp_gguf(src: Path, work: Path, name: str, ftype: str, template_gguf: Path) -> Path:
    """A GGUF llama.cpp quantised itself (``llama_model_quantize``) from an f32 GGUF of
    the model (SmolLM2: its own GGUF as the source)."""
    import llama_cpp

    out = work / f"{name}-llamacpp-{ftype}.gguf"
    if out.exists():
        return out
    base = src if src.suffix == ".gguf" else write_llama_gguf(src, work / f"{name}-f32.gguf", template_gguf)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[ftype]
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(base).encode(), str(out).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return out


def write_llama_gguf(hf: Path, out: Path, template: Path) -> Path:
    """An f32 GGUF in llama.cpp's layout of a Hugging Face LLaMA folder whose vocabulary and
    shape are those of ``template`` (the miniature model is SmolLM2-shaped with its tokenizer):
    metadata copied from the template, tensors from the folder, q/k rows permuted back to
    llama.cpp's rotary order."""
    import gguf

    if out.exists():
        return out
    r = gguf.GGUFReader(str(template))
    ck = load_checkpoint(hf)
    cfg = ck.config
    w = gguf.GGUFWriter(str(out), "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            vals = [field.parts[i].tobytes().decode("utf-8") if sub == gguf.GGUFValueType.STRING
                    else field.parts[i].tolist()[0] for i in field.data]
            w.add_array(field.name, vals)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(field.name, field.parts[field.data[0]].tobytes().decode("utf-8"))
        else:
            w.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], vtype)
    w.add_file_type(0)

    def permute(x: np.ndarray, heads: int) -> np.ndarray:  # HF rotate-half rows → interleaved pairs
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", ck.tensors["model.embed_tokens.weight"].to_f32())
    w.add_tensor("output_norm.weight", ck.tensors["model.norm.weight"].to_f32())
    if ck.tensors["lm_head.weight"] is not ck.tensors["model.embed_tokens.weight"]:
        w.add_tensor("output.weight", ck.tensors["lm_head.weight"].to_f32())
    for i in range(cfg["num_hidden_layers"]):
        for hf_name, g_name in names.items():
            a = ck.tensors[f"model.layers.{i}.{hf_name}.weight"].to_f32()
            if g_name == "attn_q":
                a = permute(a, cfg["num_attention_heads"])
            elif g_name == "attn_k":
                a = permute(a, cfg["num_key_value_heads"])
            w.add_tensor(f"blk.{i}.{g_name}.weight", np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def llama_cpp_runner(path: Path, ctx: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, n_threads=threads,
                verbose=False)

    def run(window: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(window)
        return np.array(llm.scores[:len(window)], dtype=np.float32)

    return run


def cached(run):
    """Memoises a runner per window: the f32 reference is compared with every variant."""
    memo: dict[tuple, np.ndarray] = {}

    def wrapped(window: list[int]) -> np.ndarray:
        key = tuple(window)
        if key not in memo:
            memo[key] = run(window)
        return memo[key]

    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--mini", type=Path, default=Path("/work/mini"))
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens scored per text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,mini")
    ap.add_argument("--kv-only", action="store_true", help="only the KV cache rows (f32 weights; f16 and q8_0 cache)")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)
    le.set_num_threads(args.threads)
    paths = texts(work, args.mini)
    from linly_engine.default_model import find_default_gguf

    smol = Path(find_default_gguf())
    models = {"smollm2": smol, "mini": args.mini / "linly-mini-hf"}
    results_path = work / "quality.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.models.split(","):
        src = models[name]
        ck = load_checkpoint(src)
        tok = load_tokenizer(carried_files(ck), ck.metadata.get("gguf_tokenizer_fields"))
        files = {label: convert(src, work / f"{name}-{label.replace(' ', '-')}.linly", quant,
                                paths["calibration"] if calib else None, log)
                 for label, quant, calib in VARIANTS if label == "f32" or not args.kv_only}
        if args.kv_only:
            kv_rows(name, files["f32"], tok, paths, args, results, log)
            results_path.write_text(json.dumps(results, indent=1))
            continue
        ggufs = {f"llama.cpp {ft}": llama_cpp_gguf(src, work, name, ft, smol) for ft in ("Q4_0", "Q8_0")}
        for text in ("heldout_en", "heldout_zh"):
            ids = [tok.bos_id] + tok.encode(paths[text].read_text(encoding="utf-8"), add_special=False)
            ids = ids[:args.tokens]
            ref = cached(P.engine_runner(le.Model.load(files["f32"], max_context=args.ctx, kv_cache="f32")))
            rows = results.setdefault(name, {}).setdefault(text, {})
            for label, path in {**files, **ggufs}.items():
                t0 = time.perf_counter()
                if label.startswith("llama.cpp"):
                    run, bpw = llama_cpp_runner(path, args.ctx, args.threads), bits_per_weight_gguf(path)
                else:
                    run, bpw = P.engine_runner(le.Model.load(path, max_context=args.ctx)), bits_per_weight_packed(path)
                s = P.score(ref if label == "f32" else run, ids, args.ctx, "all", ref)
                rows[label] = {**s.as_dict(), "bits_per_weight": bpw}
                log(f"{name} {text} {label:<18} ppl {s.ppl:8.3f}  bpw {bpw:5.2f}  KL {s.kl:.4f}  "
                    f"top-1 {100 * s.top1_agreement:6.2f} %  ({time.perf_counter() - t0:.0f} s)")
                results_path.write_text(json.dumps(results, indent=1))
    (work / "quality.md").write_text(markdown(results, args), encoding="utf-8")
    print(markdown(results, args))


def kv_rows(name: str, f32: Path, tok, paths: dict, args, results: dict, log) -> None:
    """The KV cache's precision alone: f32 weights, the cache in f16 or q8_0, against f32."""
    for text in ("heldout_en", "heldout_zh"):
        ids = ([tok.bos_id] + tok.encode(paths[text].read_text(encoding="utf-8"), add_special=False))[:args.tokens]
        ref = P.engine_runner(le.Model.load(f32, max_context=args.ctx, kv_cache="f32"))
        ref = cached(ref)
        for kv in ("f16", "q8_0"):
            m = le.Model.load(f32, max_context=args.ctx, kv_cache=kv)
            s = P.score(P.engine_runner(m), ids, args.ctx, "all", ref)
            results.setdefault("kv_cache", {}).setdefault(name, {}).setdefault(text, {})[kv] = {
                **s.as_dict(), "kv_cache_bytes": m.info()["kv_cache_bytes"]}
            log(f"{name} {text} kv {kv:<5} ppl {s.ppl:8.3f}  KL {s.kl:.5f}  top-1 {100 * s.top1_agreement:6.2f} %  "
                f"cache {m.info()['kv_cache_bytes'] / 2**20:.1f} MiB")


def markdown(results: dict, args) -> str:
    lines = []
    kv = results.get("kv_cache", {})
    results = {k: v for k, v in results.items() if k != "kv_cache"}
    for name, by_text in results.items():
        labels = list(next(iter(by_text.values())))
        lines += [f"**{name}** (ctx {args.ctx}, first {args.tokens} tokens of each text)", "",
                  "| variant | bits/weight | ppl en | Δ en | ppl zh | Δ zh | KL en / zh | top-1 en / zh |",
                  "|---|---|---|---|---|---|---|---|"]
        f32 = {t: by_text[t]["f32"]["ppl"] for t in by_text}
        for label in labels:
            en, zh = by_text["heldout_en"][label], by_text["heldout_zh"][label]
            lines.append(f"| {label} | {en['bits_per_weight']:.2f} | {en['ppl']:.3f} | "
                         f"{100 * (en['ppl'] / f32['heldout_en'] - 1):+.1f} % | {zh['ppl']:.3f} | "
                         f"{100 * (zh['ppl'] / f32['heldout_zh'] - 1):+.1f} % | {en['kl']:.4f} / {zh['kl']:.4f} | "
                         f"{100 * en['top1_agreement']:.1f} / {100 * zh['top1_agreement']:.1f} % |")
        lines.append("")
    if kv:
        lines += ["KV cache (f32 weights; KL and top-1 against the f32 cache)", "",
                  "| model | cache | MiB at ctx | ppl en | ppl zh | KL en / zh | top-1 en / zh |", "|---|---|---|---|---|---|---|"]
        for name, by_text in kv.items():
            for c in by_text["heldout_en"]:
                en, zh = by_text["heldout_en"][c], by_text["heldout_zh"][c]
                lines.append(f"| {name} | {c} | {en['kv_cache_bytes'] / 2**20:.1f} | {en['ppl']:.3f} | {zh['ppl']:.3f} | "
                             f"{en['kl']:.5f} / {zh['kl']:.5f} | {100 * en['top1_agreement']:.2f} / "
                             f"{100 * zh['top1_agreement']:.2f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
