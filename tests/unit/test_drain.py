"""The shutdown state (`proxy.http.drain`) and what /readyz makes of it."""

from __future__ import annotations

import asyncio
import io
import signal
import threading

import pytest
import structlog
from starlette.testclient import TestClient

import proxy.server as server_module
from proxy.app import create_app
from proxy.config import Config
from proxy.http.drain import Drain
from proxy.server import ProxyServer, uvicorn_config
from tests.support.wait import eventually


async def test_callbacks_run_at_the_deadline_only_while_watched() -> None:
    drain = Drain()
    calls: list[str] = []
    with drain.watch(lambda: calls.append("inside")):
        drain.begin(0.05)
        drain.begin(10)  # a second signal does not move the deadline
        assert drain.draining and not drain.expired
        await eventually(lambda: drain.expired, "the drain deadline passes")
    assert drain.expired
    assert calls == ["inside"]
    with drain.watch(lambda: calls.append("late")):  # watching after the deadline fires at once
        pass
    assert calls == ["inside", "late"]


def test_readyz_reports_draining() -> None:
    drain = Drain()
    app = create_app(Config.model_validate({"upstream": {"base_url": "http://127.0.0.1:9"}}), drain)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        drain.draining = True
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["shutdown"] == "draining"
        assert client.get("/healthz").status_code == 200  # still alive while draining


def test_the_exit_signal_takes_no_lock_the_interrupted_code_may_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM that lands while the main thread is writing a log line (holding the log's lock) must
    still start the drain: the handler hands its work, its log line included, to the loop. Here the
    handler runs, as a signal's would, on a thread that holds the log's lock; before, it waited for that
    lock forever and the process ignored SIGTERM until killed."""
    output = structlog.BytesLogger(io.BytesIO())
    monkeypatch.setattr(server_module, "_log", structlog.wrap_logger(output, processors=[_bytes]))
    config = Config.model_validate({"upstream": {"base_url": "http://127.0.0.1:9"}})
    server = ProxyServer(uvicorn_config(config), config)
    loop = asyncio.new_event_loop()
    server._loop = loop
    finished = threading.Event()

    def interrupted_while_logging() -> None:
        with output._lock:  # what `BytesLogger.msg` holds while it writes
            server.handle_exit(signal.SIGTERM, None)
        finished.set()

    thread = threading.Thread(target=interrupted_while_logging, daemon=True)
    thread.start()
    try:
        assert finished.wait(5), "the exit handler waited for the log's lock"
        assert server.should_exit
        loop.run_until_complete(asyncio.sleep(0))  # the loop runs what the handler handed it
        assert server.drain.draining
        assert b"'draining'" in output._file.getvalue()  # the log line, written by the loop
    finally:
        loop.close()


def _bytes(logger: object, method: str, event: dict[str, object]) -> bytes:
    return repr(event).encode()
