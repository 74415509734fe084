"""Protocol facts of Anthropic's legacy `/v1/complete` API, kept as data so the mock stays faithful.

Everything here was copied from captured real traffic or Anthropic's documentation; the mock's logic
only looks values up. Identifiers are random but shaped like the real ones (`compl_…`, `req_…`).
"""

from __future__ import annotations

import random
import re
import string

import orjson

VERSION_2023_06_01 = "2023-06-01"
VERSION_2023_01_01 = "2023-01-01"
SUPPORTED_VERSIONS = (VERSION_2023_01_01, VERSION_2023_06_01)

BUILTIN_STOP = "\n\nHuman:"
MODEL_OUTPUT_CAP = 4096  # Claude 2 / Instant: generation silently stops here with "max_tokens"

STOP_SEQUENCE = "stop_sequence"
MAX_TOKENS = "max_tokens"

# Model families the legacy endpoint served, and the newer ones it refuses (400, Messages API only).
SERVED_MODEL_PREFIXES = ("claude-2", "claude-instant-1", "claude-1", "claude-v1")
# claude-3*, claude-4*, … (a major version >= 3 followed by a separator) and the family-first names.
MESSAGES_ONLY_MODEL_RE = re.compile(r"claude-(?:(?:[3-9]|[1-9][0-9])(?:[-.@]|$)|opus-|sonnet-|haiku-)")

# error.type -> HTTP status, per Anthropic's error documentation.
STATUS_BY_ERROR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
ERROR_TYPE_BY_STATUS: dict[int, str] = {status: kind for kind, status in STATUS_BY_ERROR_TYPE.items()}

DEFAULT_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "There was an issue with the format or content of your request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": (
        "Your credit balance is too low to access the Claude API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    ),
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": (
        "Number of concurrent connections has exceeded your rate limit. Please try again later or "
        "contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate "
        "limit increase."
    ),
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}

INVALID_API_KEY = "invalid x-api-key"
VERSION_REQUIRED = "anthropic-version: header is required"

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24


def random_suffix() -> str:
    """24 random alphanumerics, the length of real `compl_`/`req_` identifiers (not security relevant)."""
    return "".join(random.choices(_ID_ALPHABET, k=_ID_LENGTH))


def new_request_id() -> str:
    return "req_" + random_suffix()


def new_completion_id() -> str:
    return "compl_" + random_suffix()


def error_type_for_status(status: int) -> str:
    """Default error.type for an HTTP status; unlisted 4xx use invalid_request_error as the docs say."""
    known = ERROR_TYPE_BY_STATUS.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def unsupported_model_message(model: str) -> str:
    """400 message for Claude 3+ models, exactly as observed on /v1/complete."""
    return f'"{model}" is not supported on this API. Please use the Messages API instead.'


def unknown_model_message(model: str) -> str:
    """404 message for unknown or retired models, as observed."""
    return f"model: {model}"


def unsupported_version_message(version: str) -> str:
    supported = ", ".join(SUPPORTED_VERSIONS)
    return f'anthropic-version: "{version}" is not a supported version (supported: {supported})'


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    """Current error shape: top-level type, error{type,message}, request_id (compact JSON)."""
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}
    )


def completion_body_v2023_06_01(
    completion_id: str, completion: str, stop_reason: str, model: str, stop: str | None
) -> bytes:
    """Non-stream 2023-06-01 body, in the wire key order type,id,completion,stop_reason,model,stop,log_id."""
    return orjson.dumps(
        {
            "type": "completion",
            "id": completion_id,
            "completion": completion,
            "stop_reason": stop_reason,
            "model": model,
            "stop": stop,
            "log_id": completion_id,
        }
    )


def completion_body_v2023_01_01(
    completion_id: str, completion: str, stop_reason: str | None, model: str, stop: str | None
) -> bytes:
    """2023-01-01 body: no id/type, but the legacy `truncated` and `exception` fields."""
    return orjson.dumps(legacy_completion_object(completion_id, completion, stop_reason, model, stop))


def legacy_completion_object(
    completion_id: str, completion: str, stop_reason: str | None, model: str, stop: str | None
) -> dict[str, object]:
    """The 2023-01-01 field set, in the order the TS 0.4 SDK typed it."""
    return {
        "completion": completion,
        "stop_reason": stop_reason,
        "truncated": False,
        "stop": stop,
        "model": model,
        "log_id": completion_id,
        "exception": None,
    }
