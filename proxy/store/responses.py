"""Stored responses for `store: true`: kept for `responses.ttl_seconds`, bounded, owned by one key.

What `previous_response_id`, `GET /v1/responses/{id}`, `GET …/input_items` and `DELETE` need: the
response object, its input items, and the conversation so far as chat messages. In memory by default
(one replica), in Redis when the limits backend is Redis, so any replica continues any conversation.

Each record carries its owner (the client key's name, a digest of a pass-through key, or `anonymous`);
a lookup by another owner finds nothing, exactly as an unknown id, so ids leak nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("proxy.store")


def owner_of(key_name: str | None, pass_through_key: str | None) -> str:
    """Who a stored response belongs to; never the key itself."""
    if key_name is not None:
        return "key:" + key_name
    if pass_through_key is not None:
        return "sha256:" + hashlib.sha256(pass_through_key.encode()).hexdigest()
    return "anonymous"


@dataclass
class StoredResponse:
    owner: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]  # chat messages: earlier turns, this input, this output

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def decode(cls, raw: bytes) -> StoredResponse:
        return cls(**orjson.loads(raw))


class ResponseStore(Protocol):
    max_bytes: int

    async def put(self, record: StoredResponse) -> bool: ...

    async def get(self, response_id: str, owner: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str, owner: str) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """An LRU of encoded records with expiry, bounded by count and total bytes."""

    def __init__(self, *, ttl: float, max_entries: int, max_bytes: int, max_total_bytes: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self._records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._total = 0

    def _drop(self, response_id: str) -> None:
        _, raw = self._records.pop(response_id)
        self._total -= len(raw)

    async def put(self, record: StoredResponse) -> bool:
        raw = record.encode()
        if len(raw) > self.max_bytes:
            return False
        response_id = record.response["id"]
        if response_id in self._records:
            self._drop(response_id)
        self._records[response_id] = (time.monotonic() + self.ttl, raw)
        self._total += len(raw)
        while len(self._records) > self.max_entries or self._total > self.max_total_bytes:
            self._drop(next(iter(self._records)))
        return True

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        entry = self._records.get(response_id)
        if entry is None:
            return None
        expires, raw = entry
        if expires <= time.monotonic():
            self._drop(response_id)
            return None
        record = StoredResponse.decode(raw)
        if record.owner != owner:
            return None
        self._records.move_to_end(response_id)
        return record

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        self._drop(response_id)
        return True

    async def aclose(self) -> None:
        self._records.clear()


class RedisStore:
    """Records as Redis strings with an expiry; Redis's own memory policy bounds the total."""

    def __init__(self, url: str, *, prefix: str, ttl: float, max_bytes: int) -> None:
        self.prefix = prefix
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._redis: Redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    async def put(self, record: StoredResponse) -> bool:
        raw = record.encode()
        if len(raw) > self.max_bytes:
            return False
        try:
            await self._redis.set(self.prefix + record.response["id"], raw, px=int(self.ttl * 1000))
        except (RedisError, OSError) as error:
            log.warning("response_store_unavailable", error=type(error).__name__)
            return False
        return True

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        try:
            raw = await self._redis.get(self.prefix + response_id)
        except (RedisError, OSError) as error:
            log.warning("response_store_unavailable", error=type(error).__name__)
            return None
        if raw is None:
            return None
        record = StoredResponse.decode(raw if isinstance(raw, bytes) else raw.encode())
        return record if record.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        try:
            return bool(await self._redis.delete(self.prefix + response_id))
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()
