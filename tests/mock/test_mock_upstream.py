"""The mock upstream over real HTTP: auth, versions, validation, models, generation, recorder, stats."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from tests.mock.helpers import ACCEPTED_KEY, HEADERS, Poster, body, error_of, prompt
from tests.support.servers import Server, mock_requests, mock_stats

START_ERROR = 'prompt must start with "\n\nHuman:" turn after an optional system prompt'
END_ERROR = 'prompt must end with "\n\nAssistant:" turn'
ECHO = " Hello! I am the mock upstream. You said: "
KEY_ORDER = ["type", "id", "completion", "stop_reason", "model", "stop", "log_id"]
COMPL_ID = re.compile(r"compl_[A-Za-z0-9]{24}")


# --- auth -------------------------------------------------------------------------------------


def test_missing_key_is_401(post: Poster) -> None:
    response = post(body(), headers={"x-api-key": ""})
    assert error_of(response) == (401, "authentication_error", "invalid x-api-key")


def test_no_key_header_at_all_is_401(http: httpx.Client, mock: Server) -> None:
    response = http.post(
        f"{mock.base_url}/v1/complete", json=body(), headers={"anthropic-version": "2023-06-01"}
    )
    assert error_of(response) == (401, "authentication_error", "invalid x-api-key")


def test_key_header_name_is_case_insensitive(http: httpx.Client, mock: Server) -> None:
    headers = {"X-API-Key": "whatever", "Anthropic-Version": "2023-06-01"}
    assert http.post(f"{mock.base_url}/v1/complete", json=body(), headers=headers).status_code == 200


def test_bearer_token_is_accepted(http: httpx.Client, mock: Server) -> None:
    headers = {"authorization": "Bearer tok", "anthropic-version": "2023-06-01"}
    assert http.post(f"{mock.base_url}/v1/complete", json=body(), headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-api-key": ACCEPTED_KEY}, 200),
        ({"x-api-key": "wrong"}, 401),
        ({"authorization": f"Bearer {ACCEPTED_KEY}"}, 200),
        ({"authorization": "Bearer wrong"}, 401),
    ],
)
def test_configured_keys_are_enforced(
    http: httpx.Client, keyed_mock: Server, headers: dict[str, str], status: int
) -> None:
    response = http.post(
        f"{keyed_mock.base_url}/v1/complete",
        json=body(),
        headers={"anthropic-version": "2023-06-01", **headers},
    )
    assert response.status_code == status
    if status == 401:
        assert error_of(response) == (401, "authentication_error", "invalid x-api-key")


# --- anthropic-version --------------------------------------------------------------------------


def test_missing_version_is_400(http: httpx.Client, mock: Server) -> None:
    response = http.post(f"{mock.base_url}/v1/complete", json=body(), headers={"x-api-key": "k"})
    assert error_of(response) == (400, "invalid_request_error", "anthropic-version: header is required")


def test_unknown_version_is_400_and_named(post: Poster) -> None:
    status, kind, message = error_of(post(body(), headers={"anthropic-version": "2024-01-01"}))
    assert (status, kind) == (400, "invalid_request_error")
    assert '"2024-01-01"' in message
    assert message.startswith("anthropic-version: ")


@pytest.mark.parametrize("version", ["2023-06-01", "2023-01-01"])
def test_both_versions_are_served(post: Poster, version: str) -> None:
    assert post(body(), headers={"anthropic-version": version}).status_code == 200


# --- body schema --------------------------------------------------------------------------------


def test_invalid_json_is_400(post: Poster) -> None:
    assert error_of(post(b"{nope")) == (400, "invalid_request_error", "Invalid JSON in request body")


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"null", b"3"])
def test_body_must_be_an_object(post: Poster, payload: bytes) -> None:
    assert error_of(post(payload)) == (400, "invalid_request_error", "Input should be a valid dictionary")


@pytest.mark.parametrize("field", ["model", "prompt", "max_tokens_to_sample"])
def test_required_fields(post: Poster, field: str) -> None:
    payload = body()
    del payload[field]
    assert error_of(post(payload)) == (400, "invalid_request_error", f"{field}: Field required")


INVALID_FIELDS: list[tuple[str, Any, str]] = [
    ("model", 3, "model: Input should be a valid string"),
    ("prompt", None, "prompt: Input should be a valid string"),
    ("prompt", "", "prompt: String should have at least 1 character"),
    ("max_tokens_to_sample", 0, "max_tokens_to_sample: Input should be greater than or equal to 1"),
    ("max_tokens_to_sample", 5.0, "max_tokens_to_sample: Input should be a valid integer"),
    ("max_tokens_to_sample", True, "max_tokens_to_sample: Input should be a valid integer"),
    ("max_tokens_to_sample", "5", "max_tokens_to_sample: Input should be a valid integer"),
    ("stop_sequences", "x", "stop_sequences: Input should be a valid list"),
    ("stop_sequences", ["ok", 1], "stop_sequences.1: Input should be a valid string"),
    ("stop_sequences", None, "stop_sequences: Input should be a valid list"),
    ("temperature", 1.5, "temperature: Input should be less than or equal to 1"),
    ("temperature", -0.1, "temperature: Input should be greater than or equal to 0"),
    ("temperature", "0.5", "temperature: Input should be a valid number"),
    ("temperature", True, "temperature: Input should be a valid number"),
    ("temperature", None, "temperature: Input should be a valid number"),
    ("top_p", 2, "top_p: Input should be less than or equal to 1"),
    ("top_k", -1, "top_k: Input should be greater than or equal to 0"),
    ("top_k", 1.5, "top_k: Input should be a valid integer"),
    ("metadata", "u", "metadata: Input should be a valid dictionary"),
    ("metadata", {"user_id": 5}, "metadata.user_id: Input should be a valid string"),
    ("metadata", {"session": "x"}, "metadata.session: Extra inputs are not permitted"),
    ("stream", "true", "stream: Input should be a valid boolean"),
    ("stream", 1, "stream: Input should be a valid boolean"),
    ("messages", [], "messages: Extra inputs are not permitted"),
    ("n", 1, "n: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("field", "value", "message"), INVALID_FIELDS)
def test_invalid_fields(post: Poster, field: str, value: Any, message: str) -> None:
    assert error_of(post(body(**{field: value}))) == (400, "invalid_request_error", message)


def test_all_optional_fields_accepted(post: Poster) -> None:
    payload = body(
        stop_sequences=[],
        temperature=0,
        top_p=1,
        top_k=0,
        metadata={"user_id": None},
        stream=False,
    )
    assert post(payload).status_code == 200
    assert post(body(temperature=0.7, top_k=5, metadata={"user_id": "u-1"})).status_code == 200


# --- prompt rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Hello, world", START_ERROR),
        ("Hello, world\n\nAssistant:", START_ERROR),
        ("\n\nHuman: Hello, Claude", END_ERROR),
        ("\n\nAssistant: Hello\n\nHuman: Hi\n\nAssistant:", START_ERROR),
        ("\n\nHuman: Hello, Claude \nAssistant:", END_ERROR),
    ],
)
def test_prompt_turn_errors(post: Poster, text: str, message: str) -> None:
    response = post({"model": "claude-2.1", "prompt": text, "max_tokens_to_sample": 5})
    assert error_of(response) == (400, "invalid_request_error", message)
    # on the wire the newlines are JSON escapes inside the quoted turn marker
    assert b'\\"\\n\\n' in response.content


@pytest.mark.parametrize(
    "text",
    ["Human: Hello\n\nAssistant:", "\n\nHuman: Hello\n\nAssistant: ", "System.\n\nHuman: Hi\n\nAssistant:"],
)
def test_prompts_sanitised_or_with_system_text_pass(post: Poster, text: str) -> None:
    response = post({"model": "claude-2.1", "prompt": text, "max_tokens_to_sample": 50})
    assert response.status_code == 200, response.text


def test_prompt_too_long(post: Poster) -> None:
    text = prompt("x" * 400_100)
    status, kind, message = error_of(post({"model": "claude-2.1", "prompt": text, "max_tokens_to_sample": 5}))
    assert (status, kind) == (400, "invalid_request_error")
    assert message == f"prompt is too long: {len(text) // 4} tokens > 99999 maximum"


# --- models -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "claude-2.1",
        "claude-2.0",
        "claude-2",
        "claude-instant-1.2",
        "claude-instant-1",
        "claude-1.3",
        "claude-v1",
    ],
)
def test_legacy_models_are_served_and_echoed(post: Poster, model: str) -> None:
    response = post(body(model=model))
    assert response.status_code == 200
    assert response.json()["model"] == model


@pytest.mark.parametrize(
    "model",
    [
        "claude-3-opus-20240229",
        "claude-3-5-sonnet-latest",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-4-opus",
        "claude-3",
        "claude-3.5-sonnet",
    ],
)
def test_messages_only_models_are_400(post: Poster, model: str) -> None:
    expected = f'"{model}" is not supported on this API. Please use the Messages API instead.'
    assert error_of(post(body(model=model))) == (400, "invalid_request_error", expected)


@pytest.mark.parametrize("model", ["gpt-4", "claude-x", "", "claude-30x", "claude-opus"])
def test_unknown_models_are_404(post: Poster, model: str) -> None:
    assert error_of(post(body(model=model))) == (404, "not_found_error", f"model: {model}")


# --- non-stream responses -------------------------------------------------------------------------


def test_non_stream_shape_2023_06_01(post: Poster) -> None:
    response = post(body("  how are you?  "))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch(r"req_[A-Za-z0-9]{24}", response.headers["request-id"])
    payload = response.json()
    assert list(payload) == KEY_ORDER
    assert payload["type"] == "completion"
    assert COMPL_ID.fullmatch(payload["id"])
    assert payload["log_id"] == payload["id"]
    assert payload["completion"] == ECHO + "how are you?"
    assert (payload["stop_reason"], payload["stop"]) == ("stop_sequence", "\n\nHuman:")
    # compact JSON exactly as orjson/the API writes it
    assert response.content == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def test_non_stream_shape_2023_01_01(post: Poster) -> None:
    response = post(body(), headers={"anthropic-version": "2023-01-01"})
    payload = response.json()
    assert list(payload) == ["completion", "stop_reason", "truncated", "stop", "model", "log_id", "exception"]
    assert payload["truncated"] is False
    assert payload["exception"] is None
    assert COMPL_ID.fullmatch(payload["log_id"])
    assert payload["completion"] == ECHO + "hi"


def test_echo_uses_last_human_turn_without_directives_and_is_capped(post: Poster) -> None:
    text = (
        "\n\nHuman: first\n\nAssistant: ok\n\nHuman: second [[mock:fail_id=x]] "
        + "y" * 300
        + "\n\nAssistant:"
    )
    completion = post({"model": "claude-2.1", "prompt": text, "max_tokens_to_sample": 500}).json()[
        "completion"
    ]
    said = completion[len(ECHO) :]
    assert completion.startswith(ECHO + "second ")
    assert "[[mock" not in completion
    assert len(said) == 200


# --- stop rules ---------------------------------------------------------------------------------


def complete(post: Poster, text: str, **fields: Any) -> dict[str, Any]:
    response = post(body(text, **fields))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_max_tokens_cuts_pieces(post: Poster) -> None:
    result = complete(post, "[[mock:reply=one two three four]]", max_tokens_to_sample=3)
    assert (result["completion"], result["stop_reason"], result["stop"]) == (
        "one two three",
        "max_tokens",
        None,
    )


def test_exact_token_count_is_a_normal_end(post: Poster) -> None:
    result = complete(post, "[[mock:reply= a b c]]", max_tokens_to_sample=3)
    assert (result["completion"], result["stop_reason"], result["stop"]) == (
        " a b c",
        "stop_sequence",
        "\n\nHuman:",
    )


def test_user_stop_sequence_cuts_text(post: Poster) -> None:
    result = complete(post, "[[mock:reply=one two STOP three]]", stop_sequences=["END", "STOP"])
    assert (result["completion"], result["stop_reason"], result["stop"]) == (
        "one two",
        "stop_sequence",
        "STOP",
    )


def test_earliest_stop_sequence_wins(post: Poster) -> None:
    result = complete(post, "[[mock:reply=a B c A d]]", stop_sequences=["A", "B"])
    assert (result["completion"], result["stop"]) == ("a", "B")


def test_builtin_human_stop(post: Poster) -> None:
    result = complete(post, r"[[mock:reply=Sure.\n\nHuman: more]]")
    assert (result["completion"], result["stop_reason"], result["stop"]) == (
        "Sure.",
        "stop_sequence",
        "\n\nHuman:",
    )


def test_stop_sequence_then_max_tokens(post: Poster) -> None:
    result = complete(post, "[[mock:reply=a b c d STOP e]]", stop_sequences=["STOP"], max_tokens_to_sample=2)
    assert (result["completion"], result["stop_reason"], result["stop"]) == ("a b", "max_tokens", None)


def test_model_output_cap_is_4096(post: Poster) -> None:
    result = complete(post, "[[mock:tokens=5000]]", max_tokens_to_sample=100_000)
    assert result["stop_reason"] == "max_tokens"
    assert result["completion"].count(" tok") == 4096
    assert result["completion"].endswith(" tok4095")


# --- directives ---------------------------------------------------------------------------------


def test_reply_directive_decodes_newlines_and_last_wins(post: Poster) -> None:
    result = complete(post, r"[[mock:reply=ignored]] [[mock:reply=Line one\nLine two]]")
    assert result["completion"] == "Line one\nLine two"


def test_tokens_directive(post: Poster) -> None:
    assert complete(post, "[[mock:tokens=4]]")["completion"] == " tok0 tok1 tok2 tok3"
    assert complete(post, "[[mock:tokens=0]]")["completion"] == ""


@pytest.mark.parametrize(
    ("directives", "status", "kind", "message"),
    [
        ("[[mock:status=529]]", 529, "overloaded_error", "Overloaded"),
        ("[[mock:status=500]]", 500, "api_error", "Internal server error"),
        ("[[mock:status=503]]", 503, "api_error", "Internal server error"),
        ("[[mock:status=504]]", 504, "timeout_error", "Request timed out"),
        ("[[mock:status=403]]", 403, "permission_error", None),
        ("[[mock:status=402]]", 402, "billing_error", None),
        ("[[mock:status=413]]", 413, "request_too_large", None),
        ("[[mock:status=418]]", 418, "invalid_request_error", None),
        ("[[mock:status=400]][[mock:message=custom\\nline]]", 400, "invalid_request_error", "custom\nline"),
        ("[[mock:status=500]][[mock:error_type=my_error]][[mock:message=boom]]", 500, "my_error", "boom"),
    ],
)
def test_status_directive(post: Poster, directives: str, status: int, kind: str, message: str | None) -> None:
    got_status, got_kind, got_message = error_of(post(body(directives)))
    assert (got_status, got_kind) == (status, kind)
    assert got_message if message is None else got_message == message


def test_retry_after_directive(post: Poster) -> None:
    response = post(body("[[mock:status=429]][[mock:retry_after=3]]"))
    assert error_of(response)[:2] == (429, "rate_limit_error")
    assert response.headers["retry-after"] == "3"
    assert "retry-after" not in post(body("[[mock:status=429]]")).headers


def test_fail_times_then_success(post: Poster) -> None:
    directives = "[[mock:status=503]][[mock:fail_times=2]][[mock:fail_id=retry-test-1]]"
    assert [post(body(directives)).status_code for _ in range(4)] == [503, 503, 200, 200]
    # a different fail_id has its own counter; without status the failure is a 529
    other = "[[mock:fail_times=1]][[mock:fail_id=retry-test-2]]"
    assert [post(body(other)).status_code for _ in range(2)] == [529, 200]


def test_reset_restarts_fail_counters(post: Poster, mock: Server) -> None:
    directives = "[[mock:status=500]][[mock:fail_times=1]][[mock:fail_id=retry-test-3]]"
    assert [post(body(directives)).status_code for _ in range(2)] == [500, 200]
    httpx.delete(f"{mock.base_url}/_mock/requests", timeout=5).raise_for_status()
    assert post(body(directives)).status_code == 500


@pytest.mark.parametrize(
    ("directive", "fragment"),
    [
        ("[[mock:bogus=1]]", "unknown mock directive: bogus"),
        ("[[mock:status=200]]", "status"),
        ("[[mock:tokens=-1]]", "tokens"),
        ("[[mock:token_delay_ms=soon]]", "token_delay_ms"),
    ],
)
def test_bad_directives_are_400(post: Poster, directive: str, fragment: str) -> None:
    status, kind, message = error_of(post(body(directive)))
    assert (status, kind) == (400, "invalid_request_error")
    assert fragment in message


def test_token_delay_non_stream_sleeps_the_sum(post: Poster) -> None:
    started = time.monotonic()
    result = complete(post, "[[mock:tokens=4]][[mock:token_delay_ms=50]]")
    assert time.monotonic() - started >= 0.19  # 4 x 0.05 s
    assert result["completion"] == " tok0 tok1 tok2 tok3"


def test_directives_need_a_valid_request_first(post: Poster) -> None:
    """Directives never bypass validation: the proxy's requests are always checked first."""
    payload = body("[[mock:status=529]]", temperature=3)
    assert error_of(post(payload))[:2] == (400, "invalid_request_error")


# --- introspection ------------------------------------------------------------------------------


def test_recorder_keeps_requests_in_order(fresh_mock: Server, post: Poster) -> None:
    post(body("first"), headers={"X-Custom": "a"})
    post(b"{broken")
    records = mock_requests(fresh_mock)
    assert len(records) == 2
    first, second = records
    assert first["path"] == "/v1/complete"
    assert isinstance(first["headers"], dict)
    assert first["headers"]["x-api-key"] == "k"
    assert first["headers"]["x-custom"] == "a"
    assert first["headers"]["anthropic-version"] == "2023-06-01"
    assert first["body"] == body("first")
    assert json.loads(str(first["raw"])) == body("first")
    assert second["body"] is None
    assert second["raw"] == "{broken"
    httpx.delete(f"{fresh_mock.base_url}/_mock/requests", timeout=5).raise_for_status()
    assert mock_requests(fresh_mock) == []


def test_recorder_includes_rejected_requests(fresh_mock: Server, http: httpx.Client) -> None:
    http.post(f"{fresh_mock.base_url}/v1/complete", json=body(), headers={"anthropic-version": "2023-06-01"})
    assert [r["body"] for r in mock_requests(fresh_mock)] == [body()]


def test_health_and_unknown_paths(http: httpx.Client, mock: Server) -> None:
    health = http.get(f"{mock.base_url}/_mock/health")
    assert (health.status_code, health.json()) == (200, {"ok": True})
    assert health.headers["request-id"].startswith("req_")
    for method, path in [
        ("GET", "/v1/complete"),
        ("POST", "/v1/messages"),
        ("GET", "/"),
        ("PUT", "/_mock/stats"),
    ]:
        response = http.request(method, f"{mock.base_url}{path}", headers=HEADERS)
        assert error_of(response)[:2] == (404, "not_found_error"), (method, path)


def test_stats_count_completed_streams(fresh_mock: Server, post: Poster) -> None:
    before = mock_stats(fresh_mock)
    assert post(body(stream=True)).status_code == 200
    after = mock_stats(fresh_mock)
    assert after["completed_streams"] == before["completed_streams"] + 1
    assert after["active_streams"] == 0


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_cancels_the_stream(fresh_mock: Server) -> None:
    payload = body("[[mock:tokens=100]][[mock:token_delay_ms=100]]", stream=True)
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{fresh_mock.base_url}/v1/complete", json=payload, headers=HEADERS
        ) as response,
    ):
        chunks = response.iter_raw()  # keep a reference: a dropped iterator closes the connection
        assert next(chunks).startswith(b"event: completion\r\n")
        assert wait_for(lambda: mock_stats(fresh_mock)["active_streams"] == 1)
    assert wait_for(lambda: mock_stats(fresh_mock)["cancelled_streams"] == 1), mock_stats(fresh_mock)
    stats = mock_stats(fresh_mock)
    assert (stats["active_streams"], stats["completed_streams"]) == (0, 0)
