"""Malformed nested fields over real HTTP: a 400 envelope naming the field, no traceback, no upstream call.

tests/unit/test_request_shapes.py proves the property for any JSON in any field at the pure level;
these cases check that the running proxy answers the same way and logs no unhandled error.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.servers import Server, access_line, mock_requests
from tests.support.upstream import marker

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def user(text: str, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **fields}


CASES: list[tuple[str, Any, str, str]] = [
    # (path, body with {mark} in it, param, code)
    (CHAT, {"messages": [{"role": "user", "content": [{"type": ["text"]}, {"type": "text", "text": "{mark}"}]}]},
     "messages[0].content[0].type", "invalid_type"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": {"{mark}": 1}}]}]},
     "messages[0].content[0].text", "invalid_type"),
    (CHAT, {"messages": [user("{mark}"), {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": "x"}]}]},
     "messages[1].tool_calls[0].function", "invalid_type"),
    (CHAT, {"messages": [user("{mark}")], "tools": [{"type": "function", "function": "x"}]},
     "tools[0].function", "invalid_type"),
    (CHAT, {"messages": [user("{mark}")], "response_format": {"type": {"json": True}}},
     "response_format.type", "invalid_type"),
    (CHAT, {"messages": [user("{mark}")], "max_tokens": 9223372036854775808},
     "max_tokens", "integer_above_max_value"),
    (CHAT, {"messages": [user("{mark}")], "max_completion_tokens": 100001},
     "max_completion_tokens", "integer_above_max_value"),
    (COMPLETIONS, {"prompt": "{mark}", "max_tokens": 18446744073709551615},
     "max_tokens", "integer_above_max_value"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "template", "param", "code"), CASES)
def test_malformed_field_is_a_400_envelope(
    http: httpx.Client, proxy: Server, mock_upstream: Server, path: str, template: Any, param: str, code: str
) -> None:
    mark = marker()
    # The stdlib encoder writes 2**63 as it is, as a client would (orjson refuses such integers).
    raw = json.dumps({"model": "claude-2.1", **template}).replace("{mark}", mark)
    response = http.post(
        proxy.base_url + path, content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == ENVELOPE_KEYS
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert param in error["message"]
    request_id = response.headers["x-request-id"]
    assert access_line(proxy, request_id)["status"] == 400
    logged = [line for line in proxy.log().splitlines() if request_id in line]
    assert not [line for line in logged if "unhandled_error" in line or "Traceback" in line]
    assert not [r for r in mock_requests(mock_upstream) if mark in str(r)]
