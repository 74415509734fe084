"""The gauges read at scrape time: each pool entry's health, cooldown and weight, upstream calls in
flight against `upstream.max_concurrent_calls`, and whether the rate-limit store answers, with one
process and with several sharing PROMETHEUS_MULTIPROC_DIR (where each publishes its own pool state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from proxy.http.metrics import MULTIPROC_ENV, PUBLISH_INTERVAL
from tests.conftest import SERVER_KEY, StartProxy, _proxy
from tests.e2e.test_metrics import Samples, ask, idle, scrape, scrape_when, sdk, value
from tests.support.redis import RedisServer
from tests.support.servers import HOST, Server, free_port

HEALTHY = "claude_proxy_upstream_entry_healthy"
COOLDOWN = "claude_proxy_upstream_entry_cooldown_seconds"
WEIGHT = "claude_proxy_upstream_entry_weight"
ACTIVE = "claude_proxy_upstream_active_calls"
MAX_CALLS = "claude_proxy_upstream_max_concurrent_calls"
BACKEND_UP = "claude_proxy_rate_limit_backend_up"


def pool(live: Server, cooldown: float = 600, **upstream: Any) -> dict[str, Any]:
    """A pool whose heavy entry is a closed port: the first request goes there (all but certainly:
    1 in a million goes to `live` first), fails over and cools it down."""
    dead = f"http://{HOST}:{free_port()}"
    entries = [
        {"name": "dead", "base_url": dead, "api_key": SERVER_KEY, "weight": 1_000_000},
        {"name": "live", "base_url": live.base_url, "api_key": SERVER_KEY, "weight": 1},
        {"name": "standby", "base_url": live.base_url, "api_key": SERVER_KEY, "weight": 0},
    ]
    return {"upstream": {"pool": entries, "cooldown": cooldown, **upstream}}


def test_entries_before_and_after_a_failure(start_proxy: StartProxy, mock_upstream: Server) -> None:
    with start_proxy(config=pool(mock_upstream, max_concurrent_calls=7)) as server, sdk(server) as client:
        before = scrape(server)
        ask(client, "fail over")
        after = idle(server)

    for entry, weight in (("dead", 1_000_000), ("live", 1), ("standby", 0)):
        assert value(before, HEALTHY, entry=entry) == 1
        assert value(before, COOLDOWN, entry=entry) == 0
        assert value(after, WEIGHT, entry=entry) == weight
    assert value(after, HEALTHY, entry="dead") == 0
    assert 0 < value(after, COOLDOWN, entry="dead") <= 600
    assert value(after, HEALTHY, entry="live") == value(after, HEALTHY, entry="standby") == 1
    assert value(after, ACTIVE) == 0
    assert value(after, MAX_CALLS) == 7
    assert value(after, BACKEND_UP, backend="memory") == 1


def test_the_cooldown_runs_out(start_proxy: StartProxy, mock_upstream: Server) -> None:
    with start_proxy(config=pool(mock_upstream, cooldown=1.0)) as server, sdk(server) as client:
        ask(client, "fail over")
        cooling = idle(server)
        back = scrape_when(server, lambda s: value(s, HEALTHY, entry="dead") == 1)
    assert value(cooling, HEALTHY, entry="dead") == 0
    assert 0 < value(cooling, COOLDOWN, entry="dead") <= 1.0
    assert value(back, HEALTHY, entry="dead") == 1
    assert value(back, COOLDOWN, entry="dead") == 0


def test_the_single_upstream_is_one_entry(start_proxy: StartProxy, mock_upstream: Server) -> None:
    with start_proxy() as server:
        samples = scrape(server)
    host = mock_upstream.base_url.removeprefix("http://")
    assert value(samples, HEALTHY, entry=host) == 1
    assert value(samples, WEIGHT, entry=host) == 1
    assert value(samples, MAX_CALLS) == 1024  # the default


def test_active_calls_follow_a_stream(start_proxy: StartProxy) -> None:
    """A stream holds its upstream call from the first byte to the last."""
    slow = "[[mock:tokens=12]][[mock:token_delay_ms=60]]"
    body = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": slow}]}
    with start_proxy(config={"upstream": {"max_concurrent_calls": 4}}) as server:
        with httpx.stream(
            "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30
        ) as response:
            chunks = response.iter_raw()
            next(chunks)  # the stream has started
            during = scrape(server)
            assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
        after = idle(server)
    assert value(during, ACTIVE) == 1
    assert value(during, MAX_CALLS) == 4
    assert value(after, ACTIVE) == 0


def test_rate_limit_store_up_and_down(
    start_proxy: StartProxy, redis_server: RedisServer, tmp_path: Path
) -> None:
    def limits(url: str) -> dict[str, Any]:
        return {"limits": {"backend": "redis", "redis_url": url, "on_backend_error": "open"}}

    with start_proxy(config=limits(redis_server.url)) as server:
        up = scrape(server)
    closed = f"redis://{HOST}:{free_port()}/0"
    with start_proxy(config=limits(closed)) as server:
        down = scrape(server)
    assert value(up, BACKEND_UP, backend="redis") == 1
    assert value(down, BACKEND_UP, backend="redis") == 0


def test_workers_publish_their_pool_state(mock_upstream: Server, tmp_path: Path) -> None:
    """Two processes sharing PROMETHEUS_MULTIPROC_DIR (what uvicorn workers do): an entry that one of
    them cools down is unhealthy in the other's scrape too (livemin), calls and caps add up (livesum),
    and once the cooling process is gone, its view is dropped."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {MULTIPROC_ENV: str(directory)}
    config = pool(mock_upstream, max_concurrent_calls=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _proxy(mock_upstream, tmp_path / "b", env=env, config=config) as calm:
        with _proxy(mock_upstream, tmp_path / "a", env=env, config=config) as failing:
            with sdk(failing) as client:
                ask(client, "fail over")

            def published(samples: Samples) -> bool:
                return value(samples, HEALTHY, entry="dead") == 0

            # the failing process writes its state within PUBLISH_INTERVAL; the calm one scrapes
            from_calm = scrape_when(calm, published, timeout=10 * PUBLISH_INTERVAL + 10)
        after_exit = scrape_when(calm, lambda s: value(s, HEALTHY, entry="dead") == 1)

    assert value(from_calm, HEALTHY, entry="dead") == 0
    assert value(from_calm, COOLDOWN, entry="dead") > 0
    assert value(from_calm, HEALTHY, entry="live") == 1
    assert value(from_calm, WEIGHT, entry="dead") == 1_000_000
    assert value(from_calm, MAX_CALLS) == 10  # 5 per process
    assert value(from_calm, ACTIVE) == 0
    assert value(after_exit, HEALTHY, entry="dead") == 1
    assert value(after_exit, COOLDOWN, entry="dead") == 0
    assert value(after_exit, MAX_CALLS) == 5


def test_single_process_metrics_need_no_publisher(start_proxy: StartProxy, mock_upstream: Server) -> None:
    """One process: the state is read at scrape time, so a cooldown shows in the very next scrape."""
    with start_proxy(config=pool(mock_upstream)) as server, sdk(server) as client:
        ask(client, "fail over")
        samples = scrape(server)
    assert value(samples, HEALTHY, entry="dead") == 0


def test_uvicorn_workers_each_publish(start_proxy: StartProxy, tmp_path: Path) -> None:
    """`--workers 2`: whichever worker answers, the caps of both add up once both have published."""
    env = {MULTIPROC_ENV: str(tmp_path / "metrics"), "PROXY_SERVER__WORKERS": "2"}
    with start_proxy(env=env, config={"upstream": {"max_concurrent_calls": 3}}) as server:
        first = scrape_when(server, lambda s: value(s, MAX_CALLS) == 6)
        others = [scrape(server) for _ in range(6)]
    for samples in (first, *others):
        assert value(samples, MAX_CALLS) == 6
        assert value(samples, ACTIVE) == 0
