"""HTTP-level conformance: the 71-point checklist of the OpenAI conformance reference (§9), item by item.

Every test is named `test_cNN_<short>` after checklist item NN, so a failure maps straight to the
checklist. The expected wording and codes were copied from the reference (§8, §9); the reference file is
not read at run time. Requests go over real sockets to real proxy and mock-upstream processes, with raw
`httpx` (byte-level checks) and the official `openai` SDK (3.x, the only one installed) where the item
names the SDK.

Node SDK: not installed here. Items that name it (8, 52, 59) are covered with the Python SDK plus raw
HTTP (httpx, and the real `curl -N` binary for item 52), which see exactly the bytes a Node client sees.

Tool calling (items 33, 47, 48, 69) and `response_format` json_schema (item 71) work through the
legacy prompt format (`proxy.translate.tools`, `proxy.translate.structured`; in depth in test_tools.py).

Deliberate deviations of this proxy, asserted as such:
- log probabilities (items 29, 30) are rejected with a 400 `unsupported_parameter` envelope: the legacy
  upstream has no equivalent;
- token-array prompts (item 23) get the same 400: OpenAI token ids mean nothing to the upstream.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import secrets
import shutil
import socket
import subprocess
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GOOD_UPSTREAM_KEY, StartProxy
from tests.support.redis import RedisServer
from tests.support.servers import Server, mock_requests, mock_stats
from tests.support.upstream import UPSTREAM_FIELDS, marker

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODEL = "gpt-4"  # a default alias of claude-2.1
UPSTREAM_MODEL = "claude-2.1"
CLIENT_KEY = "client-key"
ENVELOPE_KEYS = {"message", "type", "param", "code"}
JSON_PARSE_PREFIX = "We could not parse the JSON body of your request."
DONE = b"data: [DONE]\n\n"
#: Keys the upstream `/v1/complete` body may carry (anything else would be a leak of an OpenAI field).
#: What an SDK sends besides the body (reference §5.5), plus the optional ones of item 6.
SDK_HEADERS = {
    "Accept": "application/json",
    "User-Agent": "OpenAI/Python 3.54.0",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "3.54.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.9",
    "X-Stainless-Async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "X-Stainless-Timeout": "600",
    "OpenAI-Organization": "org-conformance",
    "OpenAI-Project": "proj_conformance",
    "Idempotency-Key": "stainless-python-retry-7f0c1e",
}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def chat_body(text: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **fields}


def completion_body(prompt: Any = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **fields}


def body_for(path: str, text: str = "hello", **fields: Any) -> dict[str, Any]:
    return chat_body(text, **fields) if path == CHAT else completion_body(text, **fields)


def upstream_bodies(mock: Server, mark: str) -> list[dict[str, Any]]:
    """The bodies the mock upstream received whose prompt contains `mark`, oldest first."""
    return [r["body"] for r in mock_requests(mock) if mark in str(r["raw"])]  # type: ignore[misc]


def assert_error(
    response: httpx.Response,
    status: int,
    type: str | None = None,
    code: Any = ...,
    param: Any = ...,
) -> dict[str, Any]:
    """Item 58 on any error: status, JSON content type and all four envelope keys; then the given values."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    payload = response.json()
    assert list(payload) == ["error"], payload
    error: dict[str, Any] = payload["error"]
    assert set(error) == ENVELOPE_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert "x-request-id" in response.headers
    if type is not None:
        assert error["type"] == type, error
    if code is not ...:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    return error


def split_events(raw: bytes) -> list[bytes]:
    """The events of a proxy SSE body; every event, the last one included, ends with a blank line."""
    assert raw.endswith(b"\n\n"), raw[-120:]
    assert b"\r" not in raw
    return raw[:-2].split(b"\n\n")


def stream_payloads(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a stream in order (keep-alive comments and `[DONE]` left out).

    Checks items 38–41 on the way: single-line `data: <json>` events or `:` comments, a JSON object in
    every data event, and exactly one `data: [DONE]` at the very end.
    """
    events = split_events(raw)
    assert events[-1] == b"data: [DONE]", events[-1]
    payloads = []
    for event in events[:-1]:
        assert b"\n" not in event, event
        if event.startswith(b":"):
            continue
        assert event.startswith(b"data: "), event
        payload = json.loads(event[len(b"data: ") :])
        assert isinstance(payload, dict), event
        payloads.append(payload)
    return payloads


def chat_text(payloads: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for p in payloads
        for choice in p.get("choices", [])
        if choice["index"] == index
    )


def assert_sse(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == "text/event-stream"


def assert_json_200(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    payload: dict[str, Any] = response.json()
    return payload


def sdk(server: Server, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=options.pop("api_key", CLIENT_KEY), max_retries=0, **options
    )


# --------------------------------------------------------------------------------------------------
# Routing, HTTP and auth (1–10)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, chat_body()),
        ("POST", COMPLETIONS, completion_body()),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
    ],
)
def test_c01_endpoints_exist(
    http: httpx.Client, proxy: Server, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = http.request(method, proxy.base_url + path, json=body)
    assert_json_200(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("POST", "/v1/chat/completion"),
        ("GET", "/v1/responses/resp_1/bogus"),
        ("GET", "/"),
        ("GET", "/v2/models"),
    ],
)
def test_c02_unknown_path(http: httpx.Client, proxy: Server, method: str, path: str) -> None:
    response = http.request(method, proxy.base_url + path, json={})
    error = assert_error(response, 404, "invalid_request_error", "unknown_url", None)
    assert error["message"].startswith(f"Unknown request URL: {method} {path}.")


def test_c03_model_ids_with_colon_and_slash(start_proxy: StartProxy) -> None:
    config = {"models": {"served": ["org/model-2", "ft:claude:x"], "aliases": {}}}
    with start_proxy(config=config) as server, httpx.Client(base_url=server.base_url) as http:
        for path, expected in [
            ("/v1/models/org/model-2", "org/model-2"),
            ("/v1/models/org%2Fmodel-2", "org/model-2"),
            ("/v1/models/org%2fmodel-2", "org/model-2"),
            ("/v1/models/ft:claude:x", "ft:claude:x"),
            ("/v1/models/ft%3Aclaude%3Ax", "ft:claude:x"),
        ]:
            card = assert_json_200(http.get(path))
            assert card["id"] == expected, path
            assert card["object"] == "model"
        listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert listed == ["org/model-2", "ft:claude:x"]
        assert_error(http.get("/v1/models/org%2Fother"), 404, "invalid_request_error", "model_not_found")
        # openai-python >= 2.30 percent-encodes `/` in the path (reference §5.6).
        with sdk(server) as client:
            assert client.models.retrieve("org/model-2").id == "org/model-2"
            assert client.models.retrieve("ft:claude:x").id == "ft:claude:x"


def test_c04_missing_authorization(http: httpx.Client, passthrough_proxy: Server, keyed_mock: Server) -> None:
    # The server-key `proxy` serves every client with its own key (there is no client key to check), so
    # "missing key" is a pass-through-mode matter: there the client's Bearer token is the upstream key.
    mark = marker()
    for path in (CHAT, COMPLETIONS):
        response = httpx.post(passthrough_proxy.base_url + path, json=body_for(path, mark), timeout=30)
        error = assert_error(response, 401, "invalid_request_error")
        assert "API key" in error["message"]
    assert upstream_bodies(keyed_mock, mark) == []  # refused before any upstream call
    with sdk(passthrough_proxy, api_key=GOOD_UPSTREAM_KEY) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"Authorization": openai.Omit()},
            )
        assert caught.value.status_code == 401
        assert caught.value.type == "invalid_request_error"
        # With the header present the same client succeeds.
        assert client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        ).choices


def test_c05_wrong_key(passthrough_proxy: Server) -> None:
    wrong = "sk-ant-wrong-key-0123456789abcdef"
    response = httpx.post(
        passthrough_proxy.base_url + CHAT,
        json=chat_body(),
        headers={"Authorization": f"Bearer {wrong}"},
        timeout=30,
    )
    error = assert_error(response, 401, "invalid_request_error", "invalid_api_key")
    assert wrong not in error["message"]  # never echo a full key back
    with sdk(passthrough_proxy, api_key=wrong) as client, pytest.raises(openai.AuthenticationError) as caught:
        client.completions.create(model=MODEL, prompt="hi")
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, chat_body()),
        ("POST", CHAT, chat_body(stream=True)),
        ("POST", COMPLETIONS, completion_body()),
        ("POST", COMPLETIONS, completion_body(stream=True)),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
    ],
)
def test_c06_sdk_headers_accepted(
    http: httpx.Client, proxy: Server, mock_upstream: Server, method: str, path: str, body: Any
) -> None:
    mark = marker()
    if body is not None:
        body = (
            {**body, "messages": [{"role": "user", "content": mark}]}
            if path == CHAT
            else {**body, "prompt": mark}
        )
    response = http.request(method, proxy.base_url + path, json=body, headers=SDK_HEADERS)
    assert response.status_code == 200, response.text
    if body is not None:
        upstream_headers = [r["headers"] for r in mock_requests(mock_upstream) if mark in str(r["raw"])]
        assert len(upstream_headers) == 1
        leaked = {name for name in upstream_headers[0] if name.startswith(("x-stainless", "openai-"))}
        assert not leaked and "authorization" not in upstream_headers[0]
        assert "idempotency-key" not in upstream_headers[0]


def test_c06_sdk_with_organization_and_project(proxy: Server) -> None:
    with sdk(proxy, organization="org-conformance", project="proj_conformance") as client:
        assert client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        ).choices


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_c07_body_decides_stream(http: httpx.Client, proxy: Server, path: str) -> None:
    streamed = http.post(
        proxy.base_url + path, json=body_for(path, stream=True), headers={"Accept": "application/json"}
    )
    assert_sse(streamed)
    assert streamed.content.endswith(DONE)
    plain = http.post(proxy.base_url + path, json=body_for(path), headers={"Accept": "text/event-stream"})
    assert_json_200(plain)


def test_c08_request_id_everywhere(http: httpx.Client, proxy: Server, client: openai.OpenAI) -> None:
    responses = [
        http.post(proxy.base_url + CHAT, json=chat_body()),
        http.post(proxy.base_url + CHAT, json=chat_body(stream=True)),
        http.post(proxy.base_url + COMPLETIONS, json=completion_body(stream=True)),
        http.post(proxy.base_url + CHAT, json=chat_body(model="no-such-model")),
        http.post(proxy.base_url + CHAT, content=b"{not json"),
        http.post(proxy.base_url + CHAT, json=chat_body("[[mock:status=400]]")),
        http.get(proxy.base_url + "/v1/unknown"),
        http.get(proxy.base_url + "/v1/models"),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), [(r.status_code, r.headers) for r in responses]
    assert len(set(ids)) == len(ids)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.request_id
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="hi", temperature=5)
    assert bad.value.request_id
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert completion._request_id


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, chat_body()),
        ("POST", CHAT, chat_body(stream=False)),
        ("POST", COMPLETIONS, completion_body()),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
    ],
)
def test_c09_json_content_type(http: httpx.Client, proxy: Server, method: str, path: str, body: Any) -> None:
    response = http.request(method, proxy.base_url + path, json=body)
    assert_json_200(response)
    json.loads(response.content)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", ["absent", False, None, True])
def test_c10_sse_only_when_stream_true(http: httpx.Client, proxy: Server, path: str, stream: Any) -> None:
    body = body_for(path) if stream == "absent" else body_for(path, stream=stream)
    response = http.post(proxy.base_url + path, json=body)
    if stream is True:
        assert_sse(response)
        assert stream_payloads(response.content)
    else:
        payload = assert_json_200(response)
        assert not response.content.startswith(b"data:")
        assert payload["choices"]


# --------------------------------------------------------------------------------------------------
# Request validation (11–27)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b'{"model": "gpt-4",}', b"\xff\xfe", b'{"model": "gpt-4"']
)
def test_c11_malformed_json(http: httpx.Client, proxy: Server, path: str, raw: bytes) -> None:
    response = http.post(proxy.base_url + path, content=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "invalid_request_error", None, None)
    assert error["message"].startswith(JSON_PARSE_PREFIX)
    assert response.json() == {
        "error": {"message": error["message"], "type": "invalid_request_error", "param": None, "code": None}
    }


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_c12_missing_model(http: httpx.Client, proxy: Server, path: str) -> None:
    body = body_for(path)
    del body["model"]
    error = assert_error(http.post(proxy.base_url + path, json=body), 400, "invalid_request_error")
    assert error["message"] == "you must provide a model parameter"


def test_c13_missing_messages(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + CHAT, json={"model": MODEL})
    error = assert_error(response, 400, "invalid_request_error", "missing_required_parameter", "messages")
    assert error["message"] == "Missing required parameter: 'messages'."


def test_c14_empty_messages(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + CHAT, json={"model": MODEL, "messages": []})
    error = assert_error(response, 400, "invalid_request_error", "empty_array", "messages")
    assert error["message"] == (
        "Invalid 'messages': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead."
    )


def test_c15_missing_prompt(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + COMPLETIONS, json={"model": MODEL})
    assert_error(response, 400, "invalid_request_error", "missing_required_parameter", "prompt")


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"temperature": "hot"}, "temperature"),
        (CHAT, {"messages": "hi"}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (CHAT, {"n": "2"}, "n"),
        (CHAT, {"stream": "yes"}, "stream"),
        (CHAT, {"max_tokens": 1.5}, "max_tokens"),
        (CHAT, {"stop": 5}, "stop"),
        (CHAT, {"model": 4}, "model"),
        (COMPLETIONS, {"prompt": 5}, "prompt"),
        (COMPLETIONS, {"max_tokens": "16"}, "max_tokens"),
        (COMPLETIONS, {"top_p": "1"}, "top_p"),
    ],
)
def test_c16_wrong_types(
    http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any], param: str
) -> None:
    response = http.post(proxy.base_url + path, json={**body_for(path), **fields})
    error = assert_error(response, 400, "invalid_request_error", "invalid_type", param)
    assert error["message"].startswith(f"Invalid type for '{param}': expected ")


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        (CHAT, "temperature", 2.5),
        (CHAT, "temperature", -0.1),
        (COMPLETIONS, "temperature", 3),
        (CHAT, "top_p", 1.5),
        (CHAT, "top_p", -0.5),
        (CHAT, "frequency_penalty", 2.5),
        (CHAT, "presence_penalty", -3),
        (COMPLETIONS, "frequency_penalty", -2.5),
        (CHAT, "n", 0),
        (CHAT, "n", 129),
        (COMPLETIONS, "n", 200),
        (COMPLETIONS, "logprobs", 6),
        (COMPLETIONS, "logprobs", -1),
        (CHAT, "top_logprobs", 21),
        (CHAT, "top_logprobs", -1),
        (COMPLETIONS, "best_of", 21),
        (COMPLETIONS, "best_of", -1),
    ],
)
def test_c17_out_of_range(http: httpx.Client, proxy: Server, path: str, field: str, value: float) -> None:
    response = http.post(proxy.base_url + path, json=body_for(path, **{field: value}))
    error = assert_error(response, 400, "invalid_request_error", param=field)
    assert error["code"] in {
        "integer_above_max_value",
        "integer_below_min_value",
        "decimal_above_max_value",
        "decimal_below_min_value",
    }
    assert error["message"].startswith(f"Invalid '{field}': ")


@pytest.mark.parametrize(
    ("stop", "sequences"),
    [("END", ["END"]), (["a1"], ["a1"]), (["a1", "b2", "c3", "d4"], ["a1", "b2", "c3", "d4"])],
)
def test_c18_stop_accepted(
    http: httpx.Client, proxy: Server, mock_upstream: Server, stop: Any, sequences: list[str]
) -> None:
    mark = marker()
    for path in (CHAT, COMPLETIONS):
        assert_json_200(http.post(proxy.base_url + path, json=body_for(path, mark, stop=stop)))
    bodies = upstream_bodies(mock_upstream, mark)
    assert [b["stop_sequences"] for b in bodies] == [sequences, sequences]


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], []])
def test_c18_stop_too_many(http: httpx.Client, proxy: Server, stop: list[str]) -> None:
    for path in (CHAT, COMPLETIONS):
        response = http.post(proxy.base_url + path, json=body_for(path, stop=stop))
        assert_error(response, 400, "invalid_request_error", param="stop")


CHAT_NULLABLE = [
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "seed",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "safety_identifier",
    "prompt_cache_key",
    "store",
    "metadata",
    "service_tier",
    "reasoning_effort",
    "verbosity",
]
COMPLETION_NULLABLE = [
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "seed",
    "logprobs",
    "echo",
    "suffix",
    "best_of",
]


@pytest.mark.parametrize(("path", "fields"), [(CHAT, CHAT_NULLABLE), (COMPLETIONS, COMPLETION_NULLABLE)])
def test_c19_explicit_nulls_act_as_omitted(
    http: httpx.Client, proxy: Server, mock_upstream: Server, path: str, fields: list[str]
) -> None:
    mark = marker()
    plain = assert_json_200(http.post(proxy.base_url + path, json=body_for(path, mark)))
    nulls = dict.fromkeys(fields)
    if path == CHAT:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": mark, "name": None, "tool_calls": None}],
            **nulls,
        }
    else:
        body = completion_body(mark, **nulls)
    with_nulls = assert_json_200(http.post(proxy.base_url + path, json=body))
    first, second = upstream_bodies(mock_upstream, mark)
    assert first == second
    assert plain["choices"] == with_nulls["choices"]
    assert plain["usage"] == with_nulls["usage"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {}),
        (CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
        (CHAT, {"model": MODEL, "messages": [{"content": "hi"}]}),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "x"}),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}),
        (COMPLETIONS, {"model": MODEL}),
        (COMPLETIONS, {"model": MODEL, "prompt": None}),
        (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": -1}),
        (COMPLETIONS, [1, 2]),
        (COMPLETIONS, "just a string"),
    ],
)
def test_c20_never_422_detail(http: httpx.Client, proxy: Server, path: str, body: Any) -> None:
    response = http.post(proxy.base_url + path, json=body)
    assert_error(response, 400, "invalid_request_error")
    assert "detail" not in response.json()


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", [False, True])
def test_c21_unknown_model(
    http: httpx.Client, proxy: Server, mock_upstream: Server, path: str, stream: bool
) -> None:
    mark = marker()
    response = http.post(
        proxy.base_url + path, json=body_for(path, mark, model="gpt-99-turbo", stream=stream)
    )
    error = assert_error(response, 404, "invalid_request_error", "model_not_found", None)
    assert error["message"] == "The model `gpt-99-turbo` does not exist or you do not have access to it."
    assert upstream_bodies(mock_upstream, mark) == []


def test_c21_unknown_model_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-99-turbo", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-99-turbo", prompt="hi")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_completion_tokens": 5}, 5),
        ({"max_tokens": 6}, 6),
        ({"max_completion_tokens": 5, "max_tokens": 6}, 5),
    ],
)
def test_c22_max_completion_tokens_and_max_tokens(
    http: httpx.Client, proxy: Server, mock_upstream: Server, fields: dict[str, int], expected: int
) -> None:
    mark = marker()
    response = http.post(proxy.base_url + CHAT, json=chat_body(f"{mark} [[mock:tokens=40]]", **fields))
    payload = assert_json_200(response)
    assert payload["choices"][0]["finish_reason"] == "length"
    (body,) = upstream_bodies(mock_upstream, mark)
    assert body["max_tokens_to_sample"] == expected


def test_c23_prompt_string_and_string_array(http: httpx.Client, proxy: Server) -> None:
    single = assert_json_200(http.post(proxy.base_url + COMPLETIONS, json=completion_body("solo words")))
    assert len(single["choices"]) == 1 and "solo words" in single["choices"][0]["text"]
    prompts = ["alpha one", "beta two", "gamma three"]
    many = assert_json_200(http.post(proxy.base_url + COMPLETIONS, json=completion_body(prompts, n=2)))
    choices = many["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    for choice in choices:
        # prompt-major: index = p * n + j
        assert prompts[choice["index"] // 2] in choice["text"], choices


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]]])
def test_c23_token_array_prompts_rejected_by_policy(http: httpx.Client, proxy: Server, prompt: Any) -> None:
    # Documented deviation: OpenAI token ids cannot be turned into text for the upstream.
    response = http.post(proxy.base_url + COMPLETIONS, json=completion_body(prompt))
    assert_error(response, 400, "invalid_request_error", "unsupported_parameter", "prompt")


EXTRA_FIELDS: dict[str, Any] = {
    "store": True,
    "metadata": {"team": "conformance"},
    "service_tier": "flex",
    "user": "user-1234",
    "safety_identifier": "safety-1",
    "prompt_cache_key": "cache-1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "auto"},
    "parallel_tool_calls": False,
    "reasoning_effort": "low",
    "verbosity": "low",
    "seed": 42,
    "logit_bias": {"50256": -100},
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "moderation": {"enabled": False},
    "stream_options": None,
    "totally_unknown_field": {"nested": [1, 2]},
    "top_k": 5,
}


@pytest.mark.parametrize(("field", "value"), list(EXTRA_FIELDS.items()))
def test_c24_extra_fields_never_5xx(
    http: httpx.Client, proxy: Server, mock_upstream: Server, field: str, value: Any
) -> None:
    mark = marker()
    response = http.post(proxy.base_url + CHAT, json=chat_body(mark, **{field: value}))
    assert response.status_code < 500, response.text
    # Default policy (`generation.unsupported_params: drop`): accepted, and never sent upstream as is.
    assert_json_200(response)
    (body,) = upstream_bodies(mock_upstream, mark)
    assert set(body) <= UPSTREAM_FIELDS, body
    assert body.get("metadata") in (None, {"user_id": "user-1234"}, {"user_id": "safety-1"})


def test_c24_extra_fields_all_at_once(http: httpx.Client, proxy: Server) -> None:
    for path in (CHAT, COMPLETIONS):
        response = http.post(proxy.base_url + path, json=body_for(path, **EXTRA_FIELDS))
        assert_json_200(response)


def test_c25_tool_history_and_text_parts(http: httpx.Client, proxy: Server, mock_upstream: Server) -> None:
    mark = marker()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "weather?"}, {"type": "text", "text": "Paris"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "user", "content": f"{mark} thanks"},
    ]
    response = http.post(proxy.base_url + CHAT, json={"model": MODEL, "messages": messages})
    assert_json_200(response)
    (body,) = upstream_bodies(mock_upstream, mark)
    for text in ("Be brief.", "weather?", "Paris", "get_weather", "<function_results>", "sunny", mark):
        assert text in body["prompt"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", ["absent", False])
def test_c26_stream_options_without_stream(http: httpx.Client, proxy: Server, path: str, stream: Any) -> None:
    fields: dict[str, Any] = {"stream_options": {"include_usage": True}}
    if stream != "absent":
        fields["stream"] = stream
    response = http.post(proxy.base_url + path, json=body_for(path, **fields))
    error = assert_error(response, 400, "invalid_request_error", param="stream_options")
    assert error["message"] == "The 'stream_options' parameter is only allowed when 'stream' is enabled."


def test_c27_best_of_with_stream(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + COMPLETIONS, json=completion_body(best_of=2, stream=True))
    assert_error(response, 400, "invalid_request_error", param="best_of")


# --------------------------------------------------------------------------------------------------
# Non-stream responses (28–36)
# --------------------------------------------------------------------------------------------------


def test_c28_chat_response_top_level(http: httpx.Client, proxy: Server) -> None:
    payload = assert_json_200(http.post(proxy.base_url + CHAT, json=chat_body()))
    assert payload["id"].startswith("chatcmpl-")
    assert payload["object"] == "chat.completion"
    assert type(payload["created"]) is int and 1_600_000_000 < payload["created"] < 10_000_000_000
    assert isinstance(payload["model"], str) and payload["model"]
    assert payload["choices"]


@pytest.mark.parametrize(
    ("text", "fields", "finish"), [("hi", {}, "stop"), ("[[mock:tokens=30]]", {"max_tokens": 3}, "length")]
)
def test_c29_chat_choice(
    http: httpx.Client, proxy: Server, text: str, fields: dict[str, Any], finish: str
) -> None:
    payload = assert_json_200(http.post(proxy.base_url + CHAT, json=chat_body(text, **fields)))
    (choice,) = payload["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert "refusal" in choice["message"] and choice["message"]["refusal"] is None
    assert "logprobs" in choice and choice["logprobs"] is None
    assert choice["finish_reason"] == finish


@pytest.mark.parametrize(
    ("text", "fields", "finish"), [("hi", {}, "stop"), ("[[mock:tokens=30]]", {"max_tokens": 3}, "length")]
)
def test_c30_completion_response(
    http: httpx.Client, proxy: Server, text: str, fields: dict[str, Any], finish: str
) -> None:
    payload = assert_json_200(http.post(proxy.base_url + COMPLETIONS, json=completion_body(text, **fields)))
    assert payload["id"].startswith("cmpl-")
    assert payload["object"] == "text_completion"
    assert type(payload["created"]) is int
    assert isinstance(payload["model"], str)
    (choice,) = payload["choices"]
    assert set(choice) >= {"text", "index", "logprobs", "finish_reason"}
    assert isinstance(choice["text"], str) and choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == finish


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body()),
        (CHAT, chat_body(n=2)),
        (COMPLETIONS, completion_body()),
        (COMPLETIONS, completion_body(["a", "b"], n=2)),
        (COMPLETIONS, completion_body("hi", echo=True)),
    ],
)
def test_c31_usage_always_present(http: httpx.Client, proxy: Server, path: str, body: dict[str, Any]) -> None:
    usage = assert_json_200(http.post(proxy.base_url + path, json=body))["usage"]
    assert all(type(usage[k]) is int for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


def test_c31_langchain_openai_invoke(proxy: Server) -> None:
    from langchain_openai import OpenAI

    llm = OpenAI(
        model="gpt-3.5-turbo-instruct", base_url=f"{proxy.base_url}/v1", api_key=CLIENT_KEY, max_retries=0
    )
    assert "You said: hi" in llm.invoke("hi")


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("n", [1, 3])
def test_c32_n_choices(http: httpx.Client, proxy: Server, path: str, n: int) -> None:
    payload = assert_json_200(http.post(proxy.base_url + path, json=body_for(path, n=n)))
    assert [c["index"] for c in payload["choices"]] == list(range(n))


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


SCRIPTED_CALL = '[[mock:script=[{"calls": [{"name": "get_weather", "arguments": {}}]}] ]]'


def test_c33_tool_call_shape(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + CHAT, json=chat_body("weather? " + SCRIPTED_CALL, tools=TOOLS))
    choice = assert_json_200(response)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].function"),
    ],
)
def test_c33_bad_tool_requests_are_400(
    http: httpx.Client, proxy: Server, fields: dict[str, Any], param: str
) -> None:
    response = http.post(proxy.base_url + CHAT, json=chat_body(**fields))
    assert_error(response, 400, "invalid_request_error", param=param)


def test_c34_no_error_key_in_200(http: httpx.Client, proxy: Server) -> None:
    responses = [
        http.post(proxy.base_url + CHAT, json=chat_body()),
        http.post(proxy.base_url + CHAT, json=chat_body(n=2)),
        http.post(proxy.base_url + COMPLETIONS, json=completion_body(["a", "b"])),
        http.get(proxy.base_url + "/v1/models"),
        http.get(proxy.base_url + f"/v1/models/{MODEL}"),
    ]
    for response in responses:
        assert not assert_json_200(response).get("error")


def test_c35_models_listing(http: httpx.Client, proxy: Server, mock_upstream: Server) -> None:
    listing = assert_json_200(http.get(proxy.base_url + "/v1/models"))
    assert listing["object"] == "list"
    assert listing["data"]
    ids = []
    for card in listing["data"]:
        assert card["object"] == "model"
        assert isinstance(card["id"], str) and card["id"]
        assert type(card["created"]) is int
        assert isinstance(card["owned_by"], str)
        ids.append(card["id"])
    assert len(ids) == len(set(ids))
    # Every listed id is accepted by the proxy: no model_not_found, and the request reaches the upstream.
    mark = marker()
    for model in ids:
        for path in (CHAT, COMPLETIONS):
            response = http.post(proxy.base_url + path, json=body_for(path, mark, model=model))
            assert response.status_code != 404, (model, response.text)
    assert len(upstream_bodies(mock_upstream, mark)) == 2 * len(ids)
    with sdk(proxy) as client:
        assert [m.id for m in client.models.list()] == ids


#: The legacy /v1/complete serves Claude 2 and Instant 1; newer ids (listed by default because the
#: upstream's API reference names them) are refused by the upstream itself, with this explicit message.
MESSAGES_API_ONLY = "is not supported on this API. Please use the Messages API instead."


def test_c35_every_listed_model_is_accepted_by_the_proxy(
    http: httpx.Client, proxy: Server, mock_upstream: Server
) -> None:
    """No listed id is refused by the proxy (no model_not_found): each one reaches the upstream, which
    answers the legacy models and refuses Messages-only models with its own clear 400, passed on verbatim."""
    ids = [card["id"] for card in http.get(proxy.base_url + "/v1/models").json()["data"]]
    legacy = {"claude-2.1", "claude-2.0", "claude-instant-1.2"}
    for model in ids:
        mark = f"c35-{secrets.token_hex(4)}"
        response = http.post(proxy.base_url + CHAT, json=chat_body(mark, model=model))
        forwarded = upstream_bodies(mock_upstream, mark)
        assert len(forwarded) == 1, model  # the proxy accepted the id and forwarded it
        resolved = forwarded[0]["model"]
        if resolved in legacy:
            assert response.status_code == 200, (model, response.text)
        else:
            assert_error(response, 400, "invalid_request_error", None)
            assert response.json()["error"]["message"] == f'"{resolved}" {MESSAGES_API_ONLY}'


@pytest.mark.parametrize("model", ["gpt-99", "claude-9", "org%2Fnope", "a:b:c"])
def test_c36_retrieve_unknown_model(http: httpx.Client, proxy: Server, model: str) -> None:
    response = http.get(f"{proxy.base_url}/v1/models/{model}")
    assert_error(response, 404, "invalid_request_error", "model_not_found")


# --------------------------------------------------------------------------------------------------
# Stream framing (37–53)
# --------------------------------------------------------------------------------------------------

STREAM_CASES = [
    (CHAT, {}),
    (CHAT, {"n": 2, "stream_options": {"include_usage": True}}),
    (COMPLETIONS, {}),
    (COMPLETIONS, {"n": 2, "echo": True, "stream_options": {"include_usage": True}}),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_c37_stream_headers(http: httpx.Client, proxy: Server, path: str) -> None:
    response = http.post(
        proxy.base_url + path, json=body_for(path, stream=True), headers={"Accept-Encoding": "gzip, br"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "text/event-stream"
    assert "content-length" not in response.headers
    assert response.headers["cache-control"] == "no-cache"
    assert "content-encoding" not in response.headers


@pytest.mark.parametrize(("path", "fields"), STREAM_CASES)
def test_c38_single_line_data_events(
    http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any]
) -> None:
    raw = http.post(proxy.base_url + path, json=body_for(path, stream=True, **fields)).content
    for event in split_events(raw):
        if event.startswith(b":"):
            continue
        assert event.startswith(b"data: ")
        assert b"\n" not in event  # one line per event, the JSON on it
    assert raw.endswith(b"\n\n")


@pytest.mark.parametrize(("path", "fields"), STREAM_CASES)
def test_c39_no_event_id_retry_lines(
    http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any]
) -> None:
    # The mock pings after its 2nd token, so these streams carry keep-alives too.
    raw = http.post(proxy.base_url + path, json=body_for(path, stream=True, **fields)).content
    lines = [line for line in raw.split(b"\n") if line]
    assert not [line for line in lines if line.startswith((b"event:", b"id:", b"retry:"))]
    comments = [line for line in lines if line.startswith(b":")]
    assert comments, "expected the upstream's pings to come through as comments"
    assert all(line == b": ping" for line in comments)
    assert all(line.startswith((b"data: ", b":")) for line in lines)


@pytest.mark.parametrize(("path", "fields"), STREAM_CASES)
def test_c40_every_data_is_json(http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any]) -> None:
    raw = http.post(proxy.base_url + path, json=body_for(path, stream=True, **fields)).content
    for event in split_events(raw):
        if event.startswith(b":"):
            continue
        data = event[len(b"data: ") :]
        assert data.strip(), event
        if data != b"[DONE]":
            assert isinstance(json.loads(data), dict)


@pytest.mark.parametrize(("path", "fields"), STREAM_CASES)
def test_c41_ends_with_done_then_eof(
    http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any]
) -> None:
    url = proxy.base_url + path
    with http.stream("POST", url, json=body_for(path, stream=True, **fields)) as response:
        raw = b"".join(response.iter_raw())  # returns only at EOF: the server ended the body
    assert raw.endswith(DONE)
    assert raw.count(b"[DONE]") == 1
    assert raw.split(b"data: [DONE]")[1] == b"\n\n"  # nothing after the sentinel's blank line


@pytest.mark.parametrize(("path", "fields"), STREAM_CASES)
def test_c42_chunks_share_id_created_model(
    http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any]
) -> None:
    payloads = stream_payloads(
        http.post(proxy.base_url + path, json=body_for(path, stream=True, **fields)).content
    )
    assert len({(p["id"], p["created"], p["model"]) for p in payloads}) == 1
    expected = "chat.completion.chunk" if path == CHAT else "text_completion"
    assert {p["object"] for p in payloads} == {expected}
    prefix = "chatcmpl-" if path == CHAT else "cmpl-"
    assert payloads[0]["id"].startswith(prefix)


@pytest.mark.parametrize("n", [1, 2])
def test_c43_role_once_per_choice(http: httpx.Client, proxy: Server, n: int) -> None:
    payloads = stream_payloads(http.post(proxy.base_url + CHAT, json=chat_body(stream=True, n=n)).content)
    for index in range(n):
        deltas = [c["delta"] for p in payloads for c in p["choices"] if c["index"] == index]
        first, *rest = deltas
        assert first["role"] == "assistant" and first["content"] == ""
        assert not [d for d in rest if "role" in d]


def test_c43_sdk_stream_helper_role(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "Hello! I am the mock upstream. You said: hi"
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("text", ["hi there", "[[mock:tokens=25]]"])
def test_c44_content_deltas_equal_message(http: httpx.Client, proxy: Server, text: str) -> None:
    payloads = stream_payloads(http.post(proxy.base_url + CHAT, json=chat_body(text, stream=True)).content)
    content_deltas = [c["delta"] for p in payloads for c in p["choices"] if c["delta"].get("content")]
    assert content_deltas and all(set(d) == {"content"} for d in content_deltas)
    whole = assert_json_200(http.post(proxy.base_url + CHAT, json=chat_body(text)))
    assert chat_text(payloads) == whole["choices"][0]["message"]["content"]


@pytest.mark.parametrize("n", [1, 3])
def test_c45_one_finish_chunk_per_choice(http: httpx.Client, proxy: Server, n: int) -> None:
    body = chat_body("[[mock:tokens=6]]", stream=True, n=n, max_tokens=4)
    payloads = stream_payloads(http.post(proxy.base_url + CHAT, json=body).content)
    for index in range(n):
        choices = [c for p in payloads for c in p["choices"] if c["index"] == index]
        finished = [i for i, c in enumerate(choices) if c["finish_reason"] is not None]
        assert finished == [len(choices) - 1], choices  # exactly one, and it is the last for this choice
        assert choices[-1]["delta"] == {}
        assert choices[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("n", [1, 2])
def test_c46_every_choice_has_index_and_delta(http: httpx.Client, proxy: Server, n: int) -> None:
    body = chat_body(stream=True, n=n, stream_options={"include_usage": True})
    payloads = stream_payloads(http.post(proxy.base_url + CHAT, json=body).content)
    for payload in payloads:
        for choice in payload["choices"]:
            assert "index" in choice and "delta" in choice and "finish_reason" in choice


@pytest.mark.parametrize(
    "fields",
    [{"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": True}],
)
def test_c47_c48_tool_call_streaming(http: httpx.Client, proxy: Server, fields: dict[str, Any]) -> None:
    response = http.post(proxy.base_url + CHAT, json=chat_body("w " + SCRIPTED_CALL, stream=True, **fields))
    assert_sse(response)
    payloads = stream_payloads(response.content)
    calls = [t for p in payloads if p["choices"] for t in p["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == "{}"


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("n", [1, 2])
def test_c49_include_usage_chunk(http: httpx.Client, proxy: Server, path: str, n: int) -> None:
    body = body_for(path, stream=True, n=n, stream_options={"include_usage": True})
    payloads = stream_payloads(http.post(proxy.base_url + path, json=body).content)
    *chunks, last = payloads
    assert last["choices"] == []
    usage = last["usage"]
    assert all(type(usage[k]) is int for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all("usage" in c and c["usage"] is None for c in chunks)
    assert all(c["choices"] for c in chunks)
    finishes = [c for p in chunks for c in p["choices"] if c["finish_reason"] is not None]
    assert len(finishes) == n


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_c50_usage_not_repeated_and_equal_to_non_stream(http: httpx.Client, proxy: Server, path: str) -> None:
    plain = stream_payloads(
        http.post(proxy.base_url + path, json=body_for(path, "count me", stream=True)).content
    )
    assert not [p for p in plain if p.get("usage")]
    body = body_for(path, "count me", stream=True, stream_options={"include_usage": True})
    with_usage = stream_payloads(http.post(proxy.base_url + path, json=body).content)
    usages = [p["usage"] for p in with_usage if p.get("usage")]
    whole = assert_json_200(http.post(proxy.base_url + path, json=body_for(path, "count me")))
    assert usages == [whole["usage"]]


@pytest.mark.parametrize("include_usage", [False, True])
def test_c51_legacy_completion_stream(http: httpx.Client, proxy: Server, include_usage: bool) -> None:
    fields: dict[str, Any] = {"stream": True}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    raw = http.post(proxy.base_url + COMPLETIONS, json=completion_body("legacy", **fields)).content
    payloads = stream_payloads(raw)
    if include_usage:
        usage_chunk = payloads.pop()
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0
    for payload in payloads:
        assert payload["object"] == "text_completion"
        (choice,) = payload["choices"]
        assert set(choice) >= {"text", "index", "logprobs", "finish_reason"}
        assert choice["index"] == 0 and choice["logprobs"] is None and isinstance(choice["text"], str)
    finishes = [p["choices"][0]["finish_reason"] for p in payloads]
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert finishes[-1] == "stop"
    text = "".join(p["choices"][0]["text"] for p in payloads)
    whole = assert_json_200(http.post(proxy.base_url + COMPLETIONS, json=completion_body("legacy")))
    assert text == whole["choices"][0]["text"]


def test_c52_clients_reconstruct_identical_text(
    http: httpx.Client, proxy: Server, client: openai.OpenAI
) -> None:
    # Node SDKs are not installed here: the Python SDK, raw HTTP (httpx), the real `curl -N` and
    # LangChain cover the same bytes a Node client would parse.
    text = "same text for every client"
    messages = [{"role": "user", "content": text}]
    expected = assert_json_200(http.post(proxy.base_url + CHAT, json=chat_body(text)))["choices"][0][
        "message"
    ]["content"]

    sdk_text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
        if chunk.choices
    )
    raw_text = chat_text(
        stream_payloads(http.post(proxy.base_url + CHAT, json=chat_body(text, stream=True)).content)
    )

    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=MODEL, base_url=f"{proxy.base_url}/v1", api_key=CLIENT_KEY, max_retries=0)  # type: ignore[arg-type]
    lc_text = "".join(str(chunk.content) for chunk in chat.stream(text))

    legacy_expected = client.completions.create(model=MODEL, prompt=text).choices[0].text
    legacy_sdk = "".join(
        chunk.choices[0].text for chunk in client.completions.create(model=MODEL, prompt=text, stream=True)
    )
    assert sdk_text == raw_text == lc_text == expected
    assert legacy_sdk == legacy_expected

    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (scripts/setup.sh test installs it)", pytrace=False)
    result = subprocess.run(
        [
            curl,
            "-sSN",
            "--max-time",
            "30",
            "-H",
            f"Authorization: Bearer {CLIENT_KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(chat_body(text, stream=True)),
            proxy.base_url + CHAT,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert chat_text(stream_payloads(result.stdout)) == expected


def test_c53_events_are_not_batched(http: httpx.Client, proxy: Server, mock_upstream: Server) -> None:
    # No timing: when the first token reaches the client, the upstream must still be generating.
    body = chat_body("[[mock:tokens=8]][[mock:token_delay_ms=150]]", stream=True)
    with http.stream("POST", proxy.base_url + CHAT, json=body) as response:
        assert_sse(response)
        pieces = response.iter_raw()
        received = b""
        for piece in pieces:
            received += piece
            if b'"content":"tok0"' in received:
                break
        assert mock_stats(mock_upstream)["active_streams"] >= 1
        assert b'"content":" tok7"' not in received
        received += b"".join(pieces)
    assert received.endswith(DONE)
    assert chat_text(stream_payloads(received)) == "".join(f" tok{i}" for i in range(8)).lstrip()


# --------------------------------------------------------------------------------------------------
# Errors in and around streams (54–57)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(
    ("text", "fields", "status", "code"),
    [
        ("hi", {"temperature": 9.5}, 400, "decimal_above_max_value"),
        ("hi", {"model": "gpt-99"}, 404, "model_not_found"),
        ("[[mock:status=400]][[mock:message=bad prompt]]", {}, 400, None),
        ("[[mock:status=429]][[mock:retry_after=30]]", {}, 429, "rate_limit_exceeded"),
        ("[[mock:status=500]]", {}, 500, None),
        ("[[mock:status=529]][[mock:retry_after=30]]", {}, 503, "overloaded"),
    ],
)
def test_c54_errors_before_first_token_are_http_errors(
    http: httpx.Client,
    proxy: Server,
    path: str,
    text: str,
    fields: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    response = http.post(proxy.base_url + path, json=body_for(path, text, stream=True, **fields))
    error = assert_error(response, status, code=code)
    assert not response.content.startswith(b"data:")
    assert error["message"]


def test_c54_auth_error_on_stream(passthrough_proxy: Server) -> None:
    response = httpx.post(passthrough_proxy.base_url + CHAT, json=chat_body(stream=True), timeout=30)
    assert_error(response, 401, "invalid_request_error")
    wrong = httpx.post(
        passthrough_proxy.base_url + CHAT,
        json=chat_body(stream=True),
        headers={"Authorization": "Bearer sk-ant-wrong"},
        timeout=30,
    )
    assert_error(wrong, 401, "invalid_request_error", "invalid_api_key")


def test_c54_sdk_raises_status_error_on_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "[[mock:status=429]][[mock:retry_after=30]]"}],
            stream=True,
        )


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_c55_failure_after_first_token(http: httpx.Client, proxy: Server, path: str) -> None:
    text = "[[mock:tokens=10]][[mock:stream_error_after=3]][[mock:message=upstream broke mid-way]]"
    raw = http.post(proxy.base_url + path, json=body_for(path, text, stream=True)).content
    events = split_events(raw)
    assert events[-1] == b"data: [DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")
    error_event = events[-2]
    assert error_event.startswith(b"data: ")
    payload = json.loads(error_event[len(b"data: ") :])
    assert list(payload) == ["error"]
    assert set(payload["error"]) == ENVELOPE_KEYS
    assert payload["error"]["message"] == "upstream broke mid-way"
    assert payload["error"]["type"] == "server_error"
    assert payload["error"]["param"] is None
    assert isinstance(payload["error"]["code"], str)
    normal = stream_payloads(raw)[:-1]
    assert normal and not [p for p in normal if p.get("error")]
    texts = chat_text(normal) if path == CHAT else "".join(p["choices"][0]["text"] for p in normal)
    assert texts == (" tok0 tok1 tok2" if path != CHAT else "tok0 tok1 tok2")  # chat drops the leading space


def test_c55_sdk_raises_api_error_mid_stream(client: openai.OpenAI) -> None:
    text = "[[mock:tokens=10]][[mock:stream_error_after=2]][[mock:message=upstream broke mid-way]]"
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], stream=True
        ):
            received.append(chunk)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.message == "upstream broke mid-way"
    assert caught.value.type == "server_error"
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "tok0 tok1"
    with pytest.raises(openai.APIError) as legacy:
        for _ in client.completions.create(model=MODEL, prompt=text, stream=True):
            pass
    assert legacy.value.message == "upstream broke mid-way"


@pytest.mark.parametrize(("path", "fields"), STREAM_CASES)
def test_c56_no_error_key_in_normal_chunks(
    http: httpx.Client, proxy: Server, path: str, fields: dict[str, Any]
) -> None:
    payloads = stream_payloads(
        http.post(proxy.base_url + path, json=body_for(path, stream=True, **fields)).content
    )
    assert payloads and not [p for p in payloads if p.get("error")]


def test_c57_disconnect_cancels_upstream(http: httpx.Client, proxy: Server, mock_upstream: Server) -> None:
    before = mock_stats(mock_upstream)["cancelled_streams"]
    body = chat_body("[[mock:tokens=200]][[mock:token_delay_ms=50]]", stream=True)
    with http.stream("POST", proxy.base_url + CHAT, json=body) as response:
        received = b""
        for piece in response.iter_raw():
            received += piece
            if b" tok1" in received:
                break
    # The client is gone; the proxy must close its upstream stream (the mock counts it as cancelled)
    # long before the 10 s the generation would take. Bounded wait, not a latency assertion.
    deadline = time.monotonic() + 8
    while mock_stats(mock_upstream)["cancelled_streams"] <= before:
        assert time.monotonic() < deadline, "upstream stream still running after the client disconnected"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Error envelope, statuses and retry semantics (58–66)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", CHAT, b"{oops", 400),
        ("POST", CHAT, json.dumps({"messages": []}).encode(), 400),
        ("POST", CHAT, json.dumps(chat_body(model="nope")).encode(), 404),
        (
            "POST",
            CHAT,
            json.dumps(chat_body(tools=[{"type": "custom", "custom": {"name": "f"}}])).encode(),
            400,
        ),
        ("POST", COMPLETIONS, json.dumps(completion_body(n=500)).encode(), 400),
        ("POST", COMPLETIONS, json.dumps(completion_body("[[mock:status=413]]")).encode(), 413),
        ("POST", CHAT, json.dumps(chat_body("[[mock:status=429]][[mock:retry_after=30]]")).encode(), 429),
        ("POST", CHAT, json.dumps(chat_body("[[mock:status=402]]")).encode(), 429),
        ("POST", CHAT, json.dumps(chat_body("[[mock:status=401]]")).encode(), 502),
        ("POST", CHAT, json.dumps(chat_body("[[mock:status=500]]")).encode(), 500),
        ("POST", COMPLETIONS, json.dumps(completion_body("[[mock:status=504]]", stream=True)).encode(), 504),
        ("GET", "/v1/models/nope", b"", 404),
        ("GET", "/v1/nothing-here", b"", 404),
        ("GET", CHAT, b"", 405),
    ],
)
def test_c58_error_envelope(
    http: httpx.Client, proxy: Server, method: str, path: str, content: bytes, status: int
) -> None:
    response = http.request(method, proxy.base_url + path, content=content)
    assert_error(response, status)


def test_c59_status_to_sdk_class(client: openai.OpenAI, passthrough_proxy: Server) -> None:
    # Node: not installed (the classes follow the same status table). 409 and 422 are never produced.
    def chat(sdk_client: openai.OpenAI, text: str = "hi", **fields: Any) -> Any:
        return sdk_client.chat.completions.create(
            model=fields.pop("model", MODEL), messages=[{"role": "user", "content": text}], **fields
        )

    cases: list[tuple[type[openai.APIStatusError], int, Any]] = [
        (openai.BadRequestError, 400, lambda: chat(client, temperature=7)),
        (openai.NotFoundError, 404, lambda: chat(client, model="nope")),
        (openai.RateLimitError, 429, lambda: chat(client, "[[mock:status=429]][[mock:retry_after=30]]")),
        (openai.InternalServerError, 500, lambda: chat(client, "[[mock:status=500]]")),
        (openai.InternalServerError, 502, lambda: chat(client, "[[mock:status=401]]")),
        (openai.InternalServerError, 503, lambda: chat(client, "[[mock:status=529]][[mock:retry_after=30]]")),
    ]
    with (
        sdk(passthrough_proxy, api_key="sk-ant-wrong") as wrong,
        sdk(passthrough_proxy, api_key=GOOD_UPSTREAM_KEY) as good,
    ):
        cases += [
            (openai.AuthenticationError, 401, lambda: chat(wrong)),
            (openai.PermissionDeniedError, 403, lambda: chat(good, "[[mock:status=403]]")),
        ]
        for cls, status, call in cases:
            with pytest.raises(openai.APIStatusError) as caught:
                call()
            assert type(caught.value) is cls, (status, caught.value)
            assert caught.value.status_code == status


DETERMINISTIC_CLIENT_ERRORS: list[tuple[str, Any]] = [
    (CHAT, b"{not json"),
    (CHAT, {}),
    (CHAT, {"model": MODEL}),
    (CHAT, {"model": MODEL, "messages": []}),
    (CHAT, chat_body(temperature="hot")),
    (CHAT, chat_body(temperature=3)),
    (CHAT, chat_body(n=0)),
    (CHAT, chat_body(stop=["1", "2", "3", "4", "5"])),
    (CHAT, chat_body(model="unknown-model")),
    (CHAT, chat_body(tools=[{"type": "custom", "custom": {"name": "f"}}])),
    (CHAT, chat_body(logprobs=True)),
    (CHAT, chat_body(response_format={"type": "json_schema"})),
    (CHAT, chat_body(stream_options={"include_usage": True})),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
    ),
    (CHAT, chat_body("[[mock:status=400]]")),
    (CHAT, chat_body("[[mock:status=404]]")),
    (CHAT, chat_body("[[mock:status=413]]")),
    (
        CHAT,
        chat_body("[[mock:status=400]][[mock:message=prompt is too long: 210883 tokens > 199999 maximum]]"),
    ),
    (COMPLETIONS, {"model": MODEL}),
    (COMPLETIONS, completion_body([1, 2])),
    (COMPLETIONS, completion_body(logprobs=2)),
    (COMPLETIONS, completion_body(suffix="x")),
    (COMPLETIONS, completion_body(best_of=2, stream=True)),
    (COMPLETIONS, completion_body(best_of=1, n=2)),
    (COMPLETIONS, completion_body("[[mock:bogus=1]]")),
]


@pytest.mark.parametrize(("path", "body"), DETERMINISTIC_CLIENT_ERRORS)
def test_c60_client_errors_are_not_retryable(http: httpx.Client, proxy: Server, path: str, body: Any) -> None:
    if isinstance(body, bytes):
        response = http.post(proxy.base_url + path, content=body)
    else:
        response = http.post(proxy.base_url + path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code not in {408, 409, 429}
    assert response.headers.get("x-should-retry") != "true"
    assert_error(response, response.status_code)


def test_c61_rate_limit(http: httpx.Client, proxy: Server) -> None:
    response = http.post(proxy.base_url + CHAT, json=chat_body("[[mock:status=429]][[mock:retry_after=30]]"))
    error = assert_error(response, 429, code="rate_limit_exceeded")
    assert error["type"] in {"requests", "tokens"}
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60


def test_c62_quota_exhausted(proxy: Server, mock_upstream: Server) -> None:
    mark = marker()
    response = httpx.post(
        proxy.base_url + CHAT,
        json=chat_body(f"{mark} [[mock:status=402]]"),
        headers={"Authorization": "Bearer x"},
        timeout=30,
    )
    assert_error(response, 429, "insufficient_quota", "insufficient_quota")
    assert response.headers["x-should-retry"] == "false"
    # The SDK with its default retries (2) makes exactly one attempt; the proxy does not retry either.
    sdk_mark = marker()
    retrying = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key=CLIENT_KEY, max_retries=2)
    with retrying, pytest.raises(openai.RateLimitError) as caught:
        retrying.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"{sdk_mark} [[mock:status=402]]"}]
        )
    assert caught.value.code == "insufficient_quota"
    assert len(upstream_bodies(mock_upstream, sdk_mark)) == 1


@pytest.mark.parametrize(("path", "param"), [(CHAT, "messages"), (COMPLETIONS, "prompt")])
def test_c63_context_length_exceeded(http: httpx.Client, proxy: Server, path: str, param: str) -> None:
    text = "[[mock:status=400]][[mock:message=prompt is too long: 210883 tokens > 199999 maximum]]"
    for stream in (False, True):
        response = http.post(proxy.base_url + path, json=body_for(path, text, stream=stream))
        error = assert_error(response, 400, "invalid_request_error", "context_length_exceeded", param)
        assert "maximum context length" in error["message"]


@pytest.mark.parametrize(
    ("text", "status", "no_retry"),
    [
        ("[[mock:status=401]]", 502, True),  # the operator's key is wrong: retrying cannot help
        ("[[mock:status=403]]", 502, True),
        ("[[mock:status=503]]", 502, False),  # transient
        ("[[mock:status=529]]", 503, False),
        ("[[mock:status=500]]", 500, False),
        ("[[mock:status=504]]", 504, False),
    ],
)
def test_c64_should_retry_header(
    http: httpx.Client, proxy: Server, text: str, status: int, no_retry: bool
) -> None:
    for stream in (False, True):
        response = http.post(proxy.base_url + CHAT, json=chat_body(text, stream=stream))
        assert_error(response, status, "server_error")
        if no_retry:
            assert response.headers["x-should-retry"] == "false"
        else:
            assert "x-should-retry" not in response.headers


def test_c65_upstream_auth_failure_is_5xx(start_proxy: StartProxy, keyed_mock: Server) -> None:
    secret = "sk-ant-operator-key-that-is-wrong"
    with start_proxy(upstream=keyed_mock, api_key=secret) as server:
        for path in (CHAT, COMPLETIONS):
            for stream in (False, True):
                response = httpx.post(
                    server.base_url + path,
                    json=body_for(path, stream=stream),
                    headers={"Authorization": "Bearer client"},
                    timeout=30,
                )
                error = assert_error(response, 502, "server_error", "upstream_authentication_error")
                assert response.headers["x-should-retry"] == "false"
                assert secret not in response.text
                assert "operator" in error["message"]
        with sdk(server) as client, pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("status", [429, 529])
def test_c66_retry_after_bounded(http: httpx.Client, proxy: Server, status: int) -> None:
    text = f"[[mock:status={status}]][[mock:retry_after=600]]"
    for stream in (False, True):
        response = http.post(proxy.base_url + CHAT, json=chat_body(text, stream=stream))
        assert response.status_code in {429, 503}
        retry_after = response.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 120
        if "retry-after-ms" in response.headers:
            assert 0 < float(response.headers["retry-after-ms"]) <= 120_000


# --------------------------------------------------------------------------------------------------
# LangChain (67–71)
# --------------------------------------------------------------------------------------------------


def langchain_chat(proxy: Server, **options: Any) -> Any:
    from langchain_openai import ChatOpenAI

    options.setdefault("model", MODEL)
    return ChatOpenAI(base_url=f"{proxy.base_url}/v1", api_key=CLIENT_KEY, max_retries=0, **options)  # type: ignore[arg-type]


def test_c67_langchain_chat_invoke(proxy: Server) -> None:
    message = langchain_chat(proxy).invoke("hi")
    assert type(message).__name__ == "AIMessage"
    assert message.content == "Hello! I am the mock upstream. You said: hi"
    usage = message.usage_metadata
    assert usage and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["finish_reason"] == "stop"


def test_c68_langchain_stream_usage(http: httpx.Client, proxy: Server) -> None:
    chunks = list(langchain_chat(proxy, stream_usage=True).stream("count these tokens"))
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert total.content == "Hello! I am the mock upstream. You said: count these tokens"
    whole = assert_json_200(http.post(proxy.base_url + CHAT, json=chat_body("count these tokens")))["usage"]
    assert total.usage_metadata["input_tokens"] == whole["prompt_tokens"]
    assert total.usage_metadata["output_tokens"] == whole["completion_tokens"]
    assert total.usage_metadata["total_tokens"] == whole["total_tokens"]


def test_c69_langchain_bind_tools(proxy: Server) -> None:
    def get_weather(city: str) -> str:
        """Weather of a city."""
        return city

    model = langchain_chat(proxy).bind_tools([get_weather])
    script = '[[mock:script=[{"calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}] ]]'
    message = model.invoke("weather in Paris? " + script)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    chunks = list(model.stream("weather in Paris? " + script))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_c29_c30_logprobs_rejected(http: httpx.Client, proxy: Server) -> None:
    for fields, param in [
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ]:
        for stream in (False, True):
            response = http.post(proxy.base_url + CHAT, json=chat_body(stream=stream, **fields))
            assert_error(response, 400, "invalid_request_error", "unsupported_parameter", param)
    response = http.post(proxy.base_url + COMPLETIONS, json=completion_body(logprobs=1))
    assert_error(response, 400, "invalid_request_error", "unsupported_parameter", "logprobs")


def test_c70_langchain_legacy_batch(proxy: Server) -> None:
    from langchain_openai import OpenAI

    llm = OpenAI(  # type: ignore[call-arg]
        model="gpt-3.5-turbo-instruct",
        base_url=f"{proxy.base_url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        n=2,
    )
    result = llm.generate(["alpha", "beta", "gamma"])
    assert [len(group) for group in result.generations] == [2, 2, 2]
    for prompt, group in zip(["alpha", "beta", "gamma"], result.generations, strict=True):
        assert all(g.text.endswith(f"You said: {prompt}") for g in group)
    usage = result.llm_output["token_usage"]  # type: ignore[index]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_c71_response_format_json_schema(http: httpx.Client, proxy: Server, stream: bool) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    text = 'json please [[mock:script=[{"json": {"a": 1}}] ]]'
    response = http.post(
        proxy.base_url + CHAT, json=chat_body(text, response_format=response_format, stream=stream)
    )
    if stream:
        assert_sse(response)
        content = chat_text(stream_payloads(response.content))
    else:
        content = assert_json_200(response)["choices"][0]["message"]["content"]
    assert json.loads(content) == {"a": 1}
    plain_text = http.post(proxy.base_url + CHAT, json=chat_body(response_format={"type": "text"}))
    assert_json_200(plain_text)


def test_c71_langchain_structured_output(proxy: Server) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    # LangChain sends json_schema only for models it believes support it (gpt-4o, a default alias here).
    structured = langchain_chat(proxy, model="gpt-4o").with_structured_output(Answer)
    assert structured.invoke('hi [[mock:script=[{"json": {"text": "hello"}}] ]]') == Answer(text="hello")


# --------------------------------------------------------------------------------------------------
# The HTTP edges around the checklist (items 2, 8, 9, 58, 60 on what the server added since it was
# first applied: protocol-level rejections, unsupported OpenAI endpoints, HEAD/OPTIONS, trailing
# slashes, query strings, content codings, `Expect: 100-continue`, long and non-ASCII values)
# --------------------------------------------------------------------------------------------------

REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")


def raw_exchange(server: Server, head: bytes, body: bytes | None = None) -> tuple[bytes, bytes]:
    """Send `head` on a fresh socket; with `body`, wait for the interim answer before sending it (what
    an `Expect: 100-continue` client does). Returns (everything before the body was sent, the rest),
    read until the server closes (requests carry `Connection: close`)."""

    def read_until(sock: socket.socket, done: Any) -> bytes:
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not done(data):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data

    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        # The server may refuse part way (a head over its limit); its answer is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        interim = b""
        if body is not None:
            interim = read_until(sock, lambda data: b"\r\n\r\n" in data)
            sock.sendall(body)
        return interim, read_until(sock, lambda data: False)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"THIS IS NOT HTTP\r\n\r\n", 400, "invalid_request"),
        ("GET /v1/模型 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), 400, "invalid_request"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\nConnection: close\r\n\r\n",
            400,
            "invalid_request",
        ),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (40 * 1024) + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
    ],
)
def test_c08_c58_protocol_rejections_carry_a_request_id_and_the_envelope(
    proxy: Server, request_bytes: bytes, status: int, code: str
) -> None:
    """The server protocol answers these before the app runs; they still look like every other error."""
    _, raw = raw_exchange(proxy, request_bytes)
    got_status, headers, body = parse_answer(raw)
    assert got_status == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert REQUEST_ID.match(headers["x-request-id"]), headers
    assert "x-should-retry" not in headers
    error = json.loads(body)["error"]
    assert set(error) == ENVELOPE_KEYS
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, code)
    assert f'"request_id":"{headers["x-request-id"]}"' in proxy.log()  # the log line names it


def test_c08_c59_sdk_sees_request_id_on_a_protocol_rejection(proxy: Server) -> None:
    with (
        sdk(proxy, default_headers={"x-big": "a" * (40 * 1024)}) as client,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 431
    assert caught.value.code == "request_header_fields_too_large"
    assert caught.value.request_id and REQUEST_ID.match(caught.value.request_id)


#: What the official SDKs call that a text-completion upstream cannot serve.
UNSUPPORTED_ENDPOINTS = [
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/moderations"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/audio/transcriptions"),
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-abc/content"),
    ("DELETE", "/v1/files/file-abc"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_abc"),
    ("POST", "/v1/uploads"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/vector_stores"),
    ("POST", "/v1/assistants"),
    ("POST", "/v1/threads/thread_abc/runs"),
    ("POST", "/v1/realtime/sessions"),
    ("POST", "/embeddings"),  # a client configured without the /v1 prefix
    ("POST", "/v1/embeddings/"),
    ("POST", "/v1/embeddings?api-version=2024-02-01"),
]


@pytest.mark.parametrize(("method", "path"), UNSUPPORTED_ENDPOINTS)
def test_c02_c60_unsupported_endpoints_are_a_400_envelope(
    http: httpx.Client, proxy: Server, method: str, path: str
) -> None:
    response = http.request(method, proxy.base_url + path, json={"model": MODEL, "input": "x"})
    error = assert_error(response, 400, "invalid_request_error", "unsupported_endpoint", None)
    assert f"{method} {path.split('?')[0]}" in error["message"]
    assert "x-should-retry" not in response.headers  # a 400: no SDK retries it


def test_c59_sdk_raises_bad_request_on_unsupported_endpoints(client: openai.OpenAI) -> None:
    calls = [
        lambda: client.moderations.create(input="x"),
        lambda: client.images.generate(prompt="a cat", model="dall-e-3"),
        lambda: client.files.list(),
        lambda: client.batches.retrieve("batch_abc"),
        lambda: client.audio.speech.create(model="tts-1", voice="alloy", input="x"),
        lambda: client.vector_stores.list(),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.code == "unsupported_endpoint"
        assert caught.value.request_id


@pytest.mark.parametrize(
    "path", ["/v1/models", f"/v1/models/{MODEL}", "/v1/models/no-such-model", "/v1/responses/resp_none"]
)
def test_c09_head_is_get_without_a_body(http: httpx.Client, proxy: Server, path: str) -> None:
    got = http.get(proxy.base_url + path)
    head = http.head(proxy.base_url + path)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert REQUEST_ID.match(head.headers["x-request-id"])


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/v1/responses"])
@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "GET", "PUT"])
def test_c58_other_methods_on_post_routes_are_405_with_allow(
    http: httpx.Client, proxy: Server, path: str, method: str
) -> None:
    """CORS is off by default, so OPTIONS is just another method these paths do not take."""
    response = http.request(method, proxy.base_url + path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert REQUEST_ID.match(response.headers["x-request-id"])
    if method == "HEAD":
        assert response.content == b""
    else:
        assert_error(response, 405, "invalid_request_error", "method_not_allowed", None)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/v1/responses"])
@pytest.mark.parametrize("suffix", ["/", "?api-version=2024-02-01", "/?api-version=2024-02-01&x=%C3%A9"])
def test_c01_trailing_slash_and_query_string_on_post_routes(
    http: httpx.Client, proxy: Server, path: str, suffix: str
) -> None:
    """Azure-style clients add `?api-version=`; some base URLs end in a slash. Neither changes the route."""
    body = {"model": MODEL, "input": "hi"} if path == "/v1/responses" else body_for(path)
    payload = assert_json_200(http.post(proxy.base_url + path + suffix, json=body))
    assert payload["object"] in {"chat.completion", "text_completion", "response"}
    streamed = http.post(proxy.base_url + path + suffix, json={**body, "stream": True})
    assert_sse(streamed)


@pytest.mark.parametrize("path", ["/v1/models/", "/v1/models?limit=2", f"/v1/models/{MODEL}?x=1"])
def test_c01_trailing_slash_and_query_string_on_get_routes(
    http: httpx.Client, proxy: Server, path: str
) -> None:
    assert assert_json_200(http.get(proxy.base_url + path))["object"] in {"list", "model"}


@pytest.mark.parametrize("stream", [False, True])
def test_c09_c37_accept_encoding_gzip(http: httpx.Client, proxy: Server, stream: bool) -> None:
    """A client that offers gzip gets a body it can read: JSON as JSON, a stream uncompressed."""
    response = http.post(
        proxy.base_url + CHAT, json=chat_body(stream=stream), headers={"Accept-Encoding": "gzip, deflate, br"}
    )
    assert response.status_code == 200
    assert response.headers.get("content-encoding") in (None, "gzip")
    if stream:
        assert "content-encoding" not in response.headers
        assert stream_payloads(response.content)
    else:
        assert response.json()["object"] == "chat.completion"


def test_c11_c60_gzip_request_body_is_a_400_envelope(http: httpx.Client, proxy: Server) -> None:
    """No official SDK compresses request bodies; one that arrives compressed is a client error (400),
    never a 5xx the SDK would retry."""
    response = http.post(
        proxy.base_url + CHAT,
        content=gzip.compress(json.dumps(chat_body()).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_request_error")


def expect_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("path", [CHAT, "/v1/responses"])
def test_c01_expect_100_continue_upload(proxy: Server, path: str) -> None:
    text = "é" * 3000
    body = json.dumps(
        {"model": MODEL, "input": text} if path != CHAT else chat_body(text), ensure_ascii=False
    ).encode()
    interim, rest = raw_exchange(proxy, expect_head(path, len(body)), body)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
    status, headers, _ = parse_answer(rest)
    assert status == 200, rest[:300]
    assert REQUEST_ID.match(headers["x-request-id"])


def test_c01_expect_100_continue_refused_when_too_large(proxy: Server) -> None:
    """A body declared larger than the server takes is refused before the client uploads it."""
    _, raw = raw_exchange(proxy, expect_head(CHAT, 10**9))
    status, headers, _ = parse_answer(raw)
    assert status == 413
    assert not raw.startswith(b"HTTP/1.1 100")
    assert REQUEST_ID.match(headers["x-request-id"])


def test_c01_curl_and_sdk_with_expect_100_continue(proxy: Server, client: openai.OpenAI) -> None:
    """curl asks for 100-continue on large bodies. An answer before the upload (404, 405) leaves curl able
    to send its next request (on the kept-alive connection or a new one), whose upload then goes through."""
    body = json.dumps(chat_body("x" * 4096))
    command = ["curl", "-v"]
    for path in ("/v1/nope", CHAT, "/v1/models/x", "/v1/responses"):
        if command[-1] != "-v":
            command.append("--next")
        command += [
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            "-H",
            "Expect: 100-continue",
        ]
        command += ["-H", "Content-Type: application/json", "--data-binary", body, proxy.base_url + path]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.decode().split() == [
        "404",
        "200",
        "405",
        "400",
    ]  # the last: a chat body is no Responses body
    assert result.stderr.count(b"< HTTP/1.1 100 Continue") >= 2  # chat and responses read their uploads
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"Expect": "100-continue"}
    )
    assert completion.choices[0].message.content


@pytest.mark.parametrize("length", [300, 5000, 200_000])
def test_c21_very_long_model_ids(
    http: httpx.Client, proxy: Server, client: openai.OpenAI, length: int
) -> None:
    model = "m" * length
    for path, body in [
        (CHAT, chat_body(model=model)),
        (CHAT, chat_body(model=model, stream=True)),
        (COMPLETIONS, completion_body(model=model)),
        ("/v1/responses", {"model": model, "input": "hi", "stream": True}),
    ]:
        error = assert_error(http.post(proxy.base_url + path, json=body), 404, code="model_not_found")
        assert model in error["message"]
    if length < 30_000:  # a longer one does not fit in a request head: 431 (above)
        assert_error(http.get(f"{proxy.base_url}/v1/models/{model}"), 404, code="model_not_found")
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(model)


UNICODE = "héllo wörld 你好 🚀 \u200b مرحبا \U0001f9d1\u200d\U0001f4bb"


@pytest.mark.parametrize("stream", [False, True])
def test_c44_unicode_in_every_field(http: httpx.Client, proxy: Server, stream: bool) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": f"sys {UNICODE}", "name": "sÿstem"},
            {"role": "user", "content": [{"type": "text", "text": f"say {UNICODE}"}], "name": "名前"},
        ],
        "stop": ["✋", "終"],
        "user": f"user {UNICODE}",
        "metadata": {"ключ": UNICODE},
        "stream": stream,
    }
    response = http.post(proxy.base_url + CHAT, json=body, headers={"X-Note": "café".encode()})
    text = (
        chat_text(stream_payloads(response.content))
        if stream
        else assert_json_200(response)["choices"][0]["message"]["content"]
    )
    assert UNICODE in text
    if stream:
        assert_sse(response)
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


def test_c21_unicode_model_ids_and_paths(http: httpx.Client, proxy: Server) -> None:
    model = "模型-é😀"
    for path in (CHAT, COMPLETIONS):
        error = assert_error(http.post(proxy.base_url + path, json=body_for(path, model=model)), 404)
        assert error["message"] == f"The model `{model}` does not exist or you do not have access to it."
    error = assert_error(http.get(f"{proxy.base_url}/v1/models/{model}"), 404, code="model_not_found")
    assert model in error["message"]
    error = assert_error(http.get(f"{proxy.base_url}/v1/模型"), 404, code="unknown_url")
    assert "/v1/模型" in error["message"]
    # Percent-escapes that are not UTF-8 become U+FFFD, never a 500.
    assert_error(http.get(f"{proxy.base_url}/v1/models/%FF%FE"), 404, code="model_not_found")


def test_c08_client_request_ids(http: httpx.Client, proxy: Server) -> None:
    """A safe client-chosen id is kept (for correlation); anything else is replaced, never echoed."""
    kept = http.get(proxy.base_url + "/v1/models", headers={"X-Request-Id": "trace-42.a:b"})
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    for unsafe in ("has space", "x" * 200, "café".encode()):
        replaced = http.get(proxy.base_url + "/v1/models", headers={"X-Request-Id": unsafe})
        assert REQUEST_ID.match(replaced.headers["x-request-id"])


def assert_chat_stream(payloads: list[dict[str, Any]], n: int) -> None:
    """Items 42, 43, 45 and 49 on one chat stream with `include_usage`."""
    assert {(p["id"], p["created"], p["model"], p["object"]) for p in payloads} == {
        (payloads[0]["id"], payloads[0]["created"], payloads[0]["model"], "chat.completion.chunk")
    }
    for index in range(n):
        deltas = [c for p in payloads for c in p["choices"] if c["index"] == index]
        assert [c["delta"].get("role") for c in deltas].count("assistant") == 1
        assert deltas[0]["delta"]["role"] == "assistant"
        assert [c["finish_reason"] for c in deltas if c["finish_reason"]] == ["stop"]
    *_, usage_chunk = payloads
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0
    assert all(p.get("usage") is None for p in payloads[:-1])


def test_c08_c42_optional_features_keep_the_surface(
    start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    """With the response cache, CORS and two gunicorn workers all on, a cached answer (HIT) passes the
    same checks as a fresh one (MISS), errors keep their envelope (now with CORS headers), and the
    workers' protocol rejects as the single process does. The workers share the cache through Redis
    (with the in-process cache each worker has its own, so a repeat could land on the other one)."""
    origin = "https://app.example"
    config = {
        "cache": {"enabled": True},
        "cors": {"allow_origins": [origin]},
        "limits": {"backend": "redis", "redis_url": redis_server.url, "key_prefix": f"{marker()}:"},
    }
    with (
        start_proxy(config=config, env={"PROXY_SERVER__WORKERS": "2"}) as server,
        httpx.Client(
            base_url=server.base_url,
            timeout=30,
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "Origin": origin},
        ) as http,
    ):
        word = marker()
        plain = [http.post(CHAT, json=chat_body(word, n=2)) for _ in range(2)]
        assert [r.headers["x-cache"] for r in plain] == ["MISS", "HIT"]
        for response in plain:
            payload = assert_json_200(response)
            assert payload["id"].startswith("chatcmpl-") and [c["index"] for c in payload["choices"]] == [
                0,
                1,
            ]
            usage = payload["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            assert response.headers["access-control-allow-origin"] == origin
        assert plain[0].json()["id"] != plain[1].json()["id"]
        other = marker()
        streams = [
            http.post(CHAT, json=chat_body(said, n=2, stream=True, stream_options={"include_usage": True}))
            for said in (other, other, word)  # the last one is the non-streamed answer, replayed as a stream
        ]
        assert [r.headers["x-cache"] for r in streams] == ["MISS", "HIT", "HIT"]
        texts = []
        for response in streams:
            assert_sse(response)
            assert (
                "content-length" not in response.headers and response.headers["cache-control"] == "no-cache"
            )
            payloads = stream_payloads(response.content)
            assert_chat_stream(payloads, 2)
            texts.append([chat_text(payloads, i) for i in range(2)])
        assert texts[0] == texts[1] and other in texts[0][0]
        assert texts[2] == [c["message"]["content"] for c in plain[0].json()["choices"]]
        ids = [r.headers["x-request-id"] for r in plain + streams]
        assert len(set(ids)) == len(ids)
        error = http.post(CHAT, json=chat_body(word, model="no-such-model"))
        assert_error(error, 404, "invalid_request_error", "model_not_found")
        assert error.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in error.headers["access-control-expose-headers"]
        for method, allowed in (("POST", True), ("PATCH", False)):
            preflight = http.options(
                "/v1/responses",
                headers={
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert REQUEST_ID.match(preflight.headers["x-request-id"])
            if allowed:
                assert (
                    preflight.status_code == 200
                    and preflight.headers["access-control-allow-origin"] == origin
                )
            else:
                assert_error(preflight, 400, "invalid_request_error", "cors_preflight_refused", None)
        _, raw = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, _ = parse_answer(raw)
        assert status == 400 and REQUEST_ID.match(headers["x-request-id"])
        with sdk(server) as client:
            assert client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": word}]
            ).choices


def test_c62_c66_an_exhausted_daily_budget_is_not_retried(start_proxy: StartProxy) -> None:
    """A key's daily token budget resets at 00:00 UTC, hours away: its 429 says so in `retry-after` (the
    true wait, for clients that read it) and forbids the SDKs' retries with `x-should-retry: false`
    (openai-python 1.x and Node would otherwise back off a few seconds and retry twice in vain)."""
    key = "daily-key"
    digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    config = {"auth": {"keys": [{"name": "daily", "key_sha256": digest, "limits": {"daily_tokens": 120}}]}}
    with start_proxy(config=config) as server:
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(20):
            refused = httpx.post(
                server.base_url + CHAT, json=chat_body(max_tokens=20), headers=headers, timeout=30
            )
            if refused.status_code != 200:
                break
        error = assert_error(refused, 429, "tokens", "rate_limit_exceeded")
        assert "tokens per day" in error["message"]
        now = time.time()
        until_midnight = 86_400 - int(now) % 86_400
        wait = int(refused.headers["retry-after"])
        assert abs(wait - until_midnight) <= 2
        if wait <= 60:  # in the last minute of a UTC day: an ordinary, retryable 429
            assert "x-should-retry" not in refused.headers
            return
        assert refused.headers["x-should-retry"] == "false"
        request_id = f"req-daily-{secrets.token_hex(4)}"
        with (
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=2) as client,
            pytest.raises(openai.RateLimitError),
        ):
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=20,
                extra_headers={"x-request-id": request_id},
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and request_id not in server.log():
            time.sleep(0.05)
        attempts = [
            line for line in server.log().splitlines() if request_id in line and '"status":429' in line
        ]
        assert len(attempts) == 1, attempts
