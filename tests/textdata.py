"""Tokenizers made in the tests from the text the project ships (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "zh_en_corpus.txt"

# Chinese, English, mixed, emoji, whitespace-heavy; a rare character (龘) that a small
# vocabulary only has as UTF-8 bytes, so streaming must hold its first bytes back.
TEXTS = [
    "床前明月光，疑是地上霜。",
    "The quick brown fox jumps over the lazy dog.",
    "我们使用 Python 和 C++ 编写了一个推理引擎，支持 AVX2。",
    "表情符号 😀👍🏽🎉 and emoji at the end 🙂",
    "  leading spaces,   runs   of spaces,\ttabs\t\tand\n\nnew lines\n  ",
    "罕见字：龘、𠀀、齉。数字 3.14159 和 2024 年。",
    "繁體中文：我們今天去看電影。",
]

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def train_spm(folder: Path, vocab_size: int = 900, corpus: Path = CORPUS) -> Path:
    """A LLaMA-style SentencePiece model: BPE, byte fallback, digits split, no whitespace
    normalisation, <unk>=0 <s>=1 </s>=2."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, character_coverage=0.98, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    (folder / "tokenizer.vocab").unlink()
    return folder / "tokenizer.model"


def spm_gguf_fields(model_file: Path) -> dict:
    """The tokenizer.* fields llama.cpp's converter writes for a SentencePiece model."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.get_piece_size()
    types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)], "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}


def train_bpe_json(folder: Path, vocab_size: int = 1000, chat_template: str = CHATML) -> Path:
    """A byte-level BPE tokenizer.json (GPT-2/Qwen style) with ChatML special tokens, and
    its tokenizer_config.json; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(CORPUS)], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": chat_template}))
    return folder
