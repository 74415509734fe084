"""Stop upstream work the moment the client goes away.

An abandoned request would otherwise keep the upstream generating (and billing) until the answer or
a stream's first event arrived. `cancel_on_disconnect` covers the wait before the response starts;
once an SSE response is running, `EventStreamResponse` watches the same way. The same cancellation
serves the shutdown deadline (`proxy.http.drain`), which answers 503 instead.

How the client's departure is seen: the proxy's server protocol (`proxy.http.protocol`) gives every
request a `ClientConnection` in its scope and calls it back from `connection_lost`, which costs nothing
per request. Under another server, a task per request waits on `receive()` for `http.disconnect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from starlette.types import Receive, Scope

from proxy.http.drain import Drain, shutting_down

#: The scope key of the request's `ClientConnection` (set by `proxy.http.protocol`).
CLIENT = "proxy.client"


class ClientDisconnected(Exception):
    """The client left before the response started: there is nothing left to send."""


class ClientConnection:
    """One client connection's end, as a callback for whoever must stop when it goes away."""

    __slots__ = ("_callback", "lost")

    def __init__(self) -> None:
        self._callback: Callable[[], None] | None = None
        self.lost = False

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the connection is lost (at once if it already is)."""
        if self.lost:
            callback()
        else:
            self._callback = callback

    def unwatch(self, callback: Callable[[], None]) -> None:
        if self._callback is callback:
            self._callback = None

    def connection_lost(self) -> None:
        self.lost = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def watch_client(scope: Scope, receive: Receive, callback: Callable[[], None]) -> asyncio.Task[None] | None:
    """Call `callback` once the client leaves; undo with `unwatch_client(scope, callback, <result>)`.

    Call only after the request body has been read, so that `receive()` can only report a disconnect."""
    client: ClientConnection | None = scope.get(CLIENT)
    if client is not None:
        client.watch(callback)
        return None
    return asyncio.create_task(_listen(receive, callback))


def unwatch_client(scope: Scope, callback: Callable[[], None], listener: asyncio.Task[None] | None) -> None:
    if listener is not None:
        listener.cancel()
    else:
        scope[CLIENT].unwatch(callback)


async def _listen(receive: Receive, callback: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()


class cancel_on_disconnect:
    """`async with cancel_on_disconnect(receive, drain, scope=scope):` runs the block; if the client
    disconnects meanwhile, cancels it and raises ClientDisconnected (or the 503 `server_shutting_down`
    when the shutdown deadline passes first).

    Use only after the request body has been read, so that `receive()` can only report a disconnect.
    Without `scope` (or under another server) a task watches `receive()`.
    """

    __slots__ = (
        "_disconnected",
        "_expired",
        "_listener",
        "_on_expire",
        "_on_lost",
        "_task",
        "drain",
        "receive",
        "scope",
    )

    def __init__(self, receive: Receive, drain: Drain | None = None, *, scope: Scope | None = None) -> None:
        self.receive = receive
        self.drain = drain
        self.scope: Scope = scope if scope is not None else {}
        self._disconnected = self._expired = False

    def _lost(self) -> None:
        self._disconnected = True
        self._task.cancel()

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._on_lost = self._lost
        self._listener = watch_client(self.scope, self.receive, self._on_lost)
        if self.drain is not None:
            self._on_expire = self._expire
            self.drain.add(self._on_expire)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        unwatch_client(self.scope, self._on_lost, self._listener)
        if self.drain is not None:
            self.drain.discard(self._on_expire)
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            if self._disconnected:
                self._task.uncancel()
                raise ClientDisconnected from None
            if self._expired:
                self._task.uncancel()
                raise shutting_down() from None
            return
        if kind is None and self._disconnected:  # The client left just as the block finished.
            self._task.uncancel()
            raise ClientDisconnected
