"""The pooled client for `POST /v1/complete`: one per process, with failover and bounded retries.

Retries cover what is safe to repeat (429, 529, 5xx, connection failures, timeouts) and happen only
before anything was sent to the client: for a stream, until its first real event has arrived. A failed
entry cools down (`proxy.upstream.pool`) and the next attempt goes to another healthy entry at once;
when none is left, the wait honours the upstream's `retry-after` up to `retry_after_max`, else backs off
exponentially.

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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from proxy import __version__
from proxy.config import UpstreamConfig
from proxy.errors import OpenAIError
from proxy.translate.events import Event, EventDecoder, Failure, Piece, Ping
from proxy.translate.upstream_errors import (
    RETRYABLE_STATUSES,
    STATUS_BY_TYPE,
    TRANSPORT_STATUS,
    connection_error,
    timeout_error,
    transport_error,
    upstream_error,
)
from proxy.upstream.http11 import ConnectionPool, Response, Target, UpstreamConnectionError
from proxy.upstream.pool import Entry, Pool, entries_from_config
from proxy.upstream.sse import SSEDecoder

T = TypeVar("T")

USER_AGENT = f"claude-legacy-openai-proxy/{__version__}"


class _Retryable(Exception):
    """A failure worth another attempt; carries the error to give the client if none is left."""

    def __init__(self, error: OpenAIError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


@dataclass
class Attempts:
    """What the retries cost, for the access log."""

    count: int = 0
    request_ids: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)


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


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds: float = max(0.0, float(value) * scale)
            except ValueError:
                continue
            return seconds
    return None


def _error_fields(content: bytes) -> tuple[str, str]:
    """(type, message) from an Anthropic error body, old or new shape, or from whatever came back."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return str(error.get("type", "api_error")), str(error.get("message", ""))
    text = content.decode("utf-8", "replace").strip()[:500]
    return "api_error", text or "The upstream answered with an error and no body."


def _transport_failure(exc: BaseException) -> _Retryable:
    """Failures of the exchange itself (their messages name no address), as the client would see them."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return _Retryable(timeout_error(detail))
    return _Retryable(connection_error(detail))


class UpstreamStream:
    """An open upstream stream whose first event has arrived; iterate it for the rest."""

    def __init__(
        self,
        response: Response,
        events: AsyncGenerator[Event, None],
        first: Event,
        release: Callable[[], None],
    ) -> None:
        self.response = response
        self.first = first
        self._events = events
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    async def aclose(self) -> None:
        """Stop reading and close the upstream connection (the upstream then stops generating)."""
        try:
            await self._events.aclose()
        finally:
            self.response.release()  # reused if read to its end, dropped otherwise
            if self._release is not None:
                self._release()
                self._release = None


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
        self._active = 0
        self._base_headers = [
            ("anthropic-version", config.anthropic_version),
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
        ]

    @property
    def closed(self) -> bool:
        return self._connections.closed

    @property
    def active_calls(self) -> int:
        return self._active

    async def aclose(self) -> None:
        await self._connections.aclose()

    def _headers(self, api_key: str, stream: bool) -> list[tuple[str, str]]:
        accept = "text/event-stream" if stream else "application/json"
        return [*self._base_headers, ("x-api-key", api_key), ("accept", accept)]

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
        self, model: str, attempt: Callable[[Entry], Awaitable[T]], attempts: Attempts
    ) -> T:
        tried: list[Entry] = []
        entry = self.pool.choose(model)
        for number in range(self.config.max_retries + 1):
            if entry is None:
                raise no_upstream(model)
            attempts.count += 1
            attempts.entries.append(entry.name)
            try:
                return await attempt(entry)
            except _Retryable as failure:
                self.pool.cool(entry, failure.retry_after)
                tried.append(entry)
                if number == self.config.max_retries:
                    raise failure.error from None
                following = self.pool.choose(model, tried)
                if following is None or following is entry or not self.pool.is_ready(following):
                    delay = self._delay(number, failure.retry_after)
                    if delay is None:
                        raise failure.error from None
                    await asyncio.sleep(delay)  # same entry (or none healthy): back off first
                entry = following
        raise AssertionError("unreachable")  # pragma: no cover

    def _status_error(
        self, status: int, headers: Mapping[str, str], content: bytes, server_key: bool
    ) -> OpenAIError | _Retryable:
        error_type, message = _error_fields(content)
        error = upstream_error(status, error_type, message, headers, server_key)
        if status in RETRYABLE_STATUSES:
            return _Retryable(error, _retry_after(headers))
        return error

    async def _send(
        self, entry: Entry, content: bytes, api_key: str, stream: bool, attempts: Attempts
    ) -> Response:
        """One HTTP exchange up to the response headers; transport failures become retryable errors.

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
            )
        except (UpstreamConnectionError, TimeoutError) as exc:
            raise _transport_failure(exc) from None
        if request_id := response.headers.get("request-id"):
            attempts.request_ids.append(request_id)
        return response

    async def _read(self, response: Response) -> bytes:
        try:
            return await response.read()
        except (UpstreamConnectionError, TimeoutError) as exc:
            raise _transport_failure(exc) from None
        finally:
            response.release()

    async def complete(
        self, model: str, body: dict[str, Any], client_key: str | None, attempts: Attempts
    ) -> dict[str, Any]:
        """A non-streamed completion: the upstream's JSON body."""
        content = orjson.dumps(body)

        async def attempt(entry: Entry) -> dict[str, Any]:
            api_key = entry.api_key or client_key or ""
            try:
                async with asyncio.timeout(entry.timeouts.total):
                    response = await self._send(entry, content, api_key, False, attempts)
                    payload = await self._read(response)
            except TimeoutError:
                raise _Retryable(timeout_error("no complete answer within upstream.timeouts.total")) from None
            if response.status != 200:
                raise self._status_error(
                    response.status, response.headers, payload, entry.api_key is not None
                )
            try:
                result = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise _Retryable(
                    connection_error("the upstream answered 200 with a body that is not JSON")
                ) from None
            if not isinstance(result, dict) or "completion" not in result:
                raise _Retryable(connection_error("the upstream answered 200 without a completion"))
            return result

        self._acquire()
        try:
            return await self._with_retries(model, attempt, attempts)
        finally:
            self._release()

    async def stream(
        self, model: str, body: dict[str, Any], client_key: str | None, attempts: Attempts
    ) -> UpstreamStream:
        """Open a stream and wait for its first real event, retrying failures until then."""
        content = orjson.dumps(body)
        loop = asyncio.get_running_loop()

        async def attempt(entry: Entry) -> UpstreamStream:
            api_key = entry.api_key or client_key or ""
            server_key = entry.api_key is not None
            deadline = loop.time() + entry.timeouts.total
            try:
                async with asyncio.timeout(min(entry.timeouts.first_byte, entry.timeouts.total)):
                    response = await self._send(entry, content, api_key, True, attempts)
                    if response.status != 200:
                        error_body = await self._read(response)
                        raise self._status_error(response.status, response.headers, error_body, server_key)
                    events = _events(response, EventDecoder(self.config.anthropic_version), deadline)
                    first = await _first_event(events, response)
            except TimeoutError:
                raise _Retryable(
                    timeout_error("no first event within upstream.timeouts.first_byte")
                ) from None
            if isinstance(first, Failure):
                await events.aclose()
                response.close()
                if first.type in TRANSPORT_STATUS:
                    raise _Retryable(transport_error(first.type, first.message))
                status = STATUS_BY_TYPE.get(first.type, 500)
                error = upstream_error(status, first.type, first.message, response.headers, server_key)
                if status in RETRYABLE_STATUSES:
                    raise _Retryable(error)
                raise error
            return UpstreamStream(response, events, first, self._release)

        self._acquire()
        try:
            return await self._with_retries(model, attempt, attempts)
        except BaseException:
            self._release()
            raise


async def _first_event(events: AsyncGenerator[Event, None], response: Response) -> Event:
    """The stream's first event that is not a ping; closes everything if waiting for it fails."""
    try:
        async for event in events:
            if not isinstance(event, Ping):
                return event
    except BaseException:
        await events.aclose()
        response.close()
        raise
    return Failure("upstream_connection_error", "The upstream closed the stream before sending anything.")


async def _events(response: Response, decoder: EventDecoder, deadline: float) -> AsyncGenerator[Event, None]:
    """Pipeline stage: upstream bytes → SSE events → decoded events; transport failures become Failures.

    The `total` deadline is a timer that closes the response; the read then fails and the stream ends
    with an in-band timeout. After the final event the rest of the body is drained (2023-01-01 still
    sends `[DONE]`), so the connection goes back to the pool instead of being dropped.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        response.close()

    timer = asyncio.get_running_loop().call_at(deadline, expire)
    finished = False
    sse = SSEDecoder()
    try:
        chunk: bytes | None = b""
        while chunk is not None:
            chunk = await response.next_chunk()
            for name, data in sse.feed(chunk) if chunk is not None else sse.close():
                if finished:
                    continue
                event = decoder.decode(name, data)
                yield event
                if isinstance(event, Failure):
                    return
                finished = isinstance(event, Piece) and event.stop_reason is not None
    except TimeoutError:
        if not finished:
            yield Failure("upstream_timeout", "The upstream stopped sending events (idle timeout).")
        return
    except UpstreamConnectionError:
        if not finished:
            if expired:
                yield Failure("upstream_timeout", "The upstream stream exceeded upstream.timeouts.total.")
            else:
                yield Failure(
                    "upstream_connection_error", "The connection to the upstream was lost mid-stream."
                )
        return
    finally:
        timer.cancel()
    if not finished:
        if expired:
            yield Failure("upstream_timeout", "The upstream stream exceeded upstream.timeouts.total.")
        else:
            yield Failure(
                "upstream_connection_error", "The upstream closed the stream before the completion finished."
            )
