"""Stop upstream work the moment the client goes away, before the response has started.

An abandoned request would otherwise keep the upstream generating (and billing) until the answer or
a stream's first event arrived. Once an SSE response is running, `EventStreamResponse` takes over.
The same cancellation serves the shutdown deadline (`proxy.http.drain`), which answers 503 instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import Receive

from proxy.http.drain import Drain, shutting_down


class ClientDisconnected(Exception):
    """The client left before the response started: there is nothing left to send."""


@asynccontextmanager
async def cancel_on_disconnect(receive: Receive, drain: Drain | None = None) -> AsyncIterator[None]:
    """Run the enclosed block; if the client disconnects meanwhile, cancel it and raise ClientDisconnected
    (or the 503 `server_shutting_down` when the shutdown deadline passes first).

    Call only after the request body has been read, so that `receive()` can only report a disconnect.
    """
    task = asyncio.current_task()
    assert task is not None
    disconnected = False
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    async def watch() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        if drain is None:
            yield
        else:
            with drain.watch(expire):
                yield
    except asyncio.CancelledError:
        if disconnected:
            task.uncancel()
            raise ClientDisconnected from None
        if expired:
            task.uncancel()
            raise shutting_down() from None
        raise
    finally:
        watcher.cancel()
    if disconnected:  # The client left just as the block finished: drop the pending cancellation.
        task.uncancel()
        raise ClientDisconnected
