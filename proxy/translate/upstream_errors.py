"""Upstream failures → OpenAI errors, with statuses the OpenAI SDKs retry (or not) correctly (pure).

| Upstream | Client status | `type` | `code` | Notes |
|---|---|---|---|---|
| 400 `invalid_request_error` | 400 | `invalid_request_error` | null, or `context_length_exceeded` | not retried |
| 401 `authentication_error` | 401 (pass-through key) / 502 (server key) | `invalid_request_error` / `server_error` | `invalid_api_key` / `upstream_authentication_error` | a server key is the operator's fault: `x-should-retry: false` |
| 402 `billing_error` | 429 | `insufficient_quota` | `insufficient_quota` | `x-should-retry: false` |
| 403 `permission_error` | 403 (pass-through) / 502 (server key) | `invalid_request_error` / `server_error` | `permission_denied` / `upstream_permission_error` | |
| 404 `not_found_error` | 404 | `invalid_request_error` | `model_not_found` | the retired or unknown model |
| 413 `request_too_large` | 413 | `invalid_request_error` | `request_too_large` | |
| 429 `rate_limit_error` | 429 | `requests` | `rate_limit_exceeded` | `retry-after` passed on (capped at 60 s) |
| 500 `api_error` | 500 | `server_error` | null | retried by SDKs |
| 504 `timeout_error` | 504 | `server_error` | `timeout` | |
| 529 `overloaded_error` | 503 | `server_error` | `overloaded` | `retry-after` passed on (capped at 60 s) |
| other 5xx | 502 | `server_error` | null | |
| other 4xx | 400 | `invalid_request_error` | null | |
| connection failure | 502 | `server_error` | `upstream_connection_error` | |
| timeout | 504 | `server_error` | `upstream_timeout` | |

Mid-stream failures become an in-band `{"error": {...}}` event with `type: server_error` and the
upstream error type as `code`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

from proxy.errors import OpenAIError

NO_RETRY = {"x-should-retry": "false"}

#: Upstream statuses whose failures are worth retrying (by the proxy, before anything was streamed).
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})

#: Upstream error headers forwarded to the client.
_FORWARDED_HEADERS = ("retry-after", "retry-after-ms")

#: Longest wait passed on to clients, in seconds: every OpenAI SDK honours up to 60 s, and
#: openai-python >= 2.52 gives up retrying altogether above 120 s.
MAX_CLIENT_RETRY_AFTER = 60


def _retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's retry hints, numeric ones capped at MAX_CLIENT_RETRY_AFTER; `retry-after` becomes
    whole seconds >= 1 (an HTTP-date is passed on as is)."""
    forwarded = {name: headers[name] for name in _FORWARDED_HEADERS if name in headers}
    if "retry-after" in forwarded:
        with contextlib.suppress(ValueError, OverflowError):
            seconds = math.ceil(float(forwarded["retry-after"]))
            forwarded["retry-after"] = str(min(max(seconds, 1), MAX_CLIENT_RETRY_AFTER))
    if "retry-after-ms" in forwarded:
        with contextlib.suppress(ValueError):
            milliseconds = max(float(forwarded["retry-after-ms"]), 0.0)
            forwarded["retry-after-ms"] = f"{min(milliseconds, MAX_CLIENT_RETRY_AFTER * 1000.0):g}"
    return forwarded


def upstream_error(
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str],
    server_key: bool,
) -> OpenAIError:
    """Map an upstream HTTP error (status, Anthropic `error.type`, message) to the client's error."""
    retry = _retry_headers(headers)
    if status == 401 or error_type == "authentication_error":
        if server_key:
            return OpenAIError(
                502,
                "The proxy's upstream credentials were rejected by Anthropic; contact the proxy's operator. "
                f"(upstream: {message})",
                type="server_error",
                code="upstream_authentication_error",
                headers=NO_RETRY,
            )
        return OpenAIError(
            401,
            f"Incorrect API key provided. The upstream (Anthropic) rejected it: {message}",
            type="invalid_request_error",
            code="invalid_api_key",
        )
    if status == 403 or error_type == "permission_error":
        if server_key:
            return OpenAIError(
                502,
                f"The proxy's upstream credentials lack a permission; contact the proxy's operator. ({message})",
                type="server_error",
                code="upstream_permission_error",
                headers=NO_RETRY,
            )
        return OpenAIError(403, message, type="invalid_request_error", code="permission_denied")
    if status == 402 or error_type == "billing_error":
        return OpenAIError(
            429, message, type="insufficient_quota", code="insufficient_quota", headers=NO_RETRY
        )
    if status == 404 or error_type == "not_found_error":
        return OpenAIError(404, message, type="invalid_request_error", code="model_not_found")
    if status == 413 or error_type == "request_too_large":
        return OpenAIError(413, message, type="invalid_request_error", code="request_too_large")
    if status == 429 or error_type == "rate_limit_error":
        return OpenAIError(429, message, type="requests", code="rate_limit_exceeded", headers=retry)
    if status == 529 or error_type == "overloaded_error":
        return OpenAIError(503, message, type="server_error", code="overloaded", headers=retry)
    if status == 504 or error_type == "timeout_error":
        return OpenAIError(504, message, type="server_error", code="timeout", headers=retry)
    if status == 500:
        return OpenAIError(500, message, type="server_error", code=None, headers=retry)
    if status >= 500:
        return OpenAIError(502, message, type="server_error", code=None, headers=retry)
    code = "context_length_exceeded" if "prompt is too long" in message else None
    if code:
        message = f"This model's maximum context length was exceeded ({message})."
    return OpenAIError(400, message, type="invalid_request_error", code=code)


#: Failures of the connection itself (no upstream error body), by the code the client sees.
TRANSPORT_STATUS: dict[str, int] = {"upstream_connection_error": 502, "upstream_timeout": 504}


def transport_error(code: str, message: str) -> OpenAIError:
    """The upstream could not be reached, went silent, or hung up: 502 / 504, which the SDKs retry."""
    return OpenAIError(TRANSPORT_STATUS[code], message, type="server_error", code=code)


def connection_error(detail: str) -> OpenAIError:
    return transport_error("upstream_connection_error", f"Could not reach the upstream: {detail}")


def timeout_error(detail: str) -> OpenAIError:
    return transport_error("upstream_timeout", f"The upstream timed out: {detail}")


def in_stream_error(error_type: str, message: str) -> dict[str, Any]:
    """The event sent when the upstream fails after the stream started (the SDKs raise APIError)."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": error_type}}


#: Status an upstream error type stands for when it arrives without one (inside a stream).
STATUS_BY_TYPE: dict[str, int] = {
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
