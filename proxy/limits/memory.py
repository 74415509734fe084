"""The in-process backend: exact sliding-window logs for one replica (pure: no I/O, clock injected).

Per key name it keeps
- `requests`: the admission times of the last 60 s (a deque, oldest first);
- `spends`: (time, tokens) of the same requests for `tpm`, plus their running sum;
- `active`: requests in flight; `day`, `day_used`: the tokens counted on the current UTC day.

An entry at time `t` counts while `now - t < 60 s`, so the window is `(now - 60 s, now]` and no
half-open 60-second interval can ever hold more admissions than `rpm` (or more reserved tokens than
`tpm`). Admission checks every limit first and records only when all pass; a refusal changes nothing
but the pruning of expired entries. Everything runs between two awaits, so asyncio needs no lock.

Memory is bounded: expired entries are dropped on each admission of their key, and every minute the
states of idle keys (empty windows, nothing in flight, no tokens today) are dropped altogether.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from proxy.limits.admission import NO_HEADERS, Admission
from proxy.limits.config import KeyLimits
from proxy.limits.verdict import CONCURRENCY_RETRY_US, DAY_US, NEVER, WINDOW_US, Limit, Verdict, worse

Clock = Callable[[], int]


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch (UTC, which the daily budget needs)."""
    return time.time_ns() // 1000


class Spend:
    """One request's tokens in the `tpm` window; `counted` turns false when it leaves the window."""

    __slots__ = ("at", "counted", "tokens")

    def __init__(self, at: int, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.counted = True


class KeyState:
    __slots__ = ("active", "day", "day_used", "requests", "spends", "spent")

    def __init__(self) -> None:
        self.requests: deque[int] = deque()
        self.spends: deque[Spend] = deque()
        self.spent = 0
        self.active = 0
        self.day = -1
        self.day_used = 0

    def prune(self, now: int) -> None:
        """Drop the entries that have left the sliding window."""
        cutoff = now - WINDOW_US
        requests = self.requests
        while requests and requests[0] <= cutoff:
            requests.popleft()
        spends = self.spends
        while spends and spends[0].at <= cutoff:
            spend = spends.popleft()
            spend.counted = False
            self.spent -= spend.tokens

    def idle(self, now: int) -> bool:
        self.prune(now)
        return (
            not self.requests
            and not self.spends
            and self.active == 0
            and (self.day_used == 0 or self.day != now // DAY_US)
        )


class MemoryAdmission(Admission):
    """What an admitted request reserved in a `KeyState`, to be settled and released."""

    __slots__ = ("_daily", "_day", "_recorded", "_slot", "_spend", "_state")

    def __init__(self, state: KeyState, spend: Spend | None, day: int, tokens: int, slot: bool) -> None:
        self.decision = "allowed"
        self.headers = NO_HEADERS  # set by the limiter
        self._state = state
        self._spend = spend
        self._daily = day >= 0
        self._day = day
        self._recorded = tokens
        self._slot = slot

    def settle_now(self, actual_tokens: int) -> None:
        actual = max(actual_tokens, 0)
        state = self._state
        spend = self._spend
        if spend is not None and spend.counted:
            state.spent += actual - spend.tokens
            spend.tokens = actual
        if self._daily and state.day == self._day:
            state.day_used = max(state.day_used + actual - self._recorded, 0)
        self._recorded = actual

    def release_now(self) -> None:
        if self._slot:
            self._slot = False
            self._state.active -= 1

    def __del__(self) -> None:
        # A safety net: an admission dropped without `release` (a bug) must not hold its slot forever.
        self.release_now()

    async def settle(self, actual_tokens: int) -> None:
        self.settle_now(actual_tokens)

    async def release(self) -> None:
        self.release_now()

    async def finish(self, actual_tokens: int | None = None) -> None:
        if actual_tokens is not None:
            self.settle_now(actual_tokens)
        self.release_now()


class MemoryStore:
    """Every key's windows in this process."""

    def __init__(self, clock: Clock = wall_clock_us) -> None:
        self.clock = clock
        self.states: dict[str, KeyState] = {}
        self._next_sweep = 0

    def admit(self, name: str, limits: KeyLimits, tokens: int) -> tuple[Verdict, MemoryAdmission | None]:
        """Decide and, when every limit allows it, record. The admission is None when refused."""
        now = self.clock()
        if now >= self._next_sweep:
            self.sweep(now)
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = KeyState()
        state.prune(now)
        if tokens < 0:
            tokens = 0
        refused: Limit | None = None
        wait = 0
        requests = state.requests
        spends = state.spends

        rpm = limits.rpm
        if rpm is not None and len(requests) >= rpm:
            # The request fits once all but rpm - 1 of the logged ones have left the window.
            refused, wait = worse(refused, wait, "rpm", requests[len(requests) - rpm] + WINDOW_US - now)
        tpm = limits.tpm
        if tpm is not None:
            if tokens > tpm:
                refused, wait = worse(refused, wait, "tpm", NEVER)
            elif state.spent + tokens > tpm:
                refused, wait = worse(refused, wait, "tpm", self._tokens_wait(state, tokens - tpm, now))
        max_concurrent = limits.max_concurrent
        if max_concurrent is not None and state.active >= max_concurrent:
            refused, wait = worse(refused, wait, "concurrency", CONCURRENCY_RETRY_US)
        daily = limits.daily_tokens
        day = now // DAY_US
        if state.day != day:
            state.day, state.day_used = day, 0
        if daily is not None:
            if tokens > daily:
                refused, wait = worse(refused, wait, "daily_tokens", NEVER)
            elif state.day_used + tokens > daily:
                refused, wait = worse(refused, wait, "daily_tokens", (day + 1) * DAY_US - now)

        admission = None
        if refused is None:
            spend = None
            if rpm is not None:
                requests.append(now)
            if tpm is not None:
                spend = Spend(now, tokens)
                spends.append(spend)
                state.spent += tokens
            if max_concurrent is not None:
                state.active += 1
            if daily is not None:
                state.day_used += tokens
            admission = MemoryAdmission(
                state, spend, day if daily is not None else -1, tokens, max_concurrent is not None
            )
        verdict = Verdict(
            refused,
            wait,
            len(requests),
            requests[-1] + WINDOW_US - now if requests else 0,
            state.spent,
            spends[-1].at + WINDOW_US - now if spends else 0,
            state.day_used,
            (day + 1) * DAY_US - now,
            state.active,
        )
        return verdict, admission

    @staticmethod
    def _tokens_wait(state: KeyState, excess: int, now: int) -> int:
        """Until the oldest spends holding `spent + tokens - tpm` tokens have left the window."""
        need = state.spent + excess
        freed = 0
        for spend in state.spends:
            freed += spend.tokens
            if freed >= need:
                return spend.at + WINDOW_US - now
        raise AssertionError("unreachable: the whole window frees at least `need` tokens")

    def sweep(self, now: int) -> None:
        """Forget idle keys so memory stays bounded by the keys active in the last minute (or today)."""
        for name in [name for name, state in self.states.items() if state.idle(now)]:
            del self.states[name]
        self._next_sweep = now + WINDOW_US
