"""Facts about the upstream that several test modules check against."""

from __future__ import annotations

import secrets

#: Every field a `/v1/complete` body may carry; anything else would be an OpenAI field leaking upstream.
UPSTREAM_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens_to_sample",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
    }
)


def marker() -> str:
    """A unique string to put in a prompt, to find that request among those the mock recorded."""
    return "mk" + secrets.token_hex(6)
