"""The streaming pump: open upstream streams → OpenAI SSE bytes, one event at a time.

Pipeline: upstream bytes → SSE events → decoded events (`proxy.upstream`) → OpenAI chunks
(`ChunkWriter`) → SSE bytes. Nothing is buffered beyond the event in hand: each upstream piece is
written as soon as it arrives. With `n > 1` the choices' streams are merged in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

import structlog

from proxy.translate.events import Event, Failure, Piece, Ping
from proxy.translate.responses import DONE, ChunkWriter, estimate_usage, finish_reason, sse
from proxy.translate.upstream_errors import in_stream_error
from proxy.upstream.client import UpstreamStream

KEEP_ALIVE = b": ping\n\n"

log = structlog.get_logger("proxy.stream")


@dataclass
class StreamResult:
    """What the stream produced, filled in as it goes (read by the access log)."""

    texts: list[list[str]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    error: str | None = None
    started: float | None = None  # perf_counter when the first chunk (the opening) was produced


async def _merge(streams: Sequence[UpstreamStream]) -> AsyncIterator[tuple[int, Event]]:
    """Interleave several streams' events by arrival, each tagged with its choice index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()

    async def forward(index: int, stream: UpstreamStream) -> None:
        async for event in stream:
            await queue.put((index, event))
        await queue.put((index, None))

    tasks = [asyncio.create_task(forward(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pump(
    streams: Sequence[UpstreamStream],
    writer: ChunkWriter,
    prompts: Sequence[str],
    echo: Sequence[str] | None,
    n: int,
    result: StreamResult,
) -> AsyncGenerator[bytes, None]:
    """OpenAI SSE bytes for already-opened upstream streams; always ends with `data: [DONE]`."""
    result.texts = [[] for _ in streams]
    result.started = time.perf_counter()

    def on_event(index: int, event: Event) -> list[bytes]:
        if isinstance(event, Piece):
            out = []
            if event.text:
                result.texts[index].append(event.text)
                out.append(writer.content(index, event.text))
            if event.stop_reason is not None:
                out.append(writer.finish(index, finish_reason(event.stop_reason)))
            return out
        if isinstance(event, Ping):
            return [KEEP_ALIVE]
        raise _StreamFailed(event)

    try:
        # What is ready at once goes out as one write: the openings with every first event, then each
        # event's chunks (a last piece and its finish chunk together), then usage with [DONE].
        opening: list[bytes] = []
        for index, stream in enumerate(streams):
            role = writer.opening(index)
            if role is not None:
                opening.append(role)
            if echo is not None:
                opening.append(writer.content(index, echo[index // n]))
            opening += on_event(index, stream.first)
        if opening:
            yield b"".join(opening)
        async for index, event in _merge(streams):
            out = on_event(index, event)
            if out:
                yield b"".join(out)  # one chunk: the same object, not a copy
        if writer.include_usage:
            result.usage = estimate_usage(prompts, ["".join(t) for t in result.texts])
            yield writer.usage(result.usage) + DONE
        else:
            yield DONE
    except _StreamFailed as failed:
        result.error = failed.failure.type
        yield sse(in_stream_error(failed.failure.type, failed.failure.message)) + DONE
    except Exception:  # A bug must not leave the client hanging without an end to the stream.
        log.exception("stream_pump_failed")
        result.error = "internal_error"
        yield sse(in_stream_error("internal_error", "The proxy failed while streaming this response.")) + DONE
    finally:
        await asyncio.gather(*(stream.aclose() for stream in streams), return_exceptions=True)


class _StreamFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure
