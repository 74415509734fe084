"""Accuracy and property tests for the token-count estimator.

Reference counts in ``tests/data/token_counts.json`` come from the real legacy
Claude tokenizer (``scripts/calibrate_tokens.py``).  The accuracy bounds below
are what the estimator measurably achieves on that corpus (aggregate -1.0 %,
94 % of texts within +-20 %, 96.5 % of texts of >= 20 tokens within +-20 %,
worst text of >= 20 tokens -50 %), with a little slack.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.translate.tokens import count_tokens

DATA = Path(__file__).resolve().parent.parent / "data" / "token_counts.json"
TOKENIZER_SHA256 = "c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767"


@pytest.fixture(scope="module")
def corpus() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def pairs(corpus: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(text, real tokens, estimated tokens) for every corpus sample."""
    return [(s["text"], s["tokens"], count_tokens(s["text"])) for s in corpus["samples"]]


def _rel_err(real: int, est: int) -> float:
    return abs(est - real) / real


# --------------------------------------------------------------------------- #
# The reference data itself
# --------------------------------------------------------------------------- #


def test_reference_data_provenance(corpus: dict[str, Any]) -> None:
    assert corpus["tokenizer_sha256"] == TOKENIZER_SHA256
    assert corpus["tokenizers_version"]
    samples = corpus["samples"]
    assert len(samples) >= 300
    assert all(isinstance(s["text"], str) and s["text"] and s["tokens"] >= 1 for s in samples)
    assert DATA.stat().st_size < 300_000


# --------------------------------------------------------------------------- #
# Accuracy against the real tokenizer
# --------------------------------------------------------------------------- #


def test_aggregate_error_within_5_percent(pairs: list[tuple[str, int, int]]) -> None:
    real = sum(r for _, r, _ in pairs)
    est = sum(e for _, _, e in pairs)
    assert abs(est / real - 1) <= 0.05, f"aggregate {est} vs {real}"


def test_per_sample_error_distribution(pairs: list[tuple[str, int, int]]) -> None:
    errors = [_rel_err(r, e) for _, r, e in pairs]
    assert statistics.median(errors) <= 0.06
    within_20 = sum(err <= 0.20 for err in errors) / len(errors)
    assert within_20 >= 0.92, f"only {within_20:.1%} of samples within +-20%"


def test_error_on_samples_of_20_tokens_or_more(pairs: list[tuple[str, int, int]]) -> None:
    big = [(t, r, e) for t, r, e in pairs if r >= 20]
    assert len(big) >= 200
    within_20 = sum(_rel_err(r, e) <= 0.20 for _, r, e in big) / len(big)
    assert within_20 >= 0.95, f"only {within_20:.1%} of >=20-token samples within +-20%"
    worst = max(big, key=lambda p: _rel_err(p[1], p[2]))
    assert _rel_err(worst[1], worst[2]) <= 0.50, f"worst: {worst}"


@pytest.mark.parametrize(
    ("text", "real"),
    [
        ("hello world!", 3),
        ("\n\nHuman: Hello, world!\n\nAssistant:", 12),
        ("\n\nHuman:", 4),
        ("\n\nAssistant:", 4),
        (" Hello! My name is Claude.", 7),
    ],
)
def test_reference_sanity_values(text: str, real: int) -> None:
    assert abs(count_tokens(text) - real) <= 1


def test_simple_values() -> None:
    assert count_tokens("") == 0
    assert count_tokens("a") == 1
    assert count_tokens(" ") == 1
    assert count_tokens("\n") == 1
    assert count_tokens("😀") >= 2
    assert count_tokens("你好世界") >= 3


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #

ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT_ANY = st.text(alphabet=ANY_CHAR)  # includes control characters and lone surrogates
# A small alphabet hitting every character class and class boundary often.
TEXT_CLASSES = st.text(alphabet=st.sampled_from([*"aZ9.-=  \n\t\ré中ж😀,(_\u0301“\x00"]))


@settings(max_examples=300)
@given(st.text())
def test_nonnegative_and_zero_only_for_empty(text: str) -> None:
    n = count_tokens(text)
    assert isinstance(n, int)
    assert n >= 0
    assert (n == 0) == (text == "")


@settings(max_examples=300)
@given(TEXT_ANY)
def test_never_raises_on_arbitrary_unicode(text: str) -> None:
    assert count_tokens(text) >= (1 if text else 0)


@settings(max_examples=500)
@given(st.one_of(st.tuples(st.text(), st.text()), st.tuples(TEXT_CLASSES, TEXT_CLASSES)))
def test_concatenation_adds_at_most_one(parts: tuple[str, str]) -> None:
    a, b = parts
    assert count_tokens(a + b) <= count_tokens(a) + count_tokens(b) + 1


@settings(max_examples=200)
@given(TEXT_ANY, TEXT_ANY)
def test_concatenation_adds_at_most_one_any_unicode(a: str, b: str) -> None:
    assert count_tokens(a + b) <= count_tokens(a) + count_tokens(b) + 1


def test_one_megabyte_strings() -> None:
    # Real counts measured with the legacy tokenizer: 222,223 and 473,686 tokens.
    english = ("The quick brown fox jumps over the lazy dog. " * 25_000)[:1_000_000]
    assert abs(count_tokens(english) / 222_223 - 1) <= 0.10
    mixed = ("你好，世界！ Hello\n\n\tworld 😀 1234567 --- ..." * 30_000)[:1_000_000]
    assert abs(count_tokens(mixed) / 473_686 - 1) <= 0.25
