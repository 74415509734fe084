"""Real clients of `/v1/responses`, against the real proxy and the mock upstream over 127.0.0.1.

- the official `openai` Python SDK: a function-tool round trip (`function_call` item out,
  `function_call_output` item in, final answer), plain and through the `responses.stream()` helper
  (`response.function_call_arguments.delta/.done`), and `previous_response_id` across a tool round;
- LangChain's `ChatOpenAI(use_responses_api=True)` with `bind_tools`;
- the `openai-agents` SDK with its default model (`OpenAIResponsesModel`): `Runner.run` and
  `Runner.run_streamed` with a function tool, to a final answer;
- the `openai-agents` structured output (`output_type`) and response chaining (`auto_previous_response_id`);
- the Vercel AI SDK's default OpenAI provider (`tests/js/`, from npm, installed by `scripts/setup.sh
  test`): `generateText`, `streamText`, `generateObject` and tool calls run to a final answer, by
  `node`; with `store` on it sends earlier assistant messages as `item_reference` items, which the
  proxy resolves;
- Codex (`codex exec`, npm `@openai/codex`) with a custom provider (`wire_api = "responses"`): its
  `exec_command` tool run, then a final answer, and a file made with its freeform `apply_patch` tool;
  Codex sends `namespace` tools, which the proxy flattens.

The mock upstream plays a scripted model (`[[mock:script=…]]`, one answer per turn of the
conversation, in Anthropic's documented legacy tool-use format), so each client runs a real tool loop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import agents
import httpx
import openai
import pytest
from agents.models import _openai_shared as agents_shared
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import GOOD_UPSTREAM_KEY
from tests.support.servers import Server, mock_requests
from tests.support.upstream import marker

MODEL = "claude-2.1"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def script(*turns: dict[str, Any]) -> str:
    """A scripted model: one answer per turn of the conversation."""
    value = json.dumps(list(turns))
    assert "]]" not in value
    return f"[[mock:script={value} ]]"


def weather_script(city: str, answer: str) -> str:
    return script({"calls": [{"name": "get_weather", "arguments": {"city": city}}]}, {"text": answer})


def upstream_prompt(mock: Server, mark: str) -> str:
    """The last prompt the mock received that contains `mark`."""
    for record in reversed(mock_requests(mock)):
        body = record["body"]
        if isinstance(body, dict) and mark in str(body.get("prompt", "")):
            return str(body["prompt"])
    raise AssertionError(f"no upstream request with {mark}")


@pytest.fixture
def sdk(proxy: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="k", max_retries=0, timeout=30) as client:
        yield client


# --- the official openai SDK ---------------------------------------------------------------------


def test_sdk_function_tool_round_trip(sdk: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    inputs: list[Any] = [
        {"role": "user", "content": f"Weather in Paris? {mark} " + weather_script("Paris", "Sunny, 21 C.")}
    ]
    first = sdk.responses.create(model=MODEL, input=inputs, tools=[WEATHER])  # type: ignore[arg-type]
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].call_id.startswith("call_") and calls[0].id and calls[0].id.startswith("fc_")
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert "<function_calls>" not in first.output_text
    # The client runs the tool and sends everything back, as OpenAI's function-calling guide does.
    inputs += [*first.output, {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 C"}]
    final = sdk.responses.create(model=MODEL, input=inputs, tools=[WEATHER])  # type: ignore[arg-type]
    assert final.status == "completed" and final.output_text.strip() == "Sunny, 21 C."
    assert [item.type for item in final.output] == ["message"]
    prompt = upstream_prompt(mock_upstream, mark)
    assert "<tool_name>get_weather</tool_name>" in prompt and "21 C" in prompt


def test_sdk_stream_helper_reports_the_call_arguments(sdk: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    inputs: list[Any] = [
        {"role": "user", "content": f"Weather in Oslo? {mark} " + weather_script("Oslo", "Snow.")}
    ]
    with sdk.responses.stream(model=MODEL, input=inputs, tools=[WEATHER]) as stream:  # type: ignore[arg-type]
        events = list(stream)
        first = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas and "".join(deltas) == done.arguments and json.loads(done.arguments) == {"city": "Oslo"}
    (added,) = [
        e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"
    ]
    assert kinds.index("response.output_item.added") < kinds.index("response.function_call_arguments.delta")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.id == added.item.id and call.arguments == done.arguments and call.status == "completed"
    inputs += [*first.output, {"type": "function_call_output", "call_id": call.call_id, "output": "-3 C"}]
    with sdk.responses.stream(model=MODEL, input=inputs, tools=[WEATHER]) as stream:  # type: ignore[arg-type]
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text.strip() == "Snow." == final.output_text.strip()
    assert "-3 C" in upstream_prompt(mock_upstream, mark)


def test_sdk_previous_response_id_across_a_tool_round(sdk: openai.OpenAI, mock_upstream: Server) -> None:
    mark = marker()
    first = sdk.responses.create(
        model=MODEL,
        instructions="Use the tools.",
        input=f"Weather in Rome? {mark} " + weather_script("Rome", "Warm in Rome."),
        tools=[WEATHER],  # type: ignore[list-item]
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    final = sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "30 C"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert final.output_text.strip() == "Warm in Rome." and final.previous_response_id == first.id
    prompt = upstream_prompt(mock_upstream, "30 C")
    assert mark in prompt and "<tool_name>get_weather</tool_name>" in prompt
    assert "Use the tools." not in prompt  # instructions are not carried over, as on OpenAI
    items = sdk.responses.input_items.list(final.id, order="asc")
    assert [item.type for item in items.data] == ["function_call_output"]


def test_sdk_namespace_tools(sdk: openai.OpenAI, mock_upstream: Server) -> None:
    """A `namespace` tool (Codex sends its sub-agent tools so): the model sees `crm__lookup`; the call
    comes back as `name` and `namespace`, and goes upstream under the flat name again."""
    crm = {
        "type": "namespace",
        "name": "crm",
        "description": "Customer records.",
        "tools": [{**WEATHER, "name": "lookup", "description": "Find a customer."}],
    }
    mark = marker()
    turns = script({"calls": [{"name": "crm__lookup", "arguments": {"city": "Bern"}}]}, {"text": "Found."})
    inputs: list[Any] = [{"role": "user", "content": f"Who? {mark} {turns}"}]
    with sdk.responses.stream(model=MODEL, input=inputs, tools=[crm]) as stream:  # type: ignore[list-item]
        added = [e.item for e in stream if e.type == "response.output_item.added"]
        first = stream.get_final_response()
    (call,) = first.output
    assert call.type == "function_call" and (call.name, call.namespace) == ("lookup", "crm")
    assert added[0].type == "function_call" and added[0].namespace == "crm"
    inputs += [*first.output, {"type": "function_call_output", "call_id": call.call_id, "output": "Ada"}]
    final = sdk.responses.create(model=MODEL, input=inputs, tools=[crm])  # type: ignore[list-item]
    assert final.output_text.strip() == "Found."
    prompt = upstream_prompt(mock_upstream, mark)
    assert prompt.count("<tool_name>crm__lookup</tool_name>") == 3  # described, called, its result
    assert "<tool_name>lookup</tool_name>" not in prompt


def test_langchain_with_use_responses_api(proxy: Server, mock_upstream: Server) -> None:
    """LangChain's `ChatOpenAI(use_responses_api=True)`: `bind_tools`, a tool call, its result, an answer."""
    chat = ChatOpenAI(
        base_url=f"{proxy.base_url}/v1",
        api_key="k",
        model=MODEL,
        use_responses_api=True,
        max_retries=0,  # type: ignore[arg-type]
    )
    mark = marker()
    messages: list[Any] = [HumanMessage(f"Weather in Graz? {mark} " + weather_script("Graz", "Graz: 12 C."))]
    with_tools = chat.bind_tools([WEATHER])
    first = with_tools.invoke(messages)
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Graz"}
    messages += [first, ToolMessage("12 C", tool_call_id=call["id"])]
    final = with_tools.invoke(messages)
    assert final.text.strip() == "Graz: 12 C."
    assert "12 C" in upstream_prompt(mock_upstream, mark)
    streamed = "".join(chunk.text for chunk in with_tools.stream(messages))
    assert streamed.strip() == "Graz: 12 C."


# --- the openai-agents SDK -------------------------------------------------------------------------


class Recorder:
    """What a client sent: each request's method, path and JSON body (an httpx event hook)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, request.url.path, body))


@pytest.fixture
async def agents_client(proxy: Server) -> AsyncIterator[Recorder]:
    """The Agents SDK's default client pointed at the proxy (restored afterwards), tracing off."""
    recorder = Recorder()
    http_client = httpx.AsyncClient(event_hooks={"request": [recorder]}, timeout=30)
    client = openai.AsyncOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key="k", max_retries=0, http_client=http_client
    )
    previous = agents_shared.get_default_openai_client()
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_tracing_disabled(True)
    try:
        yield recorder
    finally:
        agents_shared.set_default_openai_client(previous)  # type: ignore[arg-type]
        await client.close()


def forecaster(seen: list[str], answer: str, city: str) -> agents.Agent[Any]:
    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: City name.
        """
        seen.append(city)
        return f"{city}: 18 C"

    return agents.Agent(
        name="forecaster",
        instructions="Answer weather questions with the tool. " + weather_script(city, answer),
        model=MODEL,
        tools=[get_weather],
    )


async def test_agents_sdk_runs_a_function_tool_to_a_final_answer(
    agents_client: Recorder, mock_upstream: Server
) -> None:
    assert isinstance(agents.OpenAIProvider().get_model(MODEL), agents.OpenAIResponsesModel)
    mark, seen = marker(), []
    agent = forecaster(seen, "Lisbon is mild, 18 C.", "Lisbon")
    result = await agents.Runner.run(agent, f"Weather in Lisbon? {mark}")
    assert result.final_output == "Lisbon is mild, 18 C."
    assert seen == ["Lisbon"]
    assert [(method, path) for method, path, _ in agents_client.requests] == [("POST", "/v1/responses")] * 2
    second = agents_client.requests[1][2]
    kinds = [item.get("type", "message") for item in second["input"]]
    assert kinds[-2:] == ["function_call", "function_call_output"]
    assert "Lisbon: 18 C" in upstream_prompt(mock_upstream, mark)


async def test_agents_sdk_streamed_run(agents_client: Recorder) -> None:
    mark, seen = marker(), []
    agent = forecaster(seen, "Bergen: rain.", "Bergen")
    result = agents.Runner.run_streamed(agent, f"Weather in Bergen? {mark}")
    kinds, text = [], []
    async for event in result.stream_events():
        if event.type == "raw_response_event":
            kinds.append(event.data.type)
            if event.data.type == "response.output_text.delta":
                text.append(event.data.delta)
        elif event.type == "run_item_stream_event":
            kinds.append(event.name)
    assert result.is_complete and result.final_output == "Bergen: rain."
    assert seen == ["Bergen"]
    assert "response.function_call_arguments.delta" in kinds and "tool_called" in kinds
    assert "tool_output" in kinds and "".join(text).strip() == "Bergen: rain."
    assert kinds.count("response.completed") == 2
    assert all(body.get("stream") is True for _, _, body in agents_client.requests)


async def test_agents_sdk_chains_responses_by_id(agents_client: Recorder, mock_upstream: Server) -> None:
    """`auto_previous_response_id`: after the first turn the SDK sends only new items and the id."""
    mark, seen = marker(), []
    agent = forecaster(seen, "Turku: fog.", "Turku")
    result = await agents.Runner.run(agent, f"Weather in Turku? {mark}", auto_previous_response_id=True)
    assert result.final_output == "Turku: fog." and seen == ["Turku"]
    (_, _, first), (_, _, second) = agents_client.requests
    assert "previous_response_id" not in first
    assert second["previous_response_id"] == result.raw_responses[0].response_id
    assert [item["type"] for item in second["input"]] == ["function_call_output"]
    assert "Turku: 18 C" in upstream_prompt(mock_upstream, mark)


class Forecast(BaseModel):
    city: str
    celsius: int


async def test_agents_sdk_structured_output(agents_client: Recorder) -> None:
    """`output_type`: the SDK asks for `text.format` `json_schema` (strict) and parses the answer."""
    agent = agents.Agent(
        name="structured",
        instructions="Answer as JSON. " + script({"json": {"city": "Oslo", "celsius": -3}}),
        model=MODEL,
        output_type=Forecast,
    )
    result = await agents.Runner.run(agent, f"Weather in Oslo? {marker()}")
    assert result.final_output == Forecast(city="Oslo", celsius=-3)
    (_, _, body), *_ = agents_client.requests
    assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["strict"] is True


# --- item_reference (what the AI SDK sends for earlier assistant messages while `store` is on) ----


def test_item_reference_names_a_stored_item(passthrough_proxy: Server, keyed_mock: Server) -> None:
    """Only the owner's stored items resolve (pass-through mode: each client key owns its own)."""
    mark = marker()
    with httpx.Client(base_url=f"{passthrough_proxy.base_url}/v1", timeout=30) as http:
        headers = {"authorization": f"Bearer {GOOD_UPSTREAM_KEY}"}
        first = http.post("/responses", headers=headers, json={"model": MODEL, "input": f"one {mark}"}).json()
        (message,) = first["output"]
        body = {
            "model": MODEL,
            "input": [
                {"role": "user", "content": f"one {mark}"},
                {"type": "item_reference", "id": message["id"]},
                {"role": "user", "content": f"two {mark}"},
            ],
        }
        second = http.post("/responses", headers=headers, json=body)
        assert second.status_code == 200, second.text
        prompt = upstream_prompt(keyed_mock, f"two {mark}")
        assert message["content"][0]["text"].strip() in prompt
        items = http.get(f"/responses/{second.json()['id']}/input_items?order=asc", headers=headers).json()
        assert items["data"][1]["id"] == message["id"] and items["data"][1]["type"] == "message"
        for key, item in [
            ("other-key", message["id"]),
            (GOOD_UPSTREAM_KEY, "msg_x_0"),
            (GOOD_UPSTREAM_KEY, "x"),
        ]:
            missing = {**body, "input": [{"type": "item_reference", "id": item}]}
            error = http.post("/responses", headers={"authorization": f"Bearer {key}"}, json=missing)
            assert error.status_code == 400 and error.json()["error"]["code"] == "item_not_found"
            assert error.json()["error"]["param"] == "input[0].id"


# --- the Vercel AI SDK (npm) -------------------------------------------------------------------


JS = Path(__file__).parents[1] / "js"


def test_vercel_ai_sdk_default_provider(proxy: Server, mock_upstream: Server) -> None:
    """`generateText`, `streamText` and tool calls (plain and streamed, with `stopWhen`), by node."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.fail(
            "node and npm (Node 20 or newer) are needed: install them, then bash scripts/setup.sh test"
        )
    installed = JS / "node_modules" / ".installed-lock.json"
    if not installed.exists() or installed.read_bytes() != (JS / "package-lock.json").read_bytes():
        pytest.fail("tests/js/node_modules is missing or stale: run bash scripts/setup.sh test")
    mark = marker()
    done = subprocess.run(
        [node, str(JS / "ai_sdk.mjs"), f"{proxy.base_url}/v1", mark],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=JS,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["provider"] == "openai.responses"
    for name in ("generateText", "streamText", "toolCall", "streamToolCall", "generateObject"):
        assert "error" not in out[name], out[name]["error"]
        assert {(r["method"], r["path"]) for r in out[name]["requests"]} == {("POST", "/v1/responses")}

    generated = out["generateText"]
    assert generated["text"].endswith(f"Hello {mark} generate") and generated["finishReason"] == "stop"
    assert generated["id"].startswith("resp_") and generated["usage"]["totalTokens"] > 0
    assert generated["requests"][0]["body"]["input"][0] == {"role": "system", "content": "Be brief."}

    streamed = out["streamText"]
    assert len(streamed["deltas"]) > 1 and "".join(streamed["deltas"]) == streamed["text"]
    assert streamed["text"].endswith(f"Hello {mark} stream") and streamed["finishReason"] == "stop"
    assert streamed["requests"][0]["body"]["stream"] is True and streamed["usage"]["outputTokens"] > 0

    tool = out["toolCall"]
    assert tool["text"] == "Paris: 19 C." and tool["finishReason"] == "stop"
    assert [s["finishReason"] for s in tool["steps"]] == ["tool-calls", "stop"]
    assert tool["steps"][0]["toolCalls"] == [{"toolName": "weather", "input": {"city": "Paris"}}]
    assert [item.get("type") for item in tool["requests"][1]["body"]["input"][-2:]] == [
        "function_call",
        "function_call_output",
    ]
    assert '"temperature":"19 C"' in upstream_prompt(mock_upstream, f"{mark} tool")

    streamed_tool = out["streamToolCall"]
    assert streamed_tool["text"] == "Nice: 19 C." and streamed_tool["finishReason"] == "stop"
    assert streamed_tool["seen"] == ["Paris", "Nice"]
    parts = streamed_tool["parts"]
    assert parts.index("tool-input-delta") < parts.index("tool-call") < parts.index("tool-result")
    assert parts.count("finish-step") == 2 and parts[-1] == "finish"
    # Text before the call comes back as an item_reference to the stored message item.
    second = streamed_tool["requests"][1]["body"]["input"]
    assert [item.get("type") for item in second[-3:]] == [
        "item_reference",
        "function_call",
        "function_call_output",
    ]
    assert "Checking." in upstream_prompt(mock_upstream, f"{mark} streamtool")

    structured = out["generateObject"]
    assert structured["object"] == {"city": "Lyon", "celsius": 17} and structured["finishReason"] == "stop"
    text_format = structured["requests"][0]["body"]["text"]["format"]
    assert text_format["type"] == "json_schema" and text_format["strict"] is True


# --- Codex (npm @openai/codex, a native binary) ----------------------------------------------------

CODEX_CONFIG = """\
model = "claude-2.1"
model_provider = "proxy"
check_for_update_on_startup = false
web_search = "disabled"  # a tool OpenAI hosts: the proxy answers it with a 400

[model_providers.proxy]
name = "claude-legacy-openai-proxy"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "PROXY_TEST_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]  # nothing that reaches beyond 127.0.0.1 (the plugin marketplace clones from github.com)
plugins = false
remote_plugin = false
apps = false
in_app_updates = false
"""


def codex_command() -> list[str]:
    node = shutil.which("node")
    codex = JS / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
    if node is None or not codex.exists():
        pytest.fail("tests/js/node_modules has no @openai/codex: run bash scripts/setup.sh test")
    return [node, str(codex)]


def run_codex(proxy: Server, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """`codex <args>` with its home (config.toml) in `tmp_path`; the JSON lines it printed."""
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(CODEX_CONFIG.format(base_url=proxy.base_url))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home), "PROXY_TEST_KEY": "k"}
    done = subprocess.run(
        [*codex_command(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def codex_exec(
    proxy: Server, tmp_path: Path, prompt: str, *config: str
) -> tuple[list[str], list[dict[str, Any]]]:
    """`codex exec --json` in a fresh work directory: the event types, and the completed items."""
    work = tmp_path / "work"
    work.mkdir()
    # The sandbox is Codex's business, not the wire's: the only commands are the test's own.
    flags = [
        "--json",
        "--ephemeral",
        "--skip-git-repo-check",
        "--sandbox",
        "danger-full-access",
        "-C",
        str(work),
    ]
    events = run_codex(proxy, tmp_path, "exec", *flags, *config, prompt)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "thread.started" and kinds[-1] == "turn.completed" and "turn.failed" not in kinds
    assert events[-1]["usage"]["input_tokens"] > 0
    return kinds, [event["item"] for event in events if event["type"] == "item.completed"]


def test_codex_exec_runs_a_tool_round(proxy: Server, mock_upstream: Server, tmp_path: Path) -> None:
    """`codex exec` with a custom provider (`wire_api = "responses"`): its shell tool, then an answer."""
    mark = marker()
    turns = script(
        {
            "text": "Running it.",
            "calls": [{"name": "exec_command", "arguments": {"cmd": f"echo ran-{mark}"}}],
        },
        {"text": "The command printed its line."},
    )
    _, items = codex_exec(proxy, tmp_path, f"Run the command. {turns}")
    messages = [item["text"] for item in items if item["type"] == "agent_message"]
    assert messages == ["Running it.", "The command printed its line."]
    (command,) = [item for item in items if item["type"] == "command_execution"]
    assert command["exit_code"] == 0 and f"ran-{mark}" in command["aggregated_output"]
    # Codex sent the command's output back as a function_call_output: it reached the upstream prompt.
    prompt = upstream_prompt(mock_upstream, f"ran-{mark}\n")
    assert "<tool_name>exec_command</tool_name>" in prompt and "<function_results>" in prompt


def test_codex_exec_edits_a_file_with_its_freeform_apply_patch_tool(
    proxy: Server, mock_upstream: Server, tmp_path: Path
) -> None:
    """With model metadata that asks for it (a `model_catalog_json` entry made from Codex's bundled one),
    Codex sends `apply_patch` as a freeform `custom` tool; its call comes back as a `custom_tool_call`
    whose input is the raw patch, and Codex applies it."""
    bundled = run_codex(proxy, tmp_path, "debug", "models", "--bundled")[0]["models"]
    entry = next(
        m for m in bundled if m.get("apply_patch_tool_type") == "freeform" and not m.get("tool_mode")
    )
    entry.update(slug=MODEL, display_name=MODEL, context_window=100_000, max_context_window=100_000)
    entry["supports_search_tool"] = False  # `tool_search` is a tool OpenAI hosts
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": [entry]}))
    mark = marker()
    patch = f"*** Begin Patch\n*** Add File: hello.txt\n+hello {mark}\n*** End Patch\n"
    turns = script(
        {"text": "Creating it.", "calls": [{"name": "apply_patch", "arguments": {"input": patch}}]},
        {"text": "Done."},
    )
    _, items = codex_exec(
        proxy, tmp_path, f"Create the file. {turns}", "-c", f"model_catalog_json={json.dumps(str(catalog))}"
    )
    assert [item["text"] for item in items if item["type"] == "agent_message"] == ["Creating it.", "Done."]
    (change,) = [item for item in items if item["type"] == "file_change"]
    assert change["status"] == "completed" and change["changes"][0]["kind"] == "add"
    assert (tmp_path / "work" / "hello.txt").read_text() == f"hello {mark}\n"
    prompt = upstream_prompt(mock_upstream, f"hello {mark}")
    assert "<tool_name>apply_patch</tool_name>" in prompt and "<function_results>" in prompt
