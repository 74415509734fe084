"""The stream translator: upstream events of every choice → surface-neutral output events (pure).

One translator serves one OpenAI request, streamed or not: a non-streamed upstream answer is fed as
its single final `Piece`. No I/O and no awaits: the relay (`proxy.http.relay`) feeds it what the
upstream sent and hands what comes out to a renderer (`proxy.translate.render`), which turns it into
the wire format of one output surface (chat chunks, completion chunks, a JSON body, …).

| upstream event (`proxy.translate.events`) | output events |
|---|---|
| (before the first event) | `Opened` per choice, then `Text` with the echoed prompt (completions `echo`) |
| `Piece` with text | `Text` (after the choice's transforms; a tool-call parser turns a call into `ToolCallStarted` and `ToolCallArguments`) |
| `Piece` with a `stop_reason` | `Finished` with the OpenAI finish reason (table below) |
| `Ping` | `KeepAlive` |
| `Failure` | `Failed`, then `Done`; nothing after it |
| (every choice finished) | `Usage`, then `Done` |

| upstream `stop_reason` | OpenAI `finish_reason` |
|---|---|
| `stop_sequence` (a stop sequence, or the model's built-in `\\n\\nHuman:` end of turn) | `stop` |
| `max_tokens` (`max_tokens_to_sample` or the model's own cap) | `length` |
| anything else | `stop` |

Features over the text of one choice (stop enforcement, tool-call parsing) are `Transform`s: each gets
the choice's text as it arrives and returns the output events it stands for.

`usage` is an estimate (the legacy API returns no token counts): `proxy.translate.tokens.count_tokens`
of each distinct upstream prompt (counted once, as OpenAI does for `n`) and of every choice's upstream
text, with `total = prompt + completion`.
"""

from __future__ import annotations

import binascii
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.translate.events import Event, Failure, Piece, Ping
from proxy.translate.tokens import count_tokens

FINISH_REASONS: dict[str, str] = {"stop_sequence": "stop", "max_tokens": "length"}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def new_id(prefix: str) -> str:
    """OpenAI-style ids: a prefix (`chatcmpl-`, `cmpl-`, `resp_`, `call_`) and 29 random characters.

    Identifiers, not secrets: the non-cryptographic generator spares a system call per response. The
    characters are `base64.urlsafe_b64encode(random.randbytes(22))[:29]`, spelled out in the C calls
    those two functions make (`randbytes(n)` is `getrandbits(8 * n).to_bytes(n, "little")`)."""
    raw = random.getrandbits(176).to_bytes(22, "little")
    return prefix + binascii.b2a_base64(raw, newline=False)[:29].translate(_URL_SAFE).decode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# -- output events ------------------------------------------------------------------------------------
# The events made for every answer and every streamed token (`Opened`, `Text`, `Finished`, `Usage`, and
# the upstream's `Piece`) are not frozen: a frozen dataclass sets each field through `object.__setattr__`
# (about 0.1 µs a field). Nothing keeps or hashes them; they are values, never changed once made.


@dataclass(slots=True)
class Opened:
    """A choice starts (chat sends its role here)."""

    index: int


@dataclass(slots=True)
class Text:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """Choice `index` calls a tool: its `call`-th call (0, 1, …), with a fresh `call_…` id."""

    index: int
    call: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    """More of a call's arguments, a fragment of its JSON string (fragments concatenate to it)."""

    index: int
    call: int
    fragment: str


@dataclass(slots=True)
class Finished:
    """A choice ended; `reason` is OpenAI's `finish_reason`."""

    index: int
    reason: str


@dataclass(slots=True)
class Usage:
    totals: dict[str, int]


@dataclass(frozen=True, slots=True)
class Failed:
    """The upstream failed after the response started: an in-band error. `code` is the upstream type."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Nothing to say yet; keeps idle connections (and their proxies) from timing out."""


@dataclass(frozen=True, slots=True)
class Done:
    """The response is complete; nothing follows."""


Out = Opened | Text | ToolCallStarted | ToolCallArguments | Finished | Usage | Failed | KeepAlive | Done

#: A choice's text pieces are joined into one string when this many have come: each piece is a string
#: object of its own (~50 bytes besides its text) that a long stream would otherwise hold to its end.
_JOIN_AT = 16

KEEP_ALIVE = KeepAlive()
DONE = Done()


class Transform(Protocol):
    """Rewrites one choice's text as it streams (stop enforcement, tool-call parsing).

    `feed` gets each new piece of upstream text and returns the output events it stands for now (it
    may hold text back); `end` flushes what is held and may change the finish reason. A transform
    sets `stopped` when it has ended the choice itself (a stop sequence matched): the translator then
    finishes the choice and ignores the rest of its upstream text.
    """

    stopped: bool

    def feed(self, text: str) -> list[Out]: ...

    def end(self, reason: str) -> tuple[list[Out], str]: ...


TransformFactory = Callable[[int], Transform]


class StreamTranslator:
    """Translates the upstream events of one request's choices; see the module docstring's tables.

    `prompts` are the upstream prompts (for usage), `n` the choices per prompt (choice `p * n + j`),
    `echo` the text each prompt's choices start with (completions `echo`), `redact` scrubs secrets from
    upstream error messages.
    """

    __slots__ = (
        "_echo",
        "_finished",
        "_open",
        "_prompt_tokens",
        "_prompts",
        "_redact",
        "_stops",
        "_texts",
        "_transforms",
        "_usage",
        "complete",
        "error",
        "n",
    )

    def __init__(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        echo: Sequence[str] | None = None,
        transform: TransformFactory | None = None,
        redact: Callable[[str], str] = str,
    ) -> None:
        choices = len(prompts) * n
        self.n = n
        self._prompts: Sequence[str] | None = prompts
        self._prompt_tokens: int | None = None  # counted by `release_prompts`
        self._echo = echo
        self._redact = redact
        # A list per choice, made without a comprehension (a frame of its own) for the usual one choice.
        self._texts: list[list[str]] = [[]] if choices == 1 else [[] for _ in range(choices)]
        self._transforms = list(map(transform, range(choices))) if transform is not None else None
        self._finished = [False] * choices
        self._stops: list[str | None] = [None] * choices
        self._open = choices
        self.complete = False  # Done has been produced: nothing more will come out
        self.error: str | None = None  # the in-band failure's code, for the access log
        self._usage: dict[str, int] | None = None

    @property
    def choices(self) -> int:
        return len(self._texts)

    def start(self) -> list[Out]:
        """The events that open the response: every choice, with its echoed prompt."""
        if self._echo is None:
            return list(map(Opened, range(len(self._texts))))
        out: list[Out] = []
        for index in range(self.choices):
            out.append(Opened(index))
            out.append(Text(index, self._echo[index // self.n]))
        return out

    def feed(self, index: int, event: Event) -> list[Out]:
        """The output events for one upstream event of choice `index`."""
        if self.complete or self._finished[index]:
            return []
        if isinstance(event, Piece):
            return self._piece(index, event)
        if isinstance(event, Ping):
            return [KEEP_ALIVE]
        return self.fail(event)

    def fail(self, failure: Failure) -> list[Out]:
        """End the response with an in-band error (the upstream failed after it started)."""
        if self.complete:
            return []
        self.complete = True
        self.error = failure.type
        return [Failed(failure.type, self._redact(failure.message)), DONE]

    def _piece(self, index: int, piece: Piece) -> list[Out]:
        out: list[Out]
        text, stop_reason = piece.text, piece.stop_reason
        transform = self._transforms[index] if self._transforms is not None else None
        if text:
            texts = self._texts[index]
            texts.append(text)
            if len(texts) == _JOIN_AT:  # one string, not one object per piece, for a stream's life
                texts[:] = ["".join(texts)]
            if transform is None:
                out = [Text(index, text)]
            else:
                out = transform.feed(text)
                if transform.stopped:
                    return self._finish(index, out, "stop")
        else:
            out = []
        if stop_reason is not None:
            self._stops[index] = stop_reason
            return self._finish(index, out, FINISH_REASONS.get(stop_reason, "stop"))
        return out

    def _finish(self, index: int, out: list[Out], reason: str) -> list[Out]:
        if self._transforms is not None:
            tail, reason = self._transforms[index].end(reason)
            if tail:
                out += tail
        out.append(Finished(index, reason))
        self._finished[index] = True
        self._open -= 1
        if self._open == 0:
            self.complete = True
            self._usage = self._estimate()
            out.append(Usage(self._usage))
            out.append(DONE)
        return out

    @property
    def finished(self) -> list[bool]:
        """Which choices have ended (the relay stops reading their upstream streams)."""
        return self._finished

    def usage(self) -> dict[str, int]:
        """The estimate for what the upstream generated so far (all of it once complete; counted once)."""
        return self._usage or self._estimate()

    def release_prompts(self) -> None:
        """Count the prompts' tokens now and drop the texts (and the echoes, which `start` has used): a
        stream holds its translator for its whole life, and a prompt may be long. The relay calls this
        after the first bytes are out, so that counting never delays them."""
        if self._prompts is not None:
            self._prompt_tokens = sum(map(count_tokens, self._prompts))
            self._prompts = self._echo = None

    def _estimate(self) -> dict[str, int]:
        """The usage estimate: each distinct prompt counted once (as OpenAI does for `n`; their count once
        released), every choice's upstream text."""
        if self._prompts is not None:
            prompt_tokens = sum(map(count_tokens, self._prompts))
        else:
            assert self._prompt_tokens is not None
            prompt_tokens = self._prompt_tokens
        return usage(prompt_tokens, sum(map(count_tokens, map("".join, self._texts))))

    def upstream_texts(self) -> list[str]:
        return list(map("".join, self._texts))

    def answer(self) -> list[tuple[str, str | None]] | None:
        """Each choice's upstream text and stop reason, once every choice finished without a failure
        (what the response cache keeps); None otherwise."""
        if not self.complete or self.error is not None:
            return None
        return list(zip(self.upstream_texts(), self._stops, strict=True))

    def problems(self) -> list[str | None]:
        """Per choice: why its finished answer breaks a strict contract (a transform's `invalid`), or None."""
        if self._transforms is None:
            return [None] * self.choices
        return [getattr(transform, "invalid", None) for transform in self._transforms]


class Chain:
    """Transforms in a row: the `Text` one puts out is what the next one reads; other events pass."""

    __slots__ = ("_stages",)

    def __init__(self, stages: Sequence[Transform]) -> None:
        self._stages = stages

    @property
    def stopped(self) -> bool:
        return any(stage.stopped for stage in self._stages)

    @stopped.setter
    def stopped(self, value: bool) -> None:  # the protocol's attribute; a chain stops through its stages
        raise AttributeError("a chain stops through its stages")

    @property
    def invalid(self) -> str | None:
        """A stage's verdict that the answer breaks a strict contract (structured output, strict tools)."""
        for stage in self._stages:
            problem: str | None = getattr(stage, "invalid", None)
            if problem is not None:
                return problem
        return None

    def feed(self, text: str) -> list[Out]:
        out: list[Out] = [Text(-1, text)]
        for stage in self._stages:
            out = _through(stage, out)
        return out

    def end(self, reason: str) -> tuple[list[Out], str]:
        out: list[Out] = []
        for stage in self._stages:
            out = _through(stage, out)
            tail, reason = stage.end(reason)
            out += tail
        return out, reason


def _through(stage: Transform, events: list[Out]) -> list[Out]:
    result: list[Out] = []
    for event in events:
        if type(event) is Text:
            result += stage.feed(event.text)
        else:
            result.append(event)
    return result


def chain(*factories: TransformFactory) -> TransformFactory | None:
    """One factory for several features over a choice's text, applied in the order given."""
    if not factories:
        return None
    if len(factories) == 1:
        return factories[0]
    return lambda index: Chain([factory(index) for factory in factories])
