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
(a head, and any body, that arrive in one read) the cost is a few comparisons per read and a clock read
per kept-alive request; the head timer lives from a connection's start to its first complete head, and
again only while a later head takes more than one read. A body that takes several reads adds one timer
and a clock read per read.

It also makes what uvicorn keeps per connection and per request lighter, because an open stream holds
them for its whole life: the two `asyncio.Event`s (the request's message event, the connection's
writable event) become `_Event`s and the pipeline queue a list (each `asyncio.Event` is ~1.1 KiB with
its waiters' deque, the empty deque alone ~0.7 KiB; these are ~0.1 KiB).

Each request's cycle is a `proxy.http.cycle.ResponseCycle`, which writes an answer with a length (every
JSON answer) in one `transport.write` instead of two; `_start_cycle` is uvicorn's `on_headers_complete`
making it.

The keep-alive timeout is uvicorn's (an idle connection is closed `timeout_keep_alive` seconds after its
last response), kept with one timer per connection instead of one per request: uvicorn arms a timer when
each response is complete and cancels it when the next request's first bytes arrive, a `call_later` and
a `cancel` (~2 µs) for every request. Here a response's completion only notes the time; the timer, when it
fires, closes a connection that has been idle since then for the whole timeout, and otherwise waits for
the rest of it (or, while a request is arriving or running, for the next response).
"""

from __future__ import annotations

import asyncio
import http
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
import orjson
import structlog
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.http.context import new_request_id
from proxy.http.cycle import ResponseCycle
from proxy.http.disconnect import CLIENT, ClientConnection

_log = structlog.get_logger("proxy")

#: Seconds a rejected connection's further input is read and dropped before the socket is closed.
_LINGER = 2.0
#: The event loop's timers have millisecond resolution: a timer may run up to this early by `loop.time()`.
_CLOCK_ROUNDING = 0.001


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


class _Event:
    """What uvicorn uses of `asyncio.Event` (`set`, `clear`, `is_set`, `wait`) in ~0.1 KiB instead of ~1.1:
    no instance dict, and a list of waiters made only while someone waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class _FlowControl(FlowControl):
    """uvicorn's flow control with an `_Event` for "writable"."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event = _Event(True)  # type: ignore[assignment]


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (`appendleft`, `pop`, truth): an empty list is 56 bytes, an
    empty deque 760."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


#: Headers whose values are the same on every request of a client (its SDK, its version, its platform):
#: such a (name, value) pair is kept once per process and shared by every request head that carries it
#: (~0.1 KiB a header, held for a stream's whole life). Never secrets, never per-request values.
_SHAREABLE = frozenset(
    {
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"anthropic-version",
        b"cache-control",
        b"connection",
        b"content-type",
        b"host",
        b"openai-beta",
        b"openai-organization",
        b"openai-project",
        b"origin",
        b"pragma",
        b"transfer-encoding",
        b"user-agent",
        b"x-stainless-arch",
        b"x-stainless-async",
        b"x-stainless-lang",
        b"x-stainless-os",
        b"x-stainless-package-version",
        b"x-stainless-read-timeout",
        b"x-stainless-retry-count",
        b"x-stainless-runtime",
        b"x-stainless-runtime-version",
        b"x-stainless-timeout",
    }
)
#: Request header names clients commonly send (browsers, HTTP libraries, the OpenAI SDKs), lowercase:
#: the shareable ones above, and those whose values differ per request or are secrets.
_COMMON_HEADERS = _SHAREABLE | {
    b"authorization",
    b"content-length",
    b"cookie",
    b"expect",
    b"referer",
    b"traceparent",
    b"tracestate",
    b"x-api-key",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-request-id",
    b"x-stainless-helper-method",
}
#: Each common name as sent (lowercase, Title-Case, the SDKs' `X-Stainless-OS`) → one shared lowercase
#: bytes object: a request's head then holds no lowercased copy of its names (~50 bytes a header, kept
#: for a stream's whole life).
_HEADER_NAMES: dict[bytes, bytes] = {
    spelling: name
    for name in _COMMON_HEADERS
    for title in [b"-".join(part.capitalize() for part in name.split(b"-"))]
    for spelling in (name, title, title.replace(b"-Os", b"-OS"))
}


_NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()
_shared_pairs: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
#: The shared pairs by the field as received (its name's spelling, its value with any trailing whitespace).
_received_pairs: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
#: Bounds the shared pairs (values of at most `_MAX_SHARED_VALUE` bytes): once full, pairs not yet
#: shared are kept per request, as uvicorn does.
_MAX_SHARED_PAIRS, _MAX_SHARED_VALUE = 1024, 256


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
        "_idle_since",
        "_keep_alive_timer",
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
        self.pipeline = _Pipeline()  # type: ignore[assignment]
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
        #: When the last response completed, while no new request has arrived (None otherwise).
        self._idle_since: float | None = None
        self._keep_alive_timer: asyncio.TimerHandle | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _FlowControl(transport)
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
            follows = not head and self._received_any  # a kept-alive connection's next head begins
            self._received_any = True
            if head + len(data) > self.limits.max_header_bytes:
                self._feed_up_to_limit(data, head)
                return
            self._head_bytes = head + len(data)
            _feed(self, data)
            if follows and self._head_bytes and not self._discarding:
                # Not complete in its first read (0: the whole request came in it): time it from now.
                self._head_started = self.loop.time()
                self._time_head()
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

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's, with common names shared (`_HEADER_NAMES`) instead of lowercased per request, and
        a client's constant headers shared whole (`_SHAREABLE`). A shared pair is also found by the
        field as received (`_received_pairs`): one lookup for each constant header a client repeats."""
        pair = _received_pairs.get((name, value))
        if pair is None:
            pair = self._header_pair(name, value)
        self.headers.append(pair)

    def _header_pair(self, name: bytes, value: bytes) -> tuple[bytes, bytes]:
        lowered = _HEADER_NAMES.get(name)
        if lowered is None:
            lowered = name.lower()
        stripped = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, which RFC 9110 excludes
        if lowered == b"expect" and stripped.lower() == b"100-continue":
            self.expect_100_continue = True
        pair = (lowered, stripped)
        if lowered in _SHAREABLE:
            shared = _shared_pairs.get(pair)
            if (
                shared is None
                and len(_shared_pairs) < _MAX_SHARED_PAIRS
                and len(stripped) <= _MAX_SHARED_VALUE
            ):
                shared = _shared_pairs[pair] = pair
            if shared is not None:
                pair = shared
                if len(_received_pairs) < _MAX_SHARED_PAIRS and len(value) <= _MAX_SHARED_VALUE:
                    _received_pairs[(name, value)] = shared
        return pair

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        if self._head_timer is not None:  # a stream would hold it for its whole life
            self._head_timer.cancel()
            self._head_timer = None
        cast(dict[str, Any], self.scope)[CLIENT] = self._client
        self._start_cycle()
        # The head is the scope's now (Starlette's `Request.headers` even puts a copy there): uvicorn
        # reads its own reference again only for an upgrade, which this server never does.
        self.headers = _NO_HEADERS  # type: ignore[assignment]

    def _start_cycle(self) -> None:
        """uvicorn 0.55.0's `on_headers_complete`, making a `ResponseCycle` (one write per answer with a
        length) with an `_Event`: the request's scope completed, then its cycle started or queued."""
        parser, scope = self.parser, self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return  # pragma: no cover (never: this server has no WebSocket protocol)
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""

        app: ASGI3Application
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app

        existing_cycle = self.cycle
        self.cycle = ResponseCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=_Event(),  # type: ignore[arg-type]
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:  # pipelined: queued until the one before it is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    def on_response_complete(self) -> None:
        """uvicorn 0.55.0's, noting when the connection went idle instead of arming a timer each time."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = now = self.loop.time()
            if self._keep_alive_timer is None:
                self._keep_alive_timer = self.loop.call_at(now + self.timeout_keep_alive, self._check_idle)

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn cancels its keep-alive timer here (new input, a response's end, the connection's loss):
        the connection is not idle. The timer stays; `_check_idle` finds it busy."""
        self._idle_since = None

    def _check_idle(self) -> None:
        """The keep-alive timer: closes a connection idle for `timeout_keep_alive` seconds, as uvicorn's
        handler does; one that was busy meanwhile is timed again from its last response."""
        self._keep_alive_timer = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy (the next response arms the timer again) or closing
        due = idle_since + self.timeout_keep_alive
        if self.loop.time() >= due - _CLOCK_ROUNDING:
            self.timeout_keep_alive_handler()
        else:
            self._keep_alive_timer = self.loop.call_at(due, self._check_idle)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._head_bytes = 0
        _message_complete(self)

    # Limits

    def _time_head(self) -> None:
        """Refuse the head now arriving if it is not complete `header_timeout` after it started."""
        waited = self.loop.time() - self._head_started
        self._head_timer = self.loop.call_later(self.limits.header_timeout - waited, self._check_head)

    def _check_head(self) -> None:
        """The head timer: armed when a connection opens (cancelled when its first head is complete) and
        when a kept-alive connection's next head is not complete in its first read; refuses a head that
        has been arriving for longer than `header_timeout`."""
        self._head_timer = None
        if self._discarding or self.transport.is_closing():
            return
        # A head is arriving: from the connection's start until its first head is complete, and on a
        # kept-alive connection once the next head's first byte came (the wait before that is uvicorn's
        # keep-alive timeout).
        arriving = self._head_bytes is not None and (self._head_bytes > 0 or not self._received_any)
        if not arriving:
            return
        if self.loop.time() - self._head_started < self.limits.header_timeout:
            self._time_head()  # woke early (a clock's rounding): wait for the rest
        elif not self._received_any:
            self.transport.close()  # it sent nothing: nothing to answer
        else:
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
        for timer in (self._head_timer, self._body_timer, self._linger_timer, self._keep_alive_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = self._keep_alive_timer = None


# The parent's methods, called directly on the per-read path (cheaper than super()).
_feed = HttpToolsProtocol.data_received
_message_complete = HttpToolsProtocol.on_message_complete


def protocol_class(limits: EdgeLimits) -> type[ProxyHttpProtocol]:
    """The protocol for uvicorn's `http=` setting, carrying `limits`."""
    return type("ProxyHttpProtocol", (ProxyHttpProtocol,), {"limits": limits})
