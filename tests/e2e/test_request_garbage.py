"""A plain request leaves no reference cycle behind: its objects are freed by reference counting as it
ends, not by the garbage collector (which then walks them on some later request, ~20 µs per request
in the bench). The app runs in this process (`tests.support.inprocess`) in front of the real mock
upstream, with the collector told to keep whatever cyclic garbage it finds."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from proxy.app import ProxyApp
from proxy.http.disconnect import Interruption
from proxy.http.routes import Exchange
from proxy.translate.stream import StreamTranslator
from tests.support.inprocess import post_scope, running_app, saving_garbage
from tests.support.servers import Server

BODY = orjson.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20})


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    with saving_garbage() as garbage:
        yield garbage


async def chat(app: ProxyApp) -> list[dict[str, Any]]:
    """One non-streamed chat request through the ASGI app; the messages it sent back."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(post_scope("/v1/chat/completions", BODY), receive, send)
    return sent


async def test_a_plain_request_leaves_no_cyclic_garbage(
    mock_upstream: Server, saved_garbage: list[Any]
) -> None:
    async with running_app(mock_upstream) as app:
        await chat(app)  # the first request sets up what later ones reuse (the upstream connection)
        gc.collect()
        saved_garbage.clear()
        sent = await chat(app)
        assert sent[0]["status"] == 200, sent
        assert orjson.loads(sent[1]["body"])["choices"][0]["message"]["content"]
        gc.collect()
        kinds = {type(item) for item in saved_garbage}
        assert not kinds & {Exchange, StreamTranslator, Interruption}, sorted(k.__name__ for k in kinds)
