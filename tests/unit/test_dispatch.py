"""The route table: exact paths, the `{model}` prefix route, and the 404/405 envelopes."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from proxy.errors import OpenAIError
from proxy.http.dispatch import RouteTable, route


async def _chat(request: Request) -> ASGIApp:
    return Response("chat")


async def _models(request: Request) -> ASGIApp:
    return Response("models")


async def _model(request: Request) -> ASGIApp:
    return Response("model")


TABLE = RouteTable(
    [
        route("/v1/chat/completions", _chat, ["POST"]),
        route("/v1/models", _models),
        route("/v1/models/{model}", _model),
    ]
)


def test_exact_path_and_method() -> None:
    entry, params = TABLE.match("POST", "/v1/chat/completions")
    assert entry.endpoint is _chat and entry.path == "/v1/chat/completions" and params == {}


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/models/claude-2.1", "claude-2.1"),
        ("/v1/models/org/model-2", "org/model-2"),
        ("/v1/models/a:b", "a:b"),
    ],
)
def test_the_prefix_route_takes_the_rest_of_the_path(path: str, model: str) -> None:
    entry, params = TABLE.match("GET", path)
    assert entry.endpoint is _model and entry.path == "/v1/models/{model}"
    assert params == {"model": model}


def test_one_trailing_slash_is_tolerated() -> None:
    assert TABLE.match("POST", "/v1/chat/completions/")[0].endpoint is _chat
    assert TABLE.match("GET", "/v1/models/")[0].endpoint is _models  # not a model with an empty id


def test_head_is_served_where_get_is() -> None:
    assert TABLE.match("HEAD", "/v1/models")[0].endpoint is _models


@pytest.mark.parametrize("path", ["/v1/chat/completion", "/v2/models", "/", "/v1/chat/completions//"])
def test_unknown_path_is_404_unknown_url(path: str) -> None:
    with pytest.raises(OpenAIError) as raised:
        TABLE.match("POST", path)
    assert (raised.value.status, raised.value.code) == (404, "unknown_url")
    assert f"Unknown request URL: POST {path}." in raised.value.message


def test_known_path_with_another_method_is_405() -> None:
    with pytest.raises(OpenAIError) as raised:
        TABLE.match("GET", "/v1/chat/completions")
    assert (raised.value.status, raised.value.code) == (405, "method_not_allowed")
    with pytest.raises(OpenAIError) as raised:
        TABLE.match("POST", "/v1/models/claude-2.1")
    assert raised.value.status == 405
    assert raised.value.headers["allow"] == "GET, HEAD"
