"""Server-sent event streams of `/v1/complete`, byte-exact to captured real traffic.

2023-06-01 (captured 2024): `event: completion` + compact JSON padded with 0–11 spaces before the
closing brace, CRLF line ends, `{"type": "ping"}` after the 2nd token, a final event with
`"completion":""` and the stop fields, then the body just ends. 2023-01-01 (reconstructed from the
SDKs): data-only events with the cumulative text, one `event: ping` / `data: {}`, then `data: [DONE]`.

Tokens are yielded one by one from an async generator, so a slow stream really trickles and a client
disconnect cancels it; the generator's `finally` keeps the mock's stream counters honest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Send

from proxy.mock.directives import Directives
from proxy.mock.generation import Generation
from proxy.mock.protocol import VERSION_2023_06_01, legacy_completion_object

CRLF2 = b"\r\n\r\n"
COMPLETION_EVENT = b"event: completion\r\ndata: "
ERROR_EVENT = b"event: error\r\ndata: "
PING_EVENT = b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
LEGACY_PING_EVENT = b"event: ping\r\ndata: {}\r\n\r\n"
LEGACY_DATA = b"data: "
DONE_EVENT = b"data: [DONE]\r\n\r\n"
EVENT_STREAM = "text/event-stream"  # Starlette appends "; charset=utf-8"

# Spaces before the closing brace, in the order of the captured stream (it cycles for longer ones).
PADDING = (5, 8, 4, 11, 0, 10, 6)
FIRST_PING_AFTER = 2
PING_EVERY = 25
LEGACY_PING_AFTER = 2


@dataclass(slots=True)
class StreamStats:
    """Stream counters for `/_mock/stats`: cancelled = the client left before the mock finished."""

    active: int = 0
    completed: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "active_streams": self.active,
            "completed_streams": self.completed,
            "cancelled_streams": self.cancelled,
        }


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Everything a stream needs, decided before the first byte is sent."""

    version: str
    completion_id: str
    model: str
    generation: Generation
    directives: Directives

    @property
    def cutoff(self) -> int | None:
        """How many tokens to send before a mid-stream error or drop (error wins if both are set)."""
        d = self.directives
        return d.stream_error_after if d.stream_error_after is not None else d.drop_connection_after

    @property
    def sends_error(self) -> bool:
        return self.directives.stream_error_after is not None

    @property
    def drops_connection(self) -> bool:
        """A dropped connection ends without the terminating chunk, like a real network failure."""
        return not self.sends_error and self.directives.drop_connection_after is not None

    def tokens_to_send(self) -> list[str]:
        tokens = self.generation.tokens
        return tokens if self.cutoff is None else tokens[: self.cutoff]


def should_ping(sent: int) -> bool:
    """2023-06-01 pings after the 2nd completion event, then every 25 events."""
    return sent >= FIRST_PING_AFTER and (sent - FIRST_PING_AFTER) % PING_EVERY == 0


class CompletionEvents:
    """Renders 2023-06-01 `completion` events, pre-encoding the parts shared by every event."""

    def __init__(self, completion_id: str, model: str) -> None:
        encoded_id = orjson.dumps(completion_id)
        self._head = b'{"type":"completion","id":' + encoded_id + b',"completion":'
        self._model = b',"model":' + orjson.dumps(model)
        self._log_id = b',"log_id":' + encoded_id
        self._open_tail = b',"stop_reason":null' + self._model + b',"stop":null' + self._log_id

    @staticmethod
    def _frame(payload: bytes, index: int) -> bytes:
        return COMPLETION_EVENT + payload + b" " * PADDING[index % len(PADDING)] + b"}" + CRLF2

    def token(self, text: str, index: int) -> bytes:
        return self._frame(self._head + orjson.dumps(text) + self._open_tail, index)

    def final(self, stop_reason: str, stop: str | None, index: int) -> bytes:
        tail = b',"stop_reason":' + orjson.dumps(stop_reason) + self._model
        tail += b',"stop":' + orjson.dumps(stop) + self._log_id
        return self._frame(self._head + b'""' + tail, index)


def error_event(directives: Directives) -> bytes:
    """The documented legacy stream error (no top-level type), spaced JSON as in the docs."""
    error_type = directives.error_type or "overloaded_error"
    message = directives.message or "Overloaded"
    payload = json.dumps({"error": {"type": error_type, "message": message}}, ensure_ascii=False)
    return ERROR_EVENT + payload.encode() + CRLF2


def legacy_event(plan: StreamPlan, text: str, stop_reason: str | None, stop: str | None) -> bytes:
    """A 2023-01-01 data-only event carrying the cumulative completion."""
    body = legacy_completion_object(plan.completion_id, text, stop_reason, plan.model, stop)
    return LEGACY_DATA + json.dumps(body, ensure_ascii=False).encode() + CRLF2


async def _pause(plan: StreamPlan, index: int) -> None:
    directives = plan.directives
    delay = directives.first_delay_seconds() if index == 0 else directives.token_delay_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


async def events_2023_06_01(plan: StreamPlan) -> AsyncGenerator[bytes, None]:
    """Incremental named events, pings, and a final event carrying the stop fields."""
    render = CompletionEvents(plan.completion_id, plan.model)
    tokens = plan.tokens_to_send()
    for index, token in enumerate(tokens):
        await _pause(plan, index)
        yield render.token(token, index)
        if should_ping(index + 1):
            yield PING_EVENT
    if plan.sends_error:
        yield error_event(plan.directives)
    elif not plan.drops_connection:
        yield render.final(plan.generation.stop_reason, plan.generation.stop, len(tokens))
        if plan.directives.hold_open_ms:  # a misbehaving upstream: the body stays open after the end
            await asyncio.sleep(plan.directives.hold_open_ms / 1000.0)


async def events_2023_01_01(plan: StreamPlan) -> AsyncGenerator[bytes, None]:
    """Data-only events with the text so far, one ping, the final event and `[DONE]`."""
    text = ""
    tokens = plan.tokens_to_send()
    for index, token in enumerate(tokens):
        await _pause(plan, index)
        text += token
        yield legacy_event(plan, text, None, None)
        if index + 1 == LEGACY_PING_AFTER:
            yield LEGACY_PING_EVENT
    if plan.sends_error:
        yield error_event(plan.directives)
        return
    if plan.drops_connection:
        return
    if len(tokens) < LEGACY_PING_AFTER:
        yield LEGACY_PING_EVENT
    yield legacy_event(plan, text, plan.generation.stop_reason, plan.generation.stop)
    yield DONE_EVENT


async def counted_events(plan: StreamPlan, stats: StreamStats) -> AsyncGenerator[bytes, None]:
    """Yield the plan's events while keeping the active/completed/cancelled counters."""
    events = events_2023_06_01(plan) if plan.version == VERSION_2023_06_01 else events_2023_01_01(plan)
    stats.active += 1
    finished = False
    try:
        async for chunk in events:
            yield chunk
        finished = True
    finally:
        stats.active -= 1
        if finished:
            stats.completed += 1
        else:
            stats.cancelled += 1
        await events.aclose()


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its generator and can end the body abruptly.

    Starlette cancels `stream_response` when the client disconnects; closing the generator here
    (instead of leaving it to garbage collection) runs its `finally` at once. When the plan drops the
    connection we return without the final empty body message, so uvicorn closes the socket mid-body.
    """

    def __init__(
        self, events: AsyncGenerator[bytes, None], *, complete_body: bool, headers: Mapping[str, str]
    ) -> None:
        super().__init__(events, media_type=EVENT_STREAM, headers=headers)
        self._events = events
        self._complete_body = complete_body

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await self._events.aclose()
        if self._complete_body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
