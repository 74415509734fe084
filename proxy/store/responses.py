"""Stored responses for `store: true`, owned by one key (over `proxy.store.kv`).

What `previous_response_id`, `GET /v1/responses/{id}`, `GET …/input_items` and `DELETE` need: the
response object, its input items, and the conversation so far as chat messages. In memory by default
(one replica), in Redis when the limits backend is Redis, so any replica continues any conversation.

Each record carries its owner (the client key's name, a digest of a pass-through key, or `anonymous`);
a lookup by another owner finds nothing, exactly as an unknown id, so ids leak nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.store.kv import KeyValue


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


class ResponseStore:
    def __init__(self, values: KeyValue) -> None:
        self.values = values

    async def put(self, record: StoredResponse) -> bool:
        """Keep `record` (False when it is larger than the store takes, or the store failed)."""
        return await self.values.put(record.response["id"], record.encode())

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        raw = await self.values.get(response_id)
        if raw is None:
            return None
        record = StoredResponse.decode(raw)
        return record if record.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        return await self.values.delete(response_id)

    async def aclose(self) -> None:
        await self.values.aclose()
