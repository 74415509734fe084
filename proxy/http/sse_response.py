"""An SSE response that stops its body — and so the upstream request — as soon as the client leaves.

Starlette's StreamingResponse notices a disconnect only through an anyio cancel scope, inside which the
body's cleanup (closing the upstream connection) would itself be cancelled. Here the disconnect
listener cancels the sending task once, asyncio-style, so the body's `finally` runs to completion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.types import Message, Receive, Scope, Send

from proxy.http.drain import SHUTTING_DOWN_MESSAGE, Drain
from proxy.translate.responses import DONE, sse
from proxy.translate.upstream_errors import in_stream_error

SSE_HEADERS: dict[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class EventStreamResponse:
    """ASGI app sending `body` as a `text/event-stream`, flushed per chunk."""

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.body = body
        self.headers = {**SSE_HEADERS, **(headers or {})}
        self.on_close = on_close  # runs after the body, also when the body never started
        self.drain = drain
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
            try:
                await self.body.aclose()
            finally:
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
        async for chunk in self.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end_for_shutdown(self, send: Send) -> None:
        """The shutdown deadline passed mid-stream: an in-band error, `[DONE]`, and a clean end."""
        await self.body.aclose()  # stop the upstream before writing the last words
        error = sse(in_stream_error("server_shutting_down", SHUTTING_DOWN_MESSAGE)) + DONE
        try:
            if not self._started:
                await self._start(send)
            await send({"type": "http.response.body", "body": error, "more_body": False})
        except OSError:
            pass
