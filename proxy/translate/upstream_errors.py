"""Upstream failures → OpenAI errors, with statuses the OpenAI SDKs retry (or not) correctly (pure).

An upstream failure is named by its Anthropic `error.type` when that type is a specific one (an HTTP
error body, or an `event: error` inside a stream), else by its HTTP status (the generic `api_error` and
`invalid_request_error` types, unknown types; a typeless failure inside a stream keeps its type).
Each name has one row:

| upstream type (status) | client status | `type` | `code` | headers |
|---|---|---|---|---|
| `invalid_request_error` (400, other 4xx) | 400 | `invalid_request_error` | null, or `context_length_exceeded` with `param` | |
| `authentication_error` (401), pass-through key | 401 | `invalid_request_error` | `invalid_api_key` | |
| `authentication_error` (401), server key | 502 | `server_error` | `upstream_authentication_error` | `x-should-retry: false` |
| `billing_error` (402) | 429 | `insufficient_quota` | `insufficient_quota` | `x-should-retry: false` |
| `permission_error` (403), pass-through key | 403 | `invalid_request_error` | `permission_denied` | |
| `permission_error` (403), server key | 502 | `server_error` | `upstream_permission_error` | `x-should-retry: false` |
| `not_found_error` (404) | 404 | `invalid_request_error` | `model_not_found` | |
| `request_too_large` (413) | 413 | `invalid_request_error` | `request_too_large` | |
| `rate_limit_error` (429) | 429 | `requests` | `rate_limit_exceeded` | `retry-after` (capped at 60 s) |
| `api_error` (500) | 500 | `server_error` | null | `retry-after` |
| other 5xx | 502 | `server_error` | null | `retry-after` |
| `timeout_error` (504) | 504 | `server_error` | `timeout` | `retry-after` |
| `overloaded_error` (529) | 503 | `server_error` | `overloaded` | `retry-after` (capped at 60 s) |
| `upstream_connection_error` (no answer) | 502 | `server_error` | `upstream_connection_error` | |
| `upstream_timeout` (no answer in time) | 504 | `server_error` | `upstream_timeout` | |

A server key is the operator's fault, not the client's: the SDKs must not retry it, nor tell the
user their key is wrong. After a stream has started, a failure is an in-band error event instead
(`proxy.translate.render.in_stream_error`) with `type: server_error` and the upstream type as `code`.

Messages pass through `redact`: a key the upstream echoes in an error never reaches the client.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from proxy.errors import OpenAIError

NO_RETRY = {"x-should-retry": "false"}

#: Upstream statuses whose failures are worth retrying (by the proxy, before anything was streamed).
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})

#: Longest wait passed on to clients, in seconds: every OpenAI SDK honours up to 60 s, and
#: openai-python >= 2.52 gives up retrying altogether above 120 s.
MAX_CLIENT_RETRY_AFTER = 60

#: The two failures of the exchange itself (no upstream error body).
CONNECTION_ERROR = "upstream_connection_error"
TIMEOUT = "upstream_timeout"


@dataclass(frozen=True)
class Row:
    """How one kind of upstream failure reaches the client."""

    upstream_status: int  # what the upstream answers for it (and what a typeless failure stands for)
    status: int
    type: str
    code: str | None
    retry_after: bool = False  # pass the upstream's retry hints on
    no_retry: bool = False
    server_key: Row | None = None  # the row instead, when the proxy's own key was used
    prefix: str = ""  # put before the upstream's message


def _operator(code: str, what: str) -> Row:
    prefix = f"The proxy's upstream {what}; contact the proxy's operator. (upstream: "
    return Row(0, 502, "server_error", code, no_retry=True, prefix=prefix)


ROWS: dict[str, Row] = {
    "invalid_request_error": Row(400, 400, "invalid_request_error", None),
    "authentication_error": Row(
        401,
        401,
        "invalid_request_error",
        "invalid_api_key",
        prefix="Incorrect API key provided. The upstream (Anthropic) rejected it: ",
        server_key=_operator("upstream_authentication_error", "credentials were rejected by Anthropic"),
    ),
    "billing_error": Row(402, 429, "insufficient_quota", "insufficient_quota", no_retry=True),
    "permission_error": Row(
        403,
        403,
        "invalid_request_error",
        "permission_denied",
        server_key=_operator("upstream_permission_error", "credentials lack a permission"),
    ),
    "not_found_error": Row(404, 404, "invalid_request_error", "model_not_found"),
    "request_too_large": Row(413, 413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": Row(429, 429, "requests", "rate_limit_exceeded", retry_after=True),
    "api_error": Row(500, 500, "server_error", None, retry_after=True),
    "bad_gateway": Row(502, 502, "server_error", None, retry_after=True),
    "timeout_error": Row(504, 504, "server_error", "timeout", retry_after=True),
    "overloaded_error": Row(529, 503, "server_error", "overloaded", retry_after=True),
    CONNECTION_ERROR: Row(0, 502, "server_error", CONNECTION_ERROR),
    TIMEOUT: Row(0, 504, "server_error", TIMEOUT),
}

_BY_STATUS: dict[int, str] = {row.upstream_status: name for name, row in ROWS.items() if row.upstream_status}

#: Status an upstream error type stands for (inside a stream there is no HTTP status).
STATUS_BY_TYPE: dict[str, int] = {
    name: row.upstream_status for name, row in ROWS.items() if row.upstream_status and name != "bad_gateway"
}

#: Failures of the connection itself, by the code the client sees.
TRANSPORT_STATUS: dict[str, int] = {CONNECTION_ERROR: 502, TIMEOUT: 504}


#: Types that say no more than their status does.
_GENERIC_TYPES = frozenset({"api_error", "invalid_request_error"})


def kind(status: int | None, error_type: str) -> str:
    """The row name for a failure: its specific upstream type, else what its status stands for."""
    if error_type in ROWS and (status is None or error_type not in _GENERIC_TYPES):
        return error_type
    if status is None:
        return "api_error"
    return _BY_STATUS.get(status) or ("bad_gateway" if status >= 500 else "invalid_request_error")


def retryable(status: int | None, error_type: str) -> bool:
    """Worth another attempt (by the proxy, before anything was sent to the client)?"""
    if error_type in TRANSPORT_STATUS:
        return True
    return (
        ROWS[kind(status, error_type)].upstream_status in RETRYABLE_STATUSES or status in RETRYABLE_STATUSES
    )


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The upstream's wait hint in seconds (`retry-after-ms` first, then numeric `retry-after`)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = max(0.0, float(value) * scale)
            except ValueError:
                continue
            if math.isfinite(seconds):
                return seconds
    return None


def _retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's retry hints for the client, capped at MAX_CLIENT_RETRY_AFTER; `retry-after` becomes
    whole seconds >= 1 (an HTTP-date is passed on as is)."""
    forwarded = {name: headers[name] for name in ("retry-after", "retry-after-ms") if name in headers}
    if "retry-after" in forwarded:
        with contextlib.suppress(ValueError, OverflowError):
            seconds = math.ceil(float(forwarded["retry-after"]))
            forwarded["retry-after"] = str(min(max(seconds, 1), MAX_CLIENT_RETRY_AFTER))
    if "retry-after-ms" in forwarded:
        with contextlib.suppress(ValueError):
            milliseconds = max(float(forwarded["retry-after-ms"]), 0.0)
            forwarded["retry-after-ms"] = f"{min(milliseconds, MAX_CLIENT_RETRY_AFTER * 1000.0):g}"
    return forwarded


def error_fields(content: bytes) -> tuple[str, str]:
    """(type, message) from an Anthropic error body, old or new shape, or from whatever came back."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return str(error.get("type", "api_error")), str(error.get("message", ""))
    text = content.decode("utf-8", "replace").strip()[:500]
    return "api_error", text or "The upstream answered with an error and no body."


#: Anthropic key shapes, scrubbed from any upstream message even when not one of the known secrets.
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")


class Redactor:
    """Replaces known secrets (and anything shaped like an Anthropic key) in upstream text."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return _KEY_PATTERN.sub("[redacted]", text) if "sk-ant-" in text else text


def upstream_error(
    status: int | None,
    error_type: str,
    message: str,
    headers: Mapping[str, str],
    server_key: bool,
    *,
    prompt_param: str | None = None,
    redact: Redactor | None = None,
) -> OpenAIError:
    """The client's error for an upstream failure (see the module's table)."""
    name = kind(status, error_type)
    row = ROWS[name]
    if server_key and row.server_key is not None:
        row = row.server_key
    message = redact(message) if redact is not None else message
    text = row.prefix + message + (")" if row.prefix.endswith("(upstream: ") else "")
    code, param = row.code, None
    if name == "invalid_request_error" and "prompt is too long" in message:
        code, param = "context_length_exceeded", prompt_param
        text = f"This model's maximum context length was exceeded ({message})."
    headers_out = dict(NO_RETRY) if row.no_retry else {}
    if row.retry_after:
        headers_out.update(_retry_headers(headers))
    return OpenAIError(row.status, text, type=row.type, param=param, code=code, headers=headers_out)


def connection_error(detail: str) -> tuple[str, str]:
    return CONNECTION_ERROR, f"Could not reach the upstream: {detail}"


def timeout_error(detail: str) -> tuple[str, str]:
    return TIMEOUT, f"The upstream timed out: {detail}"
