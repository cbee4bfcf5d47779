"""Chat templates: the model's own Jinja template, or a built-in one by name.

Rendering follows transformers' ``apply_chat_template`` (a sandboxed Jinja environment
with trim_blocks and lstrip_blocks, ``raise_exception``, ``strftime_now``, a ``tojson``
that keeps non-ASCII text), so a template renders here exactly as it does there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

# Linly-ChatFlow, as Linly's dialogue script builds it: "User: …\nBot: …\n" per turn.
LINLY_CHATFLOW = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\\n' }}"
    "{% else %}{{ 'Bot: ' + m['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Bot: ' }}{% endif %}"
)
# Chinese-LLaMA-2 (Linly's HF card): "### Instruction:{prompt}  ### Response:".
CHINESE_LLAMA_2 = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}{{ '### Instruction:' + m['content'] + '  ### Response:' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
# Meta's LLaMA-2 chat format: the system prompt folded into the first user turn.
LLAMA_2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + (system if loop.first else '') + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
RAW = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the stop strings that end an answer in its format."""

    name: str
    source: str
    stop: tuple[str, ...] = field(default_factory=tuple)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               bos_token: str | None = "", eos_token: str | None = "", **extra: Any) -> str:
        """The prompt text for ``messages``."""
        from jinja2.exceptions import TemplateError

        check_messages(messages)
        try:
            return _compile(self.source).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token or "", eos_token=eos_token or "", **extra)
        except (TemplateError, TypeError, ArithmeticError, LookupError, AttributeError) as e:
            # The template's own raise_exception, an undefined name, a sandbox refusal or a
            # type error inside it: the caller (the service: 400) needs a ValueError.
            raise ValueError(f"the chat template '{self.name}' failed: {type(e).__name__}: {e}") from None


BUILTIN: dict[str, ChatTemplate] = {
    "linly-chatflow": ChatTemplate("linly-chatflow", LINLY_CHATFLOW, ("User:",)),
    "chinese-llama-2": ChatTemplate("chinese-llama-2", CHINESE_LLAMA_2, ("### Instruction:",)),
    "llama-2": ChatTemplate("llama-2", LLAMA_2, ("[INST]",)),
    "chatml": ChatTemplate("chatml", CHATML, ("<|im_end|>",)),
    "raw": ChatTemplate("raw", RAW),
}
ALIASES = {"linly": "linly-chatflow", "chatflow": "linly-chatflow", "alpaca": "chinese-llama-2", "llama2": "llama-2"}


def builtin_template(name: str) -> ChatTemplate:
    key = ALIASES.get(name, name)
    if key not in BUILTIN:
        raise ValueError(f"unknown chat template '{name}'; built in: {', '.join(BUILTIN)} "
                         "(or 'auto' for the model's own)")
    return BUILTIN[key]


def choose_template(name: str | None, model_template: str | None, default: str = "linly-chatflow") -> ChatTemplate:
    """``name`` None or "auto": the model's own template when it has one, else ``default``."""
    if name in (None, "auto"):
        if model_template:
            return ChatTemplate("model", model_template)
        return builtin_template(default)
    return builtin_template(name)


def check_messages(messages: Sequence[Message]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': str, 'content': str}}, got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has role '{m['role']}'; use system, user or assistant")


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except Exception as e:  # jinja2.TemplateSyntaxError
        raise ValueError(f"the chat template does not parse: {e}") from None
