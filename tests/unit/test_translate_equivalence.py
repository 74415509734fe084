"""The pure translation's faster spellings against their previous ones (kept here as references) or the
library calls they stand for: same results, same errors."""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, StrictFloat, StrictInt, ValidationError

from proxy.errors import OpenAIError
from proxy.http.context import new_request_id
from proxy.translate import tokens
from proxy.translate.prompt import _RESULTS_END, ASSISTANT, HUMAN, _message_text, chat_prompt, defuse
from proxy.translate.responses_request import ResponsesRequest
from proxy.translate.schema import ChatMessage, ChatRequest, CompletionRequest
from proxy.translate.stream import new_id
from proxy.translate.tokens import count_tokens
from proxy.translate.validation import error_from_validation, parse_body

CORPUS = Path(__file__).resolve().parent.parent / "data" / "token_counts.json"


def test_new_id_is_urlsafe_base64_of_randbytes() -> None:
    """Same characters, from the same generator state, as `urlsafe_b64encode(randbytes(22))[:29]`."""
    state = random.getstate()
    try:
        for seed in range(500):
            random.seed(seed)
            ours = new_id("chatcmpl-")
            random.seed(seed)
            reference = "chatcmpl-" + base64.urlsafe_b64encode(random.randbytes(22)).decode()[:29]
            assert ours == reference
    finally:
        random.setstate(state)


def test_new_request_id_is_hex_of_randbytes() -> None:
    """Same characters, from the same generator state, as `"req_" + randbytes(12).hex()`."""
    state = random.getstate()
    try:
        for seed in range(500):
            random.seed(seed)
            ours = new_request_id()
            random.seed(seed)
            assert ours == "req_" + random.randbytes(12).hex()
    finally:
        random.setstate(state)


# --- chat_prompt: the previous spelling, kept as the reference ---------------------------------------


def reference_chat_prompt(
    messages: Sequence[ChatMessage], *, preamble: str = "", epilogue: str = "", prefill: str = ""
) -> str:
    """`chat_prompt` as it was before its fast path for plain messages (a1b79b2)."""
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    names: dict[str, str] = {}
    previous_role = ""
    for index, message in enumerate(messages):
        text = _message_text(message, index, names)
        if not turns and message.role in {"system", "developer"}:
            system.append(text)
            continue
        speaker = ASSISTANT if message.role in {"assistant", "tool", "function"} else HUMAN
        is_result = message.role in {"tool", "function"}
        if is_result:
            text = "<function_results>\n" + text + _RESULTS_END
        if turns and turns[-1][0] == speaker:
            texts = turns[-1][1]
            if is_result and previous_role in {"tool", "function"} and texts[-1].endswith(_RESULTS_END):
                texts[-1] = texts[-1][: -len(_RESULTS_END)] + "\n" + text[len("<function_results>\n") :]
            else:
                texts.append(text)
        else:
            turns.append((speaker, [text]))
        previous_role = message.role

    if not turns:
        turns, system = [(HUMAN, system)], []
    if turns[0][0] == ASSISTANT:
        turns.insert(0, (HUMAN, []))
    if prefill:
        if turns[-1][0] == ASSISTANT:
            turns[-1][1].append(prefill)
        else:
            turns.append((ASSISTANT, [prefill]))

    head = [preamble, *system, epilogue]
    parts = [defuse("\n\n".join(t.strip() for t in head if t and t.strip()))]
    for speaker, texts in turns:
        body = defuse("\n\n".join(t for t in texts if t).strip())
        parts.append(f"{speaker} {body}" if body else speaker)
    if turns[-1][0] == HUMAN:
        parts.append(ASSISTANT)
    return "".join(parts).rstrip()


# Text hostile to the turn structure (markers, blank lines, surrounding whitespace) or anything at all.
_TEXT = st.lists(
    st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "\n", "\n\n", " ", "\t", "hi", "é", "</stdout>"])
    | st.text(max_size=8),
    max_size=6,
).map("".join)
_PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
    st.builds(lambda t: {"type": "refusal", "refusal": t}, _TEXT),
    st.sampled_from([{"type": "image_url", "image_url": {"url": "x"}}, {"type": "input_audio"}]),
)
_CALL = st.builds(
    lambda id, name, arguments: {
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    },
    st.sampled_from(["call_1", "call_2"]),
    st.sampled_from(["get", "put"]),
    st.sampled_from(["{}", '{"a": 1}', "not json", " ", '{"x": "</x>"}', "[1]"]),
)
_MESSAGE = st.builds(
    lambda role, content, calls, call_id, name: ChatMessage.model_validate(
        {
            "role": role,
            "content": content,
            "tool_calls": calls if role == "assistant" else None,
            "tool_call_id": call_id,
            "name": name,
        }
    ),
    st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]),
    st.none() | _TEXT | st.lists(_PART, min_size=1, max_size=3),
    st.none() | st.lists(_CALL, max_size=2),
    st.none() | st.sampled_from(["call_1", "call_3"]),
    st.none() | st.sampled_from(["get", ""]),
)


def _outcome(build: Callable[[], str]) -> str | tuple[int, str, str | None, str | None]:
    try:
        return build()
    except OpenAIError as error:
        return (error.status, error.message, error.param, error.code)


@settings(max_examples=150)
@given(st.lists(_MESSAGE, min_size=1, max_size=7), _TEXT, _TEXT, _TEXT)
def test_chat_prompt_equals_the_reference(
    messages: list[ChatMessage], preamble: str, epilogue: str, prefill: str
) -> None:
    for extra in ({}, {"preamble": preamble, "epilogue": epilogue, "prefill": prefill}):
        ours = _outcome(lambda: chat_prompt(messages, **extra))  # noqa: B023 (called at once)
        assert ours == _outcome(lambda: reference_chat_prompt(messages, **extra))  # noqa: B023


# --- count_tokens: the previous spelling, kept as the reference --------------------------------------


def reference_count_tokens(text: str) -> int:
    """`count_tokens` as it was before its cheaper presence tests (a1b79b2)."""
    if not text:
        return 0
    if text.isascii():
        data = text.encode("ascii")
        estimate = 0.0
    else:
        data = text.encode("utf-8", "surrogatepass")
        estimate = sum(data.translate(tokens._NON_ASCII_TABLE, tokens._NOT_LEAD)) / tokens._COST_SCALE
        data = data.translate(None, tokens._CONTINUATION)

    letters = data.translate(tokens._LETTERS)
    kinds = data.translate(tokens._KINDS)
    estimate += (
        tokens.W_LETTER_RUN * (letters.count(b"a ") + letters.endswith(b"a"))
        + tokens.W_CAPITAL * kinds.count(b"A")
        + tokens.W_PUNCT * kinds.count(b".")
        + tokens.W_PUNCT_2 * kinds.count(b"..")
        + tokens.W_PUNCT_3 * kinds.count(b"...")
        + tokens.W_DIGIT * kinds.count(b"0")
        + tokens.W_TRAILING_SPACE * data.endswith(b" ")
    )
    if line_chars := kinds.count(b"-"):
        estimate += tokens.W_LINE * line_chars + tokens.W_LINE_2 * kinds.count(b"--")
    has_newline, has_double_space = b"n" in kinds, b"  " in data
    if has_newline or has_double_space:
        spaces = b"x%bx" % data.translate(tokens._SPACES)
        if has_newline:
            estimate += tokens.W_NEWLINE_RUN * spaces.count(b"xn") + tokens.W_NEWLINE_SPLIT * spaces.count(
                b"nnx"
            )
        if has_double_space:
            estimate += tokens.W_SPACES_RUN * spaces.count(b"x  ")
    return max(1, int(estimate + 0.5))


_ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
# Every character class and class boundary, often: punctuation and line-character runs, whitespace runs.
_CLASSES = st.text(alphabet=st.sampled_from([*"aZ9.,!-=  \n\t\r\vé中ж😀_\u0301“\x00\ud800"]))


@settings(max_examples=400)
@given(st.one_of(st.text(alphabet=_ANY_CHAR), _CLASSES, st.text()))
def test_count_tokens_equals_the_reference(text: str) -> None:
    assert count_tokens(text) == reference_count_tokens(text)


def test_count_tokens_equals_the_reference_on_the_corpus() -> None:
    samples = json.loads(CORPUS.read_text(encoding="utf-8"))["samples"]
    texts = [sample["text"] for sample in samples]
    assert len(texts) >= 300
    for text in texts:  # each sample, and each seam between neighbours
        assert count_tokens(text) == reference_count_tokens(text)
    for a, b in itertools.pairwise(texts):
        assert count_tokens(a + b) == reference_count_tokens(a + b)


# --- bounded numbers: bounds on each branch of the union, against bounds on the whole union -----------

_OldNumber = StrictFloat | StrictInt  # the schema's `Number`, bounded as a whole below


class _OldChat(ChatRequest):
    temperature: Annotated[_OldNumber, Field(ge=0, le=2)] | None = None
    top_p: Annotated[_OldNumber, Field(ge=0, le=1)] | None = None
    frequency_penalty: Annotated[_OldNumber, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[_OldNumber, Field(ge=-2, le=2)] | None = None


class _OldCompletion(CompletionRequest):
    temperature: Annotated[_OldNumber, Field(ge=0, le=2)] | None = None
    top_p: Annotated[_OldNumber, Field(ge=0, le=1)] | None = None
    frequency_penalty: Annotated[_OldNumber, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[_OldNumber, Field(ge=-2, le=2)] | None = None


class _OldResponses(ResponsesRequest):
    temperature: Annotated[_OldNumber, Field(ge=0, le=2)] | None = None
    top_p: Annotated[_OldNumber, Field(ge=0, le=1)] | None = None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
_NUMBER = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.floats(min_value=-3, max_value=3),
    st.sampled_from(
        [0, 0.0, -0.0, 1, 1.0, 2, 2.0, -2, -2.0, 2.0000001, -2.0000001, 10**30, -(10**30), 1e308]
    ),
    _JSON,
)
_BOUNDED = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
}


def _parsed(raw: bytes, schema: type[BaseModel]) -> object:
    try:
        return repr(parse_body(raw, schema).model_dump())  # repr: an int stays apart from an equal float
    except OpenAIError as error:
        return (error.status, error.message, error.param, error.code)


def _validated(body: dict[str, object], schema: type[BaseModel]) -> object:
    """The validation step alone (Python integers beyond 64 bits, which orjson does not parse, included)."""
    try:
        return repr(schema.model_validate(body).model_dump())
    except ValidationError as exc:
        error = error_from_validation(exc, body)
        return (error.status, error.message, error.param, error.code)


@settings(max_examples=200)
@given(st.fixed_dictionaries({}, optional=_BOUNDED))
def test_bounded_numbers_parse_and_fail_as_before(fields: dict[str, object]) -> None:
    bodies: list[tuple[dict[str, object], type[BaseModel], type[BaseModel]]] = [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}, ChatRequest, _OldChat),
        ({"model": "m", "prompt": "hi", **fields}, CompletionRequest, _OldCompletion),
        (
            {
                "model": "m",
                "input": "hi",
                **{k: v for k, v in fields.items() if k in {"temperature", "top_p"}},
            },
            ResponsesRequest,
            _OldResponses,
        ),
    ]
    for body, schema, reference in bodies:
        raw = json.dumps(body, allow_nan=False).encode()
        assert _parsed(raw, schema) == _parsed(raw, reference)
        assert _validated(body, schema) == _validated(body, reference)
