"""Unit tests of the mock's pure building blocks (directives, generation, framing helpers)."""

from __future__ import annotations

import json

import pytest

from proxy.mock.directives import NO_DIRECTIVES, DirectiveError, parse_directives, strip_directives
from proxy.mock.generation import TOKEN_RE, answer_text, earliest_stop, generate
from proxy.mock.protocol import MESSAGES_ONLY_MODEL_RE, error_type_for_status
from proxy.mock.streaming import CompletionEvents, should_ping


def test_no_directive_fast_path() -> None:
    assert parse_directives("\n\nHuman: plain\n\nAssistant:") is NO_DIRECTIVES


def test_directives_parse_last_wins_and_values_up_to_brackets() -> None:
    d = parse_directives(
        "[[mock:reply=a]] x [[mock:reply=b ] c\\nd]] [[mock:status=429]][[mock:token_delay_ms=2.5]]"
    )
    assert d.reply == "b ] c\nd"
    assert d.status == 429
    assert d.token_delay_ms == 2.5
    assert d.first_delay_seconds() == pytest.approx(0.0025)
    assert d.total_delay_seconds(3) == pytest.approx(0.0075)


def test_first_token_delay_replaces_token_delay_for_the_first_token() -> None:
    d = parse_directives("[[mock:token_delay_ms=10]][[mock:first_token_delay_ms=100]]")
    assert d.total_delay_seconds(3) == pytest.approx(0.12)
    assert d.total_delay_seconds(0) == 0


@pytest.mark.parametrize("text", ["[[mock:nope=1]]", "[[mock:status=600]]", "[[mock:fail_times=x]]"])
def test_bad_directives_raise(text: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directives(text)


def test_strip_directives() -> None:
    assert strip_directives("a [[mock:reply=x]]b[[mock:tokens=3]]") == "a b"


def test_token_pieces_keep_leading_whitespace() -> None:
    assert TOKEN_RE.findall(" Hello!  My\n\nname ") == [" Hello!", "  My", "\n\nname"]


def test_answer_text_sources() -> None:
    sanitized = "\n\nHuman: one\n\nAssistant: two\n\nHuman:  three [[mock:fail_id=z]] \n\nAssistant:"
    assert answer_text(sanitized, NO_DIRECTIVES) == " Hello! I am the mock upstream. You said: three"
    assert answer_text(sanitized, parse_directives("[[mock:tokens=2]]")) == " tok0 tok1"
    assert answer_text(sanitized, parse_directives("[[mock:reply=]]")) == ""


def test_earliest_stop_prefers_builtin_on_ties_and_ignores_empty() -> None:
    assert earliest_stop("ab\n\nHuman: c", ("\n\nHu", "")) == (2, "\n\nHuman:")
    assert earliest_stop("abc", ("",)) is None


def test_generate_orders_rules() -> None:
    g = generate(" a b c", (), 3)
    assert (g.completion, g.stop_reason, g.stop) == (" a b c", "stop_sequence", "\n\nHuman:")
    g = generate(" a b c", ("c",), 1)
    assert (g.completion, g.stop_reason, g.stop) == (" a", "max_tokens", None)
    g = generate(" a b c", ("c",), 5)
    assert (g.completion, g.stop_reason, g.stop) == (" a b", "stop_sequence", "c")


def test_ping_schedule() -> None:
    assert [n for n in range(1, 80) if should_ping(n)] == [2, 27, 52, 77]


def test_completion_event_bytes_match_the_capture() -> None:
    events = CompletionEvents("compl_015dfgyiT7JLszAiMbGMtgeG", "claude-2.1")
    assert events.token(" Light", 0) == (
        b'event: completion\r\ndata: {"type":"completion","id":"compl_015dfgyiT7JLszAiMbGMtgeG",'
        b'"completion":" Light","stop_reason":null,"model":"claude-2.1","stop":null,'
        b'"log_id":"compl_015dfgyiT7JLszAiMbGMtgeG"     }\r\n\r\n'
    )
    assert events.final("stop_sequence", "\n\nHuman:", 6) == (
        b'event: completion\r\ndata: {"type":"completion","id":"compl_015dfgyiT7JLszAiMbGMtgeG",'
        b'"completion":"","stop_reason":"stop_sequence","model":"claude-2.1","stop":"\\n\\nHuman:",'
        b'"log_id":"compl_015dfgyiT7JLszAiMbGMtgeG"      }\r\n\r\n'
    )
    payload = events.token('quote " and \u00e9', 3).split(b"data: ")[1]
    assert json.loads(payload)["completion"] == 'quote " and \u00e9'


def test_model_families_and_status_types() -> None:
    refused = ["claude-3-haiku-20240307", "claude-3.5-sonnet", "claude-4", "claude-opus-4-1", "claude-10-x"]
    assert all(MESSAGES_ONLY_MODEL_RE.match(m) for m in refused)
    assert not any(MESSAGES_ONLY_MODEL_RE.match(m) for m in ["claude-2.1", "claude-30x", "claude-instant-1"])
    assert [error_type_for_status(s) for s in (400, 418, 429, 503, 529)] == [
        "invalid_request_error",
        "invalid_request_error",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    ]
