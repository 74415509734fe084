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


def _ignore() -> None:
    pass


class Interruption:
    """Cancels the running task once, when the client leaves or the shutdown deadline passes, and says
    which happened (`disconnected`, `expired`). `stop()` undoes the watching; call it in a `finally`.

    The one mechanism under `cancel_on_disconnect` (before a response starts) and `EventStreamResponse`
    (while a stream runs). Use only after the request body has been read."""

    __slots__ = (
        "_drain",
        "_listener",
        "_on_expire",
        "_on_lost",
        "_scope",
        "_task",
        "disconnected",
        "expired",
    )

    def __init__(self, scope: Scope, receive: Receive, drain: Drain | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._scope = scope
        self._drain = drain
        self.disconnected = self.expired = False
        self._on_lost = self._lost
        self._listener = watch_client(scope, receive, self._on_lost)
        if drain is not None:
            self._on_expire = self._expire
            drain.add(self._on_expire)

    def _lost(self) -> None:
        self.disconnected = True
        self._task.cancel()

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def stop(self) -> None:
        unwatch_client(self._scope, self._on_lost, self._listener)
        if self._drain is not None:
            self._drain.discard(self._on_expire)
        # The bound methods kept for the unwatching make this object a reference cycle holding the task:
        # broken here, so it is freed at once, not by the garbage collector.
        self._on_lost = self._on_expire = _ignore

    def uncancel(self) -> None:
        """Drop the cancellation this made (the caller turns it into its own outcome)."""
        self._task.uncancel()


class cancel_on_disconnect:
    """`async with cancel_on_disconnect(receive, drain, scope=scope):` runs the block; if the client
    disconnects meanwhile, cancels it and raises ClientDisconnected (or the 503 `server_shutting_down`
    when the shutdown deadline passes first).

    Use only after the request body has been read, so that `receive()` can only report a disconnect.
    Without `scope` (or under another server) a task watches `receive()`.
    """

    __slots__ = ("_interruption", "drain", "receive", "scope")

    def __init__(self, receive: Receive, drain: Drain | None = None, *, scope: Scope | None = None) -> None:
        self.receive = receive
        self.drain = drain
        self.scope: Scope = scope if scope is not None else {}

    async def __aenter__(self) -> None:
        self._interruption = Interruption(self.scope, self.receive, self.drain)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        interruption = self._interruption
        interruption.stop()
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            if interruption.disconnected:
                interruption.uncancel()
                raise ClientDisconnected from None
            if interruption.expired:
                interruption.uncancel()
                raise shutting_down() from None
            return
        if kind is None and interruption.disconnected:  # The client left just as the block finished.
            interruption.uncancel()
            raise ClientDisconnected
