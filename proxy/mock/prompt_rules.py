"""Anthropic's server-side prompt rules for the legacy `/v1/complete` endpoint.

Pure functions with no dependencies so that the proxy's own property tests can import
`validate_prompt` and prove that every prompt the proxy builds would be accepted upstream.

Documented behaviour ("prompt validation" page): the API first lightly sanitises the prompt
(trailing whitespace removed, a missing leading blank line before `Human:` tolerated), then requires
that the first conversational turn is `\\n\\nHuman:` (text before it is an optional system prompt),
that the last turn is `\\n\\nAssistant:`, and that the prompt is shorter than 100,000 - 1 tokens.
"""

from __future__ import annotations

HUMAN_TURN = "\n\nHuman:"
ASSISTANT_TURN = "\n\nAssistant:"

# Exact error strings observed from the real API (a real newline inside, JSON-escaped on the wire).
MUST_START_WITH_HUMAN = 'prompt must start with "\n\nHuman:" turn after an optional system prompt'
MUST_END_WITH_ASSISTANT = 'prompt must end with "\n\nAssistant:" turn'

# "The prompt must be less than 100,000 - 1 tokens in length."
PROMPT_TOKEN_LIMIT = 99_999
CHARS_PER_TOKEN = 4

_BARE_HUMAN = "Human:"


def sanitize_prompt(prompt: str) -> str:
    """Apply the API's light sanitising: strip trailing whitespace, restore a missing leading `\\n\\n`."""
    cleaned = prompt.rstrip()
    if cleaned.startswith(_BARE_HUMAN):
        cleaned = "\n\n" + cleaned
    return cleaned


def estimate_tokens(prompt: str) -> int:
    """Cheap token estimate (the mock has no tokenizer): one token per four characters."""
    return len(prompt) // CHARS_PER_TOKEN


def too_long_message(tokens: int) -> str:
    """The 400 message for an over-long prompt, in the wording the API used."""
    return f"prompt is too long: {tokens} tokens > {PROMPT_TOKEN_LIMIT} maximum"


def turn_order_error(sanitized: str) -> str | None:
    """Check the turn structure of an already sanitised prompt; return the API's message or None."""
    first_human = sanitized.find(HUMAN_TURN)
    if first_human < 0:
        return MUST_START_WITH_HUMAN
    first_assistant = sanitized.find(ASSISTANT_TURN)
    if 0 <= first_assistant < first_human:
        return MUST_START_WITH_HUMAN
    if sanitized.rfind(ASSISTANT_TURN) < sanitized.rfind(HUMAN_TURN):
        return MUST_END_WITH_ASSISTANT
    return None


def validate_prompt(prompt: str) -> str | None:
    """Return the error message the API would give for `prompt`, or None if it would be accepted."""
    sanitized = sanitize_prompt(prompt)
    error = turn_order_error(sanitized)
    if error is not None:
        return error
    tokens = estimate_tokens(sanitized)
    if tokens > PROMPT_TOKEN_LIMIT:
        return too_long_message(tokens)
    return None


def last_human_text(sanitized: str) -> str:
    """The text of the last `Human:` turn of a valid, sanitised prompt (up to the next Assistant turn)."""
    start = sanitized.rfind(HUMAN_TURN)
    if start < 0:
        return ""
    start += len(HUMAN_TURN)
    end = sanitized.find(ASSISTANT_TURN, start)
    return sanitized[start:] if end < 0 else sanitized[start:end]
