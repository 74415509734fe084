"""The one error type the proxy raises towards clients, and its OpenAI wire form.

Every failure a client can see (validation, upstream, routing) is an `OpenAIError`; the app turns it
into `{"error": {"message", "type", "param", "code"}}` with the status and headers it carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson


class OpenAIError(Exception):
    """An error in OpenAI's envelope, ready to be sent to the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def __repr__(self) -> str:
        return f"OpenAIError({self.status}, {self.type!r}, {self.code!r}, {self.message!r})"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """A deterministic client mistake: 400, never retried by the SDKs."""
    return OpenAIError(400, message, type="invalid_request_error", param=param, code=code)


def unsupported(feature: str, param: str | None) -> OpenAIError:
    """A feature the legacy upstream cannot provide: an explicit 400 rather than a silent drop."""
    return invalid_request(
        f"{feature} is not supported by this proxy: its upstream, Anthropic's legacy Text Completions API, "
        "has no equivalent.",
        param=param,
        code="unsupported_parameter",
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def unknown_url(method: str, path: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"Unknown request URL: {method} {path}. Please check the URL for typos, "
        "or see the docs at https://platform.openai.com/docs/api-reference/.",
        type="invalid_request_error",
        code="unknown_url",
    )


def method_not_allowed(method: str, path: str, allowed: Iterable[str]) -> OpenAIError:
    """A known path asked with a method it does not take: 405 with `Allow`, as HTTP requires."""
    return OpenAIError(
        405,
        f"Method {method} is not allowed for {path}.",
        type="invalid_request_error",
        code="method_not_allowed",
        headers={"allow": ", ".join(sorted(allowed))},
    )
