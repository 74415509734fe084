"""The relay: open upstream streams → the stream translator → a renderer → the client, one piece at a time.

Nothing is buffered beyond the piece in hand: each upstream read is decoded, translated and written
before the next read, and what is ready together (the openings with the first events, a last piece
with its finish, the usage with `[DONE]`) goes out as one write. With `n > 1` the choices' streams are
read concurrently and merged in arrival order. The relay stops reading as soon as the translator has
said everything (the final upstream event, or a transform that ended a choice), so the client gets
its last chunk at once even if the upstream keeps its body open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog

from proxy.translate.events import Event, Failure
from proxy.translate.render import StreamRenderer
from proxy.translate.stream import Out, StreamTranslator
from proxy.upstream.client import UpstreamStream

Write = Callable[[bytes], Awaitable[None]]

log = structlog.get_logger("proxy.stream")

INTERNAL_FAILURE = Failure("internal_error", "The proxy failed while streaming this response.")


async def relay(
    streams: Sequence[UpstreamStream],
    translator: StreamTranslator,
    renderer: StreamRenderer,
    write: Write,
    *,
    on_complete: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Write the whole response for already-opened upstream streams; always ends with the surface's end.

    `on_complete` runs when the answer is whole, before its last bytes are written."""
    if on_complete is not None:
        inner, pending = write, [on_complete]

        async def write(chunk: bytes) -> None:
            if pending and translator.complete and translator.error is None:
                await pending.pop()()
            await inner(chunk)

    try:
        out: list[Out] = translator.start()
        for index, stream in enumerate(streams):
            for event in stream.first:
                out += translator.feed(index, event)
        await write(renderer.render(out))
        if translator.complete:
            return
        if len(streams) == 1:  # the common case, inline: no frame of its own per stream
            stream, feed, render = streams[0], translator.feed, renderer.render
            while not translator.complete:
                events = await stream.read()
                if events is None:
                    break
                if len(events) == 1:
                    out = feed(0, events[0])
                else:
                    out = []
                    for event in events:
                        out += feed(0, event)
                if out:
                    await write(render(out))
        else:
            async for index, events in _merge(streams, translator):
                out = []
                for event in events:
                    out += translator.feed(index, event)
                if out:
                    await write(renderer.render(out))
                if translator.complete:
                    break
    except Exception:  # A bug must not leave the client hanging without an end to the stream.
        log.exception("stream_relay_failed")
        if not translator.complete:
            await write(renderer.render(translator.fail(INTERNAL_FAILURE)))
    finally:
        await asyncio.gather(*(stream.aclose() for stream in streams), return_exceptions=True)


async def _merge(
    streams: Sequence[UpstreamStream], translator: StreamTranslator
) -> AsyncIterator[tuple[int, list[Event]]]:
    """Interleave several streams' reads by arrival, each tagged with its choice index; a choice the
    translator has finished is not read further."""
    queue: asyncio.Queue[tuple[int, list[Event] | None]] = asyncio.Queue()

    async def forward(index: int, stream: UpstreamStream) -> None:
        try:
            while not translator.finished[index] and (events := await stream.read()) is not None:
                queue.put_nowait((index, events))
        finally:
            queue.put_nowait((index, None))  # also when cancelled: the merge counts every stream's end

    tasks = [asyncio.create_task(forward(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, events = await queue.get()
            if events is None:
                remaining -= 1
            else:
                yield index, events
                if translator.finished[index]:
                    tasks[index].cancel()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
