"""The stores' bounds and rules: the memory key-value store, the cache key and Cache-Control policy."""

from __future__ import annotations

import time

import pytest

from proxy.config import GenerationConfig, ModelsConfig
from proxy.store.cache import CachedAnswer, cache_key, cache_policy
from proxy.store.kv import MemoryKeyValue
from proxy.store.responses import owner_of
from proxy.translate.models import ModelRegistry
from proxy.translate.params import plan_chat
from proxy.translate.schema import ChatRequest


def store(**bounds: int) -> MemoryKeyValue:
    settings = {"ttl": 60.0, "max_entries": 3, "max_bytes": 10, "max_total_bytes": 25, **bounds}
    return MemoryKeyValue(**settings)  # type: ignore[arg-type]


async def test_memory_store_bounds_count_bytes_and_recency() -> None:
    values = store()
    assert not await values.put("huge", b"x" * 11)  # larger than max_bytes: not stored
    for key in "abc":
        assert await values.put(key, b"123456789")
    assert await values.get("a") is None  # 27 bytes > 25: the least recently used went
    assert await values.get("b") == b"123456789"  # b is now the most recent
    await values.put("d", b"1")
    await values.put("e", b"1")  # four entries > 3: the least recently used (c) goes
    assert await values.get("c") is None and await values.get("b") is not None
    assert len(values) == 3


async def test_memory_store_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    values = store()
    await values.put("k", b"v")
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    assert await values.get("k") is None and len(values) == 0


def plan(text: str, **extra: object) -> object:
    request = ChatRequest.model_validate(
        {"model": "gpt-4", "messages": [{"role": "user", "content": text}], **extra}
    )
    return plan_chat(request, ModelRegistry.from_config(ModelsConfig()), GenerationConfig())


def test_cache_key_is_per_owner_and_per_question_and_ignores_stream() -> None:
    a, b = owner_of("team-a", None), owner_of("team-b", None)
    assert cache_key(a, plan("hi")) == cache_key(a, plan("hi", stream=True))  # type: ignore[arg-type]
    assert cache_key(a, plan("hi")) != cache_key(b, plan("hi"))  # type: ignore[arg-type]
    assert cache_key(a, plan("hi")) != cache_key(a, plan("hi", temperature=0.5))  # type: ignore[arg-type]
    assert owner_of(None, "sk-secret").startswith("sha256:") and "sk-secret" not in owner_of(
        None, "sk-secret"
    )


@pytest.mark.parametrize(
    ("header", "policy"),
    [
        ("", (True, True)),
        ("no-cache", (False, True)),
        ("No-Store, max-age=0", (False, False)),
        ("max-age=5", (True, True)),
    ],
)
def test_cache_control(header: str, policy: tuple[bool, bool]) -> None:
    assert cache_policy({"cache-control": header} if header else {}) == policy


def test_cached_answer_round_trip() -> None:
    answer = CachedAnswer([(" hi", "stop_sequence"), ("cut", None)])
    assert CachedAnswer.decode(answer.encode()) == answer
