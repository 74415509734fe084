"""Request validation in OpenAI's terms, and configuration loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Config, ConfigError, load_config
from proxy.errors import OpenAIError
from proxy.translate.schema import ChatRequest, CompletionRequest
from proxy.translate.validation import JSON_PARSE_MESSAGE, parse_body

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def error_for(body: Any, model: type[ChatRequest] | type[CompletionRequest] = ChatRequest) -> OpenAIError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(OpenAIError) as caught:
        parse_body(raw, model)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{", None, None),
        ([], None, "invalid_type"),
        ({"messages": BASE["messages"]}, "model", None),
        ({"model": "m"}, "messages", "missing_required_parameter"),
        ({"model": "m", "messages": []}, "messages", "empty_array"),
        ({"model": "m", "messages": "hi"}, "messages", "invalid_type"),
        ({**BASE, "temperature": "hot"}, "temperature", "invalid_type"),
        ({**BASE, "temperature": 2.5}, "temperature", "decimal_above_max_value"),
        ({**BASE, "temperature": -1}, "temperature", "integer_below_min_value"),
        ({**BASE, "top_p": 1.5}, "top_p", "decimal_above_max_value"),
        ({**BASE, "frequency_penalty": 3}, "frequency_penalty", "integer_above_max_value"),
        ({**BASE, "presence_penalty": -2.5}, "presence_penalty", "decimal_below_min_value"),
        ({**BASE, "n": 0}, "n", "integer_below_min_value"),
        ({**BASE, "n": 130}, "n", "integer_above_max_value"),
        ({**BASE, "n": True}, "n", "invalid_type"),
        ({**BASE, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
        ({**BASE, "stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
        ({**BASE, "stop": 1}, "stop", "invalid_type"),
        ({**BASE, "stream": "yes"}, "stream", "invalid_type"),
        ({**BASE, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({**BASE, "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
        ({**BASE, "messages": [{"content": "x"}]}, "messages[0].role", "missing_required_parameter"),
        (
            {**BASE, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            "invalid_type",
        ),
    ],
)
def test_chat_validation_errors(body: Any, param: str | None, code: str | None) -> None:
    error = error_for(body)
    assert (error.param, error.code, error.type) == (param, code, "invalid_request_error")
    assert error.message


def test_malformed_json_message_is_openais() -> None:
    assert error_for(b"{not json").message == JSON_PARSE_MESSAGE


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m"}, "prompt", "missing_required_parameter"),
        ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs", "integer_above_max_value"),
        ({"model": "m", "prompt": "x", "best_of": 21}, "best_of", "integer_above_max_value"),
        ({"model": "m", "prompt": [1.5]}, "prompt[0]", "invalid_type"),
    ],
)
def test_completion_validation_errors(body: Any, param: str, code: str) -> None:
    error = error_for(body, CompletionRequest)
    assert (error.param, error.code) == (param, code)


def test_explicit_nulls_behave_as_omitted() -> None:
    nullable = [
        "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stop",
        "user", "frequency_penalty", "presence_penalty", "logit_bias", "seed", "logprobs", "top_logprobs", "tools",
        "tool_choice", "response_format", "metadata", "service_tier", "store",
    ]  # fmt: skip
    with_nulls = parse_body(orjson.dumps({**BASE, **dict.fromkeys(nullable)}), ChatRequest)
    assert with_nulls == parse_body(orjson.dumps(BASE), ChatRequest)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from([*ChatRequest.model_fields, "extra"]), json_values, max_size=6))
def test_any_json_body_is_accepted_or_a_400(body: dict[str, Any]) -> None:
    try:
        parse_body(json.dumps(body).encode(), ChatRequest)
    except OpenAIError as error:
        assert error.status == 400
        assert error.type == "invalid_request_error"
        assert error.message


# --- configuration -----------------------------------------------------------------------------------


def test_defaults_need_no_file() -> None:
    config = load_config(None, environ={})
    assert config.model_dump() == Config().model_dump()  # (config also remembers where it came from)
    assert config.upstream.base_url == "https://api.anthropic.com"
    assert config.upstream.api_key is None
    assert "claude-2.1" in config.models.served and "claude-instant-1.2" in config.models.served


def test_yaml_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upstream:\n  base_url: http://a:1/\n  max_retries: 5\ngeneration:\n  default_max_tokens: 100\n"
    )
    environ = {
        "ANTHROPIC_API_KEY": "sk-ant-secret",
        "PROXY_GENERATION__DEFAULT_MAX_TOKENS": "7",
        "PROXY_MODELS__ALIASES": '{"fast": "claude-instant-1.2"}',
    }
    config = load_config(path, environ)
    assert config.upstream.base_url == "http://a:1"
    assert config.upstream.max_retries == 5
    assert config.generation.default_max_tokens == 7
    assert config.models.aliases == {"fast": "claude-instant-1.2"}
    assert (
        config.upstream.api_key is not None and config.upstream.api_key.get_secret_value() == "sk-ant-secret"
    )
    assert "sk-ant-secret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("upstream:\n  max_retries: lots\n", "upstream.max_retries"),
        ("upstream:\n  base_url: ftp://x\n", "upstream.base_url"),
        ("generation:\n  temperature: wild\n", "generation.temperature"),
        (
            "generation:\n  max_tokens_ceiling: 100\n",
            "default_max_tokens must not be above max_tokens_ceiling",
        ),
        ("upstrem: {}\n", "upstrem"),
        ("- a list\n", "mapping"),
        ("a: [unclosed\n", "cannot read"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert needle in str(caught.value)


def test_example_config_is_valid_and_complete() -> None:
    """config.example.yaml documents every key, with values that load."""
    example = Path(__file__).parents[2] / "config.example.yaml"
    config = load_config(example, environ={})
    import yaml

    documented = yaml.safe_load(example.read_text())
    for section, model in Config.model_fields.items():
        assert section in documented, section
        assert model.annotation is not None
        assert set(documented[section]) >= set(type(getattr(config, section)).model_fields) - {"api_key"}, (
            section
        )
