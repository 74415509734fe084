"""Per-key rate limits (rpm, tpm, concurrency, daily tokens), in-process or shared through Redis.

See docs/limits.md for the semantics, the headers, the algorithm and the Redis layout.
"""

from proxy.limits.admission import Admission
from proxy.limits.config import KeyLimits, LimitsConfig
from proxy.limits.limiter import Limiter, MemoryLimiter
from proxy.limits.memory import Clock, wall_clock_us
from proxy.limits.responses import BackendUnavailable, RateLimited
from proxy.limits.verdict import Limit


def limiter_for(config: LimitsConfig, clock: Clock = wall_clock_us) -> Limiter:
    """The limiter for `config.backend`. `clock` (microseconds since the epoch) is for tests of the
    in-process backend; the Redis backend uses Redis's own clock so that replicas agree."""
    if config.backend == "redis":
        from proxy.limits.redis_backend import RedisLimiter  # redis is imported only when used

        return RedisLimiter(config)
    return MemoryLimiter(clock)


__all__ = [
    "Admission",
    "BackendUnavailable",
    "KeyLimits",
    "Limit",
    "Limiter",
    "LimitsConfig",
    "RateLimited",
    "limiter_for",
]
