"""What the benchmark's upstream, load generator and runner agree on: the scenario marker and the answer text.

A scenario tells the upstream what to answer through a marker inside the prompt text,
`[[bench:tokens=50;delay_ms=0]]`, because the proxy forwards the prompt verbatim (and no custom header).
The answer is deterministic, so every response can be checked against `expected_text(tokens)`.
"""

from __future__ import annotations

import re

MARKER_RE = re.compile(r"\[\[bench:([^\]]*)\]\]")

# Token texts cycled through by the answers: leading spaces, punctuation, JSON escapes (quote,
# backslash, newline, tab) and multi-byte UTF-8, so a proxy that mangles text is caught.
TOKENS: tuple[str, ...] = (
    " Hello",
    "!",
    " The",
    " answer",
    " is",
    ' "42"',
    ",",
    " café",
    " naïve",
    " —",
    " 🙂",
    "\n",
    " back\\slash",
    " tab\tbed",
    " and",
    " more",
    " words",
    ".",
)

DEFAULT_TOKENS = 20


def token(index: int) -> str:
    return TOKENS[index % len(TOKENS)]


def expected_text(tokens: int) -> str:
    """The completion the upstream gives for `tokens` tokens (streamed or not)."""
    return "".join(token(i) for i in range(tokens))


def marker(tokens: int, delay_ms: float = 0.0) -> str:
    return f"[[bench:tokens={tokens};delay_ms={delay_ms:g}]]"


def parse_marker(prompt: str) -> tuple[int, float]:
    """(tokens, delay in ms) from the prompt's last marker; defaults when there is none."""
    tokens, delay_ms = DEFAULT_TOKENS, 0.0
    for match in MARKER_RE.finditer(prompt):
        for item in match.group(1).split(";"):
            key, _, value = item.partition("=")
            if key == "tokens":
                tokens = int(value)
            elif key == "delay_ms":
                delay_ms = float(value)
    return tokens, delay_ms
