"""Output events → the Responses API: a `response` object, or its SSE event sequence.

| output event | events (each `event: <type>` + `data:` with `sequence_number`) | response object |
|---|---|---|
| `Opened` | `response.created`, `response.in_progress` (status `in_progress`, `output: []`) | |
| first `Text` of a message | `response.output_item.added` (message), `response.content_part.added` (output_text) | a message item |
| `Text` | `response.output_text.delta` (`logprobs: []`) | appended to its `output_text` part |
| `ToolCallStarted` | the open message is done (below); `response.output_item.added` (`function_call`, `call_id`) | a `function_call` item |
| `ToolCallArguments` | `response.function_call_arguments.delta` | appended to `arguments` |
| end of a message | `response.output_text.done`, `response.content_part.done`, `response.output_item.done` | status `completed` |
| end of a call | `response.function_call_arguments.done`, `response.output_item.done` | status `completed` |
| `Finished` `length` | (items end with status `incomplete`) | status `incomplete`, `incomplete_details.reason: max_output_tokens` |
| `Usage` | | `usage` (`input_tokens`, `output_tokens`, `total_tokens`, details) |
| `Done` | `response.completed`, or `response.incomplete`, with the whole `output` | |
| `Failed` | `response.failed` whose response carries `error` (`code` below) | |
| `KeepAlive` | an SSE comment | |

Item ids carry their response's id (`msg_<response>_<index>`, `item_id`), so an `item_reference` input
item can be found in the stored response it names (`proxy.translate.responses_request.response_of_item`).

A call to a `custom` (freeform) tool travels as a function with one string parameter; it comes back as
a `custom_tool_call` item with that parameter as its `input`, announced once its arguments are whole
(`response.custom_tool_call_input.done`). A tool of a `namespace` tool travels under its flat name
(`namespace__name`, `proxy.translate.responses_request.flat_name`); its call comes back with `name` and
`namespace` apart, as OpenAI sends it.

| upstream failure type | `error.code` |
|---|---|
| `rate_limit_error` | `rate_limit_exceeded` |
| `billing_error` | `insufficient_quota` |
| `invalid_request_error` with a too-long prompt | `context_length_exceeded` |
| anything else | `server_error` |

No `data: [DONE]`: the Responses stream ends with its terminal event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from proxy.translate.render import KEEP_ALIVE_LINE
from proxy.translate.stream import (
    Done,
    Failed,
    Finished,
    KeepAlive,
    Opened,
    Out,
    Text,
    ToolCallArguments,
    ToolCallStarted,
    Usage,
    new_id,
)

CUSTOM_INPUT = "input"

_ERROR_CODES = {"rate_limit_error": "rate_limit_exceeded", "billing_error": "insufficient_quota"}


def item_id(prefix: str, response_id: str, key: str) -> str:
    """An item's id: `prefix`, the response's id without `resp_`, `_`, then `key` (no `_` in it)."""
    return f"{prefix}{response_id.removeprefix('resp_')}_{key}"


def error_code(upstream_type: str, message: str) -> str:
    if upstream_type == "invalid_request_error" and "prompt is too long" in message:
        return "context_length_exceeded"
    return _ERROR_CODES.get(upstream_type, "server_error")


def response_usage(totals: dict[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": totals["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": totals["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": totals["total_tokens"],
    }


class ResponseState:
    """The response being built, and the events that announce each step of it.

    `settings` are the request's echoed fields (instructions, tools, tool_choice, metadata, …);
    `custom_tools` names the tools that are freeform `custom` tools; `namespaced` maps the flat name
    of each tool of a `namespace` tool to its (namespace, name).
    """

    def __init__(
        self,
        model: str,
        *,
        settings: dict[str, Any],
        custom_tools: frozenset[str] = frozenset(),
        namespaced: Mapping[str, tuple[str, str]] | None = None,
        id: str | None = None,
    ) -> None:
        self.id = id or new_id("resp_")
        self.model = model
        self.created_at = int(time.time())
        self.settings = settings
        self.custom_tools = custom_tools
        self.namespaced = namespaced or {}
        self._tool: dict[int, str] = {}  # output index → the call's flat tool name
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.incomplete_reason: str | None = None
        self.error: dict[str, str] | None = None
        self.usage: dict[str, Any] | None = None
        self._message: int | None = None  # output index of the open message item
        self._calls: dict[int, int] = {}  # call number → output index of its item
        self._arguments: dict[int, list[str]] = {}  # output index → argument fragments

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "error": self.error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.incomplete_reason is not None else None
            ),
            "model": self.model,
            "output": self.output,
            "usage": self.usage,
            **self.settings,
        }

    def _item_done(self, index: int, status: str) -> list[tuple[str, dict[str, Any]]]:
        item = self.output[index]
        item["status"] = status
        if item["type"] == "message":
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            return [
                ("response.output_text.done", {**common, "text": part["text"], "logprobs": []}),
                ("response.content_part.done", {**common, "part": part}),
                ("response.output_item.done", {"output_index": index, "item": item}),
            ]
        arguments = "".join(self._arguments.pop(index, []))
        if self._tool[index] in self.custom_tools:
            return self._custom_done(index, arguments, status)
        item["arguments"] = arguments
        return [
            (
                "response.function_call_arguments.done",
                {"item_id": item["id"], "output_index": index, "name": item["name"], "arguments": arguments},
            ),
            ("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _custom_done(self, index: int, arguments: str, status: str) -> list[tuple[str, dict[str, Any]]]:
        """A custom tool's call, announced whole: its single string parameter is the call's input."""
        try:
            parsed = orjson.loads(arguments)
            text = parsed[CUSTOM_INPUT] if isinstance(parsed, dict) else arguments
        except orjson.JSONDecodeError:
            text = arguments
        text = text if isinstance(text, str) else orjson.dumps(text).decode()
        old = self.output[index]
        item = {
            "id": "ctc_" + old["id"][3:],
            "type": "custom_tool_call",
            "status": status,
            "call_id": old["call_id"],
            "name": old["name"],
            "input": text,
        }
        if "namespace" in old:
            item["namespace"] = old["namespace"]
        self.output[index] = item
        return [
            ("response.output_item.added", {"output_index": index, "item": {**item, "input": ""}}),
            (
                "response.custom_tool_call_input.done",
                {"item_id": item["id"], "output_index": index, "input": text},
            ),
            ("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _close_open(self, status: str) -> list[tuple[str, dict[str, Any]]]:
        events = []
        if self._message is not None:
            events += self._item_done(self._message, status)
            self._message = None
        for index in list(self._arguments):
            events += self._item_done(index, status)
        return events

    def step(self, event: Out) -> list[tuple[str, dict[str, Any]]]:
        """The Responses events for one output event (type and payload, without sequence numbers)."""
        if isinstance(event, Text):
            if not event.text:
                return []
            events = []
            if self._message is None:
                self._message = len(self.output)
                item: dict[str, Any] = {
                    "id": item_id("msg_", self.id, str(self._message)),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
                self.output.append(item)
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                events.append(
                    (
                        "response.output_item.added",
                        {"output_index": self._message, "item": {**item, "content": []}},
                    )
                )
                item["content"].append(part)
                events.append(
                    (
                        "response.content_part.added",
                        {
                            "item_id": item["id"],
                            "output_index": self._message,
                            "content_index": 0,
                            "part": dict(part),
                        },
                    )
                )
            item = self.output[self._message]
            item["content"][0]["text"] += event.text
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "item_id": item["id"],
                        "output_index": self._message,
                        "content_index": 0,
                        "delta": event.text,
                        "logprobs": [],
                    },
                )
            )
            return events
        if isinstance(event, ToolCallStarted):
            events = self._close_open("completed") if self._message is not None else []
            index = len(self.output)
            self._calls[event.call] = index
            self._arguments[index] = []
            call: dict[str, Any] = {
                "id": item_id("fc_", self.id, str(index)),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": event.id,
                "name": event.name,
            }
            if event.name in self.namespaced:
                call["namespace"], call["name"] = self.namespaced[event.name]
            self._tool[index] = event.name
            self.output.append(call)
            if event.name not in self.custom_tools:
                events.append(("response.output_item.added", {"output_index": index, "item": dict(call)}))
            return events
        if isinstance(event, ToolCallArguments):
            index = self._calls[event.call]
            self._arguments[index].append(event.fragment)
            item = self.output[index]
            if self._tool[index] in self.custom_tools:
                return []
            return [
                (
                    "response.function_call_arguments.delta",
                    {"item_id": item["id"], "output_index": index, "delta": event.fragment},
                )
            ]
        if isinstance(event, Finished):
            if event.reason == "length":
                self.incomplete_reason = "max_output_tokens"
            return self._close_open("incomplete" if event.reason == "length" else "completed")
        if isinstance(event, Usage):
            self.usage = response_usage(event.totals)
            return []
        if isinstance(event, Done):
            if self.status == "failed":
                return []
            self.status = "incomplete" if self.incomplete_reason else "completed"
            return [(f"response.{self.status}", {"response": self.response()})]
        if isinstance(event, Failed):
            self._close_open("incomplete")
            self.status = "failed"
            self.error = {"code": error_code(event.code, event.message), "message": event.message}
            return [("response.failed", {"response": self.response()})]
        if isinstance(event, Opened):
            snapshot = self.response()
            return [
                ("response.created", {"response": snapshot}),
                ("response.in_progress", {"response": snapshot}),
            ]
        return []


class ResponseEvents:
    """Renders one Responses stream: `event:` lines, `sequence_number` on every event."""

    def __init__(self, state: ResponseState) -> None:
        self.state = state
        self._sequence = 0

    def render(self, events: Sequence[Out]) -> bytes:
        parts: list[bytes] = []
        for event in events:
            if isinstance(event, KeepAlive):
                parts.append(KEEP_ALIVE_LINE)
                continue
            for kind, payload in self.state.step(event):
                data = orjson.dumps({"type": kind, "sequence_number": self._sequence, **payload})
                self._sequence += 1
                parts.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
        return b"".join(parts)


class ResponseBody:
    """Collects a non-streamed response."""

    def __init__(self, state: ResponseState) -> None:
        self.state = state

    def add(self, events: Sequence[Out]) -> None:
        for event in events:
            self.state.step(event)

    def body(self) -> dict[str, Any]:
        return self.state.response()
