"""Strict validation of the `/v1/complete` request body, with pydantic-style messages like the API's.

The mock is deliberately stricter than the real server in two ways, so the proxy's tests prove it
sends only what the upstream knows: unknown fields are rejected (`<field>: Extra inputs are not
permitted`) and optional fields may not be JSON `null`. `bool` never counts as a number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

INVALID_JSON = "Invalid JSON in request body"
NOT_AN_OBJECT = "Input should be a valid dictionary"
FIELD_REQUIRED = "Field required"
EXTRA_FORBIDDEN = "Extra inputs are not permitted"
NOT_A_STRING = "Input should be a valid string"
NOT_AN_INTEGER = "Input should be a valid integer"
NOT_A_NUMBER = "Input should be a valid number"
NOT_A_BOOLEAN = "Input should be a valid boolean"
NOT_A_LIST = "Input should be a valid list"
TOO_SHORT = "String should have at least 1 character"


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """The validated fields the mock acts on."""

    model: str
    prompt: str
    max_tokens_to_sample: int
    stop_sequences: tuple[str, ...]
    stream: bool


class BodyError(Exception):
    """A body validation failure; `str(error)` is the API message."""


Check = Callable[[str, object], None]


def _fail(path: str, message: str) -> BodyError:
    return BodyError(f"{path}: {message}")


def _check_string(path: str, value: object) -> None:
    if not isinstance(value, str):
        raise _fail(path, NOT_A_STRING)


def _check_prompt(path: str, value: object) -> None:
    _check_string(path, value)
    if value == "":
        raise _fail(path, TOO_SHORT)


def _check_int_at_least(minimum: int) -> Check:
    def check(path: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, NOT_AN_INTEGER)
        if value < minimum:
            raise _fail(path, f"Input should be greater than or equal to {minimum}")

    return check


def _check_unit_interval(path: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, NOT_A_NUMBER)
    if value < 0:
        raise _fail(path, "Input should be greater than or equal to 0")
    if value > 1:
        raise _fail(path, "Input should be less than or equal to 1")


def _check_string_list(path: str, value: object) -> None:
    if not isinstance(value, list):
        raise _fail(path, NOT_A_LIST)
    for index, item in enumerate(value):
        _check_string(f"{path}.{index}", item)


WHITESPACE_STOP = "Stop sequences must contain at least one non-whitespace character"


def _check_stop_sequences(path: str, value: object) -> None:
    """The upstream refuses whitespace-only stop sequences (the proxy enforces those itself)."""
    _check_string_list(path, value)
    assert isinstance(value, list)
    for index, item in enumerate(value):
        if not item.strip():
            raise _fail(f"{path}.{index}", WHITESPACE_STOP)


def _check_metadata(path: str, value: object) -> None:
    if not isinstance(value, dict):
        raise _fail(path, NOT_AN_OBJECT)
    for key, item in value.items():
        if key != "user_id":
            raise _fail(f"{path}.{key}", EXTRA_FORBIDDEN)
        if item is not None:
            _check_string(f"{path}.user_id", item)


def _check_bool(path: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _fail(path, NOT_A_BOOLEAN)


REQUIRED_FIELDS: dict[str, Check] = {
    "model": _check_string,
    "prompt": _check_prompt,
    "max_tokens_to_sample": _check_int_at_least(1),
}
OPTIONAL_FIELDS: dict[str, Check] = {
    "stop_sequences": _check_stop_sequences,
    "temperature": _check_unit_interval,
    "top_p": _check_unit_interval,
    "top_k": _check_int_at_least(0),
    "metadata": _check_metadata,
    "stream": _check_bool,
}
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS) | frozenset(OPTIONAL_FIELDS)


def parse_json(raw: bytes) -> object:
    """Decode the body; raise BodyError with the API-style message when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BodyError(INVALID_JSON) from None


def validate_body(body: object) -> CompletionRequest:
    """Check the decoded body field by field (required, then optional, then extras); first error wins."""
    if not isinstance(body, dict):
        raise BodyError(NOT_AN_OBJECT)
    for name, check in REQUIRED_FIELDS.items():
        if name not in body:
            raise _fail(name, FIELD_REQUIRED)
        check(name, body[name])
    for name, check in OPTIONAL_FIELDS.items():
        if name in body:
            check(name, body[name])
    for name in body:
        if name not in KNOWN_FIELDS:
            raise _fail(name, EXTRA_FORBIDDEN)
    return CompletionRequest(
        model=body["model"],
        prompt=body["prompt"],
        max_tokens_to_sample=body["max_tokens_to_sample"],
        stop_sequences=tuple(body.get("stop_sequences", ())),
        stream=body.get("stream", False),
    )
