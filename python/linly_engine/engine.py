"""``Engine``: text in, text out. A model, its tokenizer and chat template, and the loop
that turns a prompt into streamed text: prefill → (sample → detokenise → stop? → decode_one_token)*.

The KV cache is kept between calls: a new prompt re-uses the longest prefix it shares
with what is cached, so a chat turn only prefills the tokens added since the last one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from linly_engine.generation import TokenStream
from linly_engine.model import Model, load_checkpoint
from linly_engine.sampling import SamplingParams
from linly_engine.templates import ChatTemplate, Message, check_messages, choose_template
from linly_engine.tokenizer import Tokenizer, load_tokenizer


class ContextOverflowError(ValueError):
    """The prompt does not fit the context window."""


@dataclass
class GenerationStats:
    """What the last generation did and how fast."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was re-used, not recomputed
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop" (EOS, stop token or stop string) | "length" | "interrupted"

    @property
    def prefill_tokens_per_s(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"prompt {self.prompt_tokens} tok ({self.cached_tokens} cached), "
                f"{self.prefill_tokens_per_s:.1f} tok/s | answer {self.generated_tokens} tok, "
                f"{self.decode_tokens_per_s:.1f} tok/s")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids two sequences share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def load_model_and_tokenizer(path: str | os.PathLike | None = None, *, threads: int | None = None,
                             quant: str | None = None, max_context: int | None = None, kv_cache: str = "f16",
                             activations: str = "int8x2", slots: int = 1, log=None,
                             device: str = "cpu") -> tuple[Model, Tokenizer]:
    """The model (None: the default model, converted once into the cache folder) and the
    tokenizer it carries."""
    if path is None:
        from linly_engine.default_model import ensure_default_model

        path = ensure_default_model(log)
    from linly_engine import _C
    from linly_engine.formats.packed import carried_files

    if threads is not None:
        _C.set_num_threads(threads)
    if device == "cuda":
        from linly_engine import cuda

        cuda.require()  # before reading the weights
    ck = load_checkpoint(path)
    tok = load_tokenizer(carried_files(ck), ck.metadata.get("gguf_tokenizer_fields"))
    model = Model(ck, quant=quant, max_context=max_context, kv_cache=kv_cache, activations=activations, slots=slots,
                  device=device)
    if tok.vocab_size > model.config["vocab_size"]:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's embedding only "
                         f"{model.config['vocab_size']} rows; they do not belong together")
    return model, tok


def render_chat(template: ChatTemplate, tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a conversation rendered with ``template``, ready for the answer.
    The rendered text carries its own special tokens, so none are added."""
    text = template.render(messages, add_generation_prompt=True, bos_token=tokenizer.bos_token,
                           eos_token=tokenizer.eos_token)
    return tokenizer.encode(text, add_special=False)


class Engine:
    """Generate and chat with a model.

    >>> eng = Engine.load()                       # the default model (SmolLM2-135M-Instruct)
    >>> eng.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0)
    'The capital of France is Paris.'
    """

    def __init__(self, model: Model, tokenizer: Tokenizer, template: ChatTemplate | None = None,
                 defaults: SamplingParams | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or choose_template(None, tokenizer.chat_template)
        self.defaults = defaults or SamplingParams()
        self.last_stats = GenerationStats()
        self._cached: list[int] = []  # the ids whose keys and values are in the model's cache

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, template: str | None = None, threads: int | None = None,
             quant: str | None = None, max_context: int | None = None, kv_cache: str = "f16",
             activations: str = "int8x2", log=None, device: str = "cpu") -> "Engine":
        """Loads a model file or folder (any format ``Model.load`` reads); None loads the
        default model, converting it once into the cache folder. ``template``: a built-in
        chat template's name, or None/"auto" for the model's own (Linly-ChatFlow's when the
        model has none). ``device``: ``cpu`` or ``cuda`` (the GPU decoder)."""
        model, tok = load_model_and_tokenizer(path, threads=threads, quant=quant, max_context=max_context,
                                              kv_cache=kv_cache, activations=activations, log=log, device=device)
        return cls(model, tok, choose_template(template, tok.chat_template))

    # ---- text and ids -------------------------------------------------------------
    @property
    def max_context(self) -> int:
        return self.model.max_context

    @property
    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values are in the cache (prompt and answer so far)."""
        return list(self._cached[:self.model.position])

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def params(self, **sampling: Any) -> SamplingParams:
        """The engine's default sampling options with ``sampling`` applied."""
        return self.defaults.updated(**sampling)

    def chat_prompt(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> list[int]:
        """Token ids of the rendered conversation, dropping the oldest turns (never the
        system message or the last user message) until it fits the context with room
        for ``max_new_tokens`` (at most half the context is reserved)."""
        check_messages(messages)
        messages = list(messages)
        reserve = min(max_new_tokens if max_new_tokens is not None else self.defaults.max_new_tokens,
                      self.max_context // 2)
        budget = self.max_context - max(reserve, 1)
        head = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(head):]
        while True:
            ids = self._render(head + turns)
            if len(ids) <= budget:
                return ids
            # drop the oldest turn: everything before the second user message
            starts = [i for i, m in enumerate(turns) if m["role"] == "user"]
            if len(starts) < 2:
                raise ContextOverflowError(
                    f"the message is {len(ids)} tokens with the system prompt, but the context holds "
                    f"{self.max_context} tokens and {reserve} are kept for the answer; shorten it, lower "
                    f"max_new_tokens, or load the model with a larger max_context")
            turns = turns[starts[1]:]

    def _render(self, messages: Sequence[Message]) -> list[int]:
        return render_chat(self.template, self.tokenizer, messages)

    # ---- the generation loop -----------------------------------------------------------
    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams,
                     extra_stop: Sequence[str] = ()) -> Iterator[str]:
        """Streams the text generated after ``prompt_ids``; ``self.last_stats`` is final
        when the iterator ends (also when the consumer stops early). Bad prompts raise
        here, before anything runs."""
        prompt_ids = [int(i) for i in prompt_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        self.tokenizer.check_ids(prompt_ids)
        if len(prompt_ids) >= self.max_context:
            raise ContextOverflowError(f"the prompt is {len(prompt_ids)} tokens but the context holds "
                                       f"{self.max_context}; shorten it or load the model with a larger max_context")
        return self._run(prompt_ids, params, extra_stop)

    def _run(self, prompt_ids: list[int], params: SamplingParams, extra_stop: Sequence[str]) -> Iterator[str]:
        n_ctx = self.max_context
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids), finish_reason="interrupted")
        model = self.model
        # The KV cache is authoritative for how many tokens are cached (an interrupt can
        # land between a native step and the bookkeeping here).
        del self._cached[model.position:]
        reuse = min(common_prefix(self._cached, prompt_ids), len(prompt_ids) - 1)
        model.truncate(reuse)
        del self._cached[reuse:]
        stats.cached_tokens = reuse

        t0 = time.perf_counter()
        logits = model.prefill(prompt_ids[reuse:])
        self._cached = list(prompt_ids)
        t1 = time.perf_counter()
        stats.prefill_seconds = t1 - t0

        seq = TokenStream(self.tokenizer, prompt_ids, params, logits.size, extra_stop)
        try:
            while not seq.done:
                token, text = seq.step(logits, self._cached)
                if text:
                    yield text
                if token is None:
                    break
                if model.position >= n_ctx:  # the cache is full: this token cannot be run
                    tail = seq.end("length")
                    if tail:
                        yield tail
                    break
                logits = model.decode(token)  # decode_one_token: the hot step
                self._cached.append(token)
        finally:
            stats.generated_tokens = seq.generated
            stats.finish_reason = seq.finish_reason or "interrupted"
            stats.decode_seconds = time.perf_counter() - t1

    # ---- the public text API -----------------------------------------------------------
    def stream(self, prompt: str, **sampling: Any) -> Iterator[str]:
        """Streams the continuation of ``prompt`` (plain text, no chat template)."""
        params = self.params(**sampling)
        return self.generate_ids(self.tokenizer.encode(prompt, add_special=True), params)

    def generate(self, prompt: str, **sampling: Any) -> str:
        """The continuation of ``prompt`` (plain text, no chat template)."""
        return "".join(self.stream(prompt, **sampling))

    def chat_stream(self, messages: Sequence[Message], **sampling: Any) -> Iterator[str]:
        """Streams the assistant's answer to ``messages`` rendered with the chat template."""
        params = self.params(**sampling)
        return self.generate_ids(self.chat_prompt(messages, params.max_new_tokens), params,
                                 extra_stop=self.template.stop)

    def chat(self, messages: Sequence[Message], **sampling: Any) -> str:
        """The assistant's answer to ``messages``."""
        return "".join(self.chat_stream(messages, **sampling))

    def reset(self) -> None:
        """Forgets the cached prompt."""
        self.model.reset()
        self._cached = []
