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

    `on_complete` runs when the answer is whole, before its last bytes are written. Once the first
    bytes are out, the translator lets go of the prompts (`StreamTranslator.release_prompts`)."""
    try:
        out: list[Out] = translator.start()
        for index, stream in enumerate(streams):
            for event in stream.first:
                out += translator.feed(index, event)
            stream.first = []  # fed: the stream need not keep them
        if not translator.complete:
            await write(renderer.render(out))
            translator.release_prompts()
            out = []
            if len(streams) == 1:  # the common case, inline: no frame of its own per stream
                stream = streams[0]
                while (events := await stream.read()) is not None:
                    out = translator.feed(0, events[0]) if len(events) == 1 else _feed(translator, 0, events)
                    if translator.complete:
                        break
                    if out:
                        await write(renderer.render(out))
            else:
                async for index, events in _merge(streams, translator):
                    out = _feed(translator, index, events)
                    if translator.complete:
                        break
                    if out:
                        await write(renderer.render(out))
        if translator.complete:  # the answer is whole: its last bytes
            last = renderer.render(out)  # first: a renderer may hold state that `on_complete` reads
            if on_complete is not None and translator.error is None:
                await on_complete()
            await write(last)
    except Exception:  # A bug must not leave the client hanging without an end to the stream.
        log.exception("stream_relay_failed")
        if not translator.complete:
            await write(renderer.render(translator.fail(INTERNAL_FAILURE)))
    finally:
        await asyncio.gather(*(stream.aclose() for stream in streams), return_exceptions=True)


def _feed(translator: StreamTranslator, index: int, events: list[Event]) -> list[Out]:
    out: list[Out] = []
    for event in events:
        out += translator.feed(index, event)
    return out


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
