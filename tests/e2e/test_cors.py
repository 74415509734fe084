"""CORS over real HTTP: preflights, the headers of ordinary and error responses, and CORS off by default.

A browser only lets a script read a response whose `access-control-allow-origin` names its origin, and
only the headers listed in `access-control-expose-headers`; a preflight (OPTIONS with
`access-control-request-method`) comes before any request that carries `Authorization`. These tests
send exactly what a browser sends and check exactly what it would look at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.servers import Server

APP = "https://app.example.com"
KEY = "sk-web-app-key-4242"
HI = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}

CORS_CONFIG: dict[str, Any] = {
    "cors": {
        "allow_origins": [APP],
        "allow_origin_regex": r"https://[a-z0-9-]+\.preview\.example\.org",
        "allow_credentials": True,
        "max_age": 120,
    },
    "auth": {
        "keys": [
            {"name": "web", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "limits": {"rpm": 2}}
        ]
    },
}


@pytest.fixture(scope="module")
def cors_proxy(mock_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.conftest import _proxy

    with _proxy(mock_upstream, tmp_path_factory.mktemp("cors"), config=CORS_CONFIG) as server:
        yield server


def preflight(
    server: Server, origin: str, method: str = "POST", headers: str | None = None
) -> httpx.Response:
    request_headers = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        request_headers["access-control-request-headers"] = headers
    return httpx.options(f"{server.base_url}/v1/chat/completions", headers=request_headers, timeout=10)


def test_preflight_of_an_allowed_origin_is_answered_without_a_key(cors_proxy: Server) -> None:
    asked = "authorization, content-type, x-stainless-os, x-stainless-retry-count"
    response = preflight(cors_proxy, APP, headers=asked)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"].split(", ")
    assert response.headers["access-control-allow-headers"] == asked  # `*` mirrors what was asked
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-max-age"] == "120"
    # The regular expression admits its origins too.
    matched = preflight(cors_proxy, "https://pr42.preview.example.org")
    assert matched.status_code == 200
    assert matched.headers["access-control-allow-origin"] == "https://pr42.preview.example.org"


def test_preflight_of_another_origin_or_method_is_refused_in_an_error_envelope(cors_proxy: Server) -> None:
    for origin, method, refused in (
        ("https://evil.example.net", "POST", "origin"),
        ("https://pr42.preview.example.org.evil.net", "POST", "origin"),  # the regex must match fully
        (APP, "PUT", "method"),
    ):
        response = preflight(cors_proxy, origin, method)
        assert response.status_code == 400, (origin, method)
        if refused == "origin":
            assert "access-control-allow-origin" not in response.headers
        error = response.json()["error"]
        assert error["code"] == "cors_preflight_refused"
        assert refused in error["message"]


def test_a_request_from_an_allowed_origin_carries_the_cors_headers(cors_proxy: Server) -> None:
    response = httpx.post(
        f"{cors_proxy.base_url}/v1/chat/completions",
        json=HI,
        headers={"origin": APP, "authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]
    exposed = response.headers["access-control-expose-headers"].split(", ")
    for name in ("x-request-id", "x-ratelimit-remaining-requests", "retry-after"):
        assert name in exposed
    assert response.headers["x-ratelimit-limit-requests"] == "2"  # ... and it is there to be read
    # Another origin is served (CORS is the browser's check) but gets no allowance to read the answer.
    other = httpx.get(
        f"{cors_proxy.base_url}/v1/models",
        headers={"origin": "https://evil.example.net", "authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_error_responses_carry_the_cors_headers(cors_proxy: Server) -> None:
    """A browser script must be able to read a 401, a 404 and a 429 with its retry hints."""
    url = f"{cors_proxy.base_url}/v1/chat/completions"
    unauthenticated = httpx.post(url, json=HI, headers={"origin": APP}, timeout=10)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "invalid_api_key"
    assert unauthenticated.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in unauthenticated.headers["access-control-expose-headers"]

    unknown = httpx.get(f"{cors_proxy.base_url}/v1/nothing", headers={"origin": APP}, timeout=10)
    assert unknown.status_code == 404
    assert unknown.headers["access-control-allow-origin"] == APP

    headers = {"origin": APP, "authorization": f"Bearer {KEY}"}
    statuses = [httpx.post(url, json=HI, headers=headers, timeout=10) for _ in range(3)]
    limited = statuses[-1]
    assert limited.status_code == 429, [r.status_code for r in statuses]
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["access-control-allow-origin"] == APP
    exposed = limited.headers["access-control-expose-headers"].split(", ")
    assert "retry-after" in exposed and "retry-after" in limited.headers


def test_cors_is_off_by_default(proxy: Server) -> None:
    """Without a `cors` section: no CORS header on any answer, and OPTIONS is a 405 as for any other
    method a route does not take."""
    response = preflight(proxy, APP, headers="authorization")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    served = httpx.post(
        f"{proxy.base_url}/v1/chat/completions", json=HI, headers={"origin": APP, "authorization": "Bearer x"}
    )
    assert served.status_code == 200
    for answer in (response, served):
        assert not [name for name in answer.headers if name.startswith("access-control-")]
        assert "vary" not in answer.headers
