"""Request routing: the path and method of a request → the endpoint that answers it.

The proxy serves a handful of fixed paths, so the table is a dict keyed by path plus one prefix route
(`/v1/models/{model}`), not a list of regular expressions tried in turn. A path the table does not know
is 404 `unknown_url`; a known path with another method is 405, both as OpenAI error envelopes. One
trailing slash is tolerated (`/v1/models/` is `/v1/models`) instead of redirected.

Endpoints take a Starlette `Request` and return an ASGI app (a `Response` or an `EventStreamResponse`)
that sends the answer; nothing else of Starlette's routing stack runs per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp

from proxy.errors import method_not_allowed, unknown_url

Endpoint = Callable[[Request], Awaitable[ASGIApp]]


@dataclass(frozen=True)
class Route:
    """`path` is the template reported in metrics (`/v1/models/{model}`); `prefix` routes match any
    path that starts with it and pass the rest as `param`."""

    path: str
    endpoint: Endpoint
    methods: frozenset[str]
    prefix: str | None = None
    param: str | None = None


def route(path: str, endpoint: Endpoint, methods: Iterable[str] = ("GET",)) -> Route:
    """An exact path, or a prefix route when the path ends with a `{name}` parameter."""
    allowed = frozenset(methods)
    if path.endswith("}"):
        prefix, _, name = path[:-1].rpartition("{")
        return Route(path, endpoint, allowed, prefix, name)
    return Route(path, endpoint, allowed)


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixed: list[Route] = []
        for entry in routes:
            if entry.prefix is None:
                self._exact[entry.path] = entry
            else:
                self._prefixed.append(entry)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for this request and its path parameters; 404/405 as an `OpenAIError` otherwise."""
        found = self._find(path)
        if found is None and len(path) > 1 and path.endswith("/"):
            found = self._find(path[:-1])
        if found is None:
            raise unknown_url(method, path)
        entry, params = found
        if method not in entry.methods and not (method == "HEAD" and "GET" in entry.methods):
            raise method_not_allowed(
                method, path, entry.methods | ({"HEAD"} if "GET" in entry.methods else set())
            )
        return entry, params

    def _find(self, path: str) -> tuple[Route, dict[str, str]] | None:
        exact = self._exact.get(path)
        if exact is not None:
            return exact, {}
        for entry in self._prefixed:
            assert entry.prefix is not None and entry.param is not None
            if path.startswith(entry.prefix) and len(path) > len(entry.prefix):
                return entry, {entry.param: path[len(entry.prefix) :]}
        return None
