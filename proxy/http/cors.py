"""CORS for browser clients: Starlette's `CORSMiddleware`, in front of the request-context middleware.

In front, so that a preflight is answered before authentication (browsers send it without the
`Authorization` header), and so that every response the inner layers send, error envelopes included,
passes through it and carries the CORS headers: a browser script can then read a 401 or a 429 (and,
with `expose_headers`, its `retry-after` and `x-ratelimit-*`). Preflights differ from Starlette's in
two ways: they carry an `x-request-id` like every other answer, and a refused one is answered in
OpenAI's error envelope instead of plain text.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from proxy.config import CorsConfig
from proxy.errors import OpenAIError
from proxy.http.context import new_request_id


class Cors(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers=request_headers)
        request_id = new_request_id()
        if response.status_code == 200:
            response.headers["x-request-id"] = request_id
            return response
        refused = bytes(response.body).decode("latin-1").removeprefix("Disallowed CORS ")
        error = OpenAIError(
            400,
            f"CORS preflight refused: this {refused} is not allowed by the proxy's cors settings.",
            type="invalid_request_error",
            code="cors_preflight_refused",
        )
        headers = {
            k: v for k, v in response.headers.items() if k.lower().startswith(("access-control-", "vary"))
        }
        headers["x-request-id"] = request_id
        return Response(error.json(), status_code=400, headers=headers, media_type="application/json")


def cors_middleware(app: ASGIApp, config: CorsConfig) -> ASGIApp:
    """`app` behind CORS as `config` says; `app` itself when CORS is off (no headers, no preflights)."""
    if not config.enabled:
        return app
    return Cors(
        app,
        allow_origins=config.allow_origins,
        allow_origin_regex=config.allow_origin_regex,
        allow_methods=config.allow_methods,
        allow_headers=config.allow_headers,
        expose_headers=config.expose_headers,
        allow_credentials=config.allow_credentials,
        max_age=config.max_age,
    )
