"""uvicorn's httptools protocol with limits on what a client may hold: head size and read timeouts.

uvicorn reads a request head for as long as the client sends it and buffers all of it (20 connections
each sending an unfinished 8 MB head cost 176 MiB and stayed open); a client that sends nothing, or
one byte now and then, keeps its connection forever. This subclass

- answers 431 once a head grows past `server.max_header_bytes` (it feeds the parser no more than that,
  so a connection never buffers more than the limit plus one read),
- answers 408 when a head is not complete `server.header_timeout` seconds after the connection opened
  (for a kept-alive connection: after the next head's first byte; the wait before it is uvicorn's
  keep-alive timeout), and closes a connection that sent nothing at all in that time,
- answers 408 when a request body receives no bytes for `server.body_timeout` seconds while the body is
  unfinished (the app sees a disconnect), or closes the connection when the response has started.

The parser's own 400 ("invalid HTTP request") gets the same OpenAI error envelope. On the fast path
(a head, and any body, that arrive in one read) the cost is a few comparisons per read and one timer
per connection, re-armed per kept-alive request (as uvicorn's keep-alive timer already is); a body
that takes several reads adds one timer and a clock read per read.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

_log = structlog.get_logger("proxy")

#: Seconds a rejected connection's further input is read and dropped before the socket is closed.
_LINGER = 2.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one client connection may hold; from the `server:` section."""

    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0


def error_response(status: int, message: str, *, code: str) -> bytes:
    """A complete HTTP/1.1 response carrying OpenAI's error envelope; the connection closes after it."""
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ProxyHttpProtocol(HttpToolsProtocol):
    """One client connection; `limits` is set on the subclass `protocol_class` makes."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        #: Bytes of the current head received so far; None once the head is complete.
        self._head_bytes: int | None = 0
        self._received_any = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0
        #: After a rejection: input is read and dropped until the connection closes (see `_reject`).
        self._discarding = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._head_bytes is None:  # a body, or what follows a finished head
            self._body_seen = self.loop.time()
            super().data_received(data)
        elif not self._head_received(data):
            return
        cycle = self.cycle
        if (
            self._body_timer is None
            and self._head_bytes is None
            and cycle is not None
            and cycle.more_body
            and not self._discarding
        ):
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _head_received(self, data: bytes) -> bool:
        """Feed a read that arrived while a head is unfinished; False if the connection was refused."""
        self._received_any = True
        room = self.limits.max_header_bytes - (self._head_bytes or 0)
        if len(data) <= room:
            self._head_bytes = self.limits.max_header_bytes - room + len(data)
            super().data_received(data)
            return True
        # More than the head may still take: parse only what fits; if the head is still unfinished, refuse.
        self._head_bytes = self.limits.max_header_bytes
        super().data_received(data[:room])
        if self._discarding or self.transport.is_closing():
            return False
        if self._head_bytes is not None:
            self._reject(431, "Request header fields too large.", code="request_header_fields_too_large")
            return False
        super().data_received(data[room:])
        return True

    def send_400_response(self, msg: str) -> None:
        self._reject(400, "Invalid HTTP request received.", code="invalid_request")

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a kept-alive connection's next request
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._head_bytes = 0
        super().on_message_complete()

    # Limits

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._discarding or self.transport.is_closing() or self._head_bytes is None:
            return
        if not self._received_any:
            self.transport.close()  # an idle connection: nothing to answer
            return
        self._reject(408, "The request head was not received in time.", code="request_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self._discarding or self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        idle = self.loop.time() - self._body_seen
        if idle < self.limits.body_timeout or self.flow.read_paused:
            # Bytes came meanwhile, or the app is not reading (then the wait is ours): check again later.
            delay = (
                self.limits.body_timeout - idle
                if idle < self.limits.body_timeout
                else self.limits.body_timeout
            )
            self._body_timer = self.loop.call_later(delay, self._body_timed_out)
            return
        if cycle.response_started:
            self.transport.close()
            return
        # The app is waiting for the body: it sees a disconnect and its own answer goes nowhere.
        cycle.disconnected = True
        cycle.message_event.set()
        self._reject(408, "The request body was not received in time.", code="request_timeout")

    def _reject(self, status: int, message: str, *, code: str) -> None:
        """Answer `status` and end the connection with a lingering close.

        Closing a socket that still has unread input makes the kernel send a reset, and a client still
        sending (a large head) may then lose the answer. So: answer, half-close (FIN), drop whatever
        still arrives, and close when the client closes or after `_LINGER` seconds.
        """
        self._cancel_timers()
        _log.info("http_rejected", status=status, code=code)
        self._discarding = True
        self._head_bytes = None
        self.transport.write(error_response(status, message, code=code))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(_LINGER, self.transport.close)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None


def protocol_class(limits: EdgeLimits) -> type[ProxyHttpProtocol]:
    """The protocol for uvicorn's `http=` setting, carrying `limits`."""
    return type("ProxyHttpProtocol", (ProxyHttpProtocol,), {"limits": limits})
