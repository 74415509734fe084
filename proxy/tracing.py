"""OpenTelemetry tracing: off by default, switched on by the standard `OTEL_*` environment variables.

On when `OTEL_TRACES_EXPORTER` names an exporter other than `none` (`otlp`, `console`), or, with it
unset, when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
`OTEL_SDK_DISABLED=true` wins over both. Everything else (endpoint, headers, timeout, compression,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`) is read by the
official SDK itself. OTLP goes over HTTP with protobuf (`opentelemetry-exporter-otlp-proto-http`).

Spans follow the GenAI semantic conventions of semconv v1.37.0 (status: Development):
- one SERVER span per request, from its arrival until its response (a stream included) has been sent
  completely, a child of the incoming W3C `traceparent`; for a generation request it is named
  `{gen_ai.operation.name} {gen_ai.request.model}` (`chat gpt-4`), otherwise `{method} {route}`;
- one CLIENT span per upstream attempt, `text_completion {model}`, whose context goes upstream in
  `traceparent`; a stream's span lasts until the stream is closed, with an event at its first event.

Token counts are the proxy's estimates (the legacy upstream reports none), so they are recorded as
`claude_legacy_proxy.usage.estimated_*_tokens`; `gen_ai.usage.*` carry them only when the operator
opts in (`tracing.estimated_usage`), as the conventions ask of offline token counting. Prompt and
completion text are never recorded unless `tracing.capture_content` is on.

The packages are an optional extra: without them, or with tracing off, this module imports no
OpenTelemetry code and the request path only checks that `Tracing.tracer` is None.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from proxy import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from starlette.types import Scope

    from proxy.config import TracingConfig
    from proxy.http.record import RequestLog

#: The semantic-conventions release these spans follow (GenAI attributes are at Development status).
SEMCONV_VERSION = "1.37.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
PROVIDER = "anthropic"
SERVICE_NAME = "claude-legacy-openai-proxy"
#: The namespace of this proxy's own span attributes.
NS = "claude_legacy_proxy"
INSTALL_HINT = "pip install 'claude-legacy-openai-proxy[tracing]'"
SUPPORTED_EXPORTERS = ("otlp", "console")

log = structlog.get_logger("proxy.tracing")

T = TypeVar("T")
E = TypeVar("E")


def requested_exporters(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the `OTEL_*` variables ask for; [] means tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name]
    if names:
        return [name for name in names if name != "none"]
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


class Unavailable(Exception):
    """Tracing was asked for but cannot run; the message says why."""


def _provider(exporters: Sequence[str], environ: Mapping[str, str]) -> TracerProvider:
    """A tracer provider with a batch processor per exporter (SDK defaults and `OTEL_*` settings)."""
    unsupported = [name for name in exporters if name not in SUPPORTED_EXPORTERS]
    if unsupported:
        raise Unavailable(
            f"OTEL_TRACES_EXPORTER names {', '.join(unsupported)}: this proxy exports with "
            f"{' or '.join(SUPPORTED_EXPORTERS)} only"
        )
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if "otlp" in exporters and protocol != "http/protobuf":
        raise Unavailable(f"OTLP protocol {protocol!r} is not supported: set http/protobuf")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        otlp: type[SpanExporter] | None = None
        if "otlp" in exporters:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            otlp = OTLPSpanExporter
    except ImportError as exc:
        raise Unavailable(
            f"the OpenTelemetry packages are not installed (no module {exc.name!r}); {INSTALL_HINT}"
        ) from None
    resource = Resource.create({})  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    resource = resource.merge(Resource({"service.version": __version__}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    for name in exporters:
        exporter = otlp() if name == "otlp" and otlp is not None else ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class Tracing:
    """Tracing for one process: `tracer` stays None while tracing is off, the one thing the request
    path checks. Started and shut down by the app's lifespan, so each worker process has its own
    exporter thread."""

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        self.tracer: Tracer | None = None
        self._provider: TracerProvider | None = None

    def start(self) -> bool:
        """Set up the provider when the `OTEL_*` variables ask for tracing; say loudly when they do
        but it cannot run (the proxy then serves without tracing). The SDK reads the process
        environment too (endpoint, sampler, resource), so this reads nothing else."""
        environ = os.environ
        exporters = requested_exporters(environ)
        if not exporters:
            return False
        try:
            provider = _provider(exporters, environ)
        except Unavailable as reason:
            log.error(
                "tracing_unavailable",
                reason=str(reason),
                detail="OTEL_* variables ask for tracing; the proxy runs WITHOUT tracing",
            )
            return False
        self._provider = provider
        self.tracer = provider.get_tracer(SERVICE_NAME, __version__, schema_url=SCHEMA_URL)
        log.info(
            "tracing_enabled",
            exporters=exporters,
            sampler=environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
            semconv=SEMCONV_VERSION,
            capture_content=self.config.capture_content,
            estimated_usage=self.config.estimated_usage,
        )
        return True

    async def shutdown(self) -> None:
        """Export what is still buffered and stop the exporter thread (bounded by the SDK's timeouts)."""
        provider, self._provider, self.tracer = self._provider, None, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)

    def server_span(self, scope: Scope) -> ServerSpan:
        assert self.tracer is not None
        return ServerSpan(self, self.tracer, scope)

    def attempt_span(
        self, model: str, body: Mapping[str, Any], *, host: str, port: int, entry: str, stream: bool
    ) -> AttemptSpan:
        assert self.tracer is not None
        return AttemptSpan(self, self.tracer, model, body, host=host, port=port, entry=entry, stream=stream)

    def inject(self, headers: list[tuple[str, str]]) -> None:
        """Add the current span's W3C `traceparent` (and `tracestate`) to upstream request headers."""
        _w3c().inject(headers)


# -- W3C trace context ----------------------------------------------------------------------------
# Only `traceparent`/`tracestate` are read and written: baggage may carry a client's data, and the
# upstream is a third party.


class _W3C:
    """The W3C trace-context propagator with a getter over ASGI's raw header list and a setter onto the
    upstream client's header list. Built on first use: the OpenTelemetry packages are optional."""

    def __init__(self) -> None:
        from opentelemetry.propagators.textmap import Getter, Setter
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        class AsgiHeaders(Getter[Sequence[tuple[bytes, bytes]]]):
            def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
                name = key.encode("latin-1")
                values = [bytes(value).decode("latin-1") for header, value in carrier if header == name]
                return values or None

            def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
                return [bytes(header).decode("latin-1") for header, _ in carrier]

        class HeaderList(Setter[list[tuple[str, str]]]):
            def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
                carrier.append((key, value))

        self.propagator = TraceContextTextMapPropagator()
        self.getter = AsgiHeaders()
        self.setter = HeaderList()

    def extract(self, headers: Sequence[tuple[bytes, bytes]]) -> Context:
        return self.propagator.extract(headers, getter=self.getter)

    def inject(self, headers: list[tuple[str, str]]) -> None:
        self.propagator.inject(headers, setter=self.setter)


@functools.cache
def _w3c() -> _W3C:
    return _W3C()


# -- spans ----------------------------------------------------------------------------------------


def _operation(route: str | None) -> str | None:
    """The GenAI operation a route performs: the chat surfaces are `chat`, legacy completions
    `text_completion`; None for every other route."""
    if route is None:
        return None
    if route.endswith(("/chat/completions", "/responses")):
        return "chat"
    if route.endswith("/completions"):
        return "text_completion"
    return None


class ServerSpan:
    """The span of one request; current (so upstream attempts are its children) until `end`."""

    __slots__ = ("_token", "span", "tracing")

    def __init__(self, tracing: Tracing, tracer: Tracer, scope: Scope) -> None:
        from opentelemetry import context, trace

        parent = _w3c().extract(scope["headers"])
        method = scope["method"]
        self.tracing = tracing
        self.span: Span = tracer.start_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
            },
        )
        self._token = context.attach(trace.set_span_in_context(self.span, parent))

    def end(self, status: int, record: RequestLog) -> None:
        """Name and attribute the span from what the request recorded, then end it."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        context.detach(self._token)
        span = self.span
        if not span.is_recording():  # not sampled: nothing to name or attribute
            return
        attributes: dict[str, Any] = {f"{NS}.request_id": record.request_id}
        if status:
            attributes["http.response.status_code"] = status
        name = span.name  # type: ignore[attr-defined]  # the SDK's span has it
        if record.route is not None:
            attributes["http.route"] = record.route
            name = f"{name} {record.route}"
        operation = _operation(record.route)
        if operation is not None and record.model is not None:
            name = f"{operation} {record.model}"
            attributes["gen_ai.operation.name"] = operation
            attributes["gen_ai.provider.name"] = PROVIDER
            attributes["gen_ai.request.model"] = record.model
            _set(attributes, f"{NS}.upstream_model", record.upstream_model)
            _set(attributes, f"{NS}.stream", record.stream)
            if record.n is not None and record.n != 1:
                attributes["gen_ai.request.choice.count"] = record.n
            self._usage(attributes, record)
        _set(attributes, f"{NS}.attempts", record.attempts)
        _set(attributes, f"{NS}.upstream.request_id", record.upstream_request_id)
        _set(attributes, f"{NS}.upstream.entry", record.upstream_entry)
        _set(attributes, f"{NS}.key_name", record.key_name)
        _set(attributes, f"{NS}.cache", record.cache)
        _set(attributes, f"{NS}.rate_limit", record.limit)
        _set(attributes, f"{NS}.first_chunk_ms", record.first_token_ms)
        if record.error_code is not None:
            attributes["error.type"] = record.error_code
        elif status >= 500:
            attributes["error.type"] = str(status)
        span.update_name(name)
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, record.error_code))
        span.end()

    def _usage(self, attributes: dict[str, Any], record: RequestLog) -> None:
        if record.prompt_tokens is None:
            return
        attributes[f"{NS}.usage.estimated_input_tokens"] = record.prompt_tokens
        attributes[f"{NS}.usage.estimated_output_tokens"] = record.completion_tokens or 0
        if self.tracing.config.estimated_usage:
            attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = record.completion_tokens or 0
            attributes[f"{NS}.usage.estimated"] = True


def _set(attributes: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        attributes[key] = value


#: Upstream request fields recorded on client spans, by their GenAI attribute.
_REQUEST_ATTRIBUTES = {
    "max_tokens_to_sample": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "stop_sequences": "gen_ai.request.stop_sequences",
}


class AttemptSpan:
    """The span of one upstream attempt; current while the attempt runs, so its `traceparent` goes
    upstream. A plain answer ends it; an open stream keeps it until the stream is closed."""

    __slots__ = ("_context", "span", "tracing")

    def __init__(
        self,
        tracing: Tracing,
        tracer: Tracer,
        model: str,
        body: Mapping[str, Any],
        *,
        host: str,
        port: int,
        entry: str,
        stream: bool,
    ) -> None:
        from opentelemetry import trace

        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "text_completion",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": model,
            "server.address": host,
            "server.port": port,
            f"{NS}.upstream.entry": entry,
            f"{NS}.stream": stream,
        }
        for field, attribute in _REQUEST_ATTRIBUTES.items():
            value = body.get(field)
            if isinstance(value, int | float | list) and not isinstance(value, bool):
                attributes[attribute] = value
        if tracing.config.capture_content and isinstance(prompt := body.get("prompt"), str):
            attributes["gen_ai.input.messages"] = _messages("user", prompt)
        self.tracing = tracing
        self.span: Span = tracer.start_span(
            f"text_completion {model}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        self._context: Context = trace.set_span_in_context(self.span)

    async def run(self, attempt: Callable[[E], Awaitable[T]], entry: E) -> T:
        """Run the attempt with this span current; a failure ends the span with its error type."""
        from opentelemetry import context

        token = context.attach(self._context)
        try:
            result = await attempt(entry)
        except BaseException as exc:
            self.fail(exc)
            raise
        finally:
            context.detach(token)
        if isinstance(result, dict):
            self.answered(result)
        else:
            self.span.add_event("gen_ai.first_event")  # a stream: ended by `closed`
        return result

    def answered(self, answer: Mapping[str, Any]) -> None:
        span = self.span
        if isinstance(model := answer.get("model"), str):
            span.set_attribute("gen_ai.response.model", model)
        if isinstance(response_id := answer.get("id"), str):
            span.set_attribute("gen_ai.response.id", response_id)
        stop_reason = answer.get("stop_reason")
        if isinstance(stop_reason, str):
            span.set_attribute("gen_ai.response.finish_reasons", [stop_reason])
        if self.tracing.config.capture_content and isinstance(text := answer.get("completion"), str):
            span.set_attribute("gen_ai.output.messages", _messages("assistant", text, stop_reason))
        span.end()

    def closed(self, *, stop_reason: str | None, error: str | None) -> None:
        """A stream's end: how it finished (or the error it ended with)."""
        if stop_reason is not None:
            self.span.set_attribute("gen_ai.response.finish_reasons", [stop_reason])
        if error is not None:
            self._error(error)
        self.span.end()

    def fail(self, exc: BaseException) -> None:
        status = getattr(exc, "status", None)
        error_type = getattr(exc, "error_type", None) or type(exc).__qualname__
        if isinstance(status, int):
            self.span.set_attribute("http.response.status_code", status)
        self._error(str(error_type))
        self.span.end()

    def _error(self, error_type: str) -> None:
        """The error's type only: an upstream's message may echo what must not leave the proxy."""
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", error_type)
        self.span.set_status(Status(StatusCode.ERROR, error_type))


def _messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """Content in the conventions' message JSON, as a string (span attributes are not structured)."""
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return orjson.dumps([message]).decode()
