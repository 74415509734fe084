"""uvicorn's httptools protocol with limits on what a client may hold: head size and read timeouts.

uvicorn reads a request head for as long as the client sends it and buffers all of it (20 connections
each sending an unfinished 8 MB head cost 176 MiB and stayed open); a client that sends nothing, or
one byte now and then, keeps its connection forever. This subclass

- answers 431 once a head grows past `server.max_header_bytes` (it feeds the parser no more than that,
  so no connection buffers more of a head than the limit),
- answers 408 when a head is not complete `server.header_timeout` seconds after the connection opened
  (for a kept-alive connection: after the next head's first byte; the wait before it is uvicorn's
  keep-alive timeout), and closes a connection that sent nothing at all in that time,
- answers 408 when a request body receives no bytes for `server.body_timeout` seconds while the body is
  unfinished (the app sees a disconnect), or closes the connection when the response has started.

The parser's own 400 ("invalid HTTP request") gets the same OpenAI error envelope. On the fast path
(a head, and any body, that arrive in one read) the cost is a few comparisons per read, a clock read
per kept-alive request, and one timer per connection that wakes every `header_timeout` seconds; a
body that takes several reads adds one timer and a clock read per read.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import orjson
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.http.context import new_request_id
from proxy.http.disconnect import CLIENT, ClientConnection

_log = structlog.get_logger("proxy")

#: Seconds a rejected connection's further input is read and dropped before the socket is closed.
_LINGER = 2.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one client connection may hold; from the `server:` section."""

    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0


def error_response(status: int, message: str, *, code: str, request_id: str) -> bytes:
    """A complete HTTP/1.1 response carrying OpenAI's error envelope; the connection closes after it.

    It carries an `x-request-id` like every other answer: the SDKs put it on the error they raise, and
    the `http_rejected` log line names it."""
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ProxyHttpProtocol(HttpToolsProtocol):
    """One client connection; `limits` is set on the subclass `protocol_class` makes."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    # In slots, not in the instance dict: uvicorn's ~28 attributes fit CPython's shared-key instance
    # dict, and ours on top would turn every connection's dict into a full one of its own (~1.2 KiB more).
    __slots__ = (
        "_body_seen",
        "_body_timer",
        "_client",
        "_discarding",
        "_head_bytes",
        "_head_started",
        "_head_timer",
        "_linger_timer",
        "_received_any",
    )

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
        #: When the current head started: the connection's start, then each later head's first byte.
        self._head_started = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0
        #: After a rejection: input is read and dropped until the connection closes (see `_reject`).
        self._discarding = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._client = ClientConnection()
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._client.connection_lost()  # the running request stops at once (`proxy.http.disconnect`)

    def data_received(self, data: bytes) -> None:
        head = self._head_bytes
        if head is None:  # a body, what follows a finished head, or input after a rejection
            if self._discarding:
                return
            self._body_seen = self.loop.time()
            _feed(self, data)
        else:
            if not head and self._received_any:  # a kept-alive connection's next head begins
                self._head_started = self.loop.time()
            self._received_any = True
            if head + len(data) > self.limits.max_header_bytes:
                self._feed_up_to_limit(data, head)
                return
            self._head_bytes = head + len(data)
            _feed(self, data)
        if self._head_bytes is None and self._body_timer is None:
            self._watch_body()

    def _feed_up_to_limit(self, data: bytes, head: int) -> None:
        """More than the head may still take: parse only what fits; if the head is still unfinished, refuse."""
        room = self.limits.max_header_bytes - head
        self._head_bytes = self.limits.max_header_bytes
        _feed(self, data[:room])
        if self._discarding or self.transport.is_closing():
            return
        if self._head_bytes is not None:
            self._reject(431, "Request header fields too large.", code="request_header_fields_too_large")
            return
        _feed(self, data[room:])
        if self._head_bytes is None and self._body_timer is None:
            self._watch_body()

    def _watch_body(self) -> None:
        """A head is complete: while its body is unfinished, time its silences."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self._discarding and not self.transport.is_closing():
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def send_400_response(self, msg: str) -> None:
        self._reject(400, "Invalid HTTP request received.", code="invalid_request")

    # Parser callbacks

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        cast(dict[str, Any], self.scope)[CLIENT] = self._client
        _headers_complete(self)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._head_bytes = 0
        _message_complete(self)

    # Limits

    def _check_head(self) -> None:
        """The connection's one head timer: fires every `header_timeout` at most, and refuses a head
        that has been arriving for longer (no timer is armed or cancelled per request)."""
        self._head_timer = None
        if self._discarding or self.transport.is_closing():
            return
        timeout = self.limits.header_timeout
        # A head is arriving: from the connection's start until its first head is complete, and on a
        # kept-alive connection once the next head's first byte came (the wait before that is uvicorn's
        # keep-alive timeout).
        arriving = self._head_bytes is not None and (self._head_bytes > 0 or not self._received_any)
        waited = self.loop.time() - self._head_started
        if arriving and waited >= timeout:
            if not self._received_any:
                self.transport.close()  # it sent nothing: nothing to answer
            else:
                self._reject(408, "The request head was not received in time.", code="request_timeout")
            return
        self._head_timer = self.loop.call_later(timeout - waited if arriving else timeout, self._check_head)

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
        request_id = new_request_id()
        _log.info("http_rejected", status=status, code=code, request_id=request_id)
        self._discarding = True
        self._head_bytes = None
        self.transport.write(error_response(status, message, code=code, request_id=request_id))
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


# The parent's methods, called directly on the per-read path (cheaper than super()).
_feed = HttpToolsProtocol.data_received
_headers_complete = HttpToolsProtocol.on_headers_complete
_message_complete = HttpToolsProtocol.on_message_complete


def protocol_class(limits: EdgeLimits) -> type[ProxyHttpProtocol]:
    """The protocol for uvicorn's `http=` setting, carrying `limits`."""
    return type("ProxyHttpProtocol", (ProxyHttpProtocol,), {"limits": limits})
