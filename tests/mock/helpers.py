"""Shared helpers for the mock-upstream tests: valid prompts/bodies and SSE parsing."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import GOOD_UPSTREAM_KEY
from tests.support.servers import Server

ACCEPTED_KEY = GOOD_UPSTREAM_KEY  # the key the session's keyed mock accepts
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def prompt(text: str) -> str:
    """A minimal valid prompt around `text` (directives can go inside it)."""
    return f"{HUMAN} {text}{ASSISTANT}"


def body(text: str = "hi", **fields: Any) -> dict[str, Any]:
    """A valid request body; keyword arguments add or override fields."""
    return {"model": "claude-2.1", "prompt": prompt(text), "max_tokens_to_sample": 200, **fields}


class Poster:
    """POST /v1/complete on a mock with the standard headers, overridable per call."""

    def __init__(self, client: httpx.Client, server: Server) -> None:
        self.client = client
        self.url = f"{server.base_url}/v1/complete"

    def __call__(self, payload: object, headers: dict[str, str] | None = None) -> httpx.Response:
        all_headers = {**HEADERS, **(headers or {})}
        if isinstance(payload, bytes | str):
            return self.client.post(self.url, content=payload, headers=all_headers)
        return self.client.post(self.url, json=payload, headers=all_headers)


def split_events(raw: bytes) -> list[bytes]:
    """Split an SSE body on the CRLF blank line that ends every event."""
    assert raw.endswith(b"\r\n\r\n"), raw[-80:]
    return raw[: -len(b"\r\n\r\n")].split(b"\r\n\r\n")


def parse_event(event: bytes) -> tuple[str | None, str]:
    """(event name or None, data) of one CRLF-framed event."""
    name = None
    data = ""
    for line in event.decode().split("\r\n"):
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        else:
            raise AssertionError(f"unexpected line {line!r}")
    return name, data


def completion_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of the `completion` events of a 2023-06-01 stream."""
    out = []
    for event in split_events(raw):
        name, data = parse_event(event)
        if name == "completion":
            out.append(json.loads(data))
    return out


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    """(status, error.type, error.message), after checking the standard error envelope."""
    payload = response.json()
    assert list(payload) == ["type", "error", "request_id"]
    assert payload["type"] == "error"
    assert payload["request_id"].startswith("req_")
    assert response.headers["request-id"] == payload["request_id"]
    assert response.headers["content-type"] == "application/json"
    return response.status_code, payload["error"]["type"], payload["error"]["message"]
