"""`POST /v1/responses` requests → the chat request that the chat planner turns into upstream calls (pure).

The Responses API is served over the same core as chat: its request becomes a `ChatRequest` (then
`plan_chat` applies every chat rule: prompt, tools, structured output, limits), and its answer is the
same translator's events rendered by `proxy.translate.render.responses`.

| Responses field | Chat request | Rule |
|---|---|---|
| `instructions` | a leading `system` message | not carried over from `previous_response_id` (as OpenAI) |
| stored conversation of `previous_response_id` | messages first | its input and output items, in order |
| `input` string | one `user` message | |
| `input` message item (`user`, `assistant`, `system`, `developer`) | a message of that role | content string, or `input_text` / `output_text` / `refusal` parts |
| `function_call` item | assistant `tool_calls` entry (`call_id` → id) | consecutive calls join one assistant message; with `namespace`, its flat name |
| `function_call_output` item | `tool` message (`call_id` → `tool_call_id`) | `output` string, or text parts |
| `tools`: `function` | chat function tool | `name`, `description`, `parameters`, `strict` |
| `tools`: `custom` (freeform) | a function with one string parameter `input` | the call's `input` comes back as the custom call's input |
| `tools`: `namespace` (a group of function / custom tools) | each tool, named `namespace__name` | calls come back with `name` and `namespace` apart |
| `tool_choice` `{type: function, name}` | `{type: function, function: {name}}` | strings pass as is |
| `text.format` `json_object` / `json_schema` | `response_format` | `{name, schema, strict}` nest under `json_schema` |
| `max_output_tokens` (≥ 16) | `max_tokens` | |
| `temperature`, `top_p`, `user`, `parallel_tool_calls`, `stream` | same | |
| `metadata`, `store`, `previous_response_id` | — | kept by the proxy's response store |
| `reasoning.effort`, `service_tier`, `prompt_cache_key`, `text.verbosity` | `reasoning_effort`, `service_tier`, `prompt_cache_key`, `verbosity` | the chat policy: dropped (default) or 400 with `generation.unsupported_params: reject` |
| `item_reference` (an item of a stored response) | that item, as above | resolved by `proxy.http.responses_api` |
| hosted tools, `background`, image/file/audio inputs | — | 400 |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, StrictBool, StrictInt, StrictStr, ValidationError

from proxy.errors import invalid_request, unsupported
from proxy.translate.schema import ChatRequest, Temperature, TopP, _Body
from proxy.translate.validation import error_from_validation

#: OpenAI's smallest `max_output_tokens`.
MIN_OUTPUT_TOKENS = 16

#: Tools OpenAI runs itself; the legacy upstream has none of them.
HOSTED_TOOLS = {
    "web_search": "Web search",
    "web_search_preview": "Web search",
    "file_search": "File search",
    "code_interpreter": "Code interpreter",
    "computer_use_preview": "Computer use",
    "computer_use": "Computer use",
    "image_generation": "Image generation",
    "mcp": "Remote MCP tools",
    "local_shell": "Local shell",
    "shell": "Shell",
    "tool_search": "Tool search",
}

#: A custom (freeform) tool's single string parameter.
CUSTOM_INPUT = "input"


class ResponsesTool(_Body):
    """A tool as the Responses API declares it (flat; hosted tools carry other fields, ignored here)."""

    type: StrictStr
    name: StrictStr | None = None
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None
    format: dict[str, Any] | None = None
    tools: list[ResponsesTool] | None = None  # a `namespace` tool's own tools


class TextConfig(_Body):
    format: dict[str, Any] | None = None
    verbosity: StrictStr | None = None


class ResponsesRequest(_Body):
    model: StrictStr
    input: StrictStr | list[dict[str, Any]] | None = None
    instructions: StrictStr | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    metadata: dict[str, StrictStr] | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    stream: StrictBool | None = None
    background: StrictBool | None = None
    include: list[StrictStr] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    max_tool_calls: Annotated[StrictInt, Field(ge=1)] | None = None
    conversation: StrictStr | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


def _text_parts(content: Any, param: str) -> str:
    """A message's content: a string, or `input_text` / `output_text` / `refusal` parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(
            f"Invalid type for '{param}': expected a string or an array of content parts.",
            param,
            "invalid_type",
        )
    texts = []
    for number, part in enumerate(content):
        where = f"{param}[{number}]"
        if not isinstance(part, dict):
            raise invalid_request(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_request(f"Missing required parameter: '{where}.text'.", f"{where}.text")
            texts.append(text)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise unsupported(f"Content of type '{kind}'", f"{where}.type")
        else:
            raise invalid_request(
                f"Invalid value for '{where}.type': {kind!r}. Supported values are: 'input_text', "
                "'output_text' and 'refusal'.",
                f"{where}.type",
                "invalid_value",
            )
    return "\n".join(texts)


def _string(item: dict[str, Any], field: str, param: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise invalid_request(
            f"Missing required parameter: '{param}.{field}'."
            if value is None
            else f"Invalid type for '{param}.{field}': expected a string.",
            f"{param}.{field}",
            "missing_required_parameter" if value is None else "invalid_type",
        )
    return value


def input_messages(items: str | list[dict[str, Any]] | None, param: str = "input") -> list[dict[str, Any]]:
    """Responses input items → chat messages (see the module's table)."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for number, item in enumerate(items):
        where = f"{param}[{number}]"
        if not isinstance(item, dict):
            raise invalid_request(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid_request(
                    f"Invalid value for '{where}.role': {role!r}. Supported values are: 'user', 'assistant', "
                    "'system' and 'developer'.",
                    f"{where}.role",
                    "invalid_value",
                )
            messages.append({"role": role, "content": _text_parts(item.get("content"), f"{where}.content")})
        elif kind in ("function_call", "custom_tool_call"):
            call_id = _string(item, "call_id", where)
            name = _string(item, "name", where)
            if isinstance(item.get("namespace"), str):
                name = flat_name(item["namespace"], name)
            if kind == "function_call":
                arguments = _string(item, "arguments", where)
            else:
                arguments = orjson.dumps({CUSTOM_INPUT: _string(item, "input", where)}).decode()
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = _string(item, "call_id", where)
            output = item.get("output")
            text = output if isinstance(output, str) else _text_parts(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "item_reference":
            raise unsupported("Input items of type 'item_reference'", f"{where}.type")
        elif kind == "reasoning":
            continue  # the upstream has no reasoning to continue; OpenAI's own items are safe to drop
        else:
            raise invalid_request(
                f"Invalid value for '{where}.type': {kind!r}. Supported values are: 'message', "
                "'function_call' and 'function_call_output'.",
                f"{where}.type",
                "invalid_value",
            )
    return messages


def flat_name(namespace: str, name: str) -> str:
    """The chat tool name of tool `name` of a `namespace` tool."""
    return f"{namespace}__{name}"


def _members(tools: list[ResponsesTool] | None) -> list[tuple[str | None, ResponsesTool]]:
    """Every tool with its namespace: a `namespace` tool's own tools are listed in its place."""
    members: list[tuple[str | None, ResponsesTool]] = []
    for tool in tools or []:
        if tool.type == "namespace":
            members += [(tool.name, inner) for inner in tool.tools or []]
        else:
            members.append((None, tool))
    return members


def custom_tools(tools: list[ResponsesTool] | None) -> frozenset[str]:
    """The chat names of the freeform `custom` tools."""
    return frozenset(
        flat_name(namespace, tool.name) if namespace else tool.name
        for namespace, tool in _members(tools)
        if tool.type == "custom" and tool.name is not None
    )


def namespaced_tools(tools: list[ResponsesTool] | None) -> dict[str, tuple[str, str]]:
    """Chat name → (namespace, name) for the tools of `namespace` tools."""
    return {
        flat_name(namespace, tool.name): (namespace, tool.name)
        for namespace, tool in _members(tools)
        if namespace is not None and tool.name is not None
    }


def chat_tools(tools: list[ResponsesTool] | None, *, prefix: str = "tools") -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for number, tool in enumerate(tools):
        where = f"{prefix}[{number}]"
        if tool.type == "namespace" and prefix == "tools":
            if tool.name is None or not tool.tools:
                raise invalid_request(
                    f"Invalid '{where}': a namespace needs a 'name' and a non-empty 'tools' list.",
                    where,
                    "invalid_value",
                )
            for member in chat_tools(tool.tools, prefix=f"{where}.tools") or []:
                member["function"]["name"] = flat_name(tool.name, member["function"]["name"])
                out.append(member)
            continue
        if tool.type in HOSTED_TOOLS:
            raise unsupported(f"{HOSTED_TOOLS[tool.type]} (a tool OpenAI hosts)", f"{where}.type")
        if tool.name is None:
            raise invalid_request(
                f"Missing required parameter: '{where}.name'.", f"{where}.name", "missing_required_parameter"
            )
        if tool.type == "function":
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            if tool.parameters is not None:
                function["parameters"] = tool.parameters
            if tool.strict is not None:
                function["strict"] = tool.strict
            out.append({"type": "function", "function": function})
        elif tool.type == "custom":
            parameters = {
                "type": "object",
                "properties": {CUSTOM_INPUT: {"type": "string", "description": "The tool's whole input."}},
                "required": [CUSTOM_INPUT],
            }
            function = {"name": tool.name, "description": tool.description or "", "parameters": parameters}
            out.append({"type": "function", "function": function})
        else:
            raise invalid_request(
                f"Invalid value for '{where}.type': {tool.type!r}. Supported values are: 'function', 'custom' "
                "and 'namespace'.",
                f"{where}.type",
                "invalid_value",
            )
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict):
        raise invalid_request(
            f"Invalid value for 'tool_choice': tools of type {choice.get('type')!r} are not available here.",
            "tool_choice",
            "invalid_value",
        )
    return choice


def response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        inner = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": inner}
    return {"type": fmt.get("type")}


def _reasoning_effort(reasoning: dict[str, Any] | None) -> str | None:
    effort = (reasoning or {}).get("effort")
    return effort if isinstance(effort, str) else None


def to_chat(request: ResponsesRequest, history: list[dict[str, Any]]) -> ChatRequest:
    """The chat request that answers `request`, after the stored conversation `history`."""
    if request.background:
        raise unsupported("Background responses", "background")
    if request.conversation is not None:
        raise unsupported("Conversations", "conversation")
    if request.prompt is not None:
        raise unsupported("Stored prompts", "prompt")
    if request.max_output_tokens is not None and request.max_output_tokens < MIN_OUTPUT_TOKENS:
        raise invalid_request(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= {MIN_OUTPUT_TOKENS}, "
            f"but got {request.max_output_tokens} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages += history
    messages += input_messages(request.input)
    if not any(m["role"] != "system" for m in messages):
        raise invalid_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tools": chat_tools(request.tools),
        "tool_choice": chat_tool_choice(request.tool_choice),
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": response_format(request.text),
        "user": request.user,
        "safety_identifier": request.safety_identifier,
        "stream": request.stream,
        # What the upstream cannot honour goes to the chat fields of the same meaning, so the chat
        # route's policy (`generation.unsupported_params`: drop, or 400) applies to it alike.
        "reasoning_effort": _reasoning_effort(request.reasoning),
        "service_tier": request.service_tier,
        "prompt_cache_key": request.prompt_cache_key,
        "verbosity": request.text.verbosity if request.text is not None else None,
    }
    body = {k: v for k, v in fields.items() if v is not None}
    try:
        return ChatRequest.model_validate(body, strict=False)
    except ValidationError as error:
        chat_error = error_from_validation(error, body)
        raise invalid_request(
            chat_error.message, _responses_param(chat_error.param), chat_error.code
        ) from None


#: Chat request paths → where the same value sits in a Responses request.
_PARAM_PREFIXES = (
    ("response_format.json_schema.", "text.format."),
    ("response_format", "text.format"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
)


def _responses_param(param: str | None) -> str | None:
    if param is None:
        return None
    for chat, responses in _PARAM_PREFIXES:
        if param.startswith(chat):
            return responses + param[len(chat) :]
    if param.startswith("tools[") and ".function." in param:
        return param.replace(".function.", ".", 1)
    return param


def response_of_item(item_id: str) -> str | None:
    """The response an item id names (`msg_<response>_<key>`, see `render.responses.item_id`)."""
    _, _, rest = item_id.partition("_")
    response, _, key = rest.rpartition("_")
    return "resp_" + response if response and key else None


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages that continue the conversation after it."""
    items: list[dict[str, Any]] = []
    for item in output:
        if item.get("type") == "message":
            items.append({"type": "message", "role": "assistant", "content": item.get("content", [])})
        elif item.get("type") in ("function_call", "custom_tool_call"):
            items.append(item)
    return input_messages(items, "output")


def input_items(
    items: str | list[dict[str, Any]] | None, new_item_id: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The input as OpenAI lists it (`GET /v1/responses/{id}/input_items`): items with ids."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
    listed = []
    for item in items:
        kind = item.get("type", "message")
        entry = {"type": kind, **item}
        if kind == "message" and isinstance(entry.get("content"), str):
            part = "output_text" if entry.get("role") == "assistant" else "input_text"
            entry["content"] = [{"type": part, "text": entry["content"]}]
        entry.setdefault("id", new_item_id({"message": "msg_", "function_call": "fc_"}.get(kind, "item_")))
        entry.setdefault("status", "completed")
        listed.append(entry)
    return listed
