"""OpenAI tools over the legacy prompt: Anthropic's documented Claude 2.1 tool-use format (pure).

The tool descriptions go into the system text (before the first `\\n\\nHuman:`), the model answers
with a `<function_calls>` block, and the upstream stops at `</function_calls>`. `ToolCallParser` reads
the answer back, streamed or not, into `ToolCallStarted` / `ToolCallArguments` events.

| OpenAI request | Prompt / upstream |
|---|---|
| `tools[].function` (`name`, `description`, `parameters`) | one `<tool_description>` each, inside `<tools>` in the system text |
| `functions` (legacy) | the same, answered with `message.function_call` and `finish_reason: "function_call"` |
| `tool_choice: "auto"` (default with tools) / `function_call: "auto"` | the "answer using the relevant tool(s)" lines |
| `tool_choice: "none"` / `function_call: "none"` | no tool descriptions; the answer is text |
| `tool_choice: "required"` | "always invoke a function" lines; the assistant turn is prefilled with `<function_calls>\\n<invoke>\\n<tool_name>` |
| `tool_choice: {"type": "function", "function": {"name": X}}` / `function_call: {"name": X}` | as `required`, prefilled up to `<parameters>` of X; unknown X → 400 |
| `parallel_tool_calls: false` | "only invoke one function at a time"; stop also at `</invoke>`; at most one call |
| (always, with tools) | stop sequences `</function_calls>` and `<function_results>` (a hallucinated result ends the answer) |
| assistant `tool_calls` / `function_call` in history | `<function_calls>` blocks in its Assistant turn (`proxy.translate.prompt`) |
| `tool` / `function` messages | one `<function_results>` block in the same Assistant turn, names matched by `tool_call_id` |

| model output | OpenAI answer |
|---|---|
| text, then `<function_calls>` with `<invoke>` blocks | `content` = the text (null when empty), one tool call per invoke, in order, ids `call_…` |
| a parameter value | typed by the tool's JSON schema: integers, numbers, booleans, null, arrays and objects parsed; strings verbatim (CDATA unwrapped, one newline trimmed at each end) |
| `<function_calls>` not followed by `<invoke>` (prose that mentions the tag) | text |
| an invoke naming a tool that was not offered, or that cannot be parsed | its raw text goes to `content`; never a call |
| `strict: true` tool whose arguments fail its schema | not a call; the answer is marked invalid (corrective retry, then 502) |
| final invoke cut by the stop (`</invoke>` or `</parameters>` missing, every parameter closed) | closed leniently, a call |
| `max_tokens` reached inside the block | complete invokes are calls, the cut one is text; `finish_reason: "length"` |
| calls made | `finish_reason`: `tool_calls` (`auto`/`required`), `stop` (named choice), `function_call` (legacy fields) |
| more invokes than allowed (`parallel_tool_calls: false`) | the first only |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.errors import invalid_request, unsupported
from proxy.translate.stream import Out, Text, ToolCallArguments, ToolCallStarted, new_id

OPEN_BLOCK = "<function_calls>"
CLOSE_BLOCK = "</function_calls>"
RESULTS = "<function_results>"
INVOKE = "<invoke>"
CLOSE_INVOKE = "</invoke>"

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_OPEN_TAG = re.compile(r"<([A-Za-z_][A-Za-z0-9_.:-]*)>")
_CDATA = re.compile(r"^\s*<!\[CDATA\[(.*)\]\]>\s*$", re.DOTALL)

TOOLS_PREAMBLE = (
    "In this environment you have access to a set of tools you can use to answer the user's question.\n"
    "\n"
    "You may call them like this:\n"
    "<function_calls>\n"
    "<invoke>\n"
    "<tool_name>$TOOL_NAME</tool_name>\n"
    "<parameters>\n"
    "<$PARAMETER_NAME>$PARAMETER_VALUE</$PARAMETER_NAME>\n"
    "...\n"
    "</parameters>\n"
    "</invoke>\n"
    "</function_calls>\n"
    "\n"
    "String and scalar parameters should be specified as is, while lists and objects should use JSON "
    "format. Do not XML-escape parameter values.\n"
)
PARALLEL_LINE = (
    "If you intend to call multiple tools and there are no dependencies between the calls, make all of "
    "the independent calls in the same <function_calls></function_calls> block.\n"
)
SINGLE_LINE = (
    "Only invoke one function at a time and wait for the results before invoking another function.\n"
)
RESULTS_LINE = "The results of your calls will appear in a subsequent <function_results> block.\n"
AUTO_LINES = (
    "Answer the user's request using the relevant tool(s), if they are available. Check that all the "
    "required parameters for each tool call are provided or can reasonably be inferred from context. IF "
    "there are no relevant tools or there are missing values for required parameters, ask the user to "
    "supply these values; otherwise proceed with the tool calls. If the user provides a specific value for "
    "a parameter (for example provided in quotes), make sure to use that value EXACTLY. DO NOT make up "
    "values for or ask about optional parameters."
)
REQUIRED_LINES = (
    "Always invoke a function call in response to user queries. If there is any information missing for "
    "filling in a REQUIRED parameter, make your best guess for the parameter value based on the query "
    "context. Do not fill in optional parameters if they are not specified by the user."
)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]  # the `parameters` JSON schema (an object schema)
    strict: bool = False

    def properties(self) -> dict[str, Any]:
        props = self.schema.get("properties")
        return props if isinstance(props, dict) else {}


@dataclass(frozen=True)
class ToolSetup:
    """What a request asks of tools (the first table in the module docstring)."""

    tools: tuple[Tool, ...]
    choice: str  # auto | none | required | named
    named: str | None = None
    parallel: bool = True
    legacy: bool = False  # `functions` / `function_call`
    by_name: dict[str, Tool] = field(default_factory=dict, compare=False)

    @property
    def active(self) -> bool:
        """Tools are offered to the model (and its answer is parsed for calls)."""
        return bool(self.tools) and self.choice != "none"

    def system_text(self) -> str:
        if not self.active:
            return ""
        descriptions = "\n".join(describe(tool) for tool in self.tools)
        return (
            TOOLS_PREAMBLE
            + (PARALLEL_LINE if self.parallel else SINGLE_LINE)
            + RESULTS_LINE
            + "\nHere are the tools available:\n<tools>\n"
            + descriptions
            + "\n</tools>"
        )

    def choice_text(self) -> str:
        if not self.active:
            return ""
        return AUTO_LINES if self.choice == "auto" else REQUIRED_LINES

    def prefill(self) -> str:
        if not self.active:
            return ""
        if self.choice == "named":
            return f"{OPEN_BLOCK}\n{INVOKE}\n<tool_name>{self.named}</tool_name>\n<parameters>"
        if self.choice == "required":
            return f"{OPEN_BLOCK}\n{INVOKE}\n<tool_name>"
        return ""

    def stop_sequences(self) -> list[str]:
        if not self.active:
            return []
        return [CLOSE_BLOCK, RESULTS] + ([] if self.parallel else [CLOSE_INVOKE])

    def finish_reason(self) -> str:
        if self.legacy:
            return "function_call"
        return "stop" if self.choice == "named" else "tool_calls"


def _type_name(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if isinstance(kind, str):
        return kind
    if "enum" in schema:
        return "string"
    return "any"


def describe(tool: Tool) -> str:
    """One `<tool_description>`, as anthropic-tools wrote it, with JSON-schema type names."""
    required = set(tool.schema.get("required") or [])
    parameters = []
    for name, schema in tool.properties().items():
        schema = schema if isinstance(schema, dict) else {}
        lines = [f"<parameter>\n<name>{name}</name>\n<type>{_type_name(schema)}</type>"]
        if schema.get("description"):
            lines.append(f"<description>{schema['description']}</description>")
        lines.append(f"<required>{'true' if name in required else 'false'}</required>")
        if isinstance(schema.get("enum"), list):
            lines.append("<enum>" + ", ".join(orjson.dumps(v).decode() for v in schema["enum"]) + "</enum>")
        if _type_name(schema) in {"array", "object", "any"} or any(
            k in schema for k in ("anyOf", "oneOf", "allOf", "$ref", "items", "properties")
        ):
            lines.append(f"<schema>{orjson.dumps(schema).decode()}</schema>")
        parameters.append("\n".join(lines) + "\n</parameter>")
    defs = tool.schema.get("$defs") or tool.schema.get("definitions")
    if defs:
        parameters.append(f"<definitions>{orjson.dumps(defs).decode()}</definitions>")
    return (
        "<tool_description>\n"
        f"<tool_name>{tool.name}</tool_name>\n"
        "<description>\n"
        f"{tool.description}\n"
        "</description>\n"
        "<parameters>\n" + "\n".join(parameters) + "\n</parameters>\n</tool_description>"
    )


# -- the request ------------------------------------------------------------------------------------


def _function(spec: Any, param: str) -> Tool:
    if not isinstance(spec, dict):
        raise invalid_request(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid_request(
            f"Invalid '{param}.name': string does not match pattern. Expected a string that matches the "
            "pattern '^[a-zA-Z0-9_-]+$' (at most 64 characters).",
            f"{param}.name",
            "invalid_value",
        )
    description = spec.get("description") or ""
    parameters = spec.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or not isinstance(description, str):
        raise invalid_request(
            f"Invalid '{param}': 'parameters' must be a JSON schema object.",
            f"{param}.parameters",
            "invalid_type",
        )
    strict = spec.get("strict") is True
    if strict:
        from jsonschema import Draft202012Validator  # imported only when a strict tool is offered
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as error:
            raise invalid_request(
                f"Invalid schema for function '{name}': {error.message}",
                f"{param}.parameters",
                "invalid_schema",
            ) from None
    return Tool(name, description, parameters, strict)


def _tools(tools: list[dict[str, Any]] | None, functions: list[dict[str, Any]] | None) -> tuple[Tool, ...]:
    result: list[Tool] = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise unsupported(f"Tools of type {kind!r} (only 'function' tools)", f"tools[{i}].type")
        result.append(_function(tool.get("function"), f"tools[{i}].function"))
    for i, function in enumerate(functions or []):
        result.append(_function(function, f"functions[{i}]"))
    names = [t.name for t in result]
    if len(set(names)) != len(names):
        raise invalid_request("Tool names must be unique.", "tools", "invalid_value")
    return tuple(result)


def _choice(value: str | dict[str, Any] | None, param: str, legacy: bool) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value in ({"none", "auto"} if legacy else {"none", "auto", "required"}):
            return value, None
        raise invalid_request(f"Invalid value for '{param}': {value!r}.", param, "invalid_value")
    name = value.get("name") if legacy else (value.get("function") or {}).get("name")
    if not legacy and value.get("type") not in (None, "function"):
        raise unsupported(f"'{param}' of type {value.get('type')!r}", param)
    if not isinstance(name, str):
        raise invalid_request(
            f"Missing required parameter: '{param}.function.name'.", param, "missing_required_parameter"
        )
    return "named", name


def tool_setup(
    *,
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    functions: list[dict[str, Any]] | None,
    function_call: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
) -> ToolSetup | None:
    """Validate the request's tool fields; None when it has no tools (and asks for none)."""
    if tools and functions:
        raise invalid_request("Use either 'tools' or the deprecated 'functions', not both.", "functions")
    legacy = bool(functions) or (not tools and function_call is not None)
    param = "function_call" if legacy else "tool_choice"
    choice, named = _choice(function_call if legacy else tool_choice, param, legacy)
    offered = _tools(tools, functions)
    if not offered:
        if choice in {"required", "named"}:
            raise invalid_request(
                f"Invalid value for '{param}': '{param}' is only allowed when tools are specified.", param
            )
        return None
    by_name = {tool.name: tool for tool in offered}
    if named is not None and named not in by_name:
        raise invalid_request(
            f"Invalid value for '{param}': no function named {named!r} was specified in "
            f"'{'functions' if legacy else 'tools'}'.",
            param,
            "invalid_value",
        )
    return ToolSetup(offered, choice, named, parallel_tool_calls is not False, legacy, by_name)


# -- values ----------------------------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [str(k) for k in kind]
    types: list[str] = []
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or []:
            if isinstance(option, dict):
                types += _types(option)
    return types


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _children(text: str) -> list[tuple[str, str]] | None:
    """`<a>1</a><b>2</b>` → [(a, 1), (b, 2)]; None unless the whole text is such elements."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _OPEN_TAG.match(text, pos)
        if match is None:
            return None
        close = text.find(f"</{match.group(1)}>", match.end())
        if close < 0:
            return None
        pairs.append((match.group(1), text[match.end() : close]))
        pos = close + len(match.group(1)) + 3
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return pairs or None


def _sub(schema: dict[str, Any], key: str) -> dict[str, Any]:
    value = schema.get(key)
    return value if isinstance(value, dict) else {}


def coerce(value: Any, schema: dict[str, Any]) -> Any:
    """A parameter value (text from the XML, or already decoded JSON) typed by its schema."""
    types = _types(schema) if isinstance(schema, dict) else []
    if not isinstance(value, str):
        if isinstance(value, float) and "integer" in types and value.is_integer():
            return int(value)
        if isinstance(value, list) and "array" in types:
            return [coerce(v, _sub(schema, "items")) for v in value]
        if isinstance(value, dict) and "object" in types:
            props = _sub(schema, "properties")
            return {k: coerce(v, _sub(props, k)) for k, v in value.items()}
        return value
    text = value.strip()
    for kind in [t for t in types if t != "string"] + (["string"] if "string" in types else []):
        if kind == "string":
            return value
        if kind == "integer":
            number = _number(text)
            if number is not None and float(number).is_integer():
                return int(number)
        elif kind == "number":
            number = _number(text)
            if number is not None:
                return number
        elif kind == "boolean" and text.lower() in {"true", "false"}:
            return text.lower() == "true"
        elif kind == "null" and text.lower() in {"null", "none", ""}:
            return None
        elif kind in {"array", "object"}:
            decoded = _json(text)
            if isinstance(decoded, str):  # JSON text inside a JSON string
                decoded = _json(decoded)
            if kind == "array":
                if isinstance(decoded, list):
                    return coerce(decoded, schema)
                children = _children(text)
                if children is not None:
                    return coerce([v for _, v in children], schema)
                items = _sub(schema, "items")
                if text:
                    return [coerce(part.strip(), items) for part in text.split(",")]
                return []
            if isinstance(decoded, dict):
                return coerce(decoded, schema)
            children = _children(text)
            if children is not None:
                props = _sub(schema, "properties")
                return {k: coerce(v, _sub(props, k)) for k, v in children}
    return value


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _value_text(raw: str) -> str:
    match = _CDATA.match(raw)
    if match:
        return match.group(1)
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    return raw


class Garbled(ValueError):
    """An invoke that cannot be read as a call."""


def parse_parameters(region: str, tool: Tool) -> dict[str, Any]:
    """The `<parameters>` region of an invoke → typed arguments (rules in the module docstring).

    A value ends at the first `</name>` followed by another parameter's tag, `</parameters>`,
    `</invoke>` or the end, so `<`, `&`, HTML or look-alike tags inside values do not end them."""
    props = tool.properties()
    arguments: dict[str, Any] = {}
    pos = 0
    while True:
        match = _OPEN_TAG.search(region, pos)
        if match is None:
            if region[pos:].strip():
                raise Garbled("text outside the parameter tags")
            return arguments
        if region[pos : match.start()].strip():
            raise Garbled("text outside the parameter tags")
        name = match.group(1)
        close = f"</{name}>"
        end = region.find(close, match.end())
        while end >= 0:
            rest = region[end + len(close) :].lstrip()
            following = _OPEN_TAG.match(rest)
            if (
                not rest
                or rest.startswith(("</parameters>", CLOSE_INVOKE))
                or (following is not None and (following.group(1) in props or name not in props))
            ):
                break
            end = region.find(close, end + 1)
        if end < 0:
            raise Garbled(f"parameter {name!r} is not closed")
        raw = _value_text(region[match.end() : end])
        arguments[name] = coerce(raw, _sub(props, name))
        pos = end + len(close)


def parse_invoke(text: str, setup: ToolSetup, *, final: bool) -> tuple[Tool, dict[str, Any]]:
    """The inside of one `<invoke>` (without the tags) → the tool and its arguments."""
    body = text.strip()
    match = re.match(r"<tool_name>\s*([^<]*?)\s*</tool_name>", body)
    if match is None:
        raise Garbled("no tool name")
    tool = setup.by_name.get(match.group(1))
    if tool is None:
        raise Garbled(f"no tool named {match.group(1)!r} was offered")
    rest = body[match.end() :].strip()
    if not rest:
        return tool, {}
    if not rest.startswith("<parameters>"):
        raise Garbled("no parameters")
    rest = rest[len("<parameters>") :]
    close = rest.rfind("</parameters>")
    if close >= 0:
        if rest[close + len("</parameters>") :].strip():
            raise Garbled("text after the parameters")
        rest = rest[:close]
    elif not final:
        raise Garbled("parameters not closed")
    return tool, parse_parameters(rest, tool)


def strict_error(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """The first schema violation of a `strict` tool's arguments, or None."""
    if not tool.strict:
        return None
    from jsonschema import Draft202012Validator  # loaded once a strict tool was offered

    error = next(iter(Draft202012Validator(tool.schema).iter_errors(arguments)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"arguments of {tool.name}{' at ' + where if where else ''}: {error.message}"


# -- the parser ------------------------------------------------------------------------------------


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ToolCallParser:
    """Turns one choice's answer into text and tool-call events; the same events whatever the chunking.

    Text before `<function_calls>` streams at once (a possible start of the tag, and trailing
    whitespace, are held back); each `<invoke>` becomes a call once it is complete (`</invoke>`, or the
    end of the answer for a leniently closed final one). `invalid` names a strict-schema violation.
    """

    def __init__(self, index: int, setup: ToolSetup, prefill: str = "") -> None:
        self.index = index
        self.setup = setup
        self.stopped = False
        self.invalid: str | None = None
        self._text = ""  # TEXT mode: held text
        self._block: str | None = None  # after <function_calls>: the block so far
        self._done = 0  # characters of the block already turned into calls
        self._calls = 0
        self._failed: list[str] = []  # raw invokes that are not calls (→ text at the end)
        self._closed = False  # </function_calls> seen: the rest is ignored
        self._any_text = False
        self._final_reason = ""
        self._gap = ""  # whitespace held before <function_calls> (text again if it was prose)
        self._junk = False  # the block had text that is no invoke: the rest of it is text
        self._prefilled = bool(prefill)
        self._model_text: list[str] = []  # what the model wrote (the prefill is not its words)
        self._held: list[Out] = []
        if prefill:
            self._held = self.feed(prefill)

    # TEXT mode ----------------------------------------------------------------------------------
    def _emit_text(self, text: str, out: list[Out]) -> None:
        if text:
            if not self._any_text:
                text = text.lstrip()
                if not text:
                    return
            self._any_text = True
            out.append(Text(self.index, text))

    def feed(self, text: str) -> list[Out]:
        out: list[Out] = self._held
        self._held = []
        if self._prefilled:
            self._model_text.append(text)
        if self._block is None:
            self._text += text
            start = self._text.find(OPEN_BLOCK)
            if start < 0:
                cut = len(self._text) - _held_prefix(self._text, OPEN_BLOCK)
                cut = len(self._text[:cut].rstrip())  # whitespace before a call is not content
                self._emit_text(self._text[:cut], out)
                self._text = self._text[cut:]
                return out
            before = self._text[:start]
            self._emit_text(before.rstrip(), out)
            self._gap = before[len(before.rstrip()) :]
            self._block, self._done = self._text[start + len(OPEN_BLOCK) :], 0
            self._text = ""
        else:
            if not self._closed:
                self._block += text
        self._scan(out, final=False)
        return out

    # BLOCK mode ---------------------------------------------------------------------------------
    def _scan(self, out: list[Out], *, final: bool) -> None:
        assert self._block is not None
        block = self._block
        if not self._closed:
            close = block.find(CLOSE_BLOCK)
            if close >= 0:
                self._block = block = block[:close]
                self._closed = True
        while True:
            rest = block[self._done :]
            if self._junk:  # after garbage between invokes, the rest of the block is text too
                if rest:
                    self._failed.append(rest)
                    self._done = len(block)
                return
            stripped = rest.lstrip()
            if not stripped:
                return
            if not stripped.startswith(INVOKE):
                if INVOKE.startswith(stripped) and not final and not self._closed:
                    return  # might still become <invoke>
                if self._calls == 0 and not self._failed:
                    self._false_alarm(out)
                else:
                    self._junk = True
                    self._failed.append(rest)
                    self._done = len(block)
                return
            body_start = self._done + (len(rest) - len(stripped)) + len(INVOKE)
            end = block.find(CLOSE_INVOKE, body_start)
            if end < 0:
                if final or self._closed:
                    self._invoke(block[body_start:], raw=block[self._done :], out=out, final=True)
                    self._done = len(block)
                return
            self._invoke(
                block[body_start:end], raw=block[self._done : end + len(CLOSE_INVOKE)], out=out, final=False
            )
            self._done = end + len(CLOSE_INVOKE)

    def _false_alarm(self, out: list[Out]) -> None:
        """`<function_calls>` that opens no invoke: it was prose. Back to TEXT mode with the rest."""
        assert self._block is not None
        rest, self._block, self._closed = self._block, None, False
        self._emit_text(self._gap + OPEN_BLOCK, out)
        out += self.feed(rest)

    def _invoke(self, body: str, *, raw: str, out: list[Out], final: bool) -> None:
        if self._final_reason == "length" and final:
            self._failed.append(raw)
            return
        if not self.setup.parallel and self._calls >= 1:
            return
        try:
            tool, arguments = parse_invoke(body, self.setup, final=final)
        except Garbled:
            self._failed.append(raw)
            return
        problem = strict_error(tool, arguments)
        if problem is not None:
            self.invalid = problem
            self._failed.append(raw)
            return
        call = self._calls
        self._calls += 1
        out.append(ToolCallStarted(self.index, call, new_id("call_"), tool.name))
        out.append(ToolCallArguments(self.index, call, orjson.dumps(arguments).decode()))

    def end(self, reason: str) -> tuple[list[Out], str]:
        out: list[Out] = self._held
        self._held = []
        self._final_reason = reason
        if self._block is None:
            self._emit_text(self._text.rstrip(), out)
            self._text = ""
        else:
            self._scan(out, final=True)
        if self._block is None:  # a false alarm at the end turned the block back into text
            self._emit_text(self._text.rstrip(), out)
            self._text = ""
        if self._failed:
            if not self._calls and self._prefilled:  # a forced call that did not happen: the model's words
                raw = "".join(self._model_text[1:]).strip()
            else:
                raw = ("" if self._calls else OPEN_BLOCK + "\n") + "".join(self._failed).strip()
            self._emit_text(("\n\n" if self._any_text else "") + raw, out)
        if self._calls and reason != "length":
            reason = self.setup.finish_reason()
        return out, reason
