"""Fixtures for the Redis backend: limiters on the session's real redis-server, each test in its own
key prefix, and a raw client to look at what the scripts wrote."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from proxy.limits import LimitsConfig, limiter_for
from proxy.limits.redis_backend import RedisLimiter
from tests.support.redis import RedisServer


def redis_config(url: str, **overrides: object) -> LimitsConfig:
    """A redis-backend configuration with a key prefix of its own, so tests never share counters."""
    return LimitsConfig(
        backend="redis", redis_url=SecretStr(url), key_prefix=f"test-{uuid.uuid4().hex[:10]}:", **overrides
    )


@pytest.fixture
def config(redis_server: RedisServer) -> LimitsConfig:
    return redis_config(redis_server.url)


@pytest.fixture
async def replicas(config: LimitsConfig) -> AsyncIterator[tuple[RedisLimiter, RedisLimiter]]:
    """Two limiters with separate connection pools: two replicas of the proxy sharing one Redis."""
    first, second = limiter_for(config), limiter_for(config)
    assert isinstance(first, RedisLimiter) and isinstance(second, RedisLimiter)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()
