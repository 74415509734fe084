"""Upstream completions → OpenAI responses and stream chunks (pure).

| Upstream `stop_reason` | OpenAI `finish_reason` |
|---|---|
| `stop_sequence` (a stop sequence, or the model's built-in `\\n\\nHuman:` end of turn) | `stop` |
| `max_tokens` (`max_tokens_to_sample` or the model's own cap) | `length` |
| anything else | `stop` |

`usage` is an estimate (the legacy API returns no token counts): `proxy.translate.tokens.count_tokens`
of the prompt(s) sent upstream and of each completion, with `total = prompt + completion`.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.translate.tokens import count_tokens

FINISH_REASONS: dict[str, str] = {"stop_sequence": "stop", "max_tokens": "length"}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def new_id(prefix: str) -> str:
    """OpenAI-style ids: `chatcmpl-…` and `cmpl-…` followed by 29 random characters.

    Identifiers, not secrets: the non-cryptographic generator spares a system call per response."""
    return prefix + base64.urlsafe_b64encode(random.randbytes(22)).decode()[:29]


@dataclass(frozen=True)
class Choice:
    """One finished upstream completion, already in OpenAI terms."""

    text: str
    finish_reason: str


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def estimate_usage(prompts: Sequence[str], completions: Sequence[str]) -> dict[str, int]:
    """Prompt tokens count each distinct prompt once (as OpenAI does for `n`), completions all."""
    return usage(sum(map(count_tokens, prompts)), sum(map(count_tokens, completions)))


def chat_completion(
    id: str, created: int, model: str, choices: Sequence[Choice], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(choices)
        ],
        "usage": usage,
    }


def text_completion(
    id: str, created: int, model: str, choices: Sequence[Choice], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"text": choice.text, "index": index, "logprobs": None, "finish_reason": choice.finish_reason}
            for index, choice in enumerate(choices)
        ],
        "usage": usage,
    }


DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE event: a single `data:` line of compact JSON and a blank line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class ChunkWriter:
    """Builds the SSE events of one OpenAI stream; `chat` picks chat chunks or text_completion chunks.

    With `include_usage`, every chunk carries `"usage": null` and one last chunk with `choices: []`
    carries the totals, as OpenAI does.
    """

    chat: bool
    model: str
    include_usage: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or new_id("chatcmpl-" if self.chat else "cmpl-")
        self._object = "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse(chunk)

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish}

    def opening(self, index: int) -> bytes | None:
        """Chat's first chunk of a choice carries the role, once; text completions have none."""
        if not self.chat:
            return None
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def content(self, index: int, text: str) -> bytes:
        return self._chunk([self._choice(index, text, None)])

    def finish(self, index: int, reason: str) -> bytes:
        return self._chunk([self._choice(index, None, reason)])

    def usage(self, totals: dict[str, int]) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": self._object,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": totals,
            }
        )
