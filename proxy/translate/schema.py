"""OpenAI request bodies as strict pydantic models.

Strict so that `"temperature": "0.5"` is a type error as it is on api.openai.com; every optional field
is nullable so that an explicit `null` behaves as omitted; unknown fields are ignored (forward
compatibility). Fields the upstream cannot honour are declared anyway so that their ranges are checked
and `proxy.translate.params` can apply one policy to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
)

Number = StrictFloat | StrictInt
# Bounded numbers carry their bounds on each branch, so that pydantic-core checks them itself: bounds on
# the union as a whole are two Python validators per value. (A float branch reports its bound as a float;
# `proxy.translate.validation` shows the schema's integer bounds as integers.)
Temperature = Annotated[StrictFloat, Field(ge=0, le=2)] | Annotated[StrictInt, Field(ge=0, le=2)]
TopP = Annotated[StrictFloat, Field(ge=0, le=1)] | Annotated[StrictInt, Field(ge=0, le=1)]
Penalty = Annotated[StrictFloat, Field(ge=-2, le=2)] | Annotated[StrictInt, Field(ge=-2, le=2)]
N = Annotated[StrictInt, Field(ge=1, le=128)]
Stop = StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=4)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class StreamOptions(_Body):
    include_usage: StrictBool | None = None
    include_obfuscation: StrictBool | None = None


def _tagged(field: str, *models: type[_Body]) -> Any:
    """A union of `models` chosen by their `field` literal (`{"type": "text", ...}`).

    Each branch is tagged `"<field>=<value>"`: the `=` lets `proxy.translate.validation` tell these tags
    from JSON keys in an error's location (`"text"` is both a part type and a key of text parts), and a
    mismatch reports the expected tags, from which it names the supported values.
    """

    def tag(value: Any) -> str | None:
        found = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"{field}={found}" if isinstance(found, str) else None

    tag.__name__ = field  # shown as the error context's `discriminator` ("type()")
    branches = []
    for model in models:
        for value in get_args(model.model_fields[field].annotation):
            branches.append(Annotated[model, Tag(f"{field}={value}")])
    return Annotated[Union[tuple(branches)], Discriminator(tag)]  # noqa: UP007 (a runtime tuple)


class TextPart(_Body):
    type: Literal["text", "input_text"]
    text: StrictStr


class RefusalPart(_Body):
    type: Literal["refusal"]
    refusal: StrictStr


class UnsupportedPart(_Body):
    """Parts OpenAI accepts that a text-only upstream cannot take; the prompt builder names them in a 400."""

    type: Literal["image_url", "input_image", "input_audio", "audio", "file", "input_file"]


if TYPE_CHECKING:  # What the tagged union validates to.
    ContentPart = TextPart | RefusalPart | UnsupportedPart
else:
    ContentPart = _tagged("type", TextPart, RefusalPart, UnsupportedPart)
Content = StrictStr | Annotated[list[ContentPart], Field(min_length=1)]


class FunctionCall(_Body):
    """A call the assistant made (`tool_calls[].function`, legacy `function_call`): arguments as JSON text."""

    name: StrictStr
    arguments: StrictStr


class ToolCall(_Body):
    id: StrictStr
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None
    function_call: FunctionCall | None = None
    refusal: StrictStr | None = None


class FunctionDefinition(_Body):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Body):
    name: StrictStr


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class TextFormat(_Body):
    type: Literal["text"]


class JSONObjectFormat(_Body):
    type: Literal["json_object"]


class JSONSchema(_Body):
    name: StrictStr
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class JSONSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JSONSchema


if TYPE_CHECKING:
    ResponseFormat = TextFormat | JSONObjectFormat | JSONSchemaFormat
else:
    ResponseFormat = _tagged("type", TextFormat, JSONObjectFormat, JSONSchemaFormat)


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
    # Tools, functions and formats are mapped by the planner (`proxy.translate.tools`, `.structured`);
    # their shapes are checked here so that a malformed one is reported as such.
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionName | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
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
