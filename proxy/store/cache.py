"""The exact-match response cache: off by default; keyed by the normalised upstream request, per owner.

| rule | |
|---|---|
| key | SHA-256 of the owner (client key name, pass-through key digest, or `anonymous`) and the upstream bodies of every choice, sorted keys, without `stream` |
| stored | each choice's upstream text and stop reason, only for a complete, successful answer |
| replayed | through the same translator and renderer: fresh ids and `created`, a stream as a stream |
| `Cache-Control: no-cache` | not read; the fresh answer is stored |
| `Cache-Control: no-store` | neither read nor stored |
| response header | `x-cache: HIT` or `MISS` (`BYPASS` when the request said no-cache / no-store) |

Because the key holds the owner, one team never receives another team's answer; because it holds the
upstream bodies (model, prompt, max tokens, temperature, stops, …), only the same question is answered
from the cache. A stream and a plain request for the same question share one entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from proxy.store.kv import KeyValue
from proxy.translate.params import Plan


@dataclass(frozen=True)
class CachedAnswer:
    """Each choice's upstream text and stop reason (None when the proxy itself ended the choice)."""

    choices: list[tuple[str, str | None]]

    def encode(self) -> bytes:
        return orjson.dumps(self.choices)

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer:
        return cls([(str(text), stop) for text, stop in orjson.loads(raw)])


def cache_key(owner: str, plan: Plan) -> str:
    calls = [{k: v for k, v in body.items() if k != "stream"} for body in plan.calls()]
    digest = hashlib.sha256(owner.encode() + b"\0" + orjson.dumps(calls, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def cache_policy(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(read, write) for a request's `Cache-Control`."""
    directives = {d.strip().lower().partition("=")[0] for d in headers.get("cache-control", "").split(",")}
    if "no-store" in directives:
        return False, False
    if "no-cache" in directives:
        return False, True
    return True, True


class ResponseCache:
    def __init__(self, values: KeyValue) -> None:
        self.values = values

    async def get(self, key: str) -> CachedAnswer | None:
        raw = await self.values.get(key)
        return CachedAnswer.decode(raw) if raw is not None else None

    async def put(self, key: str, answer: CachedAnswer) -> bool:
        return await self.values.put(key, answer.encode())

    async def aclose(self) -> None:
        await self.values.aclose()
