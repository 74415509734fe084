"""The pooled client for `POST /v1/complete`: one per process, with failover and bounded retries.

Retries cover what is safe to repeat (429, 529, 5xx, connection failures, timeouts) and happen only
before anything was sent to the client: for a stream, until its first real event has arrived. A failed
entry cools down (`proxy.upstream.pool`) and the next attempt goes to another healthy entry at once;
when none is left, the wait honours the upstream's `retry-after` up to `retry_after_max`, else backs off
exponentially.

The client reports what happened, not what the client of the proxy should see: an answer's JSON, an
open stream of decoded events, or an `UpstreamFailure` with the upstream's status, error type and
message. `proxy.translate.upstream_errors` maps failures to OpenAI errors.

I/O is `proxy.upstream.http11`: one keep-alive connection pool per process, created and closed in the
app's lifespan. It costs a fraction of a general-purpose client per call, which matters because the
proxy's whole budget is a fraction of a millisecond per request (figures in bench/RESULTS.md).

Timeouts per entry (`upstream.timeouts`): `connect`; `first_byte` (response headers, and a stream's
first event); `idle` (silence between stream reads); `total` (the whole exchange; a stream past its
deadline is closed and ends with an in-band timeout error).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import orjson

from proxy import __version__
from proxy.config import UpstreamConfig
from proxy.errors import OpenAIError
from proxy.translate.events import Event, EventDecoder, Failure, Piece, Ping
from proxy.translate.upstream_errors import (
    CONNECTION_ERROR,
    STATUS_BY_TYPE,
    TIMEOUT,
    connection_error,
    error_fields,
    retry_after_seconds,
    retryable,
    timeout_error,
)
from proxy.upstream.http11 import (
    ConnectionPool,
    DeadlineExceeded,
    Response,
    Target,
    UpstreamConnectionError,
)
from proxy.upstream.pool import Entry, Pool, entries_from_config
from proxy.upstream.sse import SSEDecoder

if TYPE_CHECKING:
    from proxy.tracing import AttemptSpan, Tracing

T = TypeVar("T")

USER_AGENT = f"claude-legacy-openai-proxy/{__version__}"

#: Longest upstream `request-id` passed on to clients and logs (ids are ~30 characters).
MAX_REQUEST_ID = 128

#: Seconds a finished stream's connection may take to end its body before it is dropped, not reused.
END_OF_BODY_GRACE = 1.0


class UpstreamFailure(Exception):
    """The upstream failed: its HTTP status (None when it never answered), error type and message."""

    def __init__(
        self,
        status: int | None,
        error_type: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        server_key: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers: Mapping[str, str] = headers or {}
        self.server_key = server_key

    @property
    def retryable(self) -> bool:
        return retryable(self.status, self.error_type)


def _transport(kind: tuple[str, str]) -> UpstreamFailure:
    return UpstreamFailure(None, kind[0], kind[1])


class Attempts:
    """What the retries cost, for the access log (a plain class with slots: one per request)."""

    __slots__ = ("count", "entries", "request_ids")

    def __init__(self) -> None:
        self.count = 0
        self.request_ids: list[str] = []
        self.entries: list[str] = []


def overloaded() -> OpenAIError:
    return OpenAIError(
        503,
        "The proxy is handling as many upstream calls as it is configured for. Please retry shortly.",
        type="server_error",
        code="server_overloaded",
        headers={"retry-after": "1"},
    )


def no_upstream(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` is not served by any configured upstream.",
        type="invalid_request_error",
        code="model_not_found",
    )


def _request_id(value: str) -> str:
    """An upstream `request-id` made safe to pass on: printable ASCII, at most MAX_REQUEST_ID long."""
    value = value[:MAX_REQUEST_ID]
    if value.isascii() and value.isprintable() and " " not in value:
        return value  # the usual id: nothing to drop (checked in C, not per character)
    return "".join(c for c in value if "!" <= c <= "~")


def _note_request_id(response: Response, attempts: Attempts) -> None:
    if request_id := response.request_id:
        attempts.request_ids.append(_request_id(request_id))


def _transport_failure(exc: BaseException) -> UpstreamFailure:
    """Failures of the exchange itself (their messages name no address)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return _transport(timeout_error(detail))
    return _transport(connection_error(detail))


class UpstreamStream:
    """An open upstream stream whose first event has arrived.

    `first` holds the events that came with the first real one; `read()` returns the events of each
    following piece of the body, and None once the stream has ended (after a final event, or after
    the `Failure` that says why it ended early). No generator or task per stream: the relay calls
    `read()` directly.
    """

    __slots__ = (
        "_deadline",
        "_decoder",
        "_pending",
        "_sse",
        "ending",
        "finished",
        "first",
        "on_close",
        "response",
        "span",
    )

    def __init__(self, response: Response, decoder: EventDecoder, deadline: float) -> None:
        self.response = response
        self.first: list[Event] = []
        self.finished = False  # the final event (or a failure) has been read
        self._decoder = decoder
        self._sse: SSEDecoder | None = SSEDecoder()
        self.on_close: Callable[[], None] | None = None  # gives back the call slot
        self.ending: Event | None = None  # the final event, or the failure that ended the stream
        self.span: AttemptSpan | None = None  # the attempt's span while tracing: ends at `aclose`
        # The `total` deadline rides on the connection's read timer (no timer per stream): past it,
        # the pending read fails with a TimeoutError, reported as the total timeout.
        self._deadline = deadline
        response.set_deadline(deadline)
        self._pending: list[Event] | None = None  # read with the first event, given by the next read

    def _decode(self, chunk: bytes | None) -> list[Event]:
        sse = self._sse
        assert sse is not None
        events: list[Event] = []
        for name, data in sse.feed(chunk) if chunk is not None else sse.close():
            event = self._decoder.decode(name, data)
            events.append(event)
            if isinstance(event, Failure) or (isinstance(event, Piece) and event.stop_reason is not None):
                self.finished = True
                self.ending = event
                break
        return events

    def _ended(self, reason: str) -> list[Event]:
        self.finished = True
        self.ending = Failure(*connection_error(reason))
        return [self.ending]

    async def read(self) -> list[Event] | None:
        """The events of the next piece of the body ([] when it completed none); None after the end."""
        if self._pending is not None:
            events, self._pending = self._pending, None
            return events
        if self.finished or self._sse is None:
            return None
        try:
            chunk = await self.response.next_chunk()
        except TimeoutError:
            self.finished = True
            if asyncio.get_running_loop().time() >= self._deadline:
                self.ending = Failure(*timeout_error("the stream exceeded upstream.timeouts.total"))
            else:
                self.ending = Failure(*timeout_error("the upstream stopped sending events (idle timeout)"))
            return [self.ending]
        except UpstreamConnectionError:
            return self._ended("the connection was lost mid-stream")
        events = self._decode(chunk)
        if chunk is None and not self.finished:
            return [*events, *self._ended("the upstream closed the stream before the completion finished")]
        return events

    async def open(self) -> list[Event]:
        """Read until the first event that is not a ping; returns the events read so far, up to that one.

        Events that came in the same read after it are kept for the next `read()`: what follows the
        first event (a failure included) belongs to the stream, however the bytes were split."""
        while True:
            events = await self.read()
            if events is None:
                return [Failure(*connection_error("the upstream closed the stream before sending anything"))]
            for index, event in enumerate(events):
                if not isinstance(event, Ping):
                    self.first += events[: index + 1]
                    if index + 1 < len(events):
                        self._pending = events[index + 1 :]
                    return self.first
            self.first += events

    async def aclose(self) -> None:
        """Stop reading: the connection is reused when its body has ended, else dropped (the upstream then
        stops generating). A finished stream whose body is still open gets END_OF_BODY_GRACE to end it."""
        self._sse = None
        try:
            if self.finished and not self.response.closed:
                try:
                    async with asyncio.timeout(END_OF_BODY_GRACE):
                        while await self.response.next_chunk() is not None:
                            pass
                except (TimeoutError, UpstreamConnectionError):
                    self.response.close()
        finally:
            self.response.release()  # reused if read to its end, dropped otherwise
            if self.on_close is not None:
                self.on_close()
                self.on_close = None
            if self.span is not None:
                self._end_span(self.span)

    def _end_span(self, span: AttemptSpan) -> None:
        self.span = None
        ending = self.ending
        if isinstance(ending, Piece):
            span.closed(stop_reason=ending.stop_reason, error=None)
        elif isinstance(ending, Failure):
            span.closed(stop_reason=None, error=ending.type)
        else:  # closed before its end: the client left, or the proxy stopped reading
            span.closed(stop_reason=None, error="cancelled")


class UpstreamClient:
    """Sends translated requests upstream over one keep-alive connection pool.

    The pool keeps no cookies: an upstream's (or its CDN's) `Set-Cookie` never travels from one
    client's call into another's.
    """

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.pool = Pool(entries_from_config(config), config.cooldown)
        self._connections = ConnectionPool(config.max_connections, config.keepalive_timeout)
        self._targets = {entry.url: Target.parse(entry.url) for entry in self.pool.entries}
        #: What must never reach a client, even when an upstream echoes it: the server's keys and any
        #: password in an upstream URL.
        self.secrets = tuple(
            secret
            for entry in self.pool.entries
            for secret in (entry.api_key, urlsplit(entry.url).password)
            if secret
        )
        self._active = 0
        #: The loop the client serves (the app's, as its connection pool), bound at the first call:
        #: `asyncio.get_running_loop()` costs a `getpid` system call on every call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set by the app's lifespan; its `tracer` is None while tracing is off.
        self.tracing: Tracing | None = None
        self._base_headers = [
            ("anthropic-version", config.anthropic_version),
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
        ]
        #: The same lines as written on the wire, for the calls without tracing (one format per call).
        self._base_lines = "".join(f"{name}: {value}\r\n" for name, value in self._base_headers)

    @property
    def closed(self) -> bool:
        return self._connections.closed

    @property
    def active_calls(self) -> int:
        return self._active

    async def aclose(self) -> None:
        await self._connections.aclose()

    def _headers(self, api_key: str, stream: bool) -> str | list[tuple[str, str]]:
        """The request's headers: as header lines when there is no trace context to add."""
        accept = "text/event-stream" if stream else "application/json"
        if self.tracing is None or self.tracing.tracer is None:
            return f"{self._base_lines}x-api-key: {api_key}\r\naccept: {accept}\r\n"
        headers = [*self._base_headers, ("x-api-key", api_key), ("accept", accept)]
        self.tracing.inject(headers)  # the current attempt span's `traceparent`
        return headers

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _acquire(self) -> None:
        if self._active >= self.config.max_concurrent_calls:
            raise overloaded()
        self._active += 1

    def _release(self) -> None:
        self._active -= 1

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None when the wait would be too long."""
        if retry_after is not None:
            return retry_after if retry_after <= self.config.retry_after_max else None
        backoff: float = min(self.config.backoff_initial * 2**attempt, self.config.backoff_max)
        return backoff * (1 - 0.25 * random.random())

    async def _with_retries(
        self,
        model: str,
        attempt: Callable[[Entry], Awaitable[T]],
        attempts: Attempts,
        body: dict[str, Any],
        stream: bool,
    ) -> T:
        tried: list[Entry] = []
        tracing = self.tracing if self.tracing is not None and self.tracing.tracer is not None else None
        entry = self.pool.choose(model)
        for number in range(self.config.max_retries + 1):
            if entry is None:
                raise no_upstream(model)
            attempts.count += 1
            attempts.entries.append(entry.name)
            try:
                if tracing is None:
                    return await attempt(entry)
                target = self._targets[entry.url]
                span = tracing.attempt_span(
                    model, body, host=target.host, port=target.port, entry=entry.name, stream=stream
                )
                result = await span.run(attempt, entry)
                if isinstance(result, UpstreamStream):
                    result.span = span  # a stream's span lasts until the stream is closed
                return result
            except UpstreamFailure as failure:
                if not failure.retryable:
                    raise
                retry_after = retry_after_seconds(failure.headers)
                self.pool.cool(entry, retry_after)
                tried.append(entry)
                if number == self.config.max_retries:
                    raise
                following = self.pool.choose(model, tried)
                if following is None or following is entry or not self.pool.is_ready(following):
                    delay = self._delay(number, retry_after)
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)  # same entry (or none healthy): back off first
                entry = following
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        entry: Entry,
        content: bytes,
        api_key: str,
        stream: bool,
        attempts: Attempts,
        deadline: float | None = None,
    ) -> Response:
        """One HTTP exchange up to the response headers; transport failures become UpstreamFailures,
        except `DeadlineExceeded` (past `deadline`, loop time), which the caller reports.

        Reads time out after `idle` seconds of silence for streams (the first event is bounded by the
        caller), after `first_byte` for plain answers."""
        t = entry.timeouts
        try:
            response = await self._connections.request(
                self._targets[entry.url],
                self._headers(api_key, stream),
                content,
                t.connect,
                t.idle if stream else t.first_byte,
                deadline=deadline,
            )
        except DeadlineExceeded:
            raise
        except (UpstreamConnectionError, TimeoutError) as exc:
            raise _transport_failure(exc) from None
        _note_request_id(response, attempts)
        return response

    async def _read(self, response: Response) -> bytes:
        try:
            return await response.read()
        except DeadlineExceeded:
            raise
        except (UpstreamConnectionError, TimeoutError) as exc:
            raise _transport_failure(exc) from None
        finally:
            response.release()

    async def _status_failure(self, response: Response, server_key: bool) -> UpstreamFailure:
        """An answer other than 200: its status, and the type and message of its error body."""
        error_type, message = error_fields(await self._read(response))
        return UpstreamFailure(
            response.status, error_type, message, headers=response.headers, server_key=server_key
        )

    async def complete(
        self, model: str, body: dict[str, Any], client_key: str | None, attempts: Attempts
    ) -> dict[str, Any]:
        """A non-streamed completion: the upstream's JSON body.

        `upstream.timeouts.total` is a deadline on the connection's own read timer, not an
        `asyncio.timeout` (about 5 µs per call): every wait of the exchange (a connection slot, the
        connection's set-up, the head, the body) fails with `DeadlineExceeded` once it has passed."""
        content = orjson.dumps(body)
        loop = self._loop or self._bind_loop()

        async def attempt(entry: Entry) -> dict[str, Any]:
            # `_send` and `_read` written out: two coroutines less per call on the common path.
            t = entry.timeouts
            try:
                response = await self._connections.request(
                    self._targets[entry.url],
                    self._headers(entry.api_key or client_key or "", False),
                    content,
                    t.connect,
                    t.first_byte,
                    deadline=loop.time() + t.total,
                )
                _note_request_id(response, attempts)
                if response.status != 200:
                    raise await self._status_failure(response, entry.api_key is not None)
                try:
                    payload = await response.read()
                finally:
                    response.release()
            except DeadlineExceeded:
                raise _transport(timeout_error("no complete answer within upstream.timeouts.total")) from None
            except (UpstreamConnectionError, TimeoutError) as exc:
                raise _transport_failure(exc) from None
            try:
                result = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise _transport(
                    connection_error("the upstream answered 200 with a body that is not JSON")
                ) from None
            if not isinstance(result, dict) or not isinstance(result.get("completion"), str):
                raise _transport(connection_error("the upstream answered 200 without a completion"))
            return result

        self._acquire()
        try:
            return await self._with_retries(model, attempt, attempts, body, False)
        finally:
            self._release()

    async def stream(
        self, model: str, body: dict[str, Any], client_key: str | None, attempts: Attempts
    ) -> UpstreamStream:
        """Open a stream and wait for its first real event, retrying failures until then."""
        # A right-sized copy: orjson's bytes keep a 4 KiB buffer whatever their length, and this waits
        # for the first event (every open stream at once, after a burst of requests).
        content = bytes(memoryview(orjson.dumps(body)))
        loop = self._loop or self._bind_loop()

        async def attempt(entry: Entry) -> UpstreamStream:
            api_key = entry.api_key or client_key or ""
            server_key = entry.api_key is not None
            deadline = loop.time() + entry.timeouts.total
            stream: UpstreamStream | None = None
            try:
                async with asyncio.timeout(min(entry.timeouts.first_byte, entry.timeouts.total)):
                    response = await self._send(entry, content, api_key, True, attempts)
                    if response.status != 200:
                        raise await self._status_failure(response, server_key)
                    response.compact()  # held for the whole stream: its headers in their smaller form
                    stream = UpstreamStream(response, EventDecoder(self.config.anthropic_version), deadline)
                    first = await stream.open()
            except BaseException as exc:
                if stream is not None:
                    stream.finished = False  # drop the connection: the body is not over
                    await stream.aclose()
                if isinstance(exc, TimeoutError):
                    raise _transport(
                        timeout_error("no first event within upstream.timeouts.first_byte")
                    ) from None
                raise
            failure = next((event for event in first if isinstance(event, Failure)), None)
            if failure is not None:
                stream.finished = False
                await stream.aclose()
                status = (
                    None
                    if failure.type in (CONNECTION_ERROR, TIMEOUT)
                    else STATUS_BY_TYPE.get(failure.type, 500)
                )
                raise UpstreamFailure(
                    status, failure.type, failure.message, headers=response.headers, server_key=server_key
                )
            stream.on_close = self._release
            return stream

        self._acquire()
        try:
            return await self._with_retries(model, attempt, attempts, body, True)
        except BaseException:
            self._release()
            raise
