"""An SSE response that stops its body — and so the upstream request — as soon as the client leaves.

Starlette's StreamingResponse notices a disconnect only through an anyio cancel scope, inside which the
body's cleanup (closing the upstream connection) would itself be cancelled. Here the disconnect
listener cancels the sending task once, asyncio-style, so the body's `finally` runs to completion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

from starlette.types import Message, Receive, Scope, Send

SSE_HEADERS: dict[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class EventStreamResponse:
    """ASGI app sending `body` as a `text/event-stream`, flushed per chunk."""

    def __init__(self, body: AsyncGenerator[bytes, None], headers: Mapping[str, str] | None = None) -> None:
        self.body = body
        self.headers = {**SSE_HEADERS, **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        disconnected = False

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
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()],
                }
            )
            async for chunk in self.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not disconnected:
                raise
            task.uncancel()
        except OSError:
            disconnected = True  # The socket went away under us.
        finally:
            if disconnected and (record := scope.get("state", {}).get("log")) is not None:
                record.extra["client_disconnected"] = True
            listener.cancel()
            await self.body.aclose()
