"""Request bodies of the OpenAI-compatible API as pydantic models (the OpenAPI schema too).

Only fields we implement are declared with their real constraints; fields clients send
routinely and that we cannot honour (`frequency_penalty`, `presence_penalty`,
`logit_bias`, tools) are declared so a non-default value is refused with a 400 that names
them, instead of being silently ignored. Unknown extra fields are ignored, as OpenAI does
for forward compatibility.

Why `strict` number/bool types: pydantic's lax mode would turn `"max_tokens": "12"` or
`"stream": "yes"` into values; the OpenAI API answers those with 400, and so do we.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictInt | StrictFloat


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    """`developer` is OpenAI's newer name for `system` and is rendered as one."""
    content: StrictStr | list[dict[str, Any]]
    """A string, or a list of `{"type": "text", "text": ...}` parts (joined)."""


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None
    """For type json_schema: `{"name": ..., "schema": {...}, "strict": ...}`."""


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: StrictStr
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    seed: StrictInt | None = None
    stop: StrictStr | Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=8)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: Number | None = None
    presence_penalty: Number | None = None
    logit_bias: dict[str, Any] | None = None
    user: StrictStr | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None


class CompletionRequest(_Sampling):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=16)] | list[StrictInt]
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    response_format: ResponseFormat | None = None
    """An extension (vLLM has it too): JSON-constrained plain completions."""


class TokenizeRequest(_Body):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_generation_prompt: StrictBool = True


class DetokenizeRequest(_Body):
    model: StrictStr | None = None
    tokens: list[Annotated[StrictInt, Field(ge=0)]]


class TraceRequest(_Body):
    """`POST /v1/trace` (only with `olmo2 serve --trace INDEX`): the text to trace."""

    text: StrictStr
    max_count: Annotated[StrictInt, Field(ge=1, le=1000)] = 10
    """Keep spans occurring at most this many times in the corpus."""
    max_docs: Annotated[StrictInt, Field(ge=1, le=100)] = 10
    """Documents listed per span."""
    context: Annotated[StrictInt, Field(ge=0, le=1000)] = 250
    """Context tokens each side of a span in each document."""
