"""Bad input never hurts, for `/v1/responses` too: any JSON in any field (input items, content parts,
tools, text.format, …) is converted and planned, or answered with a 4xx `OpenAIError` naming a field."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import OpenAIError
from proxy.translate.params import plan_chat
from proxy.translate.responses_request import ResponsesRequest, to_chat
from proxy.translate.validation import parse_body
from tests.unit.test_request_shapes import GENERATION, JSON_PATH, REGISTRY, field, json_values, obj

text = st.text(max_size=6)
part = obj(
    {"type": field(st.sampled_from(["input_text", "output_text", "refusal", "input_image", "x"]))},
    {"text": field(text), "refusal": field(text)},
)
message = obj(
    {"role": field(st.sampled_from(["user", "assistant", "system", "developer", "tool"]))},
    {"type": field(st.just("message")), "content": field(text | st.lists(part, max_size=2))},
)
call = obj(
    {"type": field(st.sampled_from(["function_call", "custom_tool_call"])), "call_id": field(text)},
    {"name": field(text), "arguments": field(st.just('{"a": 1}') | text), "input": field(text)},
)
output = obj(
    {"type": field(st.sampled_from(["function_call_output", "custom_tool_call_output", "item_reference"]))},
    {"call_id": field(text), "output": field(text | st.lists(part, max_size=2))},
)
tool = obj(
    {"type": field(st.sampled_from(["function", "custom", "web_search", "file_search", "mcp"]))},
    {
        "name": field(text),
        "description": field(text),
        "parameters": field(st.just({"type": "object"})),
        "strict": field(st.booleans()),
    },
)
body = obj(
    {"model": field(st.sampled_from(["claude-2.1", "gpt-4"]))},
    {
        "input": field(text | st.lists(message | call | output, max_size=4)),
        "instructions": field(text),
        "max_output_tokens": field(st.integers(0, 200_000)),
        "temperature": field(st.floats(0, 2)),
        "top_p": field(st.floats(0, 1)),
        "tools": field(st.lists(tool, max_size=2)),
        "tool_choice": field(
            st.sampled_from(["auto", "none", "required"]) | st.just({"type": "function", "name": "f"})
        ),
        "parallel_tool_calls": field(st.booleans()),
        "text": field(
            obj(
                {},
                {
                    "format": field(
                        st.just({"type": "json_object"})
                        | st.just({"type": "json_schema", "name": "x", "schema": {}})
                    )
                },
            )
        ),
        "metadata": field(st.dictionaries(text, text, max_size=2)),
        "store": field(st.booleans()),
        "previous_response_id": field(text),
        "background": field(st.booleans()),
        "stream": field(st.booleans()),
        "user": field(text),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=body | json_values)
def test_any_responses_body_is_planned_or_a_4xx(body: Any) -> None:
    try:
        request = parse_body(json.dumps(body).encode(), ResponsesRequest)
        plan_chat(to_chat(request, []), REGISTRY, GENERATION)
    except OpenAIError as error:
        assert 400 <= error.status < 500, error
        assert error.param is None or JSON_PATH.match(error.param), error.param
