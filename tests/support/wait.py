"""Bounded polling: wait for something to happen instead of sleeping for a guessed time.

A sleep long enough for a loaded CI machine is wasted time everywhere else, and still a guess; a poll
returns as soon as the condition holds and fails loudly, naming what did not happen, at its deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

#: Generous: a poll returns as soon as its condition holds, so only a real failure waits this long.
TIMEOUT = 15.0


def _ready(result: object) -> bool:
    return result is not None and result is not False


def wait_until(condition: Callable[[], T | None], what: str, *, within: float = TIMEOUT) -> T:
    """Call `condition` until it returns something other than None or False, and return that."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if _ready(result):
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.02)


async def eventually(
    condition: Callable[[], T | Awaitable[T | None] | None], what: str, *, within: float = TIMEOUT
) -> T:
    """`wait_until` on the running event loop; `condition` may be a plain or a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if _ready(result):
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.01)


def in_flight(base_url: str, what: str = "requests") -> float:
    """The proxy's `claude_proxy_in_flight_<what>` gauge (`requests` or `streams`): what a test waits on
    before it acts on a request that must be under way."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).raise_for_status().text
    name = f"claude_proxy_in_flight_{what}"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in /metrics")
