"""A plain request leaves no reference cycle behind: its objects are freed by reference counting as it
ends, not by the garbage collector (which then walks them on some later request, ~20 µs per request
in the bench). The app runs in this process (ASGI lifespan and one request, driven by hand) in front of
the real mock upstream, with the collector told to keep whatever cyclic garbage it finds. The request's
scope carries a `ClientConnection`, as the proxy's server protocol gives every request."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from proxy.app import create_app
from proxy.config import Config
from proxy.http.disconnect import CLIENT, ClientConnection, Interruption
from proxy.http.routes import Exchange
from proxy.translate.stream import StreamTranslator
from tests.support.servers import Server

BODY = orjson.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20})


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """`gc.garbage` filled with every object the collector finds unreachable while the test runs."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def chat(app: Any) -> list[dict[str, Any]]:
    """One non-streamed chat request through the ASGI app; the messages it sent back."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        CLIENT: ClientConnection(),  # as the proxy's server protocol gives every request
    }
    await app(scope, receive, send)
    return sent


async def test_a_plain_request_leaves_no_cyclic_garbage(
    mock_upstream: Server, saved_garbage: list[Any]
) -> None:
    config = Config.model_validate(
        {"upstream": {"base_url": mock_upstream.base_url, "api_key": "sk-test-key"}}
    )
    app = create_app(config)
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    running = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, replies.put))
    await lifespan.put({"type": "lifespan.startup"})
    assert (await replies.get())["type"] == "lifespan.startup.complete"
    try:
        await chat(app)  # the first request sets up what later ones reuse (the upstream connection)
        gc.collect()
        saved_garbage.clear()
        sent = await chat(app)
        assert sent[0]["status"] == 200, sent
        assert orjson.loads(sent[1]["body"])["choices"][0]["message"]["content"]
        gc.collect()
        kinds = {type(item) for item in saved_garbage}
        assert not kinds & {Exchange, StreamTranslator, Interruption}, sorted(k.__name__ for k in kinds)
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        assert (await replies.get())["type"] == "lifespan.shutdown.complete"
        await running
