"""Writes the fuzzing seeds (small valid inputs) into tests/fuzz/seeds/<target>/.

Run once from the repository root; the seeds are committed, so this is only needed when
a format changes:  python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: checkpoints.py, textdata.py

import checkpoints as ck  # noqa: E402
import textdata  # noqa: E402

SEEDS = HERE / "seeds"


def tiny_model(vocab: int = 64, tie: bool = False):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()


def put(target: str, name: str, data: bytes) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    import gguf
    import torch

    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    shutil.rmtree(SEEDS, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spm_file = textdata.train_spm(tmp / "spm", vocab_size=900)
        textdata.train_bpe_json(tmp / "bpe", vocab_size=900)
        spm_bytes, bpe_json = spm_file.read_bytes(), (tmp / "bpe" / "tokenizer.json").read_bytes()
        bpe_cfg = (tmp / "bpe" / "tokenizer_config.json").read_bytes()

        # packed .linly files: q4_0 panels with a tokenizer.json, q8_0 tied with a SentencePiece model
        for name, quant, tie, tok_files in (("q4_0_bpe.linly", "q4_0", False, {"tokenizer.json": bpe_json,
                                                                                "tokenizer_config.json": bpe_cfg}),
                                            ("q8_0_tied_spm.linly", "q8_0", True, {"tokenizer.model": spm_bytes})):
            folder = tmp / (name + "-hf")
            tiny_model(tie=tie).save_pretrained(folder, safe_serialization=True)
            for f, blob in tok_files.items():
                (folder / f).write_bytes(blob)
            write_packed(load_checkpoint(folder), tmp / name, quant)
            put("packed", name, (tmp / name).read_bytes())
        # GGUF: f32 and q8_0 matrices, one with a SentencePiece vocabulary in tokenizer.*
        model = tiny_model()
        put("gguf", "f32.gguf", ck.write_gguf(model, tmp / "f32.gguf").read_bytes())
        put("gguf", "q8_0.gguf", ck.write_gguf(model, tmp / "q8.gguf", "Q8_0").read_bytes())
        fields = textdata.spm_gguf_fields(spm_file)
        w = gguf.GGUFWriter(str(tmp / "vocab.gguf"), "llama")
        w.add_block_count(1)
        w.add_embedding_length(32)
        w.add_head_count(2)
        w.add_feed_forward_length(64)
        w.add_tokenizer_model("llama")
        w.add_token_list(fields["tokenizer.ggml.tokens"])
        w.add_token_scores(fields["tokenizer.ggml.scores"])
        w.add_token_types(fields["tokenizer.ggml.token_type"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_chat_template(textdata.CHATML)
        w.add_tensor("token_embd.weight", torch.zeros(2, 32).numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        put("gguf", "vocab.gguf", (tmp / "vocab.gguf").read_bytes())
        # safetensors: f32 (transformers), and f16/bf16 with metadata written by hand
        model.save_pretrained(tmp / "hf", safe_serialization=True)
        put("safetensors", "f32.safetensors", (tmp / "hf" / "model.safetensors").read_bytes())
        from safetensors.torch import save_file

        save_file({"a": torch.arange(12, dtype=torch.float16).reshape(3, 4),
                   "b": torch.ones(5, dtype=torch.bfloat16), "c": torch.zeros(0, 4)},
                  str(tmp / "mixed.safetensors"), metadata={"format": "pt"})
        put("safetensors", "mixed.safetensors", (tmp / "mixed.safetensors").read_bytes())
        # PyTorch pickles: a TencentPretrain state dict, and a small mixed-dtype one
        put("torch_bin", "linly_model.bin", ck.write_tencentpretrain(model, tmp / "tp").read_bytes())
        torch.save({"x": torch.ones(2, 3, dtype=torch.bfloat16), "y": torch.arange(4, dtype=torch.float16),
                    "step": 3}, tmp / "small.bin")
        put("torch_bin", "small.bin", (tmp / "small.bin").read_bytes())
        # tokenizer files: first byte picks the kind (see harnesses.TOKENIZER_KINDS)
        put("tokenizer_files", "spm", b"\x00" + spm_bytes)
        put("tokenizer_files", "tokenizer_json", b"\x01" + bpe_json)
        put("tokenizer_files", "tokenizer_config", b"\x02" + bpe_cfg)
        put("tokenizer_files", "gguf_fields", b"\x03" + json.dumps(fields, ensure_ascii=False).encode())
        put("tokenizer_files", "generation_config", b"\x04" + b'{"eos_token_id": [2, 0], "bos_token_id": 1}')
    # text and ids for the fixed tokenizers; templates: sources and messages
    for i, text in enumerate(textdata.TEXTS):
        put("tokenizer_text", f"text{i}", bytes([i % 3]) + text.encode())
    from linly_engine.templates import BUILTIN

    for name, t in BUILTIN.items():
        put("templates", name, t.source.encode())
    put("templates", "alternate", (b"{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                                   b"{{ raise_exception('roles must alternate') }}{% endif %}"
                                   b"{{ m['content'] | tojson }}{% endfor %}{{ strftime_now('%Y') }}"))


if __name__ == "__main__":
    main()
