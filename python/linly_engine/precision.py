"""Which format each matrix gets when a model is quantised.

4-bit requests keep the token embedding and the LM head at q8_0: they are the most
sensitive matrices (the head decides every logit, and a tied embedding is the head), and
llama.cpp's 4-bit types keep its output matrix at 6-8 bits for the same reason. Measured
on SmolLM2-135M (held-out Chinese text, 256-token windows, training/README.md): f32
perplexity 15.11; every matrix in q4_0 25.08; q4_0 with the embedding/head at q8_0 22.76.
For the miniature Linly model: f32 11.40, all q4_0 16.91, this policy 15.46.
"""

from __future__ import annotations

FOUR_BIT = frozenset({"q4_0", "q4_1", "q4_g32", "q4_g64", "q4_g128"})
# Presets (mixes): the formats they give the sensitive matrices and the rest.
# mix4: 4-bit everywhere, in finer groups for the embedding/head, so that the whole
# model stays near 4.5 bits per weight (SmolLM2: 4.56; the q8_0 head of plain q4_g128
# costs 5.3). Meant for `linly convert --calib`, which rounds the head with GPTQ too.
PRESETS = {"mix4": {"sensitive": "q4_g32", "other": "q4_g128"}}
SENSITIVE = ("model.embed_tokens.weight", "lm_head.weight")


def target_format(name: str, quant: str | None, source_fmt: str, k: int | None = None) -> str:
    """The format of matrix ``name`` (``k`` input features) for a requested ``quant``
    (None: keep the source's)."""
    if quant is None:
        return source_fmt
    if quant in PRESETS:
        return fit_group(PRESETS[quant]["sensitive" if name in SENSITIVE else "other"], k)
    if quant in FOUR_BIT and name in SENSITIVE:
        return "q8_0"
    return fit_group(quant, k)


def fit_group(fmt: str, k: int | None) -> str:
    """A group-wise format whose group divides ``k``: the requested group, else the next
    smaller one (SmolLM2's 576 = 4.5 × 128 takes groups of 64), rather than no 4-bit at all."""
    if k is None or not fmt.startswith("q4_g"):
        return fmt
    group = int(fmt[4:])
    while group > 32 and k % group:
        group //= 2
    return f"q4_g{group}"
