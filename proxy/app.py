"""The ASGI application: the route table, the request-context middleware (behind CORS when configured), and
the lifespan that owns the clients and reloads client keys on SIGHUP."""

from __future__ import annotations

import asyncio
import gc
import signal
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from starlette.datastructures import State
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from proxy.config import Config
from proxy.gateway import Gateway
from proxy.http import ops, responses_api, routes
from proxy.http.context import RequestContextMiddleware
from proxy.http.cors import cors_middleware
from proxy.http.dispatch import Route, RouteTable, route
from proxy.http.drain import Drain
from proxy.http.metrics import Metrics, metrics_endpoint
from proxy.http.record import RequestLog
from proxy.tracing import Tracing
from proxy.translate.surfaces import CHAT, COMPLETIONS

Lifespan = Callable[["ProxyApp"], AbstractAsyncContextManager[None]]


def _routes() -> list[Route]:
    """The OpenAI surface, under `/v1` and also without it (for clients configured without the prefix)."""
    table = [
        ("/chat/completions", routes.generation(CHAT), ["POST"]),
        ("/completions", routes.generation(COMPLETIONS), ["POST"]),
        ("/models", routes.list_models, ["GET"]),
        # The rest of the path, slashes included: `org%2Fmodel` arrives percent-decoded as `org/model`.
        ("/models/{model}", routes.retrieve_model, ["GET"]),
        ("/responses", responses_api.create_response, ["POST"]),
        ("/responses/{rest}", responses_api.response_resource, ["GET", "DELETE"]),
    ]
    # What OpenAI SDKs also call, which a text-completion upstream cannot do: a clear 400 each.
    for path, capability in routes.MISSING_CAPABILITIES.items():
        table.append((path, routes.no_capability(capability), routes.ANY_METHOD))
    probes = [
        route(ops.HEALTHZ, ops.healthz),
        route(ops.READYZ, ops.readyz),
        route(ops.METRICS, metrics_endpoint),
    ]
    return probes + [
        route(prefix + path, endpoint, methods) for prefix in ("/v1", "") for path, endpoint, methods in table
    ]


class ProxyApp:
    """The ASGI application: CORS (when configured), then the request-context middleware, over a dispatch
    to the route's endpoint.

    No framework stack runs per request: the middleware turns every exception (unknown URLs and methods
    included) into an OpenAI envelope, and each layer would cost time on every request. `gateway` (from
    the lifespan) and `drain` are plain attributes, read on every request; `state` holds the gateway,
    metrics and tracing for the endpoints that read them there.
    """

    def __init__(self, table: RouteTable, lifespan: Lifespan, config: Config, metrics: Metrics, drain: Drain):
        self.state = State()
        #: The gateway (set by the lifespan, also as `state.gateway`): read on every request, as a plain
        #: attribute rather than through `State`'s attribute lookup.
        self.gateway: Gateway | None = None
        #: The server's shutdown state, read on every request.
        self.drain = drain
        self.state.metrics = metrics
        self.state.tracing = tracing = Tracing(config.tracing)  # started by the lifespan
        self._table = table
        self._lifespan = lifespan
        # CORS (when configured) in front: preflights skip authentication, error envelopes get its headers.
        self._http = cors_middleware(
            RequestContextMiddleware(
                self._dispatch, access_log=config.logging.access_log, metrics=metrics, tracing=tracing
            ),
            config.cors,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # `request.app`
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry, params = self._table.match(scope["method"], scope["path"])
        record: RequestLog = scope["state"]["log"]
        record.route = entry.path
        scope["path_params"] = params
        response = await entry.endpoint(Request(scope, receive))
        await response(scope, receive, send)

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI lifespan: start the gateway on `startup`, close it on `shutdown`. A failure is reported to
        the server with its traceback (a failed start makes it exit), as Starlette's router does."""
        started = False
        await receive()  # lifespan.startup
        try:
            async with self._lifespan(self):
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except BaseException:
            phase = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{phase}.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


#: Net new container objects between two young collections (CPython's default is 700); see below.
YOUNG_GC_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Move everything built at start-up (modules, config, clients) out of the collector's reach.

    Without this, each full collection walks those ~55,000 long-lived objects: over 30 ms on a small VM,
    paid by whichever request is running, so it shows up as p99 latency. Frozen objects are never
    collected, which is right for objects that live as long as the process anyway.

    The youngest generation's threshold is raised from 700 to `YOUNG_GC_THRESHOLD`: a request's own
    objects form no reference cycles (tests/e2e/test_request_garbage.py), so they are freed by reference
    counting and a young collection finds nothing to free, yet each one walks every object of the
    requests in flight. The trade-off: a cycle that does form (an exception kept with its traceback, say)
    waits up to that many more allocations before it is freed; the memory held by open streams does not
    change, since it is live and no collection could free it.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


def _reload_on_hangup(gateway: Gateway) -> bool:
    """Reload client keys and limits on SIGHUP, in this process (each worker process handles its own).
    False where the loop cannot take signals (not the main thread, e.g. an in-process test client)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gateway.reload)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        structlog.get_logger("proxy.reload").debug("reload_on_sighup_unavailable")
        return False
    return True


def create_app(config: Config, drain: Drain | None = None) -> ProxyApp:
    """The app for `config`; `drain` is the server's shutdown state (a fresh one when run otherwise)."""

    @asynccontextmanager
    async def lifespan(app: ProxyApp) -> AsyncIterator[None]:
        gateway = Gateway.from_config(config)  # inside the running loop: the clients bind to it
        app.state.gateway = app.gateway = gateway
        tracing: Tracing = app.state.tracing
        if tracing.start():  # per worker process: the exporter's thread does not survive a fork
            gateway.upstream.tracing = tracing
        app.state.metrics.start_publishing(gateway.upstream)  # several workers: each writes its pool state
        reloading = _reload_on_hangup(gateway)
        settle_garbage_collector()
        try:
            yield
        finally:
            if reloading:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await app.state.metrics.stop_publishing()
            await gateway.aclose()
            await tracing.shutdown()  # exports the spans still buffered

    return ProxyApp(RouteTable(_routes()), lifespan, config, Metrics.from_config(config), drain or Drain())
