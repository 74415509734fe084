"""Graceful shutdown with a real SIGTERM to a real proxy process.

In-flight work inside `server.shutdown_timeout` finishes normally; what is still running at the
deadline ends in-band (streams) or with 503 (answers still waiting for the upstream); the process
then exits with status 0. Several workers shut down the same way.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import openai

from tests.conftest import StartProxy
from tests.support.servers import Server, mock_stats
from tests.support.wait import in_flight, wait_until

SLOW_STREAM = "Count [[mock:tokens=10]][[mock:token_delay_ms=200]][[mock:first_token_delay_ms=0]]"


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)


def stream_in_thread(server: Server, content: str, outcome: dict[str, Any]) -> threading.Thread:
    """Read a chat stream in a thread; record the text, and the error if the stream ended with one."""

    def run() -> None:
        text = []
        try:
            with sdk(server) as client:
                stream = client.chat.completions.create(
                    model="claude-2.1", messages=[{"role": "user", "content": content}], stream=True
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        outcome["finish_reason"] = chunk.choices[0].finish_reason
        except openai.APIError as error:
            outcome["error"] = error
        outcome["text"] = "".join(text)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def refuses_connections(server: Server) -> bool:
    """The listener is closed: a new connection is refused, or (in the instant it closes) accepted by the
    kernel and dropped without an answer."""
    try:
        httpx.get(f"{server.base_url}/healthz", timeout=2)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return True
    return False


def wait_exit(server: Server, timeout: float) -> int:
    code = server.process.wait(timeout)
    return code


def test_streams_in_flight_finish_before_the_process_exits(start_proxy: StartProxy) -> None:
    with start_proxy(env={"PROXY_SERVER__SHUTDOWN_TIMEOUT": "10"}) as server:
        outcome: dict[str, Any] = {}
        thread = stream_in_thread(server, SLOW_STREAM, outcome)
        wait_until(lambda: in_flight(server.base_url, "streams") == 1, "the stream under way")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # No new connections while draining (the listener closes soon after the signal).
        wait_until(lambda: refuses_connections(server), "the listener closed")
        thread.join(15)
        assert wait_exit(server, 10) == 0
        elapsed = time.monotonic() - started
    assert "error" not in outcome
    assert outcome["finish_reason"] == "stop"
    assert len(outcome["text"].split()) == 10
    assert elapsed < 5  # it exits as soon as the stream is done, not at the deadline
    assert '"event":"draining"' in server.log()


def test_streams_past_the_deadline_end_in_band_and_waiting_answers_get_503(start_proxy: StartProxy) -> None:
    env = {"PROXY_SERVER__SHUTDOWN_TIMEOUT": "1"}
    long_stream = "Count [[mock:tokens=40]][[mock:token_delay_ms=200]][[mock:first_token_delay_ms=0]]"
    with start_proxy(env=env) as server:
        outcome: dict[str, Any] = {}
        thread = stream_in_thread(server, long_stream, outcome)
        waiting: dict[str, Any] = {}

        def wait_for_slow_answer() -> None:
            body = {
                "model": "claude-2.1",
                "messages": [{"role": "user", "content": "[[mock:first_token_delay_ms=8000]]"}],
            }
            waiting["response"] = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=20)

        waiter = threading.Thread(target=wait_for_slow_answer)
        waiter.start()
        wait_until(lambda: in_flight(server.base_url) == 2, "the stream and the slow answer under way")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        thread.join(15)
        waiter.join(15)
        assert wait_exit(server, 10) == 0
        elapsed = time.monotonic() - started
    error = outcome["error"]
    assert isinstance(error, openai.APIError)
    assert error.code == "server_shutting_down"
    assert 0 < len(outcome["text"].split()) < 40
    response = waiting["response"]
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "server_shutting_down"
    assert response.headers["x-should-retry"] == "true"
    assert 0.9 < elapsed < 4


def test_several_workers_serve_and_shut_down_cleanly(start_proxy: StartProxy) -> None:
    with start_proxy(env={"PROXY_SERVER__WORKERS": "2"}) as server, sdk(server) as client:
        deadline = time.monotonic() + 20
        while server.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.log().count("Application startup complete") == 2
        for _ in range(6):
            answer = client.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
        server.process.send_signal(signal.SIGTERM)
        assert wait_exit(server, 15) == 0
    assert server.log().count('"event":"draining"') == 2  # one per worker


def test_several_workers_finish_a_stream_in_flight_on_sigterm(
    start_proxy: StartProxy, mock_upstream: Server
) -> None:
    """SIGTERM to gunicorn's master: the worker serving a stream drains it to its end, then all exit 0."""
    env = {"PROXY_SERVER__WORKERS": "2", "PROXY_SERVER__SHUTDOWN_TIMEOUT": "10"}
    with start_proxy(env=env) as server:
        deadline = time.monotonic() + 20
        while server.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        outcome: dict[str, Any] = {}
        thread = stream_in_thread(server, SLOW_STREAM, outcome)
        deadline = time.monotonic() + 10
        while mock_stats(mock_upstream)["active_streams"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the stream runs upstream
        assert mock_stats(mock_upstream)["active_streams"] == 1
        server.process.send_signal(signal.SIGTERM)
        thread.join(20)
        assert wait_exit(server, 20) == 0
    assert "error" not in outcome
    assert outcome["finish_reason"] == "stop"
    assert len(outcome["text"].split()) == 10
    assert server.log().count('"event":"draining"') == 2
