"""The server edge's response writing (`proxy.http.cycle`): an answer with a length leaves in one write,
and every byte a client sees is what stock uvicorn sends.

Differential tests over real sockets: the same ASGI app behind uvicorn's own `HttpToolsProtocol` and
behind the proxy's protocol, each a real uvicorn server in a thread on 127.0.0.1, the same raw requests
to both, the received bytes compared. The proxy's protocol counts its transport's writes. The header
checks are compared with uvicorn's on generated headers (hypothesis).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.app import create_app
from proxy.config import Config
from proxy.http.cycle import UVICORN_SOURCES, ResponseCycle
from proxy.http.protocol import EdgeLimits, ProxyHttpProtocol, _Event, protocol_class
from proxy.http.responses import JSONAnswer, json_response
from tests.support.servers import HOST, Server

# The app both servers run


class _Release:
    """Lets a stream's app go on once the client has seen its head and first chunk."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None


release = _Release()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    json_head = [(b"content-length", b"10"), (b"Content-Type", b"application/json")]
    if path == "/json":
        await json_response({"a": 12345})(scope, receive, send)
    elif path == "/echo":  # reads the body (after `100 Continue` when asked for)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await Response(body, headers={"X-Echo": "yes"})(scope, receive, send)
    elif path == "/close":  # the app asks for the connection to close
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*json_head, (b"Connection", b"close")]}
        )
        await send({"type": "http.response.body", "body": b"0123456789"})
    elif path == "/two-parts":  # a length, and the body in two messages
        await send({"type": "http.response.start", "status": 200, "headers": json_head})
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789"})
    elif path == "/stream":  # chunked: the head and first chunk before the app goes on
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        if scope["query_string"] == b"wait":
            release.event = asyncio.Event()
            await asyncio.wait_for(release.event.wait(), 10)
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/release":
        assert release.event is not None
        release.event.set()
        await json_response({"released": True})(scope, receive, send)
    elif path == "/slow":  # answers after the seconds in the query string
        await asyncio.sleep(float(scope["query_string"]))
        await json_response({"a": 12345})(scope, receive, send)
    elif path == "/no-content":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/fail-before-start":
        raise ValueError("boom")
    elif path == "/fail-after-start":  # the head with a length, then the app fails
        await send({"type": "http.response.start", "status": 200, "headers": json_head})
        raise ValueError("boom")
    elif path == "/return-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": json_head})
    elif path == "/short":
        await send({"type": "http.response.start", "status": 200, "headers": json_head})
        await send({"type": "http.response.body", "body": b"01234"})
    elif path == "/long":
        await send({"type": "http.response.start", "status": 200, "headers": json_head})
        await send({"type": "http.response.body", "body": b"0123456789-and-more"})
    elif path == "/bad-value":  # a value that would split the head
        headers = [*json_head, (b"x-evil", b"a\r\nset-cookie: x=1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"0123456789"})
    elif path == "/bad-name":
        await send({"type": "http.response.start", "status": 200, "headers": [*json_head, (b"x evil", b"1")]})
        await send({"type": "http.response.body", "body": b"0123456789"})
    else:
        await Response(b"not here", status_code=404)(scope, receive, send)


# Real servers in threads


class CountingTransport:
    """The connection's transport, recording each `write`."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        data = list(data)
        self.writes.append(b"".join(data))
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def counting(
    base: type[HttpToolsProtocol], writes: list[bytes], connections: list[Any] | None = None
) -> type[HttpToolsProtocol]:
    """`base` with its writes recorded in `writes` (and each connection's protocol in `connections`)."""

    class Counting(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = CountingTransport(transport, writes)  # type: ignore[assignment]
            if connections is not None:
                connections.append(self)

    return Counting


@contextmanager
def serving(asgi: Any, protocol: type[HttpToolsProtocol], **settings: Any) -> Iterator[int]:
    """`asgi` behind a real uvicorn server with `protocol`, in a thread; yields its port."""
    config = uvicorn.Config(
        asgi,
        host=HOST,
        port=0,
        http=protocol,
        ws="none",
        date_header=False,  # the only header that may differ between two servers' answers
        server_header=False,
        log_config=None,
        access_log=False,
        **settings,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


def exchange(port: int, *parts: bytes) -> bytes:
    """Send `parts` (each after the answer so far, for `100 Continue`), read until the server closes."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        received = b""
        for index, part in enumerate(parts):
            sock.sendall(part)
            if index < len(parts) - 1:
                received += sock.recv(65536)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def request(method: str, path: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: x", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CLOSE = "Connection: close"
CASES: dict[str, tuple[bytes, ...]] = {
    "json": (request("GET", "/json", CLOSE),),
    "keep-alive, pipelined": (
        request("GET", "/json") + request("GET", "/json") + request("GET", "/json", CLOSE),
    ),
    "HEAD": (request("HEAD", "/json") + request("GET", "/json", CLOSE),),
    "HTTP/1.0": (request("GET", "/json", version="1.0"),),
    "HTTP/1.0 keep-alive": (
        request("GET", "/json", "Connection: keep-alive", version="1.0") + request("GET", "/json", CLOSE),
    ),
    "connection: close from the app": (request("GET", "/close") + request("GET", "/json"),),
    "POST": (request("POST", "/echo", CLOSE, body=b"hello"),),
    "100-continue": (
        request("POST", "/echo", CLOSE, "Expect: 100-continue", "Content-Length: 5").removesuffix(b"\r\n\r\n")
        + b"\r\n\r\n",
        b"hello",
    ),
    "a length in two parts": (request("GET", "/two-parts") + request("GET", "/json", CLOSE),),
    "stream": (request("GET", "/stream") + request("GET", "/json", CLOSE),),
    "204": (request("GET", "/no-content") + request("GET", "/json", CLOSE),),
    "HEAD stream": (request("HEAD", "/stream", CLOSE),),
    "404": (request("GET", "/nowhere", CLOSE),),
    "failure before the start": (request("GET", "/fail-before-start"),),
    "failure after the start": (request("GET", "/fail-after-start"),),
    "return after the start": (request("GET", "/return-after-start"),),
    "body shorter than its length": (request("GET", "/short"),),
    "body longer than its length": (request("GET", "/long"),),
    "invalid header value": (request("GET", "/bad-value"),),
    "invalid header name": (request("GET", "/bad-name"),),
    "unparsable request": (b"NOT HTTP\r\n\r\n",),
}


_connections: list[ProxyHttpProtocol] = []


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int, list[bytes]]]:
    """(stock uvicorn's port, the proxy protocol's port, the proxy protocol's writes); the proxy
    protocol's connections are in `_connections`."""
    writes: list[bytes] = []
    with (
        serving(app, HttpToolsProtocol) as stock,
        serving(app, counting(protocol_class(EdgeLimits()), writes, _connections)) as ours,
    ):
        yield stock, ours, writes


@pytest.mark.parametrize("case", [case for case in CASES if case != "unparsable request"])
def test_every_answer_is_byte_for_byte_uvicorns(servers: tuple[int, int, list[bytes]], case: str) -> None:
    stock, ours, _ = servers
    expected = exchange(stock, *CASES[case])
    # uvicorn refuses the invalid header before writing anything: the connection closes unanswered.
    assert expected.startswith(b"HTTP/1.1 ") if "invalid" not in case else expected == b""
    assert exchange(ours, *CASES[case]) == expected


def test_an_answer_with_a_length_is_one_write_and_a_stream_writes_its_head_at_once(
    servers: tuple[int, int, list[bytes]],
) -> None:
    _, ours, writes = servers
    writes.clear()
    answer = exchange(
        ours, request("GET", "/json") + request("HEAD", "/json") + request("GET", "/json", CLOSE)
    )
    assert writes == [
        answer[: len(writes[0])],
        answer[len(writes[0]) : -len(writes[2])],
        answer[-len(writes[2]) :],
    ]
    assert [w.count(b"HTTP/1.1 200 OK") for w in writes] == [1, 1, 1]
    assert writes[0].endswith(b'{"a":12345}') and writes[1].endswith(b"\r\n\r\n")
    writes.clear()
    exchange(ours, request("GET", "/stream", CLOSE))
    assert writes[0].startswith(b"HTTP/1.1 200 OK") and writes[0].endswith(
        b"transfer-encoding: chunked\r\n\r\n"
    )
    assert writes[1:] == [b"5\r\nfirst\r\n", b"6\r\nsecond\r\n", b"0\r\n\r\n"]


def test_a_stream_s_head_and_first_chunk_arrive_before_its_body_ends(
    servers: tuple[int, int, list[bytes]],
) -> None:
    _, ours, _ = servers
    with socket.create_connection((HOST, ours), timeout=10) as sock:
        sock.sendall(request("GET", "/stream?wait", CLOSE))
        received = b""
        deadline = time.monotonic() + 10
        while b"first\r\n" not in received and time.monotonic() < deadline:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"5\r\nfirst\r\n")
        assert httpx.get(f"http://{HOST}:{ours}/release", timeout=10).json() == {"released": True}
        while chunk := sock.recv(65536):
            received += chunk
    assert received.endswith(b"6\r\nsecond\r\n0\r\n\r\n")


def test_a_kept_alive_request_that_arrives_in_one_read_arms_no_head_timer(
    servers: tuple[int, int, list[bytes]],
) -> None:
    """The head timer is for a head still arriving; a request whole in one read has none."""
    _, ours, _ = servers
    _connections.clear()
    with socket.create_connection((HOST, ours), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(request("GET", "/json"))
            received = b""
            deadline = time.monotonic() + 10
            while not received.endswith(b'{"a":12345}') and time.monotonic() < deadline:
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 OK")
        [connection] = _connections
        assert connection._head_timer is None
        sock.sendall(b"GET /json HTTP/1.1\r\n")  # a head in two reads: timed
        deadline = time.monotonic() + 10
        while connection._head_timer is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert connection._head_timer is not None
        sock.sendall(b"Host: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def _keep_alive_timeline(port: int, timeout: float) -> float:
    """On one connection: requests each less than `timeout` after the last answer, for longer than
    `timeout` in all; a request whose answer takes longer than `timeout`; one more. Every answer must come
    on that connection. Returns the seconds from the last answer until the server closed the connection."""
    with socket.create_connection((HOST, port), timeout=10) as sock:

        def ask(path: str) -> float:
            sock.sendall(request("GET", path))
            received = b""
            while not received.endswith(b'{"a":12345}'):
                chunk = sock.recv(65536)
                assert chunk, f"the server closed the connection instead of answering {path}"
                received += chunk
            assert received.startswith(b"HTTP/1.1 200 OK"), received
            return time.monotonic()

        for _ in range(4):
            ask("/json")
            time.sleep(timeout * 0.6)
        ask(f"/slow?{timeout * 1.3}")  # busy when a timer armed before it comes due
        time.sleep(timeout * 0.6)
        answered = ask("/json")
        assert sock.recv(65536) == b"", "the server sent more than the answers"
        return time.monotonic() - answered


@pytest.mark.e2e  # waits out real keep-alive timeouts: seconds of wall time
def test_the_keep_alive_timeout_is_uvicorns() -> None:
    """One timer per connection instead of one per request: a connection stays open while requests keep
    coming (or one runs longer than the timeout), and closes `timeout_keep_alive` after its last answer,
    as with stock uvicorn (the same timeline against both servers at once)."""
    timeout = 1.0
    with (
        serving(app, HttpToolsProtocol, timeout_keep_alive=timeout) as stock,
        serving(app, protocol_class(EdgeLimits()), timeout_keep_alive=timeout) as ours,
    ):
        closed: dict[int, float] = {}
        threads = [
            threading.Thread(target=lambda p=port: closed.__setitem__(p, _keep_alive_timeline(p, timeout)))
            for port in (stock, ours)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert set(closed) == {stock, ours}, "a timeline failed (see the thread's exception above)"
    assert closed[ours] >= timeout - 0.05, f"closed {closed[ours]:.2f} s after the last answer"
    assert abs(closed[ours] - closed[stock]) < 0.5, closed


def test_a_chat_answer_of_the_real_app_is_one_write(mock_upstream: Server) -> None:
    """The proxy's app and protocol over a real socket: the whole answer, head and body, in one write;
    an error's envelope too."""
    config = Config.model_validate(
        {"upstream": {"base_url": mock_upstream.base_url, "api_key": "sk-test-key"}}
    )
    writes: list[bytes] = []
    protocol = counting(protocol_class(EdgeLimits()), writes)
    with (
        serving(create_app(config), protocol, lifespan="on") as port,
        httpx.Client(base_url=f"http://{HOST}:{port}", timeout=10) as client,
    ):
        for _ in range(3):  # one kept-alive connection
            writes.clear()
            response = client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]},
                headers={"x-request-id": "client-id.1"},
            )
            assert response.status_code == 200 and response.json()["object"] == "chat.completion"
            assert len(writes) == 1
            assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
            assert writes[0].endswith(response.content)
            assert b"\r\nx-request-id: client-id.1\r\n" in writes[0]
        # Error envelopes too: with their length, in one write (not chunked).
        for method, path, body in [
            (
                "POST",
                "/v1/chat/completions",
                b'{"model": "gpt-4", "messages": [{"role": "user", "content": 1}]}',
            ),
            ("POST", "/v1/chat/completions", b"{not json"),
            ("GET", "/v1/nowhere", b""),
            ("GET", "/v1/chat/completions", b""),
        ]:
            writes.clear()
            response = client.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code in (400, 404, 405) and "message" in response.json()["error"]
            assert response.headers["content-length"] == str(len(response.content))
            assert "transfer-encoding" not in response.headers
            assert len(writes) == 1 and writes[0].endswith(response.content)


# Header checks: the same answers and errors as uvicorn's, on generated headers

_LOG = logging.getLogger("test")
_NAME_BYTES = st.sampled_from(
    [b"a", b"X", b"-", b"1", b" ", b":", b"\t", b"\x00", b"\x7f", b"(", b"\xff", b'"']
)
_VALUE_BYTES = st.sampled_from(
    [b"a", b" ", b"\t", b":", b"\r", b"\n", b"\x00", b"\x08", b"\x1f", b"\x7f", b"\xe9", b"1"]
)
_NAMES = st.one_of(
    st.sampled_from(
        [b"content-length", b"Content-Length", b"transfer-encoding", b"connection", b"x-request-id"]
    ),
    st.lists(_NAME_BYTES, max_size=6).map(b"".join),
)
_VALUES = st.one_of(
    st.sampled_from([b"0", b"3", b"abc", b"chunked", b"close", b"Keep-Alive, Close", b"upgrade"]),
    st.lists(_VALUE_BYTES, max_size=6).map(b"".join),
)


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        self.written.append(b"".join(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Flow:
    write_paused = False


def _start(
    cls: type[RequestResponseCycle], method: str, headers: list[tuple[bytes, bytes]], status: int
) -> Any:
    """Send the start message to a fresh `cls` cycle: (its head or its error, its framing state)."""
    transport = _Transport()
    cycle = cls(
        scope={"type": "http", "method": method, "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=_Flow(),  # type: ignore[arg-type]
        logger=_LOG,
        access_logger=_LOG,
        access_log=False,
        default_headers=[(b"server", b"test")],
        message_event=_Event(),  # type: ignore[arg-type]
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    coroutine = cycle.send({"type": "http.response.start", "status": status, "headers": headers})
    try:
        coroutine.send(None)
    except StopIteration:
        pass
    except (RuntimeError, ValueError) as error:
        return (type(error), str(error))
    head = b"".join(transport.written) or getattr(cycle, "_held", None)
    return head, cycle.chunked_encoding, cycle.expected_content_length, cycle.keep_alive


@settings(max_examples=400, deadline=None)
@given(
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
    method=st.sampled_from(["GET", "HEAD"]),
    status=st.sampled_from([200, 204, 304, 404]),
)
def test_heads_and_header_errors_are_uvicorns(
    headers: list[tuple[bytes, bytes]], method: str, status: int
) -> None:
    assert _start(ResponseCycle, method, headers, status) == _start(
        RequestResponseCycle, method, headers, status
    )


# json_response: Starlette's Response, made faster


@settings(max_examples=200, deadline=None)
@given(
    body=st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10), max_size=3
    ),
    headers=st.none()
    | st.dictionaries(
        st.sampled_from(
            ["x-request-id", "X-Cache", "retry-after", "Content-Type", "content-length", "x-ratelimit"]
        ),
        st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=8),
        max_size=3,
    ),
    status=st.sampled_from([200, 201, 204, 304, 400, 429, 503]),
)
async def test_json_response_is_starlettes_response(
    body: dict[str, Any], headers: dict[str, str] | None, status: int
) -> None:
    ours, theirs = (
        json_response(body, headers, status),
        Response(orjson.dumps(body), status, headers, "application/json"),
    )
    assert isinstance(ours, JSONAnswer) and isinstance(ours, Response)
    assert (ours.status_code, ours.body, ours.raw_headers) == (
        theirs.status_code,
        theirs.body,
        theirs.raw_headers,
    )
    assert await _messages(ours) == await _messages(theirs)


async def _messages(response: Response) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        raise AssertionError("a JSON answer reads nothing")

    await response({"type": "http"}, receive, send)
    return sent


# The uvicorn code the edge follows


def test_uvicorn_s_code_is_the_code_the_edge_was_adapted_from() -> None:
    """`proxy.http.cycle`, `ProxyHttpProtocol._start_cycle` and its keep-alive timer adapt uvicorn 0.55.0's code; a uvicorn
    whose code differs must be reviewed against them (then update `UVICORN_SOURCES`)."""
    installed = {
        "RequestResponseCycle.__init__": RequestResponseCycle.__init__,
        "RequestResponseCycle.send": RequestResponseCycle.send,
        "RequestResponseCycle.run_asgi": RequestResponseCycle.run_asgi,
        "HttpToolsProtocol.on_headers_complete": HttpToolsProtocol.on_headers_complete,
        "HttpToolsProtocol.on_response_complete": HttpToolsProtocol.on_response_complete,
        "HttpToolsProtocol._unset_keepalive_if_required": HttpToolsProtocol._unset_keepalive_if_required,
        "HttpToolsProtocol.data_received": HttpToolsProtocol.data_received,
        "HttpToolsProtocol.connection_lost": HttpToolsProtocol.connection_lost,
        "HttpToolsProtocol.timeout_keep_alive_handler": HttpToolsProtocol.timeout_keep_alive_handler,
    }
    changed = [
        name
        for name, function in installed.items()
        if hashlib.sha256(inspect.getsource(function).encode()).hexdigest() != UVICORN_SOURCES[name]
    ]
    assert not changed, (
        f"uvicorn {uvicorn.__version__} changed {changed}: proxy/http/cycle.py and ProxyHttpProtocol's "
        "_start_cycle and keep-alive timer follow uvicorn 0.55.0's; review them against the new code, then update UVICORN_SOURCES"
    )
    assert issubclass(ResponseCycle, RequestResponseCycle) and issubclass(
        ProxyHttpProtocol, HttpToolsProtocol
    )
