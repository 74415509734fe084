"""An SSE response that stops its producer — and so the upstream request — as soon as the client leaves.

Starlette's StreamingResponse notices a disconnect only through an anyio cancel scope, inside which the
producer's cleanup (closing the upstream connection) would itself be cancelled. Here the client's
departure (`proxy.http.disconnect.Interruption`) cancels the sending task once, asyncio-style, so the
producer's `finally` runs to completion. The producer writes through a callback rather than being
iterated: no generator frame per stream, and no task of its own either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.types import Receive, Scope, Send

from proxy.http.disconnect import Interruption
from proxy.http.drain import Drain

Write = Callable[[bytes], Awaitable[None]]
Producer = Callable[[Write], Awaitable[None]]

SSE_HEADERS: dict[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
_SSE_RAW_HEADERS = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SSE_HEADERS.items()]


class EventStreamResponse:
    """ASGI app sending what `produce` writes as a `text/event-stream`, flushed per write.

    `last_words` gives the bytes that end the stream when the shutdown deadline cuts it (an in-band
    error in the surface's format); `on_close` runs afterwards in every case, also when nothing was sent.
    A subclass may override the methods `produce`, `last_words` and `close` instead of passing
    callables: one object per stream instead of a closure per callback, as an open stream holds them
    for its whole life.
    """

    __slots__ = ("_last_words", "_on_close", "_producer", "_send", "drain", "first_write", "raw_headers")

    def __init__(
        self,
        produce: Producer | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        last_words: Callable[[], bytes] | None = None,
        drain: Drain | None = None,
    ) -> None:
        self._producer = produce
        #: The response head's headers; None once it has been sent (a stream need not keep them).
        self.raw_headers: list[tuple[bytes, bytes]] | None
        if headers and any(name in SSE_HEADERS for name in headers):
            headers = {**SSE_HEADERS, **headers}
            self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        elif headers:
            self.raw_headers = _SSE_RAW_HEADERS + [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            ]
        else:
            self.raw_headers = _SSE_RAW_HEADERS  # sent as is: uvicorn and the middleware only read it
        self._on_close = on_close
        self._last_words = last_words
        self.drain = drain
        self.first_write: float | None = None  # perf_counter of the first body bytes

    def produce(self) -> Awaitable[None]:
        """Write the body with `self.write`: by default, what the `produce` callable writes."""
        assert self._producer is not None, "EventStreamResponse needs `produce` or a subclass's method"
        return self._producer(self.write)

    def last_words(self) -> bytes:
        """The stream's in-band end when the shutdown deadline cuts it."""
        return self._last_words() if self._last_words is not None else b""

    async def close(self) -> None:
        """Runs once the response is over, in every case."""
        if self._on_close is not None:
            await self._on_close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; the client leaving stops the producer (its `finally` closes the upstream),
        the shutdown deadline stops it and ends the stream in-band."""
        self._send = send
        interruption = Interruption(scope, receive, self.drain)
        disconnected = False
        try:
            try:
                await self._start(send)
                await self.produce()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                interruption.stop()
                disconnected = interruption.disconnected
        except asyncio.CancelledError:
            if not (interruption.disconnected or interruption.expired):
                raise
            interruption.uncancel()
            if interruption.expired and not disconnected:
                if (record := scope.get("state", {}).get("log")) is not None:
                    record.error_code = "server_shutting_down"
                await self._end_for_shutdown(send)
        except OSError:
            disconnected = True  # The socket went away under us.
        finally:
            if disconnected and (record := scope.get("state", {}).get("log")) is not None:
                record.extra["client_disconnected"] = True
            await self.close()

    def _start(self, send: Send) -> Awaitable[None]:
        headers, self.raw_headers = self.raw_headers, None
        return send({"type": "http.response.start", "status": 200, "headers": headers})

    def write(self, chunk: bytes) -> Awaitable[None]:
        """The producer's write: the server's send of one body piece (not a coroutine of its own)."""
        if self.first_write is None:
            self.first_write = time.perf_counter()
        return self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _end_for_shutdown(self, send: Send) -> None:
        """The shutdown deadline passed mid-stream (the producer has stopped the upstream): the surface's
        in-band error and a clean end."""
        try:
            if self.raw_headers is not None:
                await self._start(send)
            await send({"type": "http.response.body", "body": self.last_words(), "more_body": False})
        except OSError:
            pass
