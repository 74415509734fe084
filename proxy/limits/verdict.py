"""What a backend decided for one admission, in a form shared by every backend (pure).

Backends only count; the headers and the error a client sees are built from a `Verdict` by
`proxy.limits.responses`, so the in-process and the Redis backend answer byte for byte alike.
All times are integer microseconds: exact in Python, in Lua doubles and in Redis sorted-set scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Limit = Literal["rpm", "tpm", "concurrency", "daily_tokens"]

#: The sliding window of `rpm` and `tpm`.
WINDOW_US = 60_000_000
#: The fixed window of `daily_tokens`: one UTC day (the Unix epoch starts at midnight UTC).
DAY_US = 86_400_000_000
#: When a concurrency slot frees cannot be known (it is when some request ends): clients are told this.
CONCURRENCY_RETRY_US = 1_000_000
#: `Verdict.wait_us` of a request that asks for more tokens than the limit could ever admit.
NEVER = -1

#: Refusal codes as the Redis script returns them (index) → limit.
REFUSAL_CODES: tuple[Limit | None, ...] = (None, "rpm", "tpm", "concurrency", "daily_tokens")


@dataclass(slots=True)
class Verdict:
    """The decision and the usage it was based on. On admission the usage includes the new request."""

    refused: Limit | None  # None: admitted (and recorded); otherwise nothing was recorded
    wait_us: int  # refused: time until enough capacity frees for this request; NEVER if it cannot
    requests: int  # requests in the sliding window
    requests_reset_us: int  # until the request window is empty again (OpenAI: "resets to its initial state")
    tokens: int  # tokens in the sliding window
    tokens_reset_us: int
    day_tokens: int  # tokens counted today (UTC)
    day_reset_us: int  # until 00:00 UTC
    concurrent: int  # requests of the key in flight


def worse(current: Limit | None, current_wait: int, limit: Limit, wait: int) -> tuple[Limit, int]:
    """The refusal to report when several limits refuse: one that can never fit first, then the longest
    wait (the request needs every limit at once, so it fits only when the slowest one frees up)."""
    if current is None or current_wait == NEVER:
        return (limit, wait) if current is None else (current, current_wait)
    if wait == NEVER or wait > current_wait:
        return limit, wait
    return current, current_wait
