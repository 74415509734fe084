"""The limiter the request handlers call: admit a request of a key, or refuse it with OpenAI's 429.

    admission = await limiter.admit(key_name, limits, tokens)   # raises RateLimited / BackendUnavailable
    try:
        ...                                                     # serve; admission.headers on the response
    finally:
        await admission.finish(actual_tokens)                   # settle the tokens, free the slot

A key without any limit gets the shared `UNLIMITED` admission without touching a backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from proxy.limits.admission import UNLIMITED, Admission
from proxy.limits.config import KeyLimits
from proxy.limits.memory import Clock, MemoryStore, wall_clock_us
from proxy.limits.responses import rate_limit_headers, rejection


class Limiter(ABC):
    """Admission control for client keys. `proxy.limits.limiter_for` picks the backend."""

    @abstractmethod
    async def admit(self, key_name: str, limits: KeyLimits, tokens: int) -> Admission:
        """Admit one request of `key_name` asking for `tokens` (estimated prompt tokens + max_tokens, for
        every choice), or raise `RateLimited` (429) or `BackendUnavailable` (503) with their headers.
        `key_name` is the key's configured name, never the key itself: it appears in messages."""

    @abstractmethod
    async def ping(self) -> str:
        """`ok`, or a short reason the backend cannot be used (for /readyz)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the backend's connections and background tasks."""


class MemoryLimiter(Limiter):
    """Counters in this process: exact for a single replica."""

    def __init__(self, clock: Clock = wall_clock_us) -> None:
        self.store = MemoryStore(clock)

    async def admit(self, key_name: str, limits: KeyLimits, tokens: int) -> Admission:
        if limits.unlimited:
            return UNLIMITED
        verdict, admission = self.store.admit(key_name, limits, tokens)
        if admission is None:
            raise rejection(key_name, limits, tokens, verdict)
        admission.headers = rate_limit_headers(limits, verdict)
        return admission

    async def ping(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        """Nothing to release: the counters die with the process."""
