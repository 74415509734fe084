"""Upstream stream events → what happened, for either `anthropic-version` (pure).

| version | event | meaning |
|---|---|---|
| 2023-06-01 | `event: completion`, `completion` is the next piece | text delta; non-null `stop_reason` ends it |
| 2023-01-01 | data-only, `completion` is the whole text so far | the new suffix is the delta |
| both | `event: ping`, `data: [DONE]`, no data | nothing (a ping becomes a keep-alive comment) |
| both | `event: error` or a JSON body with `error` | the stream failed mid-way |
| (non-streamed) | the answer's JSON body | one final piece: `completion` and `stop_reason` (`answer_event`) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)  # not frozen, as the output events (proxy.translate.stream): one per token
class Piece:
    """New completion text, and the stop reason if this is the last event."""

    text: str
    stop_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """The upstream is alive; nothing to forward but a keep-alive."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The upstream reported an error after the stream had started."""

    type: str
    message: str


Event = Piece | Ping | Failure

PING = Ping()


class EventDecoder:
    """Decodes one upstream stream; keeps the text seen so far for cumulative (2023-01-01) streams."""

    __slots__ = ("_cumulative", "_seen")

    def __init__(self, anthropic_version: str) -> None:
        self._cumulative = anthropic_version == "2023-01-01"
        self._seen = ""

    def decode(self, event: str | None, data: str) -> Event:
        if event == "ping" or not data or data == "[DONE]":
            return PING
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return Failure("api_error", "The upstream sent an event that is not valid JSON.")
        if not isinstance(payload, dict):
            return Failure("api_error", "The upstream sent an event that is not a JSON object.")
        if event == "error" or "error" in payload:
            error = payload.get("error")
            error = error if isinstance(error, dict) else {}
            return Failure(str(error.get("type", "api_error")), str(error.get("message", "Upstream error")))
        if event not in (None, "completion"):
            return PING  # An event type this proxy does not know yet: ignore it, as the SDKs do.
        text = payload.get("completion")
        text = text if isinstance(text, str) else ""
        if self._cumulative:
            text, self._seen = (text[len(self._seen) :] if text.startswith(self._seen) else text), text
        stop_reason = payload.get("stop_reason")
        return Piece(text, stop_reason if isinstance(stop_reason, str) else None)


def answer_event(answer: dict[str, Any]) -> Piece:
    """A non-streamed answer as the one final event a stream would have ended with."""
    text = answer.get("completion")
    stop_reason = answer.get("stop_reason")
    return Piece(
        text if isinstance(text, str) else "", stop_reason if isinstance(stop_reason, str) else "end_turn"
    )
