"""Graceful shutdown of one process: finish what is in flight, then end the rest in-band.

On SIGTERM the server stops accepting connections and `begin` starts the deadline
(`server.shutdown_timeout`). Requests and streams running at that point go on. When the deadline
passes, `expire` calls back every registered response: a stream ends with an in-band
`server_shutting_down` error event and `[DONE]` (so clients see a clean end and the SDKs raise
`APIError`), and a request still waiting for the upstream answers 503, which the SDKs retry elsewhere.

Signals belong to a process, so there is one `Drain` per process, made by the server and handed to
the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from proxy.errors import OpenAIError

SHUTTING_DOWN_MESSAGE = "The proxy is shutting down and ended this response. Please retry the request."


def shutting_down() -> OpenAIError:
    return OpenAIError(
        503,
        SHUTTING_DOWN_MESSAGE,
        type="server_error",
        code="server_shutting_down",
        headers={"x-should-retry": "true"},
    )


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._callbacks: set[Callable[[], None]] = set()

    def begin(self, timeout: float) -> None:
        """Start the deadline (call on the event loop; later calls change nothing)."""
        if self.draining:
            return
        self.draining = True
        asyncio.get_running_loop().call_later(timeout, self.expire)

    def expire(self) -> None:
        self.expired = True
        for callback in list(self._callbacks):
            callback()

    def add(self, callback: Callable[[], None]) -> None:
        """Have `callback` called at the deadline (at once if it has passed) until it is discarded."""
        if self.expired:
            callback()
        self._callbacks.add(callback)

    def discard(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)

    @contextmanager
    def watch(self, callback: Callable[[], None]) -> Iterator[None]:
        """`add` for the duration of a block."""
        self.add(callback)
        try:
            yield
        finally:
            self.discard(callback)
