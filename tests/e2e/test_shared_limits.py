"""Limits shared across replicas: two real proxy processes, one real redis-server, concurrent load.

Whatever replica a request lands on, a key's limit holds exactly: with `rpm: 17`, 60 concurrent
requests spread over both proxies admit 17 and refuse 43. The same holds for concurrency slots. When
Redis goes away the documented policy applies and the proxies keep serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import _proxy
from tests.support.redis import RedisServer
from tests.support.servers import Server

KEY = "sk-shared-limit-key"
HI = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@contextmanager
def replicas(
    mock: Server, directory: Path, redis_url: str, limits: dict[str, int], prefix: str, on_error: str = "open"
) -> Iterator[list[Server]]:
    """Two proxies on one Redis; a fresh key prefix per test so that their counters start empty."""
    digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    config = {
        "auth": {"keys": [{"name": "shared", "key_sha256": digest, "limits": limits}]},
        "limits": {
            "backend": "redis",
            "redis_url": redis_url,
            "on_backend_error": on_error,
            "key_prefix": prefix,
        },
    }
    (directory / "a").mkdir()
    (directory / "b").mkdir()
    with _proxy(mock, directory / "a", config=config) as a, _proxy(mock, directory / "b", config=config) as b:
        yield [a, b]


async def blast(servers: list[Server], count: int, body: dict[str, Any]) -> list[httpx.Response]:
    """`count` concurrent requests, alternating between the replicas."""
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {KEY}"}) as http:
        targets = itertools.cycle(servers)
        return await asyncio.gather(
            *(http.post(f"{next(targets).base_url}/v1/chat/completions", json=body) for _ in range(count))
        )


async def readyz(server: Server) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{server.base_url}/readyz")


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


async def test_rpm_holds_exactly_across_two_replicas(
    mock_upstream: Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    with replicas(mock_upstream, tmp_path, redis_server.url, {"rpm": 17}, "t-rpm:") as servers:
        responses = await blast(servers, 60, HI)
    # 30 requests hit each replica: unshared counters would have admitted 17 on each (34 in all).
    assert statuses(responses) == Counter({200: 17, 429: 43})
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 0 < int(refused.headers["retry-after-ms"]) <= 60_000


async def test_concurrency_holds_exactly_across_two_replicas(
    mock_upstream: Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    slow = {**HI, "messages": [{"role": "user", "content": "[[mock:first_token_delay_ms=1500]]"}]}
    with replicas(mock_upstream, tmp_path, redis_server.url, {"max_concurrent": 3}, "t-conc:") as servers:
        responses = await blast(servers, 20, slow)
        # Slots are given back when requests end: the next wave is admitted again.
        again = await blast(servers, 3, HI)
    assert statuses(responses) == Counter({200: 3, 429: 17})
    assert statuses(again) == Counter({200: 3})


async def test_tpm_holds_exactly_across_two_replicas(
    mock_upstream: Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Each request reserves its prompt (a handful of tokens) + max_tokens 1000: four fit in 4,500. The
    # answers are slow, so no request settles (and gives back its unused reservation) during the burst.
    body = {
        **HI,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "[[mock:first_token_delay_ms=1500]]"}],
    }
    with replicas(mock_upstream, tmp_path, redis_server.url, {"tpm": 4500}, "t-tpm:") as servers:
        responses = await blast(servers, 24, body)
    assert statuses(responses) == Counter({200: 4, 429: 20})
    assert all(r.json()["error"]["type"] == "tokens" for r in responses if r.status_code == 429)


async def test_redis_down_fails_open_or_closed_and_recovers(
    mock_upstream: Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    limits = {"rpm": 1000}
    with (
        replicas(mock_upstream, tmp_path / "open", redis_server.url, limits, "t-open:") as open_servers,
        replicas(
            mock_upstream, tmp_path / "closed", redis_server.url, limits, "t-closed:", "closed"
        ) as closed,
    ):
        assert statuses(await blast(open_servers + closed, 4, HI)) == Counter({200: 4})
        redis_server.stop()
        try:
            down_open = await blast(open_servers, 4, HI)
            down_closed = await blast(closed, 4, HI)
            ready = await readyz(closed[0])
        finally:
            redis_server.start()
        assert statuses(down_open) == Counter({200: 4})
        assert statuses(down_closed) == Counter({503: 4})
        assert down_closed[0].json()["error"]["code"] == "rate_limit_backend_unavailable"
        assert ready.status_code == 503
        assert ready.json()["checks"]["limits_backend"] != "ok"
        # Back again, nothing restarted: after the retry interval one request per replica probes Redis
        # (the others meanwhile get the policy at once), and from then on everything is admitted.
        for server in open_servers + closed:
            for _ in range(100):
                if (await readyz(server)).status_code == 200 and statuses(await blast([server], 1, HI))[200]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{server.base_url} did not recover")
        assert statuses(await blast(open_servers + closed, 8, HI)) == Counter({200: 8})
        assert any('"limit":"fail_open"' in line for line in open_servers[0].log().splitlines())
    for server in open_servers + closed:
        assert "redis://" not in server.log() or "@" not in server.log()
