"""Fuzz targets: each takes the fuzzer's bytes and drives one of the engine's entry
points for untrusted input (model files, tokenizer files, text and token ids, chat
templates and messages).

The rule every target enforces: an input may be refused only with the project's clean
error, a ``ValueError`` (``CheckpointError`` and ``TokenizerError`` are ValueErrors, as is
``UnicodeDecodeError``) whose message says what is wrong. Any other exception escapes the
target and the fuzzer reports it as a crash; a segfault, a sanitizer report or a hang
(libFuzzer's -timeout) is a crash too.

Used by tests/fuzz/fuzz.py (atheris campaigns) and tests/test_fuzz.py (seeds, every
input that ever crashed, and a short campaign per target in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path



def _scratch() -> Path:
    """A folder for the per-input files, in /dev/shm (off the disk) where it exists, named
    by pid: libFuzzer ends the process without running Python's exit handlers, so each
    start removes the folders of processes that are gone."""
    root = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    for old in root.glob("linly-fuzz-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    d = root / f"linly-fuzz-{os.getpid()}"
    d.mkdir(exist_ok=True)
    return d


_TMP = _scratch()
ALLOWED = (ValueError,)
# Past this many elements a weight is not dequantised or run in a fuzz iteration: a
# mutated shape may ask for gigabytes, which is the memory check's business, not a parser's.
SMALL = 1 << 16
TOKENIZER_KINDS = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "gguf_tokenizer.json",
                   "generation_config.json")


def _file(name: str, data: bytes) -> Path:
    p = _TMP / name
    p.write_bytes(data)
    return p


def _exercise_checkpoint(ck) -> None:
    """What happens after a model file parses: weights dequantised, tokenizer rebuilt, the
    native decoder built (with a tiny context) when the model is small."""
    from linly_engine.model import Model
    from linly_engine.tokenizer import load_tokenizer

    for t in ck.tensors.values():
        size = 1
        for d in t.shape:
            size *= int(d)
        if size <= SMALL:
            t.to_f32()
    files = ck.metadata.get("files") or {}
    fields = ck.metadata.get("gguf_tokenizer_fields") or {}
    if files or fields:
        try:
            tok = load_tokenizer(files, fields)
        except ValueError:
            pass
        else:
            tok.decode(tok.encode("你好 world <s>")[:8])
    params = sum(int(t.array.size) for t in ck.tensors.values())
    if params <= 4 * SMALL:
        m = Model(ck, max_context=8)
        m.prefill([0, 1])
        m.decode(0)


def model_file(data: bytes) -> None:
    """A file handed to ``Model.load``: GGUF, or the packed .linly file (a GGUF container)."""
    from linly_engine.model import load_checkpoint

    p = _file("model.gguf", data)
    try:
        ck = load_checkpoint(p)
    except ValueError:
        return
    try:
        _exercise_checkpoint(ck)
    except ValueError:
        pass


def packed_verify(data: bytes) -> None:
    """``linly verify``'s checksum pass over a .linly file."""
    from linly_engine.formats.packed import verify

    try:
        verify(_file("model.linly", data))
    except ValueError:
        pass


def packed(data: bytes) -> None:
    model_file(data)
    packed_verify(data)


def safetensors(data: bytes) -> None:
    from linly_engine.formats.hf import read_safetensors

    try:
        tensors = read_safetensors(_file("model.safetensors", data))
        for t in tensors.values():
            if t.array.size <= SMALL:
                t.to_f32()
    except ValueError:
        pass


def torch_bin(data: bytes) -> None:
    """A PyTorch pickle as the HF ``pytorch_model.bin`` reader and the TencentPretrain
    loader see it (the config next to it describes the seed's tiny model)."""
    from linly_engine.formats.hf import read_torch_bin
    from linly_engine.formats.meta import load_tencentpretrain

    p = _file("linly_model.bin", data)
    cfg = _TMP / "llama_config.json"
    if not cfg.exists():
        cfg.write_text(json.dumps({"emb_size": 32, "heads_num": 2, "kv_heads_num": 1, "layers_num": 1}))
    try:
        for t in read_torch_bin(p).values():
            if t.array.size <= SMALL:
                t.to_f32()
        ck = load_tencentpretrain(p, cfg)
        _exercise_checkpoint(ck)
    except ValueError:
        pass


def tokenizer_files(data: bytes) -> None:
    """One tokenizer file as a model carries it (first byte: which, see TOKENIZER_KINDS),
    then text through it both ways and through the streaming decoder."""
    from linly_engine.tokenizer import StreamDecoder, load_tokenizer

    if not data:
        return
    kind, blob = TOKENIZER_KINDS[data[0] % len(TOKENIZER_KINDS)], data[1:]
    try:
        if kind == "gguf_tokenizer.json":
            try:
                fields = json.loads(blob)
            except ValueError:
                return
            tok = load_tokenizer({}, fields if isinstance(fields, dict) else {"tokenizer.ggml.tokens": fields})
        elif kind in ("tokenizer_config.json", "generation_config.json"):
            # needs a vocabulary to go with it: the smallest GGUF one
            tok = load_tokenizer({kind: blob}, {"tokenizer.ggml.model": "llama",
                                                "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a"],
                                                "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0],
                                                "tokenizer.ggml.token_type": [2, 3, 3, 1]})
        else:
            tok = load_tokenizer({kind: blob})
        ids = tok.encode("你好，世界 hello <s></s><|im_end|> 龘")
        tok.decode(ids, skip_special=False)
        stream = StreamDecoder(tok)
        for i in ids:
            stream.push(i)
        stream.flush()
        tok.stop_ids  # noqa: B018  (reads the vocabulary for end-of-turn markers)
    except ValueError:
        pass


_FIXED: dict[str, object] = {}


def fixed_tokenizers() -> list:
    """The SentencePiece, tokenizer.json and GGUF-vocabulary tokenizers of the seeds."""
    if not _FIXED:
        from linly_engine.tokenizer import load_tokenizer

        seeds = Path(__file__).resolve().parent / "seeds" / "tokenizer_files"
        _FIXED["spm"] = load_tokenizer({"tokenizer.model": (seeds / "spm").read_bytes()[1:]})
        _FIXED["json"] = load_tokenizer({"tokenizer.json": (seeds / "tokenizer_json").read_bytes()[1:],
                                         "tokenizer_config.json": (seeds / "tokenizer_config").read_bytes()[1:]})
        _FIXED["gguf"] = load_tokenizer({}, json.loads((seeds / "gguf_fields").read_bytes()[1:]))
    return list(_FIXED.values())


def tokenizer_text(data: bytes) -> None:
    """Text (the input's UTF-8, errors replaced) encoded, and the input's bytes read as
    token ids decoded in one go and one at a time (out-of-range ids included)."""
    from linly_engine.tokenizer import StreamDecoder

    if not data:
        return
    toks = fixed_tokenizers()
    tok = toks[data[0] % len(toks)]
    rest = data[1:]
    text = rest.decode("utf-8", errors="replace")
    ids = tok.encode(text, add_special=bool(data[0] & 4))
    assert all(0 <= i < tok.vocab_size for i in ids), ids
    back = tok.decode(ids)
    assert isinstance(back, str)
    # bytes as little-endian 16-bit ids, some past the vocabulary
    raw = [int.from_bytes(rest[i:i + 2], "little") % (tok.vocab_size + 8) for i in range(0, len(rest) - 1, 2)]
    for skip in (True, False):
        try:
            tok.decode(raw, skip_special=skip)
        except ValueError:
            pass
    stream = StreamDecoder(tok, raw[:3])
    shown = []
    for i in raw[3:]:
        try:
            shown.append(stream.push(i))
        except ValueError:
            break
    else:
        try:
            shown.append(stream.flush())
        except ValueError:  # the context ids (raw[:3]) may be out of range too
            return
        valid = [i for i in raw[3:] if 0 <= i < tok.vocab_size]
        if len(valid) == len(raw[3:]) and "\ufffd" not in "".join(shown[:-1]):
            assert all(isinstance(s, str) for s in shown)


_MESSAGE_ROLES = ("system", "user", "assistant", "tool", "", "User")


def templates(data: bytes) -> None:
    """A chat template (the input's text, or a built-in one) rendered over messages made
    from the input."""
    import atheris

    from linly_engine.templates import BUILTIN, ChatTemplate

    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, len(BUILTIN))
    messages = []
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        kind = fdp.ConsumeIntInRange(0, 9)
        if kind == 0:
            messages.append(fdp.ConsumeUnicodeNoSurrogates(8))  # not a dict
        elif kind == 1:
            messages.append({"role": "user", "content": fdp.ConsumeInt(2)})  # content not a string
        else:
            messages.append({"role": _MESSAGE_ROLES[fdp.ConsumeIntInRange(0, len(_MESSAGE_ROLES) - 1)],
                             "content": fdp.ConsumeUnicodeNoSurrogates(40)})
    add_gen = fdp.ConsumeBool()
    bos = fdp.ConsumeUnicodeNoSurrogates(4) if fdp.ConsumeBool() else None
    if choice == len(BUILTIN):
        template = ChatTemplate("fuzzed", fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()))
    else:
        template = list(BUILTIN.values())[choice]
    try:
        out = template.render(messages, add_generation_prompt=add_gen, bos_token=bos, eos_token="</s>")
    except ValueError:
        return
    assert isinstance(out, str)


def templates_source(data: bytes) -> None:
    """The input as a template's source, over a fixed conversation (what a model file's
    chat_template does)."""
    from linly_engine.templates import ChatTemplate

    source = data.decode("utf-8", errors="replace")
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]
    try:
        out = ChatTemplate("fuzzed", source).render(msgs, bos_token="<s>", eos_token="</s>")
    except ValueError:
        return
    assert isinstance(out, str)


TARGETS = {
    "packed": packed,
    "gguf": model_file,
    "safetensors": safetensors,
    "torch_bin": torch_bin,
    "tokenizer_files": tokenizer_files,
    "tokenizer_text": tokenizer_text,
    "templates": templates,
}
# seeds of another target that suit one (templates_source reads the template seeds)
SEED_DIRS = {"templates_source": "templates"}
TARGETS["templates_source"] = templates_source
