"""Features over a choice's plain text: the chat leading space, and stop sequences the proxy enforces (pure).

| rule | where | what |
|---|---|---|
| a legacy completion starts with one space (`" Hello"`) | chat (not `/v1/completions`, which keeps the raw text) | the single leading space of the answer is dropped when the prompt ends with `Assistant:` (no prefill) |
| whitespace-only stop sequences (`"\\n"`, `"\\n\\n"`, `" "`), which the upstream refuses | chat and completions, streamed or not | not sent upstream; the proxy cuts the text at the first match (also across chunk boundaries), `finish_reason: "stop"`, and the upstream call is closed at once |
| other stop sequences | upstream `stop_sequences` | the upstream stops there (the text excludes the match) |
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.translate.stream import Out, Text


def split_stops(stop: Sequence[str]) -> tuple[list[str], list[str]]:
    """(sent upstream, enforced by the proxy): the upstream refuses whitespace-only sequences."""
    upstream = [s for s in stop if s.strip()]
    local = [s for s in stop if not s.strip()]
    return upstream, local


class LeadingSpace:
    """Drops the one space a legacy completion starts with (chat content, as OpenAI models write it)."""

    __slots__ = ("index", "started", "stopped")

    def __init__(self, index: int) -> None:
        self.index = index
        self.started = False
        self.stopped = False

    def feed(self, text: str) -> list[Out]:
        if not self.started:
            self.started = True
            if text.startswith(" "):
                text = text[1:]
            if not text:
                self.started = False  # the space came alone: the next piece is still the start
                return []
        return [Text(self.index, text)]

    def end(self, reason: str) -> tuple[list[Out], str]:
        return [], reason


class StopAt:
    """Ends the choice at the first of `sequences`; holds back a tail that could start one."""

    __slots__ = ("_held", "_longest", "index", "sequences", "stopped")

    def __init__(self, index: int, sequences: Sequence[str]) -> None:
        self.index = index
        self.sequences = tuple(sequences)
        self._longest = max(map(len, self.sequences))
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> list[Out]:
        if self.stopped:
            return []
        text = self._held + text
        first = min((p for p in (text.find(s) for s in self.sequences) if p >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return [Text(self.index, text[:first])] if first else []
        keep = 0
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.sequences):
                keep = size
                break
        self._held = text[len(text) - keep :]
        ready = text[: len(text) - keep]
        return [Text(self.index, ready)] if ready else []

    def end(self, reason: str) -> tuple[list[Out], str]:
        held, self._held = self._held, ""
        return ([Text(self.index, held)] if held else []), reason
