"""Client keys (`proxy.auth`) and their configuration: digests, lookup, model access, validation."""

from __future__ import annotations

import hashlib

import pytest

from proxy.auth import KeyRing, bearer_token, hash_key
from proxy.config import AuthConfig, Config, ConfigError, load_config
from proxy.errors import OpenAIError
from proxy.limits import KeyLimits


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ring(*keys: dict[str, object]) -> KeyRing:
    return KeyRing.from_config(AuthConfig.model_validate({"keys": list(keys)}), KeyLimits(rpm=7))


def test_keys_match_by_digest_whatever_their_source() -> None:
    keys = ring(
        {"name": "hashed", "key_sha256": "sha256:" + digest("one")},
        {"name": "bare-hex", "key_sha256": digest("two").upper()},
        {"name": "plain", "key": "three", "limits": {"rpm": 1}},
    )
    assert keys.enabled
    assert [keys.identify(k).name for k in ("one", "two", "three")] == ["hashed", "bare-hex", "plain"]  # type: ignore[union-attr]
    assert keys.identify("four") is None
    assert keys.identify("") is None
    assert keys.identify("one").limits == KeyLimits(rpm=7)  # type: ignore[union-attr]
    assert keys.identify("three").limits == KeyLimits(rpm=1)  # type: ignore[union-attr]


def test_authenticate_gives_openai_401s() -> None:
    keys = ring({"name": "a", "key": "good"})
    assert keys.authenticate({"authorization": "Bearer good"}).name == "a"
    assert keys.authenticate({"x-api-key": "good"}).name == "a"
    for headers in ({}, {"authorization": "Basic good"}, {"authorization": "Bearer "}):
        with pytest.raises(OpenAIError) as missing:
            keys.authenticate(headers)
        assert (missing.value.status, missing.value.code) == (401, "invalid_api_key")
        assert "didn't provide" in missing.value.message
    with pytest.raises(OpenAIError) as wrong:
        keys.authenticate({"authorization": "Bearer bad-key-123"})
    assert (wrong.value.status, wrong.value.code) == (401, "invalid_api_key")
    assert "bad-key-123" not in wrong.value.message


def test_no_keys_means_no_client_auth() -> None:
    assert not ring().enabled


def test_model_access() -> None:
    keys = ring({"name": "a", "key": "k", "models": ["gpt-4"]}, {"name": "b", "key": "l"})
    a, b = keys.identify("k"), keys.identify("l")
    assert a is not None and b is not None
    assert a.may_use("gpt-4") and not a.may_use("claude-2.1")
    assert b.may_use("anything")


def test_bearer_token_parsing() -> None:
    assert bearer_token({"authorization": "bearer  tok "}) == "tok"
    assert bearer_token({"authorization": "Token tok"}) is None
    assert bearer_token({}) is None


def test_hash_key_matches_the_config_format() -> None:
    assert hash_key("abc") == "sha256:" + digest("abc")
    AuthConfig.model_validate({"keys": [{"name": "x", "key_sha256": hash_key("abc")}]})


@pytest.mark.parametrize(
    "keys, message",
    [
        ([{"name": "a"}], "exactly one of"),
        ([{"name": "a", "key": "k", "key_sha256": digest("k")}], "exactly one of"),
        ([{"name": "a", "key_sha256": "sha256:abc"}], "64 hex digits"),
        ([{"name": "a", "key": "k"}, {"name": "a", "key": "l"}], "unique"),
        ([{"name": "has space", "key": "k"}], "pattern"),
        ([{"name": "a", "key": "k", "limits": {"rpm": 0}}], "greater than 0"),
    ],
)
def test_invalid_key_config(keys: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config.model_validate({"upstream": {"api_key": "up"}, "auth": {"keys": keys}})


def test_key_env_and_duplicate_keys_are_checked_at_load(tmp_path: object) -> None:
    environ = {"ANTHROPIC_API_KEY": "up", "PROXY_AUTH__KEYS": '[{"name": "a", "key_env": "K"}]'}
    with pytest.raises(ConfigError, match="K is not set"):
        load_config(None, environ)
    config = load_config(None, {**environ, "K": "secret"})
    assert config.auth.keys[0].key is not None
    assert config.auth.keys[0].key.get_secret_value() == "secret"
    twice = {
        "ANTHROPIC_API_KEY": "up",
        "K": "same",
        "PROXY_AUTH__KEYS": f'[{{"name": "a", "key_env": "K"}}, {{"name": "b", "key_sha256": "{digest("same")}"}}]',
    }
    with pytest.raises(ConfigError, match="'b' is the same key as 'a'"):
        load_config(None, twice)


def test_client_keys_refuse_pass_through_upstreams() -> None:
    keys = {"keys": [{"name": "a", "key": "k"}]}
    with pytest.raises(ValueError, match="never passed upstream"):
        Config.model_validate({"auth": keys})
    with pytest.raises(ValueError, match="never passed upstream"):
        Config.model_validate({"auth": keys, "upstream": {"pool": [{"base_url": "http://x"}]}})
    Config.model_validate(
        {"auth": keys, "upstream": {"pool": [{"base_url": "http://x", "api_key_env": "E"}]}}
    )
    Config.model_validate(
        {"auth": keys, "upstream": {"api_key": "shared", "pool": [{"base_url": "http://x"}]}}
    )
