"""The pooled client for `POST /v1/complete`: one per process, with bounded retries.

Retries cover what is safe to repeat (429, 529, 5xx, connection failures, timeouts) and happen only
before anything was sent to the client: for a stream, until its first real event has arrived.
The wait honours the upstream's `retry-after` up to `retry_after_max`, else backs off exponentially.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson

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
from proxy.upstream.sse import iter_sse

T = TypeVar("T")

COMPLETE_PATH = "/v1/complete"


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


def _retry_after(headers: httpx.Headers) -> float | None:
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


class UpstreamStream:
    """An open upstream stream whose first event has arrived; iterate it for the rest."""

    def __init__(self, response: httpx.Response, events: AsyncGenerator[Event, None], first: Event) -> None:
        self.response = response
        self.first = first
        self._events = events

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    async def aclose(self) -> None:
        """Stop reading and close the upstream connection (the upstream then stops generating)."""
        await self._events.aclose()
        await self.response.aclose()


class UpstreamClient:
    """Sends translated requests upstream over one pooled `httpx.AsyncClient`."""

    def __init__(self, config: UpstreamConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._url = config.base_url + COMPLETE_PATH
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
            ),
            transport=transport,
        )

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, api_key: str) -> dict[str, str]:
        return {
            "x-api-key": api_key,
            "anthropic-version": self.config.anthropic_version,
            "content-type": "application/json",
            "accept": "application/json",
        }

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None when the wait would be too long."""
        if retry_after is not None:
            return retry_after if retry_after <= self.config.retry_after_max else None
        backoff: float = min(self.config.backoff_initial * 2**attempt, self.config.backoff_max)
        return backoff * (1 - 0.25 * random.random())

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], attempts: Attempts) -> T:
        for number in range(self.config.max_retries + 1):
            attempts.count += 1
            try:
                return await attempt()
            except _Retryable as failure:
                delay = self._delay(number, failure.retry_after)
                if number == self.config.max_retries or delay is None:
                    raise failure.error from None
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _status_error(
        self, status: int, headers: httpx.Headers, content: bytes, server_key: bool
    ) -> OpenAIError | _Retryable:
        error_type, message = _error_fields(content)
        error = upstream_error(status, error_type, message, headers, server_key)
        if status in RETRYABLE_STATUSES:
            return _Retryable(error, _retry_after(headers))
        return error

    async def _send(self, content: bytes, api_key: str, stream: bool, attempts: Attempts) -> httpx.Response:
        """One HTTP exchange; transport failures become retryable errors."""
        request = self._http.build_request("POST", self._url, content=content, headers=self._headers(api_key))
        try:
            response = await self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise _Retryable(timeout_error(type(exc).__name__)) from None
        except httpx.TransportError as exc:
            raise _Retryable(connection_error(type(exc).__name__)) from None
        if request_id := response.headers.get("request-id"):
            attempts.request_ids.append(request_id)
        return response

    async def complete(
        self, body: dict[str, Any], api_key: str, server_key: bool, attempts: Attempts
    ) -> dict[str, Any]:
        """A non-streamed completion: the upstream's JSON body."""
        content = orjson.dumps(body)

        async def attempt() -> dict[str, Any]:
            response = await self._send(content, api_key, False, attempts)
            if response.status_code != 200:
                error = self._status_error(
                    response.status_code, response.headers, response.content, server_key
                )
                raise error
            try:
                result = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise _Retryable(
                    connection_error("the upstream answered 200 with a body that is not JSON")
                ) from None
            if not isinstance(result, dict) or "completion" not in result:
                raise _Retryable(connection_error("the upstream answered 200 without a completion"))
            return result

        return await self._with_retries(attempt, attempts)

    async def stream(
        self, body: dict[str, Any], api_key: str, server_key: bool, attempts: Attempts
    ) -> UpstreamStream:
        """Open a stream and wait for its first real event, retrying failures until then."""
        content = orjson.dumps(body)

        async def attempt() -> UpstreamStream:
            response = await self._send(content, api_key, True, attempts)
            if response.status_code != 200:
                try:
                    error_body = await response.aread()
                except httpx.HTTPError:
                    error_body = b""
                finally:
                    await response.aclose()
                raise self._status_error(response.status_code, response.headers, error_body, server_key)
            events = _events(response, EventDecoder(self.config.anthropic_version))
            first: Event = Failure(
                "upstream_connection_error", "The upstream closed the stream before sending anything."
            )
            try:
                async for event in events:
                    if not isinstance(event, Ping):
                        first = event
                        break
            except BaseException:
                await events.aclose()
                await response.aclose()
                raise
            if isinstance(first, Failure):
                await events.aclose()
                await response.aclose()
                if first.type in TRANSPORT_STATUS:
                    raise _Retryable(transport_error(first.type, first.message))
                status = STATUS_BY_TYPE.get(first.type, 500)
                error = upstream_error(status, first.type, first.message, response.headers, server_key)
                if status in RETRYABLE_STATUSES:
                    raise _Retryable(error)
                raise error
            return UpstreamStream(response, events, first)

        return await self._with_retries(attempt, attempts)


async def _events(response: httpx.Response, decoder: EventDecoder) -> AsyncGenerator[Event, None]:
    """Pipeline stage: upstream bytes → SSE events → decoded events; transport failures become Failures.

    After the final event the rest of the body is drained (2023-01-01 still sends `[DONE]`), so the
    connection goes back to the pool instead of being dropped.
    """
    finished = False
    try:
        async for name, data in iter_sse(response.aiter_raw()):
            if finished:
                continue
            event = decoder.decode(name, data)
            yield event
            if isinstance(event, Failure):
                return
            finished = isinstance(event, Piece) and event.stop_reason is not None
    except httpx.TimeoutException:
        if not finished:
            yield Failure("upstream_timeout", "The upstream stopped sending events (read timeout).")
        return
    except httpx.TransportError:
        if not finished:
            yield Failure("upstream_connection_error", "The connection to the upstream was lost mid-stream.")
        return
    if not finished:
        yield Failure(
            "upstream_connection_error", "The upstream closed the stream before the completion finished."
        )
