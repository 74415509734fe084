"""Structured output (`response_format` JSON) over the legacy prompt (pure).

| OpenAI request | Prompt / answer |
|---|---|
| `response_format: {"type": "text"}` or absent | nothing |
| `{"type": "json_object"}` | a JSON-only instruction in the system text; the assistant turn is prefilled with `{` (not with tools: the model may call one instead) |
| `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` | the same, with the schema in `<json_schema>` tags |
| the answer (prefilled, not strict) | streams live from the `{`; cut after the balanced close (trailing prose is dropped, the upstream call closed) |
| the answer (strict, or not prefilled) | held to the end; the JSON alone is kept (a fenced block, or the first balanced object in prose) |
| `strict: true` | the JSON is validated against the schema (`jsonschema`); a failure marks the answer invalid: corrective retries (`generation.structured_output_retries`, default 1), then 502 `invalid_model_output` with `x-should-retry: false`. A strict stream is validated before any of its content is sent |
| `finish_reason: "length"` | the cut text as it is (never validated: the client sees `length`) |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import invalid_request
from proxy.translate.stream import Out, Text

PREFILL = "{"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n?```", re.DOTALL)

JSON_INSTRUCTION = (
    "Respond with a single JSON object and nothing else: no prose before or after it, no code fences."
)


@dataclass(frozen=True)
class JsonFormat:
    schema: dict[str, Any] | None  # json_schema's schema; None for json_object
    strict: bool
    name: str = ""

    def system_text(self) -> str:
        if self.schema is None:
            return JSON_INSTRUCTION
        return (
            JSON_INSTRUCTION
            + " It must match this JSON schema"
            + (f" ({self.name})" if self.name else "")
            + ":\n<json_schema>\n"
            + orjson.dumps(self.schema).decode()
            + "\n</json_schema>"
        )

    def error(self, value: Any) -> str | None:
        """The first schema violation, or None."""
        if self.schema is None:
            return None
        from jsonschema import Draft202012Validator  # loaded when the schema was checked

        error = next(iter(Draft202012Validator(self.schema).iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{'at ' + where + ': ' if where else ''}{error.message}"


def json_format(response_format: dict[str, Any] | None) -> JsonFormat | None:
    """Validate `response_format`; None for text."""
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat(None, strict=False)
    if kind != "json_schema":
        raise invalid_request(
            f"Invalid value for 'response_format.type': {kind!r}. Supported values are: 'text', "
            "'json_object' and 'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_request(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
            "missing_required_parameter",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid_request(
            "Invalid 'response_format.json_schema.name': expected a string matching '^[a-zA-Z0-9_-]+$' "
            "(at most 64 characters).",
            "response_format.json_schema.name",
            "invalid_value",
        )
    schema = spec.get("schema")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise invalid_request(
            "Invalid 'response_format.json_schema.schema': expected an object.",
            "response_format.json_schema.schema",
            "invalid_type",
        )
    from jsonschema import Draft202012Validator  # imported only when a schema is asked for
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise invalid_request(
            f"Invalid schema for response_format '{name}': {error.message}",
            "response_format.json_schema.schema",
            "invalid_schema",
        ) from None
    return JsonFormat(schema, strict=spec.get("strict") is True, name=name)


def balanced_end(text: str, start: int) -> int | None:
    """Index just past the JSON value opening at `text[start]` (`{` or `[`), string- and escape-aware."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def extract_json(text: str) -> tuple[str, Any] | None:
    """The JSON in an answer: the whole text, a fenced block, or the first balanced object in prose."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    for start in (m.start() for m in re.finditer(r"[{\[]", text)):
        end = balanced_end(text, start)
        if end is not None:
            candidates.append(text[start:end])
    for candidate in candidates:
        try:
            return candidate, orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
    return None


class JsonAnswer:
    """The content of a JSON-mode answer (the rules in the module docstring)."""

    def __init__(self, index: int, fmt: JsonFormat, *, prefill: str = "") -> None:
        self.index = index
        self.fmt = fmt
        self.live = bool(prefill) and not fmt.strict
        self.stopped = False
        self.invalid: str | None = None
        self._text = prefill
        self._sent = 0

    def feed(self, text: str) -> list[Out]:
        if self.stopped:
            return []
        self._text += text
        if not self.live:
            return []
        start = self._text.find("{")
        if start < 0:
            return []
        end = balanced_end(self._text, start)
        if end is not None:
            self.stopped = True
            self._text = self._text[:end]
        ready, self._sent = self._text[self._sent :], len(self._text)
        return [Text(self.index, ready)] if ready else []

    def end(self, reason: str) -> tuple[list[Out], str]:
        if self.live:
            rest = self._text[self._sent :]
            self._sent = len(self._text)
            return ([Text(self.index, rest)] if rest else []), reason
        text = self._text
        if reason == "length" or not text.strip():
            return ([Text(self.index, text)] if text else []), reason
        found = extract_json(text)
        if found is None:
            if self.fmt.strict:
                self.invalid = "the answer is not JSON"
            return [Text(self.index, text.strip())], reason
        content, value = found
        if self.fmt.strict:
            self.invalid = self.fmt.error(value)
        return [Text(self.index, content)], reason


def correction(problem: str) -> str:
    """The Human turn of a corrective retry."""
    return (
        f"Your answer was not valid: {problem}. Answer again with only the corrected JSON, "
        "nothing before or after it."
    )
