"""OpenAI request → the upstream calls that answer it (pure).

| OpenAI field | Upstream (`POST /v1/complete`) | Rule |
|---|---|---|
| `model` | `model` | alias → upstream id (`ModelRegistry.resolve`) |
| `messages` / `prompt` | `prompt` | `proxy.translate.prompt` |
| `max_completion_tokens`, `max_tokens` | `max_tokens_to_sample` | first one set; else `generation.default_max_tokens`; above `generation.max_tokens_ceiling`: 400 |
| `stop` (string or ≤ 4 strings) | `stop_sequences` | a list; empty strings and duplicates removed; whitespace-only ones are enforced by the proxy instead (`proxy.translate.text`) |
| `temperature` (0–2) | `temperature` (0–1) | `generation.temperature`: clamp (default), scale (÷2) or reject > 1 |
| `top_p` | `top_p` | as is (both 0–1) |
| `top_k` (extension) | `top_k` | as is |
| `user` (else `safety_identifier`) | `metadata.user_id` | as is |
| `stream` | `stream` | as is |
| `n` (1–128) | — | that many upstream calls, run concurrently |
| `stream_options.include_usage` | — | the proxy adds the usage chunk |
| `echo` (completions) | — | the proxy prepends the prompt |
| `tools`, `tool_choice`, `parallel_tool_calls`, `functions`, `function_call` | system text, prefill, `stop_sequences` | `proxy.translate.tools` (its tables) |
| `response_format` (`json_object`, `json_schema`) | system text, prefill | `proxy.translate.structured`; strict answers are validated (`generation.structured_output_retries` corrective retries) |
| chat answers | — | the legacy leading space dropped (`proxy.translate.text`); `/v1/completions` keeps the raw text |
| penalties, `logit_bias`, `seed`, `store`, `metadata`, `service_tier`, `reasoning_effort`, `verbosity`, `prompt_cache_key` | — | `generation.unsupported_params`: dropped (default) or 400 when set to a non-neutral value |
| `logprobs`, audio, `prediction`, `suffix`, token-array prompts, `best_of` > `n`, non-function tools | — | always 400: the upstream cannot do it and silence would be wrong |
| anything else | — | ignored; never sent upstream |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import BaseModel

from proxy.config import GenerationConfig
from proxy.errors import OpenAIError, invalid_request, unsupported
from proxy.translate.models import ModelRegistry
from proxy.translate.prompt import chat_prompt, completion_prompt
from proxy.translate.schema import ChatMessage, ChatRequest, CompletionRequest
from proxy.translate.stream import TransformFactory, chain
from proxy.translate.structured import PREFILL, JsonAnswer, JsonFormat, correction, json_format
from proxy.translate.text import LeadingSpace, StopAt, split_stops
from proxy.translate.tools import ToolCallParser, ToolSetup, tool_setup


class Plan(NamedTuple):
    """Everything the I/O layer needs to serve one OpenAI request.

    Immutable; a named tuple rather than a frozen dataclass, whose `__init__` sets each of the 13 fields
    through `object.__setattr__` (about 1 µs per request)."""

    model: str  # upstream model id, also reported back as `model`
    prompts: tuple[str, ...]  # upstream prompts; chat has exactly one
    n: int  # choices per prompt
    body: dict[str, Any]  # upstream body without `prompt`
    stream: bool
    include_usage: bool
    echo: tuple[str, ...] | None = None  # completions: text to put before each prompt's choices
    transform: TransformFactory | None = None  # features over each choice's text (proxy.translate.stream)
    functions: bool = False  # legacy `functions`: calls are answered as `function_call`
    tools: bool = False  # tools are offered: the answer may be calls only (chat opens with `content: null`)
    strict: bool = False  # answers are validated (strict JSON schema or strict tools) before release
    retries: int = 0  # corrective retries of an invalid strict answer
    retry_prompt: Callable[[str, str], str] | None = None  # (invalid answer, problem) → the next prompt

    def calls(self) -> list[dict[str, Any]]:
        """One upstream body per choice, in choice-index order (`index = p * n + j`)."""
        if self.n == 1 and len(self.prompts) == 1:  # most requests: no comprehension (a frame of its own)
            return [{**self.body, "prompt": self.prompts[0]}]
        return [{**self.body, "prompt": prompt} for prompt in self.prompts for _ in range(self.n)]


#: Fields dropped (or rejected) by policy, with the test for "set to something that matters".
_POLICY_FIELDS: dict[str, Callable[[Any], bool]] = {
    "frequency_penalty": lambda v: v != 0,
    "presence_penalty": lambda v: v != 0,
    "logit_bias": lambda v: bool(v),
    "seed": lambda v: True,
    "store": lambda v: bool(v),
    "metadata": lambda v: bool(v),
    "service_tier": lambda v: v not in {"auto", "default"},
    "reasoning_effort": lambda v: True,
    "verbosity": lambda v: True,
    "prompt_cache_key": lambda v: True,
}


def _apply_policy(request: ChatRequest | CompletionRequest, generation: GenerationConfig) -> None:
    if generation.unsupported_params == "drop":
        return
    for field, matters in _POLICY_FIELDS.items():
        value = getattr(request, field, None)
        if value is not None and matters(value):
            raise unsupported(f"'{field}'", field)


def _temperature(value: float | None, policy: str) -> float | None:
    if value is None or value <= 1:
        return None if value is None else (value / 2 if policy == "scale" else value)
    if policy == "reject":
        raise invalid_request(
            f"Invalid 'temperature': {value} is above 1, the upstream's maximum "
            "(this proxy is configured to reject rather than clamp).",
            "temperature",
            "decimal_above_max_value",
        )
    return value / 2 if policy == "scale" else 1.0


def _stops(stop: str | list[str] | None) -> tuple[list[str], list[str]]:
    """(upstream `stop_sequences`, sequences the proxy enforces itself)."""
    if stop is None:
        return [], []
    items = [stop] if isinstance(stop, str) else stop
    return split_stops(list(dict.fromkeys(s for s in items if s)))


def _stop_at(sequences: list[str]) -> TransformFactory:
    return lambda index: StopAt(index, sequences)


def _common_body(
    request: ChatRequest | CompletionRequest,
    model: str,
    max_tokens: int | None,
    user: str | None,
    generation: GenerationConfig,
    stop_sequences: list[str],
) -> dict[str, Any]:
    """The upstream body's fields both surfaces share, in the order they are sent; `stop_sequences` are
    those the upstream enforces (`_stops`)."""
    _apply_policy(request, generation)
    if request.stream_options is not None and not request.stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    if (request.n or 1) > generation.max_n:
        raise invalid_request(
            f"Invalid 'n': integer above maximum value. Expected a value <= {generation.max_n}, "
            f"but got {request.n} instead.",
            "n",
            "integer_above_max_value",
        )
    body: dict[str, Any] = {
        "model": model,
        "max_tokens_to_sample": max_tokens or generation.default_max_tokens,
    }
    if stop_sequences:
        body["stop_sequences"] = stop_sequences
    if (temperature := _temperature(request.temperature, generation.temperature)) is not None:
        body["temperature"] = temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if user:
        body["metadata"] = {"user_id": user}
    if request.stream:
        body["stream"] = True
    return body


def _include_usage(request: ChatRequest | CompletionRequest) -> bool:
    return bool(request.stream and request.stream_options and request.stream_options.include_usage)


def _max_tokens(request: ChatRequest | CompletionRequest, generation: GenerationConfig) -> int | None:
    """The client's output limit (`max_completion_tokens` first), within `generation.max_tokens_ceiling`."""
    completion_tokens = getattr(request, "max_completion_tokens", None)
    ceiling = generation.max_tokens_ceiling
    if completion_tokens is not None and completion_tokens > ceiling:
        raise _above_ceiling("max_completion_tokens", completion_tokens, ceiling)
    if request.max_tokens is not None and request.max_tokens > ceiling:
        raise _above_ceiling("max_tokens", request.max_tokens, ceiling)
    return completion_tokens or request.max_tokens


def _above_ceiling(field: str, value: int, ceiling: int) -> OpenAIError:
    return invalid_request(
        f"Invalid '{field}': integer above maximum value. Expected a value <= {ceiling}, but got {value} "
        "instead.",
        field,
        "integer_above_max_value",
    )


def _reject_chat_features(request: ChatRequest) -> None:
    if request.logprobs or request.top_logprobs:
        raise unsupported("Log probabilities", "logprobs" if request.logprobs else "top_logprobs")
    if request.audio or (request.modalities and set(request.modalities) - {"text"}):
        raise unsupported("Audio output", "audio" if request.audio else "modalities")
    if request.prediction:
        raise unsupported("Predicted outputs", "prediction")
    if request.web_search_options is not None:
        raise unsupported("Web search", "web_search_options")


def _plain(value: Any) -> Any:
    """A validated request model as the JSON it came as (what the tool and format rules read)."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def plan_chat(request: ChatRequest, registry: ModelRegistry, generation: GenerationConfig) -> Plan:
    """Validate what only the proxy can check, then map a chat request (table in the module docstring)."""
    _reject_chat_features(request)
    # Most requests have neither tools nor a response format: their set-up is skipped, not run on nothing.
    tools = (
        tool_setup(
            tools=_plain(request.tools),
            tool_choice=_plain(request.tool_choice),
            functions=_plain(request.functions),
            function_call=_plain(request.function_call),
            parallel_tool_calls=request.parallel_tool_calls,
        )
        if request.tools
        or request.functions
        or request.tool_choice is not None
        or request.function_call is not None
        else None
    )
    json = json_format(_plain(request.response_format)) if request.response_format is not None else None
    calling = tools is not None and tools.active
    if tools is None and json is None:
        preamble = epilogue = prefill = ""
    else:
        preamble = "\n\n".join(
            text
            for text in (tools.system_text() if tools else "", json.system_text() if json else "")
            if text
        )
        epilogue = tools.choice_text() if tools else ""
        prefill = tools.prefill() if tools is not None and calling else (PREFILL if json else "")
    model = registry.resolve(request.model)
    prompt = chat_prompt(request.messages, preamble=preamble, epilogue=epilogue, prefill=prefill)
    upstream_stops, local_stops = _stops(request.stop)
    body = _common_body(
        request,
        model,
        _max_tokens(request, generation),
        request.user or request.safety_identifier,
        generation,
        upstream_stops,
    )
    if calling:
        assert tools is not None
        body["stop_sequences"] = list(dict.fromkeys([*tools.stop_sequences(), *upstream_stops]))

    # In this order: stop sequences apply to the content, not to the tool-call markup around it.
    stages: list[TransformFactory] = []
    if not prefill:
        stages.append(LeadingSpace)
    if calling:
        assert tools is not None
        stages.append(_tool_call_parser(tools, prefill))
    if json is not None:
        stages.append(_json_answer(json, "" if calling else prefill))
    if local_stops:
        stages.append(_stop_at(local_stops))
    strict = bool(json and json.strict) or (calling and any(t.strict for t in tools.tools))  # type: ignore[union-attr]
    return Plan(  # positionally: a named tuple's keyword arguments cost twice as much
        model,
        (prompt,),
        request.n or 1,
        body,
        bool(request.stream),
        _include_usage(request),
        None,  # echo
        chain(*stages),  # transform
        bool(calling and tools and tools.legacy),  # functions
        calling,  # tools
        strict,
        generation.structured_output_retries if strict else 0,  # retries
        _retry_prompt(request.messages, preamble, epilogue, prefill) if strict else None,
    )


# The plan's closures, made by functions of their own: a closure defined in `plan_chat` would make each
# variable it reads a cell there, slower to read and set on every request, strict or not.


def _tool_call_parser(tools: ToolSetup, prefill: str) -> TransformFactory:
    return lambda index: ToolCallParser(index, tools, prefill)


def _json_answer(json: JsonFormat, prefill: str) -> TransformFactory:
    return lambda index: JsonAnswer(index, json, prefill=prefill)


def _retry_prompt(
    messages: list[ChatMessage], preamble: str, epilogue: str, prefill: str
) -> Callable[[str, str], str]:
    """The next prompt after an invalid strict answer: the conversation, that answer, and a user turn
    saying what was wrong with it."""

    def retry_prompt(answer: str, problem: str) -> str:
        retry = [
            *messages,
            ChatMessage(role="assistant", content=prefill + answer),
            ChatMessage(role="user", content=correction(problem)),
        ]
        return chat_prompt(retry, preamble=preamble, epilogue=epilogue, prefill=prefill)

    return retry_prompt


def _completion_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> tuple[str, ...]:
    if isinstance(prompt, str):
        return (prompt,)
    if not prompt:
        raise invalid_request(
            "Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an empty array "
            "instead.",
            "prompt",
            "empty_array",
        )
    if all(isinstance(p, str) for p in prompt):
        return tuple(p for p in prompt if isinstance(p, str))
    raise unsupported("Token-array prompts (OpenAI tokenizer ids)", "prompt")


def plan_completion(
    request: CompletionRequest, registry: ModelRegistry, generation: GenerationConfig
) -> Plan:
    """Map a legacy completions request; several prompts give prompt-major choices."""
    if request.suffix:
        raise unsupported("'suffix'", "suffix")
    if request.logprobs is not None:
        raise unsupported("Log probabilities", "logprobs")
    n = request.n or 1
    if request.best_of is not None and request.best_of > 1:
        if request.stream:
            raise invalid_request("Cannot stream results with best_of > 1.", "best_of")
        if request.best_of != n:
            raise unsupported("'best_of' greater than 'n' (it needs log probabilities)", "best_of")
    if request.best_of is not None and request.best_of < n:
        raise invalid_request("best_of must be greater than or equal to n.", "best_of")
    model = registry.resolve(request.model)
    raw = _completion_prompts(request.prompt)
    upstream_stops, local_stops = _stops(request.stop)
    body = _common_body(
        request, model, _max_tokens(request, generation), request.user, generation, upstream_stops
    )
    if len(raw) * n > generation.max_n:
        raise invalid_request(
            f"This request asks for {len(raw)} prompts × n={n} = {len(raw) * n} choices; this server allows at "
            f"most {generation.max_n} per request.",
            "prompt",
            "too_many_choices",
        )
    echo = raw if request.echo else None
    prompts = tuple(completion_prompt(p) for p in raw)
    transform = _stop_at(local_stops) if local_stops else None
    return Plan(model, prompts, n, body, bool(request.stream), _include_usage(request), echo, transform)
