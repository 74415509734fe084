"""The request record: facts the routes add during a request, written as one access-log line at its end.

Its own module so that the middleware that writes it and the metrics that count it both import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_UNLOGGED = frozenset({"extra", "received", "route"})


@dataclass(slots=True)
class RequestLog:
    """Facts a route adds for the access line. Never holds keys or prompt text.

    Slotted: an open stream holds its record for its whole life (no instance dict: ~0.1 KiB less)."""

    request_id: str
    received: float = 0.0  # perf_counter when the request arrived (not logged)
    route: str | None = None  # the matched route's template, for metrics (not logged: `path` is)
    model: str | None = None  # as the client asked
    upstream_model: str | None = None  # after alias resolution
    stream: bool | None = None
    n: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream_ms: float | None = None
    attempts: int | None = None
    upstream_request_id: str | None = None
    first_token_ms: float | None = None  # streams: from receiving the request to sending the first chunk
    key_name: str | None = None  # the client key's configured name, never the key itself
    upstream_entry: str | None = None  # the upstream pool entry that answered
    limit: str | None = None  # the rate-limit decision: "allowed", "rejected:<limit>", "fail_open", ...
    error_code: str | None = None
    cache: str | None = None  # the response cache: "hit" or "miss" (None when not consulted)
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        values = {k: v for k in _LOGGED if (v := getattr(self, k)) is not None}
        values.update(self.extra)
        return values


_LOGGED = tuple(name for name in RequestLog.__slots__ if name not in _UNLOGGED)
