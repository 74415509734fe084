"""Edges of the translation core, over real HTTP: an upstream that keeps its body open after the final
event, a client that hangs up during its upload, secrets an upstream echoes, and 405's `Allow`."""

from __future__ import annotations

import socket
import uuid

import httpx
import orjson

from tests.conftest import SERVER_KEY
from tests.support.servers import HOST, Server, access_line

MODEL = "gpt-4"


def tag() -> str:
    return f"edge{uuid.uuid4().hex[:12]}"


def test_the_last_chunk_and_done_arrive_although_the_upstream_keeps_its_body_open(proxy: Server) -> None:
    """The mock holds its body open 60 s after the final event; the client's read limit is 15 s, so a
    proxy that waited for the upstream's end (or its 120 s idle timeout) fails here."""
    body = {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "[[mock:tokens=5]][[mock:hold_open_ms=60000]]"}],
    }
    timeout = httpx.Timeout(15.0)
    with (
        httpx.Client(timeout=timeout) as http,
        http.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        raw = response.read()
    lines = [line for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    finishes = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert finishes[-2]["choices"][0]["finish_reason"] == "stop"
    assert finishes[-1]["usage"]["completion_tokens"] > 0
    # And the proxy keeps serving: the held upstream connection was dropped, not reused.
    with httpx.Client(timeout=timeout) as http:
        again = http.post(
            f"{proxy.base_url}/v1/chat/completions", json={"model": MODEL, "messages": body["messages"]}
        )
    assert again.status_code == 200


def test_a_client_hanging_up_during_its_upload_is_499_not_500(proxy: Server) -> None:
    request_id = tag()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {HOST}:{proxy.port}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 5000\r\n"
        f"x-request-id: {request_id}\r\n\r\n"
    )
    with socket.create_connection((HOST, proxy.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"model": "gpt-4", "messages": [')
    line = access_line(proxy, request_id)
    assert line["status"] == 499 and line["client_disconnected"] is True, line
    assert "unhandled_error" not in proxy.log()


def test_the_server_key_echoed_by_an_upstream_error_never_reaches_the_client(proxy: Server) -> None:
    directive = (
        f"[[mock:status=401]][[mock:error_type=authentication_error]][[mock:message=bad key {SERVER_KEY}]]"
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": directive}]}
    with httpx.Client(timeout=15.0) as http:
        response = http.post(f"{proxy.base_url}/v1/chat/completions", json=body)
    assert response.status_code == 502
    assert SERVER_KEY not in response.text and "[redacted]" in response.json()["error"]["message"]


def test_the_server_key_echoed_by_a_mid_stream_error_never_reaches_the_client(proxy: Server) -> None:
    directive = f"[[mock:tokens=4]][[mock:stream_error_after=2]][[mock:message=overloaded for {SERVER_KEY}]]"
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": directive}]}
    with httpx.Client(timeout=15.0) as http:
        response = http.post(f"{proxy.base_url}/v1/chat/completions", json=body)
    assert '"error"' in response.text and response.text.endswith("data: [DONE]\n\n")
    assert SERVER_KEY not in response.text and "[redacted]" in response.text
    assert SERVER_KEY not in proxy.log()


def test_405_names_the_allowed_methods(proxy: Server) -> None:
    with httpx.Client(timeout=15.0) as http:
        response = http.get(f"{proxy.base_url}/v1/chat/completions")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
