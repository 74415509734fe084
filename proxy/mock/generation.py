"""Deterministic "model output" for the mock: the answer text, its tokens and why it stopped.

One token is one regex piece `\\s*\\S+` (leading whitespace kept), so streams look like the real
ones (" Hello", "!", " My" …) and the non-stream completion is exactly the concatenated stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.mock.directives import Directives, strip_directives
from proxy.mock.prompt_rules import ASSISTANT_TURN, last_human_text
from proxy.mock.protocol import BUILTIN_STOP, MAX_TOKENS, MODEL_OUTPUT_CAP, STOP_SEQUENCE

TOKEN_RE = re.compile(r"\s*\S+")
ECHO_PREFIX = " Hello! I am the mock upstream. You said: "
ECHO_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Generation:
    """The tokens to emit and the final stop fields."""

    tokens: list[str]
    stop_reason: str
    stop: str | None

    @property
    def completion(self) -> str:
        return "".join(self.tokens)


def default_answer(sanitized_prompt: str) -> str:
    """Echo the last Human turn so tests can see what the proxy sent."""
    said = strip_directives(last_human_text(sanitized_prompt)).strip()
    return ECHO_PREFIX + said[:ECHO_LIMIT]


def _value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def render_turn(turn: dict[str, Any]) -> str:
    """One scripted answer as Claude 2.1 writes it: a leading space, text, then a `<function_calls>`
    block in the documented legacy format (strings raw, other values as JSON), or a JSON value."""
    parts: list[str] = []
    if turn.get("text"):
        parts.append(str(turn["text"]))
    if "json" in turn:
        parts.append(orjson.dumps(turn["json"]).decode())
    calls = turn.get("calls") or []
    if calls:
        invokes = []
        for call in calls:
            params = "".join(
                f"<{name}>{_value(value)}</{name}>\n" for name, value in (call.get("arguments") or {}).items()
            )
            invokes.append(
                f"<invoke>\n<tool_name>{call['name']}</tool_name>\n<parameters>\n{params}</parameters>\n</invoke>\n"
            )
        parts.append("<function_calls>\n" + "".join(invokes) + "</function_calls>")
    return " " + "\n".join(parts)


def scripted_answer(sanitized_prompt: str, script: list[dict[str, Any]]) -> str:
    """The scripted model's continuation of `sanitized_prompt`.

    The turn is the conversation's answer count so far: Assistant turns before the last one, plus
    `</function_results>` blocks (tool rounds inside one Assistant turn). When the prompt already
    prefills the start of that answer (a forced tool call, a JSON `{`), the model continues after it."""
    answered = sanitized_prompt.count(ASSISTANT_TURN) - 1 + sanitized_prompt.count("</function_results>")
    answer = render_turn(script[min(max(answered, 0), len(script) - 1)])
    tail = sanitized_prompt[sanitized_prompt.rfind(ASSISTANT_TURN) + len(ASSISTANT_TURN) :].lstrip()
    wanted = answer.lstrip()
    for size in range(min(len(tail), len(wanted)), 0, -1):
        if tail.endswith(wanted[:size]):
            return wanted[size:]
    return answer


def answer_text(sanitized_prompt: str, directives: Directives) -> str:
    """The full text the "model" would write before any stop rule applies."""
    if directives.reply is not None:
        return directives.reply
    if directives.script is not None:
        return scripted_answer(sanitized_prompt, directives.script)
    if directives.tokens is not None:
        # Past the model cap the outcome is "max_tokens" whatever follows, so never build more.
        count = min(directives.tokens, MODEL_OUTPUT_CAP + 1)
        return "".join(f" tok{index}" for index in range(count))
    return default_answer(sanitized_prompt)


def earliest_stop(text: str, stop_sequences: tuple[str, ...]) -> tuple[int, str] | None:
    """Position and value of the first stop sequence in `text` (built-in `\\n\\nHuman:` first on ties)."""
    best: tuple[int, str] | None = None
    for sequence in (BUILTIN_STOP, *stop_sequences):
        if not sequence:
            continue
        position = text.find(sequence)
        if position >= 0 and (best is None or position < best[0]):
            best = (position, sequence)
    return best


def generate(text: str, stop_sequences: tuple[str, ...], max_tokens_to_sample: int) -> Generation:
    """Apply the stop rules in the API's order: stop sequence, then token limit, else end of turn."""
    stop_reason, stop = STOP_SEQUENCE, BUILTIN_STOP
    found = earliest_stop(text, stop_sequences)
    if found is not None:
        text, stop = text[: found[0]], found[1]
    tokens = TOKEN_RE.findall(text)
    limit = min(max_tokens_to_sample, MODEL_OUTPUT_CAP)
    if len(tokens) > limit:
        return Generation(tokens=tokens[:limit], stop_reason=MAX_TOKENS, stop=None)
    return Generation(tokens=tokens, stop_reason=stop_reason, stop=stop)
