"""The exact-match response cache over real HTTP: off by default, HIT/MISS, streams replayed as streams
with fresh ids, Cache-Control, scoped to the client key, failures never stored, metrics, Redis shared."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import StartProxy, redis_replicas
from tests.support.redis import RedisServer
from tests.support.servers import Server, mock_requests


def tag() -> str:
    return f"cache{uuid.uuid4().hex[:12]}"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4", "messages": [{"role": "user", "content": text}], **extra}


def post(server: Server, body: dict[str, Any], key: str = "k", **headers: str) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.post(
            f"{server.base_url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}", **headers},
        )


def upstream_calls(mock: Server, word: str) -> int:
    return sum(word in str(r["body"]) for r in mock_requests(mock))


def stream_text(raw: str) -> tuple[str, list[dict[str, Any]]]:
    chunks = [orjson.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks


@pytest.fixture
def cached(start_proxy: StartProxy) -> Iterator[Server]:
    with start_proxy(config={"cache": {"enabled": True}}) as server:
        yield server


def test_off_by_default(proxy: Server, mock_upstream: Server) -> None:
    word = tag()
    assert "x-cache" not in post(proxy, chat(word)).headers
    post(proxy, chat(word))
    assert upstream_calls(mock_upstream, word) == 2


def test_miss_then_hit_with_fresh_ids(cached: Server, mock_upstream: Server) -> None:
    word = tag()
    first, second = post(cached, chat(word)), post(cached, chat(word))
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.json()["choices"] == second.json()["choices"]
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["usage"] == first.json()["usage"]
    assert upstream_calls(mock_upstream, word) == 1
    different = post(cached, chat(word, temperature=0.3))
    assert different.headers["x-cache"] == "MISS"


def test_a_cached_stream_replays_as_a_stream(cached: Server, mock_upstream: Server) -> None:
    word = tag()
    body = chat(word, stream=True, stream_options={"include_usage": True})
    first, second = post(cached, body), post(cached, body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.headers["content-type"].startswith("text/event-stream")
    (text_1, chunks_1), (text_2, chunks_2) = stream_text(first.text), stream_text(second.text)
    assert text_1 == text_2 and word in text_2
    assert second.text.endswith("data: [DONE]\n\n")
    assert chunks_2[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks_2[-1]["usage"] == chunks_1[-1]["usage"] and chunks_2[0]["id"] != chunks_1[0]["id"]
    # A plain request for the same question is answered from the same entry.
    assert post(cached, chat(word)).headers["x-cache"] == "HIT"
    assert upstream_calls(mock_upstream, word) == 1


def test_a_stream_is_cached_before_its_last_bytes(cached: Server, mock_upstream: Server) -> None:
    """A client that has read `[DONE]` and asks again at once gets the cached answer: the answer is
    kept before its last bytes are written, not when the response closes (which, with an upstream
    that keeps its body open after the final event, comes up to a second later)."""
    word = tag()
    body = chat(f"{word} [[mock:hold_open_ms=5000]]", stream=True)
    headers = {"authorization": "Bearer k"}
    url = f"{cached.base_url}/v1/chat/completions"
    with (
        httpx.Client(timeout=30) as first,
        httpx.Client(timeout=30) as again,
        first.stream("POST", url, json=body, headers=headers) as stream,
    ):
        assert stream.headers["x-cache"] == "MISS"
        seen, pieces = "", stream.iter_text()  # held: closing the iterator would hang up
        for text in pieces:
            seen += text
            if "data: [DONE]" in seen:
                break
        second = again.post(url, json=body, headers=headers)
        assert stream.is_closed is False
    assert second.headers["x-cache"] == "HIT"
    assert stream_text(seen)[0] == stream_text(second.text)[0] != ""
    assert upstream_calls(mock_upstream, word) == 1


def test_cache_control_no_cache_and_no_store(cached: Server, mock_upstream: Server) -> None:
    word = tag()
    assert post(cached, chat(word), **{"cache-control": "no-store"}).headers["x-cache"] == "BYPASS"
    assert post(cached, chat(word)).headers["x-cache"] == "MISS"  # no-store kept nothing
    assert post(cached, chat(word), **{"cache-control": "no-cache"}).headers["x-cache"] == "BYPASS"
    assert post(cached, chat(word)).headers["x-cache"] == "HIT"
    assert upstream_calls(mock_upstream, word) == 3


def test_failures_are_never_stored(cached: Server) -> None:
    broken = chat(f"{tag()} [[mock:tokens=6]][[mock:stream_error_after=2]]", stream=True)
    assert '"error"' in post(cached, broken).text
    assert post(cached, broken).headers["x-cache"] == "MISS"
    failing = chat(f"{tag()} [[mock:status=400]]")
    assert post(cached, failing).status_code == 400
    assert post(cached, failing).status_code == 400


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_one_key_never_gets_another_keys_answer(start_proxy: StartProxy) -> None:
    config = {
        "cache": {"enabled": True},
        "auth": {
            "keys": [{"name": "a", "key_sha256": sha("key-a")}, {"name": "b", "key_sha256": sha("key-b")}]
        },
    }
    word = tag()
    with start_proxy(config=config) as server:
        assert post(server, chat(word), key="key-a").headers["x-cache"] == "MISS"
        assert post(server, chat(word), key="key-b").headers["x-cache"] == "MISS"
        assert post(server, chat(word), key="key-a").headers["x-cache"] == "HIT"
        with httpx.Client(timeout=10) as http:
            scrape = http.get(f"{server.base_url}/metrics").text
    assert 'claude_proxy_cache_requests_total{result="hit"} 1.0' in scrape
    assert 'claude_proxy_cache_requests_total{result="miss"} 2.0' in scrape


@pytest.fixture
def shared(
    mock_upstream: Server, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Server, Server]]:
    with redis_replicas(mock_upstream, redis_server, tmp_path, {"cache": {"enabled": True}}) as servers:
        yield servers


def test_replicas_share_the_cache_through_redis(shared: tuple[Server, Server], mock_upstream: Server) -> None:
    a, b = shared
    word = tag()
    assert post(a, chat(word)).headers["x-cache"] == "MISS"
    assert post(b, chat(word)).headers["x-cache"] == "HIT"
    assert upstream_calls(mock_upstream, word) == 1
