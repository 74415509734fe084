"""The one way endpoints answer with JSON (compact, via orjson)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_CONTENT_TYPE = (b"content-type", b"application/json")


class JSONAnswer(Response):
    """A Starlette `Response` of JSON bytes, made without Starlette's generic set-up (content
    rendering, media type and header defaults worked out per response): the same status, body and
    header list (the caller's headers, then `content-length`, then `content-type`), sent as the same
    two ASGI messages. Only for the proxy's own app (plain HTTP scopes, no background task)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        raw: list[tuple[bytes, bytes]] = []
        if headers:
            for key, value in headers.items():  # a loop: a comprehension would be a frame of its own
                name = key.lower().encode("latin-1")
                if name == b"content-length" or name == b"content-type":
                    self.init_headers(headers)  # the caller set one of them: Starlette's rules
                    return
                raw.append((name, value.encode("latin-1")))
        if status_code >= 200 and status_code not in (204, 304):
            raw.append((b"content-length", b"%d" % len(body)))
        raw.append(_CONTENT_TYPE)
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return JSONAnswer(orjson.dumps(body), status, headers)
