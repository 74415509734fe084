"""Incremental server-sent-events decoder: byte chunks in, `(event, data)` pairs out.

Robust to what real upstreams and proxies do: CRLF, LF or CR line ends (also split across reads),
multi-byte UTF-8 split across reads, comments, `data:` with or without a space, several `data:` lines
per event, and a last event without its closing blank line.
"""

from __future__ import annotations

import codecs

SSEEvent = tuple[str | None, str]


class SSEDecoder:
    """Feed it bytes; it returns the events completed by them."""

    __slots__ = ("_buffer", "_data", "_event", "_text")

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._buffer + self._text.decode(chunk)
        # A CR at the very end may be the first half of a CRLF: keep it for the next read.
        if text.endswith("\r"):
            text, self._buffer = text[:-1], "\r"
        else:
            self._buffer = ""
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        # The last element is an unfinished line (or "" after a complete one).
        self._buffer = lines.pop() + self._buffer
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of body: flush an unterminated last line and event."""
        rest = self._buffer + self._text.decode(b"", final=True)
        self._buffer = ""
        events = []
        for line in [*rest.replace("\r\n", "\n").replace("\r", "\n").split("\n"), ""]:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if self._event is None and not self._data:
                return None
            event = (self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None
