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

from proxy.translate.render import ChunkStream, Collected
from proxy.translate.stream import Finished, Out, Text, new_id


class CompletionChunks(ChunkStream):
    """Renders one text-completion stream."""

    __slots__ = ()

    def __init__(self, model: str, *, include_usage: bool, id: str | None = None) -> None:
        super().__init__(
            "text_completion",
            id or new_id("cmpl-"),
            model,
            include_usage=include_usage,
            choice_opening=b'"text":',
        )

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
            else:
                parts.append(self.common(event))
        return b"".join(parts)


class CompletionBody(Collected):
    """Collects a non-streamed text completion."""

    __slots__ = ("created", "id", "model")

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
