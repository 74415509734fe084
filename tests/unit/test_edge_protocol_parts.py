"""The lighter stand-ins the server protocol (`proxy.http.protocol`) gives uvicorn for what every open
stream holds: `_Event` for `asyncio.Event`, `_Pipeline` for the pipelined-request deque, and the shared
lowercase header names. Each must behave as what it replaces."""

from __future__ import annotations

import asyncio
import sys

from proxy.http.protocol import _HEADER_NAMES, _Event, _Pipeline


async def test_event_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    event = _Event()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert event.is_set() and await event.wait()  # set: returns at once
    event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    event.set()
    assert await late


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    event = _Event()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert not event._waiters  # nothing is kept for a waiter that left
    event.set()  # nothing to wake: no error


async def test_an_event_made_set_does_not_block() -> None:
    assert await asyncio.wait_for(_Event(True).wait(), 1)


def test_pipeline_is_a_queue_oldest_first_and_smaller_than_a_deque() -> None:
    pipeline = _Pipeline()
    assert not pipeline
    for item in ("first", "second", "third"):
        pipeline.appendleft(item)  # what uvicorn does with each pipelined request
    assert [pipeline.pop(), pipeline.pop(), pipeline.pop()] == ["first", "second", "third"]
    assert not pipeline
    from collections import deque

    assert sys.getsizeof(_Pipeline()) < sys.getsizeof(deque()) / 5


def test_common_header_names_map_every_usual_spelling_to_one_lowercase_object() -> None:
    for spelling in (b"content-type", b"Content-Type", b"X-Stainless-OS", b"User-Agent", b"authorization"):
        name = _HEADER_NAMES[spelling]
        assert name == spelling.lower()
        assert name is _HEADER_NAMES[name]  # the same object whatever the spelling
