"""The app driven in this process, for tests that look at its objects (what a request leaves alive or
for the garbage collector): the ASGI lifespan by hand, request scopes as the proxy's server gives them,
and the collector told to keep the cyclic garbage it finds. The upstream is still the real mock server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from proxy.app import ProxyApp, create_app
from proxy.config import Config
from proxy.http.disconnect import CLIENT, ClientConnection
from tests.support.servers import Server


@contextmanager
def saving_garbage() -> Iterator[list[Any]]:
    """`gc.garbage` filled with every object the collector finds unreachable meanwhile."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@asynccontextmanager
async def running_app(upstream: Server) -> AsyncIterator[ProxyApp]:
    """The proxy's app in front of `upstream`, between its lifespan's start-up and shut-down."""
    config = Config.model_validate({"upstream": {"base_url": upstream.base_url, "api_key": "sk-test-key"}})
    app = create_app(config)
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    running = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, replies.put))
    await lifespan.put({"type": "lifespan.startup"})
    assert (await replies.get())["type"] == "lifespan.startup.complete"
    try:
        yield app
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        assert (await replies.get())["type"] == "lifespan.shutdown.complete"
        await running


def post_scope(path: str, body: bytes) -> dict[str, Any]:
    """A JSON POST's scope, with the `ClientConnection` the proxy's server protocol gives every request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        CLIENT: ClientConnection(),
    }
