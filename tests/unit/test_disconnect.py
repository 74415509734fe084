"""A client's departure stops the running request: through the server protocol's `ClientConnection`
(no task per request), or, under another server, through a task waiting on `receive()`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.errors import OpenAIError
from proxy.http.disconnect import (
    CLIENT,
    ClientConnection,
    ClientDisconnected,
    Interruption,
    cancel_on_disconnect,
)
from proxy.http.drain import Drain
from proxy.http.sse_response import EventStreamResponse, Write


def disconnecting_receive(gone: asyncio.Event) -> Any:
    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def upstream_that_never_answers() -> None:
    """Bounded: a cancellation that does not come fails the test (TimeoutError) instead of hanging it."""
    await asyncio.wait_for(asyncio.get_running_loop().create_future(), 10)


async def unused_receive() -> dict[str, Any]:
    raise AssertionError("receive() must not be awaited when the server reports the connection's end")


async def test_the_servers_connection_end_cancels_the_block() -> None:
    client = ClientConnection()
    with pytest.raises(ClientDisconnected), cancel_on_disconnect({CLIENT: client}, unused_receive, None):
        asyncio.get_running_loop().call_soon(client.connection_lost)
        await upstream_that_never_answers()


async def test_a_connection_already_gone_cancels_at_once() -> None:
    client = ClientConnection()
    client.connection_lost()
    with pytest.raises(ClientDisconnected), cancel_on_disconnect({CLIENT: client}, unused_receive, None):
        await upstream_that_never_answers()


async def test_a_finished_block_stops_watching() -> None:
    client = ClientConnection()
    with cancel_on_disconnect({CLIENT: client}, unused_receive, None):
        pass
    client.connection_lost()  # nothing is cancelled: this task goes on
    await asyncio.sleep(0)


async def test_the_shutdown_deadline_cancels_the_block_with_a_503() -> None:
    client, drain = ClientConnection(), Drain()
    with pytest.raises(OpenAIError) as raised, cancel_on_disconnect({CLIENT: client}, unused_receive, drain):
        asyncio.get_running_loop().call_soon(drain.expire)
        await upstream_that_never_answers()
    assert raised.value.status == 503 and raised.value.code == "server_shutting_down"
    assert client.watcher is None  # stopped watching: the connection's end cancels nothing now
    client.connection_lost()
    await asyncio.sleep(0)


async def test_a_block_past_the_deadline_stops_watching_the_drain() -> None:
    drain = Drain()
    with cancel_on_disconnect({CLIENT: ClientConnection()}, unused_receive, drain):
        pass
    drain.expire()  # nothing is cancelled: this task goes on
    await asyncio.sleep(0)


async def test_the_next_request_of_a_connection_stays_watched_when_the_previous_one_stops_late() -> None:
    """HTTP/1.1 keep-alive: one `ClientConnection` for the connection's requests, one after the other;
    a request that stops watching after the next one began must not unwatch the next one."""
    client = ClientConnection()
    previous = Interruption({CLIENT: client}, unused_receive, None)

    async def next_request() -> None:
        with cancel_on_disconnect({CLIENT: client}, unused_receive, None):
            previous.stop()
            asyncio.get_running_loop().call_soon(client.connection_lost)
            await upstream_that_never_answers()

    with pytest.raises(ClientDisconnected):
        await asyncio.create_task(next_request())
    assert not previous.disconnected


async def test_without_the_servers_hook_a_task_watches_receive() -> None:
    gone = asyncio.Event()
    with pytest.raises(ClientDisconnected), cancel_on_disconnect({}, disconnecting_receive(gone), None):
        gone.set()
        await upstream_that_never_answers()


@pytest.mark.parametrize("hooked", [True, False])
async def test_a_stream_stops_its_producer_when_the_client_leaves(hooked: bool) -> None:
    gone = asyncio.Event()
    client = ClientConnection()
    scope: dict[str, Any] = {"state": {}}
    if hooked:
        scope[CLIENT] = client
    sent: list[dict[str, Any]] = []
    cleaned: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def produce(write: Write) -> None:
        try:
            await write(b"data: 1\n\n")
            client.connection_lost() if hooked else gone.set()
            await asyncio.get_running_loop().create_future()  # an upstream that never sends again
        finally:
            cleaned.append("producer")

    async def on_close() -> None:
        cleaned.append("on_close")

    response = EventStreamResponse(produce, {"x-cache": "MISS"}, on_close=on_close)
    receive = unused_receive if hooked else disconnecting_receive(gone)
    await asyncio.wait_for(response(scope, receive, send), 10)
    assert cleaned == ["producer", "on_close"]
    assert sent[0]["headers"][0] == (b"content-type", b"text/event-stream; charset=utf-8")
    assert (b"x-cache", b"MISS") in sent[0]["headers"]
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]  # no end: the client is gone
    assert response.first_write is not None
