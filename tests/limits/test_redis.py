"""The Redis backend against a real redis-server: exact across replicas, atomic, expiring, and safe
when Redis goes away (fail open or closed, then recover), without ever showing the Redis password."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from proxy.limits import (
    Admission,
    BackendUnavailable,
    KeyLimits,
    Limiter,
    LimitsConfig,
    RateLimited,
)
from proxy.limits import (
    limiter_for as from_config,
)
from proxy.limits.admission import UNLIMITED
from proxy.limits.redis_backend import RedisAdmission, RedisLimiter, redacted_url
from tests.limits.conftest import redis_config
from tests.support.redis import RedisServer, run_redis
from tests.support.wait import eventually


async def admitted(limiter: Limiter, key: str, limits: KeyLimits) -> Admission:
    """Ask until `limiter` admits one request (refused requests are not recorded, so asking is free)."""

    async def attempt() -> Admission | None:
        try:
            return await limiter.admit(key, limits, 1)
        except RateLimited:
            return None

    return await eventually(attempt, f"{key!r} admitted again")


PASSWORD = "s3cr3t-Pa55word"


async def admit_many(
    limiters: tuple[RedisLimiter, ...], limits: KeyLimits, count: int, tokens: int = 1, name: str = "team-a"
) -> tuple[list[Admission], list[RateLimited]]:
    """`count` admissions at once, alternating between the replicas."""

    async def one(index: int) -> Admission | RateLimited:
        try:
            return await limiters[index % len(limiters)].admit(name, limits, tokens)
        except RateLimited as error:
            return error

    results = await asyncio.gather(*(one(index) for index in range(count)))
    admitted = [result for result in results if isinstance(result, Admission)]
    return admitted, [result for result in results if isinstance(result, RateLimited)]


async def redis_now_us(raw: aioredis.Redis) -> int:
    seconds, micros = await raw.time()
    return int(seconds) * 1_000_000 + int(micros)


# --- exact across replicas -------------------------------------------------------------------------


async def test_replicas_admit_exactly_rpm(replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    admitted, refused = await admit_many(replicas, KeyLimits(rpm=37), 200)
    assert len(admitted) == 37 and len(refused) == 163
    assert {error.limit for error in refused} == {"rpm"}
    assert sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted) == list(range(37))
    assert all(a.decision == "allowed" for a in admitted)


async def test_replicas_share_concurrency_slots(replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    limits = KeyLimits(max_concurrent=7)
    admitted, refused = await admit_many(replicas, limits, 200)
    assert len(admitted) == 7 and {error.limit for error in refused} == {"concurrency"}
    await asyncio.gather(*(admission.release() for admission in admitted[:3]))
    await admitted[0].release()  # idempotent
    again, _ = await admit_many(replicas, limits, 200)
    assert len(again) == 3


async def test_replicas_share_tokens(replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    admitted, refused = await admit_many(replicas, KeyLimits(tpm=1000), 200, tokens=30)
    assert len(admitted) == 33 and {error.limit for error in refused} == {"tpm"}
    assert min(int(a.headers["x-ratelimit-remaining-tokens"]) for a in admitted) == 10
    admitted, refused = await admit_many(replicas, KeyLimits(daily_tokens=1000), 200, tokens=30, name="b")
    assert len(admitted) == 33 and {error.limit for error in refused} == {"daily_tokens"}


async def test_all_limits_are_checked_in_one_step(replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    limits = KeyLimits(rpm=50, tpm=600, max_concurrent=40, daily_tokens=10_000)
    admitted, refused = await admit_many(replicas, limits, 200, tokens=20)
    assert len(admitted) == 30  # tpm binds first; the refused ones recorded nothing anywhere
    assert {error.limit for error in refused} == {"tpm"}
    last = min(admitted, key=lambda a: int(a.headers["x-ratelimit-remaining-requests"]))
    assert last.headers["x-ratelimit-remaining-requests"] == "20"
    assert last.headers["x-ratelimit-remaining-tokens-day"] == "9400"
    await asyncio.gather(*(admission.finish(10) for admission in admitted))
    # Settled to 10 each: 300 tokens are free again, and every slot is back.
    more, _ = await admit_many(replicas, limits, 40, tokens=20)
    assert len(more) == 15


# --- what the scripts keep -------------------------------------------------------------------------


async def test_settle_replaces_the_reservation(
    replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis
) -> None:
    first, second = replicas
    limits = KeyLimits(tpm=1000, daily_tokens=5000)
    admission = await first.admit("k", limits, 600)
    with pytest.raises(RateLimited) as caught:
        await second.admit("k", limits, 500)
    assert "Used 600, Requested 500" in caught.value.message
    await admission.settle(100)
    assert (await second.admit("k", limits, 500)).headers["x-ratelimit-remaining-tokens"] == "400"
    tpm, total, day = (first.keys("k")[i] for i in (1, 2, 4))
    assert await raw.get(total) == "600"
    members = sorted(int(str(member).rsplit(":", 1)[1]) for member in await raw.zrange(tpm, 0, -1))
    assert members == [100, 500]
    assert await raw.hget(day, "used") == "600"
    await admission.settle(100)  # unchanged: no round trip needed, nothing changes
    await admission.finish(50)
    assert await raw.get(total) == "550" and await raw.hget(day, "used") == "550"


async def test_every_key_expires(replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis) -> None:
    limiter, _ = replicas
    await limiter.admit("k", KeyLimits(rpm=5, tpm=100, max_concurrent=2, daily_tokens=1000), 10)
    rpm, tpm, total, slots, day = limiter.keys("k")
    for key in (rpm, tpm, total):
        assert 59_000 < await raw.pttl(key) <= 61_000
    assert 29_000 < await raw.pttl(slots) <= 31_000  # the 30 s lease, plus one second
    assert 3_600_000 < await raw.pttl(day) <= 25 * 3_600_000
    assert rpm.startswith(limiter.prefix) and "{k}" in rpm  # one hash slot for all keys of a name


async def test_the_window_slides_on_redis_time(
    replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis
) -> None:
    limiter, _ = replicas
    limits = KeyLimits(rpm=3)
    rpm_key = limiter.keys("k")[0]
    old = await redis_now_us(raw) - 59_700_000  # as if admitted 59.7 s ago (and 59.5 s ago)
    await raw.zadd(rpm_key, {"old-1": old, "old-2": old, "old-3": old + 200_000})
    with pytest.raises(RateLimited) as caught:
        await limiter.admit("k", limits, 1)
    wait_ms = int(caught.value.headers["retry-after-ms"])
    assert 0 < wait_ms <= 300 and caught.value.headers["retry-after"] == "1"
    # Redis's clock decides when "old-1" and "old-2" leave the window.
    assert (await admitted(limiter, "k", limits)).headers["x-ratelimit-remaining-requests"] == "1"
    assert (await limiter.admit("k", limits, 1)).headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as caught:
        await limiter.admit("k", limits, 1)
    assert 0 < int(caught.value.headers["retry-after-ms"]) <= 200  # when "old-3" leaves


async def test_the_daily_budget_starts_over_each_utc_day(
    replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis
) -> None:
    limiter, _ = replicas
    limits = KeyLimits(daily_tokens=1000)
    day_key = limiter.keys("k")[4]
    today = await redis_now_us(raw) // 86_400_000_000
    await raw.hset(day_key, mapping={"day": today - 1, "used": 1000})
    admission = await limiter.admit("k", limits, 999)
    assert admission.headers["x-ratelimit-remaining-tokens-day"] == "1"
    assert await raw.hget(day_key, "day") == str(today)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit("k", limits, 2)
    until_midnight = 86_400 - (await redis_now_us(raw) // 1_000_000) % 86_400
    assert abs(int(caught.value.headers["retry-after"]) - until_midnight) <= 1


async def test_a_lost_token_sum_is_rebuilt(
    replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis
) -> None:
    limiter, _ = replicas
    limits = KeyLimits(tpm=100)
    await limiter.admit("k", limits, 40)
    await limiter.admit("k", limits, 30)
    await raw.delete(limiter.keys("k")[2])
    assert (await limiter.admit("k", limits, 20)).headers["x-ratelimit-remaining-tokens"] == "10"


async def test_scripts_are_loaded_again_after_a_flush(
    replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis
) -> None:
    limiter, _ = replicas
    await limiter.admit("k", KeyLimits(rpm=5), 1)
    await raw.script_flush()  # as after a restart: EVALSHA gets NOSCRIPT
    admission = await limiter.admit("k", KeyLimits(rpm=5, max_concurrent=1), 1)
    assert admission.headers["x-ratelimit-remaining-requests"] == "3"
    await raw.script_flush()
    await admission.release()
    await (await limiter.admit("k", KeyLimits(max_concurrent=1), 1)).release()


async def test_headers_and_errors_match_the_memory_backend(
    replicas: tuple[RedisLimiter, RedisLimiter],
) -> None:
    memory = from_config(LimitsConfig())
    limits = KeyLimits(rpm=2, tpm=100, daily_tokens=1000)
    for limiter in (memory, replicas[0]):
        first = await limiter.admit("k", limits, 10)
        assert (
            first.headers["x-ratelimit-reset-requests"] == first.headers["x-ratelimit-reset-tokens"] == "1m0s"
        )
        await limiter.admit("k", limits, 10)
        with pytest.raises(RateLimited) as caught:
            await limiter.admit("k", limits, 10)
        assert re.fullmatch(
            r"Rate limit reached for requests per min \(RPM\) on key 'k': Limit 2, Used 2, Requested 1\. "
            r"Please try again in (59\.\d+s|1m0s)\.",
            caught.value.message,
        )
        assert set(caught.value.headers) == {*first.headers, "retry-after", "retry-after-ms"}
        with pytest.raises(RateLimited) as caught:
            await limiter.admit("k", limits, 101)
        assert caught.value.too_large and caught.value.headers["x-should-retry"] == "false"


# --- leases ----------------------------------------------------------------------------------------


async def test_the_slots_of_a_dead_replica_expire(redis_server: RedisServer) -> None:
    config = redis_config(redis_server.url).model_copy(update={"concurrency_lease": 0.6})
    dead, alive = from_config(config), from_config(config)
    limits = KeyLimits(max_concurrent=1)
    try:
        held = await dead.admit("k", limits, 1)
        await dead.aclose()  # "crashes": no release, no more renewals
        with pytest.raises(RateLimited):
            await alive.admit("k", limits, 1)
        await (await admitted(alive, "k", limits)).release()  # once the 0.6 s lease has expired
        del held
    finally:
        await alive.aclose()


async def test_long_requests_keep_their_slots(redis_server: RedisServer) -> None:
    config = redis_config(redis_server.url).model_copy(update={"concurrency_lease": 0.6})
    first, second = from_config(config), from_config(config)
    limits = KeyLimits(max_concurrent=1)
    try:
        held = await first.admit("k", limits, 1)
        await asyncio.sleep(1.5)  # more than two leases: renewed every 0.2 s
        with pytest.raises(RateLimited):
            await second.admit("k", limits, 1)
        await held.release()
        await (await second.admit("k", limits, 1)).release()
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_lapsed_lease_is_reported_not_taken_back(
    replicas: tuple[RedisLimiter, RedisLimiter], raw: aioredis.Redis
) -> None:
    limiter, other = replicas
    limits = KeyLimits(max_concurrent=2)
    kept = await limiter.admit("k", limits, 1)
    lapsed = await limiter.admit("k", limits, 1)
    assert isinstance(lapsed, RedisAdmission)
    slots = limiter.keys("k")[3]
    await raw.zrem(slots, lapsed._id)  # as if its lease had expired while Redis was out of reach
    with capture_logs() as logs:
        await limiter.renew()
    assert [(entry["event"], entry["lost"]) for entry in logs] == [("rate_limit_leases_lost", 1)]
    assert await raw.zscore(slots, lapsed._id) is None
    released = await other.admit("k", limits, 1)  # the lapsed slot went to another replica
    await released.release()
    await kept.release()
    with capture_logs() as logs:
        await limiter.renew()  # `lapsed` is still lost, but warnings come at most once per 10 s
    assert logs == []
    await lapsed.release()


# --- Redis going away ------------------------------------------------------------------------------


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test only (with a password), which it may kill and restart."""
    with run_redis(tmp_path / "redis.log", password=PASSWORD) as server:
        yield server


def limiter_for(server: RedisServer, policy: str = "open", url: str | None = None) -> RedisLimiter:
    config = redis_config(url or server.url, on_backend_error=policy)
    return RedisLimiter(config, retry_interval=0.05)


async def test_fail_open_then_recover(own_redis: RedisServer) -> None:
    limiter = limiter_for(own_redis)
    limits = KeyLimits(rpm=100, max_concurrent=5)
    try:
        before = await limiter.admit("k", limits, 1)
        assert before.decision == "allowed"
        with capture_logs() as logs:
            own_redis.stop()
            outage = [await limiter.admit("k", limits, 1) for _ in range(20)]
            failed_at = limiter._retry_at

            async def probed() -> bool:  # once the retry interval is over, one admission tries Redis again
                outage.append(await limiter.admit("k", limits, 1))
                return limiter._retry_at != failed_at  # ... and fails again, which restarts the interval

            await eventually(probed, "a probe of the stopped Redis")
            await before.finish(3)  # never raises
            assert (await limiter.ping()).startswith("redis unreachable")
        assert {admission.decision for admission in outage} == {"fail_open"}
        assert dict(outage[0].headers) == {}
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert [entry["event"] for entry in warnings] == ["rate_limit_backend_unavailable"]  # once per 10 s
        assert warnings[0]["policy"] == "open" and warnings[0]["error"] == "ConnectionError"
        own_redis.start()
        with capture_logs() as logs:  # admissions fail open until the next probe finds Redis back

            async def allowed() -> Admission | None:
                admission = await limiter.admit("k", limits, 1)
                return admission if admission.decision == "allowed" else None

            after = await eventually(allowed, "an admission by the restarted Redis")
        assert [entry["event"] for entry in logs] == ["rate_limit_backend_recovered"]
        assert await limiter.ping() == "ok"
        await after.finish(1)
    finally:
        await limiter.aclose()


async def test_fail_closed_rejects_with_503_then_recovers(own_redis: RedisServer) -> None:
    limiter = limiter_for(own_redis, policy="closed")
    limits = KeyLimits(rpm=100)
    try:
        own_redis.stop()
        for _ in range(3):
            with pytest.raises(BackendUnavailable) as caught:
                await limiter.admit("k", limits, 1)
            assert caught.value.status == 503
            assert caught.value.body()["error"]["code"] == "rate_limit_backend_unavailable"
            assert caught.value.headers["x-should-retry"] == "true"
        own_redis.start()

        async def admitted_by_redis() -> Admission | None:  # refused until the next probe finds Redis back
            try:
                return await limiter.admit("k", limits, 1)
            except BackendUnavailable:
                return None

        assert (await eventually(admitted_by_redis, "the restarted Redis")).decision == "allowed"
        # Unlimited keys never depend on Redis.
        own_redis.stop()
        assert await limiter.admit("free", KeyLimits(), 1) is UNLIMITED
    finally:
        await limiter.aclose()


async def test_a_hanging_redis_costs_at_most_the_timeout(own_redis: RedisServer) -> None:
    limiter = limiter_for(own_redis)
    assert own_redis.process is not None
    try:
        await limiter.admit("k", KeyLimits(rpm=5), 1)
        own_redis.process.send_signal(signal.SIGSTOP)  # SIGSTOP: connections stay open, answers never come
        started = time.monotonic()
        assert (await limiter.admit("k", KeyLimits(rpm=5), 1)).decision == "fail_open"
        # Without the timeout this call never returns (Redis is stopped): the bound only has to tell
        # "the 0.25 s timeout fired" from "hangs", with room for a loaded machine.
        assert time.monotonic() - started < 0.25 + 2.0
        own_redis.process.send_signal(signal.SIGCONT)  # SIGCONT
    finally:
        await limiter.aclose()


async def test_the_redis_password_never_shows(own_redis: RedisServer, tmp_path: Path) -> None:
    assert PASSWORD in own_redis.url
    assert redacted_url(own_redis.url) == f"redis://127.0.0.1:{own_redis.port}/0"
    assert redacted_url(f"unix:///tmp/r.sock?db=0&password={PASSWORD}") == "unix:///tmp/r.sock"
    wrong = own_redis.url.replace(PASSWORD, "Wr0ng-pa55word")
    seen: list[str] = []
    with capture_logs() as logs:
        for url, policy in ((own_redis.url, "open"), (own_redis.url, "closed"), (wrong, "open")):
            limiter = limiter_for(own_redis, policy, url)
            try:
                if url == own_redis.url:
                    assert (await limiter.admit("k", KeyLimits(rpm=5), 1)).decision == "allowed"
                    own_redis.stop()
                try:
                    seen.append(repr(await limiter.admit("k", KeyLimits(rpm=5), 1)))
                except BackendUnavailable as error:
                    seen.append(error.message)
                    seen.append(repr(error))
                seen.append(await limiter.ping())
                seen.append(repr(limiter.__dict__))
            finally:
                await limiter.aclose()
                if own_redis.process is None:
                    own_redis.start()
        with pytest.raises(ValueError) as caught:
            RedisLimiter(redis_config(f"redis://:{PASSWORD}@127.0.0.1:notaport/0"))
        seen.append(str(caught.value))
    assert any(entry.get("error") == "AuthenticationError" for entry in logs)  # the wrong password
    text = repr(logs) + "\n".join(seen) + own_redis.log_path.read_text()
    for secret in (PASSWORD, "Wr0ng-pa55word"):
        assert secret not in text
