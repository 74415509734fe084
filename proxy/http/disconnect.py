"""Stop upstream work the moment the client goes away, before the response has started.

An abandoned request would otherwise keep the upstream generating (and billing) until the answer or
a stream's first event arrived. Once an SSE response is running, `EventStreamResponse` takes over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import Receive


class ClientDisconnected(Exception):
    """The client left before the response started: there is nothing left to send."""


@asynccontextmanager
async def cancel_on_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Run the enclosed block; if the client disconnects meanwhile, cancel it and raise ClientDisconnected.

    Call only after the request body has been read, so that `receive()` can only report a disconnect.
    """
    task = asyncio.current_task()
    assert task is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if not disconnected:
            raise
        task.uncancel()
        raise ClientDisconnected from None
    finally:
        watcher.cancel()
    if disconnected:  # The client left just as the block finished: drop the pending cancellation.
        task.uncancel()
        raise ClientDisconnected
