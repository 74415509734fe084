"""Output events → OpenAI chat completions: `chat.completion.chunk` SSE events, or one `chat.completion`.

| output event | stream (`data:` lines) | body |
|---|---|---|
| `Opened` | a chunk with `delta: {"role": "assistant", "content": "", "refusal": null}` (`content: null` when tools are offered, as OpenAI opens a tool-call stream) | the choice |
| `Text` | a chunk with `delta: {"content": …}` | appended to `message.content` |
| `ToolCallStarted` | `delta: {"tool_calls": [{"index", "id", "type": "function", "function": {"name", "arguments": ""}}]}` | a `message.tool_calls` entry |
| `ToolCallArguments` | `delta: {"tool_calls": [{"index", "function": {"arguments": …}}]}` | appended to its `arguments` |
| (legacy `functions`) | `delta: {"function_call": {"name", "arguments"}}` instead | `message.function_call` (the first call) |
| (a choice with calls and no text) | — | `message.content: null` |
| `Finished` | a chunk with `delta: {}` and `finish_reason` | `finish_reason` |
| `Usage` | with `include_usage`: a last chunk with `choices: []` and `usage` | `usage` |
| `Failed` | `{"error": {…, "type": "server_error", "code": <upstream type>}}` | (never: failures raise) |
| `KeepAlive` | an SSE comment | — |
| `Done` | `data: [DONE]` | — |

With `include_usage` every chunk carries `"usage": null`, as OpenAI sends it. Chunks are built from
bytes templates made once per response: per token only the text is JSON-encoded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from proxy.translate.render import ChunkStream, Collected
from proxy.translate.stream import (
    Finished,
    Opened,
    Out,
    Text,
    ToolCallArguments,
    ToolCallStarted,
    new_id,
)


class ChatChunks(ChunkStream):
    """Renders one chat stream."""

    __slots__ = ("_content", "_opening", "functions")

    def __init__(
        self,
        model: str,
        *,
        include_usage: bool,
        id: str | None = None,
        functions: bool = False,
        tools: bool = False,
    ) -> None:
        super().__init__(
            "chat.completion.chunk",
            id or new_id("chatcmpl-"),
            model,
            include_usage=include_usage,
            choice_opening=b'"index":',
        )
        self._opening = b',"delta":{"role":"assistant","content":' + (
            b"null" if tools or functions else b'""'
        )
        self.functions = functions  # legacy `functions` request: calls are `function_call` deltas
        self._content = b',"delta":{"content":'

    def _choice(self, index: int, rest: bytes) -> bytes:
        return self._head + str(index).encode() + rest + self._tail

    def render(self, events: Sequence[Out]) -> bytes:
        parts: list[bytes] = []
        for event in events:
            if type(event) is Text:
                parts.append(
                    self._head
                    + str(event.index).encode()
                    + self._content
                    + orjson.dumps(event.text)
                    + b'},"logprobs":null,"finish_reason":null'
                    + self._tail
                )
            elif type(event) is Opened:
                parts.append(
                    self._choice(
                        event.index, self._opening + b',"refusal":null},"logprobs":null,"finish_reason":null'
                    )
                )
            elif type(event) is Finished:
                parts.append(
                    self._choice(
                        event.index,
                        b',"delta":{},"logprobs":null,"finish_reason":' + orjson.dumps(event.reason),
                    )
                )
            elif type(event) is ToolCallStarted:
                parts.append(self._call(event.index, event.call, event.id, event.name, ""))
            elif type(event) is ToolCallArguments:
                parts.append(self._call(event.index, event.call, None, None, event.fragment))
            else:
                parts.append(self.common(event))
        return b"".join(parts)

    def _call(self, index: int, call: int, id: str | None, name: str | None, arguments: str) -> bytes:
        function: dict[str, Any] = (
            {"name": name, "arguments": arguments} if name else {"arguments": arguments}
        )
        if self.functions:
            delta: dict[str, Any] = {"function_call": function}
        elif id is not None:
            delta = {"tool_calls": [{"index": call, "id": id, "type": "function", "function": function}]}
        else:
            delta = {"tool_calls": [{"index": call, "function": function}]}
        return self._choice(
            index, b',"delta":' + orjson.dumps(delta) + b',"logprobs":null,"finish_reason":null'
        )


class ChatBody(Collected):
    """Collects a non-streamed chat answer."""

    __slots__ = ("created", "functions", "id", "model")

    def __init__(self, model: str, *, id: str | None = None, functions: bool = False) -> None:
        super().__init__()
        self.functions = functions
        self.id = id or new_id("chatcmpl-")
        self.model = model
        self.created = int(time.time())

    def body(self) -> dict[str, Any]:
        choices = []
        for index, text, reason in self.choices():  # a loop: a comprehension would be a frame of its own
            choices.append(self._choice(index, text, reason))
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        }

    def _choice(self, index: int, text: str, reason: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if index in self.calls:  # a choice's entry holds at least one call
            calls = self.tool_calls(index)
            if not text:
                message["content"] = None
            if self.functions:
                message["function_call"] = {"name": calls[0][1], "arguments": calls[0][2]}
            else:
                message["tool_calls"] = [
                    {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
                    for id, name, arguments in calls
                ]
        return {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
