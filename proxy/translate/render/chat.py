"""Output events → OpenAI chat completions: `chat.completion.chunk` SSE events, or one `chat.completion`.

| output event | stream (`data:` lines) | body |
|---|---|---|
| `Opened` | a chunk with `delta: {"role": "assistant", "content": "", "refusal": null}` | the choice |
| `Text` | a chunk with `delta: {"content": …}` | appended to `message.content` |
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

from proxy.translate.render import DONE_LINE, KEEP_ALIVE_LINE, Collected, in_stream_error, sse
from proxy.translate.stream import Done, Failed, Finished, KeepAlive, Opened, Out, Text, Usage, new_id


class ChatChunks:
    """Renders one chat stream."""

    __slots__ = ("_content", "_head", "_tail", "created", "id", "include_usage", "model")

    def __init__(self, model: str, *, include_usage: bool, id: str | None = None) -> None:
        self.id = id or new_id("chatcmpl-")
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._head = (
            b'data: {"id":'
            + orjson.dumps(self.id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self.created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{"index":'
        )
        self._tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
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
                        event.index,
                        b',"delta":{"role":"assistant","content":"","refusal":null},'
                        b'"logprobs":null,"finish_reason":null',
                    )
                )
            elif type(event) is Finished:
                parts.append(
                    self._choice(
                        event.index,
                        b',"delta":{},"logprobs":null,"finish_reason":' + orjson.dumps(event.reason),
                    )
                )
            elif type(event) is Usage:
                if self.include_usage:
                    parts.append(self._usage(event.totals))
            elif type(event) is Done:
                parts.append(DONE_LINE)
            elif type(event) is KeepAlive:
                parts.append(KEEP_ALIVE_LINE)
            elif type(event) is Failed:
                parts.append(sse(in_stream_error(event.code, event.message)))
        return b"".join(parts)

    def _usage(self, totals: dict[str, int]) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": totals,
            }
        )


class ChatBody(Collected):
    """Collects a non-streamed chat answer."""

    def __init__(self, model: str, *, id: str | None = None) -> None:
        super().__init__()
        self.id = id or new_id("chatcmpl-")
        self.model = model
        self.created = int(time.time())

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reason,
                }
                for index, text, reason in self.choices()
            ],
            "usage": self.usage,
        }
