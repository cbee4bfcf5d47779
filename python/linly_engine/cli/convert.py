"""``linly convert | verify | info``: the packed file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

QUANTS = ["q4_0", "q4_1", "q8_0", "q4_g32", "q4_g64", "q4_g128", "mix4", "f16", "bf16", "f32"]
CALIBRATED = ("q4_g32", "q4_g64", "q4_g128", "mix4")


def cmd_convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if args.calib and args.quant not in CALIBRATED:
        raise ValueError(f"--calib calibrates the group-wise 4-bit formats ({', '.join(CALIBRATED)}), "
                         f"not {args.quant}; pick one of those")
    t0 = time.perf_counter()
    ck = load_checkpoint(args.src)
    if args.calib:
        ck = calibrate(ck, args)
    # disable=None: no bar when stderr is not a terminal (logs, CI)
    with tqdm(total=len(ck.tensors), unit="tensor", desc="converting", disable=True if args.quiet else None) as bar:
        summary = write_packed(ck, out, None if args.quant == "keep" else args.quant,
                               progress=lambda name: (bar.set_postfix_str(name[-40:]), bar.update(1)))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"wrote {summary['path']}: {summary['bytes'] / 1e6:.1f} MB, {summary['parameters'] / 1e6:.1f} M parameters, "
          f"{summary['bits_per_weight']:.2f} bits/weight, {summary['seconds']} s")
    return 0


def calibrate(ck, args: argparse.Namespace):
    """The checkpoint with its matrices quantised against the calibration text (AWQ/GPTQ)."""
    from tqdm import tqdm

    from linly_engine.calibrate import Calibrator, calibration_sequences
    from linly_engine.formats.packed import carried_files
    from linly_engine.precision import target_format
    from linly_engine.tokenizer import load_tokenizer

    try:
        text = Path(args.calib).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.calib} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    tok = load_tokenizer(carried_files(ck), ck.metadata.get("gguf_tokenizer_fields"))
    seqs = calibration_sequences(tok.encode(text, add_special=False), args.calib_seqs, args.calib_len, tok.bos_id)
    formats = {name: target_format(name, args.quant, t.fmt, t.shape[1])
               for name, t in ck.tensors.items() if len(t.shape) == 2}
    layers = int(ck.config["num_hidden_layers"])
    with tqdm(total=layers + 1, unit="layer", desc=f"calibrating ({args.calib_method}, {len(seqs)}×{seqs.shape[1]} "
              "tokens)", disable=True if args.quiet else None) as bar:
        out = Calibrator(ck, formats, args.calib_method).run(seqs, progress=lambda step: bar.update(1))
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    from linly_engine.formats.packed import verify

    result = verify(args.file)
    print(f"OK {result['path']}: {result['tensors']} tensors, sha256 {result['sha256']} ({result['tool']})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from linly_engine.default_model import ensure_default_model
    from linly_engine.model import Model

    info = Model.load(args.model or ensure_default_model(), max_context=args.max_context).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def add_parsers(sub) -> None:
    c = sub.add_parser("convert", help="convert a checkpoint into the engine's packed .linly file",
                       description="Reads a Hugging Face folder, GGUF file, Meta folder or TencentPretrain .bin and "
                                   "writes one memory-mappable .linly file carrying the tokenizer.")
    c.add_argument("src", help="the source checkpoint")
    c.add_argument("out", help="the .linly file to write")
    c.add_argument("--quant", choices=QUANTS + ["keep"], default="q4_0",
                   help="weight format of the matrices (default q4_0; 'keep' keeps the source's; mix4: 4-bit "
                        "with finer groups for the embedding/head)")
    c.add_argument("--calib", default=None, metavar="TEXT",
                   help="calibrate the 4-bit rounding on this UTF-8 text (AWQ scales + GPTQ); with q4_g* or mix4")
    c.add_argument("--calib-method", choices=["awq+gptq", "gptq", "awq"], default="awq+gptq")
    c.add_argument("--calib-seqs", type=int, default=128, help="calibration sequences (default 128)")
    c.add_argument("--calib-len", type=int, default=128, help="tokens per calibration sequence (default 128)")
    c.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser("verify", help="check a .linly file's checksum")
    v.add_argument("file")
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("info", help="describe a model: architecture, formats, sizes")
    i.add_argument("model", nargs="?", default=None, help="model file or folder (default: the default model)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--max-context", type=int, default=None, help="KV cache size to report (default: up to 4096)")
    i.set_defaults(func=cmd_info)
