"""The native decoder against transformers' LlamaForCausalLM / Qwen2ForCausalLM on small
random models made here: a multi-token prompt, then 16 decode steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import linly_engine as le  # noqa: E402

DECODE_STEPS = 16


def make_model(tmp_path, arch="llama", **overrides):
    torch.manual_seed(0)
    base = dict(vocab_size=251, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-5, tie_word_embeddings=False,
                initializer_range=0.15)  # large enough that attention is far from uniform
    base.update(overrides)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**base)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**base)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # random init leaves biases and norms trivial; make them count
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("norm.weight") else 0.0))
    model.eval()
    path = tmp_path / arch
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def reference_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def run_engine(m: le.Model, prompt: list[int], cont: list[int]) -> np.ndarray:
    """Logits for every position: prompt in one prefill, then one decode per token."""
    m.reset()
    rows = [m.prefill(prompt, all_logits=True)]
    rows += [m.decode(t)[None] for t in cont]
    return np.concatenate(rows)


def assert_close(got: np.ndarray, want: np.ndarray, rel: float) -> None:
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= rel * scale, f"max |Δlogit| {err:.3g} > {rel:g} · {scale:.3g}"


CASES = {
    "gqa_untied": dict(),
    "tied": dict(tie_word_embeddings=True),
    "mha": dict(num_key_value_heads=4),
    "linear_rope": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama3_rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                        rope_theta=500000.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_llama_f32_matches_transformers(tmp_path, case):
    model, path = make_model(tmp_path, **CASES[case])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 251, 7 + DECODE_STEPS).tolist()
    want = reference_logits(model, ids)
    m = le.Model.load(path, quant="f32", kv_cache="f32")
    assert_close(run_engine(m, ids[:7], ids[7:]), want, 1e-4)


def test_qwen2_f32_matches_transformers(tmp_path):
    model, path = make_model(tmp_path, "qwen2", tie_word_embeddings=True)
    ids = np.random.default_rng(2).integers(0, 251, 9 + DECODE_STEPS).tolist()
    want = reference_logits(model, ids)
    m = le.Model.load(path, quant="f32", kv_cache="f32")
    assert m.config["qkv_bias"]
    assert_close(run_engine(m, ids[:9], ids[9:]), want, 1e-4)


def test_f16_weights_and_cache(tmp_path):
    model, path = make_model(tmp_path)
    ids = np.random.default_rng(3).integers(0, 251, 7 + DECODE_STEPS).tolist()
    want = reference_logits(model, ids)
    m = le.Model.load(path, quant="f16", kv_cache="f16")
    assert_close(run_engine(m, ids[:7], ids[7:]), want, 1e-2)


def test_prefill_in_pieces_equals_prefill_at_once(tmp_path):
    _, path = make_model(tmp_path)
    m = le.Model.load(path, quant="f32", kv_cache="f32")
    ids = list(range(3, 40))
    whole = m.prefill(ids, all_logits=True)
    m.reset()
    parts = np.concatenate([m.prefill(ids[:10], all_logits=True), m.prefill(ids[10:], all_logits=True)])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    m.truncate(10)  # prompt caching: keep a prefix, recompute the rest
    np.testing.assert_allclose(m.prefill(ids[10:]), whole[-1], rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_prefill_without_all_logits_skips_only_what_the_head_does_not_read(tmp_path):
    """Without all_logits the last layer runs past its cache write on each segment's last
    row alone: that row's logits and the cache (every row's K and V) must be untouched."""
    model, path = make_model(tmp_path)
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 251, 40).tolist(), rng.integers(0, 251, 9).tolist()  # a prompt-sized, b not
    want_a, want_b = reference_logits(model, a + [7, 8]), reference_logits(model, b + [9])
    m = le.Model.load(path, quant="f32", kv_cache="f32", max_context=64)
    got = [m.prefill(a), m.decode(7), m.decode(8)]
    assert_close(np.stack(got), want_a[-3:], 1e-4)
    mb = le.Model.load(path, quant="f32", kv_cache="f32", max_context=64, slots=2)
    first = mb.forward_batch([(1, a), (0, b)])  # two segments trimmed to their last rows
    assert_close(first[0], want_a[39], 1e-4)
    assert_close(first[1], want_b[8], 1e-4)
    step = mb.forward_batch([(1, [7]), (0, [9])])
    assert_close(step[0], want_a[40], 1e-4)
    assert_close(step[1], want_b[9], 1e-4)


def test_context_overflow_and_bad_ids(tmp_path):
    _, path = make_model(tmp_path)
    m = le.Model.load(path, quant="f32", kv_cache="f32", max_context=16)
    with pytest.raises(ValueError, match=r"20 tokens at position 0 exceed the context of 16 tokens"):
        m.prefill(list(range(20)))
    with pytest.raises(ValueError, match=r"token id 251 at index 1 is outside the vocabulary \[0, 251\)"):
        m.prefill([1, 251])
    m.prefill(list(range(16)))
    with pytest.raises(ValueError, match="exceed the context"):
        m.decode(5)
    m.reset()
    assert m.position == 0 and m.decode(5).shape == (251,)
