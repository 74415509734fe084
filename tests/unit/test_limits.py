"""Rate limits: header and message formats, configuration, and the in-process backend on a fake clock."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from proxy.errors import OpenAIError
from proxy.limits import BackendUnavailable, KeyLimits, Limiter, LimitsConfig, RateLimited, limiter_for
from proxy.limits.admission import UNLIMITED
from proxy.limits.limiter import MemoryLimiter
from proxy.limits.memory import MemoryAdmission, MemoryStore
from proxy.limits.responses import format_duration, rate_limit_headers
from proxy.limits.verdict import NEVER, WINDOW_US, Verdict, worse

SECOND = 1_000_000
#: 2024-01-01T12:00:00Z, in microseconds.
NOON = (1_704_067_200 + 12 * 3600) * SECOND


@dataclass
class FakeClock:
    now: int = NOON

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * SECOND)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return limiter_for(LimitsConfig(), clock=clock)


async def rejected(limiter: Limiter, limits: KeyLimits, tokens: int = 1, name: str = "team-a") -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(name, limits, tokens)
    return caught.value


# --- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("milliseconds", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (59, "59ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1001, "1.001s"),
        (5200, "5.2s"),
        (8640, "8.64s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (90_500, "1m30.5s"),
        (360_000, "6m0s"),
        (3_600_000, "1h0m0s"),
        (3_723_004, "1h2m3.004s"),
        (86_400_000, "24h0m0s"),
    ],
)
def test_durations_are_spelled_as_openai_does(milliseconds: int, text: str) -> None:
    assert format_duration(milliseconds) == text


def test_headers_describe_only_the_limits_a_key_has() -> None:
    verdict = Verdict(None, 0, 3, WINDOW_US, 250, 59_000_001, 1000, 3 * 3600 * SECOND + 1, 1)
    assert rate_limit_headers(KeyLimits(rpm=10, tpm=1000, daily_tokens=5000), verdict) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "59.001s",  # rounded up to the millisecond
        "x-ratelimit-limit-tokens-day": "5000",
        "x-ratelimit-remaining-tokens-day": "4000",
        "x-ratelimit-reset-tokens-day": "3h0m1s",  # rounded up to the second
    }
    assert rate_limit_headers(KeyLimits(max_concurrent=2), verdict) == {}
    over = Verdict("tpm", 5, 12, 1, 1200, 1, 0, 1, 0)  # usage above a limit lowered since
    headers = rate_limit_headers(KeyLimits(rpm=10, tpm=1000), over)
    assert headers["x-ratelimit-remaining-requests"] == headers["x-ratelimit-remaining-tokens"] == "0"


def test_the_worst_refusal_is_reported() -> None:
    assert worse(None, 0, "rpm", 5) == ("rpm", 5)
    assert worse("rpm", 5, "tpm", 7) == ("tpm", 7)
    assert worse("rpm", 7, "tpm", 5) == ("rpm", 7)
    assert worse("rpm", 7, "tpm", 7) == ("rpm", 7)
    assert worse("rpm", 7, "daily_tokens", NEVER) == ("daily_tokens", NEVER)
    assert worse("tpm", NEVER, "concurrency", 10**12) == ("tpm", NEVER)


def test_backend_unavailable_envelope() -> None:
    error = BackendUnavailable()
    assert isinstance(error, OpenAIError)
    assert error.status == 503
    assert error.body()["error"]["type"] == "server_error"
    assert error.body()["error"]["code"] == "rate_limit_backend_unavailable"
    assert error.headers == {"x-should-retry": "true"}
    assert error.decision == "fail_closed"


# --- configuration ---------------------------------------------------------------------------------


def test_key_limits_are_positive_and_strict() -> None:
    assert KeyLimits().unlimited
    assert not KeyLimits(max_concurrent=1).unlimited
    for bad in ({"rpm": 0}, {"tpm": -5}, {"daily_tokens": 1.5}, {"rpm": "ten"}, {"burst": 3}):
        with pytest.raises(ValidationError):
            KeyLimits.model_validate(bad)


def test_limits_config_defaults_and_redis_url() -> None:
    config = LimitsConfig()
    assert (config.backend, config.on_backend_error, config.key_prefix) == ("memory", "open", "clp:")
    assert config.default == KeyLimits()
    assert config.timeout == 0.25
    with pytest.raises(ValidationError, match="redis_url is required"):
        LimitsConfig(backend="redis")
    with pytest.raises(ValidationError, match="must start with redis://") as caught:
        LimitsConfig(backend="redis", redis_url=SecretStr("http://:hunter2@host:6379"))
    assert "hunter2" not in str(caught.value)
    config = LimitsConfig(backend="redis", redis_url=SecretStr("redis://:hunter2@host:6379/0"))
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())
    with pytest.raises(ValidationError):
        LimitsConfig.model_validate({"default": {"rpm": 0}})


# --- the in-process backend ------------------------------------------------------------------------


async def test_unlimited_keys_touch_nothing(limiter: Limiter) -> None:
    admission = await limiter.admit("free", KeyLimits(), 10**9)
    assert admission is UNLIMITED and admission.decision == "unlimited" and dict(admission.headers) == {}
    await admission.finish(5)
    assert isinstance(limiter, MemoryLimiter) and limiter.store.states == {}


async def test_rpm_window_slides(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(rpm=10)
    for index in range(10):
        admission = await limiter.admit("team-a", limits, 1)
        assert admission.decision == "allowed"
        assert admission.headers["x-ratelimit-remaining-requests"] == str(9 - index)
        assert admission.headers["x-ratelimit-reset-requests"] == "1m0s"
        clock.advance(1)
    # Ten requests at 0..9 s; now is 10 s: the first leaves the window at 60 s.
    error = await rejected(limiter, limits)
    assert error.status == 429 and error.limit == "rpm" and error.decision == "rejected:rpm"
    assert error.body() == {
        "error": {
            "message": "Rate limit reached for requests per min (RPM) on key 'team-a': Limit 10, Used 10, "
            "Requested 1. Please try again in 50s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error.headers["retry-after"] == "50" and error.headers["retry-after-ms"] == "50000"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-reset-requests"] == "59s"  # until the last of the ten leaves
    clock.advance(50 - 1e-6)
    await rejected(limiter, limits)
    clock.advance(1e-6)
    admission = await limiter.admit("team-a", limits, 1)
    assert admission.headers["x-ratelimit-remaining-requests"] == "0"
    await rejected(limiter, limits)  # the second request (at 1 s) still counts until 61 s


async def test_message_and_retry_are_rounded_up(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(rpm=1)
    await limiter.admit("team-a", limits, 1)
    clock.advance(54.8 - 0.0005)  # the slot frees in 5.2005 s
    error = await rejected(limiter, limits)
    assert error.message.endswith("Please try again in 5.201s.")
    assert (error.headers["retry-after"], error.headers["retry-after-ms"]) == ("6", "5201")


async def test_keys_are_independent_and_named_never_shown(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=1)
    await limiter.admit("team-a", limits, 1)
    await limiter.admit("team-b", limits, 1)
    error = await rejected(limiter, limits, name="team-b")
    assert "'team-b'" in error.message


async def test_rejections_record_nothing(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=5, tpm=100, daily_tokens=1000, max_concurrent=3)
    held = [await limiter.admit("k", limits, 30) for _ in range(3)]  # 90 tokens, 3 slots
    for tokens in (11, 1, 1):  # tpm, then concurrency, again and again
        await rejected(limiter, limits, tokens, name="k")
    await held[0].release()
    admission = await limiter.admit("k", limits, 10)  # exactly what is left
    assert admission.headers["x-ratelimit-remaining-requests"] == "1"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "0"
    assert admission.headers["x-ratelimit-remaining-tokens-day"] == "900"


async def test_tpm_reserves_then_settles(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(tpm=1000)
    first = await limiter.admit("k", limits, 600)
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    clock.advance(10)
    error = await rejected(limiter, limits, 500, name="k")
    assert error.limit == "tpm" and error.body()["error"]["type"] == "tokens"
    assert "Limit 1000, Used 600, Requested 500. Please try again in 50s." in error.message
    await first.settle(300)
    second = await limiter.admit("k", limits, 500)
    assert second.headers["x-ratelimit-remaining-tokens"] == "200"
    await second.settle(700)  # a real count above the reservation is counted too
    await second.settle(650)  # and settling again replaces it
    error = await rejected(limiter, limits, 100, name="k")
    assert "Used 950" in error.message
    # 50 tokens must leave: the first request's 300 do, at 60 s.
    assert error.headers["retry-after-ms"] == "50000"


async def test_tpm_retry_waits_for_enough_tokens(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(tpm=100)
    for tokens in (10, 20, 30, 40):  # at 0, 1, 2, 3 s
        await limiter.admit("k", limits, tokens)
        clock.advance(1)
    # At 4 s, 55 tokens need 55 free: 10 + 20 + 30 leave at 62 s.
    error = await rejected(limiter, limits, 55, name="k")
    assert error.headers["retry-after-ms"] == "58000"
    assert error.headers["x-ratelimit-reset-tokens"] == "59s"
    clock.advance(58)
    await limiter.admit("k", limits, 55)


async def test_settling_after_the_window_changes_nothing(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(tpm=100)
    admission = await limiter.admit("k", limits, 100)
    clock.advance(61)
    await limiter.admit("k", limits, 100)
    await admission.settle(0)  # its entry has left the window: the new 100 still count
    await rejected(limiter, limits, 1, name="k")


async def test_requests_too_large_can_never_pass(limiter: Limiter) -> None:
    error = await rejected(limiter, KeyLimits(tpm=1000, rpm=1), 1001)
    assert error.limit == "tpm" and error.too_large and error.decision == "too_large:tpm"
    assert error.message == (
        "Request too large for tokens per min (TPM) on key 'team-a': Limit 1000, Requested 1001. "
        "The input or output tokens must be reduced in order to run successfully."
    )
    assert error.headers["x-should-retry"] == "false" and "retry-after" not in error.headers
    error = await rejected(limiter, KeyLimits(daily_tokens=50), 51)
    assert error.limit == "daily_tokens" and error.too_large and "tokens per day (TPD)" in error.message


async def test_daily_budget_resets_at_utc_midnight(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(daily_tokens=1000)
    clock.now = NOON + 12 * 3600 * SECOND - SECOND // 2  # 23:59:59.5
    admission = await limiter.admit("k", limits, 900)
    assert admission.headers["x-ratelimit-reset-tokens-day"] == "1s"
    error = await rejected(limiter, limits, 200, name="k")
    assert error.limit == "daily_tokens"
    assert error.headers["retry-after-ms"] == "500" and error.headers["retry-after"] == "1"
    assert "tokens per day (TPD)" in error.message and "Used 900, Requested 200" in error.message
    await admission.settle(700)
    await limiter.admit("k", limits, 200)  # 900 of 1000 after settling
    clock.advance(0.5)  # 00:00:00 UTC
    admission = await limiter.admit("k", limits, 1000)
    assert admission.headers["x-ratelimit-remaining-tokens-day"] == "0"
    assert admission.headers["x-ratelimit-reset-tokens-day"] == "24h0m0s"
    await admission.settle(400)
    assert (await limiter.admit("k", limits, 600)).headers["x-ratelimit-remaining-tokens-day"] == "0"


async def test_a_wait_longer_than_the_sdks_honour_forbids_their_retries(
    limiter: Limiter, clock: FakeClock
) -> None:
    """Conformance item 62/66: a daily budget spent at noon waits 12 h; the SDKs must not retry."""
    limits = KeyLimits(daily_tokens=1000)
    await limiter.admit("k", limits, 1000)
    error = await rejected(limiter, limits, 1, name="k")
    assert error.headers["retry-after"] == str(12 * 3600) and error.headers["x-should-retry"] == "false"
    clock.now = NOON + 12 * 3600 * SECOND - 60 * SECOND  # 23:59:00: a minute is honoured, so retried
    error = await rejected(limiter, limits, 1, name="k")
    assert error.headers["retry-after"] == "60" and "x-should-retry" not in error.headers


async def test_settling_yesterdays_request_leaves_today_alone(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(daily_tokens=1000)
    clock.now = NOON + 12 * 3600 * SECOND - SECOND
    late = await limiter.admit("k", limits, 800)
    clock.advance(2)
    today = await limiter.admit("k", limits, 1000)
    await late.settle(0)
    await rejected(limiter, limits, 1, name="k")
    await today.finish(0)
    await limiter.admit("k", limits, 1000)


async def test_concurrency_slots(limiter: Limiter) -> None:
    limits = KeyLimits(max_concurrent=2)
    first = await limiter.admit("k", limits, 1)
    second = await limiter.admit("k", limits, 1)
    assert dict(first.headers) == {}  # OpenAI has no concurrency headers
    error = await rejected(limiter, limits, name="k")
    assert error.limit == "concurrency" and error.body()["error"]["type"] == "requests"
    assert error.message == (
        "Rate limit reached for concurrent requests on key 'k': Limit 2, Used 2, Requested 1. "
        "Please try again in 1s."
    )
    assert error.headers == {"retry-after": "1", "retry-after-ms": "1000"}
    await first.release()
    await first.release()  # idempotent: frees one slot, not two
    third = await limiter.admit("k", limits, 1)
    await rejected(limiter, limits, name="k")
    await second.finish(1)
    await third.finish()
    await limiter.admit("k", limits, 1)
    await limiter.admit("k", limits, 1)


async def test_a_dropped_admission_frees_its_slot(limiter: Limiter) -> None:
    limits = KeyLimits(max_concurrent=1)
    admission = await limiter.admit("k", limits, 1)
    await rejected(limiter, limits, name="k")
    del admission
    gc.collect()
    await limiter.admit("k", limits, 1)


async def test_the_longest_wait_is_reported(limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(rpm=2, tpm=100)
    await limiter.admit("k", limits, 60)
    clock.advance(10)
    await limiter.admit("k", limits, 40)
    clock.advance(20)
    # rpm frees a request at 60 s (in 30 s); 70 tokens are free only when both entries left, at 70 s.
    error = await rejected(limiter, limits, 70, name="k")
    assert error.limit == "tpm" and error.headers["retry-after"] == "40"
    error = await rejected(limiter, limits, 1, name="k")
    assert error.limit == "rpm" and error.headers["retry-after"] == "30"


def test_idle_keys_are_forgotten(clock: FakeClock) -> None:
    store = MemoryStore(clock)
    store.admit("minute", KeyLimits(rpm=5, tpm=100), 10)
    store.admit("day", KeyLimits(daily_tokens=100), 10)
    _, held = store.admit("slot", KeyLimits(max_concurrent=1), 1)
    clock.advance(61)
    store.admit("fresh", KeyLimits(rpm=5), 1)  # sweeps
    assert set(store.states) == {"day", "slot", "fresh"}
    assert held is not None
    held.release_now()
    clock.advance(12 * 3600)  # a new UTC day
    store.admit("fresh", KeyLimits(rpm=5), 1)
    assert set(store.states) == {"fresh"}


# --- properties ------------------------------------------------------------------------------------

steps = st.lists(
    st.tuples(
        st.integers(0, 20 * SECOND),  # time since the previous attempt
        st.integers(0, 400),  # tokens asked for
        st.integers(0, 100),  # settled to this percentage of the reservation
    ),
    max_size=80,
)


def admitted_windows(times: list[int]) -> int:
    """The most admissions in any half-open 60-second window (the busiest one starts at an admission)."""
    return max((sum(1 for t in times if start <= t < start + WINDOW_US) for start in times), default=0)


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 6), tpm=st.integers(1, 1000), plan=steps)
def test_no_window_ever_admits_more_than_the_limits(
    rpm: int, tpm: int, plan: list[tuple[int, int, int]]
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limits = KeyLimits(rpm=rpm, tpm=tpm)
    admitted: list[tuple[int, int]] = []  # (time, tokens finally counted)
    for delay, tokens, percent in plan:
        clock.now += delay
        verdict, admission = store.admit("k", limits, tokens)
        if admission is None:
            assert verdict.refused is not None and (verdict.wait_us > 0 or verdict.wait_us == NEVER)
            continue
        settled = tokens * percent // 100
        admission.settle_now(settled)
        admitted.append((clock.now, settled))
    assert admitted_windows([t for t, _ in admitted]) <= rpm
    for start, _ in admitted:
        assert sum(n for t, n in admitted if start <= t < start + WINDOW_US) <= tpm


@settings(max_examples=150, deadline=None)
@given(
    limits=st.builds(KeyLimits, rpm=st.integers(1, 5) | st.none(), tpm=st.integers(50, 500) | st.none()),
    plan=steps,
)
def test_retry_after_is_exactly_when_the_request_fits(
    limits: KeyLimits, plan: list[tuple[int, int, int]]
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    for delay, tokens, _ in plan:
        clock.now += delay
        verdict, admission = store.admit("k", limits, tokens)
        if admission is None and verdict.wait_us != NEVER:
            # One microsecond earlier it is still refused (and that records nothing); then it fits.
            clock.now += verdict.wait_us - 1
            assert store.admit("k", limits, tokens)[1] is None
            clock.now += 1
            assert store.admit("k", limits, tokens)[1] is not None


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(st.sampled_from(["admit", "release", "release-again"]), max_size=60), slots=st.integers(1, 4)
)
def test_concurrency_never_exceeds_its_slots(ops: list[str], slots: int) -> None:
    store = MemoryStore(FakeClock())
    limits = KeyLimits(max_concurrent=slots)
    held: list[MemoryAdmission] = []
    released: list[MemoryAdmission] = []
    for op in ops:
        if op == "admit":
            _, admission = store.admit("k", limits, 1)
            assert (admission is None) == (len(held) == slots)
            if admission is not None:
                held.append(admission)
        elif op == "release" and held:
            released.append(held.pop(0))
            released[-1].release_now()
        elif op == "release-again" and released:
            released[0].release_now()
        assert store.states["k"].active == len(held) if "k" in store.states else not held


def test_a_malformed_redis_url_is_a_config_error_without_the_password() -> None:
    from proxy.config import ConfigError, load_config

    environ = {"PROXY_LIMITS__BACKEND": "redis", "PROXY_LIMITS__REDIS_URL": "redis://u:sekrit@h:99999/0"}
    with pytest.raises(ConfigError, match="not a valid Redis URL") as caught:
        load_config(None, environ)
    assert "sekrit" not in str(caught.value)
