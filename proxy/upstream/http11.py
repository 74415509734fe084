"""A small pooled HTTP/1.1 client for the one call the proxy makes: `POST` a JSON body, read the answer
whole or as it streams.

Why not a general client: a general client's features (redirects, cookies, auth flows, multipart,
tracing hooks) cost CPU on every call and the proxy uses none of them. This one writes each request
with a single `write`, parses answers with `httptools` (llhttp, the parser uvicorn uses for the server
side), keeps connections alive per host, and costs a fraction of aiohttp per call (figures in
bench/RESULTS.md).

What it guarantees, as h11/httpcore do (tests/unit/test_http11_differential.py compares it with h11):
interim `1xx` answers are skipped (`101` fails: nothing here speaks another protocol); trailer fields
are dropped, never merged into the headers; a connection goes back to the pool only when its answer
ended by its own framing (content-length reached, last chunk) with not one byte after it, on a
keep-alive connection; anything else (a parse error, extra bytes, a body delimited by the connection's
end, `Connection: close`) closes it, so no byte of one answer can reach another request.

Egress through a forward proxy follows `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY` (`proxy.upstream.egress`).

Timeouts, all `TimeoutError`s: `connect` (`ConnectTimeout`: DNS, TCP, proxy tunnel and TLS set-up);
`read` (`ReadTimeout`: silence while an answer is awaited or read: the first byte of a plain answer, the
gap between a stream's chunks), watched by one timer per connection that is moved only when it fires,
not on every chunk, and kept from one exchange to the next. Anything else that ends the exchange early
is an `UpstreamConnectionError`, and none of their messages names an address or a credential.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast
from urllib.parse import urlsplit

import httptools

from proxy.upstream.egress import Egress, ForwardProxy

T = TypeVar("T")

#: Buffered answer bytes above which a connection stops reading until the consumer catches up.
HIGH_WATER = 64 * 1024
#: Longest answer head a forward proxy may send to `CONNECT`.
MAX_TUNNEL_HEAD = 64 * 1024


#: Header names as received → lower-cased str: an answer's names are decoded once per process, not per
#: answer, and every answer's headers share the same name strings. Bounded, against an upstream that
#: sends a new name each time.
_NAMES: dict[bytes, str] = {}
_MAX_NAMES, _MAX_NAME = 256, 64


#: The lengths of the names `on_header` looks at: `request-id`, `content-length`, `transfer-encoding`.
_WATCHED_LENGTHS = frozenset({10, 14, 17})


def _header_dict(fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased names (decoded once per process, see `_NAMES`); a repeated field's values joined with
    ", " (as httpx does)."""
    headers: dict[str, str] = {}
    for name, value in fields:
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < _MAX_NAMES and len(name) <= _MAX_NAME:
                _NAMES[name] = key
        text = value.decode("latin-1")
        headers[key] = text if key not in headers else f"{headers[key]}, {text}"
    return headers


class UpstreamConnectionError(Exception):
    """The exchange failed: connection refused or lost, or an answer that is not valid HTTP/1.1."""


class UpstreamProtocolError(UpstreamConnectionError):
    """The upstream's bytes are not a valid HTTP/1.1 answer (or switch to another protocol)."""


class NameResolutionError(UpstreamConnectionError):
    """The host name could not be resolved (DNS)."""


class ConnectionRefused(UpstreamConnectionError):
    """Nothing listens at the address (or a firewall rejected the connection)."""


class TLSVerificationError(UpstreamConnectionError):
    """The upstream's certificate is not trusted or not valid for its host name."""


class ProxyError(UpstreamConnectionError):
    """The forward proxy could not be reached or refused the tunnel (a non-200 answer to `CONNECT`)."""


class ConnectTimeout(TimeoutError):
    """The connection (with its proxy tunnel and TLS handshake) was not set up in time."""


class ReadTimeout(TimeoutError):
    """The upstream was silent for longer than the read timeout."""


class DeadlineExceeded(TimeoutError):
    """The exchange's deadline passed (`request(deadline=)`, `Response.set_deadline`)."""


@dataclass(frozen=True)
class Target:
    """Where one URL's requests go, with the request head's constant part prepared once."""

    host: str
    port: int
    tls: bool
    path: str
    host_header: str
    #: The connection pool's key, and a direct request's first lines: made once, not per request.
    key: tuple[str, int, bool] = field(init=False, repr=False, compare=False)
    post_head: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.host, self.port, self.tls))
        object.__setattr__(self, "post_head", f"POST {self.path} HTTP/1.1\r\nhost: {self.host_header}\r\n")

    @classmethod
    def parse(cls, url: str) -> Target:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("not a valid http(s) URL") from None  # the URL may hold a password
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        tls = parts.scheme == "https"
        host = parts.hostname
        if "%" in host:  # an IPv6 zone id names a local interface: meaningless in a Host header
            raise ValueError("IPv6 zone ids are not supported in upstream URLs")
        named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets in the Host header
        host_header = named if port is None else f"{named}:{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(host, port or (443 if tls else 80), tls, path, host_header)


class Response:
    """An answer whose status and headers have arrived; the body is read with `read()` or `next_chunk()`.

    Header names are lower-cased; a repeated header's values are joined with ", " (as httpx does).
    `release()` returns the connection to the pool when the body was read to its end, `close()` drops it.
    """

    __slots__ = (
        "_connection",
        "_fields",
        "_headers",
        "_pool",
        "closed",
        "next_chunk",
        "request_id",
        "status",
    )

    def __init__(self, connection: Connection, pool: ConnectionPool) -> None:
        self._connection = connection
        self._pool = pool
        self.status: int = connection.status
        self._fields = connection.fields  # this answer's own list: the connection's next answer has a new one
        self._headers: dict[str, str] | None = None
        #: The `request-id` field (as it would be in `headers`), read on every call: kept aside at parse time.
        self.request_id = ", ".join(connection.request_ids) if connection.request_ids else None
        self.closed = False
        #: The next piece of the body as it arrived, or None at its end (a stream's read): the
        #: connection's own method, so a streamed chunk passes through one coroutine less.
        self.next_chunk: Callable[[], Awaitable[bytes | None]] = connection.next_chunk

    @property
    def headers(self) -> dict[str, str]:
        """The header fields, made on first use: a successful call reads none of them but `request_id`."""
        if self._headers is None:
            self._headers = _header_dict(self._fields)
        return self._headers

    def compact(self) -> None:
        """Decode the header fields now and drop them as received: the decoded form is the smaller one
        (~1.7 KiB for a real answer's 20 fields, against ~3.4), for an answer held open (a stream)."""
        if self._headers is None:
            self._headers = _header_dict(self._fields)
        self._fields.clear()  # the connection's reference to them too, until its next answer

    async def read(self) -> bytes:
        connection = self._connection
        if connection.complete:  # the usual plain answer: its body came with its head
            return connection.take()
        parts = []
        while (chunk := await connection.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def set_deadline(self, when: float) -> None:
        """Fail the body's reads with a TimeoutError from loop time `when` on (a stream's total time)."""
        self._connection.set_deadline(when)

    def release(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.release(self._connection)

    def close(self) -> None:
        """Drop the connection (the upstream stops generating) and wake any reader with an error."""
        if not self.closed:
            self.closed = True
            self._connection.abort(UpstreamConnectionError("the response was closed"))
            self._pool.release(self._connection)


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time; httptools calls the `on_*` methods.

    One answer per exchange: once it is complete, any further byte (in the same read or later) spoils
    the connection instead of being parsed as anything, and the headers stop changing at the head's end.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int, bool]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._fd = -1
        self._poller: select.poll | None = None  # made at the first reuse
        self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = False  # the parser must be replaced before the next exchange
        # The read timer outlives the exchange that armed it: a later one keeps it while it is due no
        # later than that exchange needs (a `call_at` costs ~2 µs on uvloop, more than the rest of a
        # reuse), and when it fires `_check_silence` looks at whichever exchange is current.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._reset()
        self.error: BaseException | None = None  # set once: the connection is unusable from then on

    def _reset(self) -> None:
        self.status = 0
        self.answered = False  # any byte of the answer has arrived
        #: The head's fields as received, in order; `Response.headers` decodes and merges them when asked:
        #: decoding each field as it arrives cost ~0.15 µs a field, and an answer has ~20.
        self.fields: list[tuple[bytes, bytes]] = []
        self.request_ids: list[str] = []
        self._chunked = False  # a `transfer-encoding: chunked` field has been seen
        self.head_done = False
        self.complete = False  # the answer ended (by its framing, or by the connection's end)
        self.keep_alive = False  # complete by its framing, keep-alive, and nothing after it
        self._interim = False  # parsing a 1xx answer, which is skipped
        self._head_only = False  # the answer to HEAD: no body whatever its headers say
        self._framed = False  # content-length or chunked: the body's end is known without EOF
        self.chunks: list[bytes] = []  # a list, not a deque: a deque costs ~600 B per connection
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout: float | None = None
        self._last_data = 0.0
        self.deadline: float | None = None  # loop time at which the exchange fails whatever arrives

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if self.complete:  # after the answer's end: never part of this answer nor of the next
            self._spoil()
            return
        self.answered = True
        self._last_data = self.loop.time()
        try:
            if data[-1] not in b"\r\n":
                self._parser.feed_data(data)
            else:
                # llhttp skips CR and LF after a message's end without a callback (blank lines before the
                # next one): the last byte goes on its own, so an answer complete before it has bytes after.
                if len(data) > 1:
                    self._parser.feed_data(data[:-1] if len(data) <= 4096 else memoryview(data)[:-1])
                if self.complete:
                    self._spoil()
                else:
                    self._parser.feed_data(data[-1:])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fresh_parser = True
            if not self.complete:
                self.abort(_parse_failure(exc))
                return
            self._spoil()  # junk after a complete answer: the answer stands, the connection goes
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close our side too: the connection_lost that follows settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep_alive = False
        if self.head_done and not self.complete and not self._framed and self.error is None:
            self.complete = True  # a body delimited by the end of the connection
        elif self.error is None:
            self.error = UpstreamConnectionError(
                "the upstream closed the connection" + (f" ({exc})" if exc else "")
            )
        self._cancel_timer()
        self._wake()

    def _spoil(self) -> None:
        """Bytes beyond the answer: keep what was answered, never reuse the connection."""
        self.keep_alive = False
        self._fresh_parser = True

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self._spoil()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # trailer fields, or the head of a message after the answer: never headers
        if len(name) in _WATCHED_LENGTHS:  # a cheap first test: most names have other lengths
            self._watched(name.lower(), value)
        self.fields.append((name, value))

    def _watched(self, name: bytes, value: bytes) -> None:
        """The fields looked at during the parse: the framing ones (the body's end is known without EOF;
        only `chunked`, once, as h11 allows) and `request-id`."""
        if name == b"transfer-encoding":
            if value.lower() != b"chunked" or self._chunked:
                raise UpstreamProtocolError(f"unsupported transfer-encoding {value.decode('latin-1')!r}")
            self._chunked = self._framed = True
        elif name == b"content-length":
            self._framed = True
        elif name == b"request-id":
            self.request_ids.append(value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status < 100:
                raise UpstreamProtocolError(f"invalid status code {status}")
            # 1xx: an interim answer (100 Continue, 103 Early Hints, …); the final one follows. llhttp
            # gives it no body; 101 ends in HttpParserUpgrade.
            self._interim = True
            self.fields = []
            self.request_ids = []
            self._framed = self._chunked = False
            return
        self.status = status
        self.head_done = True
        if self._head_only:  # no body, whatever content-length says; the parser expects one: replace it
            self.complete = True
            self.keep_alive = self._framed and self._parser.should_keep_alive()
            self._fresh_parser = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self._spoil()
            return
        self.chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()

    # -- the exchange -------------------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return self.error is None and self.transport is not None and not self.transport.is_closing()

    def has_unread_bytes(self) -> bool:
        """Whether the socket holds bytes (or an EOF) the loop has not delivered yet: checked before a
        reuse, since they would otherwise be read as the next request's answer."""
        if self._poller is None:
            if self._fd < 0 or _poll is None:
                return False
            self._poller = _poll()
            self._poller.register(self._fd, select.POLLIN)
        return bool(self._poller.poll(0))

    def send(
        self,
        data: bytes,
        read_timeout: float | None,
        *,
        head_only: bool = False,
        deadline: float | None = None,
    ) -> None:
        """Write one request; `read_timeout` bounds every wait for the answer from here on, `deadline`
        (loop time) the whole answer."""
        if self.transport is None or self.transport.is_closing():
            raise self.error or UpstreamConnectionError("the upstream closed the connection")
        self._reset()
        if self._fresh_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._fresh_parser = False
        self._head_only = head_only
        self._read_timeout = read_timeout
        self.deadline = deadline
        self._last_data = now = self.loop.time()
        if read_timeout is not None:
            due = now + read_timeout
            self._arm(due if deadline is None or due < deadline else deadline)
        elif deadline is not None:
            self._arm(deadline)
        self.transport.write(data)

    def _arm(self, due: float) -> None:
        """Have the read timer fire by loop time `due`: a timer already due by then stays as it is."""
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(due, self._check_silence)
        self._timer_due = due

    def _check_silence(self) -> None:
        """The read timer: fires at most once per `read` seconds, and only then looks at the clock (an
        idle connection's timer stops here; the next exchange arms one again)."""
        self._timer = None
        if self.complete or self.error is not None:
            return
        now = self.loop.time()
        due: float | None = None
        if self._read_timeout is not None:
            due = self._last_data + self._read_timeout
            if self._paused:  # silence while we hold the reading back is ours, not the upstream's
                due = now + self._read_timeout
            elif now >= due:
                self.abort(ReadTimeout("read timeout"))
                return
        if self.deadline is not None:  # the same timer serves the deadline: no timer of its own
            if now >= self.deadline:
                self.abort(DeadlineExceeded("deadline"))
                return
            due = self.deadline if due is None else min(due, self.deadline)
        if due is not None:
            self._arm(due)

    def set_deadline(self, when: float) -> None:
        """End the exchange with a TimeoutError at loop time `when` (needs a read timeout)."""
        self.deadline = when
        if self._timer is not None:
            self._arm(when)

    def arrival(self) -> asyncio.Future[None]:
        """A future done when more of the answer has arrived (or failed with the connection's error):
        the caller awaits it itself, with no helper coroutine between."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        return waiter

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call, as one piece; None at the body's end."""
        while not self.chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            waiter = self._waiter = self.loop.create_future()  # no helper coroutine: read once per chunk
            try:
                await waiter
            finally:
                self._waiter = None
        return self.take()

    def take(self) -> bytes:
        """The body bytes that arrived since the last read, as one piece (b"" when there are none)."""
        chunks = self.chunks
        if len(chunks) == 1:
            chunk = chunks.pop()
        else:  # what arrived while the reader was away, as one piece
            chunk = b"".join(chunks)
            chunks.clear()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= HIGH_WATER // 4 and self.transport is not None:
            self._paused = False
            self._last_data = self.loop.time()
            self.transport.resume_reading()
        return chunk

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self, error: BaseException) -> None:
        """End the exchange with `error` for whoever waits, and drop the connection."""
        if self.error is None:
            self.error = error
        self.chunks.clear()
        self.complete = False
        self.keep_alive = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.error)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _parse_failure(exc: Exception) -> UpstreamProtocolError:
    if isinstance(exc, httptools.HttpParserUpgrade):
        return UpstreamProtocolError("the upstream switched protocols (101), which is not HTTP/1.1")
    reason = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
    return UpstreamProtocolError(f"invalid HTTP answer from the upstream: {reason}")


class Slots:
    """At most `limit` holders; the others wait, first come first served, as with `asyncio.Semaphore`,
    whose `acquire` is a coroutine that scans its waiters twice (`locked()`) on every call: here a
    free slot is taken synchronously (`take_now`), and a freed one is handed to the next waiter."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody waits for one."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting for one in turn."""
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot while being cancelled: it goes to the next one
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Free a slot: to the first waiter still waiting, else back to the free ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


async def _before(deadline: float, waiting: Awaitable[T]) -> T:
    """`waiting`'s result, or `DeadlineExceeded` once loop time `deadline` has passed."""
    try:
        async with asyncio.timeout_at(deadline):
            return await waiting
    except TimeoutError:
        raise DeadlineExceeded("deadline") from None


_poll = getattr(select, "poll", None)  # not on Windows: there a reuse skips the unread-bytes check


class _TunnelSetup(asyncio.Protocol):
    """Reads the forward proxy's answer to `CONNECT`: a head, and not one byte more (the upstream's TLS
    server speaks only after our ClientHello)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.extra = False  # bytes after the head: a body, or the proxy speaking out of turn
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            self.extra = True
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.extra = end + 4 != len(self._buffer)
            self.done.set_result(self._buffer[: end + 4])
        elif len(self._buffer) > MAX_TUNNEL_HEAD:
            self.done.set_exception(ProxyError("the forward proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ProxyError("the forward proxy closed the connection during CONNECT"))


class _TunnelHead:
    """httptools callbacks for the `CONNECT` answer's head (only its status matters)."""

    status = 0


def _tunnel_status(head: bytes) -> int:
    """The status of a `CONNECT` answer head, validated by llhttp."""
    callbacks = _TunnelHead()
    parser = httptools.HttpResponseParser(callbacks)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        raise ProxyError("the forward proxy's answer to CONNECT is not valid HTTP") from None
    return parser.get_status_code()


def _connect_failure(exc: OSError, peer: str) -> UpstreamConnectionError:
    """A named error for a failed connection, naming no address (only `peer`: "the upstream"...)."""
    error_class: type[UpstreamConnectionError] = UpstreamConnectionError
    if peer != "the upstream":
        error_class = ProxyError
    prefix = "cannot connect" if peer == "the upstream" else f"cannot connect to {peer}"
    if isinstance(exc, socket.gaierror):
        detail = exc.strerror or "unknown error"
        return (ProxyError if error_class is ProxyError else NameResolutionError)(
            f"{prefix}: the host name could not be resolved (DNS: {detail})"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSVerificationError(
            f"{prefix}: TLS certificate verification failed (CERTIFICATE_VERIFY_FAILED: {exc.verify_message})"
        )
    if isinstance(exc, ssl.SSLError):
        return error_class(f"{prefix}: TLS handshake failed ({exc.reason or type(exc).__name__})")
    if isinstance(exc, ConnectionRefusedError):
        return (ProxyError if error_class is ProxyError else ConnectionRefused)(
            f"{prefix}: Connection refused"
        )
    return error_class(f"{prefix}: {exc.strerror or type(exc).__name__}")


ProtocolFactory = Callable[[], asyncio.Protocol]


class ConnectionPool:
    """Keep-alive connections per (host, port, TLS), at most `max_connections` open in all."""

    def __init__(
        self,
        max_connections: int,
        keepalive_timeout: float,
        tls: ssl.SSLContext | None = None,
        *,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        """`tls` verifies https upstreams; by default the system's CAs (`SSL_CERT_FILE` is honoured).

        `proxies` in `urllib.request.getproxies()`'s shape ({"http": url, "https": url, "no": "a,b"});
        None (the default) reads `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` from the environment, `{}`
        connects directly. A proxy URL the client cannot use raises ValueError here, not per call."""
        self._slots = Slots(max_connections)
        self._keepalive = keepalive_timeout
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._tls = tls
        self._egress = Egress.from_environment() if proxies is None else Egress(proxies)
        self._forms: dict[Target, tuple[str, str]] = {}  # via a proxy: (request target, extra header lines)
        self.closed = False

    def proxy_for(self, target: Target) -> ForwardProxy | None:
        """The forward proxy this target's requests go through, if any."""
        if self._egress is None:
            return None
        return self._egress.proxy_for(target.host, target.port, target.tls)

    def _request_form(self, target: Target) -> tuple[str, str]:
        """The request target and extra header lines: absolute-form with the proxy's credentials for
        plain http through a proxy, origin-form otherwise (a `CONNECT` tunnel carries its own)."""
        form = self._forms.get(target)
        if form is None:
            proxy = self.proxy_for(target)
            if proxy is None or target.tls:
                form = (target.path, "")
            else:
                scheme = "https" if target.tls else "http"
                auth = f"proxy-authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
                form = (f"{scheme}://{target.host_header}{target.path}", auth)
            self._forms[target] = form
        return form

    async def request(
        self,
        target: Target,
        headers: Iterable[tuple[str, str]] | str,
        body: bytes,
        connect_timeout: float | None,
        read_timeout: float | None,
        *,
        method: str = "POST",
        deadline: float | None = None,
    ) -> Response:
        """Send the request with `body` and wait for the final answer's head. Timeouts raise `TimeoutError`.

        `deadline` (loop time) bounds the whole exchange, the body's reads included: past it, the wait
        for a connection slot, the connection's set-up or a read fails with `DeadlineExceeded`. It rides
        on the connection's read timer (no timer of its own while the connection is reused)."""
        if self.closed:
            raise UpstreamConnectionError("the upstream client is closed")
        if self._egress is None:
            head = [
                target.post_head
                if method == "POST"
                else f"{method} {target.path} HTTP/1.1\r\nhost: {target.host_header}\r\n"
            ]
        else:
            request_target, extra = self._request_form(target)
            head = [f"{method} {request_target} HTTP/1.1\r\nhost: {target.host_header}\r\n{extra}"]
        if isinstance(headers, str):  # already as header lines ("name: value\r\n" each)
            head.append(headers)
        else:
            head.extend(f"{name}: {value}\r\n" for name, value in headers)
        head.append(f"content-length: {len(body)}\r\n\r\n" if body or method == "POST" else "\r\n")
        data = "".join(head).encode("latin-1") + body
        head_only = method == "HEAD"
        for fresh in (False, True):
            if not self._slots.take_now():
                await (self._slots.take() if deadline is None else _before(deadline, self._slots.take()))
            try:
                connection = None if fresh else self._idle_connection(target.key)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(target, connect_timeout, deadline)
            except BaseException:
                self._slots.give()
                raise
            self._busy.add(connection)
            try:
                connection.send(data, read_timeout, head_only=head_only, deadline=deadline)
                while not connection.head_done:  # the status line and headers
                    await connection.arrival()
            except UpstreamProtocolError:
                self.release(connection)
                raise
            except UpstreamConnectionError:
                self.release(connection)
                if not reused or connection.answered:
                    raise
                # A kept-alive connection the upstream closed while it sat idle (the request crossed
                # the close on the wire): nothing was answered, so send it once on a new connection.
                continue
            except BaseException as exc:
                connection.abort(exc if isinstance(exc, Exception) else UpstreamConnectionError("cancelled"))
                self.release(connection)
                raise
            if connection.status == 407 and self._egress is not None and not target.tls:
                self.release(connection)  # only a proxy answers 407: not the upstream's answer
                raise ProxyError(
                    "the forward proxy refused the request (HTTP 407: proxy authentication required)"
                )
            return Response(connection, self)
        raise AssertionError("unreachable")  # pragma: no cover

    def _idle_connection(self, key: tuple[str, int, bool]) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = time.monotonic() - self._keepalive
        while idle:
            connection = idle.pop()
            if (
                connection.keep_alive
                and connection.reusable
                and connection.idle_since >= oldest_allowed
                and not connection.has_unread_bytes()
            ):
                return connection
            connection.abort(UpstreamConnectionError("idle connection expired"))
        return None

    async def _connect(
        self, target: Target, connect_timeout: float | None, deadline: float | None = None
    ) -> Connection:
        loop = asyncio.get_running_loop()
        proxy = self.proxy_for(target)
        tls = self._tls_context() if target.tls else None
        limit = None if connect_timeout is None else loop.time() + connect_timeout
        by_deadline = deadline is not None and (limit is None or deadline < limit)
        try:
            async with asyncio.timeout_at(deadline if by_deadline else limit):
                if proxy is None:
                    return await self._open(
                        lambda: Connection(loop, target.key),
                        target.host,
                        target.port,
                        "the upstream",
                        tls,
                        target.host,
                    )
                if not target.tls:
                    return await self._open(
                        lambda: Connection(loop, target.key), proxy.host, proxy.port, "the forward proxy"
                    )
                return await self._tunnel(loop, target, proxy, tls)
        except TimeoutError:  # a subclass of OSError: keep it a timeout
            if by_deadline:
                raise DeadlineExceeded("deadline") from None
            raise ConnectTimeout("connect timeout") from None

    async def _open(
        self,
        factory: Callable[[], Connection],
        host: str,
        port: int,
        peer: str,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Connection:
        """Resolve, then try each address in turn (as `create_connection` does, but keeping each
        failure's kind: with several addresses asyncio merges them into one message without errno)."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _connect_failure(exc, peer) from None
        failure: OSError | None = None
        for _family, _type, _proto, _name, address in infos:
            try:
                _, connection = await loop.create_connection(
                    factory,
                    str(address[0]),
                    int(address[1]),
                    ssl=tls,
                    server_hostname=server_hostname if tls else None,
                )
                return connection
            except ssl.SSLError as exc:  # the certificate is the same on every address
                raise _connect_failure(exc, peer) from None
            except OSError as exc:
                failure = exc
        raise _connect_failure(failure or OSError("no address"), peer) from None

    async def _tunnel(
        self, loop: asyncio.AbstractEventLoop, target: Target, proxy: ForwardProxy, tls: ssl.SSLContext | None
    ) -> Connection:
        """`CONNECT host:port` through the proxy, then TLS with the upstream inside the tunnel."""
        setup: _TunnelSetup | None = None

        def make_setup() -> _TunnelSetup:
            nonlocal setup
            setup = _TunnelSetup(loop)
            return setup

        await self._open(
            cast(Callable[[], Connection], make_setup), proxy.host, proxy.port, "the forward proxy"
        )
        assert setup is not None and setup.transport is not None
        transport = setup.transport
        try:
            auth = f"proxy-authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
            authority = (
                target.host_header
                if ":" in target.host_header.rpartition("]")[2]
                else (f"{target.host_header}:{target.port}")
            )
            transport.write(
                f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n{auth}\r\n".encode("latin-1")
            )
            status = _tunnel_status(await setup.done)
            if not 200 <= status < 300:
                raise ProxyError(f"the forward proxy refused the tunnel to the upstream (HTTP {status})")
            if setup.extra:
                raise ProxyError("the forward proxy sent bytes after its answer to CONNECT")
            connection = Connection(loop, target.key)
            try:
                tls_transport = await loop.start_tls(
                    transport, connection, tls or self._tls_context(), server_hostname=target.host
                )
            except ssl.SSLError as exc:
                raise _connect_failure(exc, "the upstream") from None
            except OSError as exc:
                raise UpstreamConnectionError(
                    f"cannot connect: the tunnel through the forward proxy failed ({exc.strerror or type(exc).__name__})"
                ) from None
            if tls_transport is None:
                raise UpstreamConnectionError("cannot connect: the tunnel closed during the TLS handshake")
            connection.connection_made(tls_transport)  # start_tls does not call it
            return connection
        except BaseException:
            transport.abort()
            raise

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def release(self, connection: Connection) -> None:
        """Back to the idle list if the answer ended by its framing on a keep-alive connection."""
        if connection not in self._busy:
            return
        self._busy.discard(connection)
        self._slots.give()
        if connection.complete and connection.keep_alive and connection.reusable and not self.closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            connection.abort(UpstreamConnectionError("connection not reusable"))

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.abort(UpstreamConnectionError("the upstream client is closed"))
        self._idle.clear()
        for connection in list(self._busy):
            connection.abort(UpstreamConnectionError("the upstream client is closed"))
        await asyncio.sleep(0)  # let the transports' connection_lost run
