"""`Slots` (the connection pool's limit) against `asyncio.Semaphore`, which it replaces on the request path:
on generated sequences of takes, gives and cancellations of waiting takers, the same takers hold a slot
after every step, in the same order."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream.http11 import Slots

OPS = st.lists(
    st.one_of(
        st.just(("take", 0)),
        st.tuples(st.just("give"), st.integers(0, 7)),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
    ),
    max_size=30,
)


async def settle() -> None:
    for _ in range(4):
        await asyncio.sleep(0)


async def holders(limit: int, ops: list[tuple[str, int]], *, reference: bool) -> list[list[int]]:
    """After each op, the numbers of the takers holding a slot (in the order they got it)."""
    semaphore = asyncio.Semaphore(limit)
    slots = Slots(limit)
    got: list[int] = []
    tasks: list[asyncio.Task[None]] = []
    seen: list[list[int]] = []

    async def taker(number: int) -> None:
        if reference:
            await semaphore.acquire()
        elif not slots.take_now():
            await slots.take()
        got.append(number)

    for op, index in ops:
        if op == "take":
            tasks.append(asyncio.create_task(taker(len(tasks))))
        elif op == "give" and got:
            got.pop(index % len(got))  # that holder is done
            semaphore.release() if reference else slots.give()
        elif op == "cancel" and tasks:
            task = tasks[index % len(tasks)]
            if not task.done():
                task.cancel()
        await settle()
        seen.append(list(got))
    for task in tasks:
        task.cancel()
    await settle()
    return seen


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 3), ops=OPS)
def test_slots_hand_out_as_asyncio_semaphore_does(limit: int, ops: list[tuple[str, int]]) -> None:
    expected = asyncio.run(holders(limit, ops, reference=True))
    assert asyncio.run(holders(limit, ops, reference=False)) == expected


async def test_a_waiter_handed_a_slot_as_it_is_cancelled_passes_it_on() -> None:
    slots = Slots(1)
    assert slots.take_now()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await settle()
    slots.give()  # handed to `first`, which is cancelled before it runs
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done() and not second.cancelled()  # the slot went on, not lost
    assert not slots.take_now()
    slots.give()
    assert slots.take_now()
