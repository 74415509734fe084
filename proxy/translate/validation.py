"""Request body → validated model, or an OpenAIError with OpenAI's `param` and `code`.

api.openai.com reports the first problem only, with `param` as a JSON path (`messages[0].content`) and
codes such as `missing_required_parameter`, `invalid_type` and `integer_above_max_value`; the table
below maps pydantic's error types onto those.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from proxy.errors import OpenAIError, invalid_request

ModelT = TypeVar("ModelT", bound=BaseModel)

JSON_PARSE_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact the proxy's operator.)"
)

#: pydantic type-error kinds → the noun OpenAI uses in "expected a …".
_EXPECTED: dict[str, str] = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}

#: pydantic range-error kinds → (OpenAI code suffix, comparison shown in the message).
_RANGE: dict[str, tuple[str, str, str]] = {
    "less_than_equal": ("above_max_value", "above maximum value", "<="),
    "less_than": ("above_max_value", "above maximum value", "<"),
    "greater_than_equal": ("below_min_value", "below minimum value", ">="),
    "greater_than": ("below_min_value", "below minimum value", ">"),
}


def json_type_name(value: Any) -> str:
    """How OpenAI names a JSON value's type in messages ("but got a string instead")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def json_path(loc: tuple[int | str, ...]) -> str:
    """`("messages", 0, "content")` → `messages[0].content`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _field_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop pydantic's union-branch labels (`str`, `list[str]`, `function-after[...]`) from a location."""
    return tuple(p for p in loc if isinstance(p, int) or not _is_branch_label(p))


def _is_branch_label(part: str) -> bool:
    return (
        "[" in part
        or part in {"str", "int", "float", "bool", "list", "dict"}
        or part.startswith("constrained")
    )


def _pick(errors: list[ErrorDetails]) -> ErrorDetails:
    """One error to report: a missing field first, then the deepest one, a value error before a type error.

    A union such as `stop: str | list[str]` fails once per branch; when the list branch had the right
    type but the wrong length, that length error is the one worth reporting.
    """
    for err in errors:
        if err["type"] == "missing":
            return err
    depth = max(len(_field_loc(e["loc"])) for e in errors)
    deepest = [e for e in errors if len(_field_loc(e["loc"])) == depth]
    for err in deepest:
        if err["type"] not in _EXPECTED:
            return err
    return deepest[0]


def error_from_validation(exc: ValidationError, body: Any) -> OpenAIError:
    """Turn pydantic's first relevant error into OpenAI's wording and codes."""
    errors = exc.errors(include_url=False)
    err = _pick(errors)
    loc = _field_loc(err["loc"])
    param = json_path(loc) or None
    kind = err["type"]
    value = err.get("input")
    # A union whose every branch failed on type reports the field itself, not one of its branches.
    same_field = [e for e in errors if _field_loc(e["loc"]) == loc]
    if kind == "missing":
        if param == "model":
            return invalid_request("you must provide a model parameter", param="model")
        return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind in _RANGE:
        suffix, words, op = _RANGE[kind]
        limit = next(iter((err.get("ctx") or {}).values()), None)
        number = "integer" if isinstance(value, int) else "decimal"
        return invalid_request(
            f"Invalid '{param}': {number} {words}. Expected a value {op} {limit}, but got {value} instead.",
            param,
            f"{number}_{suffix}",
        )
    if kind == "too_short" and isinstance(value, list) and not value:
        return invalid_request(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param,
            "empty_array",
        )
    if kind == "too_long":
        limit = (err.get("ctx") or {}).get("max_length")
        return invalid_request(
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(value) if isinstance(value, list) else '?'} instead.",
            param,
            "array_above_max_length",
        )
    if kind == "literal_error":
        expected = (err.get("ctx") or {}).get("expected", "")
        return invalid_request(
            f"Invalid value: {value!r}. Supported values are: {expected}.", param, "invalid_value"
        )
    if kind in _EXPECTED or any(e["type"] in _EXPECTED for e in same_field):
        expected_nouns = sorted({_EXPECTED[e["type"]] for e in same_field if e["type"] in _EXPECTED})
        if "a number" in expected_nouns and "an integer" in expected_nouns:
            expected_nouns.remove("an integer")
        actual = _value_at(body, loc)
        return invalid_request(
            f"Invalid type for '{param}': expected {' or '.join(expected_nouns)}, "
            f"but got {json_type_name(actual)} instead.",
            param,
            "invalid_type",
        )
    return invalid_request(f"Invalid '{param}': {err['msg']}.", param, "invalid_value")


def _value_at(body: Any, loc: tuple[int | str, ...]) -> Any:
    value = body
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def parse_body(raw: bytes, model: type[ModelT]) -> ModelT:
    """Parse and validate a request body; every failure is a 400 OpenAIError."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise OpenAIError(400, JSON_PARSE_MESSAGE) from None
    if not isinstance(body, dict):
        raise invalid_request(
            f"Invalid type for request body: expected an object, but got {json_type_name(body)} instead.",
            code="invalid_type",
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise error_from_validation(exc, body) from None
