"""The real model: SmolLM2-135M-Instruct from its Q4_1 GGUF, against transformers loading
the same file (dequantised to f32)."""

from __future__ import annotations

import numpy as np
import pytest

from linly_engine.default_model import FETCH_COMMAND, find_default_gguf

GGUF = find_default_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason=f"default model not installed ({FETCH_COMMAND})")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to read GGUF

import linly_engine as le  # noqa: E402
from linly_engine.engine import common_prefix, load_model_and_tokenizer  # noqa: E402

# "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
# Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n
# <|im_start|>assistant\n": the chat-templated prompt, as ids (the tokenizer arrives with
# its own issue).
SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
          19712, 8182, 2, 198]
CHAT_PROMPT = SYSTEM + [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module")
def reference():
    model = transformers.AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="module")
def engine():
    return le.Model.load(GGUF, max_context=512)


def test_loads_as_published(engine):
    info = engine.info()
    assert (info["num_hidden_layers"], info["hidden_size"], info["num_attention_heads"],
            info["num_key_value_heads"], info["vocab_size"]) == (30, 576, 9, 3, 49152)
    assert info["matrix_formats"] == {"q4_1": 210, "q8_0": 1}  # used as stored, the head tied


def test_f32_weights_reproduce_transformers_exactly(reference):
    m = le.Model.load(GGUF, max_context=64, quant="f32", kv_cache="f32")  # nothing rounded: a pure model check
    with torch.no_grad():
        want = reference(torch.tensor([CHAT_PROMPT])).logits[0].numpy()
    got = m.prefill(CHAT_PROMPT, all_logits=True)
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()


# llama.cpp 0.3.36 on this machine, same file, same 37 prompt ids (int8 activations):
# mean |Δlogit| 0.21, argmax agreement 94.6 % (shared/reference/offline-resources.md).
LLAMA_CPP_MEAN_ABS_DIFF = 0.21


def test_quantised_logits_closer_to_transformers_than_llama_cpp(engine, reference):
    with torch.no_grad():
        want = reference(torch.tensor([CHAT_PROMPT])).logits[0].numpy()
    engine.reset()
    got = engine.prefill(CHAT_PROMPT, all_logits=True)
    assert engine.activations == "int8x2"  # the default
    assert np.abs(got - want).mean() < LLAMA_CPP_MEAN_ABS_DIFF / 10
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_fast_activations_are_llama_cpp_grade():
    fast = le.Model.load(GGUF, max_context=64, activations="int8")
    ref = le.Model.load(GGUF, max_context=64, quant="f32", kv_cache="f32")  # exact to transformers
    want = ref.prefill(CHAT_PROMPT, all_logits=True)
    got = fast.prefill(CHAT_PROMPT, all_logits=True)
    assert np.abs(got - want).mean() < 0.35  # measured 0.27: same ballpark as llama.cpp's 0.21


def greedy(step, first_logits, n):
    out, logits = [], first_logits
    for _ in range(n):
        t = int(np.argmax(logits))
        out.append(t)
        if t == 2:  # <|im_end|>
            break
        logits = step(t)
    return out


JAPAN_PROMPT = SYSTEM + [1, 4093, 198, 1780, 314, 260, 3575, 282, 3085, 47, 2, 198, 1, 520, 9531, 198]


@pytest.mark.parametrize("prompt,min_margin", [
    # "What is the capital of Japan?": no near-tie anywhere (smallest top-2 margin 0.97).
    (JAPAN_PROMPT, 0.5),
    # "What is the capital of France?": the first answer token is nearly tied in the
    # reference ("The" 25.33 vs "L" 25.24); int8-only engines such as llama.cpp flip it
    # and answer in French. The engine's largest logit error here is 0.011 (measured).
    (CHAT_PROMPT, 0.05),
], ids=["japan", "france"])
def test_greedy_text_equals_transformers(engine, reference, prompt, min_margin):
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
    ref_ids = out.sequences[0, len(prompt):].tolist()
    for scores in out.scores:
        top2 = torch.topk(scores[0], 2).values
        assert top2[0] - top2[1] > min_margin, "the reference's margin is smaller than the test assumes"
    engine.reset()
    ours = greedy(engine.decode, engine.prefill(prompt), 12)
    assert ours == ref_ids
    if prompt is CHAT_PROMPT:
        assert ours[:7] == [504, 3575, 282, 4649, 314, 7042, 30]  # "The capital of France is Paris."


Q8_QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea.",
                "Explain how a CPU cache works.", "Give me three tips for learning Python.",
                "What causes rain?", "How do vaccines work?", "What is 17 times 23?",
                "Describe a healthy breakfast."]


def test_q8_0_agrees_with_f32_on_the_real_model():
    """Top-1 agreement of q8_0 (re-quantised from the file) against the engine's own f32,
    teacher-forced over greedy continuations of eight chat prompts; a position (a prefix)
    shared by several prompts, like the system prompt, counts once. Measured on Zen 4
    (AVX-512) with the amax/k scale search: 756/763 (99.1 %) here; 99.0 % over 1356
    positions of ten prompts with 120-token continuations; on one 350-token continuation
    (387 positions) 99.5 %, where llama.cpp's amax/127 scale gave 97.7 %. The
    disagreements are near-ties (the f32 logits of the two tokens differ by 0.001 to
    0.07); the bound leaves room for a few to fall the other way under another ISA's
    summation order."""
    eng = le.Engine(*load_model_and_tokenizer(GGUF, max_context=256, quant="f32"))
    f32 = eng.model
    q8 = le.Model.load(GGUF, max_context=256, quant="q8_0")
    scored: list[list[int]] = []
    agree = total = 0
    for question in Q8_QUESTIONS:
        ids = eng.chat_prompt([{"role": "user", "content": question}])
        f32.reset()
        logits = f32.prefill(ids)
        for _ in range(80):  # a continuation to score on
            ids.append(int(np.argmax(logits)))
            logits = f32.decode(ids[-1])
        f32.reset()
        q8.reset()
        a = f32.prefill(ids, all_logits=True).argmax(-1)
        b = q8.prefill(ids, all_logits=True).argmax(-1)
        new = max((common_prefix(ids, earlier) for earlier in scored), default=0)  # positions scored already
        total += len(ids) - new
        agree += int((a[new:] == b[new:]).sum())
        scored.append(ids)
    assert total > 700
    assert agree / total >= 0.985, f"{agree}/{total}"
