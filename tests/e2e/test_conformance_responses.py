"""The conformance checklist (reference §9) applied to `/v1/responses` and its resources.

The checklist was written for chat and legacy completions; its HTTP, validation, error-envelope and
retry items hold just as much for the Responses routes, which the official SDK calls the same way.
Each test is named `test_rNN_<short>` after the checklist item NN it carries over. Stream framing
(items 37–53) is Responses' own event protocol, covered in `test_responses_api.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GOOD_UPSTREAM_KEY
from tests.e2e.test_conformance import (
    JSON_PARSE_PREFIX,
    MODEL,
    REQUEST_ID,
    UNICODE,
    assert_error,
    assert_json_200,
    assert_sse,
    sdk,
)
from tests.support.servers import Server, mock_requests
from tests.support.upstream import marker

RESPONSES = "/v1/responses"


def body(said: str = "hello", /, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": said, **fields}


@pytest.fixture
def stored(client: openai.OpenAI) -> str:
    """The id of a stored response of `client`'s key."""
    return client.responses.create(model=MODEL, input="remember this").id


def sse_types(raw: bytes) -> list[str]:
    return [line[len(b"event: ") :].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")]


# --------------------------------------------------------------------------------------------------
# Routing, HTTP and auth (1–10)
# --------------------------------------------------------------------------------------------------


def test_r01_every_route_answers(http: httpx.Client, proxy: Server, stored: str) -> None:
    created = assert_json_200(http.post(proxy.base_url + RESPONSES, json=body()))
    assert created["object"] == "response" and created["id"].startswith("resp_")
    assert assert_json_200(http.get(f"{proxy.base_url}{RESPONSES}/{stored}"))["id"] == stored
    items = assert_json_200(http.get(f"{proxy.base_url}{RESPONSES}/{stored}/input_items"))
    assert items["object"] == "list" and items["data"]
    deleted = assert_json_200(http.delete(f"{proxy.base_url}{RESPONSES}/{stored}"))
    assert deleted == {"id": stored, "object": "response", "deleted": True}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/resp_1/bogus"),
        ("GET", "/v1/responses/resp_1/input_items/more"),
        ("DELETE", "/v1/responses/resp_1/input_items"),
        ("POST", "/v1/responses/resp_1/cancel"),
        ("GET", "/v1/response"),
    ],
)
def test_r02_unknown_subpaths(http: httpx.Client, proxy: Server, method: str, path: str) -> None:
    response = http.request(method, proxy.base_url + path)
    if method == "POST" and path.endswith("/cancel"):
        # A known prefix with a method it does not take.
        assert_error(response, 405, "invalid_request_error", "method_not_allowed", None)
        assert response.headers["allow"] == "DELETE, GET, HEAD"
        return
    error = assert_error(response, 404, "invalid_request_error", "unknown_url", None)
    assert error["message"].startswith(f"Unknown request URL: {method} {path}.")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", RESPONSES),
        ("GET", f"{RESPONSES}/resp_1"),
        ("GET", f"{RESPONSES}/resp_1/input_items"),
        ("DELETE", f"{RESPONSES}/resp_1"),
    ],
)
def test_r04_missing_key(passthrough_proxy: Server, keyed_mock: Server, method: str, path: str) -> None:
    mark = marker()
    response = httpx.request(method, passthrough_proxy.base_url + path, json=body(mark), timeout=30)
    error = assert_error(response, 401, "invalid_request_error")
    assert "API key" in error["message"]
    assert not [r for r in mock_requests(keyed_mock) if mark in str(r["raw"])]


def test_r04_r05_sdk_auth_errors(passthrough_proxy: Server) -> None:
    with sdk(passthrough_proxy, api_key="sk-ant-wrong-key-0123456789") as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.responses.create(model=MODEL, input="hi")
        assert caught.value.code == "invalid_api_key" and caught.value.request_id
        with pytest.raises(openai.AuthenticationError):
            wrong.responses.create(model=MODEL, input="hi", stream=True)
    with sdk(passthrough_proxy, api_key=GOOD_UPSTREAM_KEY) as good:
        assert good.responses.create(model=MODEL, input="hi").status == "completed"


def test_r06_sdk_headers_accepted(proxy: Server) -> None:
    with sdk(proxy, organization="org-conformance", project="proj_conformance") as client:
        response = client.responses.create(
            model=MODEL,
            input="hi",
            extra_headers={"Idempotency-Key": "stainless-python-retry-1", "x-stainless-retry-count": "0"},
        )
    assert response.status == "completed"


def test_r07_r10_r37_body_decides_stream(http: httpx.Client, proxy: Server) -> None:
    url = proxy.base_url + RESPONSES
    streamed = http.post(
        url, json=body(stream=True), headers={"Accept": "application/json", "Accept-Encoding": "gzip"}
    )
    assert_sse(streamed)
    assert "content-length" not in streamed.headers and streamed.headers["cache-control"] == "no-cache"
    assert "content-encoding" not in streamed.headers  # item 37, although the client offers gzip
    assert sse_types(streamed.content)[-1] == "response.completed"
    for stream in ("absent", False, None):
        fields = {} if stream == "absent" else {"stream": stream}
        plain = http.post(url, json=body(**fields), headers={"Accept": "text/event-stream"})
        assert assert_json_200(plain)["status"] == "completed"
        assert not plain.content.startswith(b"event:")


def test_r08_r09_request_id_and_json_content_type_everywhere(
    http: httpx.Client, proxy: Server, client: openai.OpenAI, stored: str
) -> None:
    url = proxy.base_url + RESPONSES
    responses = [
        http.post(url, json=body()),
        http.post(url, json=body(stream=True)),
        http.post(url, json=body(model="no-such-model")),
        http.post(url, content=b"{nope"),
        http.get(f"{url}/{stored}"),
        http.get(f"{url}/{stored}/input_items"),
        http.get(f"{url}/resp_missing"),
        http.delete(f"{url}/resp_missing"),
        http.delete(f"{url}/{stored}"),
    ]
    ids = [r.headers.get("x-request-id", "") for r in responses]
    assert all(REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    for response in responses[:1] + responses[2:]:
        assert response.headers["content-type"] == "application/json"
    for call in (
        lambda: client.responses.create(model="no-such-model", input="hi"),
        lambda: client.responses.retrieve("resp_missing"),
        lambda: client.responses.delete("resp_missing"),
        lambda: client.responses.input_items.list("resp_missing"),
        lambda: client.responses.create(model=MODEL, input="hi", temperature=5),
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        assert caught.value.request_id and REQUEST_ID.match(caught.value.request_id)
    assert client.responses.create(model=MODEL, input="hi")._request_id


# --------------------------------------------------------------------------------------------------
# Request validation (11–27)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", None),
        (b"", None),
        (b'{"model": "gpt-4",}', None),
        (b"\xff\xfe", None),
        (b"[1, 2]", "invalid_type"),  # JSON, but not an object
        (b"null", "invalid_type"),
    ],
)
def test_r11_malformed_json(http: httpx.Client, proxy: Server, raw: bytes, code: str | None) -> None:
    response = http.post(
        proxy.base_url + RESPONSES, content=raw, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 400, "invalid_request_error", code, None)
    if code is None:
        assert error["message"].startswith(JSON_PARSE_PREFIX)


def test_r12_r13_missing_model_and_input(http: httpx.Client, proxy: Server) -> None:
    error = assert_error(
        http.post(proxy.base_url + RESPONSES, json={"input": "x"}), 400, "invalid_request_error"
    )
    assert error["message"] == "you must provide a model parameter"
    error = assert_error(
        http.post(proxy.base_url + RESPONSES, json={"model": MODEL}),
        400,
        "invalid_request_error",
        "missing_required_parameter",
        "input",
    )
    assert error["message"] == "Missing required parameter: 'input'."


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"input": {"x": 1}}, "input"),
        ({"model": 5}, "model"),
        ({"tools": "x"}, "tools"),
        ({"metadata": "x"}, "metadata"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_r16_wrong_types(http: httpx.Client, proxy: Server, fields: dict[str, Any], param: str) -> None:
    response = http.post(proxy.base_url + RESPONSES, json=body(**fields))
    error = assert_error(response, 400, "invalid_request_error", "invalid_type", param)
    assert error["message"].startswith(f"Invalid type for '{param}': ")


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("temperature", 2.5, "decimal_above_max_value"),
        ("temperature", -1, "integer_below_min_value"),
        ("top_p", 2, "integer_above_max_value"),
        ("max_output_tokens", -1, "integer_below_min_value"),
    ],
)
def test_r17_out_of_range_with_the_sdk(client: openai.OpenAI, field: str, value: float, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", **{field: value})
    assert (caught.value.param, caught.value.code, caught.value.type) == (
        field,
        code,
        "invalid_request_error",
    )


NULLABLE_FIELDS = [
    "temperature",
    "top_p",
    "max_output_tokens",
    "instructions",
    "previous_response_id",
    "metadata",
    "user",
    "store",
    "stream",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "truncation",
    "parallel_tool_calls",
    "service_tier",
]


def test_r19_explicit_nulls_act_as_omitted(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + RESPONSES, json=body(**dict.fromkeys(NULLABLE_FIELDS)))
    payload = assert_json_200(response)
    assert payload["status"] == "completed" and payload["output"]
    assert payload["store"] is True and payload["temperature"] == 1.0  # OpenAI's defaults, echoed


@pytest.mark.parametrize(
    "content",
    [
        b"{oops",
        b"{}",
        json.dumps({"model": MODEL, "input": []}).encode(),
        json.dumps(body(top_p="x")).encode(),
    ],
)
def test_r20_never_422_detail(http: httpx.Client, proxy: Server, content: bytes) -> None:
    response = http.post(proxy.base_url + RESPONSES, content=content)
    assert response.status_code == 400, response.text
    assert "detail" not in response.json()
    assert_error(response, 400)


@pytest.mark.parametrize("stream", [False, True])
def test_r21_unknown_model(http: httpx.Client, proxy: Server, client: openai.OpenAI, stream: bool) -> None:
    response = http.post(proxy.base_url + RESPONSES, json=body(model="gpt-99", stream=stream))
    error = assert_error(response, 404, "invalid_request_error", "model_not_found", None)
    assert error["message"] == "The model `gpt-99` does not exist or you do not have access to it."
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-99", input="hi", stream=stream)
    assert caught.value.code == "model_not_found"


def test_r24_optional_openai_fields_never_5xx(http: httpx.Client, proxy: Server) -> None:
    fields = {
        "safety_identifier": "user-1",
        "prompt_cache_key": "k",
        "service_tier": "auto",
        "truncation": "auto",
        "reasoning": {"effort": "low"},
        "text": {"verbosity": "low"},
        "metadata": {"k": "v"},
        "user": "u",
        "parallel_tool_calls": False,
        "stream_options": {"include_obfuscation": False},
        "unknown_field_xyz": 1,
    }
    assert (
        assert_json_200(http.post(proxy.base_url + RESPONSES, json=body(**fields)))["status"] == "completed"
    )
    for name, value in fields.items():
        response = http.post(proxy.base_url + RESPONSES, json=body(**{name: value}))
        assert response.status_code < 500, (name, response.text)


def test_r31_usage_always_present(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi")
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_r34_no_error_in_a_200(http: httpx.Client, proxy: Server) -> None:
    payload = assert_json_200(http.post(proxy.base_url + RESPONSES, json=body()))
    assert payload["error"] is None  # the response object has an `error` field, null unless it failed


@pytest.mark.parametrize("stream", [False, True])
def test_r44_unicode_in_every_field(http: httpx.Client, proxy: Server, stream: bool) -> None:
    fields = {
        "instructions": f"répondez {UNICODE}",
        "metadata": {"ключ": UNICODE},
        "user": f"ユーザー {UNICODE}",
        "stream": stream,
    }
    request = {
        **body(**fields),
        "input": [{"role": "user", "content": [{"type": "input_text", "text": f"say {UNICODE}"}]}],
    }
    response = http.post(proxy.base_url + RESPONSES, json=request)
    if stream:
        assert_sse(response)
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        completed = [
            json.loads(line[len(b"data: ") :])
            for line in response.content.split(b"\n")
            if line.startswith(b"data: ") and b'"response.completed"' in line
        ]
        (payload,) = (c["response"] for c in completed)
    else:
        payload = assert_json_200(response)
    assert UNICODE in payload["output"][0]["content"][0]["text"]
    assert payload["metadata"] == {"ключ": UNICODE} and payload["instructions"] == fields["instructions"]


# --------------------------------------------------------------------------------------------------
# Errors around streams, envelopes, statuses and retry semantics (54–66)
# --------------------------------------------------------------------------------------------------

CONTEXT_OVERFLOW = "[[mock:status=400]][[mock:message=prompt is too long: 210883 tokens > 199999 maximum]]"


@pytest.mark.parametrize(
    ("text", "fields", "status", "code", "no_retry"),
    [
        ("hi", {"temperature": 9}, 400, "integer_above_max_value", False),
        ("hi", {"model": "gpt-99"}, 404, "model_not_found", False),
        ("hi", {"background": True}, 400, "unsupported_parameter", False),
        ("hi", {"previous_response_id": "resp_unknown"}, 400, "previous_response_not_found", False),
        (CONTEXT_OVERFLOW, {}, 400, "context_length_exceeded", False),
        ("[[mock:status=429]][[mock:retry_after=30]]", {}, 429, "rate_limit_exceeded", False),
        ("[[mock:status=402]]", {}, 429, "insufficient_quota", True),
        ("[[mock:status=401]]", {}, 502, "upstream_authentication_error", True),
        ("[[mock:status=500]]", {}, 500, None, False),
        ("[[mock:status=529]][[mock:retry_after=30]]", {}, 503, "overloaded", False),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_r54_r58_r64_errors_before_the_first_byte(
    http: httpx.Client,
    proxy: Server,
    stream: bool,
    text: str,
    fields: dict[str, Any],
    status: int,
    code: str | None,
    no_retry: bool,
) -> None:
    """With `stream: true` too, an error known before the first byte is a plain HTTP error, and
    `x-should-retry: false` marks exactly the server-side errors a retry cannot fix."""
    response = http.post(proxy.base_url + RESPONSES, json=body(text, stream=stream, **fields))
    error = assert_error(response, status, code=code)
    assert not response.content.startswith(b"event:")
    if no_retry:
        assert response.headers["x-should-retry"] == "false"
    else:
        assert "x-should-retry" not in response.headers
    if status < 500 and code != "rate_limit_exceeded" and code != "insufficient_quota":
        assert error["type"] == "invalid_request_error"
    if code == "context_length_exceeded":
        assert error["param"] == "input" and "maximum context length" in error["message"]
    if code == "rate_limit_exceeded":
        assert error["type"] in {"requests", "tokens"}
        assert 1 <= int(response.headers["retry-after"]) <= 60
    if code == "insufficient_quota":
        assert error["type"] == "insufficient_quota"


@pytest.mark.parametrize(
    ("method", "path", "status", "param"),
    [
        ("GET", "/v1/responses/resp_missing", 404, "response_id"),
        ("DELETE", "/v1/responses/resp_missing", 404, "response_id"),
        ("GET", "/v1/responses/resp_missing/input_items", 404, "response_id"),
        ("PUT", "/v1/responses/resp_missing", 405, None),
        ("GET", "/v1/responses", 405, None),
    ],
)
def test_r58_resource_error_envelopes(
    http: httpx.Client, proxy: Server, method: str, path: str, status: int, param: str | None
) -> None:
    assert_error(http.request(method, proxy.base_url + path), status, "invalid_request_error", param=param)


@pytest.mark.parametrize(
    ("query", "param"),
    [("order=sideways", "order"), ("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit")],
)
def test_r17_input_items_query_validation(
    http: httpx.Client, proxy: Server, stored: str, query: str, param: str
) -> None:
    response = http.get(f"{proxy.base_url}{RESPONSES}/{stored}/input_items?{query}")
    assert_error(response, 400, "invalid_request_error", "invalid_value", param)


@pytest.fixture
def wrong_key_client(passthrough_proxy: Server) -> Iterator[openai.OpenAI]:
    with sdk(passthrough_proxy, api_key="sk-ant-wrong") as client:
        yield client


def test_r59_status_to_sdk_class(client: openai.OpenAI, wrong_key_client: openai.OpenAI) -> None:
    """Each status the Responses routes produce raises the SDK class the checklist names, with the
    envelope's `.code`, `.param` and `.type` on it."""
    cases: list[tuple[type[openai.APIStatusError], int, str | None, str | None, Any]] = [
        (
            openai.BadRequestError,
            400,
            "integer_above_max_value",
            "temperature",
            lambda: client.responses.create(model=MODEL, input="hi", temperature=7),
        ),
        (
            openai.BadRequestError,
            400,
            "unsupported_parameter",
            "background",
            lambda: client.responses.create(model=MODEL, input="hi", background=True),
        ),
        (
            openai.BadRequestError,
            400,
            "previous_response_not_found",
            "previous_response_id",
            lambda: client.responses.create(model=MODEL, input="hi", previous_response_id="resp_x"),
        ),
        (
            openai.BadRequestError,
            400,
            "context_length_exceeded",
            "input",
            lambda: client.responses.create(model=MODEL, input=CONTEXT_OVERFLOW),
        ),
        (
            openai.NotFoundError,
            404,
            "model_not_found",
            None,
            lambda: client.responses.create(model="nope", input="hi"),
        ),
        (openai.NotFoundError, 404, None, "response_id", lambda: client.responses.retrieve("resp_x")),
        (openai.NotFoundError, 404, None, "response_id", lambda: client.responses.delete("resp_x")),
        (openai.NotFoundError, 404, None, "response_id", lambda: client.responses.input_items.list("resp_x")),
        (
            openai.RateLimitError,
            429,
            "rate_limit_exceeded",
            None,
            lambda: client.responses.create(model=MODEL, input="[[mock:status=429]][[mock:retry_after=30]]"),
        ),
        (
            openai.InternalServerError,
            500,
            None,
            None,
            lambda: client.responses.create(model=MODEL, input="[[mock:status=500]]"),
        ),
        (
            openai.InternalServerError,
            502,
            "upstream_authentication_error",
            None,
            lambda: client.responses.create(model=MODEL, input="[[mock:status=401]]"),
        ),
        (
            openai.InternalServerError,
            503,
            "overloaded",
            None,
            lambda: client.responses.create(model=MODEL, input="[[mock:status=529]]", stream=True),
        ),
        (
            openai.AuthenticationError,
            401,
            "invalid_api_key",
            None,
            lambda: wrong_key_client.responses.create(model=MODEL, input="hi"),
        ),
    ]
    for cls, status, code, param, call in cases:
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        error = caught.value
        assert type(error) is cls, (status, error)
        assert (error.status_code, error.code, error.param) == (status, code, param)
        assert isinstance(error.type, str) and error.message


def test_r55_failure_after_the_first_byte_is_a_failed_event(client: openai.OpenAI) -> None:
    """Responses' equivalent of item 55: a `response.failed` event (no `[DONE]`, no second envelope);
    the SDK's stream helper then refuses to produce a final response."""
    events = list(
        client.responses.create(
            model=MODEL, input="[[mock:tokens=6]][[mock:stream_error_after=3]] x", stream=True
        )
    )
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None and events[-1].response.error.code == "server_error"
    with (
        client.responses.stream(
            model=MODEL, input="[[mock:tokens=6]][[mock:stream_error_after=3]] x"
        ) as stream,
        pytest.raises(RuntimeError, match=r"response\.completed"),
    ):
        for _ in stream:
            pass
        stream.get_final_response()
