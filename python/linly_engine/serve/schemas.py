"""Request bodies of the HTTP API (OpenAI's field names), validated by pydantic."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions. Unknown fields are
    ignored, as OpenAI-compatible servers do; known ones are type-checked."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    ignore_eos: bool = False  # llama-server's extension: generate through end-of-sequence tokens

    @field_validator("n")
    @classmethod
    def only_one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported; send several requests for several answers")
        return v

    @field_validator("stop")
    @classmethod
    def stop_list(cls, v: Union[str, list[str], None]) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("stop takes at most 8 non-empty strings")
        return stops

    def sampling_overrides(self) -> dict[str, Any]:
        """The fields given, under SamplingParams' names (None: keep the server default)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                "repetition_penalty": self.repetition_penalty, "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty, "seed": self.seed, "stop": self.stop or None,
                "ignore_eos": self.ignore_eos or None}

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart]]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, v: Union[str, list[str]]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("give one prompt (a string, or a list of exactly one string)")
            v = v[0]
        return v


class TokenizeRequest(BaseModel):
    content: str
    add_special: bool = True


class DetokenizeRequest(BaseModel):
    tokens: list[int]


class LinlyChatRequest(BaseModel):
    """Linly's Flask service: {"question": str or [str]}."""

    question: Union[str, list[str]]
