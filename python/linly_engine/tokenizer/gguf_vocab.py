"""The vocabulary embedded in a GGUF file (``tokenizer.ggml.*``), rebuilt as a
``tokenizers`` object so it runs through the same code as a tokenizer.json.

Two models occur in LLaMA-family GGUF files:
- ``llama``: SentencePiece BPE with byte fallback. SentencePiece merges the adjacent
  pair whose merged piece has the highest score; as a BPE merge list that is every
  (left, right) split of every piece, ranked by the merged piece's score.
- ``gpt2``: byte-level BPE with an explicit merge list; the pre-tokenizer that splits
  text before BPE is named by ``tokenizer.ggml.pre`` and must be known here.
"""

from __future__ import annotations

from typing import Any

from linly_engine.tokenizer.base import TokenizerError
from linly_engine.tokenizer.hf_json import HFTokenizer

# token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer split patterns of the byte-level BPE vocabularies, by tokenizer.ggml.pre.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_pre(pre: str):
    from tokenizers import Regex, pre_tokenizers

    if pre in ("gpt2", "default", "gpt-2", "olmo", "starcoder", "refact"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # SmolLM: every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in ("llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe"):
        split = LLAMA3_SPLIT
    elif pre in ("qwen2", "deepseek-r1-qwen"):
        split = QWEN2_SPLIT
    else:
        raise TokenizerError(f"the GGUF vocabulary uses pre-tokenizer '{pre}', which this engine does not know; "
                             "convert from the Hugging Face folder (it carries tokenizer.json) instead")
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _merges_from_scores(tokens: list[str], scores: list[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    ranked = []
    for piece, score in zip(tokens, scores):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _check_list(fields: dict[str, Any], key: str, kind) -> None:
    """Every element of a list field has the type the vocabulary needs, and strings are
    valid UTF-8 (a packed file carries these fields as JSON, which can hold anything,
    lone surrogates included: fuzzing found both)."""
    for i, v in enumerate(fields[key]):
        if not isinstance(v, kind) or isinstance(v, bool):
            raise TokenizerError(f"GGUF {key}[{i}] is {v!r:.40}, not a {getattr(kind, '__name__', 'number')}; "
                                 "the vocabulary is corrupt")
        if kind is str:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise TokenizerError(f"GGUF {key}[{i}] is not valid UTF-8 text; the vocabulary is corrupt") from None


def tokenizer_from_gguf_fields(fields: dict[str, Any]) -> HFTokenizer:
    """An HFTokenizer from a GGUF file's ``tokenizer.*`` fields."""
    from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, normalizers

    model = fields.get("tokenizer.ggml.model")
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError("the GGUF file has no vocabulary (tokenizer.ggml.tokens)")
    n = len(tokens)
    _check_list(fields, "tokenizer.ggml.tokens", str)
    types = list(fields.get("tokenizer.ggml.token_type") or [NORMAL] * n)
    if len(types) != n:
        raise TokenizerError(f"GGUF tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    _check_list({"types": types}, "types", int)
    vocab = {t: i for i, t in enumerate(tokens)}

    if model == "llama":
        scores = list(fields.get("tokenizer.ggml.scores") or [])
        if len(scores) != n:
            raise TokenizerError(f"GGUF tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        _check_list({"tokenizer.ggml.scores": scores}, "tokenizer.ggml.scores", (int, float))
        unk_id = fields.get("tokenizer.ggml.unknown_token_id", 0)
        if type(unk_id) is not int:
            raise TokenizerError(f"GGUF tokenizer.ggml.unknown_token_id must be an integer, got {unk_id!r:.40}")
        mergeable = [t if ty in (NORMAL, UNUSED) else "" for t, ty in zip(tokens, types)]
        backend = Backend(models.BPE(vocab, _merges_from_scores(mergeable, scores, vocab),
                                     unk_token=tokens[unk_id] if 0 <= unk_id < n else None,
                                     fuse_unk=True, byte_fallback=True, dropout=None))
        steps = [normalizers.Replace(" ", "▁")]
        if fields.get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("▁"))
        backend.normalizer = normalizers.Sequence(steps)
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                            + ([decoders.Strip(" ", 1, 0)]
                                               if fields.get("tokenizer.ggml.add_space_prefix", True) else []))
        default_bos = True
    elif model == "gpt2":
        merges = fields.get("tokenizer.ggml.merges")
        if not isinstance(merges, list):
            raise TokenizerError("the GGUF byte-level BPE vocabulary has no merges (tokenizer.ggml.merges)")
        _check_list(fields, "tokenizer.ggml.merges", str)
        pairs = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise TokenizerError(f"GGUF merge {m!r} is not 'left right'")
            pairs.append((left, right))
        backend = Backend(models.BPE(vocab, pairs, dropout=None, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _byte_level_pre(fields.get("tokenizer.ggml.pre", "default"))
        backend.decoder = decoders.ByteLevel()
        default_bos = False
    else:
        raise TokenizerError(f"GGUF tokenizer model '{model}' is not supported (the engine reads 'llama' "
                             "SentencePiece and 'gpt2' byte-level BPE vocabularies)")

    # Control and user-defined tokens are matched as whole strings in the text.
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, ty in enumerate(types) if ty == CONTROL])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, ty in enumerate(types) if ty == USER_DEFINED])

    def tok(key: str) -> str | None:
        i = fields.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < n else None

    add_bos = fields.get("tokenizer.ggml.add_bos_token", default_bos)
    return HFTokenizer(backend, {}, bos_token=tok("tokenizer.ggml.bos_token_id"),
                       eos_token=tok("tokenizer.ggml.eos_token_id"), add_bos=bool(add_bos),
                       chat_template=fields.get("tokenizer.chat_template"))
