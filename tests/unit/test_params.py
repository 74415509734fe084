"""OpenAI request → upstream calls: the parameter table in proxy/translate/params.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import GenerationConfig, ModelsConfig
from proxy.errors import OpenAIError
from proxy.translate.models import ModelRegistry
from proxy.translate.params import plan_chat, plan_completion
from proxy.translate.schema import ChatRequest, CompletionRequest
from tests.support.upstream import UPSTREAM_FIELDS

REGISTRY = ModelRegistry.from_config(ModelsConfig())
GENERATION = GenerationConfig()


def chat(generation: GenerationConfig = GENERATION, **fields: Any) -> list[dict[str, Any]]:
    body = {"model": "claude-2.1", "messages": [{"role": "user", "content": "hi"}], **fields}
    return plan_chat(ChatRequest.model_validate(body), REGISTRY, generation).calls()


def test_minimal_chat_request() -> None:
    assert chat() == [
        {"model": "claude-2.1", "max_tokens_to_sample": 4096, "prompt": "\n\nHuman: hi\n\nAssistant:"}
    ]


def test_every_mapped_field() -> None:
    (call,) = chat(
        max_completion_tokens=50,
        stop=["END", "END", ""],
        temperature=0.2,
        top_p=0.9,
        top_k=5,
        user="u-1",
        stream=True,
        stream_options={"include_usage": True},
    )
    assert call == {
        "model": "claude-2.1",
        "max_tokens_to_sample": 50,
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "stream": True,
        "prompt": "\n\nHuman: hi\n\nAssistant:",
    }


def test_max_completion_tokens_wins_over_max_tokens_and_stop_string() -> None:
    (call,) = chat(max_tokens=10, max_completion_tokens=20, stop="END")
    assert call["max_tokens_to_sample"] == 20
    assert call["stop_sequences"] == ["END"]


def test_alias_resolves_and_n_makes_n_calls() -> None:
    calls = chat(model="gpt-4", n=3)
    assert len(calls) == 3
    assert {c["model"] for c in calls} == {"claude-2.1"}


@pytest.mark.parametrize(
    ("policy", "given_t", "sent"),
    [
        ("clamp", 1.7, 1.0),
        ("clamp", 0.4, 0.4),
        ("clamp", 0, 0),
        ("scale", 1.5, 0.75),
        ("scale", 2, 1.0),
        ("scale", 0.5, 0.25),
    ],
)
def test_temperature_policies(policy: str, given_t: float, sent: float) -> None:
    (call,) = chat(GenerationConfig(temperature=policy), temperature=given_t)  # type: ignore[arg-type]
    assert call["temperature"] == sent


def test_temperature_reject_policy() -> None:
    with pytest.raises(OpenAIError) as caught:
        chat(GenerationConfig(temperature="reject"), temperature=1.2)
    assert (caught.value.status, caught.value.param) == (400, "temperature")
    assert chat(GenerationConfig(temperature="reject"), temperature=1)[0]["temperature"] == 1


@given(st.floats(min_value=0, max_value=2), st.sampled_from(["clamp", "scale"]))
def test_temperature_never_leaves_upstream_range(value: float, policy: str) -> None:
    (call,) = chat(GenerationConfig(temperature=policy), temperature=value)  # type: ignore[arg-type]
    assert 0 <= call["temperature"] <= 1


DROPPED = {
    "frequency_penalty": 0.5,
    "presence_penalty": -1,
    "logit_bias": {"50256": -100},
    "seed": 42,
    "store": True,
    "metadata": {"k": "v"},
    "service_tier": "flex",
    "reasoning_effort": "low",
    "verbosity": "high",
    "prompt_cache_key": "x",
    "parallel_tool_calls": True,
    "safety_identifier": "s",
    "some_future_field": {"a": 1},
}


def test_unsupported_fields_are_dropped_by_default_and_never_sent() -> None:
    (call,) = chat(**DROPPED)
    assert set(call) <= UPSTREAM_FIELDS
    assert call["metadata"] == {"user_id": "s"}  # safety_identifier stands in for `user`


@pytest.mark.parametrize(
    "field",
    [f for f in DROPPED if f not in {"parallel_tool_calls", "safety_identifier", "some_future_field"}],
)
def test_reject_policy_refuses_non_neutral_values(field: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        chat(GenerationConfig(unsupported_params="reject"), **{field: DROPPED[field]})
    assert (caught.value.status, caught.value.param, caught.value.code) == (
        400,
        field,
        "unsupported_parameter",
    )


def test_reject_policy_accepts_neutral_values() -> None:
    chat(
        GenerationConfig(unsupported_params="reject"),
        frequency_penalty=0,
        presence_penalty=0,
        logit_bias={},
        store=False,
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        (
            {"functions": [{"name": "f"}], "tools": [{"type": "function", "function": {"name": "g"}}]},
            "functions",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}}},
            "response_format.json_schema.schema",
        ),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_features_the_upstream_lacks_are_a_clear_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        chat(**fields)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_max_n_is_configurable() -> None:
    assert len(chat(GenerationConfig(max_n=3), n=3)) == 3
    with pytest.raises(OpenAIError) as caught:
        chat(GenerationConfig(max_n=3), n=4)
    assert (caught.value.param, caught.value.code) == ("n", "integer_above_max_value")


def test_whitespace_stops_are_enforced_by_the_proxy_not_sent() -> None:
    plan = plan_chat(
        ChatRequest.model_validate(
            {
                "model": "claude-2.1",
                "messages": [{"role": "user", "content": "a"}],
                "stop": ["\n", "END", " "],
            }
        ),
        REGISTRY,
        GENERATION,
    )
    assert plan.body["stop_sequences"] == ["END"]
    assert plan.transform is not None


def test_neutral_tool_fields_are_accepted() -> None:
    chat(tools=[], tool_choice="none", response_format={"type": "text"}, logprobs=False, modalities=["text"])


def test_unknown_model_is_404_unless_passed_through() -> None:
    with pytest.raises(OpenAIError) as caught:
        chat(model="no-such-model")
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    registry = ModelRegistry.from_config(ModelsConfig(unknown="pass_through"))
    plan = plan_chat(
        ChatRequest.model_validate({"model": "x-1", "messages": [{"role": "user", "content": "a"}]}),
        registry,
        GENERATION,
    )
    assert plan.model == "x-1"


def completion(**fields: Any) -> Any:
    return plan_completion(
        CompletionRequest.model_validate({"model": "claude-2.1", **fields}), REGISTRY, GENERATION
    )


def test_completion_prompts_are_prompt_major() -> None:
    plan = completion(prompt=["a", "b"], n=2, echo=True)
    assert [c["prompt"] for c in plan.calls()] == [
        "\n\nHuman: a\n\nAssistant:",
        "\n\nHuman: a\n\nAssistant:",
        "\n\nHuman: b\n\nAssistant:",
        "\n\nHuman: b\n\nAssistant:",
    ]
    assert plan.echo == ("a", "b")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "logprobs": 0}, "logprobs"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"prompt": "x", "best_of": 3, "n": 2}, "best_of"),
        ({"prompt": "x", "best_of": 1, "n": 2}, "best_of"),
    ],
)
def test_completion_features_the_upstream_lacks(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        completion(**fields)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_best_of_equal_to_n_is_accepted() -> None:
    assert len(completion(prompt="x", best_of=2, n=2).calls()) == 2
