"""A faithful mock of Anthropic's legacy `POST /v1/complete`, as a real Starlette app.

Tests (and benchmarks) run the proxy against this instead of the real API, which no longer serves
any text-completion model. The rules it enforces, in order: API key, `anthropic-version`, strict body
schema, model family, prompt turns/length, then test directives found in the prompt. Test-only
introspection lives under `/_mock/`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass, field

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.mock.directives import DirectiveError, Directives, parse_directives
from proxy.mock.generation import answer_text, generate
from proxy.mock.prompt_rules import sanitize_prompt, validate_prompt
from proxy.mock.protocol import (
    DEFAULT_ERROR_MESSAGES,
    INVALID_API_KEY,
    MESSAGES_ONLY_MODEL_RE,
    SERVED_MODEL_PREFIXES,
    SUPPORTED_VERSIONS,
    VERSION_2023_06_01,
    VERSION_REQUIRED,
    completion_body_v2023_01_01,
    completion_body_v2023_06_01,
    error_body,
    error_type_for_status,
    new_completion_id,
    new_request_id,
    unknown_model_message,
    unsupported_model_message,
    unsupported_version_message,
)
from proxy.mock.request_schema import INVALID_JSON, BodyError, CompletionRequest, parse_json, validate_body
from proxy.mock.streaming import EventStreamResponse, StreamPlan, StreamStats, counted_events
from proxy.portfile import bound_port, write_port_file

JSON = "application/json"
MAX_RECORDS = 10_000  # the recorder keeps the newest requests only, so long benchmarks stay bounded
DEFAULT_FAIL_STATUS = 529  # `fail_times` without `status`: the API's usual transient failure
GRACEFUL_SHUTDOWN_SECONDS = 1
_UNPARSED = object()


class ApiError(Exception):
    """An error answered with Anthropic's error body and the matching HTTP status."""

    def __init__(
        self, status: int, message: str, error_type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type or error_type_for_status(status)
        self.message = message
        self.headers = headers or {}


def invalid_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


def json_response(content: bytes) -> Response:
    """Pre-encoded JSON with a fresh `request-id`, as every real response carries one."""
    return Response(content, media_type=JSON, headers={"request-id": new_request_id()})


def error_response(error: ApiError) -> Response:
    request_id = new_request_id()
    body = error_body(error.error_type, error.message, request_id)
    headers = {"request-id": request_id, **error.headers}
    return Response(body, status_code=error.status, media_type=JSON, headers=headers)


def presented_key(request: Request) -> str:
    """The key from `x-api-key`, or from `Authorization: Bearer` (SDK `auth_token` mode)."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def check_version(request: Request) -> str:
    version = request.headers.get("anthropic-version")
    if version is None:
        raise invalid_request(VERSION_REQUIRED)
    if version not in SUPPORTED_VERSIONS:
        raise invalid_request(unsupported_version_message(version))
    return version


def check_model(model: str) -> None:
    """Legacy families are served; Claude 3+ is refused with 400; anything else is unknown (404)."""
    if model.startswith(SERVED_MODEL_PREFIXES):
        return
    if MESSAGES_ONLY_MODEL_RE.match(model):
        raise invalid_request(unsupported_model_message(model))
    raise ApiError(404, unknown_model_message(model), "not_found_error")


def check_prompt(prompt: str) -> str:
    """Return the sanitised prompt, or raise the API's 400 for bad turns or excessive length."""
    error = validate_prompt(prompt)
    if error is not None:
        raise invalid_request(error)
    return sanitize_prompt(prompt)


def parse_prompt_directives(prompt: str) -> Directives:
    try:
        return parse_directives(prompt)
    except DirectiveError as exc:
        raise invalid_request(str(exc)) from None


def directive_error(directives: Directives) -> ApiError:
    status = directives.status or DEFAULT_FAIL_STATUS
    error_type = directives.error_type or error_type_for_status(status)
    message = directives.message or DEFAULT_ERROR_MESSAGES.get(error_type, error_type)
    headers = {} if directives.retry_after is None else {"retry-after": directives.retry_after}
    return ApiError(status, message, error_type, headers)


def recorded_headers(request: Request) -> dict[str, str]:
    """Lower-case header names; repeated headers are joined with ", " as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


@dataclass
class MockState:
    """Everything the mock remembers between requests (all mutated on the event loop thread only)."""

    api_keys: frozenset[str]
    records: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    stats: StreamStats = field(default_factory=StreamStats)
    failures: dict[str, int] = field(default_factory=dict)
    #: Set through `POST /_mock/outage`: every completion fails with it until `DELETE /_mock/outage`.
    outage: ApiError | None = None

    def reset(self) -> None:
        """Forget requests, finished-stream counters and fail_times progress (active streams go on)."""
        self.records.clear()
        self.stats.completed = 0
        self.stats.cancelled = 0
        self.failures.clear()
        self.outage = None

    def key_accepted(self, key: str) -> bool:
        return bool(key) and (not self.api_keys or key in self.api_keys)

    def should_fail(self, directives: Directives) -> bool:
        """`status` alone fails every time; with `fail_times=K` only the first K requests per fail_id."""
        if directives.fail_times is None:
            return directives.status is not None
        seen = self.failures.get(directives.fail_id, 0)
        if seen >= directives.fail_times:
            return False
        self.failures[directives.fail_id] = seen + 1
        return True


def completion_body(plan: StreamPlan) -> bytes:
    """The non-stream body in the field set and key order of the requested API version."""
    g = plan.generation
    render = (
        completion_body_v2023_06_01 if plan.version == VERSION_2023_06_01 else completion_body_v2023_01_01
    )
    return render(plan.completion_id, g.completion, g.stop_reason, plan.model, g.stop)


class MockUpstream:
    """The request handlers, bound to one MockState."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def complete(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: object = parse_json(raw)
        except BodyError:
            body = _UNPARSED
        self._record(request, raw, body)
        try:
            return await self._complete(request, body)
        except ApiError as error:
            return error_response(error)

    def _record(self, request: Request, raw: bytes, body: object) -> None:
        self.state.records.append(
            {
                "path": request.url.path,
                "headers": recorded_headers(request),
                "body": None if body is _UNPARSED else body,
                "raw": raw.decode("utf-8", errors="replace"),
            }
        )

    async def _complete(self, request: Request, body: object) -> Response:
        if not self.state.key_accepted(presented_key(request)):
            raise ApiError(401, INVALID_API_KEY, "authentication_error")
        if self.state.outage is not None:
            raise self.state.outage
        version = check_version(request)
        completion = self._validated(body)
        check_model(completion.model)
        sanitized = check_prompt(completion.prompt)
        directives = parse_prompt_directives(completion.prompt)
        if self.state.should_fail(directives):
            raise directive_error(directives)
        text = answer_text(sanitized, directives)
        generation = generate(text, completion.stop_sequences, completion.max_tokens_to_sample)
        plan = StreamPlan(version, new_completion_id(), completion.model, generation, directives)
        if completion.stream:
            return self._stream(plan)
        return await self._answer(plan)

    @staticmethod
    def _validated(body: object) -> CompletionRequest:
        if body is _UNPARSED:
            raise invalid_request(INVALID_JSON)
        try:
            return validate_body(body)
        except BodyError as exc:
            raise invalid_request(str(exc)) from None

    def _stream(self, plan: StreamPlan) -> Response:
        return EventStreamResponse(
            counted_events(plan, self.state.stats),
            complete_body=not plan.drops_connection,
            headers={"request-id": new_request_id(), "cache-control": "no-cache"},
        )

    @staticmethod
    async def _answer(plan: StreamPlan) -> Response:
        delay = plan.directives.total_delay_seconds(len(plan.generation.tokens))
        if delay > 0:
            await asyncio.sleep(delay)
        return json_response(completion_body(plan))

    async def list_requests(self, request: Request) -> Response:
        return json_response(orjson.dumps({"requests": list(self.state.records)}))

    async def clear_requests(self, request: Request) -> Response:
        self.state.reset()
        return json_response(orjson.dumps({"ok": True}))

    async def start_outage(self, request: Request) -> Response:
        """Simulate an upstream outage: `{"status": 529, "retry_after": "5"}` (both optional)."""
        try:
            settings = parse_json(await request.body()) or {}
        except BodyError:
            settings = {}
        settings = settings if isinstance(settings, dict) else {}
        status = int(settings.get("status", 529))
        retry_after = settings.get("retry_after")
        error_type = error_type_for_status(status)
        headers = {} if retry_after is None else {"retry-after": str(retry_after)}
        self.state.outage = ApiError(
            status, DEFAULT_ERROR_MESSAGES.get(error_type, error_type), error_type, headers
        )
        return json_response(orjson.dumps({"ok": True}))

    async def end_outage(self, request: Request) -> Response:
        self.state.outage = None
        return json_response(orjson.dumps({"ok": True}))

    async def stats(self, request: Request) -> Response:
        return json_response(orjson.dumps(self.state.stats.as_dict()))

    async def health(self, request: Request) -> Response:
        return json_response(orjson.dumps({"ok": True}))


async def not_found(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer like the API: 404 not_found_error in the standard body."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    if status == 405:
        status = 404
    error_type = error_type_for_status(status)
    return error_response(ApiError(status, DEFAULT_ERROR_MESSAGES.get(error_type, "error"), error_type))


def create_app(api_keys: list[str] | None = None) -> Starlette:
    """Build the mock; `api_keys` empty or None means any non-empty key is accepted."""
    mock = MockUpstream(MockState(api_keys=frozenset(api_keys or ())))
    routes = [
        Route("/v1/complete", mock.complete, methods=["POST"]),
        Route("/_mock/requests", mock.list_requests, methods=["GET"]),
        Route("/_mock/requests", mock.clear_requests, methods=["DELETE"]),
        Route("/_mock/stats", mock.stats, methods=["GET"]),
        Route("/_mock/outage", mock.start_outage, methods=["POST"]),
        Route("/_mock/outage", mock.end_outage, methods=["DELETE"]),
        Route("/_mock/health", mock.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.router.redirect_slashes = False
    app.state.mock = mock
    return app


class _DropExpectedAbort(logging.Filter):
    """`drop_connection_after` ends responses mid-body on purpose; do not log that as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


class _MockServer(uvicorn.Server):
    """uvicorn's server that writes `port_file` once it listens."""

    def __init__(self, config: uvicorn.Config, port_file: str | None) -> None:
        super().__init__(config)
        self.port_file = port_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.port_file is not None:
            write_port_file(self.port_file, bound_port(s for server in self.servers for s in server.sockets))


def run(host: str, port: int, api_keys: list[str], port_file: str | None = None) -> None:
    """Serve the mock with uvicorn until SIGTERM/SIGINT (quiet logs, no access log)."""
    config = uvicorn.Config(
        create_app(api_keys),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    logging.getLogger("uvicorn.error").addFilter(_DropExpectedAbort())
    _MockServer(config, port_file).run()
