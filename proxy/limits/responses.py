"""Rate-limit headers and errors, as OpenAI sends them (pure).

| limit | OpenAI `type` | phrase in the message | headers |
|---|---|---|---|
| `rpm` | `requests` | requests per min (RPM) | `x-ratelimit-{limit,remaining,reset}-requests` |
| `tpm` | `tokens` | tokens per min (TPM) | `x-ratelimit-{limit,remaining,reset}-tokens` |
| `concurrency` | `requests` | concurrent requests | none (OpenAI has no such header) |
| `daily_tokens` | `tokens` | tokens per day (TPD) | `x-ratelimit-{limit,remaining,reset}-tokens-day` (not OpenAI's) |

Headers of a limit are sent only when the key has that limit. Rejections are 429 with code
`rate_limit_exceeded` plus `retry-after` (whole seconds, rounded up) and `retry-after-ms`; a request
larger than its limit could ever admit is a 429 "Request too large" with `x-should-retry: false`. A
wait longer than every SDK honours (an exhausted daily budget) keeps its true `retry-after` and gets
`x-should-retry: false` too: openai-python 1.x and Node would back off a few seconds and retry in vain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from proxy.errors import OpenAIError
from proxy.limits.config import KeyLimits
from proxy.limits.verdict import NEVER, Limit, Verdict

#: The longest `retry-after` every OpenAI SDK waits for before retrying (reference: 60 s).
MAX_HONOURED_WAIT_MS = 60_000


@dataclass(frozen=True, slots=True)
class LimitInfo:
    type: Literal[
        "requests", "tokens"
    ]  # OpenAI's error `type`; also what a request asks for: 1 or its tokens
    phrase: str


LIMITS: dict[Limit, LimitInfo] = {
    "rpm": LimitInfo("requests", "requests per min (RPM)"),
    "tpm": LimitInfo("tokens", "tokens per min (TPM)"),
    "concurrency": LimitInfo("requests", "concurrent requests"),
    "daily_tokens": LimitInfo("tokens", "tokens per day (TPD)"),
}


@lru_cache(maxsize=1024)
def format_duration(milliseconds: int) -> str:
    """A duration as OpenAI's reset headers spell it (Go's `time.Duration` at millisecond precision):
    `0s`, `59ms`, `1s`, `8.64s`, `1m30.5s`, `6m0s`, `1h0m0s`. Cached: most values repeat (`1m0s`)."""
    if milliseconds < 1000:
        return f"{milliseconds}ms" if milliseconds > 0 else "0s"
    seconds, millis = divmod(milliseconds, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{seconds}.{millis:03d}".rstrip("0") + "s" if millis else f"{seconds}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _ms(microseconds: int) -> int:
    """Microseconds → milliseconds, rounded up: a client told to wait must never be early."""
    return -(-microseconds // 1000)


def rate_limit_headers(limits: KeyLimits, verdict: Verdict) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a response of a limited key, admitted or not. The daily reset is
    rounded up to whole seconds: it is hours long, and so it formats once a second, not per request."""
    headers: dict[str, str] = {}
    rpm = limits.rpm
    if rpm is not None:
        remaining = rpm - verdict.requests
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(remaining) if remaining > 0 else "0"
        headers["x-ratelimit-reset-requests"] = format_duration(-(-verdict.requests_reset_us // 1000))
    tpm = limits.tpm
    if tpm is not None:
        remaining = tpm - verdict.tokens
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(remaining) if remaining > 0 else "0"
        headers["x-ratelimit-reset-tokens"] = format_duration(-(-verdict.tokens_reset_us // 1000))
    daily = limits.daily_tokens
    if daily is not None:
        remaining = daily - verdict.day_tokens
        headers["x-ratelimit-limit-tokens-day"] = str(daily)
        headers["x-ratelimit-remaining-tokens-day"] = str(remaining) if remaining > 0 else "0"
        headers["x-ratelimit-reset-tokens-day"] = format_duration(
            -(-verdict.day_reset_us // 1_000_000) * 1000
        )
    return headers


class RateLimited(OpenAIError):
    """A 429 for a key over one of its limits. `limit` says which; `too_large` that it can never fit."""

    def __init__(self, limit: Limit, message: str, headers: Mapping[str, str], too_large: bool) -> None:
        super().__init__(429, message, type=LIMITS[limit].type, code="rate_limit_exceeded", headers=headers)
        self.limit: Limit = limit
        self.too_large = too_large

    @property
    def decision(self) -> str:
        """For the access log: `rejected:<limit>`, or `too_large:<limit>`."""
        return f"{'too_large' if self.too_large else 'rejected'}:{self.limit}"


class BackendUnavailable(OpenAIError):
    """A 503 when the limit store cannot be reached and the policy is `closed`."""

    decision = "fail_closed"

    def __init__(self) -> None:
        super().__init__(
            503,
            "The rate-limit service of this proxy is unavailable, so the request was not admitted. "
            "Please retry shortly.",
            type="server_error",
            code="rate_limit_backend_unavailable",
            headers={"x-should-retry": "true"},
        )


def _usage(limit: Limit, limits: KeyLimits, verdict: Verdict) -> tuple[int, int]:
    """(configured limit, current usage) of one limit."""
    if limit == "rpm":
        return limits.rpm or 0, verdict.requests
    if limit == "tpm":
        return limits.tpm or 0, verdict.tokens
    if limit == "concurrency":
        return limits.max_concurrent or 0, verdict.concurrent
    return limits.daily_tokens or 0, verdict.day_tokens


def rejection(key_name: str, limits: KeyLimits, tokens: int, verdict: Verdict) -> RateLimited:
    """The 429 for a refused verdict, worded as OpenAI words it. Names the key, never shows it."""
    limit = verdict.refused
    assert limit is not None, "only refused verdicts are rejections"
    info = LIMITS[limit]
    cap, used = _usage(limit, limits, verdict)
    requested = tokens if info.type == "tokens" else 1
    headers = rate_limit_headers(limits, verdict)
    if verdict.wait_us == NEVER:
        headers["x-should-retry"] = "false"
        message = (
            f"Request too large for {info.phrase} on key '{key_name}': Limit {cap}, Requested {requested}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
        return RateLimited(limit, message, headers, too_large=True)
    wait_ms = max(_ms(verdict.wait_us), 1)
    if wait_ms > MAX_HONOURED_WAIT_MS:
        headers["x-should-retry"] = "false"
    headers["retry-after"] = str(-(-wait_ms // 1000))
    headers["retry-after-ms"] = str(wait_ms)
    message = (
        f"Rate limit reached for {info.phrase} on key '{key_name}': Limit {cap}, Used {used}, "
        f"Requested {requested}. Please try again in {format_duration(wait_ms)}."
    )
    return RateLimited(limit, message, headers, too_large=False)
