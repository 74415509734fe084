"""What a real proxy process writes: every line in the configured format (uvicorn's and gunicorn's
included), one access line per request, and no upstream credentials anywhere."""

from __future__ import annotations

import json
import socket
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import StartProxy
from tests.support.servers import HOST, Server

PASSWORD = "pw-must-not-be-logged"
QUERY_KEY = "qk-must-not-be-logged"


def records(server: Server) -> list[dict[str, Any]]:
    """Every line of the process's output, parsed as JSON (fails on the first line that is not)."""
    parsed = []
    for number, line in enumerate(server.log().splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
    return parsed


def make_requests(server: Server) -> list[str]:
    """A mix of answers (200, 404, 400, a stream, a 431 refused at the edge); the request ids sent."""
    ids = []
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for index, (method, path, payload) in enumerate(
            [
                ("GET", "/v1/models", None),
                ("POST", "/v1/chat/completions", body),
                ("POST", "/v1/chat/completions", {**body, "stream": True}),
                ("GET", "/v1/nowhere", None),
                ("POST", "/v1/chat/completions", {"model": "gpt-4"}),
            ]
        ):
            request_id = f"log-test-{index}"
            client.request(method, path, json=payload, headers={"x-request-id": request_id}).read()
            ids.append(request_id)
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431")
    return ids


@pytest.mark.parametrize("workers", [1, 2])
def test_every_line_is_json_and_each_request_is_logged_once(start_proxy: StartProxy, workers: int) -> None:
    with start_proxy(env={"PROXY_SERVER__WORKERS": str(workers)}) as server:
        ids = make_requests(server)
        assert server.stop() == 0
    lines = records(server)
    access = Counter(line["request_id"] for line in lines if line.get("event") == "request")
    assert access == Counter(ids)  # exactly one access line per request, nothing else
    assert sum(1 for line in lines if line.get("event") == "http_rejected") == 1
    loggers = {line.get("logger") for line in lines}
    assert "uvicorn.error" in loggers  # uvicorn's start-up and shutdown lines, as JSON
    if workers > 1:
        assert "gunicorn.error" in loggers
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)


def test_upstream_credentials_never_reach_the_log(start_proxy: StartProxy, mock_upstream: Server) -> None:
    host = f"{HOST}:{mock_upstream.port}"
    env = {"ANTHROPIC_BASE_URL": f"http://operator:{PASSWORD}@{host}"}
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    with start_proxy(env=env) as server:
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200
        scrape = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert PASSWORD not in server.log()
    assert PASSWORD not in scrape
    starting = next(line for line in records(server) if line["event"] == "starting")
    assert starting["upstream"] == f"http://{host}"


def test_pool_credentials_never_reach_the_log(start_proxy: StartProxy, mock_upstream: Server) -> None:
    host = f"{HOST}:{mock_upstream.port}"
    pool = [
        {"base_url": f"http://operator:{PASSWORD}@{host}"},
        {"base_url": f"http://{host}/?api_key={QUERY_KEY}&region=eu", "weight": 0},
    ]
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    with start_proxy(config={"upstream": {"pool": pool}}) as server:
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200
        scrape = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    log = server.log()
    for secret in (PASSWORD, QUERY_KEY):
        assert secret not in log
        assert secret not in scrape
    starting = next(line for line in records(server) if line["event"] == "starting")
    assert starting["pool"] == [f"http://{host}", f"http://{host}/?api_key=***&region=eu"]
