"""Upstream failures as the client sees them, over real HTTP: the table of `proxy.translate.upstream_errors`.

The mock upstream fails on demand (`[[mock:status=…]]` and friends in the prompt). The proxy under test
runs with `PROXY_UPSTREAM__MAX_RETRIES=0`, so retryable statuses come straight through and each request
costs exactly one upstream attempt. Every case is checked non-streamed and streamed (the failure comes
before the first token, so it must still be a plain HTTP error), with raw HTTP and with the `openai` SDK.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GOOD_UPSTREAM_KEY, StartProxy, _proxy
from tests.support.servers import Server, free_port, mock_requests
from tests.support.upstream import marker

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODEL = "gpt-4"
NO_RETRIES = {"PROXY_UPSTREAM__MAX_RETRIES": "0"}
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@dataclass(frozen=True)
class Row:
    """One line of the upstream error table, in server-key mode."""

    upstream_status: int
    upstream_type: str | None  # None: the mock's default type for the status
    status: int
    type: str
    code: str | None
    sdk_error: type[openai.APIStatusError]
    no_retry: bool = False  # `x-should-retry: false` expected
    retry_after: str | None = None  # sent by the upstream, must reach the client

    @property
    def id(self) -> str:
        return f"{self.upstream_status}-{self.upstream_type or 'default'}"

    def directives(self, message: str) -> str:
        text = f"[[mock:status={self.upstream_status}]][[mock:message={message}]]"
        if self.upstream_type:
            text += f"[[mock:error_type={self.upstream_type}]]"
        if self.retry_after:
            text += f"[[mock:retry_after={self.retry_after}]]"
        return text


TABLE = [
    Row(400, "invalid_request_error", 400, "invalid_request_error", None, openai.BadRequestError),
    Row(
        401,
        "authentication_error",
        502,
        "server_error",
        "upstream_authentication_error",
        openai.InternalServerError,
        no_retry=True,
    ),
    Row(
        402,
        "billing_error",
        429,
        "insufficient_quota",
        "insufficient_quota",
        openai.RateLimitError,
        no_retry=True,
    ),
    Row(
        403,
        "permission_error",
        502,
        "server_error",
        "upstream_permission_error",
        openai.InternalServerError,
        no_retry=True,
    ),
    Row(404, "not_found_error", 404, "invalid_request_error", "model_not_found", openai.NotFoundError),
    Row(413, "request_too_large", 413, "invalid_request_error", "request_too_large", openai.APIStatusError),
    Row(
        429,
        "rate_limit_error",
        429,
        "requests",
        "rate_limit_exceeded",
        openai.RateLimitError,
        retry_after="7",
    ),
    Row(500, "api_error", 500, "server_error", None, openai.InternalServerError),
    Row(502, None, 502, "server_error", None, openai.InternalServerError),
    Row(503, None, 502, "server_error", None, openai.InternalServerError),
    Row(504, "timeout_error", 504, "server_error", "timeout", openai.InternalServerError),
    Row(
        529,
        "overloaded_error",
        503,
        "server_error",
        "overloaded",
        openai.InternalServerError,
        retry_after="3",
    ),
    # "other 4xx" → 400: never a status the SDKs would retry (408/409) or misread (422).
    Row(418, None, 400, "invalid_request_error", None, openai.BadRequestError),
    Row(422, None, 400, "invalid_request_error", None, openai.BadRequestError),
    Row(409, None, 400, "invalid_request_error", None, openai.BadRequestError),
]


@pytest.fixture(scope="module")
def no_retry_proxy(mock_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Server-key mode without proxy-side retries."""
    with _proxy(mock_upstream, tmp_path_factory.mktemp("no-retry"), env=NO_RETRIES) as server:
        yield server


def body_for(path: str, text: str, **fields: Any) -> dict[str, Any]:
    if path == CHAT:
        return {"model": MODEL, "messages": [{"role": "user", "content": text}], **fields}
    return {"model": MODEL, "prompt": text, **fields}


def sdk(server: Server, api_key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0)


def sdk_call(client: openai.OpenAI, path: str, text: str, stream: bool) -> None:
    if path == CHAT:
        result: Any = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], stream=stream
        )
    else:
        result = client.completions.create(model=MODEL, prompt=text, stream=stream)
    if stream:
        for _ in result:
            pass


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The envelope of an HTTP error response, after checking its framing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert "x-request-id" in response.headers
    payload = response.json()
    assert list(payload) == ["error"]
    error: dict[str, Any] = payload["error"]
    assert set(error) == ENVELOPE_KEYS
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_upstream_error_over_http(
    http: httpx.Client, no_retry_proxy: Server, mock_upstream: Server, row: Row, stream: bool
) -> None:
    marks = []
    for path in (CHAT, COMPLETIONS):
        mark = marker()
        marks.append(mark)
        upstream_message = f"upstream says {row.upstream_status} {mark}"
        response = http.post(
            no_retry_proxy.base_url + path,
            json=body_for(path, row.directives(upstream_message), stream=stream),
        )
        error = error_of(response, row.status)
        assert not response.content.startswith(b"data:")
        assert error["type"] == row.type, error
        assert error["code"] == row.code, error
        assert error["param"] is None
        assert upstream_message in error["message"]
        if row.no_retry:
            assert response.headers["x-should-retry"] == "false"
        elif row.status >= 500 or row.status == 429:
            assert "x-should-retry" not in response.headers  # transient: the SDKs may retry
        if row.retry_after is not None:
            assert response.headers["retry-after"] == row.retry_after
        else:
            assert "retry-after" not in response.headers
    raw = [str(record["raw"]) for record in mock_requests(mock_upstream)]
    assert [sum(mark in r for r in raw) for mark in marks] == [1, 1]  # one upstream attempt each


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_upstream_error_sdk_exception(no_retry_proxy: Server, row: Row, stream: bool) -> None:
    message = f"upstream says {row.upstream_status}"
    with sdk(no_retry_proxy) as client:
        for path in (CHAT, COMPLETIONS):
            with pytest.raises(openai.APIStatusError) as caught:
                sdk_call(client, path, row.directives(message), stream)
            error = caught.value
            assert type(error) is row.sdk_error, (type(error), row)
            assert error.status_code == row.status
            assert error.type == row.type
            assert error.code == row.code
            assert message in error.message
            assert error.request_id


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("error_type", ["overloaded_error", "rate_limit_error", "api_error"])
def test_upstream_error_mid_stream_is_in_band(
    http: httpx.Client, no_retry_proxy: Server, path: str, error_type: str
) -> None:
    text = (
        f"[[mock:tokens=6]][[mock:stream_error_after=2]][[mock:error_type={error_type}]]"
        "[[mock:message=went away mid-stream]]"
    )
    response = http.post(no_retry_proxy.base_url + path, json=body_for(path, text, stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "text/event-stream"
    events = response.content[:-2].split(b"\n\n")
    assert events[-1] == b"data: [DONE]"
    assert events[-2] == (
        b'data: {"error":{"message":"went away mid-stream","type":"server_error","param":null,"code":"'
        + error_type.encode()
        + b'"}}'
    )


def test_upstream_unreachable(start_proxy: StartProxy) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with start_proxy(env={"ANTHROPIC_BASE_URL": closed, **NO_RETRIES}) as server:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            for path in (CHAT, COMPLETIONS):
                for stream in (False, True):
                    response = http.post(path, json=body_for(path, "hi", stream=stream))
                    error = error_of(response, 502)
                    assert error["type"] == "server_error"
                    assert error["code"] == "upstream_connection_error"
                    assert "x-should-retry" not in response.headers  # transient
        with sdk(server) as client, pytest.raises(openai.InternalServerError) as caught:
            sdk_call(client, CHAT, "hi", False)
        assert caught.value.code == "upstream_connection_error"


def test_upstream_too_slow(start_proxy: StartProxy) -> None:
    env = {"PROXY_UPSTREAM__TIMEOUTS": '{"first_byte": 0.5}', **NO_RETRIES}
    slow = "[[mock:first_token_delay_ms=3000]]"
    with start_proxy(env=env) as server:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            for path in (CHAT, COMPLETIONS):
                response = http.post(path, json=body_for(path, slow))
                error = error_of(response, 504)
                assert error["type"] == "server_error"
                assert error["code"] == "upstream_timeout"
                assert "x-should-retry" not in response.headers  # transient
            # Streamed, the wait for the first event times out the same way: still an HTTP error.
            streamed = http.post(CHAT, json=body_for(CHAT, slow, stream=True))
            error = error_of(streamed, 504)
            assert (error["type"], error["code"]) == ("server_error", "upstream_timeout")
            assert "timed out" in error["message"] or "timeout" in error["message"]
            assert "x-should-retry" not in streamed.headers
        with sdk(server) as client, pytest.raises(openai.InternalServerError) as caught:
            sdk_call(client, COMPLETIONS, slow, False)
        assert caught.value.status_code == 504


def test_pass_through_auth_errors_are_the_clients(passthrough_proxy: Server, no_retry_proxy: Server) -> None:
    # Pass-through mode: the client's own key was refused → 401, the client's fault.
    wrong = httpx.post(
        passthrough_proxy.base_url + CHAT,
        json=body_for(CHAT, "hi"),
        headers={"Authorization": "Bearer sk-ant-not-the-right-one"},
        timeout=30,
    )
    error = error_of(wrong, 401)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "invalid x-api-key" in error["message"]
    with sdk(passthrough_proxy, api_key="sk-ant-not-the-right-one") as client:
        with pytest.raises(openai.AuthenticationError):
            sdk_call(client, CHAT, "hi", False)
        with pytest.raises(openai.AuthenticationError):
            sdk_call(client, COMPLETIONS, "hi", True)
    # ...and a permission error on the client's key is a 403 for the client.
    forbidden = httpx.post(
        passthrough_proxy.base_url + CHAT,
        json=body_for(CHAT, "[[mock:status=403]][[mock:message=no access to this model]]"),
        headers={"Authorization": f"Bearer {GOOD_UPSTREAM_KEY}"},
        timeout=30,
    )
    error = error_of(forbidden, 403)
    assert (error["type"], error["code"]) == ("invalid_request_error", "permission_denied")
    assert error["message"] == "no access to this model"
    with (
        sdk(passthrough_proxy, api_key=GOOD_UPSTREAM_KEY) as client,
        pytest.raises(openai.PermissionDeniedError),
    ):
        sdk_call(client, CHAT, "[[mock:status=403]]", False)
    # Server-key mode: the same upstream 401 is the operator's fault → 502, never retried, never a 401.
    # (test_conformance.py::test_c65 does the same with a really wrong server key.)
    server_side = httpx.post(
        no_retry_proxy.base_url + CHAT, json=body_for(CHAT, "[[mock:status=401]]"), timeout=30
    )
    error = error_of(server_side, 502)
    assert error["code"] == "upstream_authentication_error"
    assert server_side.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_prompt_too_long(http: httpx.Client, no_retry_proxy: Server, path: str, stream: bool) -> None:
    upstream_message = "prompt is too long: 210883 tokens > 199999 maximum"
    text = f"[[mock:status=400]][[mock:message={upstream_message}]]"
    response = http.post(no_retry_proxy.base_url + path, json=body_for(path, text, stream=stream))
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == ("messages" if path == CHAT else "prompt")
    assert "maximum context length" in error["message"]
    assert upstream_message in error["message"]
    with sdk(no_retry_proxy) as client, pytest.raises(openai.BadRequestError) as caught:
        sdk_call(client, path, text, stream)
    assert caught.value.code == "context_length_exceeded"


def test_prompt_too_long_is_recognised_by_langchain(no_retry_proxy: Server) -> None:
    from langchain_core.exceptions import ContextOverflowError
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=MODEL, base_url=f"{no_retry_proxy.base_url}/v1", api_key="k", max_retries=0)  # type: ignore[arg-type]
    with pytest.raises(ContextOverflowError):
        chat.invoke("[[mock:status=400]][[mock:message=prompt is too long: 210883 tokens > 199999 maximum]]")
