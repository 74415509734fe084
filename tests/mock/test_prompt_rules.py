"""Unit tests of the pure prompt rules, with the accepted/rejected examples of Anthropic's docs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.mock.prompt_rules import (
    MUST_END_WITH_ASSISTANT,
    MUST_START_WITH_HUMAN,
    last_human_text,
    sanitize_prompt,
    validate_prompt,
)


def test_messages_are_the_exact_api_strings() -> None:
    assert MUST_START_WITH_HUMAN == 'prompt must start with "\n\nHuman:" turn after an optional system prompt'
    assert MUST_END_WITH_ASSISTANT == 'prompt must end with "\n\nAssistant:" turn'


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Hello, world", MUST_START_WITH_HUMAN),
        ("Hello, world\n\nAssistant:", MUST_START_WITH_HUMAN),
        ("\n\nHuman: Hello, Claude", MUST_END_WITH_ASSISTANT),
        ("\n\nAssistant: Hello, world\n\nHuman: Hello, Claude\n\nAssistant:", MUST_START_WITH_HUMAN),
        (
            "\n\nHuman: Hello, Claude\n\nAssistant: Hello, world\n\nHuman: How many toes do dogs have?",
            MUST_END_WITH_ASSISTANT,
        ),
        ("\n\nHuman: Hello, Claude \nAssistant:", MUST_END_WITH_ASSISTANT),
        ("System text\n\nAssistant: oops\n\nHuman: hi\n\nAssistant:", MUST_START_WITH_HUMAN),
        ("\n\nHuman:", MUST_END_WITH_ASSISTANT),
        ("", MUST_START_WITH_HUMAN),
    ],
)
def test_documented_rejections(prompt: str, expected: str) -> None:
    assert validate_prompt(prompt) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "\n\nHuman: Hello, world!\n\nAssistant:",
        "Human: Hello, Claude\n\nAssistant:",  # missing leading \n\n is sanitised
        "\n\nHuman: Hello, Claude:\n\nAssistant: ",  # trailing space is sanitised
        "\n\nHuman: Hello\n\nAssistant:\n\n \t",
        "You are a pirate.\n\nHuman: Hello\n\nAssistant:",  # Claude 2.1 system prompt
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:",
        "\n\nHuman: Write a poem\n\nAssistant: Here is a poem:",  # prefilled assistant turn
        "\n\nHuman: why is the sky blue? respond in five words or less. \n\nAssistant:",  # SDK capture
    ],
)
def test_documented_acceptances(prompt: str) -> None:
    assert validate_prompt(prompt) is None


def test_too_long_prompt_uses_the_api_wording() -> None:
    filler = "x" * (4 * 100_000)
    message = validate_prompt(f"\n\nHuman: {filler}\n\nAssistant:")
    assert message is not None
    assert message.startswith("prompt is too long: ")
    assert message.endswith(" tokens > 99999 maximum")
    assert validate_prompt(f"\n\nHuman: {'x' * 390_000}\n\nAssistant:") is None


def test_sanitize_and_last_human_text() -> None:
    sanitized = sanitize_prompt("Human: one\n\nAssistant: two\n\nHuman:  three \n\nAssistant:  ")
    assert sanitized == "\n\nHuman: one\n\nAssistant: two\n\nHuman:  three \n\nAssistant:"
    assert last_human_text(sanitized) == "  three "


_text = st.text(max_size=40).filter(lambda s: "\n\nHuman:" not in s and "\n\nAssistant:" not in s)


@given(system=_text, turns=st.lists(st.tuples(_text, _text), min_size=1, max_size=4), last=_text)
def test_well_formed_conversations_pass(system: str, turns: list[tuple[str, str]], last: str) -> None:
    prompt = system
    for human, assistant in turns[:-1]:
        prompt += f"\n\nHuman:{human}\n\nAssistant:{assistant}"
    prompt += f"\n\nHuman:{turns[-1][0]}\n\nAssistant:{last}"
    assert validate_prompt(prompt) is None
