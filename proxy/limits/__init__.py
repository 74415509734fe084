"""Per-key rate limits (rpm, tpm, concurrency, daily tokens), in-process or shared through Redis.

See docs/limits.md for the semantics, the headers, the algorithm and the Redis layout.
"""

from proxy.limits.admission import Admission
from proxy.limits.config import KeyLimits, LimitsConfig
from proxy.limits.limiter import Limiter
from proxy.limits.responses import BackendUnavailable, RateLimited
from proxy.limits.verdict import Limit

__all__ = ["Admission", "BackendUnavailable", "KeyLimits", "Limit", "Limiter", "LimitsConfig", "RateLimited"]
