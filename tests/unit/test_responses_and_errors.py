"""Upstream answers and errors → OpenAI bodies, chunks and error envelopes."""

from __future__ import annotations

import orjson
import pytest

from proxy.translate.responses import Choice, ChunkWriter, chat_completion, finish_reason, text_completion
from proxy.translate.upstream_errors import in_stream_error, upstream_error


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [("stop_sequence", "stop"), ("max_tokens", "length"), (None, "stop"), ("end_turn", "stop")],
)
def test_finish_reasons(stop_reason: str | None, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_chat_completion_shape() -> None:
    body = chat_completion("chatcmpl-x", 1, "claude-2.1", [Choice("Hi", "stop")], {"prompt_tokens": 2})
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]


def test_text_completion_shape() -> None:
    body = text_completion("cmpl-x", 1, "m", [Choice("a", "length"), Choice("b", "stop")], {})
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0] == {"text": "a", "index": 0, "logprobs": None, "finish_reason": "length"}


def events(raw: bytes) -> list[dict[str, object]]:
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2
    parsed: dict[str, object] = orjson.loads(raw[6:-2])
    return [parsed]


def test_chat_chunks() -> None:
    writer = ChunkWriter(chat=True, model="claude-2.1", include_usage=False)
    opening = writer.opening(0)
    assert opening is not None
    (first,) = events(opening)
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert "usage" not in first
    (content,) = events(writer.content(0, "Hi"))
    (finish,) = events(writer.finish(0, "stop"))
    assert content["choices"] == [
        {"index": 0, "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None}
    ]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert {c["id"] for c in (first, content, finish)} == {writer.id}
    assert writer.id.startswith("chatcmpl-")


def test_usage_chunk_and_usage_nulls() -> None:
    writer = ChunkWriter(chat=False, model="m", include_usage=True)
    assert writer.opening(0) is None
    (content,) = events(writer.content(1, "x"))
    assert content["usage"] is None and content["object"] == "text_completion"
    (usage,) = events(writer.usage({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}))
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }


@pytest.mark.parametrize(
    ("status", "kind", "server_key", "client_status", "type_", "code", "no_retry"),
    [
        (400, "invalid_request_error", True, 400, "invalid_request_error", None, False),
        (401, "authentication_error", False, 401, "invalid_request_error", "invalid_api_key", False),
        (401, "authentication_error", True, 502, "server_error", "upstream_authentication_error", True),
        (402, "billing_error", True, 429, "insufficient_quota", "insufficient_quota", True),
        (403, "permission_error", False, 403, "invalid_request_error", "permission_denied", False),
        (403, "permission_error", True, 502, "server_error", "upstream_permission_error", True),
        (404, "not_found_error", True, 404, "invalid_request_error", "model_not_found", False),
        (413, "request_too_large", True, 413, "invalid_request_error", "request_too_large", False),
        (429, "rate_limit_error", True, 429, "requests", "rate_limit_exceeded", False),
        (500, "api_error", True, 500, "server_error", None, False),
        (502, "api_error", True, 502, "server_error", None, False),
        (504, "timeout_error", True, 504, "server_error", "timeout", False),
        (529, "overloaded_error", True, 503, "server_error", "overloaded", False),
        (418, "invalid_request_error", True, 400, "invalid_request_error", None, False),
    ],
)
def test_upstream_error_table(
    status: int, kind: str, server_key: bool, client_status: int, type_: str, code: str | None, no_retry: bool
) -> None:
    error = upstream_error(status, kind, "upstream says no", {"retry-after": "3"}, server_key)
    assert (error.status, error.type, error.code) == (client_status, type_, code)
    assert "upstream says no" in error.message
    assert (error.headers.get("x-should-retry") == "false") == no_retry
    if client_status in {429, 503} and not no_retry:
        assert error.headers["retry-after"] == "3"


def test_context_length_is_recognised() -> None:
    error = upstream_error(
        400, "invalid_request_error", "prompt is too long: 210883 tokens > 199999 maximum", {}, True
    )
    assert error.code == "context_length_exceeded"
    assert "maximum context length" in error.message


def test_in_stream_error_shape() -> None:
    assert in_stream_error("overloaded_error", "Overloaded") == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}
    }
