"""Output events → OpenAI legacy completions: `text_completion` SSE events, or one `text_completion` body.

| output event | stream (`data:` lines) | body |
|---|---|---|
| `Opened` | — (text completions have no role chunk) | the choice |
| `Text` | a chunk with `text` | appended to `text` (the echoed prompt first) |
| `Finished` | a chunk with `text: ""` and `finish_reason` | `finish_reason` |
| `Usage` | with `include_usage`: a last chunk with `choices: []` and `usage` | `usage` |
| `Failed` | `{"error": {…, "type": "server_error", "code": <upstream type>}}` | (never: failures raise) |
| `KeepAlive` | an SSE comment | — |
| `Done` | `data: [DONE]` | — |
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from proxy.translate.render import DONE_LINE, KEEP_ALIVE_LINE, Collected, in_stream_error, sse
from proxy.translate.stream import Done, Failed, Finished, KeepAlive, Out, Text, Usage, new_id


class CompletionChunks:
    """Renders one text-completion stream."""

    __slots__ = ("_head", "_tail", "created", "id", "include_usage", "model")

    def __init__(self, model: str, *, include_usage: bool, id: str | None = None) -> None:
        self.id = id or new_id("cmpl-")
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._head = (
            b'data: {"id":'
            + orjson.dumps(self.id)
            + b',"object":"text_completion","created":'
            + str(self.created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{"text":'
        )
        self._tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"

    def _choice(self, text: bytes, index: int, finish: bytes) -> bytes:
        return (
            self._head
            + text
            + b',"index":'
            + str(index).encode()
            + b',"logprobs":null,"finish_reason":'
            + finish
            + self._tail
        )

    def render(self, events: Sequence[Out]) -> bytes:
        parts: list[bytes] = []
        for event in events:
            if type(event) is Text:
                parts.append(self._choice(orjson.dumps(event.text), event.index, b"null"))
            elif type(event) is Finished:
                parts.append(self._choice(b'""', event.index, orjson.dumps(event.reason)))
            elif type(event) is Usage:
                if self.include_usage:
                    parts.append(
                        sse(
                            {
                                "id": self.id,
                                "object": "text_completion",
                                "created": self.created,
                                "model": self.model,
                                "choices": [],
                                "usage": event.totals,
                            }
                        )
                    )
            elif type(event) is Done:
                parts.append(DONE_LINE)
            elif type(event) is KeepAlive:
                parts.append(KEEP_ALIVE_LINE)
            elif type(event) is Failed:
                parts.append(sse(in_stream_error(event.code, event.message)))
        return b"".join(parts)


class CompletionBody(Collected):
    """Collects a non-streamed text completion."""

    def __init__(self, model: str, *, id: str | None = None) -> None:
        super().__init__()
        self.id = id or new_id("cmpl-")
        self.model = model
        self.created = int(time.time())

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
                for index, text, reason in self.choices()
            ],
            "usage": self.usage,
        }
