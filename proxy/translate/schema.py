"""OpenAI request bodies as strict pydantic models.

Strict so that `"temperature": "0.5"` is a type error as it is on api.openai.com; every optional field
is nullable so that an explicit `null` behaves as omitted; unknown fields are ignored (forward
compatibility). Fields the upstream cannot honour are declared anyway so that their ranges are checked
and `proxy.translate.params` can apply one policy to them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictFloat | StrictInt
Temperature = Annotated[Number, Field(ge=0, le=2)]
TopP = Annotated[Number, Field(ge=0, le=1)]
Penalty = Annotated[Number, Field(ge=-2, le=2)]
N = Annotated[StrictInt, Field(ge=1, le=128)]
Stop = StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=4)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class StreamOptions(_Body):
    include_usage: StrictBool | None = None
    include_obfuscation: StrictBool | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # Parts are checked by the prompt builder, which knows the path of each one for error messages.
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None
    function_call: dict[str, Any] | None = None
    refusal: StrictStr | None = None


class _Common(_Body):
    """Fields both POST endpoints share."""

    model: StrictStr
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None  # extension: the upstream's top_k
    n: N | None = None
    stop: Stop | None = None
    user: StrictStr | None = None
    # Accepted, range-checked, then dropped or rejected by policy (the upstream has no equivalent).
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Number] | None = None
    seed: StrictInt | None = None


class ChatRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    safety_identifier: StrictStr | None = None
    # Dropped or rejected by policy.
    store: StrictBool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: StrictStr | None = None
    reasoning_effort: StrictStr | None = None
    verbosity: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None


PromptValue = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(_Common):
    prompt: PromptValue
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    best_of: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
