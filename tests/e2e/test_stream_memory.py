"""An open stream holds only what it needs for its life (bench/README.md: memory per open stream): once its
first bytes are out, the exchange, the parsed request and (after the first piece) the prompt text are gone, and the stream's
objects are freed by reference counting when it ends. The app runs in this process (ASGI lifespan and
one streamed request, driven by hand) in front of the real mock upstream; what is alive is read from the
garbage collector's list of objects while each body piece is being sent."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from proxy.app import ProxyApp
from proxy.http.disconnect import Interruption
from proxy.http.routes import Exchange, RelayedStream
from proxy.translate.schema import ChatRequest
from proxy.translate.stream import StreamTranslator
from tests.support.inprocess import post_scope, running_app, saving_garbage
from tests.support.servers import Server

PROMPT = "Tell me about the weather in Paris"
BODY = orjson.dumps(
    {"model": "gpt-4", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 20, "stream": True}
)


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    with saving_garbage() as garbage:
        yield garbage


def alive(kind: type) -> list[Any]:
    return [item for item in gc.get_objects() if type(item) is kind]


async def test_an_open_stream_holds_no_exchange_request_or_prompt(
    mock_upstream: Server, saved_garbage: list[Any]
) -> None:
    async with running_app(mock_upstream) as app:
        await stream_twice(app, saved_garbage)


async def stream_twice(app: ProxyApp, saved_garbage: list[Any]) -> None:
    """The first stream sets up what later ones reuse; the second is looked at while each piece is sent."""
    seen: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):  # the last piece's view stays
            (stream,) = alive(RelayedStream)
            seen.update(
                pieces=seen.get("pieces", 0) + 1,
                exchanges=alive(Exchange),
                requests=alive(ChatRequest),
                translators=alive(StreamTranslator),
                prompt_held=stream.translator._prompts is not None,
            )

    await app(post_scope("/v1/chat/completions", BODY), receive, send)
    gc.collect()
    saved_garbage.clear()
    seen.clear()
    sent.clear()
    await app(post_scope("/v1/chat/completions", BODY), receive, send)
    assert sent[0]["status"] == 200, sent
    text = b"".join(m.get("body", b"") for m in sent[1:])
    assert text.rstrip().endswith(b"data: [DONE]"), text
    assert seen["pieces"] > 1  # the prompt is let go after the first piece, not before it
    assert seen["exchanges"] == [] and seen["requests"] == []
    assert len(seen["translators"]) == 1 and not seen["prompt_held"]
    gc.collect()
    kinds = {type(item) for item in saved_garbage}
    assert not kinds & {Exchange, StreamTranslator, Interruption, RelayedStream}, sorted(
        k.__name__ for k in kinds
    )
