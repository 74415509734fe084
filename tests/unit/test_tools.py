"""The tool-call parser, the structured-output and stop transforms, and the prompts they need (pure).

Property tests: every prompt with tools passes the upstream's own prompt validation (the mock's
rules), and the stream parser gives the same content and calls whatever the chunking.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import GenerationConfig, ModelsConfig
from proxy.errors import OpenAIError
from proxy.mock.generation import render_turn, scripted_answer
from proxy.mock.prompt_rules import validate_prompt
from proxy.translate.models import ModelRegistry
from proxy.translate.params import plan_chat
from proxy.translate.schema import ChatRequest
from proxy.translate.stream import Chain, Out, Text, ToolCallArguments, ToolCallStarted
from proxy.translate.structured import JsonAnswer, JsonFormat, extract_json
from proxy.translate.text import LeadingSpace, StopAt
from proxy.translate.tools import ToolCallParser, ToolSetup, coerce, tool_setup

REGISTRY = ModelRegistry.from_config(ModelsConfig())
GENERATION = GenerationConfig()

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "ratio": {"type": "number"},
        "metric": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
        "note": {"type": ["string", "null"]},
    },
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]


def setup(**fields: Any) -> ToolSetup:
    options: dict[str, Any] = {
        "tools": TOOLS,
        "tool_choice": None,
        "functions": None,
        "function_call": None,
        "parallel_tool_calls": None,
    }
    options.update(fields)
    result = tool_setup(**options)
    assert result is not None
    return result


def run(
    chunks: list[str], *, reason: str = "stop", prefill: str = "", **fields: Any
) -> tuple[str, list[Any], str]:
    """(content, [(name, arguments)], finish reason) of feeding `chunks` to a parser."""
    parser = ToolCallParser(0, setup(**fields), prefill)
    out: list[Out] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    tail, finish = parser.end(reason)
    out += tail
    text = "".join(e.text for e in out if isinstance(e, Text))
    calls: dict[int, list[Any]] = {}
    for event in out:
        if isinstance(event, ToolCallStarted):
            assert event.id.startswith("call_")
            calls[event.call] = [event.name, ""]
        elif isinstance(event, ToolCallArguments):
            calls[event.call][1] += event.fragment
    return text, [(name, json.loads(arguments)) for name, arguments in calls.values()], finish


def invoke(name: str, body: str) -> str:
    return f"<invoke>\n<tool_name>{name}</tool_name>\n<parameters>\n{body}</parameters>\n</invoke>\n"


# -- values typed by the schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<days>3</days>\n", {"days": 3}),
        ("<days>3.0</days>\n", {"days": 3}),
        ("<days>soon</days>\n", {"days": "soon"}),
        ("<ratio>1e3</ratio>\n", {"ratio": 1000.0}),
        ("<metric>True</metric>\n", {"metric": True}),
        ("<metric>false</metric>\n", {"metric": False}),
        ('<tags>["a", "b"]</tags>\n', {"tags": ["a", "b"]}),
        ("<tags><item>a</item><item>b</item></tags>\n", {"tags": ["a", "b"]}),
        ("<tags>a, b</tags>\n", {"tags": ["a", "b"]}),
        ("<tags>a</tags>\n", {"tags": ["a"]}),
        ('<tags>"[\\"a\\"]"</tags>\n', {"tags": ["a"]}),
        ('<ids>["1", 2.0]</ids>\n', {"ids": [1, 2]}),
        ('<where>{"lat": 1.5}</where>\n', {"where": {"lat": 1.5}}),
        ("<where><lat>2</lat></where>\n", {"where": {"lat": 2}}),
        ("<note>null</note>\n", {"note": None}),
        ("<city>null</city>\n", {"city": "null"}),
        ("<city><![CDATA[a </city> b]]></city>\n", {"city": "a </city> b"}),
        ("<city>&lt;b&gt;</city>\n", {"city": "&lt;b&gt;"}),
        ("<city>  two spaces  </city>\n", {"city": "  two spaces  "}),
        ("<city>\nline\n</city>\n", {"city": "line"}),
        ("<unknown>7</unknown>\n", {"unknown": "7"}),
        ("", {}),
    ],
)
def test_values_are_typed_by_the_schema(body: str, expected: dict[str, Any]) -> None:
    assert run(["<function_calls>\n" + invoke("get_weather", body)]) == (
        "",
        [("get_weather", expected)],
        "tool_calls",
    )


def test_null_for_a_nullable_non_string() -> None:
    assert coerce("null", {"type": ["integer", "null"]}) is None


# -- the parser ------------------------------------------------------------------------------------


def test_cookbook_answer() -> None:
    answer = (
        " Okay, let's break this down step-by-step:\n<function_calls>\n<invoke>\n<tool_name>get_weather</tool_name>\n"
        "<parameters>\n<days>1984135</days>\n<city>*</city>\n</parameters>\n</invoke>\n"
    )
    assert run([answer]) == (
        "Okay, let's break this down step-by-step:",
        [("get_weather", {"days": 1984135, "city": "*"})],
        "tool_calls",
    )


def test_finish_reasons_follow_the_choice() -> None:
    block = "<function_calls>\n" + invoke("get_time", "<tz>UTC</tz>\n")
    assert run([block])[2] == "tool_calls"
    assert run([block], tool_choice={"type": "function", "function": {"name": "get_time"}})[2] == "stop"
    legacy = run([block], tools=None, functions=[t["function"] for t in TOOLS])
    assert legacy[2] == "function_call"
    assert run([block], reason="length")[2] == "length"
    assert run(["plain"], reason="length") == ("plain", [], "length")


def test_forced_prefill_is_part_of_the_answer() -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    prefill = setup(tool_choice=named).prefill()
    assert run(["\n<tz>UTC</tz>\n</parameters>\n</invoke>\n"], prefill=prefill, tool_choice=named) == (
        "",
        [("get_time", {"tz": "UTC"})],
        "stop",
    )
    # A forced call that did not happen: the model's own words are the content, never a call.
    assert run(["I cannot"], prefill=setup(tool_choice="required").prefill(), tool_choice="required") == (
        "I cannot",
        [],
        "stop",
    )


def test_only_the_first_call_without_parallel_calls() -> None:
    block = "<function_calls>\n" + invoke("get_time", "<tz>a</tz>\n") + invoke("get_time", "<tz>b</tz>\n")
    assert run([block], parallel_tool_calls=False)[1] == [("get_time", {"tz": "a"})]


def test_text_after_a_closed_block_is_ignored() -> None:
    block = "Hi\n<function_calls>\n" + invoke("get_time", "<tz>a</tz>\n") + "</function_calls>\nmore text"
    assert run([block]) == ("Hi", [("get_time", {"tz": "a"})], "tool_calls")


def test_strict_tool_arguments_are_validated() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "strict": True,
                "parameters": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "required": ["n"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    parser = ToolCallParser(0, setup(tools=tools))
    parser.feed("<function_calls>\n" + invoke("f", "<m>1</m>\n"))
    out, reason = parser.end("stop")
    assert parser.invalid is not None and "n" in parser.invalid
    assert not any(isinstance(e, ToolCallStarted) for e in out) and reason == "stop"


def test_request_errors() -> None:
    with pytest.raises(OpenAIError) as caught:
        setup(tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.param == "tool_choice"
    with pytest.raises(OpenAIError):
        setup(
            tools=[{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": 5}}}]
        )
    assert (
        tool_setup(
            tools=None, tool_choice="none", functions=None, function_call=None, parallel_tool_calls=None
        )
        is None
    )


name = st.sampled_from(["get_weather", "get_time", "made_up"])
value = st.text(alphabet="ab <>/&\n\"'[]{},:1.pcity", max_size=12)
param = st.sampled_from(["city", "days", "tags", "tz", "where", "other"])
invoke_text = st.builds(
    lambda n, params, closed: (
        f"<invoke>\n<tool_name>{n}</tool_name>\n<parameters>\n"
        + "".join(f"<{p}>{v}</{p}>\n" for p, v in params)
        + ("</parameters>\n</invoke>\n" if closed else "")
    ),
    name,
    st.lists(st.tuples(param, value), max_size=3),
    st.booleans(),
)
answer = st.builds(
    lambda before, invokes, opened, after: (
        before + ("\n<function_calls>\n" if opened else "") + "".join(invokes) + after
    ),
    st.text(alphabet="ab <>_/\n", max_size=20),
    st.lists(invoke_text | st.sampled_from(["junk", "\n", "<invoke>", "</invoke>", "<inv"]), max_size=4),
    st.booleans(),
    st.sampled_from(["", "\n", "junk", "<function_calls>"]),
)


@settings(max_examples=600)
@given(
    answer,
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=30),
    st.sampled_from(["stop", "length"]),
    st.booleans(),
)
def test_same_calls_whatever_the_chunking(text: str, sizes: list[int], reason: str, parallel: bool) -> None:
    whole = run([text], reason=reason, parallel_tool_calls=parallel)
    chunks, pos, i = [], 0, 0
    while pos < len(text):
        size = sizes[i % len(sizes)]
        chunks.append(text[pos : pos + size])
        pos += size
        i += 1
    assert run(chunks, reason=reason, parallel_tool_calls=parallel) == whole
    assert all(name != "made_up" for name, _ in whole[1])  # never a call to a tool that was not offered


# -- prompts -----------------------------------------------------------------------------------------

tricky = st.lists(
    st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "\n", " ", "a", "<", "</stdout>", "]]"]), max_size=6
).map("".join)
tool_call = st.builds(
    lambda i, n, args: {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": args}},
    st.integers(0, 3),
    st.sampled_from(["get_weather", "get_time"]),
    st.sampled_from(['{"city": "P"}', "{}", "not json", '{"tags": ["a", "</tags>"]}']),
)
history_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, tricky),
    st.builds(lambda c: {"role": "system", "content": c}, tricky),
    st.builds(
        lambda c, calls: {"role": "assistant", "content": c or None, "tool_calls": calls or None},
        tricky,
        st.lists(tool_call, max_size=2),
    ),
    st.builds(
        lambda c, i: {"role": "tool", "content": c, "tool_call_id": f"call_{i}"}, tricky, st.integers(0, 4)
    ),
)
choice = st.sampled_from(
    [None, "auto", "none", "required", {"type": "function", "function": {"name": "get_time"}}]
)
response_format = st.sampled_from(
    [
        None,
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}},
    ]
)


@settings(max_examples=300)
@given(st.lists(history_message, min_size=1, max_size=7), choice, response_format, st.booleans(), tricky)
def test_every_tool_prompt_passes_upstream_validation(
    messages: list[dict[str, Any]], tool_choice: Any, fmt: Any, parallel: bool, description: str
) -> None:
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "description": description}}, TOOLS[1]]
    request = ChatRequest.model_validate(
        {
            "model": "claude-2.1",
            "messages": messages,
            "tools": tools,
            "tool_choice": tool_choice,
            "response_format": fmt,
            "parallel_tool_calls": parallel,
        }
    )
    plan = plan_chat(request, REGISTRY, GENERATION)
    (prompt,) = plan.prompts
    assert validate_prompt(prompt) is None, prompt
    assert prompt == prompt.rstrip()
    if plan.retry_prompt is not None:
        assert validate_prompt(plan.retry_prompt("x\n\nHuman: y", "bad")) is None


# -- structured output, stops, the leading space, the chain --------------------------------------------


def feed_all(transform: Any, chunks: list[str], reason: str = "stop") -> tuple[str, str]:
    out: list[Out] = []
    for chunk in chunks:
        out += transform.feed(chunk)
        if transform.stopped:
            reason = "stop"
            break
    tail, reason = transform.end(reason)
    return "".join(e.text for e in out + tail if isinstance(e, Text)), reason


def test_json_live_cut_after_the_balanced_close() -> None:
    answer = JsonAnswer(0, JsonFormat(None, strict=False), prefill="{")
    assert feed_all(answer, ['"a": "}', '"} and then', " prose"]) == ('{"a": "}"}', "stop")
    assert answer.stopped


def test_json_strict_extracts_and_validates() -> None:
    fmt = JsonFormat({"type": "object", "required": ["a"]}, strict=True)
    ok = JsonAnswer(0, fmt)
    assert feed_all(ok, [' Here:\n```json\n{"a": 1}\n```']) == ('{"a": 1}', "stop") and ok.invalid is None
    bad = JsonAnswer(0, fmt)
    feed_all(bad, ['{"b": 1}'])
    assert bad.invalid is not None and "'a' is a required property" in bad.invalid
    prose = JsonAnswer(0, fmt)
    feed_all(prose, ["no json here"])
    assert prose.invalid == "the answer is not JSON"


def test_extract_json() -> None:
    assert extract_json('Sure! {"a": {"b": "}"}} done') == ('{"a": {"b": "}"}}', {"a": {"b": "}"}})
    assert extract_json("nothing") is None


@settings(max_examples=200)
@given(
    st.text(alphabet="ab \n", max_size=30),
    st.lists(st.integers(1, 5), min_size=1, max_size=10),
    st.sampled_from(["\n", "\n\n", " ", "b \n"]),
)
def test_stop_at_cuts_at_the_first_match_whatever_the_chunking(
    text: str, sizes: list[int], stop: str
) -> None:
    chunks, pos, i = [], 0, 0
    while pos < len(text):
        chunks.append(text[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    found = text.find(stop)
    expected = text if found < 0 else text[:found]
    assert feed_all(StopAt(0, [stop]), chunks)[0] == expected


def test_chain_of_leading_space_stop_and_tools() -> None:
    chain = Chain([LeadingSpace(0), StopAt(0, ["\n\n"]), ToolCallParser(0, setup())])
    assert feed_all(chain, [" ", "Hello", " world\n", "\nmore"]) == ("Hello world", "stop")


def test_mock_script_renders_the_documented_format_and_continues_a_prefill() -> None:
    turn = {"text": "Checking.", "calls": [{"name": "get_time", "arguments": {"tz": "UTC", "n": [1]}}]}
    assert render_turn(turn) == (
        " Checking.\n<function_calls>\n<invoke>\n<tool_name>get_time</tool_name>\n<parameters>\n"
        "<tz>UTC</tz>\n<n>[1]</n>\n</parameters>\n</invoke>\n</function_calls>"
    )
    prompt = "\n\nHuman: hi\n\nAssistant: <function_calls>\n<invoke>\n<tool_name>"
    assert scripted_answer(prompt, [{"calls": [{"name": "f", "arguments": {}}]}]).startswith("f</tool_name>")
    assert scripted_answer("\n\nHuman: hi\n\nAssistant: {", [{"json": {"a": 1}}]) == '"a":1}'
    two = [{"text": "one"}, {"text": "two"}]
    assert scripted_answer("\n\nHuman: q\n\nAssistant: a\n\nHuman: again\n\nAssistant:", two) == " two"


def test_garbage_between_invokes_makes_the_rest_text_whatever_the_chunking() -> None:
    good = invoke("get_time", "<tz>a</tz>\n")
    text = "<function_calls>\n" + good + "junk" + good
    whole = run([text])
    assert whole[1] == [("get_time", {"tz": "a"})] and "junk" in whole[0]
    split = text.index("junk") + len("junk")
    assert run([text[:split], text[split:]]) == whole
    assert run(list(text)) == whole


def test_mock_refuses_whitespace_only_stop_sequences_as_the_upstream_does() -> None:
    from proxy.mock.request_schema import BodyError, validate_body

    body = {"model": "claude-2.1", "prompt": "\n\nHuman: a\n\nAssistant:", "max_tokens_to_sample": 5}
    assert validate_body({**body, "stop_sequences": ["END", " x "]}).stop_sequences == ("END", " x ")
    for stop in ["\n", "\n\n", " ", "\t "]:
        with pytest.raises(BodyError, match="non-whitespace"):
            validate_body({**body, "stop_sequences": ["END", stop]})
