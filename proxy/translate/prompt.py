"""OpenAI messages and prompts → the legacy `\\n\\nHuman: … \\n\\nAssistant:` prompt.

Rules, in the order they apply:

| OpenAI input | Prompt |
|---|---|
| leading `system` / `developer` messages | plain text before the first `\\n\\nHuman:` turn (Claude 2.1's system prompt) |
| `user`, later `system` messages | a `\\n\\nHuman:` turn |
| `assistant` message | a `\\n\\nAssistant:` turn |
| consecutive messages that land in the same turn | merged, separated by a blank line |
| content as an array of `text` (or `refusal`) parts | the parts' text joined by newlines; image, audio and file parts → 400 |
| tool descriptions and JSON instructions (`proxy.translate.tools`, `proxy.translate.structured`) | system text, before the client's system messages; choice lines after them |
| assistant `tool_calls` / `function_call` | a `<function_calls>` block after its content, in its Assistant turn (values: strings raw, others JSON; CDATA when a value holds its own close tag) |
| `tool` / `function` messages | one `<function_results>` block per run of them, in the same Assistant turn (anthropic-tools' placement), names matched by `tool_call_id` (`unknown` when no call has that id) |
| a conversation that starts with the assistant | an empty Human turn is put first |
| a trailing assistant message | a prefill: the prompt ends `\\n\\nAssistant: <text>` and the model continues it |
| the proxy's own prefill (forced tool call, JSON) | after the last Assistant turn's text (a blank line between), or as a new `\\n\\nAssistant: <prefill>` |
| otherwise | the prompt ends with `\\n\\nAssistant:` (no trailing space: the upstream strips it anyway) |
| `\\n\\nHuman:` / `\\n\\nAssistant:` inside message text | one newline dropped, so text cannot forge a turn |

Every prompt built here satisfies the upstream's validation rules (`prompt_error` returns None); the
property tests check that against the mock upstream's own rules as well.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import orjson

from proxy.errors import invalid_request, unsupported
from proxy.translate.schema import ChatMessage, Content, FunctionCall, RefusalPart, TextPart

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

_MARKER = re.compile(r"\n{2,}(Human|Assistant):")
_TURN = re.compile(r"\n\n(Human|Assistant):")

#: Content part types the upstream cannot take → what the 400 calls them.
_UNSUPPORTED_PARTS = {
    "image_url": "Image content",
    "input_image": "Image content",
    "input_audio": "Audio content",
    "audio": "Audio content",
    "file": "File content",
    "input_file": "File content",
}


def defuse(text: str) -> str:
    """Neutralise turn markers inside message text: a run of newlines before `Human:` becomes one."""
    if "\n\n" not in text:
        return text
    return _MARKER.sub(lambda m: "\n" + m.group(1) + ":", text)


def content_text(content: Content | None, param: str) -> str:
    """Flatten OpenAI message content to text; non-text parts get a 400 naming the part.

    The parts' shapes were checked by `proxy.translate.schema`; only what the upstream cannot take is
    decided here.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
        else:
            raise unsupported(_UNSUPPORTED_PARTS[part.type], f"{param}[{j}]")
    return "\n".join(texts)


def _xml_value(name: str, value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if f"</{name}>" in text:
        text = f"<![CDATA[{text}]]>"
    return f"<{name}>{text}</{name}>"


def _invoke(function: FunctionCall) -> str:
    name = function.name
    arguments: Any = function.arguments
    with contextlib.suppress(orjson.JSONDecodeError):  # invalid JSON is replayed as it came
        arguments = orjson.loads(arguments) if arguments.strip() else {}
    if isinstance(arguments, dict):
        params = "\n".join(_xml_value(str(k), v) for k, v in arguments.items())
    else:
        params = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    params = f"<parameters>\n{params}\n</parameters>" if params else "<parameters>\n</parameters>"
    return f"<invoke>\n<tool_name>{name}</tool_name>\n{params}\n</invoke>"


def function_calls_block(functions: Sequence[FunctionCall]) -> str:
    return "<function_calls>\n" + "\n".join(_invoke(f) for f in functions) + "\n</function_calls>"


def function_result(name: str, content: str) -> str:
    if "</stdout>" in content or "</function_results>" in content:
        content = f"<![CDATA[{content}]]>"
    return f"<result>\n<tool_name>{name}</tool_name>\n<stdout>\n{content}\n</stdout>\n</result>"


_RESULTS_END = "\n</function_results>"


def _message_text(message: ChatMessage, index: int, names: dict[str, str]) -> str:
    param = f"messages[{index}].content"
    if message.content is None and message.role in {"system", "developer", "user", "tool"}:
        raise invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    text = content_text(message.content, param)
    if message.role == "assistant":
        functions: list[FunctionCall] = []
        for call in message.tool_calls or []:
            names[call.id] = call.function.name
            functions.append(call.function)
        if message.function_call:
            functions.append(message.function_call)
        if functions:
            text = "\n\n".join(t for t in (text, function_calls_block(functions)) if t)
    elif message.role == "tool":
        text = function_result(names.get(message.tool_call_id or "", "unknown"), text)
    elif message.role == "function":
        text = function_result(message.name or "unknown", text)
    return text


#: Roles whose string content is the message's text as it is (no tool markup around it).
_PLAIN_ROLES = frozenset({"system", "developer", "user"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
_RESULT_ROLES = frozenset({"tool", "function"})
_ASSISTANT_ROLES = frozenset({"assistant", "tool", "function"})


def chat_prompt(
    messages: Sequence[ChatMessage], *, preamble: str = "", epilogue: str = "", prefill: str = ""
) -> str:
    """Build the upstream prompt for a chat conversation (rules in the module docstring).

    `preamble` and `epilogue` are the proxy's own system text around the client's (tool descriptions,
    JSON instructions), `prefill` the start of the answer the proxy puts in the model's mouth."""
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    names: dict[str, str] = {}
    previous_role = ""
    for index, message in enumerate(messages):
        role = message.role
        if type(message.content) is str and role in _PLAIN_ROLES:  # most messages: the text as it is
            text = message.content
        else:
            text = _message_text(message, index, names)
        if not turns and role in _SYSTEM_ROLES:
            system.append(text)
            continue
        speaker = ASSISTANT if role in _ASSISTANT_ROLES else HUMAN
        is_result = role in _RESULT_ROLES
        if is_result:
            text = "<function_results>\n" + text + _RESULTS_END
        if turns and turns[-1][0] == speaker:
            texts = turns[-1][1]
            if is_result and previous_role in _RESULT_ROLES and texts[-1].endswith(_RESULTS_END):
                texts[-1] = texts[-1][: -len(_RESULTS_END)] + "\n" + text[len("<function_results>\n") :]
            else:
                texts.append(text)
        else:
            turns.append((speaker, [text]))
        previous_role = role

    if not turns:  # Only system messages: they are what the user wants answered.
        turns, system = [(HUMAN, system)], []
    if turns[0][0] == ASSISTANT:
        turns.insert(0, (HUMAN, []))
    if prefill:
        if turns[-1][0] == ASSISTANT:
            turns[-1][1].append(prefill)
        else:
            turns.append((ASSISTANT, [prefill]))

    # The non-empty texts, joined: `filter(None, …)` keeps the truthy ones without a Python frame. One
    # text, the usual case, is that text (a join of one is the item itself, of none "").
    heads = (preamble, *system, epilogue) if preamble or epilogue else system
    head = heads[0].strip() if len(heads) == 1 else "\n\n".join(filter(None, map(str.strip, heads)))
    parts = [defuse(head)]
    for speaker, texts in turns:
        body = defuse((texts[0] if len(texts) == 1 else "\n\n".join(filter(None, texts))).strip())
        parts.append(f"{speaker} {body}" if body else speaker)
    if turns[-1][0] == HUMAN:
        parts.append(ASSISTANT)
    return "".join(parts).rstrip()


def completion_prompt(prompt: str) -> str:
    """Use a raw `/v1/completions` prompt as is when it is already a valid legacy prompt, else wrap it.

    A prompt that opens a Human turn but lacks the closing `\\n\\nAssistant:` gets one appended.
    """
    candidate = prompt.rstrip()
    if prompt_error(candidate) is None:
        return candidate
    if _TURN.search(candidate) and prompt_error(candidate + ASSISTANT) is None:
        return candidate + ASSISTANT
    body = defuse(prompt.strip())
    return f"{HUMAN} {body}{ASSISTANT}" if body else f"{HUMAN}{ASSISTANT}"


def prompt_error(prompt: str) -> str | None:
    """The upstream's documented prompt rules; returns its error message, or None when the prompt passes.

    After the upstream's light sanitising (trailing whitespace removed, a leading `Human:` without
    `\\n\\n` accepted): optional system text, then a first turn that is Human, and a last turn that is
    Assistant.
    """
    text = prompt.rstrip()
    if text.startswith("Human:"):
        text = "\n\n" + text
    turns = _TURN.findall(text)
    if not turns or turns[0] != "Human":
        return 'prompt must start with "\n\nHuman:" turn after an optional system prompt'
    if turns[-1] != "Assistant":
        return 'prompt must end with "\n\nAssistant:" turn'
    return None
