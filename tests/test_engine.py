"""Engine: the generation loop, prompt caching, stopping, context limits, history
fitting, and the packed file carrying its tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

import linly_engine as le
from linly_engine.engine import ContextOverflowError, Engine

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def engine(chat_model_folder):
    return Engine.load(chat_model_folder, template="linly", kv_cache="f32", max_context=256)


def fresh(chat_model_folder, **kw):
    return Engine.load(chat_model_folder, template="linly", kv_cache="f32", max_context=kw.pop("max_context", 256), **kw)


def test_greedy_generation_is_the_argmax_loop(engine, chat_model_folder):
    prompt = engine.tokenize("床前明月光")
    text = "".join(engine.generate_ids(prompt, engine.params(max_new_tokens=12, ignore_eos=True, **GREEDY)))
    assert engine.last_stats.generated_tokens == 12 and engine.last_stats.finish_reason == "length"
    m = le.Model.load(chat_model_folder, kv_cache="f32", max_context=256)
    ids, logits = [], m.prefill(prompt)
    for _ in range(12):
        ids.append(int(np.argmax(logits)))
        logits = m.decode(ids[-1])
    assert text == engine.detokenize(prompt + ids)[len(engine.detokenize(prompt)):]


def test_chat_turn_reuses_the_cache_and_matches_a_fresh_engine(engine, chat_model_folder):
    engine.reset()
    turn1 = [{"role": "user", "content": "你好，请介绍一下深圳。"}]
    a1 = engine.chat(turn1, max_new_tokens=10, **GREEDY)
    assert engine.last_stats.cached_tokens == 0
    turn2 = turn1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": "Translate it into English."}]
    a2 = engine.chat(turn2, max_new_tokens=10, **GREEDY)
    stats = engine.last_stats
    assert stats.cached_tokens >= len(engine.chat_prompt(turn1)) - 1  # the first turn's prompt is not recomputed
    assert a2 == fresh(chat_model_folder).chat(turn2, max_new_tokens=10, **GREEDY)


def test_an_abandoned_stream_leaves_the_engine_consistent(engine, chat_model_folder):
    engine.reset()
    stream = engine.stream("The weather is lovely today", max_new_tokens=40, ignore_eos=True, **GREEDY)
    for _, _piece in zip(range(3), stream):
        pass
    stream.close()
    assert engine.last_stats.finish_reason == "interrupted"
    again = engine.generate("The weather is", max_new_tokens=8, ignore_eos=True, **GREEDY)
    assert engine.last_stats.cached_tokens > 0
    assert again == fresh(chat_model_folder).generate("The weather is", max_new_tokens=8, ignore_eos=True, **GREEDY)


def test_stop_strings_and_stop_ids(engine):
    engine.reset()
    full = engine.generate("春天来了", max_new_tokens=30, ignore_eos=True, **GREEDY)
    assert len(full) > 6
    cut = full[3:5]
    stopped = engine.generate("春天来了", max_new_tokens=30, ignore_eos=True, stop=[cut], **GREEDY)
    assert stopped == full[:full.index(cut)] and engine.last_stats.finish_reason == "stop"
    engine.generate("春天来了", max_new_tokens=30, ignore_eos=True, **GREEDY)
    generated = engine.cached_ids[engine.last_stats.prompt_tokens:]
    engine.generate("春天来了", max_new_tokens=30, stop_token_ids=[generated[2]], ignore_eos=True, **GREEDY)
    assert engine.last_stats.finish_reason == "stop" and engine.last_stats.generated_tokens == generated.index(generated[2])


def test_seeded_sampling_reproduces(engine):
    a = engine.generate("今天", max_new_tokens=20, temperature=1.0, seed=11, ignore_eos=True)
    b = engine.generate("今天", max_new_tokens=20, temperature=1.0, seed=11, ignore_eos=True)
    c = engine.generate("今天", max_new_tokens=20, temperature=1.0, seed=12, ignore_eos=True)
    assert a == b and a != c


def test_prompt_longer_than_the_context_is_refused(chat_model_folder):
    eng = fresh(chat_model_folder, max_context=32)
    with pytest.raises(ContextOverflowError, match=r"the prompt is \d+ tokens but the context holds 32"):
        eng.generate("今天天气很好，我们一起去公园散步吧。" * 10)
    out = eng.generate("今天", max_new_tokens=100, ignore_eos=True, **GREEDY)  # fills the context, then stops
    assert eng.last_stats.finish_reason == "length" and out
    assert eng.last_stats.prompt_tokens + eng.last_stats.generated_tokens == 33  # the last token is not run


def test_history_drops_oldest_turns_to_fit(chat_model_folder):
    eng = fresh(chat_model_folder, max_context=96)
    sys_msg = {"role": "system", "content": "简短回答。"}
    turns = []
    for i in range(8):
        turns += [{"role": "user", "content": f"第{i}个问题：天空为什么是蓝色的？"},
                  {"role": "assistant", "content": "因为瑞利散射。"}]
    turns.append({"role": "user", "content": "最后一个问题"})
    ids = eng.chat_prompt([sys_msg] + turns, max_new_tokens=16)
    assert len(ids) <= 96 - 16
    text = eng.detokenize(ids)
    assert text.startswith("简短回答。") and text.endswith("User: 最后一个问题\nBot: ")
    assert "第0个问题" not in text and "第7个问题" in text
    with pytest.raises(ContextOverflowError, match="context holds 96"):
        eng.chat_prompt([sys_msg, {"role": "user", "content": "很长的问题。" * 40}], max_new_tokens=16)


def test_packed_file_carries_the_tokenizer(chat_model_folder, tmp_path):
    from linly_engine.formats.packed import write_packed
    from linly_engine.model import load_checkpoint

    out = tmp_path / "m.linly"
    write_packed(load_checkpoint(chat_model_folder), out, None)
    a = fresh(chat_model_folder)
    b = Engine.load(out, template="linly", kv_cache="f32", max_context=256)
    assert b.tokenizer.kind == "sentencepiece"
    text = "混合文本：我们使用 Python 编写。"
    assert b.tokenize(text) == a.tokenize(text)
    assert b.generate(text, max_new_tokens=10, ignore_eos=True, **GREEDY) == \
        a.generate(text, max_new_tokens=10, ignore_eos=True, **GREEDY)


def test_tencentpretrain_bin_finds_its_tokenizer(chat_model_folder, tmp_path):
    """A Linly .bin with tokenizer.model beside it loads as an Engine."""
    import shutil

    import transformers
    from checkpoints import write_tencentpretrain

    model = transformers.LlamaForCausalLM.from_pretrained(chat_model_folder)
    path = write_tencentpretrain(model, tmp_path)
    shutil.copy(chat_model_folder / "tokenizer.model", path.parent / "tokenizer.model")
    eng = Engine.load(path, template="linly", kv_cache="f32", max_context=256)
    ref = fresh(chat_model_folder)
    assert eng.generate("北京", max_new_tokens=6, ignore_eos=True, **GREEDY) == \
        ref.generate("北京", max_new_tokens=6, ignore_eos=True, **GREEDY)


def test_bad_requests(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate_ids([], engine.params())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate_ids([1, 5000], engine.params())
    with pytest.raises(TypeError, match="unknown sampling option"):
        engine.generate("x", top_q=1)


def test_default_model_answers_paris(default_home):
    eng = Engine.load()
    answer = eng.chat([{"role": "user", "content": "What is the capital of France?"}], **GREEDY)
    assert "Paris" in answer
    assert eng.last_stats.finish_reason == "stop"
