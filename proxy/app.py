"""The ASGI application: routes, the request-context middleware, and the lifespan that owns the clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.datastructures import State
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from proxy.config import Config
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


class ProxyApp:
    """The ASGI application: the request-context middleware straight over the router.

    Starlette's default error and exception middleware are left out on purpose: the request-context
    middleware already turns every exception (router 404/405 included) into an OpenAI envelope, and each
    layer costs time on every request. `state` holds the gateway (from the lifespan), metrics and drain.
    """

    def __init__(self, router: Router, config: Config, metrics: Metrics, drain: Drain) -> None:
        self.state = State()
        self.state.metrics = metrics
        self.state.drain = drain
        self.router = router
        self._http = RequestContextMiddleware(router, access_log=config.logging.access_log, metrics=metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # `request.app`, and the lifespan's argument
        if scope["type"] == "lifespan":
            await self.router(scope, receive, send)
        else:
            await self._http(scope, receive, send)


def create_app(config: Config, drain: Drain | None = None) -> ProxyApp:
    """The app for `config`; `drain` is the server's shutdown state (a fresh one when run otherwise)."""

    @asynccontextmanager
    async def lifespan(app: ProxyApp) -> AsyncIterator[None]:
        gateway = Gateway.from_config(config)  # inside the running loop: the clients bind to it
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.aclose()

    router = Router(routes=_routes(), lifespan=lifespan)
    return ProxyApp(router, config, Metrics.from_config(config), drain or Drain())
