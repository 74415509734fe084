"""The upstream pool over real HTTP: weights, cooldown, failover before the first byte, model groups,
per-entry timeouts and the per-process cap on upstream calls.

Two real mock upstreams serve as pool entries; one is put into an outage (`POST /_mock/outage`) or an
entry points at a closed port. The client is the official `openai` SDK with its own retries off, so
every success proves the proxy failed over by itself.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.config import UpstreamConfig
from proxy.upstream.client import Attempts, UpstreamClient
from tests.conftest import SERVER_KEY, StartProxy
from tests.support.servers import (
    HOST,
    Server,
    access_line,
    free_port,
    mock_outage,
    mock_requests,
    reset_mock,
    run_server,
)
from tests.support.wait import in_flight, wait_until

PROMPT = [{"role": "user", "content": "Hello pool"}]


@pytest.fixture
def second_mock(tmp_path: Path) -> Iterator[Server]:
    with run_server(["mock-upstream"], tmp_path / "mock-b.log") as server:
        yield server


@pytest.fixture
def fresh_mock(mock_upstream: Server) -> Iterator[Server]:
    reset_mock(mock_upstream)
    yield mock_upstream
    reset_mock(mock_upstream)


def entry(name: str, server_or_url: Server | str, weight: int = 1, **extra: Any) -> dict[str, Any]:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    return {"name": name, "base_url": url, "api_key": SERVER_KEY, "weight": weight, **extra}


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)


def chat(client: openai.OpenAI, request_id: str, stream: bool = False, model: str = "claude-2.1") -> str:
    headers = {"x-request-id": request_id}
    if stream:
        chunks = client.chat.completions.create(
            model=model,
            messages=PROMPT,
            stream=True,
            extra_headers=headers,  # type: ignore[arg-type]
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = client.chat.completions.create(model=model, messages=PROMPT, extra_headers=headers)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def completions_seen(mock: Server) -> int:
    return sum(1 for r in mock_requests(mock) if r["path"] == "/v1/complete")


def test_connection_refused_fails_over_and_the_dead_entry_cools_down(
    start_proxy: StartProxy, fresh_mock: Server
) -> None:
    dead = f"http://{HOST}:{free_port()}"
    config = {"upstream": {"pool": [entry("dead", dead, 100), entry("live", fresh_mock, 1)], "cooldown": 60}}
    with start_proxy(config=config) as server, sdk(server) as client:
        for i in range(6):
            assert chat(client, f"req-refused-{i}", stream=bool(i % 2))
        lines = [access_line(server, f"req-refused-{i}") for i in range(6)]
    # Weight 100 makes "dead" the first choice; after its failure it sits out, so only one request
    # paid for it, and that request still succeeded on "live" without a client retry.
    assert lines[0]["upstream_entry"] == "dead,live"
    assert lines[0]["attempts"] == 2
    assert all(line["upstream_entry"] == "live" and line["attempts"] == 1 for line in lines[1:])
    assert all(line["status"] == 200 for line in lines)
    assert completions_seen(fresh_mock) == 6


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_overloaded_entry_fails_over_then_recovers_after_its_cooldown(
    start_proxy: StartProxy, fresh_mock: Server, second_mock: Server, stream: bool
) -> None:
    mock_outage(fresh_mock, 529)
    config = {
        "upstream": {"pool": [entry("a", fresh_mock, 1000), entry("b", second_mock, 1)], "cooldown": 1.0}
    }
    with start_proxy(config=config) as server, sdk(server) as client:
        for i in range(4):
            assert chat(client, f"req-529-{stream}-{i}", stream=stream)
        assert completions_seen(fresh_mock) == 1  # tried once, then cooling down
        assert completions_seen(second_mock) == 4
        mock_outage(fresh_mock, None)
        attempts = iter(range(10_000))

        def served_by_a() -> bool:  # "b" serves until the 1 s cooldown is over; then "a", weight 1000
            request_id = f"req-529-{stream}-back-{next(attempts)}"
            assert chat(client, request_id, stream=stream)
            return bool(access_line(server, request_id)["upstream_entry"] == "a")

        wait_until(served_by_a, "a request served by 'a' after its cooldown", within=10)
    assert completions_seen(fresh_mock) == 2


def test_retry_after_sets_the_cooldown(
    start_proxy: StartProxy, fresh_mock: Server, second_mock: Server
) -> None:
    # retry-after 15 s: far beyond anything this test waits, so a slow, loaded machine cannot outlast it
    # (3 s once did, in a CI run sharing two CPUs with a 1,000-stream benchmark).
    mock_outage(fresh_mock, 429, retry_after="15")
    config = {
        "upstream": {"pool": [entry("a", fresh_mock, 1000), entry("b", second_mock, 1)], "cooldown": 0.2}
    }
    with start_proxy(config=config) as server, sdk(server) as client:
        assert chat(client, "req-ra-0")
        time.sleep(0.5)  # past `cooldown`, but not past the upstream's retry-after
        mock_outage(fresh_mock, None)
        assert chat(client, "req-ra-1")
        assert access_line(server, "req-ra-1")["upstream_entry"] == "b"
    assert completions_seen(fresh_mock) == 1


def test_when_every_entry_fails_the_client_gets_the_last_error(
    start_proxy: StartProxy, fresh_mock: Server, second_mock: Server
) -> None:
    mock_outage(fresh_mock, 529)
    mock_outage(second_mock, 529)
    config = {
        "upstream": {
            "pool": [entry("a", fresh_mock), entry("b", second_mock)],
            "max_retries": 3,
            "backoff_initial": 0.01,
            "backoff_max": 0.02,
        }
    }
    with start_proxy(config=config) as server, sdk(server) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            chat(client, "req-all-down")
        line = access_line(server, "req-all-down")
    assert caught.value.status_code == 503
    assert caught.value.code == "overloaded"
    assert line["attempts"] == 4
    assert set(line["upstream_entry"].split(",")) == {"a", "b"}
    assert completions_seen(fresh_mock) + completions_seen(second_mock) == 4


def test_model_groups_route_by_upstream_model(
    start_proxy: StartProxy, fresh_mock: Server, second_mock: Server
) -> None:
    config = {
        "upstream": {
            "pool": [
                entry("general", fresh_mock),
                entry("instant", second_mock, models=["claude-instant-1.2"]),
            ]
        }
    }
    with start_proxy(config=config) as server, sdk(server) as client:
        chat(client, "req-group-1", model="claude-2.1")
        chat(client, "req-group-2", model="gpt-3.5-turbo")  # alias of claude-instant-1.2
        chat(client, "req-group-3", model="claude-instant-1.2", stream=True)
    general = [r["body"]["model"] for r in mock_requests(fresh_mock) if r["path"] == "/v1/complete"]  # type: ignore[index]
    instant = [r["body"]["model"] for r in mock_requests(second_mock) if r["path"] == "/v1/complete"]  # type: ignore[index]
    assert general == ["claude-2.1"]
    assert instant == ["claude-instant-1.2", "claude-instant-1.2"]


def test_entry_key_from_the_environment(start_proxy: StartProxy, keyed_mock: Server) -> None:
    from tests.conftest import GOOD_UPSTREAM_KEY

    config = {
        "upstream": {"pool": [{"name": "env-keyed", "base_url": keyed_mock.base_url, "api_key_env": "K1"}]}
    }
    with (
        start_proxy(config=config, env={"K1": GOOD_UPSTREAM_KEY}, api_key=None) as server,
        sdk(server) as client,
    ):
        assert chat(client, "req-env-key")
    with pytest.raises(RuntimeError, match="K1 is not set"), start_proxy(config=config, api_key=None):
        pass


# --- timeouts ---------------------------------------------------------------------------------------


def test_idle_timeout_ends_a_stream_with_an_in_band_error(start_proxy: StartProxy) -> None:
    env = {"PROXY_UPSTREAM__TIMEOUTS": '{"idle": 0.5}', "PROXY_UPSTREAM__MAX_RETRIES": "0"}
    slow = [
        {
            "role": "user",
            "content": "Count [[mock:tokens=6]][[mock:token_delay_ms=1500]][[mock:first_token_delay_ms=0]]",
        }
    ]
    with start_proxy(env=env) as server:
        with sdk(server) as client:
            started = time.monotonic()
            stream = client.chat.completions.create(model="claude-2.1", messages=slow, stream=True)  # type: ignore[arg-type]
            with pytest.raises(openai.APIError, match="idle timeout"):
                for _ in stream:
                    pass
            # The idle timeout ended it, not the upstream's end (six tokens 1.5 s apart).
            assert time.monotonic() - started < 5
        # And nothing of it is left running: the proxy stops at once on SIGTERM.
        assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def short_total(start_proxy: StartProxy, mock_upstream: Server) -> Iterator[Server]:
    config = {
        "upstream": {
            "max_retries": 0,
            "pool": [entry("short", mock_upstream, timeouts={"total": 1.0})],
        }
    }
    with start_proxy(config=config) as server:
        yield server


def test_total_timeout_ends_a_long_stream(short_total: Server) -> None:
    slow = [{"role": "user", "content": "Count [[mock:tokens=20]][[mock:token_delay_ms=200]]"}]
    with sdk(short_total) as client:
        started = time.monotonic()
        received = []
        stream = client.chat.completions.create(model="claude-2.1", messages=slow, stream=True)  # type: ignore[arg-type]
        with pytest.raises(openai.APIError, match=r"timeouts\.total"):
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert 0.9 < time.monotonic() - started < 3
    assert 2 <= len(received) < 20


def test_total_timeout_bounds_a_plain_answer(short_total: Server) -> None:
    slow = [{"role": "user", "content": "Count [[mock:tokens=20]][[mock:token_delay_ms=200]]"}]
    with sdk(short_total) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="claude-2.1", messages=slow)  # type: ignore[arg-type]
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_connect_timeout(start_proxy: StartProxy) -> None:
    """A listener whose accept queue is full drops new SYNs, so connecting hangs until the timeout."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(0)
        url = f"http://{HOST}:{listener.getsockname()[1]}"
        fillers = []
        for _ in range(4):  # fill the backlog; later connects hang in SYN_SENT
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        config = {
            "upstream": {"max_retries": 0, "pool": [entry("blackhole", url, timeouts={"connect": 0.5})]}
        }
        try:
            with start_proxy(config=config) as server, sdk(server) as client:
                started = time.monotonic()
                with pytest.raises(openai.APIStatusError) as caught:
                    chat(client, "req-connect-timeout")
                elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert elapsed < 3


# --- per-process cap on upstream calls ----------------------------------------------------------------


def test_max_concurrent_calls_rejects_beyond_the_cap(start_proxy: StartProxy) -> None:
    env = {"PROXY_UPSTREAM__MAX_CONCURRENT_CALLS": "1"}
    slow = [{"role": "user", "content": "Count [[mock:tokens=10]][[mock:token_delay_ms=150]]"}]
    with start_proxy(env=env) as server, sdk(server) as client:
        done = threading.Event()

        def hold() -> None:
            stream = client.chat.completions.create(model="claude-2.1", messages=slow, stream=True)  # type: ignore[arg-type]
            for _ in stream:
                pass
            done.set()

        holder = threading.Thread(target=hold)
        holder.start()
        wait_until(lambda: in_flight(server.base_url, "streams") == 1, "the holding stream under way")
        raw = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": "claude-2.1", "messages": PROMPT},
            timeout=10,
        )
        holder.join(10)
        assert done.is_set()
        assert chat(client, "req-after-cap")  # the slot came back when the stream ended
    assert raw.status_code == 503
    assert raw.json()["error"]["code"] == "server_overloaded"
    assert raw.headers["retry-after"] == "1"


# --- what one client's call leaves behind for the next -------------------------------------------------


async def test_upstream_cookies_are_not_replayed_to_later_calls() -> None:
    """A `Set-Cookie` from the upstream (or a CDN in front of it) must not ride along on other clients'
    calls: the pooled client keeps no cookie jar."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            length = int(
                next(
                    line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
                ).split(b":")[1]
            )
            await reader.readexactly(length)
            body = b'{"completion": " hi", "stop_reason": "stop_sequence", "model": "claude-2.1"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"set-cookie: __cf_bm=tenant-a; Path=/; HttpOnly\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    server = await asyncio.start_server(answer, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    # A host name, not 127.0.0.1: cookie jars such as aiohttp's ignore cookies from bare IP addresses,
    # so with an IP this test could not catch a client that keeps one. (localhost is 127.0.0.1.)
    config = UpstreamConfig.model_validate({"base_url": f"http://localhost:{port}", "api_key": "sk-test"})
    client = UpstreamClient(config)
    try:
        for _ in range(2):
            body = {"model": "claude-2.1", "prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 5}
            answer_body = await client.complete("claude-2.1", body, None, Attempts())
            assert answer_body["completion"] == " hi"
    finally:
        await client.aclose()
        server.close()
    assert len(seen) == 2
    assert all(b"cookie" not in head.lower().replace(b"set-cookie", b"") for head in seen)
