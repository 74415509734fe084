"""The Starlette application: routes, middleware, and the lifespan that owns the upstream client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.config import Config
from proxy.errors import OpenAIError, unknown_url
from proxy.gateway import Gateway
from proxy.http import ops, routes
from proxy.http.context import RequestContextMiddleware
from proxy.http.drain import Drain
from proxy.http.metrics import Metrics, metrics_endpoint


def _routes() -> list[Route]:
    """The OpenAI surface, under `/v1` and also without it (for clients configured without the prefix)."""
    table = [
        ("/chat/completions", routes.chat_completions, ["POST"]),
        ("/completions", routes.completions, ["POST"]),
        ("/models", routes.list_models, ["GET"]),
        ("/models/{model:path}", routes.retrieve_model, ["GET"]),
    ]
    probes = [
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return probes + [
        Route(prefix + path, endpoint, methods=methods)
        for prefix in ("/v1", "")
        for path, endpoint, methods in table
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Router errors (unknown path, wrong method) in OpenAI's envelope."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        raise OpenAIError(
            405,
            f"Method {request.method} is not allowed for {request.url.path}.",
            "invalid_request_error",
            None,
            "method_not_allowed",
        )
    raise unknown_url(request.method, request.url.path)


def create_app(config: Config, drain: Drain | None = None) -> Starlette:
    """The app for `config`; `drain` is the server's shutdown state (a fresh one when run otherwise)."""
    gateway_holder: dict[str, Gateway] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway.from_config(config)
        app.state.gateway = gateway
        gateway_holder["gateway"] = gateway
        try:
            yield
        finally:
            await gateway.aclose()

    metrics = Metrics.from_config(config)
    app = Starlette(
        routes=_routes(),
        middleware=[
            Middleware(RequestContextMiddleware, access_log=config.logging.access_log, metrics=metrics)
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.drain = drain or Drain()
    return app
