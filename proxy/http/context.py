"""Per-request context middleware: request id, error envelopes, and one access-log line.

Every response gets `x-request-id`. An `OpenAIError` raised anywhere becomes its JSON envelope, and so
do unknown URLs and methods (404, 405); any other exception becomes a 500 envelope without internals (the traceback goes to the log, tagged with
the request id). The access line is written when the response has been sent completely, so streams are
logged with their final token counts.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import OpenAIError
from proxy.http.disconnect import ClientDisconnected
from proxy.http.ops import PROBE_PATHS
from proxy.http.record import RequestLog

if TYPE_CHECKING:
    from proxy.http.metrics import Metrics
    from proxy.tracing import Tracing

log = structlog.get_logger("proxy.access")

#: Logged (never sent) when the client left before its response started; nginx's convention.
CLIENT_CLOSED_REQUEST = 499

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """A fresh `x-request-id` in OpenAI's form (`req_` and 24 hex digits): `random.randbytes(12).hex()`,
    spelled as the C calls it makes (`randbytes(n)` is `getrandbits(8 * n).to_bytes(n, "little")`)."""
    return "req_" + random.getrandbits(96).to_bytes(12, "little").hex()


def error_response_messages(error: OpenAIError, request_id: str) -> tuple[Message, Message]:
    """The error's envelope as a response with a length (one write, as any JSON answer; not chunked)."""
    body = error.json()
    headers = {
        "content-type": "application/json",
        **error.headers,
        "x-request-id": request_id,
        "content-length": str(len(body)),
    }
    return (
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    )


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        access_log: bool = True,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = first_header(scope, b"x-request-id")
        request_id = incoming if incoming and _CLIENT_REQUEST_ID.match(incoming) else new_request_id()
        record = RequestLog(request_id, started)
        scope.setdefault("state", {})["log"] = record
        raw_id = request_id.encode("latin-1")
        status = 0
        response_started = streamed = False
        metrics = self.metrics if scope["path"] not in PROBE_PATHS else None
        if metrics is not None:
            metrics.request_started()
        # The request's server span (proxy.tracing), current until the response has been sent; probes
        # and scrapes are not traced, as they are not counted.
        tracing = self.tracing
        span = (
            tracing.server_span(scope)
            if tracing is not None and tracing.tracer is not None and scope["path"] not in PROBE_PATHS
            else None
        )

        def send_with_id(message: Message) -> Awaitable[None]:
            """Not a coroutine itself: it hands back the server's send, one coroutine less per write."""
            nonlocal status, response_started, streamed
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
                if metrics is not None:
                    streamed = metrics.response_started(message)
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnected:
            status = CLIENT_CLOSED_REQUEST
            record.extra["client_disconnected"] = True
        except OpenAIError as error:
            status = error.status
            record.error_code = error.code or error.type
            if not response_started:
                for message in error_response_messages(error, request_id):
                    await send(message)
        except Exception:
            status = 500
            record.error_code = "internal_error"
            log.exception("unhandled_error", request_id=request_id)
            if not response_started:
                internal = OpenAIError(
                    500,
                    f"The proxy failed to process the request (request id {request_id}).",
                    type="server_error",
                )
                for message in error_response_messages(internal, request_id):
                    await send(message)
        finally:
            elapsed = time.perf_counter() - started
            if metrics is not None:
                metrics.request_finished(status, elapsed, record, streamed)
            if span is not None:
                span.end(status, record)
            if self.access_log:
                # `bind()` first: structlog's assembled logger (cached once configured to), without the
                # lazy proxy's failed attribute lookup on every line.
                log.bind().info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    latency_ms=round(elapsed * 1000, 2),
                    **record.fields(),
                )


def first_header(scope: Scope, name: bytes) -> str | None:
    """The first field named `name` (lowercase, as ASGI names are), as Starlette's `request.headers.get`
    answers it, without the `Headers` object and the copy of the header list it builds per request."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
