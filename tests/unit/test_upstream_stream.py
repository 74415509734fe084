"""UpstreamStream over a body whose pieces the test chooses: what one read brings, and where the
first event ends."""

from __future__ import annotations

import asyncio

from proxy.translate.events import EventDecoder, Failure, Piece
from proxy.upstream.client import UpstreamStream


class Body:
    """A response whose body arrives as the given pieces."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.closed = False

    def set_deadline(self, when: float) -> None:
        pass

    async def next_chunk(self) -> bytes | None:
        return self.pieces.pop(0) if self.pieces else None

    def release(self) -> None:
        self.closed = True


def event(text: str, stop: str | None = None) -> bytes:
    stop_json = "null" if stop is None else f'"{stop}"'
    return (
        f'event: completion\r\ndata: {{"completion": "{text}", "stop_reason": {stop_json}}}\r\n\r\n'.encode()
    )


PING = b"event: ping\r\ndata: {}\r\n\r\n"
ERROR = b'event: error\r\ndata: {"error": {"type": "overloaded_error", "message": "busy"}}\r\n\r\n'


def stream(*pieces: bytes) -> UpstreamStream:
    loop = asyncio.get_running_loop()
    return UpstreamStream(Body(*pieces), EventDecoder("2023-06-01"), loop.time() + 60)  # type: ignore[arg-type]


async def test_what_follows_the_first_event_in_the_same_read_comes_with_the_next_read() -> None:
    upstream = stream(PING + event(" Hi") + event(" there") + ERROR)
    assert [type(e).__name__ for e in await upstream.open()] == ["Ping", "Piece"]
    assert await upstream.read() == [Piece(" there"), Failure("overloaded_error", "busy")]
    assert await upstream.read() is None


async def test_a_whole_answer_in_one_read() -> None:
    upstream = stream(event(" Hi") + event("", "stop_sequence"))
    assert await upstream.open() == [Piece(" Hi")]
    assert await upstream.read() == [Piece("", "stop_sequence")]
    assert await upstream.read() is None
    await upstream.aclose()


async def test_a_failure_before_any_text_is_the_first_event() -> None:
    upstream = stream(PING, ERROR + event(" late"))
    assert [type(e).__name__ for e in await upstream.open()] == ["Ping", "Failure"]
