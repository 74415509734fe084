"""Byte-level checks of the mock's SSE streams against the captured real 2023-06-01 framing."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

import httpx
import pytest

from tests.mock.helpers import HEADERS, Poster, body, completion_events, parse_event, split_events
from tests.support.servers import Server

ECHO = " Hello! I am the mock upstream. You said: hi"
KEY_ORDER = ["type", "id", "completion", "stop_reason", "model", "stop", "log_id"]
COMPLETION_FRAME = re.compile(
    rb'event: completion\r\ndata: (\{"type":"completion",.*?"log_id":"compl_[A-Za-z0-9]{24}")( {0,11})\}'
)
PING = b'event: ping\r\ndata: {"type": "ping"}'


def stream(post: Poster, text: str = "hi", version: str = "2023-06-01", **fields: Any) -> httpx.Response:
    response = post(body(text, stream=True, **fields), headers={"anthropic-version": version})
    assert response.status_code == 200, response.text
    return response


def test_headers_of_a_stream(post: Poster) -> None:
    response = stream(post)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["request-id"].startswith("req_")


def test_2023_06_01_framing_is_byte_exact(post: Poster) -> None:
    raw = stream(post).content
    events = split_events(raw)
    assert b"[DONE]" not in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")  # every line ends with CRLF
    assert events[2] == PING  # a ping after the 2nd token, exactly as captured
    completions = [e for e in events if e != PING]
    paddings = []
    for event in completions:
        match = COMPLETION_FRAME.fullmatch(event)
        assert match, event
        paddings.append(len(match.group(2)))
        assert list(json.loads(match.group(1) + b"}")) == KEY_ORDER
    assert paddings[:7] == [5, 8, 4, 11, 0, 10, 6]  # the padding sequence of the capture


def test_2023_06_01_payloads(post: Poster) -> None:
    payloads = completion_events(stream(post).content)
    *tokens, final = payloads
    ids = {p["id"] for p in payloads} | {p["log_id"] for p in payloads}
    assert len(ids) == 1
    assert all(p["type"] == "completion" and p["model"] == "claude-2.1" for p in payloads)
    assert all(p["stop_reason"] is None and p["stop"] is None for p in tokens)
    assert "".join(p["completion"] for p in tokens) == ECHO
    assert [p["completion"] for p in tokens[:3]] == [" Hello!", " I", " am"]
    assert (final["completion"], final["stop_reason"], final["stop"]) == ("", "stop_sequence", "\n\nHuman:")


def test_final_event_for_max_tokens(post: Poster) -> None:
    *tokens, final = completion_events(stream(post, "[[mock:tokens=9]]", max_tokens_to_sample=4).content)
    assert [t["completion"] for t in tokens] == [" tok0", " tok1", " tok2", " tok3"]
    assert (final["completion"], final["stop_reason"], final["stop"]) == ("", "max_tokens", None)


def test_pings_every_25_tokens(post: Poster) -> None:
    events = split_events(stream(post, "[[mock:tokens=60]]").content)
    seen, ping_after = 0, []
    for event in events:
        name, _ = parse_event(event)
        if name == "ping":
            ping_after.append(seen)
        else:
            seen += 1
    assert ping_after == [2, 27, 52]
    assert seen == 61


def test_stream_equals_non_stream(post: Poster) -> None:
    text = r"[[mock:reply=Alpha  beta\n\ngamma, delta!]]"
    streamed = "".join(p["completion"] for p in completion_events(stream(post, text).content))
    assert streamed == post(body(text)).json()["completion"] == "Alpha  beta\n\ngamma, delta!"


def test_2023_01_01_stream_is_cumulative_with_done(post: Poster) -> None:
    events = split_events(stream(post, version="2023-01-01").content)
    assert events[-1] == b"data: [DONE]"
    assert events.count(b"event: ping\r\ndata: {}") == 1
    assert events[2] == b"event: ping\r\ndata: {}"
    payloads = [json.loads(parse_event(e)[1]) for e in events[:-1] if parse_event(e)[0] is None]
    keys = ["completion", "stop_reason", "truncated", "stop", "model", "log_id", "exception"]
    assert all(list(p) == keys for p in payloads)
    texts = [p["completion"] for p in payloads]
    assert texts[0] == " Hello!"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    *partial, final = payloads
    assert all(p["stop_reason"] is None for p in partial)
    assert (final["completion"], final["stop_reason"], final["stop"]) == (ECHO, "stop_sequence", "\n\nHuman:")
    assert final["truncated"] is False and final["exception"] is None


def test_2023_01_01_short_stream_still_pings_once(post: Poster) -> None:
    events = split_events(stream(post, "[[mock:reply=ok]]", version="2023-01-01").content)
    assert [parse_event(e)[0] for e in events] == [None, "ping", None, None]
    assert events[-1] == b"data: [DONE]"


def test_stream_error_after(post: Poster) -> None:
    events = split_events(stream(post, "[[mock:tokens=10]][[mock:stream_error_after=3]]").content)
    assert (
        events[-1]
        == b'event: error\r\ndata: {"error": {"type": "overloaded_error", "message": "Overloaded"}}'
    )
    assert [parse_event(e)[0] for e in events] == ["completion", "completion", "ping", "completion", "error"]


def test_stream_error_type_and_message(post: Poster) -> None:
    text = "[[mock:stream_error_after=0]][[mock:error_type=api_error]][[mock:message=Internal server error]]"
    events = split_events(stream(post, text).content)
    assert events == [
        b'event: error\r\ndata: {"error": {"type": "api_error", "message": "Internal server error"}}'
    ]


def test_drop_connection_after(http: httpx.Client, mock: Server) -> None:
    payload = body("[[mock:tokens=10]][[mock:drop_connection_after=3]]", stream=True)
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", f"{mock.base_url}/v1/complete", json=payload, headers=HEADERS) as response,
    ):
        for chunk in response.iter_raw():
            received += chunk
    events = split_events(received)
    assert [parse_event(e)[0] for e in events] == ["completion", "completion", "ping", "completion"]
    assert mock.process.poll() is None
    assert "returned without completing" not in mock.log()


def test_tokens_arrive_one_by_one(mock: Server) -> None:
    """With a token delay the first event arrives long before the end of the stream."""
    payload = body("[[mock:tokens=5]][[mock:token_delay_ms=100]][[mock:first_token_delay_ms=0]]", stream=True)
    arrivals: list[float] = []
    started = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{mock.base_url}/v1/complete", json=payload, headers=HEADERS) as response,
    ):
        for chunk in response.iter_raw():
            if b"event: completion" in chunk:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 5
    assert arrivals[0] < 0.3
    assert arrivals[-1] >= 0.35  # four delays of 0.1 s after the first event


def test_first_token_delay(mock: Server) -> None:
    payload = body("[[mock:tokens=2]][[mock:first_token_delay_ms=400]]", stream=True)
    started = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{mock.base_url}/v1/complete", json=payload, headers=HEADERS) as response,
    ):
        headers_at = time.monotonic() - started
        chunks = response.iter_raw()
        first_chunk = next(chunks)
        body_at = time.monotonic() - started
        rest = b"".join(chunks)
    assert rest.endswith(b"\r\n\r\n")
    assert first_chunk.startswith(b"event: completion")
    assert headers_at < 0.3
    assert body_at >= 0.38
