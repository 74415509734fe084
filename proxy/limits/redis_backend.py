"""The Redis backend: every limit exact across replicas, through the atomic scripts of `scripts.py`.

One round trip admits (EVALSHA of ADMIT) and one settles and releases (FINISH). Concurrency slots are
leases: each replica renews the leases of its requests in flight every third of `concurrency_lease`,
so a long stream keeps its slot and the slots of a crashed replica free up within one lease.

When Redis fails (refused, timed out, any Redis error), `on_backend_error` decides: `open` admits with
decision `fail_open`, `closed` raises `BackendUnavailable` (503). For the next second requests do not
wait for Redis at all; then the next request tries again, so the proxy recovers by itself. Warnings are
logged at most every `WARN_INTERVAL` seconds, and never show the password of the Redis URL.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qsl, quote, urlsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from proxy.limits.admission import FAIL_OPEN, UNLIMITED, Admission
from proxy.limits.config import KeyLimits, LimitsConfig
from proxy.limits.limiter import Limiter
from proxy.limits.responses import BackendUnavailable, rate_limit_headers, rejection
from proxy.limits.scripts import ADMIT, FINISH, RENEW
from proxy.limits.verdict import CONCURRENCY_RETRY_US, REFUSAL_CODES, Verdict

log = structlog.get_logger("proxy.limits")

#: Seconds between two warnings about the same kind of Redis failure.
WARN_INTERVAL = 10.0
#: Seconds after a failure during which requests get the failure policy without trying Redis.
RETRY_INTERVAL = 1.0
#: Failures that trigger the policy. Socket errors are wrapped by redis-py, but not always.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
#: Connections to Redis per replica: a burst of requests queues for one instead of opening hundreds.
POOL_SIZE = 32
#: Opening a connection may take this long even when `timeout` is shorter.
MIN_CONNECT_TIMEOUT = 1.0
#: Key-name tables kept per limiter; past this many distinct names the table starts over.
_MAX_CACHED_NAMES = 10_000

Script = Callable[..., Awaitable[Any]]


def redacted_url(url: str) -> str:
    """The Redis URL without credentials or query (where `unix://` URLs may carry a password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid redis url>"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Scrubber:
    """Removes a secret (and its percent-encoded form) from text that is about to be logged."""

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
            secrets_found = [parts.password or "", *(value for key, value in query if key == "password")]
        except ValueError:
            secrets_found = []
        self.secrets = [s for secret in secrets_found if secret for s in {secret, quote(secret, safe="")}]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class RedisAdmission(Admission):
    """What an admitted request holds in Redis: its log entries, day count and lease."""

    __slots__ = ("__weakref__", "_day", "_id", "_keys", "_limiter", "_recorded", "_slot", "_tpm")

    def __init__(
        self,
        limiter: RedisLimiter,
        keys: tuple[str, ...],
        lease_id: str,
        tokens: int,
        day: int,
        tpm: bool,
        slot: bool,
        headers: dict[str, str],
    ) -> None:
        super().__init__("allowed", headers)
        self._limiter = limiter
        self._keys = keys
        self._id = lease_id
        self._recorded = tokens
        self._day = day  # -1 when the key has no daily budget
        self._tpm = tpm
        self._slot = slot

    async def settle(self, actual_tokens: int) -> None:
        await self._limiter.finish(self, actual_tokens, release=False)

    async def release(self) -> None:
        await self._limiter.finish(self, None, release=True)

    async def finish(self, actual_tokens: int | None = None) -> None:
        await self._limiter.finish(self, actual_tokens, release=True)


class RedisLimiter(Limiter):
    """Counters in Redis, shared by every replica."""

    def __init__(self, config: LimitsConfig, retry_interval: float = RETRY_INTERVAL) -> None:
        assert config.redis_url is not None, "validated by LimitsConfig"
        url = config.redis_url.get_secret_value()
        self.target = redacted_url(url)
        self._scrub = Scrubber(url)
        try:
            self.client = aioredis.Redis.from_url(
                url,
                socket_timeout=config.timeout,
                # Opening a connection takes several steps of the event loop; on a busy loop (a burst
                # of requests reconnecting at once) that alone can outlast a short command timeout.
                socket_connect_timeout=max(config.timeout, MIN_CONNECT_TIMEOUT),
                # One immediate retry on a broken connection (a restarted Redis leaves stale pooled
                # connections); none on timeouts, which would double the wait.
                retry=Retry(NoBackoff(), 1, (ConnectionError,)),
            )
        except ValueError as exc:
            raise ValueError(f"invalid redis_url: {self._scrub(str(exc))}") from None
        #: Bounds the connections (redis-py's blocking pool costs more CPU per command than this).
        self._connections = asyncio.Semaphore(POOL_SIZE)
        self.prefix = config.key_prefix
        self.fail_open = config.on_backend_error == "open"
        self.lease_us = round(config.concurrency_lease * 1_000_000)
        self.renew_every = config.concurrency_lease / 3
        self.retry_interval = retry_interval
        self._admit = cast(Script, self.client.register_script(ADMIT))
        self._finish = cast(Script, self.client.register_script(FINISH))
        self._renew = cast(Script, self.client.register_script(RENEW))
        self._names: dict[str, tuple[str, ...]] = {}
        self._ids = itertools.count(1)
        self._instance = secrets.token_hex(6)
        #: Admissions holding a slot, by lease id; an admission dropped without release lets its lease lapse.
        self._leases: weakref.WeakValueDictionary[str, RedisAdmission] = weakref.WeakValueDictionary()
        self._renewer: asyncio.Task[None] | None = None
        self._failing = False  # the last call to Redis failed
        self._retry_at = 0.0  # when a request may try Redis again
        self._probing = False  # a request is trying it right now
        self._last_warning: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def keys(self, name: str) -> tuple[str, ...]:
        """rpm, tpm, tpm:sum, slots, day keys of a key name (see `scripts.py`)."""
        keys = self._names.get(name)
        if keys is None:
            if len(self._names) >= _MAX_CACHED_NAMES:
                self._names.clear()
            base = f"{self.prefix}{{{name}}}:"
            keys = self._names[name] = (
                f"{base}rpm",
                f"{base}tpm",
                f"{base}tpm:sum",
                f"{base}slots",
                f"{base}day",
            )
        return keys

    async def admit(self, key_name: str, limits: KeyLimits, tokens: int) -> Admission:
        if limits.unlimited:
            return UNLIMITED
        probing = False
        if self._failing:
            # After a failure, one request at a time tries Redis again (at most once per
            # retry_interval); all others get the failure policy at once instead of waiting too.
            if self._probing or time.monotonic() < self._retry_at:
                return self._policy()
            self._probing = probing = True
        keys = self.keys(key_name)
        lease_id = f"{self._instance}.{next(self._ids):x}"
        tokens = max(tokens, 0)
        args = (
            lease_id,
            tokens,
            limits.rpm or 0,
            limits.tpm or 0,
            limits.max_concurrent or 0,
            limits.daily_tokens or 0,
            self.lease_us,
            CONCURRENCY_RETRY_US,
        )
        try:
            async with self._connections:
                raw: list[int] = await self._admit(keys=keys, args=args)
        except BACKEND_ERRORS as exc:
            self._failed("rate_limit_backend_unavailable", exc)
            return self._policy()
        finally:
            if probing:
                self._probing = False
        if self._failing:
            self._recovered()
        verdict = Verdict(REFUSAL_CODES[raw[0]], *raw[1:9])
        if verdict.refused is not None:
            raise rejection(key_name, limits, tokens, verdict)
        slot = limits.max_concurrent is not None
        admission = RedisAdmission(
            self,
            keys,
            lease_id,
            tokens,
            raw[9] if limits.daily_tokens is not None else -1,
            limits.tpm is not None,
            slot,
            rate_limit_headers(limits, verdict),
        )
        if slot:
            self._leases[lease_id] = admission
            if self._renewer is None:
                self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return admission

    async def finish(self, admission: RedisAdmission, actual_tokens: int | None, release: bool) -> None:
        """Settle and/or release in one round trip. Failures are logged, never raised: the response is
        already on its way; a reservation then stays as it was, and a slot lapses with its lease."""
        settle = (
            actual_tokens is not None
            and (admission._tpm or admission._day >= 0)
            and max(actual_tokens, 0) != admission._recorded
        )
        release = release and admission._slot
        if not settle and not release:
            return
        actual = max(actual_tokens or 0, 0)
        if release:
            admission._slot = False
            self._leases.pop(admission._id, None)
        if self._failing:
            return  # Redis is down: do not wait for it; admissions find out when it is back
        keys = admission._keys
        args = (admission._id, admission._recorded, actual if settle else -1, admission._day)
        try:
            async with self._connections:
                await self._finish(
                    keys=(keys[1], keys[2], keys[4], keys[3]), args=(*args, int(admission._tpm), int(release))
                )
        except BACKEND_ERRORS as exc:
            self._failed("rate_limit_backend_unavailable", exc)
            return
        if settle:
            admission._recorded = actual

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await self.renew()
            except Exception:  # a bug here must not stop the renewals for good
                log.exception("rate_limit_renew_crashed", backend=self.target)

    async def renew(self) -> None:
        """Extend the leases of every slot this replica holds (one script call per key name)."""
        by_name: dict[str, list[str]] = {}
        for lease_id, admission in list(self._leases.items()):
            by_name.setdefault(admission._keys[3], []).append(lease_id)
        if not by_name:
            return

        async def renew_name(slots: str, ids: list[str]) -> list[bytes]:
            async with self._connections:
                missing: list[bytes] = await self._renew(keys=(slots,), args=(self.lease_us, *ids))
                return missing

        try:
            missing = await asyncio.gather(*(renew_name(slots, ids) for slots, ids in by_name.items()))
        except BACKEND_ERRORS as exc:
            self._failed("rate_limit_backend_renew_failed", exc)
            return
        # Released meanwhile is fine; still held means the lease lapsed (Redis was unreachable for
        # longer than a lease) and other replicas may have given the slot away: it is not taken back.
        lost = sum(1 for ids in missing for lease_id in ids if lease_id.decode() in self._leases)
        if lost:
            self._warn("rate_limit_leases_lost", None, lost=lost)

    async def ping(self) -> str:
        try:
            await self.client.ping()
        except BACKEND_ERRORS as exc:
            return f"redis unreachable ({type(exc).__name__})"
        return "ok"

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await self.client.aclose()

    def _policy(self) -> Admission:
        """What a request gets while Redis cannot be used: `on_backend_error`."""
        if self.fail_open:
            return FAIL_OPEN
        raise BackendUnavailable()

    def _failed(self, event: str, exc: BaseException) -> None:
        self._failing = True
        self._retry_at = time.monotonic() + self.retry_interval
        self._warn(event, exc, policy="open" if self.fail_open else "closed")

    def _recovered(self) -> None:
        self._failing = False
        log.info("rate_limit_backend_recovered", backend=self.target)

    def _warn(self, event: str, exc: BaseException | None, **fields: Any) -> None:
        """Log `event` at most once per WARN_INTERVAL, counting what was held back."""
        now = time.monotonic()
        if now - self._last_warning.get(event, -WARN_INTERVAL) < WARN_INTERVAL:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last_warning[event] = now
        if exc is not None:
            fields["error"] = type(exc).__name__
            fields["detail"] = self._scrub(str(exc))
        log.warning(event, backend=self.target, suppressed=self._suppressed.pop(event, 0), **fields)
