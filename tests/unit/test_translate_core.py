"""The pure translation core: stream translator, renderers, and the upstream error table.

Property tests drive the whole pure pipeline with generated upstream streams: upstream bytes (either
`anthropic-version`, split at any point) → SSE decoder → event decoder → translator → renderer → the
client's SSE, which must hold exactly one role and one finish per choice, then `[DONE]`, with the text
of each choice equal to what the upstream sent.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.translate.events import EventDecoder, Failure, Piece, Ping, answer_event
from proxy.translate.render import in_stream_error, sse
from proxy.translate.render.chat import ChatBody, ChatChunks
from proxy.translate.render.completions import CompletionBody, CompletionChunks
from proxy.translate.stream import (
    Done,
    Failed,
    Finished,
    KeepAlive,
    Opened,
    StreamTranslator,
    Text,
    Usage,
    finish_reason,
)
from proxy.translate.upstream_errors import Redactor, kind, retry_after_seconds, retryable, upstream_error
from proxy.upstream.sse import SSEDecoder

# -- the translator ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [("stop_sequence", "stop"), ("max_tokens", "length"), (None, "stop"), ("end_turn", "stop")],
)
def test_finish_reasons(stop_reason: str | None, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_translator_events_for_one_choice() -> None:
    translator = StreamTranslator(["\n\nHuman: hi\n\nAssistant:"])
    assert translator.start() == [Opened(0)]
    assert translator.feed(0, Piece(" Hel")) == [Text(0, " Hel")]
    assert translator.feed(0, Ping()) == [KeepAlive()]
    out = translator.feed(0, Piece("lo", "max_tokens"))
    assert out[:2] == [Text(0, "lo"), Finished(0, "length")]
    assert isinstance(out[2], Usage) and out[2].totals["completion_tokens"] > 0
    assert out[3] == Done()
    assert translator.complete and translator.feed(0, Piece("late")) == []


def test_translator_waits_for_every_choice_and_echoes() -> None:
    translator = StreamTranslator(["a", "b"], n=2, echo=["A", "B"])
    assert translator.start() == [
        Opened(0),
        Text(0, "A"),
        Opened(1),
        Text(1, "A"),
        Opened(2),
        Text(2, "B"),
        Opened(3),
        Text(3, "B"),
    ]
    for index in range(3):
        assert translator.feed(index, Piece("x", "stop_sequence"))[-1] == Finished(index, "stop")
    assert not translator.complete
    assert translator.feed(3, Piece("", "stop_sequence"))[-1] == Done()


def test_failure_ends_the_response_and_is_redacted() -> None:
    translator = StreamTranslator(["p"], redact=Redactor(["sk-ant-server-secret-1"]))
    translator.start()
    out = translator.feed(0, Failure("overloaded_error", "key sk-ant-server-secret-1 is overloaded"))
    assert out == [Failed("overloaded_error", "key [redacted] is overloaded"), Done()]
    assert translator.error == "overloaded_error" and translator.complete


def test_answer_event_is_a_final_piece() -> None:
    assert answer_event({"completion": " Hi", "stop_reason": "max_tokens"}) == Piece(" Hi", "max_tokens")
    assert answer_event({"completion": 3}).stop_reason is not None


# -- renderers -----------------------------------------------------------------------------------------


def data_lines(raw: bytes) -> list[Any]:
    """The client's view of an SSE body: each `data:` payload, JSON-decoded ("[DONE]" kept as is)."""
    sse_decoder = SSEDecoder()
    events = sse_decoder.feed(raw) + sse_decoder.close()
    return [data if data == "[DONE]" else orjson.loads(data) for name, data in events if data]


def reference_chat_chunk(renderer: ChatChunks, choice: dict[str, Any]) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": renderer.id,
        "object": "chat.completion.chunk",
        "created": renderer.created,
        "model": renderer.model,
        "choices": [choice],
    }
    if renderer.include_usage:
        chunk["usage"] = None
    return chunk


TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(text=TEXT, model=TEXT, index=st.integers(0, 130), include_usage=st.booleans())
def test_chat_templates_equal_the_dict_encoding(
    text: str, model: str, index: int, include_usage: bool
) -> None:
    """The byte templates encode exactly what building and dumping the dict would (key order included)."""
    renderer = ChatChunks(model, include_usage=include_usage)
    raw = renderer.render([Opened(index), Text(index, text), Finished(index, "length")])
    expected = [
        {"index": index, "delta": {"role": "assistant", "content": "", "refusal": None}},
        {"index": index, "delta": {"content": text}},
        {"index": index, "delta": {}},
    ]
    reasons = [None, None, "length"]
    wanted = b"".join(
        sse(reference_chat_chunk(renderer, {**c, "logprobs": None, "finish_reason": r}))
        for c, r in zip(expected, reasons, strict=True)
    )
    assert raw == wanted


@settings(max_examples=200, deadline=None)
@given(text=TEXT, model=TEXT, index=st.integers(0, 130), include_usage=st.booleans())
def test_completion_templates_equal_the_dict_encoding(
    text: str, model: str, index: int, include_usage: bool
) -> None:
    renderer = CompletionChunks(model, include_usage=include_usage)
    raw = renderer.render([Opened(index), Text(index, text), Finished(index, "stop")])

    def chunk(choice: dict[str, Any]) -> bytes:
        body: dict[str, Any] = {
            "id": renderer.id,
            "object": "text_completion",
            "created": renderer.created,
            "model": model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return sse(body)

    assert raw == chunk({"text": text, "index": index, "logprobs": None, "finish_reason": None}) + chunk(
        {"text": "", "index": index, "logprobs": None, "finish_reason": "stop"}
    )


def test_usage_chunk_only_when_asked() -> None:
    totals = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    for renderer in (ChatChunks("m", include_usage=True), CompletionChunks("m", include_usage=True)):
        (usage, done) = data_lines(renderer.render([Usage(totals), Done()]))
        assert usage["choices"] == [] and usage["usage"] == totals and done == "[DONE]"
    assert data_lines(ChatChunks("m", include_usage=False).render([Usage(totals), Done()])) == ["[DONE]"]


def test_failed_is_an_in_band_error_then_done() -> None:
    raw = ChatChunks("m", include_usage=False).render([Failed("overloaded_error", "Overloaded"), Done()])
    assert data_lines(raw) == [in_stream_error("overloaded_error", "Overloaded"), "[DONE]"]
    assert in_stream_error("overloaded_error", "Overloaded") == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}
    }


def test_bodies() -> None:
    translator = StreamTranslator(["p"], n=2, echo=["E:"])
    chat, completion = ChatBody("claude-2.1"), CompletionBody("claude-2.1")
    for body in (chat, completion):
        body.add(translator.start())
    for index, answer in enumerate([{"completion": "a", "stop_reason": "max_tokens"}, {"completion": "b"}]):
        out = translator.feed(index, answer_event(answer))
        chat.add(out)
        completion.add(out)
    chat_body, completion_body = chat.body(), completion.body()
    assert chat_body["object"] == "chat.completion" and chat_body["id"].startswith("chatcmpl-")
    assert chat_body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "E:a", "refusal": None},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert completion_body["choices"][1] == {
        "text": "E:b",
        "index": 1,
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chat_body["usage"] == completion_body["usage"] == translator.usage()


# -- the whole pure pipeline, property-tested ----------------------------------------------------------


def upstream_bytes(pieces: list[str], stop_reason: str, version: str, pings: list[bool]) -> bytes:
    """What Anthropic sends for a stream of `pieces` (2023-06-01 deltas, or 2023-01-01 cumulative)."""
    out: list[bytes] = []
    seen = ""
    for number, (piece, ping) in enumerate(zip(pieces, pings, strict=True)):
        if ping:
            out.append(b'event: ping\ndata: {"type": "ping"}\n\n')
        seen += piece
        last = number == len(pieces) - 1
        payload = {
            "type": "completion",
            "completion": seen if version == "2023-01-01" else piece,
            "stop_reason": stop_reason if last else None,
            "model": "claude-2.1",
        }
        prefix = b"" if version == "2023-01-01" else b"event: completion\r\n"
        out.append(prefix + b"data: " + orjson.dumps(payload) + b"\r\n\r\n")
    if version == "2023-01-01":
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


CHOICE = st.tuples(
    st.lists(st.text(st.characters(codec="utf-8"), max_size=12), min_size=1, max_size=8),
    st.sampled_from(["stop_sequence", "max_tokens"]),
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.lists(st.integers(0, 10_000), max_size=12),
)


@settings(max_examples=150, deadline=None)
@given(
    choices=st.lists(CHOICE, min_size=1, max_size=3),
    version=st.sampled_from(["2023-06-01", "2023-01-01"]),
    chat=st.booleans(),
    include_usage=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_any_upstream_streams_translate_to_a_well_formed_client_stream(
    choices: list[tuple[list[str], str, list[bool], list[int]]],
    version: str,
    chat: bool,
    include_usage: bool,
    order: Any,
) -> None:
    n = len(choices)
    translator = StreamTranslator(["\n\nHuman: hi\n\nAssistant:"], n=n)
    renderer = (ChatChunks if chat else CompletionChunks)("claude-2.1", include_usage=include_usage)
    # Each choice's upstream byte stream, split at arbitrary points, decoded as the client does.
    pending: list[list[bytes]] = []
    decoders = []
    for pieces, stop_reason, pings, cuts in choices:
        pending.append(split(upstream_bytes(pieces, stop_reason, version, pings[: len(pieces)]), cuts))
        decoders.append((SSEDecoder(), EventDecoder(version)))
    out = [renderer.render(translator.start())]
    while any(pending):
        index = order.choice([i for i, chunks in enumerate(pending) if chunks])
        sse_decoder, events = decoders[index]
        chunk = pending[index].pop(0)
        decoded = [events.decode(name, data) for name, data in sse_decoder.feed(chunk)]
        if not pending[index]:
            decoded += [events.decode(name, data) for name, data in sse_decoder.close()]
        for event in decoded:
            out.append(renderer.render(translator.feed(index, event)))
    assert translator.complete
    received = data_lines(b"".join(out))

    assert received[-1] == "[DONE]" and received.count("[DONE]") == 1
    body = received[:-1]
    if include_usage:
        assert body[-1]["choices"] == [] and body[-1]["usage"] == translator.usage()
        body = body[:-1]
    roles = [0] * n
    finishes: list[str | None] = [None] * n
    texts = [""] * n
    for chunk in body:
        assert "error" not in chunk
        (choice,) = chunk["choices"]
        index = choice["index"]
        assert finishes[index] is None, "nothing may follow a choice's finish"
        if chat:
            delta = choice["delta"]
            if "role" in delta:
                assert roles[index] == 0 and texts[index] == ""
                roles[index] += 1
            else:
                assert roles[index] == 1, "the role comes first"
                texts[index] += delta.get("content", "")
        else:
            texts[index] += choice["text"]
        if choice["finish_reason"] is not None:
            finishes[index] = choice["finish_reason"]
    assert roles == ([1] * n if chat else [0] * n)
    assert finishes == [finish_reason(stop) for _, stop, _, _ in choices]
    assert texts == ["".join(pieces) for pieces, _, _, _ in choices]


# -- upstream errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind_", "server_key", "client_status", "type_", "code", "no_retry"),
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
        (500, "invalid_request_error", True, 500, "server_error", None, False),
        (502, "weird_new_type", True, 502, "server_error", None, False),
        (504, "timeout_error", True, 504, "server_error", "timeout", False),
        (529, "overloaded_error", True, 503, "server_error", "overloaded", False),
        (418, "invalid_request_error", True, 400, "invalid_request_error", None, False),
        (418, "weird_new_type", True, 400, "invalid_request_error", None, False),
        (None, "upstream_connection_error", True, 502, "server_error", "upstream_connection_error", False),
        (None, "upstream_timeout", True, 504, "server_error", "upstream_timeout", False),
    ],
)
def test_upstream_error_table(
    status: int | None,
    kind_: str,
    server_key: bool,
    client_status: int,
    type_: str,
    code: str | None,
    no_retry: bool,
) -> None:
    error = upstream_error(status, kind_, "upstream says no", {"retry-after": "3"}, server_key)
    assert (error.status, error.type, error.code) == (client_status, type_, code)
    assert "upstream says no" in error.message
    assert (error.headers.get("x-should-retry") == "false") == no_retry
    if client_status in {429, 503} and not no_retry:
        assert error.headers["retry-after"] == "3"


def test_context_length_points_at_the_surface_field() -> None:
    message = "prompt is too long: 210883 tokens > 199999 maximum"
    error = upstream_error(400, "invalid_request_error", message, {}, True, prompt_param="messages")
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert "maximum context length" in error.message


def test_server_key_echoed_by_the_upstream_never_reaches_the_client() -> None:
    redact = Redactor(["sk-ant-api03-SERVERKEY", None, ""])
    error = upstream_error(
        401, "authentication_error", "invalid x-api-key sk-ant-api03-SERVERKEY", {}, True, redact=redact
    )
    assert "SERVERKEY" not in error.message and "[redacted]" in error.message
    assert redact("also sk-ant-api03-somebody-elses") == "also [redacted]"


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"retry-after": "2"}, 2.0), ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5), ({}, None)],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None


def test_retryable_and_kind() -> None:
    assert retryable(529, "overloaded_error") and retryable(None, "upstream_timeout")
    assert retryable(503, "weird") and not retryable(400, "invalid_request_error")
    assert not retryable(None, "invalid_request_error")  # an in-stream error of a kind never retried
    assert kind(None, "overloaded_error") == "overloaded_error" and kind(None, "weird") == "api_error"


def test_upstream_request_ids_are_capped_and_printable() -> None:
    from proxy.upstream.client import MAX_REQUEST_ID, _request_id

    assert _request_id("req_011CUpmQnV") == "req_011CUpmQnV"
    assert _request_id("x" * 10_000) == "x" * MAX_REQUEST_ID
    assert _request_id("a b\r\nSet-Cookie: c\x00") == "abSet-Cookie:c"
