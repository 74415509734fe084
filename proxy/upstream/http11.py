"""A small pooled HTTP/1.1 client for the one call the proxy makes: `POST` a JSON body, read the answer
whole or as it streams.

Why not a general client: a general client's features (redirects, cookies, auth flows, proxies,
multipart, tracing hooks) cost CPU on every call and the proxy uses none of them. This one writes each
request with a single `write`, parses answers with `httptools` (llhttp, the parser uvicorn uses for the
server side), keeps connections alive per host, and costs a fraction of aiohttp per call (figures in
bench/RESULTS.md).

Timeouts, all raised as `TimeoutError`: `connect` (TCP and TLS set-up); `read` (silence while an answer
is awaited or read: the first byte of a plain answer, the gap between a stream's chunks), watched by one
timer per connection that is moved only when it fires, not on every chunk. Anything else that ends the
exchange early is an `UpstreamConnectionError`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

#: Buffered answer bytes above which a connection stops reading until the consumer catches up.
HIGH_WATER = 64 * 1024


class UpstreamConnectionError(Exception):
    """The exchange failed: connection refused or lost, or an answer that is not valid HTTP/1.1."""


@dataclass(frozen=True)
class Target:
    """Where one URL's requests go, with the request head's constant part prepared once."""

    host: str
    port: int
    tls: bool
    path: str
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # an IPv6 literal keeps its brackets in the Host header
            host_header = parts.netloc.rpartition("@")[2]
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, port, tls, path, host_header)

    @property
    def key(self) -> tuple[str, int, bool]:
        return (self.host, self.port, self.tls)


class Response:
    """An answer whose status and headers have arrived; the body is read with `read()` or `next_chunk()`.

    Header names are lower-cased; a repeated header keeps its last value. `release()` returns the
    connection to the pool when the body was read to its end, `close()` drops it.
    """

    def __init__(self, connection: Connection, pool: ConnectionPool) -> None:
        self._connection = connection
        self._pool = pool
        self.status: int = connection.status
        self.headers: dict[str, str] = connection.headers
        self.closed = False

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._connection.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrived, or None at its end (the stream pump's read)."""
        return await self._connection.next_chunk()

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
    """One keep-alive connection carrying one exchange at a time; httptools calls the `on_*` methods."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int, bool]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()
        self.error: BaseException | None = None  # set once: the connection is unusable from then on

    def _reset(self) -> None:
        self.status = 0
        self.answered = False  # any byte of the answer has arrived
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self._framed = False  # content-length or chunked: the body's end is known without EOF
        self.chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.answered = True
        self._last_data = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(UpstreamConnectionError(f"invalid HTTP answer from the upstream: {exc}"))
            return
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close our side too: the connection_lost that follows settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.head_done and not self.complete and not self._framed and self.error is None:
            self.complete = True  # a body delimited by the end of the connection
            self.keep_alive = False
        elif self.error is None:
            self.error = UpstreamConnectionError(
                "the upstream closed the connection" + (f" ({exc})" if exc else "")
            )
        self._cancel_timer()
        self._wake()

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.headers[key] = value.decode("latin-1")
        if key == "content-length" or (key == "transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._cancel_timer()

    # -- the exchange -------------------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return self.error is None and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, read_timeout: float | None) -> None:
        """Write one request; `read_timeout` bounds every wait for the answer from here on."""
        if self.transport is None or self.transport.is_closing():
            raise self.error or UpstreamConnectionError("the upstream closed the connection")
        self._reset()
        self._read_timeout = read_timeout
        self._last_data = self.loop.time()
        if read_timeout is not None:
            self._timer = self.loop.call_at(self._last_data + read_timeout, self._check_silence)
        self.transport.write(data)

    def _check_silence(self) -> None:
        """The read timer: fires at most once per `read` seconds, and only then looks at the clock."""
        self._timer = None
        if self.complete or self.error is not None or self._read_timeout is None:
            return
        now = self.loop.time()
        due = self._last_data + self._read_timeout
        if self._paused:  # silence while we hold the reading back is ours, not the upstream's
            due = now + self._read_timeout
        elif now >= due:
            self.abort(TimeoutError("read timeout"))
            return
        self._timer = self.loop.call_at(due, self._check_silence)

    async def head(self) -> None:
        """Wait for the status line and headers."""
        while not self.head_done:
            await self._wait()

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while not self.chunks:
            if self.complete:
                return None
            await self._wait()
        chunk = self.chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= HIGH_WATER // 4 and self.transport is not None:
            self._paused = False
            self._last_data = self.loop.time()
            self.transport.resume_reading()
        return chunk

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

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


class ConnectionPool:
    """Keep-alive connections per (host, port, TLS), at most `max_connections` open in all."""

    def __init__(
        self, max_connections: int, keepalive_timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        """`tls` verifies https upstreams; by default the system's CAs (`SSL_CERT_FILE` is honoured)."""
        self._slots = asyncio.Semaphore(max_connections)
        self._keepalive = keepalive_timeout
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._tls = tls
        self.closed = False

    async def request(
        self,
        target: Target,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Response:
        """Send `POST` with `body` and wait for the answer's head. Timeouts raise `TimeoutError`."""
        if self.closed:
            raise UpstreamConnectionError("the upstream client is closed")
        head = [f"POST {target.path} HTTP/1.1\r\nhost: {target.host_header}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in headers)
        head.append(f"content-length: {len(body)}\r\n\r\n")
        data = "".join(head).encode("latin-1") + body
        for fresh in (False, True):
            await self._slots.acquire()
            try:
                connection = None if fresh else self._idle_connection(target.key)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(target, connect_timeout)
            except BaseException:
                self._slots.release()
                raise
            self._busy.add(connection)
            try:
                connection.send(data, read_timeout)
                await connection.head()
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
            return Response(connection, self)
        raise AssertionError("unreachable")  # pragma: no cover

    def _idle_connection(self, key: tuple[str, int, bool]) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = time.monotonic() - self._keepalive
        while idle:
            connection = idle.pop()
            if connection.reusable and connection.idle_since >= oldest_allowed:
                return connection
            connection.abort(UpstreamConnectionError("idle connection expired"))
        return None

    async def _connect(self, target: Target, connect_timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if target.tls else None
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, target.key),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
        except TimeoutError:  # a subclass of OSError: keep it a timeout
            raise TimeoutError("connect timeout") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS; the message names no address
            reason = (
                getattr(exc, "reason", None) or (exc.errno and os.strerror(exc.errno)) or type(exc).__name__
            )
            raise UpstreamConnectionError(f"cannot connect: {reason}") from None
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def release(self, connection: Connection) -> None:
        """Back to the idle list if the answer was read to its end on a keep-alive connection."""
        if connection not in self._busy:
            return
        self._busy.discard(connection)
        self._slots.release()
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
