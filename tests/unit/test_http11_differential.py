"""The upstream client against h11, the reference HTTP/1.1 state machine, on generated answers.

Each example is an answer byte stream (valid or broken: interim 1xx answers, trailers, chunk
extensions, content-length, chunked and close-delimited bodies, bytes after the end, bad framing),
served by a real socket server on 127.0.0.1 that splits it across writes at generated points. h11 (as
a client) parses the same bytes; both must agree: same status, headers (lower-case names, repeated ones
joined, order of distinct names ignored) and body, or both fail. Where RFC 9112 lets a recipient
either accept or reject (both Content-Length and Transfer-Encoding, a repeated identical
Content-Length, bare LF line ends), h11 accepts and llhttp rejects: those mutations may fail on our
side only, and nowhere else.

Then a second request goes on the same pool: it must get the server's second answer, never a byte of
the first exchange's stream (a connection with anything after its answer is not reused).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.upstream.http11 import ConnectionPool, Target, UpstreamConnectionError

HOST = "127.0.0.1"
SECOND = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"
#: Mutations that RFC 9112 lets a recipient reject or accept; h11 accepts them, llhttp does not.
REJECTED_BY_CHOICE = {"cl-and-te", "same-length-twice", "bare-lf"}

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
RESERVED = {"content-length", "transfer-encoding", "connection", "trailer", "upgrade", "keep-alive"}
#: `request-id` is read aside at parse time (`Response.request_id`): drawn often, in any case, repeated.
NAME = st.one_of(
    TOKEN.filter(lambda name: name not in RESERVED),
    st.sampled_from(["request-id", "Request-Id", "REQUEST-ID"]),
)
VALUE = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,;=/:.\t", max_size=20
).map(str.strip)
HEADERS = st.lists(st.tuples(NAME, VALUE), max_size=5)


@dataclass
class Case:
    stream: bytes
    mutation: str


def head(version: str, status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/{version} {status}{' ' + reason if reason else ''}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@st.composite
def cases(draw: st.DrawFn) -> Case:
    parts = []
    for status in draw(st.lists(st.sampled_from([100, 102, 103, 150, 199]), max_size=2)):
        parts.append(
            head("1.1", status, draw(st.sampled_from(["", "Continue", "Early Hints"])), draw(HEADERS))
        )
    status = draw(st.sampled_from([200, 201, 204, 299, 304, 400, 404, 429, 500, 529, 599]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    headers = draw(HEADERS)
    body = draw(st.binary(max_size=64)) if status not in (204, 304) else b""
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if draw(st.booleans()):
        headers.append(("connection", draw(st.sampled_from(["close", "keep-alive"]))))
    trailers = b""
    if framing == "length":
        headers.append(("content-length", str(len(body))))
        payload = body
    elif framing == "chunked":
        headers.append(("transfer-encoding", draw(st.sampled_from(["chunked", "Chunked"]))))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        payload = b""
        for piece in pieces:
            extension = draw(st.sampled_from(["", ";a", ";a=b", ';name="x y"']))
            payload += b"%x%s\r\n%s\r\n" % (len(piece), extension.encode(), piece)
        trailers = b"".join(f"{name}: {value}\r\n".encode() for name, value in draw(HEADERS))
        payload += b"0\r\n" + trailers + b"\r\n"
    else:
        payload = body
    if status in (204, 304):
        payload = b""
    parts.append(head(version, status, draw(st.sampled_from(["", "OK", "Some Reason"])), headers) + payload)
    stream = b"".join(parts)
    mutation = draw(
        st.sampled_from(
            ["none"] * 6
            + ["junk-after", "second-answer-after", "truncate", "bad-chunk-size", "bad-status-line"]
            + ["bad-header-name", "negative-length", "cl-and-te", "same-length-twice", "bare-lf", "te-gzip"]
        )
    )
    if mutation == "junk-after":
        stream += draw(st.binary(min_size=1, max_size=20))
    elif mutation == "second-answer-after":
        stream += b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nLEAKED"
    elif mutation == "truncate":
        stream = stream[: draw(st.integers(0, max(0, len(stream) - 1)))]
    elif mutation == "bad-chunk-size" and framing == "chunked":
        stream = stream.replace(b"\r\n\r\n0\r\n", b"\r\n\r\nzz\r\n", 1) if not body else _break_chunk(stream)
    elif mutation == "bad-status-line":
        stream = stream.replace(b"HTTP/", b"HTPT/", 1)
    elif mutation == "bad-header-name":
        stream = stream.replace(b"\r\n", b"\r\nbad name: 1\r\n", 1)
    elif mutation == "negative-length":
        stream = stream.replace(b"\r\n", b"\r\ncontent-length: -1\r\n", 1)
    elif mutation == "cl-and-te" and framing == "chunked":
        stream = stream.replace(b"\r\ntransfer-encoding", b"\r\ncontent-length: 3\r\ntransfer-encoding", 1)
    elif mutation == "same-length-twice" and framing == "length":
        stream = stream.replace(
            b"\r\ncontent-length", b"\r\ncontent-length: %d\r\ncontent-length" % len(body), 1
        )
    elif mutation == "bare-lf":
        end = stream.find(b"\r\n\r\n")
        stream = stream[:end].replace(b"\r\n", b"\n") + b"\n\n" + stream[end + 4 :]
    elif mutation == "te-gzip" and framing == "close":
        stream = stream.replace(b"\r\n", b"\r\ntransfer-encoding: gzip\r\n", 1)
    else:
        mutation = "none" if mutation not in ("junk-after", "second-answer-after") else mutation
    return Case(stream, mutation)


def _break_chunk(stream: bytes) -> bytes:
    end = stream.find(b"\r\n\r\n") + 4
    line_end = stream.find(b"\r\n", end)
    return stream[:end] + b"zz" + stream[line_end:]


@dataclass
class Outcome:
    ok: bool
    status: int = 0
    headers: dict[str, str] | None = None
    body: bytes = b""
    keep_open: bool = False  # the server may keep the connection open after the stream
    request_id: str | None = None


def reference(stream: bytes) -> Outcome:
    """h11's reading of `stream`, as a client that sent one POST and then saw the connection close."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "2")]))
    connection.send(h11.Data(b"{}"))
    connection.send(h11.EndOfMessage())
    connection.receive_data(stream)
    response: h11.Response | None = None
    body = b""
    closed = False
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                if closed:
                    return Outcome(False)
                connection.receive_data(b"")
                closed = True
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return Outcome(False)
    except h11.RemoteProtocolError:
        return Outcome(False)
    assert response is not None
    headers: dict[str, str] = {}
    for name, value in response.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = text if key not in headers else f"{headers[key]}, {text}"
    # The server keeps the connection open only when the answer ends by its own framing: there a
    # client that waits for more bytes would hang, and one that reuses the connection is tested.
    keep_open = not closed and connection.their_state is h11.DONE
    return Outcome(True, response.status_code, headers, body, keep_open)


def normalized(headers: dict[str, str]) -> dict[str, str]:
    """h11 lower-cases the transfer-encoding value; the client keeps it as sent."""
    return {name: value.lower() if name == "transfer-encoding" else value for name, value in headers.items()}


async def exchange(case: Case, splits: list[int], keep_open: bool) -> tuple[Outcome, bytes, int]:
    """Serve `case.stream` (split at `splits`) to the client's first request, `SECOND` to every
    later one; returns the client's outcome, the body of its second request and how many
    connections it opened."""
    cuts = sorted({cut for cut in splits if 0 < cut < len(case.stream)})
    pieces = [case.stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(case.stream)], strict=True)]
    served = connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served, connections
        connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(2)
                served += 1
                if served > 1:
                    writer.write(SECOND)
                    continue
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if not keep_open:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the example is over
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, HOST, 0)
    target = Target.parse(f"http://{HOST}:{server.sockets[0].getsockname()[1]}/v1/complete")
    pool = ConnectionPool(max_connections=2, keepalive_timeout=30, proxies={})
    headers = [("content-type", "application/json")]
    try:
        try:
            response = await pool.request(target, headers, b"{}", 5.0, 5.0)
            try:
                body = await response.read()
            finally:
                response.release()
            outcome = Outcome(
                True, response.status, dict(response.headers), body, request_id=response.request_id
            )
        except (UpstreamConnectionError, TimeoutError):
            outcome = Outcome(False)
        second = await pool.request(target, headers, b"{}", 5.0, 5.0)
        second_body = await second.read()
        second.release()
        return outcome, second_body, connections
    finally:
        await pool.aclose()
        server.close()


@settings(
    max_examples=int(os.environ.get("HTTP11_DIFFERENTIAL_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=cases(), splits=st.lists(st.integers(0, 400), max_size=6))
def test_the_client_reads_answers_as_h11_does_and_never_leaks_them(case: Case, splits: list[int]) -> None:
    expected = reference(case.stream)
    ours, second, connections = asyncio.run(exchange(case, splits, expected.keep_open))
    assert second == b"second", f"the second request got {second!r} for {case.stream!r}"
    if case.mutation in ("junk-after", "second-answer-after"):
        assert connections == 2, f"a connection with bytes after its answer was reused: {case.stream!r}"
    if not expected.ok:
        assert not ours.ok, f"h11 rejects {case.stream!r} ({case.mutation}); the client read {ours}"
    elif not ours.ok:
        assert case.mutation in REJECTED_BY_CHOICE, f"the client rejects {case.stream!r} ({case.mutation})"
    else:
        assert (ours.status, normalized(ours.headers or {}), ours.body) == (
            expected.status,
            normalized(expected.headers or {}),
            expected.body,
        ), case
        assert ours.request_id == (expected.headers or {}).get("request-id"), case


@pytest.mark.parametrize(
    "stream",
    [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\nx-t: 1\r\n\r\nJUNK",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi" + SECOND,
    ],
    ids=["interim", "trailer-and-junk", "second-answer"],
)
def test_known_streams(stream: bytes) -> None:
    """The generator's main shapes, pinned: they run on every test run whatever hypothesis draws."""
    expected = reference(stream)
    ours, second, connections = asyncio.run(exchange(Case(stream, "none"), [5, 30], expected.keep_open))
    assert expected.ok and ours.ok and second == b"second"
    assert connections == (1 if stream.endswith(b"hi") else 2)  # reused only after a clean end
    assert (ours.status, ours.headers, ours.body) == (expected.status, expected.headers, expected.body)
