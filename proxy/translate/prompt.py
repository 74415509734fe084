"""OpenAI messages and prompts → the legacy `\\n\\nHuman: … \\n\\nAssistant:` prompt.

Rules, in the order they apply:

| OpenAI input | Prompt |
|---|---|
| leading `system` / `developer` messages | plain text before the first `\\n\\nHuman:` turn (Claude 2.1's system prompt) |
| `user`, `tool`, `function`, later `system` messages | a `\\n\\nHuman:` turn |
| `assistant` message | a `\\n\\nAssistant:` turn |
| consecutive messages that land in the same turn | merged, separated by a blank line |
| content as an array of `text` (or `refusal`) parts | the parts' text joined by newlines; image, audio and file parts → 400 |
| assistant `tool_calls`, `tool` results | rendered as text (`[tool call …]`, `[tool result …]`) so history is kept |
| a conversation that starts with the assistant | an empty Human turn is put first |
| a trailing assistant message | a prefill: the prompt ends `\\n\\nAssistant: <text>` and the model continues it |
| otherwise | the prompt ends with `\\n\\nAssistant:` (no trailing space: the upstream strips it anyway) |
| `\\n\\nHuman:` / `\\n\\nAssistant:` inside message text | one newline dropped, so text cannot forge a turn |

Every prompt built here satisfies the upstream's validation rules (`prompt_error` returns None); the
property tests check that against the mock upstream's own rules as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def _tool_calls_text(calls: Sequence[tuple[str, FunctionCall]]) -> str:
    return "\n".join(f"[tool call {call_id}: {call.name}({call.arguments})]" for call_id, call in calls)


def _message_text(message: ChatMessage, index: int) -> str:
    param = f"messages[{index}].content"
    if message.content is None and message.role in {"system", "developer", "user", "tool"}:
        raise invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    text = content_text(message.content, param)
    if message.role == "assistant":
        extra = []
        if message.tool_calls:
            extra.append(_tool_calls_text([(call.id, call.function) for call in message.tool_calls]))
        if message.function_call:
            extra.append(_tool_calls_text([("", message.function_call)]))
        text = "\n".join(t for t in (text, *extra) if t)
    elif message.role == "tool":
        text = f"[tool result {message.tool_call_id or ''}]\n{text}"
    elif message.role == "function":
        text = f"[function result {message.name or ''}]\n{text}"
    return text


def _speaker(role: str) -> str:
    return ASSISTANT if role == "assistant" else HUMAN


def chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """Build the upstream prompt for a chat conversation (rules in the module docstring)."""
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for index, message in enumerate(messages):
        text = _message_text(message, index)
        if not turns and message.role in {"system", "developer"}:
            system.append(text)
            continue
        speaker = _speaker(message.role)
        if turns and turns[-1][0] == speaker:
            turns[-1][1].append(text)
        else:
            turns.append((speaker, [text]))

    if not turns:  # Only system messages: they are what the user wants answered.
        turns, system = [(HUMAN, system)], []
    if turns[0][0] == ASSISTANT:
        turns.insert(0, (HUMAN, []))

    parts = [defuse("\n\n".join(t for t in system if t).strip())]
    for speaker, texts in turns:
        body = defuse("\n\n".join(t for t in texts if t).strip())
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
