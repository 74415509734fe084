"""The handle a request holds between its admission and its end."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Admission:
    """An admitted request. This base class holds nothing (an unlimited key, or a fail-open admission);
    the backends subclass it to give back what the request reserved.

    `headers` are the `x-ratelimit-*` headers for the response (read-only); `decision` is for the access
    log: `allowed`, `unlimited` or `fail_open`. Call `finish` (or `settle` and `release`) exactly when
    the request ends, in a `finally`: a slot that is never released is only freed by its lease (Redis)
    or never (in-process).
    """

    __slots__ = ("decision", "headers")

    def __init__(self, decision: str, headers: Mapping[str, str] = NO_HEADERS) -> None:
        self.decision = decision
        self.headers = headers

    async def settle(self, actual_tokens: int) -> None:
        """Replace the tokens reserved at admission by the request's real count (may be called again)."""

    async def release(self) -> None:
        """Free the concurrency slot. Idempotent."""

    async def finish(self, actual_tokens: int | None = None) -> None:
        """`settle` (when a count is given) and `release` together: one round trip on Redis. This base
        class holds nothing, so there is nothing to do (one coroutine per request, not three); a backend's
        admission overrides all three."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.decision!r})"


#: What an unlimited key gets: no backend is touched and nothing needs to be given back.
UNLIMITED = Admission("unlimited")
#: What a request gets when the backend is unreachable and the policy is `open`.
FAIL_OPEN = Admission("fail_open")
