"""The lighter stand-ins the server protocol (`proxy.http.protocol`) gives uvicorn for what every open
stream holds: `_Event` for `asyncio.Event`, `_Pipeline` for the pipelined-request deque, and the shared
lowercase header names and header fields. Each must behave as what it replaces."""

from __future__ import annotations

import asyncio
import sys

from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.http.protocol import _HEADER_NAMES, _SHAREABLE, ProxyHttpProtocol, _Event, _Pipeline


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


class _Fields:
    """What `on_header` reads and writes on a connection."""

    on_header = ProxyHttpProtocol.on_header
    _header_pair = ProxyHttpProtocol._header_pair

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_100_continue = False


_SPELLINGS = [b"Content-Type", b"content-type", b"X-Stainless-OS", b"User-Agent", b"Expect", b"expect"]
_NAMES = st.sampled_from([*_SPELLINGS, b"Host", b"Authorization", b"X-Request-Id", b"X-Custom"]) | st.binary(
    min_size=1, max_size=8
).map(lambda raw: bytes(b"abcXYZ-"[b % 7] for b in raw))
_VALUES = st.sampled_from(
    [b"100-continue", b"100-Continue \t", b"application/json", b"application/json  ", b"x" * 300, b""]
) | st.binary(max_size=12).map(lambda raw: bytes(b"ab \t1-"[b % 6] for b in raw))


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10))
def test_header_fields_are_uvicorns_the_first_time_and_again(fields: list[tuple[bytes, bytes]]) -> None:
    """The same fields (names lowercased, values without trailing whitespace, `Expect: 100-continue`
    noted) as uvicorn's `on_header`, when first seen and when found among the shared pairs."""
    for _ in range(2):
        theirs, ours = _Fields(), _Fields()
        for name, value in fields:
            HttpToolsProtocol.on_header(theirs, name, value)  # type: ignore[arg-type]
            ours.on_header(name, value)  # type: ignore[arg-type]
        assert ours.headers == theirs.headers
        assert ours.expect_100_continue == theirs.expect_100_continue


def test_a_repeated_constant_header_is_one_shared_pair_and_a_secret_never_is() -> None:
    first, second = _Fields(), _Fields()
    for fields in (first, second):
        fields.on_header(b"User-Agent", b"OpenAI/Python 1.59.7 ")  # type: ignore[arg-type]
        fields.on_header(b"Authorization", b"Bearer sk-secret")  # type: ignore[arg-type]
    assert first.headers == [
        (b"user-agent", b"OpenAI/Python 1.59.7"),
        (b"authorization", b"Bearer sk-secret"),
    ]
    assert first.headers[0] is second.headers[0]
    assert first.headers[1] is not second.headers[1] and b"authorization" not in _SHAREABLE
