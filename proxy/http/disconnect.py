"""Stop upstream work the moment the client goes away.

An abandoned request would otherwise keep the upstream generating (and billing) until the answer or
a stream's first event arrived. `cancel_on_disconnect` covers the wait before the response starts;
once an SSE response is running, `EventStreamResponse` watches the same way. The same cancellation
serves the shutdown deadline (`proxy.http.drain`), which answers 503 instead.

How the client's departure is seen: the proxy's server protocol (`proxy.http.protocol`) gives every
connection a `ClientConnection` in its requests' scopes and calls it from `connection_lost`; the
request watching it at that moment (its `Interruption`) cancels its task. Per request this is two
attribute writes and a set entry in the drain: no task, no callback object. Under another server, a
task per request waits on `receive()` for `http.disconnect`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive, Scope

from proxy.http.drain import Drain, shutting_down

#: The scope key of the request's `ClientConnection` (set by `proxy.http.protocol`).
CLIENT = "proxy.client"


class ClientDisconnected(Exception):
    """The client left before the response started: there is nothing left to send."""


class ClientConnection:
    """One client connection's end, watched by at most one `Interruption` at a time (HTTP/1.1 serves a
    connection's requests one after the other)."""

    __slots__ = ("loop", "lost", "watcher")

    def __init__(self) -> None:
        self.lost = False
        #: The request's `Interruption` while it watches this connection.
        self.watcher: Interruption | None = None
        #: The connection's event loop, learnt by its first watcher: `asyncio.current_task(loop)` then
        #: costs no `getpid()` system call, which Python 3.11's `get_running_loop()` makes on every call.
        self.loop: asyncio.AbstractEventLoop | None = None

    def connection_lost(self) -> None:
        self.lost = True
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.client_left()


async def _listen(receive: Receive, interruption: Interruption) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    interruption.client_left()


class Interruption:
    """Cancels the running task once, when the client leaves or the shutdown deadline passes, and says
    which happened (`disconnected`, `expired`). `stop()` undoes the watching; call it in a `finally`.

    The one mechanism under `cancel_on_disconnect` (before a response starts) and `EventStreamResponse`
    (while a stream runs). Use only after the request body has been read. It is itself the drain's
    callback (`__call__`), so that watching makes no bound method (which would also be a reference
    cycle holding the task)."""

    __slots__ = ("_client", "_drain", "_listener", "_task", "disconnected", "expired")

    def __init__(self, scope: Scope, receive: Receive, drain: Drain | None) -> None:
        self.disconnected = self.expired = False
        client: ClientConnection | None = scope.get(CLIENT)
        self._client = client
        self._listener: asyncio.Task[None] | None = None
        if client is not None:
            loop = client.loop
            if loop is None:
                loop = client.loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
        else:
            task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._drain = drain
        if client is None:
            self._listener = asyncio.create_task(_listen(receive, self))
        elif client.lost:
            self.client_left()
        else:
            client.watcher = self
        if drain is not None:
            drain.add(self)

    def client_left(self) -> None:
        self.disconnected = True
        self._task.cancel()

    def __call__(self) -> None:
        """The drain's callback: the shutdown deadline has passed."""
        self.expired = True
        self._task.cancel()

    def stop(self) -> None:
        client = self._client
        if client is not None:
            if client.watcher is self:
                client.watcher = None
        elif self._listener is not None:
            self._listener.cancel()
        if self._drain is not None:
            self._drain.discard(self)

    def uncancel(self) -> None:
        """Drop the cancellation this made (the caller turns it into its own outcome)."""
        self._task.uncancel()


class cancel_on_disconnect(Interruption):
    """`with cancel_on_disconnect(scope, receive, drain):` runs the block; if the client disconnects
    meanwhile, cancels it and raises ClientDisconnected (or the 503 `server_shutting_down` when the
    shutdown deadline passes first).

    Use only after the request body has been read, so that `receive()` can only report a disconnect.
    Under another server than the proxy's (no `ClientConnection` in `scope`) a task watches `receive()`.
    A plain (not async) context manager: entering and leaving it makes no coroutine.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            if self.disconnected:
                self.uncancel()
                raise ClientDisconnected from None
            if self.expired:
                self.uncancel()
                raise shutting_down() from None
            return
        if kind is None and self.disconnected:  # The client left just as the block finished.
            self.uncancel()
            raise ClientDisconnected
