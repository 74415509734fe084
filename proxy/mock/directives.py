"""Test directives: `[[mock:KEY=VALUE]]` markers inside the prompt that steer the mock's behaviour.

They travel inside ordinary prompt text, so tests can provoke errors, delays, long streams or
broken streams through the proxy without the proxy having any test-only code. VALUE runs up to the
first `]]`; the last occurrence of a key wins; markers are removed from the text the mock echoes.

`script` makes the mock a scripted model (`proxy.mock.generation.scripted_answer`): a JSON array of
turns, one per answer of the conversation, each `{"text": …, "calls": [{"name", "arguments"}], "json":
…}`, written in Anthropic's documented legacy tool-use format. Put a space before the closing `]]` so the
array's own `]` is not taken for the marker's end.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

DIRECTIVE_MARK = "[[mock:"
DIRECTIVE_RE = re.compile(r"\[\[mock:([A-Za-z_]+)=(.*?)\]\]", re.DOTALL)
ESCAPED_NEWLINE = "\\n"


class DirectiveError(ValueError):
    """A malformed directive; reported to the client as a 400 so test typos fail loudly."""


@dataclass(slots=True)
class Directives:
    """Parsed directives; None/defaults mean "behave like the real API"."""

    reply: str | None = None
    script: list[dict[str, Any]] | None = None
    tokens: int | None = None
    status: int | None = None
    error_type: str | None = None
    message: str | None = None
    retry_after: str | None = None
    fail_times: int | None = None
    fail_id: str = ""
    stream_error_after: int | None = None
    token_delay_ms: float = 0.0
    first_token_delay_ms: float | None = None
    drop_connection_after: int | None = None
    hold_open_ms: float = 0.0  # streams: keep the body open this long after the final event

    def first_delay_seconds(self) -> float:
        """Delay before the first streamed token (first_token_delay_ms, else token_delay_ms)."""
        first = self.token_delay_ms if self.first_token_delay_ms is None else self.first_token_delay_ms
        return first / 1000.0

    def token_delay_seconds(self) -> float:
        return self.token_delay_ms / 1000.0

    def total_delay_seconds(self, tokens: int) -> float:
        """What a non-streamed answer of `tokens` tokens waits in total."""
        if tokens <= 0:
            return 0.0
        return self.first_delay_seconds() + (tokens - 1) * self.token_delay_seconds()


def _decode_text(value: str) -> str:
    """Only `\\n` is an escape (two characters -> newline): prompts rarely carry raw newlines safely."""
    return value.replace(ESCAPED_NEWLINE, "\n")


def _non_negative_int(value: str) -> int:
    if not value.strip().isdigit():
        raise ValueError("expected a non-negative integer")
    return int(value)


def _status(value: str) -> int:
    status = _non_negative_int(value)
    if not 400 <= status <= 599:
        raise ValueError("expected an HTTP status between 400 and 599")
    return status


def _milliseconds(value: str) -> float:
    milliseconds = float(value)
    if not 0 <= milliseconds <= 600_000:
        raise ValueError("expected milliseconds between 0 and 600000")
    return milliseconds


def _plain(value: str) -> str:
    return value


def _script(value: str) -> list[dict[str, Any]]:
    try:
        turns = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"expected a JSON array of turns ({error})") from None
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise ValueError("expected a non-empty JSON array of turn objects")
    for turn in turns:
        unknown = set(turn) - {"text", "calls", "json"}
        if unknown:
            raise ValueError(f"unknown turn keys {sorted(unknown)}")
    return turns


PARSERS: dict[str, Callable[[str], object]] = {
    "reply": _decode_text,
    "script": _script,
    "tokens": _non_negative_int,
    "status": _status,
    "error_type": _plain,
    "message": _decode_text,
    "retry_after": _plain,
    "fail_times": _non_negative_int,
    "fail_id": _plain,
    "stream_error_after": _non_negative_int,
    "token_delay_ms": _milliseconds,
    "first_token_delay_ms": _milliseconds,
    "drop_connection_after": _non_negative_int,
    "hold_open_ms": _milliseconds,
}

NO_DIRECTIVES = Directives()


def parse_directives(prompt: str) -> Directives:
    """Collect every directive in `prompt` (last wins); raise DirectiveError for unknown keys/bad values."""
    if DIRECTIVE_MARK not in prompt:
        return NO_DIRECTIVES
    directives = Directives()
    for match in DIRECTIVE_RE.finditer(prompt):
        key, value = match.group(1), match.group(2)
        parser = PARSERS.get(key)
        if parser is None:
            raise DirectiveError(f"unknown mock directive: {key}")
        try:
            setattr(directives, key, parser(value))
        except ValueError as exc:
            raise DirectiveError(f"mock directive {key}={value!r}: {exc}") from None
    return directives


def strip_directives(text: str) -> str:
    """Remove directive markers, e.g. from the text the default answer echoes back."""
    if DIRECTIVE_MARK not in text:
        return text
    return DIRECTIVE_RE.sub("", text)
