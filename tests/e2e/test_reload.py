"""Reloading client keys and limits on SIGHUP, and `check-config`, against real proxy processes.

The proxy runs as `python -m proxy serve --config FILE` (one process); the tests rewrite FILE, send
the process a real SIGHUP and poll its log (bounded) for the outcome before checking what clients
get. `check-config` runs as the command an operator types.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import StartProxy
from tests.support.servers import Server, access_line

ALPHA = "sk-reload-alpha-1111111111"
BETA = "sk-reload-beta-2222222222"
GAMMA = "sk-reload-gamma-3333333333"
DELTA = "sk-reload-delta-4444444444"
SECRETS = (ALPHA, BETA, GAMMA, DELTA)
#: Both variables are in the proxy's environment from the start; only the file decides which is a key.
ENV = {"BETA_KEY": BETA, "DELTA_KEY": DELTA}
HI = [{"role": "user", "content": "hi"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


BEFORE: dict[str, Any] = {
    "auth": {
        "keys": [
            {"name": "alpha", "key_sha256": sha(ALPHA), "limits": {"rpm": 100}},
            {"name": "beta", "key_env": "BETA_KEY"},
            {"name": "gamma", "key_sha256": sha(GAMMA), "limits": {"max_concurrent": 1}},
        ]
    }
}
AFTER: dict[str, Any] = {
    "auth": {
        "keys": [
            {"name": "alpha", "key_sha256": sha(ALPHA), "limits": {"rpm": 1}},  # limit lowered
            {"name": "beta", "key_env": "BETA_KEY", "models": ["gpt-3.5-turbo"]},  # models narrowed
            {"name": "delta", "key_env": "DELTA_KEY"},  # added, from the environment
        ]  # gamma removed
    }
}


def config_file(server: Server) -> Path:
    """The file `start_proxy` wrote and the proxy reads again on SIGHUP."""
    return server.log_path.parent / "config.yaml"


def events(server: Server, name: str) -> list[dict[str, Any]]:
    """The proxy's `name` log lines so far (complete lines only: the last one may be half written)."""
    found = []
    for line in server.log().splitlines():
        if line.startswith("{") and f'"event":"{name}"' in line:
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return found


def hangup(server: Server, outcome: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send SIGHUP and wait (bounded) for one more `outcome` log line; return it."""
    seen = len(events(server, outcome))
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(server, outcome)
        if len(found) > seen:
            return found[-1]
        assert server.process.poll() is None, f"the proxy exited on SIGHUP:\n{server.log()}"
        time.sleep(0.05)
    raise AssertionError(f"no {outcome} line within {timeout}s:\n{server.log()}")


def chat(server: Server, key: str, model: str = "gpt-4", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": model, "messages": HI},
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=10,
    )


def test_keys_limits_and_models_reload_while_a_stream_runs(start_proxy: StartProxy) -> None:
    with start_proxy(config=BEFORE, env=ENV) as server:
        assert chat(server, ALPHA).status_code == 200  # one request in alpha's window
        assert chat(server, BETA).status_code == 200
        assert chat(server, DELTA).status_code == 401
        slow = "[[mock:tokens=40]][[mock:token_delay_ms=100]][[mock:first_token_delay_ms=0]]"
        body = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": slow}]}
        headers = {"authorization": f"Bearer {GAMMA}", "x-request-id": "req-in-flight"}
        url = f"{server.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["delta"]

            config_file(server).write_text(yaml.safe_dump(AFTER))
            reloaded = hangup(server, "config_reloaded")

            rest = [line for line in lines if line.startswith("data: ")]
        assert len(rest) > 20  # most of the stream came after the reload
        # The stream admitted as gamma finished normally, after gamma was removed.
        assert rest[-1] == "data: [DONE]"
        assert any(json.loads(line[6:])["choices"][0].get("finish_reason") == "stop" for line in rest[:-1])
        access = access_line(server, "req-in-flight")  # written once the stream has been sent in full
        assert access["status"] == 200 and access["key_name"] == "gamma"
        log = server.log()
        assert log.index('"event":"config_reloaded"') < log.index('"request_id":"req-in-flight"')

        assert reloaded["keys_added"] == ["delta"]
        assert reloaded["keys_removed"] == ["gamma"]
        assert reloaded["keys_changed"] == ["alpha", "beta"]
        assert reloaded["changed"] == ["auth"]
        # Host and port come from the command line, not the file: no restart warning for them.
        assert events(server, "config_reload_needs_restart") == []

        assert chat(server, DELTA).status_code == 200  # added
        gone = chat(server, GAMMA)  # removed
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"
        limited = chat(server, ALPHA)  # rpm 1, and the request before the reload counts
        assert limited.status_code == 429, limited.text
        assert limited.headers["x-ratelimit-limit-requests"] == "1"
        narrowed = chat(server, BETA)  # gpt-4 no longer among beta's models
        assert narrowed.status_code == 403 and narrowed.json()["error"]["code"] == "model_not_found"
        assert chat(server, BETA, model="gpt-3.5-turbo").status_code == 200
        assert not [secret for secret in SECRETS if secret in server.log()]


def test_a_broken_file_is_refused_and_the_running_keys_stay(start_proxy: StartProxy) -> None:
    with start_proxy(config=BEFORE, env=ENV) as server:
        path = config_file(server)
        # Unparseable YAML whose broken line holds a key: the error names the place, never the line.
        path.write_text(f"auth:\n  keys: [{{name: delta, key: {DELTA}]\n")
        failed = hangup(server, "config_reload_failed")
        assert failed["level"] == "error"
        assert "line 2" in failed["error"] and "config.yaml" in failed["error"]
        assert chat(server, ALPHA).status_code == 200
        assert chat(server, DELTA).status_code == 401

        # Valid YAML, invalid configuration: every problem is named.
        broken = {"auth": {"keys": [{"name": "alpha", "key": ALPHA, "key_sha256": sha(ALPHA)}]}}
        broken["limits"] = {"default": {"rpm": 0}}
        path.write_text(yaml.safe_dump(broken))
        failed = hangup(server, "config_reload_failed")
        assert "auth.keys.0" in failed["error"] and "limits.default.rpm" in failed["error"]

        # A key_env naming a variable the process does not have.
        path.write_text(yaml.safe_dump({"auth": {"keys": [{"name": "eps", "key_env": "NOT_SET_ANYWHERE"}]}}))
        failed = hangup(server, "config_reload_failed")
        assert "NOT_SET_ANYWHERE" in failed["error"]

        for key in (ALPHA, BETA, GAMMA):  # the keys of the last good configuration all still work
            assert chat(server, key).status_code == 200
        assert not [secret for secret in SECRETS if secret in server.log()]

        # A good file is taken again after the broken ones.
        path.write_text(yaml.safe_dump(AFTER))
        hangup(server, "config_reloaded")
        assert chat(server, DELTA).status_code == 200


def test_client_keys_cannot_appear_behind_a_running_pass_through_upstream(start_proxy: StartProxy) -> None:
    """Pass-through sends the Bearer token upstream. A file that adds client keys together with an
    upstream key is valid for a fresh start, but the running upstream (no key) stays until a restart:
    the reload is refused, or client keys would be sent upstream."""
    with start_proxy(config={"models": {"unknown": "reject"}}, api_key=None, env=ENV) as server:
        path = config_file(server)
        path.write_text(yaml.safe_dump({**BEFORE, "upstream": {"api_key": "sk-ant-new-upstream-key"}}))
        failed = hangup(server, "config_reload_failed")
        assert "client keys are never passed upstream" in failed["error"]
        assert "sk-ant-new-upstream-key" not in server.log()
        assert chat(server, "sk-ant-clients-own-key").status_code == 200  # still pass-through, no client auth


def test_sections_that_need_a_restart_are_named_and_keep_running(start_proxy: StartProxy) -> None:
    with start_proxy(config=BEFORE, env=ENV) as server:
        changed = {
            **BEFORE,
            "server": {"max_body_bytes": 2048},
            "cors": {"allow_origins": ["https://x.example"]},
        }
        config_file(server).write_text(yaml.safe_dump(changed))
        warning = hangup(server, "config_reload_needs_restart")
        assert warning["level"] == "warning"
        assert warning["sections"] == ["server", "cors"]
        reloaded = events(server, "config_reloaded")[-1]
        assert reloaded["changed"] == []
        # The running values stay: a 4 KiB body is still accepted, and CORS is still off.
        big = "x" * 4096
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": "gpt-4", "messages": [{"role": "user", "content": big}]},
            headers={"authorization": f"Bearer {ALPHA}", "origin": "https://x.example"},
            timeout=10,
        )
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


def check_config(path: Path | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "proxy", "check-config"] + (["--config", str(path)] if path else [])
    return subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin", **(env or {})}
    )


def test_check_config_summarises_a_good_file_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    config = {
        "upstream": {
            "api_key": "sk-ant-upstream-secret-9999",
            "base_url": "https://user:pw-secret@up.example",
        },
        "auth": {
            "keys": [
                {"name": "inline", "key": ALPHA, "limits": {"rpm": 5}},
                {"name": "from-env", "key_env": "BETA_KEY", "models": ["gpt-4"]},
                {"name": "hashed", "key_sha256": sha(GAMMA)},
            ]
        },
        "limits": {"backend": "redis", "redis_url": "redis://:redis-secret@127.0.0.1:1/0"},
    }
    path.write_text(yaml.safe_dump(config))
    result = check_config(path, ENV)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "client keys: 3" in out
    for name in ("inline", "from-env", "hashed", "rpm=5", "env BETA_KEY", "https://up.example", "redis"):
        assert name in out
    for secret in (*SECRETS, sha(GAMMA), "sk-ant-upstream-secret-9999", "pw-secret", "redis-secret"):
        assert secret not in out


def test_check_config_exits_2_with_the_errors_and_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "upstream": {"api_key": "sk-ant-upstream-secret-9999", "timeouts": {"connect": -1}},
                "auth": {
                    "keys": [{"name": "both", "key": ALPHA, "key_sha256": sha(ALPHA)}, {"name": "bad name"}]
                },
                "limits": {"backend": "redis", "redis_url": "http://:redis-secret@host"},
            }
        )
    )
    result = check_config(path)
    assert result.returncode == 2
    assert result.stdout == ""
    for where in ("upstream.timeouts.connect", "auth.keys.0", "auth.keys.1.name", "limits"):
        assert where in result.stderr
    # A file that is not even YAML, with a key on the broken line.
    path.write_text(f"auth:\n  keys: [{{name: a, key: {BETA}]\n")
    unparsable = check_config(path)
    assert unparsable.returncode == 2 and "line 2" in unparsable.stderr
    # A key_env that is not set; a file that does not exist.
    path.write_text(
        yaml.safe_dump({"upstream": {"api_key": "x"}, "auth": {"keys": [{"name": "e", "key_env": "NOPE"}]}})
    )
    missing_env = check_config(path)
    assert missing_env.returncode == 2 and "NOPE" in missing_env.stderr
    missing_file = check_config(tmp_path / "absent.yaml")
    assert missing_file.returncode == 2 and "absent.yaml" in missing_file.stderr
    for answer in (result, unparsable, missing_env, missing_file):
        for secret in (ALPHA, sha(ALPHA), BETA, "sk-ant-upstream-secret-9999", "redis-secret"):
            assert secret not in answer.stdout + answer.stderr
