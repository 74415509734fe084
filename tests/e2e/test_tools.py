"""Tools, structured output and proxy-enforced stops, with real clients over real HTTP.

The mock upstream plays a scripted model (`[[mock:script=…]]`: answers in Anthropic's documented legacy
tool-use format) or says exactly what a test needs (`[[mock:reply=…]]`, for malformed output). Clients:
the official `openai` SDK (sync, async, the `stream()` helper, `parse()`), LangChain `ChatOpenAI`
(`bind_tools`, `with_structured_output` with each method) and LangGraph's prebuilt ReAct agent.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.support.servers import Server, mock_requests, mock_stats
from tests.support.upstream import marker

TIMEOUT = 30.0

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a timezone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}
TOOLS = [WEATHER, TIME]


def script(*turns: dict[str, Any]) -> str:
    """A scripted model: one answer per turn of the conversation."""
    value = json.dumps(list(turns))
    assert "]]" not in value
    return f"[[mock:script={value} ]]"


def reply(text: str) -> str:
    """The model says exactly `text` (before the upstream's stop sequences apply)."""
    assert "]]" not in text
    return "[[mock:reply=" + text.replace("\n", "\\n") + "]]"


def call(tool_name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": tool_name, "arguments": arguments}


def upstream_prompt(mock: Server, mark: str) -> str:
    """The last prompt the mock received that contains `mark`."""
    for record in reversed(mock_requests(mock)):
        body = record["body"]
        if isinstance(body, dict) and mark in str(body.get("prompt", "")):
            return str(body["prompt"])
    raise AssertionError(f"no upstream request with {mark}")


def upstream_body(mock: Server, mark: str) -> dict[str, Any]:
    for record in reversed(mock_requests(mock)):
        body = record["body"]
        if isinstance(body, dict) and mark in str(body.get("prompt", "")):
            return body
    raise AssertionError(f"no upstream request with {mark}")


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    lines = [line for line in response.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


# -- the openai SDK ------------------------------------------------------------------------------------


def test_one_call_typed_by_schema_with_null_content(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {
                "role": "user",
                "content": f"Weather? {mark} "
                + script(
                    {"calls": [call("get_weather", city="Paris", days=3, metric=True, tags=["a", "b"])]}
                ),
            }
        ],
        tools=TOOLS,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(tool_call.function.arguments)  # type: ignore[union-attr]
    assert arguments == {"city": "Paris", "days": 3, "metric": True, "tags": ["a", "b"]}
    body = upstream_body(mock_upstream, mark)
    prompt = body["prompt"]
    assert prompt.index("<tool_name>get_weather</tool_name>") < prompt.index("\n\nHuman:")
    assert body["stop_sequences"][:2] == ["</function_calls>", "<function_results>"]
    # Usage counts the tool descriptions: they are part of the prompt.
    plain = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": f"Weather? {mark}"}]
    )
    assert completion.usage and plain.usage
    assert completion.usage.prompt_tokens > plain.usage.prompt_tokens + 100


def test_text_then_parallel_calls_in_order(client: openai.OpenAI) -> None:
    turn = {
        "text": "Let me check both.",
        "calls": [call("get_weather", city="Paris"), call("get_time", tz="Europe/Paris")],
    }
    completion = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Both? " + script(turn)}], tools=TOOLS
    )
    message = completion.choices[0].message
    assert message.content == "Let me check both."
    calls = message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2
    assert json.loads(calls[1].function.arguments) == {"tz": "Europe/Paris"}  # type: ignore[union-attr]


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    turn = {"calls": [call("get_weather", city="Paris"), call("get_time", tz="UTC")]}
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": f"Both? {mark} " + script(turn)}],
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    assert [c.function.name for c in completion.choices[0].message.tool_calls or []] == ["get_weather"]  # type: ignore[union-attr]
    body = upstream_body(mock_upstream, mark)
    assert "</invoke>" in body["stop_sequences"]
    assert "Only invoke one function at a time" in body["prompt"]


async def test_async_client_tool_call(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "Time? " + script({"calls": [call("get_time", tz="UTC")]})}],
        tools=TOOLS,
    )
    (tool_call,) = completion.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_time"  # type: ignore[union-attr]


def test_stream_wire_format(http: httpx.Client, proxy: Server) -> None:
    turn = {"text": "Checking.", "calls": [call("get_weather", city="Paris"), call("get_time", tz="UTC")]}
    response = http.post(
        f"{proxy.base_url}/v1/chat/completions",
        json={
            "model": "gpt-4",
            "messages": [{"role": "user", "content": "Both? " + script(turn)}],
            "tools": TOOLS,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = sse_chunks(response)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Checking."
    assert all("<" not in (d.get("content") or "") for d in deltas)
    tool_deltas = [t for d in deltas for t in d.get("tool_calls") or []]
    firsts = [t for t in tool_deltas if "id" in t]
    assert [t["index"] for t in firsts] == [0, 1]
    for first in firsts:
        assert first["type"] == "function" and first["function"]["arguments"] == ""
        assert first["function"]["name"] in {"get_weather", "get_time"}
    for later in (t for t in tool_deltas if "id" not in t):
        assert set(later) == {"index", "function"} and set(later["function"]) == {"arguments"}
    finishes = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finishes == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0


def test_stream_helper_emits_arguments_done_and_final_calls(client: openai.OpenAI) -> None:
    turn = {"calls": [call("get_weather", city="Paris", days=2)]}
    with client.chat.completions.stream(
        model="gpt-4", messages=[{"role": "user", "content": "Weather? " + script(turn)}], tools=TOOLS
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert len(done) == 1 and done[0].name == "get_weather"
    assert json.loads(done[0].arguments) == {"city": "Paris", "days": 2}
    (tool_call,) = final.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_weather"
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.content is None  # as in the non-streamed answer


class Weather(BaseModel):
    city: str
    days: int


def test_stream_helper_parses_strict_pydantic_tool(client: openai.OpenAI) -> None:
    turn = {"calls": [call("Weather", city="Oslo", days=4)]}
    with client.chat.completions.stream(
        model="gpt-4",
        messages=[{"role": "user", "content": "Weather? " + script(turn)}],
        tools=[openai.pydantic_function_tool(Weather)],
    ) as stream:
        final = stream.get_final_completion()
    (tool_call,) = final.choices[0].message.tool_calls or []
    assert tool_call.function.parsed_arguments == Weather(city="Oslo", days=4)


def test_named_tool_choice_prefills_and_finishes_stop(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {"role": "user", "content": f"Hi {mark} " + script({"calls": [call("get_time", tz="UTC")]})}
        ],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]
    prompt = upstream_prompt(mock_upstream, mark)
    assert prompt.endswith(
        "\n\nAssistant: <function_calls>\n<invoke>\n<tool_name>get_time</tool_name>\n<parameters>"
    )


def test_required_tool_choice(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {"role": "user", "content": f"Hi {mark} " + script({"calls": [call("get_time", tz="UTC")]})}
        ],
        tools=TOOLS,
        tool_choice="required",
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    assert upstream_prompt(mock_upstream, mark).endswith("<function_calls>\n<invoke>\n<tool_name>")


def test_tool_choice_none_is_text(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {"role": "user", "content": f"Hi {mark} " + script({"calls": [call("get_time", tz="UTC")]})}
        ],
        tools=TOOLS,
        tool_choice="none",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "<function_calls>" in (choice.message.content or "")
    assert "<tools>" not in upstream_prompt(mock_upstream, mark)


def test_legacy_functions_answer_function_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "Time? " + script({"calls": [call("get_time", tz="UTC")]})}],
        functions=[TIME["function"]],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call is not None and choice.message.function_call.name == "get_time"
    assert json.loads(choice.message.function_call.arguments) == {"tz": "UTC"}
    assert not choice.message.tool_calls


def test_history_becomes_legacy_blocks(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {
                "role": "user",
                "content": f"Weather? {mark} " + script({"text": "x"}, {"text": "It is sunny."}),
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 21 C"},
        ],
        tools=TOOLS,
    )
    assert completion.choices[0].message.content == "It is sunny."
    prompt = upstream_prompt(mock_upstream, mark)
    assert prompt.endswith(
        "\n\nAssistant: <function_calls>\n<invoke>\n<tool_name>get_weather</tool_name>\n<parameters>\n"
        "<city>Paris</city>\n</parameters>\n</invoke>\n</function_calls>\n\n<function_results>\n<result>\n"
        "<tool_name>get_weather</tool_name>\n<stdout>\nsunny, 21 C\n</stdout>\n</result>\n</function_results>"
    )


# -- malformed model output: never a 5xx, never a made-up call; stream and body agree -----------------

MALFORMED = [
    # (what the model writes, expected content, expected calls, finish)
    (
        "Hi <function_calls>\n<invoke>\n<tool_name>launch_missiles</tool_name>\n</invoke>\n</function_calls>",
        "Hi\n\n<function_calls>\n<invoke>\n<tool_name>launch_missiles</tool_name>\n</invoke>",
        [],
        "stop",
    ),
    (
        "Use a <function_calls> block to call tools; it invokes them.",
        "Use a <function_calls> block to call tools; it invokes them.",
        [],
        "stop",
    ),
    (
        "<function_calls>\n<invoke>\n<tool_name>get_time</tool_name>\n<parameters>\n<tz>UTC</tz>\n",
        None,
        [("get_time", {"tz": "UTC"})],
        "tool_calls",
    ),
    (
        "<function_calls>\n<invoke>\n<tool_name>get_weather</tool_name>\n<parameters>\n<city><p>a < b && c</p> <city/></city>\n</parameters>\n</invoke>\n</function_calls>",
        None,
        [("get_weather", {"city": "<p>a < b && c</p> <city/>"})],
        "tool_calls",
    ),
    (
        "<function_calls>\n<invoke>\n<tool_name>get_weather</tool_name>\n<parameters>\n<city>Par",
        "<function_calls>\n<invoke>\n<tool_name>get_weather</tool_name>\n<parameters>\n<city>Par",
        [],
        "stop",
    ),
    (
        "<function_calls>\n<invoke><tool_name>get_time</tool_name><parameters><tz>UTC</tz></parameters></invoke>\n"
        "<invoke>garbage</invoke>\n</function_calls>",
        "garbage",
        [("get_time", {"tz": "UTC"})],
        "tool_calls",
    ),
]


@pytest.mark.parametrize(("said", "content", "calls", "finish"), MALFORMED)
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_output(
    client: openai.OpenAI, said: str, content: str | None, calls: list[Any], finish: str, stream: bool
) -> None:
    messages: Any = [{"role": "user", "content": "Go " + reply(" " + said)}]
    if stream:
        with client.chat.completions.stream(model="gpt-4", messages=messages, tools=TOOLS) as helper:
            completion: Any = helper.get_final_completion()
    else:
        completion = client.chat.completions.create(model="gpt-4", messages=messages, tools=TOOLS)
    choice = completion.choices[0]
    got_content = choice.message.content
    if content is not None and content.startswith("garbage"):
        assert got_content is not None and "garbage" in got_content
    else:
        assert got_content == content
    assert [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []
    ] == calls
    assert choice.finish_reason == finish


def test_max_tokens_mid_call_is_length(client: openai.OpenAI) -> None:
    turn = {"calls": [call("get_time", tz="UTC"), call("get_weather", city="a long city name " * 5)]}
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "Go " + script(turn)}],
        tools=TOOLS,
        max_tokens=12,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]


STRICT_WEATHER = {
    "type": "function",
    "function": {
        **WEATHER["function"],
        "strict": True,
        "parameters": {**WEATHER["function"]["parameters"], "additionalProperties": False},
    },  # type: ignore[dict-item]
}


def test_strict_tool_arguments_are_retried_then_accepted(
    client: openai.OpenAI, mock_upstream: Server
) -> None:
    mark = marker()
    bad = {"calls": [call("get_weather", town="Paris")]}
    good = {"calls": [call("get_weather", city="Paris")]}
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": f"Weather? {mark} " + script(bad, good)}],
        tools=[STRICT_WEATHER],  # type: ignore[list-item]
    )
    (tool_call,) = completion.choices[0].message.tool_calls or []
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert "Your answer was not valid" in upstream_prompt(mock_upstream, mark)


def test_strict_tool_arguments_invalid_twice_is_502(http: httpx.Client, proxy: Server) -> None:
    bad = {"calls": [call("get_weather", town="Paris")]}
    response = http.post(
        f"{proxy.base_url}/v1/chat/completions",
        json={
            "model": "gpt-4",
            "messages": [{"role": "user", "content": "W " + script(bad)}],
            "tools": [STRICT_WEATHER],
        },
    )
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "invalid_model_output"


# -- structured output -----------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_pydantic_model(client: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    completion = client.chat.completions.parse(
        model="gpt-4",
        messages=[
            {"role": "user", "content": f"Who? {mark} " + script({"json": {"name": "Ada", "age": 36}})}
        ],
        response_format=Person,
    )
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    prompt = upstream_prompt(mock_upstream, mark)
    assert "<json_schema>" in prompt and prompt.endswith("\n\nAssistant: {")


def test_json_object_cut_after_the_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "JSON please " + reply('"a": [1, "}"]}\n\nHope this helps!')}],
        response_format={"type": "json_object"},
    )
    assert completion.choices[0].message.content == '{"a": [1, "}"]}'


def test_json_object_streams_live_and_stops_at_the_close(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4",
        messages=[{"role": "user", "content": "JSON " + reply('"a": 1} trailing prose')}],
        response_format={"type": "json_object"},
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta" and e.delta]
        final = stream.get_final_completion()
    assert deltas[0].startswith("{")
    assert final.choices[0].message.content == '{"a": 1}'


def test_json_in_prose_with_tools_is_extracted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {"role": "user", "content": "JSON " + reply(' Sure! Here:\n```json\n{"a": 2}\n```\nDone.')}
        ],
        response_format={"type": "json_object"},
        tools=TOOLS,
    )
    assert completion.choices[0].message.content == '{"a": 2}'


PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": Person.model_json_schema() | {"additionalProperties": False},
    },
}


def test_strict_schema_retry_then_valid(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4",
        messages=[
            {
                "role": "user",
                "content": "Who? " + script({"json": {"name": "Ada"}}, {"json": {"name": "Ada", "age": 36}}),
            }
        ],
        response_format=PERSON_FORMAT,  # type: ignore[arg-type]
    )
    assert json.loads(completion.choices[0].message.content or "") == {"name": "Ada", "age": 36}


@pytest.mark.parametrize("stream", [False, True])
def test_strict_schema_invalid_is_502_never_released(http: httpx.Client, proxy: Server, stream: bool) -> None:
    response = http.post(
        f"{proxy.base_url}/v1/chat/completions",
        json={
            "model": "gpt-4",
            "messages": [
                {"role": "user", "content": "Who? " + script({"json": {"name": "Ada", "age": "old"}})}
            ],
            "response_format": PERSON_FORMAT,
            "stream": stream,
        },
    )
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "invalid_model_output"


def test_strict_stream_is_validated_then_sent(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4",
        messages=[{"role": "user", "content": "Who? " + script({"json": {"name": "Bo", "age": 7}})}],
        response_format=Person,
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Person(name="Bo", age=7)


# -- LangChain and LangGraph -------------------------------------------------------------------------


def chat_model(proxy: Server) -> ChatOpenAI:
    # gpt-4o: LangChain uses OpenAI's Structured Outputs (json_schema) only for models it knows have them.
    return ChatOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key="x", model="gpt-4o", max_retries=0, timeout=TIMEOUT
    )  # type: ignore[arg-type]


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


@tool
def get_time(tz: str) -> str:
    """Local time in a timezone."""
    return f"noon in {tz}"


def test_langchain_bind_tools_invoke_and_stream(proxy: Server) -> None:
    model = chat_model(proxy).bind_tools([get_weather, get_time])
    question = "Weather in Paris? " + script(
        {"text": "Looking.", "calls": [call("get_weather", city="Paris")]}
    )
    message = model.invoke(question)
    assert message.tool_calls == [
        {
            "name": "get_weather",
            "args": {"city": "Paris"},
            "id": message.tool_calls[0]["id"],
            "type": "tool_call",
        }
    ]
    assert message.content == "Looking."
    total: AIMessageChunk | None = None
    for chunk in model.stream(question):
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert total.content == "Looking."


@pytest.mark.parametrize("method", ["function_calling", "json_mode", "json_schema"])
@pytest.mark.parametrize("stream", [False, True])
def test_langchain_with_structured_output(proxy: Server, method: str, stream: bool) -> None:
    structured = chat_model(proxy).with_structured_output(Person, method=method)  # type: ignore[arg-type]
    if method == "function_calling":
        turn: dict[str, Any] = {"calls": [call("Person", name="Ada", age=36)]}
    else:
        turn = {"json": {"name": "Ada", "age": 36}}
    question = "Who is Ada? Answer in JSON. " + script(turn)
    if stream:
        results = list(structured.stream(question))
        assert results and results[-1] == Person(name="Ada", age=36)
    else:
        assert structured.invoke(question) == Person(name="Ada", age=36)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_react_agent moves to `langchain` in 1.x
def test_langgraph_react_agent_two_tool_rounds(proxy: Server, mock_upstream: Server) -> None:
    from langgraph.prebuilt import create_react_agent

    mark = marker()
    agent = create_react_agent(chat_model(proxy), [get_weather, get_time])
    turns = script(
        {"calls": [call("get_weather", city="Paris")]},
        {"text": "Now the time.", "calls": [call("get_time", tz="Europe/Paris")]},
        {"text": "Sunny in Paris, and it is noon."},
    )
    result = agent.invoke({"messages": [("user", f"Weather and time in Paris? {mark} {turns}")]})
    messages = result["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai", "tool", "ai"]
    assert messages[2].content == "sunny in Paris" and messages[4].content == "noon in Europe/Paris"
    assert messages[-1].content == "Sunny in Paris, and it is noon."
    prompt = upstream_prompt(mock_upstream, mark)
    assert prompt.count("</function_results>") == 2 and "noon in Europe/Paris" in prompt


# -- stops and the leading space -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("stop", ["\n", ["\n\n", "END"], " "])
def test_whitespace_stops_are_enforced_by_the_proxy(
    client: openai.OpenAI, mock_upstream: Server, stream: bool, stop: Any
) -> None:
    mark = marker()
    said = " First line of text\n\nSecond END third"
    messages: Any = [{"role": "user", "content": f"{mark} " + reply(said)}]
    if stream:
        parts = client.chat.completions.create(model="gpt-4", messages=messages, stop=stop, stream=True)
        chunks = list(parts)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        completion = client.chat.completions.create(model="gpt-4", messages=messages, stop=stop)
        content, finish = completion.choices[0].message.content or "", [completion.choices[0].finish_reason]
    expected = {"\n": "First line of text", " ": "First"}.get(
        stop if isinstance(stop, str) else "", "First line of text"
    )
    assert content == expected
    assert finish == ["stop"]
    sent = upstream_body(mock_upstream, mark).get("stop_sequences", [])
    assert all(s.strip() for s in sent)


@pytest.mark.parametrize("stream", [False, True])
def test_completions_whitespace_stop_keeps_raw_text(client: openai.OpenAI, stream: bool) -> None:
    prompt = "Say " + reply(" one two\nthree")
    if stream:
        text = "".join(
            c.choices[0].text
            for c in client.completions.create(model="gpt-4", prompt=prompt, stop="\n", stream=True)
        )
    else:
        text = client.completions.create(model="gpt-4", prompt=prompt, stop="\n").choices[0].text
    assert text == " one two"


def test_chat_content_has_no_leading_space(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Hi " + reply(" Hello!")}]
    )
    assert completion.choices[0].message.content == "Hello!"


def test_whitespace_stop_closes_the_upstream_stream(
    http: httpx.Client, proxy: Server, mock_upstream: Server
) -> None:
    before = mock_stats(mock_upstream)["cancelled_streams"]
    said = " first line\n" + " more" * 200
    body = {
        "model": "gpt-4",
        "messages": [{"role": "user", "content": reply(said) + "[[mock:token_delay_ms=50]]"}],
        "stop": "\n",
        "stream": True,
    }
    chunks = sse_chunks(http.post(f"{proxy.base_url}/v1/chat/completions", json=body))
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "first line"
    )
    # The answer is complete long before the 10 s the upstream would still generate: it was closed.
    deadline = time.monotonic() + 8
    while mock_stats(mock_upstream)["cancelled_streams"] <= before:
        assert time.monotonic() < deadline, "the upstream stream was not closed at the stop"
        time.sleep(0.05)


def test_whitespace_stop_applies_to_content_not_to_tool_calls(client: openai.OpenAI) -> None:
    turn = {"text": "Checking.", "calls": [call("get_time", tz="UTC")]}
    completion = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "T " + script(turn)}], tools=TOOLS, stop="\n"
    )
    message = completion.choices[0].message
    assert message.content == "Checking."
    assert [c.function.name for c in message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]


def test_responses_api_gets_the_same_tool_calls(client: openai.OpenAI) -> None:
    """The Responses surface renders the same tool-call events as a `function_call` output item."""
    response = client.responses.create(
        model="gpt-4",
        input="Weather? " + script({"calls": [call("get_weather", city="Paris", days=2)]}),
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "parameters": WEATHER["function"]["parameters"],
                "strict": False,
            }
        ],  # type: ignore[index]
    )
    (item,) = [item for item in response.output if item.type == "function_call"]
    assert item.name == "get_weather" and item.call_id.startswith("call_")
    assert json.loads(item.arguments) == {"city": "Paris", "days": 2}


def test_legacy_function_call_stream(http: httpx.Client, proxy: Server) -> None:
    response = http.post(
        f"{proxy.base_url}/v1/chat/completions",
        json={
            "model": "gpt-4",
            "messages": [{"role": "user", "content": "T " + script({"calls": [call("get_time", tz="UTC")]})}],
            "functions": [TIME["function"]],
            "stream": True,
        },
    )
    chunks = sse_chunks(response)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    parts = [d["function_call"] for d in deltas if "function_call" in d]
    assert parts[0] == {"name": "get_time", "arguments": ""}
    assert json.loads("".join(p["arguments"] for p in parts)) == {"tz": "UTC"}
    assert not any("tool_calls" in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


async def test_async_stream_helper_tool_call(async_client: openai.AsyncOpenAI) -> None:
    turn = {"text": "One moment.", "calls": [call("get_time", tz="UTC")]}
    async with async_client.chat.completions.stream(
        model="gpt-4", messages=[{"role": "user", "content": "T " + script(turn)}], tools=TOOLS
    ) as stream:
        done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    assert [json.loads(e.arguments) for e in done] == [{"tz": "UTC"}]
    assert final.choices[0].message.content == "One moment."
