"""OpenTelemetry tracing: the real proxy process exports over OTLP/HTTP to a real receiver.

The proxy runs with the official SDK and exporter, configured only by `OTEL_*` variables; the receiver
(tests/support/otlp.py) decodes what arrives with the official `opentelemetry-proto` types. The
requests carry a W3C `traceparent`, and the mock upstream records the one the proxy sent on.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import StartProxy
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.servers import Server, mock_requests

SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind
CLIENT = 3
ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as running:
        yield running


def tracing_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "proxy-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds: export soon after each span ends
        **extra,
    }


def traceparent() -> tuple[str, str, str]:
    """A fresh sampled W3C traceparent: (header, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def chat(proxy: Server, content: str, header: str, *, stream: bool = False, **params: Any) -> httpx.Response:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": content}], "stream": stream, **params}
    headers = {"Authorization": "Bearer client-key", "traceparent": header, "tracestate": "vendor=opaque"}
    response = httpx.post(f"{proxy.base_url}{ROUTE}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def one(spans: list[ReceivedSpan], kind: int) -> ReceivedSpan:
    found = [span for span in spans if span.kind == kind]
    assert len(found) == 1, [(span.name, span.kind) for span in spans]
    return found[0]


def upstream_headers(mock: Server, trace_id: str) -> list[dict[str, str]]:
    """The headers of the upstream requests that belong to `trace_id`."""
    records = [record["headers"] for record in mock_requests(mock)]
    return [h for h in records if isinstance(h, dict) and trace_id in h.get("traceparent", "")]


def test_plain_and_streamed_chat_spans(
    start_proxy: StartProxy, mock_upstream: Server, receiver: Receiver
) -> None:
    prompt = f"tracing-prompt-{secrets.token_hex(6)}"
    reply = f"tracing-reply-{secrets.token_hex(6)}"
    with start_proxy(env=tracing_env(receiver)) as proxy:
        header, plain_trace, plain_parent = traceparent()
        plain = chat(proxy, f"{prompt} [[mock:reply={reply}]]", header, max_tokens=20, temperature=0.5)
        header, stream_trace, stream_parent = traceparent()
        streamed = chat(proxy, f"{prompt} [[mock:reply={reply}]]", header, stream=True, max_tokens=20)
        assert "data: [DONE]" in streamed.text
        plain_spans = receiver.wait_for(plain_trace, 2)
        stream_spans = receiver.wait_for(stream_trace, 2)

    # The plain request: SERVER span under the caller's span, CLIENT span under it.
    server, client = one(plain_spans, SERVER), one(plain_spans, CLIENT)
    assert server.name == "chat gpt-4"
    assert client.name == "text_completion claude-2.1"
    assert server.parent_id == plain_parent
    assert (client.trace_id, client.parent_id) == (plain_trace, server.span_id)
    assert server.resource["service.name"] == "proxy-under-test"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == "gpt-4"
    assert attrs["http.route"] == ROUTE
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["claude_legacy_proxy.request_id"] == plain.headers["x-request-id"]
    assert attrs["claude_legacy_proxy.upstream_model"] == "claude-2.1"
    usage = plain.json()["usage"]
    assert attrs["claude_legacy_proxy.usage.estimated_input_tokens"] == usage["prompt_tokens"]
    assert attrs["claude_legacy_proxy.usage.estimated_output_tokens"] == usage["completion_tokens"]
    assert "gen_ai.usage.input_tokens" not in attrs  # estimates only when the operator opts in
    assert "error.type" not in attrs
    attrs = client.attributes
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == "claude-2.1"
    assert attrs["gen_ai.response.model"] == "claude-2.1"
    assert attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.response.finish_reasons"] == ["stop_sequence"]
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == mock_upstream.port
    # The upstream request carried the CLIENT span's context.
    (sent,) = upstream_headers(mock_upstream, plain_trace)
    assert sent["traceparent"] == f"00-{plain_trace}-{client.span_id}-01"
    assert sent["tracestate"] == "vendor=opaque"

    # The stream: the CLIENT span lasts until the upstream stream closed, the SERVER span until the
    # last byte was sent to the client.
    server, client = one(stream_spans, SERVER), one(stream_spans, CLIENT)
    assert (server.name, client.name) == ("chat gpt-4", "text_completion claude-2.1")
    assert server.parent_id == stream_parent
    assert client.parent_id == server.span_id
    assert server.attributes["claude_legacy_proxy.stream"] is True
    assert server.attributes["http.response.status_code"] == 200
    assert client.attributes["gen_ai.response.finish_reasons"] == ["stop_sequence"]
    assert client.events == ["gen_ai.first_event"]
    assert client.span.events[0].time_unix_nano <= client.span.end_time_unix_nano
    assert client.span.end_time_unix_nano <= server.span.end_time_unix_nano
    (sent,) = upstream_headers(mock_upstream, stream_trace)
    assert sent["traceparent"] == f"00-{stream_trace}-{client.span_id}-01"

    # No prompt or completion text anywhere in what was exported.
    raw = receiver.raw()
    assert reply in plain.text
    assert prompt.encode() not in raw and reply.encode() not in raw
    for span in plain_spans + stream_spans:
        assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in span.attributes)


def test_retried_attempts_are_sibling_client_spans(
    start_proxy: StartProxy, mock_upstream: Server, receiver: Receiver
) -> None:
    flaky = f"[[mock:status=529]][[mock:fail_times=1]][[mock:fail_id={secrets.token_hex(8)}]]"
    with start_proxy(env=tracing_env(receiver)) as proxy:
        header, trace_id, _ = traceparent()
        chat(proxy, f"retry me {flaky}", header)
        spans = receiver.wait_for(trace_id, 3)
    server = one(spans, SERVER)
    attempts = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.span.start_time_unix_nano)
    assert [s.parent_id for s in attempts] == [server.span_id, server.span_id]
    assert attempts[0].attributes["error.type"] == "overloaded_error"
    assert attempts[0].attributes["http.response.status_code"] == 529
    assert "error.type" not in attempts[1].attributes
    assert server.attributes["claude_legacy_proxy.attempts"] == 2
    sent = [h["traceparent"] for h in upstream_headers(mock_upstream, trace_id)]
    assert sent == [f"00-{trace_id}-{s.span_id}-01" for s in attempts]


def test_failed_request_span_has_the_error_code_and_probes_have_none(
    start_proxy: StartProxy, receiver: Receiver
) -> None:
    with start_proxy(env=tracing_env(receiver)) as proxy:
        header, trace_id, _ = traceparent()
        response = httpx.post(
            f"{proxy.base_url}{ROUTE}",
            json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer client-key", "traceparent": header},
            timeout=30,
        )
        assert response.status_code == 404
        _, probe_trace, _ = traceparent()
        probe = httpx.get(
            f"{proxy.base_url}/healthz", headers={"traceparent": header.replace(trace_id, probe_trace)}
        )
        assert probe.status_code == 200
        (server,) = receiver.wait_for(trace_id, 1)
    assert receiver.trace(probe_trace) == []  # probes are not traced (the proxy has flushed on exit)
    assert server.kind == SERVER
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["error.type"] == response.json()["error"]["code"]
    assert server.attributes["claude_legacy_proxy.request_id"] == response.headers["x-request-id"]


def test_content_and_estimated_usage_are_opt_in(start_proxy: StartProxy, receiver: Receiver) -> None:
    prompt = f"opted-in-prompt-{secrets.token_hex(6)}"
    env = tracing_env(receiver, PROXY_TRACING__CAPTURE_CONTENT="true", PROXY_TRACING__ESTIMATED_USAGE="true")
    with start_proxy(env=env) as proxy:
        header, trace_id, _ = traceparent()
        response = chat(proxy, prompt, header)
        spans = receiver.wait_for(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    usage = response.json()["usage"]
    assert server.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert server.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert server.attributes["claude_legacy_proxy.usage.estimated"] is True
    (message,) = json.loads(client.attributes["gen_ai.input.messages"])
    assert prompt in message["parts"][0]["content"]
    (answer,) = json.loads(client.attributes["gen_ai.output.messages"])
    # The client span holds the upstream's own text; chat content drops its one leading space.
    upstream_text = answer["parts"][0]["content"]
    assert upstream_text.startswith(" ")
    assert upstream_text[1:] == response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "off",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_off_exports_nothing_and_forwards_no_traceparent(
    start_proxy: StartProxy, mock_upstream: Server, receiver: Receiver, off: dict[str, str]
) -> None:
    env = {**tracing_env(receiver), **off}
    with start_proxy(env=env) as proxy:
        header, trace_id, _ = traceparent()
        chat(proxy, "not traced", header)
        chat(proxy, "not traced", header, stream=True)
    # The proxy has stopped (a running exporter would have flushed on shutdown).
    assert receiver.trace(trace_id) == []
    assert "tracing_enabled" not in proxy.log()
    sent = [r["headers"] for r in mock_requests(mock_upstream)]
    assert not [h for h in sent if isinstance(h, dict) and trace_id in str(h.get("traceparent"))]


def test_asked_for_but_not_installed_is_loud(
    start_proxy: StartProxy, receiver: Receiver, tmp_path: Path
) -> None:
    """Without the packages (hidden here by a module that fails to import, as a missing one does)
    the proxy says so at start-up and serves without tracing."""
    hidden = tmp_path / "hidden" / "opentelemetry" / "sdk"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'opentelemetry.sdk'\", name='opentelemetry.sdk')\n"
    )
    env = tracing_env(receiver, PYTHONPATH=str(tmp_path / "hidden"))
    with start_proxy(env=env) as proxy:
        header, trace_id, _ = traceparent()
        chat(proxy, "served anyway", header)
        log = proxy.log()
    (line,) = [json.loads(x) for x in log.splitlines() if '"tracing_unavailable"' in x]
    assert line["level"] == "error"
    assert "opentelemetry.sdk" in line["reason"]
    assert "pip install 'claude-legacy-openai-proxy[tracing]'" in line["reason"]
    assert receiver.trace(trace_id) == []


#: Runs the app in-process with tracing off: one request through the middleware and the lifespan.
_NO_OTEL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from proxy.app import create_app
    from proxy.config import Config

    async def main():
        app = create_app(Config.model_validate({"upstream": {"base_url": "http://127.0.0.1:9"}}))
        events = asyncio.Queue()
        for event in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
            events.put_nowait(event)
        replies = []

        async def lifespan_send(message):
            replies.append(message["type"])

        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, events.get, lifespan_send))
        while "lifespan.startup.complete" not in replies:
            await asyncio.sleep(0)
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
            "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 80), "client": None,
            "root_path": "", "http_version": "1.1"}
        await app(scope, receive, send)
        await lifespan
        assert sent[0]["status"] == 200, sent
        tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.trace.propagation.")
        loaded = sorted(name for name in sys.modules if name.startswith(tracing))
        print("loaded:", loaded)

    asyncio.run(main())
    """
)


def test_off_loads_no_opentelemetry_code() -> None:
    """Tracing off costs nothing per request: the OpenTelemetry tracing SDK, propagator and exporter
    are not even imported, so no span object can be made, even for a request with a `traceparent`.
    (redis-py imports the OpenTelemetry metrics SDK on its own when it is installed.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROXY_", "ANTHROPIC_"))}
    env["ANTHROPIC_API_KEY"] = "sk-ant-unused"
    result = subprocess.run(
        [sys.executable, "-c", _NO_OTEL_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout, result.stdout


def test_unsampled_requests_export_nothing_but_propagate(
    start_proxy: StartProxy, mock_upstream: Server, receiver: Receiver
) -> None:
    """`OTEL_TRACES_SAMPLER` is the SDK's: an unsampled caller (flags 00) stays unsampled, and the
    upstream still gets the trace id, marked unsampled."""
    env = tracing_env(receiver, OTEL_TRACES_SAMPLER="parentbased_always_on")
    with start_proxy(env=env) as proxy:
        header, trace_id, parent = traceparent()
        chat(proxy, "unsampled", header[:-2] + "00", stream=True)
    assert receiver.trace(trace_id) == []
    ((sent,),) = [[h["traceparent"]] for h in upstream_headers(mock_upstream, trace_id)]
    assert sent.startswith(f"00-{trace_id}-") and sent.endswith("-00")
    assert parent not in sent  # the proxy's own (unrecorded) span id, not the caller's
