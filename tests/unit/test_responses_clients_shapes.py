"""What the real Responses clients send that the first version refused (pure functions and the renderer):
`item_reference` ids (the AI SDK), `namespace` tools (Codex), custom tools inside a namespace."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import OpenAIError
from proxy.translate.render.responses import ResponseEvents, ResponseState, item_id
from proxy.translate.responses_request import (
    ResponsesRequest,
    ResponsesTool,
    chat_tools,
    custom_tools,
    input_messages,
    namespaced_tools,
    response_of_item,
)
from proxy.translate.stream import Done, Finished, Opened, Text, ToolCallArguments, ToolCallStarted, new_id
from proxy.translate.validation import parse_body

LOOKUP = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
PATCH = {"type": "custom", "name": "patch", "description": "Edit files."}
CRM = {"type": "namespace", "name": "crm", "description": "Customers.", "tools": [LOOKUP, PATCH]}


def typed(*tools: dict[str, object]) -> list[ResponsesTool]:
    return [ResponsesTool.model_validate(tool) for tool in tools]


@pytest.mark.parametrize("key", ["0", "12", "in3"])
def test_an_item_id_names_its_response(key: str) -> None:
    for _ in range(50):  # random ids contain `_` and `-`
        response = new_id("resp_")
        for prefix in ("msg_", "fc_", "ctc_"):
            assert response_of_item(item_id(prefix, response, key)) == response


@pytest.mark.parametrize("foreign", ["x", "msg_", "msg__0", "msg_abc", "", "msg_abc_"])
def test_ids_the_proxy_did_not_make_name_no_response(foreign: str) -> None:
    assert response_of_item(foreign) is None


def test_a_namespace_becomes_flat_chat_tools() -> None:
    tools = chat_tools(typed(CRM, {**LOOKUP, "name": "plain"}))
    assert tools is not None
    assert [tool["function"]["name"] for tool in tools] == ["crm__lookup", "crm__patch", "plain"]
    assert tools[1]["function"]["parameters"]["required"] == ["input"]  # the custom tool's one string
    assert custom_tools(typed(CRM, PATCH)) == {"crm__patch", "patch"}
    assert namespaced_tools(typed(CRM, LOOKUP)) == {
        "crm__lookup": ("crm", "lookup"),
        "crm__patch": ("crm", "patch"),
    }


@pytest.mark.parametrize(
    ("namespace", "param"),
    [
        ({"type": "namespace", "name": "crm"}, "tools[0]"),
        ({"type": "namespace", "name": "crm", "tools": []}, "tools[0]"),
        ({"type": "namespace", "tools": [LOOKUP]}, "tools[0]"),
        ({"type": "namespace", "name": "crm", "tools": [{"type": "web_search"}]}, "tools[0].tools[0].type"),
        ({"type": "namespace", "name": "crm", "tools": [CRM]}, "tools[0].tools[0].type"),
        ({"type": "namespace", "name": "crm", "tools": [{"type": "function"}]}, "tools[0].tools[0].name"),
    ],
)
def test_a_malformed_namespace_is_a_400(namespace: dict[str, object], param: str) -> None:
    with pytest.raises(OpenAIError) as raised:
        chat_tools(typed(namespace))
    assert raised.value.status == 400 and raised.value.param == param


def test_a_namespace_of_strings_is_a_400_too() -> None:
    body = {
        "model": "claude-2.1",
        "input": "x",
        "tools": [{"type": "namespace", "name": "n", "tools": ["x"]}],
    }
    with pytest.raises(OpenAIError) as raised:
        parse_body(orjson.dumps(body), ResponsesRequest)
    assert raised.value.status == 400


def test_a_namespaced_call_in_the_input_goes_upstream_under_its_flat_name() -> None:
    (message,) = input_messages(
        [
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "lookup",
                "namespace": "crm",
                "arguments": "{}",
            }
        ]
    )
    assert message["tool_calls"][0]["function"]["name"] == "crm__lookup"


def test_calls_of_namespaced_tools_come_back_apart() -> None:
    state = ResponseState(
        "claude-2.1",
        settings={},
        custom_tools=custom_tools(typed(CRM)),
        namespaced=namespaced_tools(typed(CRM)),
    )
    render = ResponseEvents(state).render
    raw = render([Opened(0), Text(0, "Looking.")])
    raw += render([ToolCallStarted(0, 0, "call_a", "crm__lookup"), ToolCallArguments(0, 0, '{"q": 1}')])
    raw += render([ToolCallStarted(0, 1, "call_b", "crm__patch"), ToolCallArguments(0, 1, '{"input": "+x"}')])
    raw += render([Finished(0, "tool_calls"), Done()])
    events = [orjson.loads(block.split(b"\ndata: ")[1]) for block in raw.split(b"\n\n") if block]
    message, call, custom = events[-1]["response"]["output"]
    assert message["id"] == item_id("msg_", state.id, "0")
    assert (call["type"], call["name"], call["namespace"], call["arguments"]) == (
        "function_call",
        "lookup",
        "crm",
        '{"q": 1}',
    )
    assert (custom["type"], custom["name"], custom["namespace"], custom["input"]) == (
        "custom_tool_call",
        "patch",
        "crm",
        "+x",
    )
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [item.get("namespace") for item in added] == [None, "crm", "crm"]
    assert all(response_of_item(item["id"]) == state.id for item in (message, call, custom))
