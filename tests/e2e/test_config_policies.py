"""Each documented configuration choice (`proxy/config.py`, `config.example.yaml`) over real HTTP.

Proxies that share a configuration are started once per module; the session `proxy` fixture stands for
the defaults. What the upstream received is read back from the mock's request log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import _proxy
from tests.support.servers import Server, mock_requests
from tests.support.upstream import marker

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ROOT = Path(__file__).resolve().parents[2]

#: One proxy for every non-default policy that does not conflict with another.
POLICY_CONFIG: dict[str, Any] = {
    "models": {
        "served": ["claude-2.1", "claude-instant-1.2"],
        "aliases": {"house-model": "claude-instant-1.2", "gpt-4": "claude-2.1"},
        "unknown": "pass_through",
    },
    "generation": {
        "temperature": "scale",
        "unsupported_params": "reject",
        "default_max_tokens": 7,
        "max_n": 2,
    },
}

#: YAML values that the environment must override (precedence: YAML < ANTHROPIC_* < PROXY_*).
OVERRIDE_CONFIG: dict[str, Any] = {
    "upstream": {"base_url": "http://127.0.0.1:9"},  # beaten by ANTHROPIC_BASE_URL (the mock)
    "models": {"aliases": {"yaml-alias": "claude-2.1"}},
    "generation": {"temperature": "reject", "default_max_tokens": 7},
}
OVERRIDE_ENV = {
    "PROXY_GENERATION__DEFAULT_MAX_TOKENS": "9",
    "PROXY_MODELS__ALIASES": json.dumps({"env-alias": "claude-2.0"}),
}


@pytest.fixture(scope="module")
def policy_proxy(mock_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _proxy(mock_upstream, tmp_path_factory.mktemp("policies"), config=POLICY_CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def override_proxy(mock_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("overrides")
    with _proxy(mock_upstream, directory, env=OVERRIDE_ENV, config=OVERRIDE_CONFIG) as server:
        yield server


def body_for(path: str, text: str, model: str = "claude-2.1", **fields: Any) -> dict[str, Any]:
    if path == CHAT:
        return {"model": model, "messages": [{"role": "user", "content": text}], **fields}
    return {"model": model, "prompt": text, **fields}


def upstream_bodies(mock: Server, mark: str) -> list[dict[str, Any]]:
    return [r["body"] for r in mock_requests(mock) if mark in str(r["raw"])]  # type: ignore[misc]


def sent_upstream(
    http: httpx.Client, server: Server, mock: Server, path: str = CHAT, **fields: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    """POST one request and return the response and the single upstream body it caused."""
    mark = marker()
    response = http.post(server.base_url + path, json=body_for(path, mark, **fields))
    assert response.status_code == 200, response.text
    (body,) = upstream_bodies(mock, mark)
    return response, body


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_custom_alias_resolves_to_its_target(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, path: str
) -> None:
    _, body = sent_upstream(http, policy_proxy, mock_upstream, path, model="house-model")
    assert body["model"] == "claude-instant-1.2"
    _, body = sent_upstream(http, policy_proxy, mock_upstream, path, model="gpt-4")
    assert body["model"] == "claude-2.1"


def test_default_alias_resolves(http: httpx.Client, proxy: Server, mock_upstream: Server) -> None:
    _, body = sent_upstream(http, proxy, mock_upstream, model="gpt-3.5-turbo")
    assert body["model"] == "claude-instant-1.2"


def test_models_lists_served_then_aliases(http: httpx.Client, policy_proxy: Server) -> None:
    ids = [m["id"] for m in http.get(policy_proxy.base_url + "/v1/models").json()["data"]]
    assert ids[:2] == ["claude-2.1", "claude-instant-1.2"]  # served, in configured order
    assert sorted(ids[2:]) == ["gpt-4", "house-model"]  # then the aliases
    assert http.get(policy_proxy.base_url + "/v1/models/house-model").json()["id"] == "house-model"
    # The configured aliases replace the default ones.
    error = error_of(http.get(policy_proxy.base_url + "/v1/models/gpt-4o"), 404)
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_pass_through(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, stream: bool
) -> None:
    mark = marker()
    response = http.post(
        policy_proxy.base_url + CHAT, json=body_for(CHAT, mark, model="claude-x-unknown", stream=stream)
    )
    error = error_of(response, 404)
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    assert error["message"] == "model: claude-x-unknown"  # the upstream's own answer, kept
    (body,) = upstream_bodies(mock_upstream, mark)
    assert body["model"] == "claude-x-unknown"


def test_unknown_model_pass_through_lets_the_upstream_serve_it(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server
) -> None:
    # Not configured, but the upstream serves it: pass_through means the upstream decides.
    response, body = sent_upstream(http, policy_proxy, mock_upstream, COMPLETIONS, model="claude-2.0")
    assert body["model"] == "claude-2.0"
    assert response.json()["choices"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_unknown_model_rejected_by_default(
    http: httpx.Client, proxy: Server, mock_upstream: Server, path: str
) -> None:
    mark = marker()
    response = http.post(proxy.base_url + path, json=body_for(path, mark, model="claude-2.0-custom"))
    error = error_of(response, 404)
    assert error["code"] == "model_not_found"
    assert error["message"] == "The model `claude-2.0-custom` does not exist or you do not have access to it."
    assert upstream_bodies(mock_upstream, mark) == []


# --------------------------------------------------------------------------------------------------
# generation.temperature
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "expected"), [(1.5, 0.75), (0.5, 0.25), (2, 1.0), (0, 0)])
def test_temperature_scale(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, sent: float, expected: float
) -> None:
    for path in (CHAT, COMPLETIONS):
        _, body = sent_upstream(http, policy_proxy, mock_upstream, path, temperature=sent)
        assert body["temperature"] == pytest.approx(expected)


@pytest.mark.parametrize(("sent", "expected"), [(1.5, 1.0), (2, 1.0), (0.5, 0.5), (1, 1)])
def test_temperature_clamp_by_default(
    http: httpx.Client, proxy: Server, mock_upstream: Server, sent: float, expected: float
) -> None:
    _, body = sent_upstream(http, proxy, mock_upstream, temperature=sent)
    assert body["temperature"] == pytest.approx(expected)


def test_temperature_reject(http: httpx.Client, override_proxy: Server, mock_upstream: Server) -> None:
    for path in (CHAT, COMPLETIONS):
        mark = marker()
        response = http.post(override_proxy.base_url + path, json=body_for(path, mark, temperature=1.5))
        error = error_of(response, 400)
        assert (error["type"], error["param"]) == ("invalid_request_error", "temperature")
        assert upstream_bodies(mock_upstream, mark) == []
        for allowed in (0.7, 1):
            _, body = sent_upstream(http, override_proxy, mock_upstream, path, temperature=allowed)
            assert body["temperature"] == pytest.approx(allowed)


# --------------------------------------------------------------------------------------------------
# generation.unsupported_params
# --------------------------------------------------------------------------------------------------

REJECTED = [
    ("presence_penalty", 0.5),
    ("frequency_penalty", -1),
    ("logit_bias", {"50256": -100}),
    ("seed", 0),
    ("store", True),
    ("metadata", {"team": "a"}),
    ("service_tier", "flex"),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("prompt_cache_key", "k"),
]
NEUTRAL = [
    ("presence_penalty", 0),
    ("frequency_penalty", 0.0),
    ("logit_bias", {}),
    ("store", False),
    ("metadata", {}),
    ("service_tier", "auto"),
    ("parallel_tool_calls", True),
]


@pytest.mark.parametrize(("field", "value"), REJECTED)
def test_unsupported_params_reject(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, field: str, value: Any
) -> None:
    mark = marker()
    response = http.post(policy_proxy.base_url + CHAT, json=body_for(CHAT, mark, **{field: value}))
    error = error_of(response, 400)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "unsupported_parameter",
        field,
    )
    assert upstream_bodies(mock_upstream, mark) == []


def test_unsupported_params_reject_on_completions(http: httpx.Client, policy_proxy: Server) -> None:
    response = http.post(
        policy_proxy.base_url + COMPLETIONS, json=body_for(COMPLETIONS, "x", presence_penalty=0.5)
    )
    error = error_of(response, 400)
    assert (error["code"], error["param"]) == ("unsupported_parameter", "presence_penalty")


@pytest.mark.parametrize(("field", "value"), NEUTRAL)
def test_unsupported_params_reject_lets_neutral_values_pass(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, field: str, value: Any
) -> None:
    _, body = sent_upstream(http, policy_proxy, mock_upstream, **{field: value})
    assert field not in body


@pytest.mark.parametrize(("field", "value"), REJECTED)
def test_unsupported_params_dropped_by_default(
    http: httpx.Client, proxy: Server, mock_upstream: Server, field: str, value: Any
) -> None:
    _, body = sent_upstream(http, proxy, mock_upstream, **{field: value})
    assert field not in body or (field == "metadata" and body[field] != value)


# --------------------------------------------------------------------------------------------------
# generation.default_max_tokens and max_n
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_default_max_tokens(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, path: str
) -> None:
    _, body = sent_upstream(http, policy_proxy, mock_upstream, path)
    assert body["max_tokens_to_sample"] == 7
    _, body = sent_upstream(http, policy_proxy, mock_upstream, path, max_tokens=20)
    assert body["max_tokens_to_sample"] == 20


def test_default_max_tokens_default(http: httpx.Client, proxy: Server, mock_upstream: Server) -> None:
    _, body = sent_upstream(http, proxy, mock_upstream)
    assert body["max_tokens_to_sample"] == 4096


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", [False, True])
def test_max_n(
    http: httpx.Client, policy_proxy: Server, mock_upstream: Server, path: str, stream: bool
) -> None:
    mark = marker()
    response = http.post(policy_proxy.base_url + path, json=body_for(path, mark, n=3, stream=stream))
    error = error_of(response, 400)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "n",
        "integer_above_max_value",
    )
    assert upstream_bodies(mock_upstream, mark) == []
    ok = http.post(policy_proxy.base_url + path, json=body_for(path, mark, n=2, stream=stream))
    assert ok.status_code == 200, ok.text
    assert len(upstream_bodies(mock_upstream, mark)) == 2


# --------------------------------------------------------------------------------------------------
# Precedence: defaults < YAML < ANTHROPIC_* < PROXY_*
# --------------------------------------------------------------------------------------------------


def test_environment_beats_yaml(http: httpx.Client, override_proxy: Server, mock_upstream: Server) -> None:
    # The YAML's upstream.base_url points at a closed port: answering at all shows ANTHROPIC_BASE_URL won.
    _, body = sent_upstream(http, override_proxy, mock_upstream)
    assert body["max_tokens_to_sample"] == 9  # PROXY_GENERATION__DEFAULT_MAX_TOKENS over YAML's 7
    _, body = sent_upstream(http, override_proxy, mock_upstream, model="env-alias")
    assert body["model"] == "claude-2.0"  # PROXY_MODELS__ALIASES (JSON) replaced the YAML mapping
    ids = [m["id"] for m in http.get(override_proxy.base_url + "/v1/models").json()["data"]]
    assert "env-alias" in ids and "yaml-alias" not in ids


# --------------------------------------------------------------------------------------------------
# Invalid configuration
# --------------------------------------------------------------------------------------------------

YAML_SECRET = "sk-ant-yaml-secret-" + "x" * 16
ENV_SECRET = "sk-ant-env-secret-" + "y" * 16

#: name → (YAML content or None, extra environment, what the error output must name).
INVALID_CASES: dict[str, tuple[Any, dict[str, str], list[str]]] = {
    "yaml-values": (
        {
            "generation": {"temperature": "hot", "tempreature": "clamp", "max_n": 500},
            "upstream": {"max_retries": "many", "base_url": "ftp://example.com", "api_key": YAML_SECRET},
            "models": {"unknown": "maybe"},
        },
        {},
        [
            "generation.temperature",
            "generation.tempreature",
            "generation.max_n",
            "upstream.max_retries",
            "upstream.base_url",
            "models.unknown",
        ],
    ),
    # The secret itself is the invalid value (and no ANTHROPIC_API_KEY hides it).
    "secret-as-api-key": (
        {"upstream": {"api_key": {"value": YAML_SECRET}}},
        {"ANTHROPIC_API_KEY": ""},
        ["upstream.api_key"],
    ),
    "env-value": (None, {"PROXY_UPSTREAM__COOLDOWN": "-1"}, ["upstream.cooldown"]),
    "yaml-syntax": ("generation: [unclosed", {}, ["bad.yaml"]),
    "yaml-not-a-mapping": ("- just\n- a list\n", {}, ["bad.yaml"]),
}


@pytest.fixture(scope="module")
def invalid_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int | None, str]]:
    """Run `python -m proxy serve` once per invalid case, all at once; (exit code or None, output)."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PROXY_"))}
    processes = {}
    for name, (config, env, _) in INVALID_CASES.items():
        args = [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", "0"]
        if config is not None:
            path = tmp_path_factory.mktemp(name) / "bad.yaml"
            path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
            args += ["--config", str(path)]
        processes[name] = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**base_env, "ANTHROPIC_API_KEY": ENV_SECRET, **env},
        )
    results: dict[str, tuple[int | None, str]] = {}
    for name, process in processes.items():
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # it accepted the configuration and is serving
            process.kill()
            output, _ = process.communicate()
            results[name] = (None, output)
        else:
            results[name] = (process.returncode, output)
    return results


@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_invalid_config_exits_naming_the_key(
    invalid_runs: dict[str, tuple[int | None, str]], case: str
) -> None:
    returncode, output = invalid_runs[case]
    assert returncode is not None, f"the proxy started with an invalid configuration:\n{output}"
    assert returncode != 0, output
    for key in INVALID_CASES[case][2]:
        assert key in output, (key, output)
    assert YAML_SECRET not in output and ENV_SECRET not in output
    assert "Uvicorn running" not in output
