"""The team gateway over real HTTP: client keys, model access, per-key limits and request guards.

Clients are the official `openai` SDK (and raw HTTP where headers matter). Keys are configured the
three ways operators do it: a SHA-256 in the file, a variable named by `key_env`, and the
`hash-key` command that prints the digest.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartProxy
from tests.support.servers import Server, access_line
from tests.support.wait import in_flight, wait_until

ALPHA_KEY = "sk-team-alpha-0123456789"
BETA_KEY = "sk-team-beta-9876543210"
SLOW_KEY = "sk-team-slow-5555"
HI = [{"role": "user", "content": "hi"}]


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


TEAM_CONFIG: dict[str, Any] = {
    "server": {"max_body_bytes": 4096},
    "auth": {
        "keys": [
            {"name": "alpha", "key_sha256": sha(ALPHA_KEY), "limits": {"rpm": 5}},
            {"name": "beta", "key_env": "BETA_PROXY_KEY", "models": ["gpt-3.5-turbo", "claude-2.1"]},
            {"name": "slow", "key_sha256": sha(SLOW_KEY), "limits": {"max_concurrent": 1}},
        ]
    },
}


@pytest.fixture(scope="module")
def team(mock_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.conftest import _proxy

    with _proxy(
        mock_upstream, tmp_path_factory.mktemp("team"), env={"BETA_PROXY_KEY": BETA_KEY}, config=TEAM_CONFIG
    ) as server:
        yield server


def sdk(server: Server, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=retries)


def post(server: Server, key: str | None, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if isinstance(body, bytes):
        return httpx.post(f"{server.base_url}/v1/chat/completions", content=body, headers=headers, timeout=10)
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=10)


# --- keys ----------------------------------------------------------------------------------------------


def test_valid_keys_of_every_kind_are_served(team: Server) -> None:
    for key in (ALPHA_KEY, BETA_KEY):
        with sdk(team, key) as client:
            answer = client.chat.completions.create(model="gpt-3.5-turbo", messages=HI)  # type: ignore[arg-type]
            assert answer.choices[0].message.content


def test_missing_and_wrong_keys_get_401_invalid_api_key(team: Server) -> None:
    missing = post(team, None, {"model": "gpt-4", "messages": HI})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert "didn't provide an API key" in missing.json()["error"]["message"]
    with sdk(team, "sk-team-alpha-0123456788") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4", messages=HI)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_api_key"
    assert "0123456788" not in caught.value.message  # the presented key is never echoed
    # Models need a key too; probes and metrics do not.
    assert httpx.get(f"{team.base_url}/v1/models").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{team.base_url}{path}").status_code == 200, path


def test_keys_never_reach_the_log_and_the_key_name_does(team: Server) -> None:
    with sdk(team, BETA_KEY) as client:
        client.chat.completions.create(
            model="claude-2.1", messages=HI, extra_headers={"x-request-id": "req-beta-log"}
        )  # type: ignore[arg-type]
    line = access_line(team, "req-beta-log")
    assert line["key_name"] == "beta"
    log = team.log()
    for secret in (ALPHA_KEY, BETA_KEY, SLOW_KEY):
        assert secret not in log


def test_model_access_per_key(team: Server) -> None:
    with sdk(team, BETA_KEY) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="gpt-4", messages=HI)  # type: ignore[arg-type]
        assert caught.value.code == "model_not_found"
        assert "beta" in caught.value.message
        listed = {model.id for model in client.models.list()}
        assert listed == {"gpt-3.5-turbo", "claude-2.1"}
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4")
        assert client.models.retrieve("claude-2.1").id == "claude-2.1"
    with sdk(team, ALPHA_KEY) as client:
        assert "gpt-4" in {model.id for model in client.models.list()}  # no restriction
    # An unknown model stays 404 for everyone.
    with sdk(team, BETA_KEY) as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]


def test_hash_key_command_prints_the_digest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "hash-key"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == sha("s3cret")


def test_client_keys_need_an_upstream_key(start_proxy: StartProxy) -> None:
    config = {"auth": {"keys": [{"name": "a", "key_sha256": sha("x")}]}}
    with (
        pytest.raises(RuntimeError, match="client keys are never passed upstream"),
        start_proxy(config=config, api_key=None),
    ):
        pass


# --- limits --------------------------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_the_real_window(start_proxy: StartProxy) -> None:
    config = {
        "auth": {"keys": [{"name": "rpm2", "key_sha256": sha("k-rpm"), "limits": {"rpm": 2, "tpm": 100000}}]}
    }
    with start_proxy(config=config) as server:
        first = post(server, "k-rpm", {"model": "gpt-4", "messages": HI, "max_tokens": 10})
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100000
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        started = time.monotonic()
        assert post(server, "k-rpm", {"model": "gpt-4", "messages": HI, "max_tokens": 10}).status_code == 200
        with sdk(server, "k-rpm") as client, pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model="gpt-4", messages=HI, max_tokens=10, extra_headers={"x-request-id": "req-rpm-3"}
            )  # type: ignore[arg-type]
        line = access_line(server, "req-rpm-3")
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "rpm2" in error.message and "k-rpm" not in error.message
    headers = error.response.headers
    # The window is real: the first admission leaves it 60 s after it happened.
    wait_ms = int(headers["retry-after-ms"])
    assert 55_000 < wait_ms <= 60_000 - (time.monotonic() - started) * 1000 + 1000
    assert headers["retry-after"] == str(-(-wait_ms // 1000))
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert line["limit"] == "rejected:rpm"
    assert line["status"] == 429


def test_tpm_reserves_max_tokens_and_settles_on_the_real_count(start_proxy: StartProxy) -> None:
    config = {"auth": {"keys": [{"name": "tpm", "key_sha256": sha("k-tpm"), "limits": {"tpm": 3000}}]}}
    with start_proxy(config=config) as server:
        body = {"model": "gpt-4", "messages": HI, "max_tokens": 1000}
        first = post(server, "k-tpm", body)
        assert first.status_code == 200
        # Reserved at admission: prompt + 1000; the header reports that reservation.
        reserved = 3000 - int(first.headers["x-ratelimit-remaining-tokens"])
        assert 1000 < reserved < 1100
        # Settled afterwards to the real usage (a few tokens), so far more than 2000 is left now.
        second = post(server, "k-tpm", body)
        assert second.status_code == 200
        remaining = int(second.headers["x-ratelimit-remaining-tokens"])
        usage = first.json()["usage"]["total_tokens"]
        assert remaining == 3000 - usage - reserved
        # A request that can never fit is refused outright, without a retry hint that would mislead.
        huge = post(server, "k-tpm", {**body, "max_tokens": 5000})
        assert huge.status_code == 429
        assert huge.json()["error"]["type"] == "tokens"
        assert huge.headers["x-should-retry"] == "false"


def test_sdk_retry_on_429_waits_the_advertised_time_and_succeeds(team: Server) -> None:
    """Key `slow` allows one request at a time: a second one is refused with retry-after 1 s; the SDK
    waits that long, retries, and succeeds once the first request has finished."""
    hold = [
        {
            "role": "user",
            "content": "[[mock:tokens=8]][[mock:token_delay_ms=150]][[mock:first_token_delay_ms=0]]",
        }
    ]
    done = threading.Event()

    def holder() -> None:
        with sdk(team, SLOW_KEY) as client:
            for _ in client.chat.completions.create(model="gpt-4", messages=hold, stream=True):  # type: ignore[arg-type]
                pass
        done.set()

    thread = threading.Thread(target=holder)
    thread.start()
    wait_until(lambda: in_flight(team.base_url, "streams") == 1, "the holding stream under way")
    with sdk(team, SLOW_KEY, retries=3) as client:
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4",
            messages=HI,
            extra_headers={"x-request-id": "req-slow-retry"},  # type: ignore[arg-type]
        )
        elapsed = time.monotonic() - started
    thread.join(10)
    assert done.is_set()
    assert raw.parse().choices[0].message.content
    assert raw.retries_taken >= 1
    assert elapsed >= 1.0 * raw.retries_taken * 0.95  # each retry waited the advertised second
    rejected = [
        line for line in team.log().splitlines() if "req-slow-retry" in line and '"status":429' in line
    ]
    assert len(rejected) == raw.retries_taken
    assert all('"limit":"rejected:concurrency"' in line for line in rejected)


# --- guards --------------------------------------------------------------------------------------------


def test_body_larger_than_the_limit_gets_413(team: Server) -> None:
    big = {"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = post(team, ALPHA_KEY, big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    # Without a Content-Length (chunked upload) the limit holds as well.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gpt-4", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    chunked = httpx.post(
        f"{team.base_url}/v1/chat/completions",
        content=chunks(),
        headers={"authorization": f"Bearer {ALPHA_KEY}", "content-type": "application/json"},
        timeout=10,
    )
    assert chunked.status_code == 413
    with sdk(team, ALPHA_KEY) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4", messages=big["messages"])  # type: ignore[arg-type]
    assert caught.value.status_code == 413


def test_max_n_guard(team: Server) -> None:
    response = post(team, BETA_KEY, {"model": "claude-2.1", "messages": HI, "n": 129})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
