"""Byte values under string keys, with an expiry: in this process's memory, or in Redis (shared by replicas).

The one storage layer under stored responses (`proxy.store.responses`) and the response cache
(`proxy.store.cache`). Both are bounded: each value by `max_bytes` (a larger one is not stored), the
memory store also by count and total bytes (least recently used go first); Redis bounds itself with
its own memory policy. A Redis failure is logged (without the URL's password) and reads as a miss.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("proxy.store")


class KeyValue(Protocol):
    max_bytes: int

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> bool: ...

    async def delete(self, key: str) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryKeyValue:
    """An LRU with expiry, bounded by count and total bytes."""

    def __init__(self, *, ttl: float, max_entries: int, max_bytes: int, max_total_bytes: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self._values: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._total = 0

    def __len__(self) -> int:
        return len(self._values)

    def _drop(self, key: str) -> None:
        _, value = self._values.pop(key)
        self._total -= len(value)

    async def get(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._values.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> bool:
        if len(value) > self.max_bytes:
            return False
        if key in self._values:
            self._drop(key)
        self._values[key] = (time.monotonic() + self.ttl, value)
        self._total += len(value)
        while len(self._values) > self.max_entries or self._total > self.max_total_bytes:
            self._drop(next(iter(self._values)))
        return True

    async def delete(self, key: str) -> bool:
        if await self.get(key) is None:
            return False
        self._drop(key)
        return True

    async def aclose(self) -> None:
        self._values.clear()
        self._total = 0


class RedisKeyValue:
    """Values as Redis strings under `prefix`, each with the expiry."""

    def __init__(self, url: str, *, prefix: str, ttl: float, max_bytes: int) -> None:
        from redis.asyncio import Redis  # redis is imported only when used
        from redis.exceptions import RedisError

        self.prefix = prefix
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._redis: Redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def _failed(self, error: BaseException) -> None:
        log.warning("store_unavailable", prefix=self.prefix, error=type(error).__name__)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self.prefix + key)
        except self._errors as error:
            self._failed(error)
            return None
        return value.encode() if isinstance(value, str) else value

    async def put(self, key: str, value: bytes) -> bool:
        if len(value) > self.max_bytes:
            return False
        try:
            await self._redis.set(self.prefix + key, value, px=max(1, int(self.ttl * 1000)))
        except self._errors as error:
            self._failed(error)
            return False
        return True

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._redis.delete(self.prefix + key))
        except self._errors as error:
            self._failed(error)
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()
