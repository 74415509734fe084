"""Renderers: the stream translator's output events → one output surface's wire format (pure).

A stream renderer turns a batch of events into the bytes to write (`render`); a body renderer collects
every event of a non-streamed answer and builds its JSON body (`body`). One module per surface.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

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
)

DONE_LINE = b"data: [DONE]\n\n"
KEEP_ALIVE_LINE = b": ping\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE event: a single `data:` line of compact JSON and a blank line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def in_stream_error(code: str, message: str) -> dict[str, Any]:
    """The event sent when the upstream fails after the stream started (the SDKs raise APIError)."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


class ChunkStream:
    """What the OpenAI chunk streams share: the id, `created` and model of every chunk, byte templates
    for a chunk's head and tail (made once per response), the usage chunk and the stream's end."""

    __slots__ = ("_head", "_tail", "created", "id", "include_usage", "model", "object")

    def __init__(
        self, object: str, id: str, model: str, *, include_usage: bool, choice_opening: bytes
    ) -> None:
        self.object = object
        self.id = id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._head = (
            b'data: {"id":'
            + orjson.dumps(id)
            + b',"object":'
            + orjson.dumps(object)
            + b',"created":'
            + str(self.created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{'
            + choice_opening
        )
        self._tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"

    def common(self, event: Out) -> bytes:
        """The bytes of the events every chunk stream writes alike (usage, end, keep-alive, failure)."""
        if type(event) is Usage:
            if not self.include_usage:
                return b""
            chunk = {
                "id": self.id,
                "object": self.object,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": event.totals,
            }
            return sse(chunk)
        if type(event) is Done:
            return DONE_LINE
        if type(event) is KeepAlive:
            return KEEP_ALIVE_LINE
        if type(event) is Failed:
            return sse(in_stream_error(event.code, event.message))
        return b""


class StreamRenderer(Protocol):
    def render(self, events: Sequence[Out]) -> bytes: ...


class BodyRenderer(Protocol):
    def add(self, events: Sequence[Out]) -> None: ...

    def body(self) -> dict[str, Any]: ...


class Collected:
    """What a non-streamed answer's events say, per choice: its text, tool calls, finish reason, usage.

    `calls[index]` holds each call as `[id, name, [argument fragments]]`, in call order."""

    __slots__ = ("calls", "reasons", "texts", "usage")

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.reasons: dict[int, str] = {}
        self.calls: dict[int, list[tuple[str, str, list[str]]]] = {}
        self.usage: dict[str, int] | None = None

    def add(self, events: Sequence[Out]) -> None:
        for event in events:  # by exact type, as the renderers do: the event classes have no subclasses
            kind = type(event)
            if kind is Text:
                self.texts[event.index].append(event.text)  # type: ignore[union-attr]
            elif kind is Opened:
                self.texts[event.index] = []  # type: ignore[union-attr]
            elif kind is Finished:
                self.reasons[event.index] = event.reason  # type: ignore[union-attr]
            elif kind is Usage:
                self.usage = event.totals  # type: ignore[union-attr]
            elif kind is ToolCallStarted:
                self.calls.setdefault(event.index, []).append((event.id, event.name, []))  # type: ignore[union-attr]
            elif kind is ToolCallArguments:
                self.calls[event.index][event.call][2].append(event.fragment)  # type: ignore[union-attr]

    def choices(self) -> list[tuple[int, str, str]]:
        """(index, text, finish reason) of every choice, in index order."""
        texts, reasons = self.texts, self.reasons
        if len(texts) == 1:  # most answers: no comprehension (a frame of its own)
            ((index, text),) = texts.items()
            return [(index, "".join(text), reasons.get(index, "stop"))]
        return [(i, "".join(t), reasons.get(i, "stop")) for i, t in sorted(texts.items())]

    def tool_calls(self, index: int) -> list[tuple[str, str, str]]:
        """(id, name, arguments JSON) of choice `index`'s calls, in order."""
        if index not in self.calls:
            return []
        return [(id, name, "".join(fragments)) for id, name, fragments in self.calls[index]]
