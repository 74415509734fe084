"""Rate-limit settings: the limits of one client key, and where the counters live.

Kept free of `proxy.config` imports so that `proxy.config` can embed these models without a cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, SecretStr, model_validator


class KeyLimits(BaseModel):
    """The limits of one client key. `None` means unlimited; a key with no limit at all costs nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Requests admitted in any sliding 60-second window (OpenAI's RPM).
    rpm: PositiveInt | None = None
    #: Tokens admitted in any sliding 60-second window (OpenAI's TPM). A request reserves its estimated
    #: prompt tokens plus its max_tokens on admission; the reservation is replaced by the real estimate
    #: when the request ends.
    tpm: PositiveInt | None = None
    #: Requests of this key in flight at the same time (streams included, until their last byte).
    max_concurrent: PositiveInt | None = None
    #: Tokens per UTC day (reserved and settled like `tpm`); the budget resets at 00:00 UTC.
    daily_tokens: PositiveInt | None = None

    @property
    def unlimited(self) -> bool:
        return (
            self.rpm is None
            and self.tpm is None
            and self.max_concurrent is None
            and self.daily_tokens is None
        )


class LimitsConfig(BaseModel):
    """Where the limit counters live and what happens when that store is unreachable."""

    # Validation errors never echo the input: it may hold the Redis password.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    #: `memory`: counters in this process (exact for one replica). `redis`: counters in Redis, exact
    #: across every replica that shares it.
    backend: Literal["memory", "redis"] = "memory"
    #: `redis://[[user]:password@]host:port/db`, `rediss://...` (TLS) or `unix:///path.sock`; required for
    #: the redis backend. Keep the password out of files: set PROXY_LIMITS__REDIS_URL.
    redis_url: SecretStr | None = None
    #: When Redis cannot be reached: `open` admits the request without limits (decision `fail_open`,
    #: a warning at most every 10 s); `closed` rejects it with 503 `rate_limit_backend_unavailable`.
    on_backend_error: Literal["open", "closed"] = "open"
    #: Prefix of every Redis key, so several deployments can share one Redis.
    key_prefix: str = "clp:"
    #: Socket connect and read timeout for Redis, in seconds. Short: a slow Redis must not stall requests.
    timeout: float = Field(0.25, gt=0, le=10)
    #: Seconds a concurrency slot survives in Redis without renewal. Each replica renews its slots every
    #: third of this, so long streams keep theirs; the slots of a crashed replica free up after it.
    concurrency_lease: float = Field(30.0, ge=3, le=3600)
    #: Limits of client keys that configure none of their own.
    default: KeyLimits = Field(default_factory=KeyLimits)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> LimitsConfig:
        if self.backend == "redis":
            if self.redis_url is None:
                raise ValueError("redis_url is required when backend is redis")
            url = self.redis_url.get_secret_value()
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("redis_url must start with redis://, rediss:// or unix://")
            from redis.connection import parse_url  # only when Redis is configured

            try:
                parse_url(url)  # type: ignore[no-untyped-call]
            except ValueError as exc:  # the message names the part, never the URL (it may hold a password)
                raise ValueError(f"redis_url is not a valid Redis URL: {exc}") from None
        return self
