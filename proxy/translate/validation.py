"""Request body → validated model, or an OpenAIError with OpenAI's `param` and `code`.

api.openai.com reports the first problem only, with `param` as a JSON path (`messages[0].content`) and
codes such as `missing_required_parameter`, `invalid_type` and `integer_above_max_value`; the table
below maps pydantic's error types onto those.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from proxy.errors import OpenAIError, invalid_request

ModelT = TypeVar("ModelT", bound=BaseModel)

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

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
    """`("messages", 0, "content")` → `messages[0].content`; a map key such as `logit_bias`'s that is
    not a plain name is quoted: `logit_bias["50256"]`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _NAME.match(part):
            path += f"[{orjson.dumps(part).decode()}]"
        else:
            path += f".{part}" if path else part
    return path


def _field_loc(loc: tuple[int | str, ...], body: Any) -> tuple[int | str, ...]:
    """Drop pydantic's labels from a location, keeping the keys and indexes that lead into `body`.

    Labels are union branches (`str`, `list[str]`, `literal['auto']`, `function-after[...]`, a model's
    class name such as `NamedToolChoice`) and the `field=value` tags of `proxy.translate.schema`'s
    tagged unions. OpenAI's own keys are lower-case names; a map key (`logit_bias`) is kept whenever the
    body has it.
    """
    kept: list[int | str] = []
    value = body
    for part in loc:
        if isinstance(part, str) and _is_label(part) and not (isinstance(value, dict) and part in value):
            continue
        kept.append(part)
        value = _step(value, part)
    return tuple(kept)


def _is_label(part: str) -> bool:
    return (
        "[" in part
        or "=" in part
        or part in {"str", "int", "float", "bool", "list", "dict"}
        or part.startswith("constrained")
        or part[:1].isupper()
    )


def _pick(errors: list[ErrorDetails], body: Any) -> ErrorDetails:
    """One error to report: a missing field first, then the deepest one, a value error before a type error.

    A union such as `stop: str | list[str]` fails once per branch; when the list branch had the right
    type but the wrong length, that length error is the one worth reporting.
    """
    for err in errors:
        if err["type"] == "missing":
            return err
    depth = max(len(_field_loc(e["loc"], body)) for e in errors)
    deepest = [e for e in errors if len(_field_loc(e["loc"], body)) == depth]
    for err in deepest:
        if err["type"] not in _EXPECTED:
            return err
    return deepest[0]


def error_from_validation(exc: ValidationError, body: Any) -> OpenAIError:
    """Turn pydantic's first relevant error into OpenAI's wording and codes."""
    errors = exc.errors(include_url=False)
    err = _pick(errors, body)
    loc = _field_loc(err["loc"], body)
    param = json_path(loc) or None
    kind = err["type"]
    value = err.get("input")
    # A union whose every branch failed on type reports the field itself, not one of its branches.
    same_field = [e for e in errors if _field_loc(e["loc"], body) == loc]
    if kind == "missing":
        if param == "model":
            return invalid_request("you must provide a model parameter", param="model")
        return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind in _RANGE:
        suffix, words, op = _RANGE[kind]
        limit = next(iter((err.get("ctx") or {}).values()), None)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # the schema's bounds are integers; a float field's come back as floats
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
    if kind == "literal_error" and not isinstance(value, str):
        # Every literal here is a string; `tool_choice: 5` is a type error, whatever other branches expect.
        nouns = sorted({"a string", *(_EXPECTED[e["type"]] for e in same_field if e["type"] in _EXPECTED)})
        return invalid_request(
            f"Invalid type for '{param}': expected {' or '.join(nouns)}, but got {json_type_name(value)} instead.",
            param,
            "invalid_type",
        )
    if kind == "literal_error":
        expected = (err.get("ctx") or {}).get("expected", "")
        return invalid_request(
            f"Invalid value: {value!r}. Supported values are: {expected}.", param, "invalid_value"
        )
    if kind in {"union_tag_not_found", "union_tag_invalid"}:
        return _tag_error(err, loc, body)
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


def _tag_error(err: ErrorDetails, loc: tuple[int | str, ...], body: Any) -> OpenAIError:
    """A tagged union (content parts, `response_format`) whose `type` is missing, not a string or unknown."""
    ctx = err.get("ctx") or {}
    value = _value_at(body, loc)
    if err["type"] == "union_tag_invalid":
        field, found = str(ctx.get("tag", "")).partition("=")[::2]
        # Tags are `'type=text', 'type=refusal'`: the supported values are what follows each `=`.
        expected = ", ".join(
            f"'{tag.partition('=')[2]}" for tag in str(ctx.get("expected_tags", "")).split(", ")
        )
        param = json_path((*loc, field))
        return invalid_request(
            f"Invalid value for '{param}': {found!r}. Supported values are: {expected}.",
            param,
            "invalid_value",
        )
    field = str(ctx.get("discriminator", "type()")).removesuffix("()")
    if not isinstance(value, dict):
        param = json_path(loc)
        return invalid_request(
            f"Invalid type for '{param}': expected an object, but got {json_type_name(value)} instead.",
            param,
            "invalid_type",
        )
    param = json_path((*loc, field))
    if field not in value:
        return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    return invalid_request(
        f"Invalid type for '{param}': expected a string, but got {json_type_name(value[field])} instead.",
        param,
        "invalid_type",
    )


def _step(value: Any, part: int | str) -> Any:
    try:
        return value[part]
    except (KeyError, IndexError, TypeError):
        return None


def _value_at(body: Any, loc: tuple[int | str, ...]) -> Any:
    value = body
    for part in loc:
        value = _step(value, part)
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
        # What `model.model_validate` calls, without its Python frame and keyword plumbing.
        parsed: ModelT = model.__pydantic_validator__.validate_python(body)
        return parsed
    except ValidationError as exc:
        raise error_from_validation(exc, body) from None
