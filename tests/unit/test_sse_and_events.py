"""Upstream bytes → SSE events → decoded events, including the real captured 2023-06-01 stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.translate.events import PING, EventDecoder, Failure, Piece
from proxy.upstream.sse import SSEDecoder

# The byte stream Anthropic's API sent in 2024 (claude-2.1, official Python SDK), as captured.
_ID = "compl_015dfgyiT7JLszAiMbGMtgeG"


def _completion(text: str, pad: int, stop: bool = False) -> bytes:
    reason, seq = ('"stop_sequence"', '"\\n\\nHuman:"') if stop else ("null", "null")
    return (
        f'event: completion\r\ndata: {{"type":"completion","id":"{_ID}","completion":"{text}","stop_reason":{reason},'
        f'"model":"claude-2.1","stop":{seq},"log_id":"{_ID}"{" " * pad}}}\r\n\r\n'
    ).encode()


CAPTURED = b"".join(
    [
        _completion(" Light", 5),
        _completion(" sc", 8),
        b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n',
        _completion("at", 4),
        _completion("ters", 11),
        _completion(" blue", 0),
        _completion(".", 10),
        _completion("", 6, stop=True),
    ]
)


def decode_all(chunks: list[bytes], version: str = "2023-06-01") -> list[object]:
    sse, events = SSEDecoder(), EventDecoder(version)
    out = [events.decode(name, data) for chunk in chunks for name, data in sse.feed(chunk)]
    return out + [events.decode(name, data) for name, data in sse.close()]


EXPECTED = [
    Piece(" Light"),
    Piece(" sc"),
    PING,
    Piece("at"),
    Piece("ters"),
    Piece(" blue"),
    Piece("."),
    Piece("", "stop_sequence"),
]


def test_captured_stream_in_one_read() -> None:
    assert decode_all([CAPTURED]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(CAPTURED)), max_size=40))
def test_captured_stream_split_anywhere(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [CAPTURED[a:b] for a, b in zip([0, *points], [*points, len(CAPTURED)], strict=True)]
    assert decode_all(chunks) == EXPECTED


@given(st.sampled_from(["\n", "\r", "\r\n"]), st.lists(st.integers(min_value=1, max_value=30), max_size=5))
def test_any_line_ending_and_split(newline: str, sizes: list[int]) -> None:
    text = (
        f'event: completion{newline}data: {{"completion": "héllo ✓", "stop_reason": null}}{newline}{newline}'
    )
    text += f': comment{newline}data:{{"completion":"","stop_reason":"max_tokens"}}{newline}{newline}'
    raw = text.encode()
    chunks, start = [], 0
    for size in sizes:
        chunks.append(raw[start : start + size])
        start += size
    chunks.append(raw[start:])
    assert decode_all(chunks) == [Piece("héllo ✓"), Piece("", "max_tokens")]


def test_multibyte_character_split_across_reads() -> None:
    raw = 'data: {"completion": "日本", "stop_reason": null}\n\n'.encode()
    split = raw.index("本".encode()) + 1
    assert decode_all([raw[:split], raw[split:]]) == [Piece("日本")]


def test_last_event_without_blank_line_and_multi_line_data() -> None:
    sse = SSEDecoder()
    assert sse.feed(b"data: a\ndata: b\n\nevent: x\ndata: tail") == [(None, "a\nb")]
    assert sse.close() == [("x", "tail")]


def test_error_event_and_unknown_event() -> None:
    decoder = EventDecoder("2023-06-01")
    assert decoder.decode(
        "error", '{"error": {"type": "overloaded_error", "message": "Overloaded"}}'
    ) == Failure("overloaded_error", "Overloaded")
    assert decoder.decode("something_new", '{"x": 1}') == PING
    assert isinstance(decoder.decode("completion", "not json"), Failure)


def test_cumulative_2023_01_01_stream_becomes_deltas() -> None:
    raw = (
        b'data: {"completion": " Hello", "stop_reason": null, "truncated": false, "stop": null, "exception": null}\r\n\r\n'
        b'data: {"completion": " Hello!", "stop_reason": null}\r\n\r\n'
        b"event: ping\r\ndata: {}\r\n\r\n"
        b'data: {"completion": " Hello! My name is Claude.", "stop_reason": "stop_sequence"}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    assert decode_all([raw], "2023-01-01") == [
        Piece(" Hello"),
        Piece("!"),
        PING,
        Piece(" My name is Claude.", "stop_sequence"),
        PING,
    ]
