"""Chat templates render exactly what transformers' apply_chat_template renders."""

from __future__ import annotations

import functools

import pytest

from linly_engine.templates import BUILTIN, ChatTemplate, builtin_template, choose_template
from textdata import train_bpe_json

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "你好！"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
     {"role": "assistant", "content": "2"}, {"role": "user", "content": "再加 3 呢？"}],
    [{"role": "user", "content": "  spaces\n\nand lines  "}, {"role": "assistant", "content": "好的 👍"}],
]

# A template in the style of the larger hub models: namespace, loop controls, tojson,
# raise_exception, whitespace control.
FANCY = """{%- set ns = namespace(sys='') -%}
{%- for m in messages -%}
  {%- if m['role'] == 'system' -%}{%- set ns.sys = m['content'] -%}{%- continue -%}{%- endif -%}
  {%- if m['role'] not in ['user', 'assistant'] -%}{{ raise_exception('bad role') }}{%- endif -%}
  {{ '<|' + m['role'] + '|>' }}{% if loop.first and ns.sys %}{{ ns.sys | tojson }} {% endif %}{{ m['content'] | trim }}
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    tok = transformers.AutoTokenizer.from_pretrained(str(train_bpe_json(tmp_path_factory.mktemp("bpe"))))
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    return tok


@functools.cache
def smollm_template():
    from linly_engine.default_model import find_default_gguf
    from linly_engine.formats import gguf

    path = find_default_gguf()
    if path is None:
        pytest.skip("the default model is not installed")
    return gguf.tokenizer_fields(gguf._reader(path))["tokenizer.chat_template"]


@pytest.mark.parametrize("name", list(BUILTIN) + ["fancy", "smollm2"])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_renders_as_transformers(hf_tokenizer, name, conv, gen):
    source = FANCY if name == "fancy" else smollm_template() if name == "smollm2" else BUILTIN[name].source
    messages = CONVERSATIONS[conv]
    want = hf_tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False, add_generation_prompt=gen)
    got = ChatTemplate(name, source).render(messages, add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
    assert got == want


def test_builtin_formats_are_the_documented_ones():
    conv = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "讲个笑话"}]
    assert builtin_template("linly").render(conv) == "User: 你好\nBot: 你好！\nUser: 讲个笑话\nBot: "
    assert builtin_template("chinese-llama-2").render(conv[:1]) == "### Instruction:你好  ### Response:"
    assert builtin_template("llama-2").render([{"role": "system", "content": "S"}] + conv, bos_token="<s>",
                                              eos_token="</s>") == \
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n你好 [/INST] 你好！ </s><s>[INST] 讲个笑话 [/INST]"
    assert builtin_template("chatml").render(conv[:1]) == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"


def test_choice_and_errors():
    assert choose_template(None, "{{ 'x' }}").name == "model"
    assert choose_template("auto", None).name == "linly-chatflow"
    assert choose_template("chatml", "{{ 'x' }}").name == "chatml"
    with pytest.raises(ValueError, match="unknown chat template 'nope'.*chatml"):
        builtin_template("nope")
    with pytest.raises(ValueError, match="does not parse"):
        ChatTemplate("bad", "{% for %}").render([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="role 'robot'"):
        builtin_template("chatml").render([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        builtin_template("chatml").render([])
