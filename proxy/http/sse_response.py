"""An SSE response that stops its producer — and so the upstream request — as soon as the client leaves.

Starlette's StreamingResponse notices a disconnect only through an anyio cancel scope, inside which the
producer's cleanup (closing the upstream connection) would itself be cancelled. Here the disconnect
listener cancels the sending task once, asyncio-style, so the producer's `finally` runs to completion.
The producer writes through a callback rather than being iterated: no generator frame per stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.types import Message, Receive, Scope, Send

from proxy.http.drain import Drain

Write = Callable[[bytes], Awaitable[None]]
Producer = Callable[[Write], Awaitable[None]]

SSE_HEADERS: dict[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class EventStreamResponse:
    """ASGI app sending what `produce` writes as a `text/event-stream`, flushed per write.

    `last_words` gives the bytes that end the stream when the shutdown deadline cuts it (an in-band
    error in the surface's format); `on_close` runs afterwards in every case, also when nothing was sent.
    """

    def __init__(
        self,
        produce: Producer,
        headers: Mapping[str, str] | None = None,
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        last_words: Callable[[], bytes] | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.produce = produce
        self.headers = {**SSE_HEADERS, **(headers or {})}
        self.on_close = on_close
        self.last_words = last_words
        self.drain = drain
        self.first_write: float | None = None  # perf_counter of the first body bytes
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        disconnected = False
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        async def listen() -> None:
            nonlocal disconnected
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    task.cancel()
                    return

        listener = asyncio.create_task(listen())
        try:
            if self.drain is None:
                await self._send_all(send)
            else:
                with self.drain.watch(expire):
                    await self._send_all(send)
        except asyncio.CancelledError:
            if not (disconnected or expired):
                raise
            task.uncancel()
            if expired and not disconnected:
                if (record := scope.get("state", {}).get("log")) is not None:
                    record.error_code = "server_shutting_down"
                await self._end_for_shutdown(send)
        except OSError:
            disconnected = True  # The socket went away under us.
        finally:
            if disconnected and (record := scope.get("state", {}).get("log")) is not None:
                record.extra["client_disconnected"] = True
            listener.cancel()
            if self.on_close is not None:
                await self.on_close()

    async def _start(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()],
            }
        )
        self._started = True

    async def _send_all(self, send: Send) -> None:
        await self._start(send)

        async def write(chunk: bytes) -> None:
            if self.first_write is None:
                self.first_write = time.perf_counter()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await self.produce(write)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end_for_shutdown(self, send: Send) -> None:
        """The shutdown deadline passed mid-stream (the producer has stopped the upstream): the surface's
        in-band error and a clean end."""
        try:
            if not self._started:
                await self._start(send)
            words = self.last_words() if self.last_words is not None else b""
            await send({"type": "http.response.body", "body": words, "more_body": False})
        except OSError:
            pass
