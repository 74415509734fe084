"""Bad input never hurts: any JSON in any field of a request is served or answered with a 4xx.

The strategies below build request bodies field by field, following the schemas in
proxy/translate/schema.py down to content parts and tool calls; at every field they put either a
well-formed value or an arbitrary JSON value (null, booleans, huge and negative integers, extreme
floats, empty and non-ASCII strings, arrays, objects). The property: `parse_body` followed by the
planner either produces a plan or raises `OpenAIError` with a 4xx status and a JSON-path `param`,
never any other exception, and a plan never sends upstream what the upstream cannot take.
`test_strategies_cover_every_field` fails when a schema gains a field these strategies do not fill.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from proxy.config import GenerationConfig, ModelsConfig
from proxy.errors import OpenAIError
from proxy.translate.models import ModelRegistry
from proxy.translate.params import Plan, plan_chat, plan_completion
from proxy.translate.schema import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    FunctionCall,
    FunctionDefinition,
    JSONSchema,
    StreamOptions,
    Tool,
    ToolCall,
)
from proxy.translate.validation import parse_body

REGISTRY = ModelRegistry.from_config(ModelsConfig())
GENERATION = GenerationConfig()
INT64_MAX = 2**63 - 1

#: `model`, `messages[0].content[1].type`, `stop[3]`, `logit_bias["x"]`: what `param` must look like.
JSON_PATH = re.compile(r'^[a-z_]+(\[\d+\]|\.[a-z_]+|\[".*"\])*$')

EXTREME_INTS = [0, 1, -1, 2**31, 2**53 + 1, INT64_MAX, 2**63, 2**64 - 1, 2**64, 2**100, -(2**63) - 1]
EXTREME_FLOATS = [0.0, -0.0, 0.5, 1.0000001, 2.0000001, -2.5, 5e-324, 1.7976931348623157e308, -1e308]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(EXTREME_INTS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(EXTREME_FLOATS)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
    | st.sampled_from(["", "text", "function", "auto", "none", "\n\nHuman:", "é😀", "json_schema"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "text", "name", "x", ""]) | st.text(max_size=4), inner, max_size=3
        )
    ),
    max_leaves=6,
)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: usually well-formed (so that deeper fields get exercised), else any JSON."""
    return st.one_of(valid, valid, json_values)


def obj(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """An object whose required keys are usually present and whose optional keys come and go."""
    optional = {k: v for k, v in optional.items() if k not in required}
    return st.fixed_dictionaries({}, optional={**required, **optional}) | st.fixed_dictionaries(
        {k: field(v) for k, v in required.items()}, optional={k: field(v) for k, v in optional.items()}
    )


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
token_ints = st.integers(min_value=0, max_value=100) | st.sampled_from(EXTREME_INTS)
numbers = st.floats(-3, 3) | st.integers(-3, 3) | st.sampled_from(EXTREME_FLOATS)

FUNCTION_CALL = {"name": text, "arguments": text}
function_call = obj(FUNCTION_CALL, {})
PART_TYPES = ["text", "input_text", "refusal", "image_url", "input_audio", "file", "hologram", ""]
part = obj(
    {"type": st.sampled_from(PART_TYPES)},
    {"text": text, "refusal": text, "image_url": obj({"url": text}, {}), "file": json_values},
)
TOOL_CALL = {"id": text, "type": st.just("function"), "function": function_call}
MESSAGE_REQUIRED = {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])}
MESSAGE_OPTIONAL = {
    "content": text | st.lists(field(part), max_size=3),
    "name": text,
    "tool_calls": st.lists(field(obj(TOOL_CALL, {})), max_size=2),
    "tool_call_id": text,
    "function_call": function_call,
    "refusal": text,
}
message = obj(MESSAGE_REQUIRED, MESSAGE_OPTIONAL)
STREAM_OPTIONS = {"include_usage": st.booleans(), "include_obfuscation": st.booleans()}
FUNCTION_DEFINITION = {
    "name": text,
    "description": text,
    "parameters": st.just({"type": "object"}),
    "strict": st.booleans(),
}
JSON_SCHEMA = {
    "name": text,
    "description": text,
    "schema": st.just({"type": "object"}),
    "strict": st.booleans(),
}
TOOL = {"type": st.just("function"), "function": obj({"name": text}, FUNCTION_DEFINITION)}

COMMON = {
    "stream": st.booleans(),
    "stream_options": obj({}, STREAM_OPTIONS),
    "max_tokens": token_ints,
    "temperature": numbers,
    "top_p": numbers,
    "top_k": token_ints,
    "n": st.integers(0, 130),
    "stop": text | st.lists(text, max_size=5),
    "user": text,
    "frequency_penalty": numbers,
    "presence_penalty": numbers,
    "logit_bias": st.dictionaries(st.sampled_from(["50256", "1"]), numbers, max_size=2),
    "seed": st.integers() | st.sampled_from(EXTREME_INTS),
}
CHAT = {
    "messages": st.lists(field(message), max_size=3),
    "max_completion_tokens": token_ints,
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(-1, 21),
    "tools": st.lists(
        field(obj({"type": st.just("function"), "function": obj({"name": text}, {})}, {})), max_size=2
    ),
    "tool_choice": st.sampled_from(["none", "auto", "required"])
    | obj({"type": st.just("function"), "function": obj({"name": text}, {})}, {}),
    "functions": st.lists(field(obj({"name": text}, FUNCTION_DEFINITION)), max_size=2),
    "function_call": st.sampled_from(["none", "auto"]) | obj({"name": text}, {}),
    "parallel_tool_calls": st.booleans(),
    "response_format": obj(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        {"json_schema": obj({"name": text}, JSON_SCHEMA)},
    ),
    "modalities": st.lists(st.sampled_from(["text", "audio"]), max_size=2),
    "audio": obj({}, {"voice": text, "format": text}),
    "prediction": obj({"type": st.just("content")}, {"content": text}),
    "web_search_options": obj({}, {"search_context_size": text}),
    "safety_identifier": text,
    "store": st.booleans(),
    "metadata": st.dictionaries(text, text, max_size=2),
    "service_tier": st.sampled_from(["auto", "default", "flex"]),
    "reasoning_effort": st.sampled_from(["low", "high"]),
    "verbosity": st.sampled_from(["low", "high"]),
    "prompt_cache_key": text,
}
COMPLETION = {
    "prompt": text
    | st.lists(text, max_size=3)
    | st.lists(token_ints, max_size=3)
    | st.lists(st.lists(token_ints, max_size=2), max_size=2),
    "echo": st.booleans(),
    "suffix": text,
    "logprobs": st.integers(-1, 6),
    "best_of": st.integers(-1, 21),
}
MODEL = {"model": st.sampled_from(["claude-2.1", "gpt-4", "gpt-3.5-turbo-instruct", "", "no-such-model"])}


def body_strategy(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    required = {**MODEL, **required}
    # Deferred: the strategy's own repr would run to hundreds of kilobytes.
    return st.deferred(lambda: obj(required, optional))


chat_bodies = body_strategy({"messages": CHAT["messages"]}, {**COMMON, **CHAT})
completion_bodies = body_strategy({"prompt": COMPLETION["prompt"]}, {**COMMON, **COMPLETION})


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        (ChatRequest, {*MODEL, *COMMON, *CHAT}),
        (CompletionRequest, {*MODEL, *COMMON, *COMPLETION}),
        (ChatMessage, {*MESSAGE_REQUIRED, *MESSAGE_OPTIONAL}),
        (ToolCall, set(TOOL_CALL)),
        (FunctionCall, set(FUNCTION_CALL)),
        (StreamOptions, set(STREAM_OPTIONS)),
        (FunctionDefinition, set(FUNCTION_DEFINITION)),
        (JSONSchema, set(JSON_SCHEMA)),
        (Tool, set(TOOL)),
    ],
)
def test_strategies_cover_every_field(model: type[BaseModel], keys: set[str]) -> None:
    assert {f.alias or name for name, f in model.model_fields.items()} == keys


def ints_in(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        return [i for v in value.values() for i in ints_in(v)]
    if isinstance(value, list):
        return [i for v in value for i in ints_in(v)]
    return []


def plan_body(body: dict[str, Any], schema: type[ChatRequest] | type[CompletionRequest]) -> Plan:
    """What the routes do with a body: parse, validate, plan."""
    plan: Callable[[Any, ModelRegistry, GenerationConfig], Plan] = (
        plan_chat if schema is ChatRequest else plan_completion
    )
    # The stdlib encoder writes integers of any size, as a client might; orjson's would refuse.
    return plan(parse_body(json.dumps(body).encode(), schema), REGISTRY, GENERATION)


def served_or_4xx(body: dict[str, Any], schema: type[ChatRequest] | type[CompletionRequest]) -> Plan | None:
    """The property, for one body: a plan the upstream can take, or a 4xx OpenAIError; nothing else."""
    try:
        result = plan_body(body, schema)
    except OpenAIError as error:
        assert 400 <= error.status < 500, error
        assert error.type == "invalid_request_error"
        assert error.message
        assert error.param is None or JSON_PATH.match(error.param), error.param
        orjson.dumps(error.body())
        return None
    calls = result.calls()
    orjson.dumps(calls)  # what the upstream client sends
    for call in calls:
        assert 1 <= call["max_tokens_to_sample"] <= GENERATION.max_tokens_ceiling
        assert isinstance(call["prompt"], str)
    return result


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(chat_bodies)
def test_any_chat_body_is_served_or_a_4xx(body: dict[str, Any]) -> None:
    served_or_4xx(body, ChatRequest)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(completion_bodies)
def test_any_completion_body_is_served_or_a_4xx(body: dict[str, Any]) -> None:
    served_or_4xx(body, CompletionRequest)


BASE = {"model": "claude-2.1", "messages": [{"role": "user", "content": "hi"}]}
ASSISTANT = {"role": "assistant", "content": None}


def chat_error(**fields: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        plan_body({**BASE, **fields}, ChatRequest)
    assert served_or_4xx({**BASE, **fields}, ChatRequest) is None  # and the error is well-formed
    return caught.value


@pytest.mark.parametrize(
    ("messages", "param", "code"),
    [
        ([{"role": "user", "content": [{"type": ["text"]}]}], "messages[0].content[0].type", "invalid_type"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text", "missing_required_parameter"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text", "invalid_type"),
        ([{"role": "user", "content": [{"text": "hi"}]}], "messages[0].content[0].type", "missing_required_parameter"),
        ([{"role": "user", "content": ["hi"]}], "messages[0].content[0]", "invalid_type"),
        ([{"role": "user", "content": []}], "messages[0].content", "empty_array"),
        ([{"role": "user", "content": [{"type": "refusal"}]}], "messages[0].content[0].refusal", "missing_required_parameter"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0]", "unsupported_parameter"),
        ([{"role": "user", "content": "q"}, {**ASSISTANT, "tool_calls": [{"id": "c", "type": "function", "function": "x"}]}], "messages[1].tool_calls[0].function", "invalid_type"),
        ([{"role": "user", "content": "q"}, {**ASSISTANT, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}], "messages[1].tool_calls[0].function.arguments", "missing_required_parameter"),
        ([{"role": "user", "content": "q"}, {**ASSISTANT, "tool_calls": ["x"]}], "messages[1].tool_calls[0]", "invalid_type"),
        ([{"role": "user", "content": "q"}, {**ASSISTANT, "function_call": {"name": 1, "arguments": "{}"}}], "messages[1].function_call.name", "invalid_type"),
    ],
)  # fmt: skip
def test_malformed_messages_name_the_field(messages: list[Any], param: str, code: str) -> None:
    error = chat_error(messages=messages)
    assert (error.status, error.param, error.code) == (400, param, code)
    assert param in error.message or code == "unsupported_parameter"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": [{"type": "function", "function": "x"}]}, "tools[0].function", "invalid_type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        ({"tools": "x"}, "tools", "invalid_type"),
        ({"functions": [{"parameters": {}}]}, "functions[0].name", "missing_required_parameter"),
        ({"tool_choice": {"type": "function", "function": {"name": 3}}}, "tool_choice.function.name", "invalid_type"),
        ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"response_format": {"type": ["json_object"]}}, "response_format.type", "invalid_type"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing_required_parameter"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": None}}}, "response_format.json_schema.name", "invalid_type"),
        ({"response_format": "json"}, "response_format", "invalid_type"),
        ({"stream_options": {"include_usage": 1}, "stream": True}, "stream_options.include_usage", "invalid_type"),
        # Well-formed but refused by the planner.
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "invalid_value"),
        ({"tool_choice": "required"}, "tool_choice", None),
    ],
)  # fmt: skip
def test_malformed_request_fields_name_the_field(fields: dict[str, Any], param: str, code: str) -> None:
    error = chat_error(**fields)
    assert (error.status, error.param, error.code) == (400, param, code)


@pytest.mark.parametrize("field_name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [GENERATION.max_tokens_ceiling + 1, 2**63, 2**64 - 1])
def test_max_tokens_above_the_ceiling(field_name: str, value: int) -> None:
    error = chat_error(**{field_name: value})
    assert (error.status, error.param, error.code) == (400, field_name, "integer_above_max_value")
    assert f"<= {GENERATION.max_tokens_ceiling}" in error.message


def test_max_tokens_beyond_64_bits_is_a_type_error() -> None:
    # JSON parsers (orjson here) read integers past 2**64 - 1 as floats: not an integer any more.
    error = chat_error(max_tokens=2**64)
    assert (error.param, error.code) == ("max_tokens", "invalid_type")


def test_the_ceiling_itself_is_accepted_and_configurable() -> None:
    plan = served_or_4xx({**BASE, "max_tokens": GENERATION.max_tokens_ceiling}, ChatRequest)
    assert plan is not None and plan.body["max_tokens_to_sample"] == GENERATION.max_tokens_ceiling
    strict = GenerationConfig(max_tokens_ceiling=4096)
    request = CompletionRequest.model_validate({"model": "claude-2.1", "prompt": "x", "max_tokens": 4097})
    with pytest.raises(OpenAIError) as caught:
        plan_completion(request, REGISTRY, strict)
    assert (caught.value.param, caught.value.code) == ("max_tokens", "integer_above_max_value")
