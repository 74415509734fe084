"""The upstream HTTP/1.1 client over real sockets: keep-alive reuse, the stale-connection retry, body
framing, read timeouts, back-pressure and failures. Each test runs its own small asyncio server on
127.0.0.1 that speaks raw HTTP/1.1, so the client meets the exact bytes the test chose."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from proxy.upstream.http11 import (
    HIGH_WATER,
    ConnectionPool,
    ConnectionRefused,
    ConnectTimeout,
    DeadlineExceeded,
    NameResolutionError,
    ReadTimeout,
    Target,
    TLSVerificationError,
    UpstreamConnectionError,
    UpstreamProtocolError,
)
from tests.support.wait import eventually

HOST = "127.0.0.1"
HEADERS = [("content-type", "application/json")]
#: The read timeouts, connect timeouts and deadlines that tests wait out. Short: what the client must see
#: before the timer (a connection, an answer's head) comes at once from a server on the same event loop,
#: and what comes after it (silence, a trickle) is all that the test waits for.
SHORT = 0.1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def no_forward_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pools below read HTTP(S)_PROXY like the product: these tests connect directly."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[Target, list[int]]]:
    """A server calling `handler(reader, writer, connection_number)`; yields its target and the list
    of connection numbers accepted so far."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted) + 1)
        try:
            await handler(reader, writer, accepted[-1])
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target.parse(f"http://{HOST}:{port}/v1/complete"), accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length")), 0
    )
    return head + await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        extra,
        len(body),
        body,
    )


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
    while True:
        request = await read_request(reader)
        writer.write(answer(b'{"n": %d, "size": %d}' % (number, len(request))))
        await writer.drain()


async def post(pool: ConnectionPool, target: Target, body: bytes = b"{}", read: float | None = 5.0) -> bytes:
    response = await pool.request(target, HEADERS, body, 5.0, read)
    try:
        return await response.read()
    finally:
        response.release()


async def test_request_bytes_and_keep_alive_reuse() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(answer(b'{"ok": true}'))
            await writer.drain()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(record) as (target, accepted):
        for _ in range(3):
            assert await post(pool, target, b'{"prompt": "hi"}') == b'{"ok": true}'
        await pool.aclose()
    assert accepted == [1]  # three exchanges, one connection
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/complete HTTP/1.1"
    assert f"host: {target.host_header}".encode() in lines
    assert b"content-length: 16" in lines and body == b'{"prompt": "hi"}'


async def test_a_kept_alive_connection_the_upstream_closed_is_retried_once_on_a_new_one() -> None:
    async def close_the_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        await read_request(reader)
        writer.write(answer(b'{"n": %d}' % number))
        await writer.drain()
        if number == 1:
            await read_request(reader)  # the reused connection's request crosses our close
            writer.transport.abort()
            return
        await keep_answering(reader, writer, number)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(close_the_second) as (target, accepted):
        assert await post(pool, target) == b'{"n": 1}'
        assert await post(pool, target) == b'{"n": 2}'  # answered on connection 2, no error seen
        await pool.aclose()
    assert accepted == [1, 2]


async def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.transport.abort()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(hang_up) as (target, accepted):
        with pytest.raises(UpstreamConnectionError, match="closed the connection"):
            await post(pool, target)
        await pool.aclose()
    assert accepted == [1]


async def test_a_body_delimited_by_the_connection_end() -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(old_style) as (target, _):
        assert await post(pool, target) == b"part one, part two"
        await pool.aclose()


async def test_chunked_pieces_arrive_as_they_are_sent() -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nRequest-Id: req_1\r\n\r\n5\r\nfirst\r\n"
        )
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await keep_answering(reader, writer, number)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(chunked) as (target, accepted):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
        assert response.status == 200 and response.headers["request-id"] == "req_1"  # names lower-cased
        assert await response.next_chunk() == b"first"  # before the rest was even sent
        release.set()
        assert await response.next_chunk() == b"second"
        assert await response.next_chunk() is None  # the body's end
        response.release()
        assert (await post(pool, target)).startswith(b'{"n": 1,')  # the same connection again
        await pool.aclose()
    assert accepted == [1]


async def test_silence_beyond_the_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(stall) as (target, _):
        response = await pool.request(target, HEADERS, b"{}", 5.0, SHORT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout, match="read timeout"):
            while await response.next_chunk() is not None:
                pass
        assert 0.75 * SHORT < loop.time() - started < 2
        response.release()
        await pool.aclose()


async def test_a_deadline_fails_a_stream_that_keeps_sending() -> None:
    """The deadline rides on the read timer: chunks keep the read timeout away, not the deadline."""
    stop = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while not stop.is_set():
            writer.write(b"2\r\nhi\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(trickle) as (target, _):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 30.0)
        response.set_deadline(asyncio.get_running_loop().time() + SHORT)
        with pytest.raises(TimeoutError, match="deadline"):
            async with asyncio.timeout(10):  # a bound for a broken build, far below the read timeout
                while await response.next_chunk() is not None:
                    pass
        stop.set()
        response.release()
        await pool.aclose()


async def test_a_request_deadline_bounds_the_wait_for_the_head() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(silent) as (target, _):
        deadline = asyncio.get_running_loop().time() + SHORT
        with pytest.raises(DeadlineExceeded):
            async with asyncio.timeout(10):  # a bound for a broken build, far below the read timeout
                await pool.request(target, HEADERS, b"{}", 5.0, 30.0, deadline=deadline)
        await pool.aclose()


async def test_a_request_deadline_bounds_the_body_and_drops_the_connection() -> None:
    stop = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        while not stop.is_set():
            writer.write(b"x")  # keeps the read timeout away, not the deadline
            await writer.drain()
            await asyncio.sleep(0.02)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(trickle) as (target, accepted):
        deadline = asyncio.get_running_loop().time() + SHORT
        response = await pool.request(target, HEADERS, b"{}", 5.0, 30.0, deadline=deadline)
        with pytest.raises(DeadlineExceeded):
            async with asyncio.timeout(10):
                await response.read()
        response.release()
        stop.set()
        answered = await pool.request(target, HEADERS, b"{}", 5.0, 30.0)  # a fresh connection
        answered.close()
        assert accepted == [1, 2]
        await pool.aclose()


async def test_a_request_deadline_bounds_the_wait_for_a_connection_slot() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"{}"))

    pool = ConnectionPool(max_connections=1, keepalive_timeout=30)
    async with serve(reply) as (target, _):
        holding = await pool.request(target, HEADERS, b"{}", 5.0, 30.0)  # the one slot, not released
        deadline = asyncio.get_running_loop().time() + SHORT
        with pytest.raises(DeadlineExceeded):
            async with asyncio.timeout(10):
                await pool.request(target, HEADERS, b"{}", 5.0, 30.0, deadline=deadline)
        assert await holding.read() == b"{}"
        holding.release()
        response = await pool.request(target, HEADERS, b"{}", 5.0, 30.0, deadline=deadline + 30)
        assert await response.read() == b"{}"  # the deadline's timer is gone with the answer's end
        response.release()
        await pool.aclose()


async def test_a_reused_connection_times_out_by_its_own_exchange_not_the_one_before() -> None:
    """The read timer outlives its exchange: the next one on the connection re-arms it when it needs an
    earlier check, and an earlier check left by the exchange before never ends it early."""
    delays = [0.0, 0.0, 2.5 * SHORT, 0.0, 10.0]  # per request, in order, all on one connection

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        for delay in delays:
            await read_request(reader)
            await asyncio.sleep(delay)
            writer.write(answer(b"{}"))
            await writer.drain()

    pool = ConnectionPool(max_connections=1, keepalive_timeout=30)
    loop = asyncio.get_running_loop()
    async with serve(slow) as (target, accepted):
        async with asyncio.timeout(10):  # a bound for a broken build, far below the longer timeouts
            assert await post(pool, target, read=30.0) == b"{}"
            assert await post(pool, target, read=SHORT) == b"{}"  # arms a check SHORT ahead
            assert await post(pool, target, read=30.0) == b"{}"  # answered after 2.5 SHORT: no timeout
            response = await pool.request(target, HEADERS, b"{}", 5.0, 30.0, deadline=loop.time() + SHORT)
            assert await response.read() == b"{}"
            response.release()
            await asyncio.sleep(1.5 * SHORT)  # the deadline's check fires while the connection is idle
            started = loop.time()
            with pytest.raises(ReadTimeout):
                await post(pool, target, read=SHORT)  # after a 30 s timeout's check: due earlier
            assert loop.time() - started < 5
        assert accepted == [1]
        await pool.aclose()


async def test_no_head_within_the_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(silent) as (target, _):
        with pytest.raises(TimeoutError):
            await pool.request(target, HEADERS, b"{}", 5.0, SHORT)
        await pool.aclose()


async def test_an_answer_that_is_not_http() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(garbage) as (target, _):
        with pytest.raises(UpstreamConnectionError, match="invalid HTTP"):
            await post(pool, target)
        await pool.aclose()


async def test_a_reader_that_falls_behind_pauses_the_connection() -> None:
    total = 40 * HIGH_WATER

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        piece = b"x" * 16384
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(flood) as (target, _):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
        connection = response._connection
        # The upstream keeps sending; we read nothing until the connection pauses itself.
        await eventually(lambda: connection._paused, "the connection pauses reading")
        assert sum(map(len, connection.chunks)) < 4 * HIGH_WATER  # held back, not buffered whole
        assert len(await response.read()) == total
        response.release()
        await pool.aclose()


async def test_connection_refused_names_no_address() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30, proxies={})
    with pytest.raises(ConnectionRefused) as refused:
        await post(pool, Target.parse(f"http://user:s3cret@{HOST}:{port}/v1/complete"))
    assert str(refused.value) == "cannot connect: Connection refused"  # no address, no credentials
    await pool.aclose()


async def test_max_connections_makes_callers_wait_for_a_free_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.01)  # the other callers are waiting meanwhile
            writer.write(answer(b'{"n": %d}' % number))
            await writer.drain()

    pool = ConnectionPool(max_connections=1, keepalive_timeout=30)
    async with serve(slow) as (target, accepted):
        answers = await asyncio.gather(*(post(pool, target) for _ in range(4)))
        await pool.aclose()
    assert answers == [b'{"n": 1}'] * 4 and accepted == [1]


def test_targets() -> None:
    plain = Target.parse("http://127.0.0.1:8080/v1/complete")
    assert (plain.host, plain.port, plain.tls, plain.path, plain.host_header) == (
        "127.0.0.1",
        8080,
        False,
        "/v1/complete",
        "127.0.0.1:8080",
    )
    tls = Target.parse("https://api.anthropic.com/v1/complete")
    assert (tls.port, tls.tls, tls.host_header) == (443, True, "api.anthropic.com")
    v6 = Target.parse("http://[::1]:9000/v1/complete")
    assert (v6.host, v6.port, v6.host_header) == ("::1", 9000, "[::1]:9000")
    assert Target.parse("https://[2001:db8::1]/v1/complete").host_header == "[2001:db8::1]"
    assert Target.parse("http://user:pw@example.com/x?a=1").host_header == "example.com"
    with pytest.raises(ValueError) as bad_port:
        Target.parse("http://user:s3cret@example.com:99999999/v1/complete")
    assert "s3cret" not in str(bad_port.value)
    with pytest.raises(ValueError, match="not an http"):
        Target.parse("ftp://example.com/v1/complete")


# --- TLS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def serve_tls(ca: trustme.CA, handler: Handler) -> AsyncIterator[Target]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer, 1)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, HOST, 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target.parse(f"https://localhost:{port}/v1/complete")
    finally:
        server.close()


async def test_https_with_a_trusted_certificate(ca: trustme.CA) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30, tls=trusting)
    async with serve_tls(ca, keep_answering) as target:
        assert target.tls and target.port != 443
        assert (await post(pool, target)).startswith(b'{"n": 1,')
        assert (await post(pool, target)).startswith(b'{"n": 1,')  # kept alive over TLS too
        await pool.aclose()


async def test_https_refuses_a_certificate_the_system_does_not_trust(ca: trustme.CA) -> None:
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)  # the default: system CAs
    async with serve_tls(ca, keep_answering) as target:
        with pytest.raises(UpstreamConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(pool, target)
        await pool.aclose()


async def test_https_trusts_the_ca_named_by_ssl_cert_file(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How an operator adds a private CA (e.g. a TLS-inspecting egress proxy's): OpenSSL's variable."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)  # the default context, made on first use
    async with serve_tls(ca, keep_answering) as target:
        assert (await post(pool, target)).startswith(b'{"n": 1,')
        await pool.aclose()


# --- answers that are not one plain answer --------------------------------------------------------


def serve_once(*answers: bytes) -> Handler:
    """Answer request n with answers[n-1] (by connection order, then by request order), as written."""
    queue = list(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while queue:
            await read_request(reader)
            writer.write(queue.pop(0))
            await writer.drain()
        await reader.read()  # until the client hangs up

    return handler


async def test_interim_answers_are_skipped_and_the_final_one_is_returned() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n"
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(serve_once(interim + answer(b'{"n": 1}'), answer(b'{"n": 2}'))) as (target, accepted):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
        assert response.status == 200 and "link" not in response.headers
        assert await response.read() == b'{"n": 1}'
        response.release()
        assert await post(pool, target) == b'{"n": 2}'  # the connection was in step: reused safely
        await pool.aclose()
    assert accepted == [1]


async def test_interim_answers_split_across_writes() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        for piece in (
            b"HTTP/1.1 100 Cont",
            b"inue\r\n\r\n",
            b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.read()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(slow) as (target, _):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
        assert response.status == 201 and await response.read() == b"ok"
        response.release()
        await pool.aclose()


async def test_switching_protocols_is_an_error_and_closes() -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x00"
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(serve_once(switch, answer(b"{}"))) as (target, accepted):
        with pytest.raises(UpstreamProtocolError, match="101"):
            await post(pool, target)
        assert await post(pool, target) == b"{}"
        await pool.aclose()
    assert accepted == [1, 2]


async def test_trailers_never_become_headers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nrequest-id: real\r\n\r\n"
        b"2;ext=1\r\nhi\r\n0\r\nrequest-id: forged\r\nx-trailer: 1\r\n\r\n"
    )
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(serve_once(chunked, answer(b"{}"))) as (target, accepted):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
        assert await response.read() == b"hi"
        assert response.headers["request-id"] == "real" and "x-trailer" not in response.headers
        response.release()
        assert await post(pool, target) == b"{}"  # a trailer ends a chunked answer cleanly: reused
        await pool.aclose()
    assert accepted == [1]


async def test_repeated_headers_are_joined() -> None:
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    extra = b"x-a: 1\r\nRequest-Id: req_1\r\nX-A: 2\r\nrequest-id: req_2\r\n"
    async with serve(serve_once(answer(b"{}", extra))) as (target, _):
        response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
        assert response.request_id == "req_1, req_2"  # read aside at parse time, as `headers` has it
        response.compact()  # decoded now, the raw fields dropped: the same headers
        assert response.headers["x-a"] == "1, 2" and response.headers["request-id"] == "req_1, req_2"
        assert response._connection.fields == []  # nor kept by the connection (a stream holds it open)
        response.release()
        await pool.aclose()


@pytest.mark.parametrize(
    "extra",
    [
        b"junk",
        b'\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{"n": 9}',
        b'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{"n": 9}',
        b"\r",  # llhttp skips CR and LF between messages without a callback
        b"\r\n\r\n",
    ],
    ids=["junk", "crlf-then-answer", "second-answer", "cr", "blank-lines"],
)
@pytest.mark.parametrize("together", [True, False], ids=["same-write", "while-idle"])
async def test_bytes_after_the_answer_never_reach_the_next_request(extra: bytes, together: bool) -> None:
    """The same write, or a later one while the connection sits idle: either way it is not reused."""
    released = asyncio.Event()

    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b'{"n": %d}' % number))
            if not together:
                await writer.drain()
                await released.wait()  # the connection is back in the pool
            writer.write(extra)
            await writer.drain()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(answer_twice) as (target, accepted):
        assert await post(pool, target) == b'{"n": 1}'
        released.set()
        await eventually(
            lambda: not any(idle.keep_alive for idle in pool._idle.get(target.key, [])),
            "the late bytes reach the idle connection",
        )
        assert await post(pool, target) == b'{"n": 2}'
        await pool.aclose()
    assert accepted == [1, 2]


@pytest.mark.parametrize("size", [10, 100_000], ids=["short", "long"])
@pytest.mark.parametrize("stray", [b"", b"\n"], ids=["exact", "stray-lf"])
async def test_an_answer_ending_in_a_newline_is_reused_only_without_a_byte_after_it(
    size: int, stray: bytes
) -> None:
    """The answer's own last byte is LF (as a stray one after it would be): only the stray one spoils."""
    body = b"x" * (size - 1) + b"\n"

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(body) + stray)

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(reply) as (target, accepted):
        assert await post(pool, target) == body
        assert await post(pool, target) == body
        assert accepted == ([1, 2] if stray else [1])
        await pool.aclose()


async def test_unread_bytes_are_caught_before_a_reuse_even_when_the_loop_has_not_seen_them() -> None:
    """Junk that reached the socket after the answer, while the loop has not read it yet: the reuse
    looks first (a blocking thread server sends it while the test holds the loop)."""
    junk_now, junk_sent = threading.Event(), threading.Event()
    listener = socket.create_server((HOST, 0))
    accepted: list[int] = []

    def serve_connection(conn: socket.socket, number: int) -> None:
        with conn, contextlib.suppress(OSError):  # the client aborts connections it drops
            while request := conn.recv(65536):
                assert request.startswith(b"POST")
                conn.sendall(answer(b'{"n": %d}' % number))
                if number == 1 and not junk_sent.is_set():
                    junk_now.wait(5)
                    conn.sendall(answer(b'{"n": 9}'))
                    junk_sent.set()

    def accept_loop() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(len(accepted) + 1)
                threading.Thread(target=serve_connection, args=(conn, accepted[-1]), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    target = Target.parse(f"http://{HOST}:{listener.getsockname()[1]}/v1/complete")
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    try:
        assert await post(pool, target) == b'{"n": 1}'
        junk_now.set()
        assert junk_sent.wait(5)  # blocks the loop on purpose: it must not read the junk first
        assert await post(pool, target) == b'{"n": 2}'
        assert accepted == [1, 2]
        await pool.aclose()
    finally:
        listener.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0", "close-delimited"],
)
async def test_answers_that_end_the_connection_are_not_pooled(reply: bytes) -> None:
    async def once_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        if reply.endswith(b"\r\n\r\nok") and b"content-length" not in reply:
            return  # the close delimits the body
        await reader.read()  # keep the socket open until the client drops it: it must not wait for it

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(once_then_close) as (target, accepted):
        assert await post(pool, target) == b"ok"
        assert await post(pool, target) == b"ok"
        await pool.aclose()
    assert accepted == [1, 2]


async def test_no_body_for_head_204_and_304() -> None:
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    answers = (
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",  # HEAD: the length of what GET would send
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n",
        answer(b"{}"),
    )
    async with serve(serve_once(*answers)) as (target, accepted):
        response = await pool.request(target, HEADERS, b"", 5.0, 5.0, method="HEAD")
        assert response.status == 200 and await response.read() == b""
        response.release()
        for status in (204, 304):
            response = await pool.request(target, HEADERS, b"{}", 5.0, 5.0)
            assert response.status == status and await response.read() == b""
            response.release()
        assert await post(pool, target) == b"{}"
        await pool.aclose()
    assert accepted == [1]  # all four on one connection, each answer in step


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    ],
    ids=["te-gzip", "te-and-cl", "two-lengths", "status-099", "bad-chunk-size"],
)
async def test_bad_framing_is_an_error(reply: bytes) -> None:
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(serve_once(reply)) as (target, _):
        with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
            await post(pool, target)
        await pool.aclose()


# --- named connection errors ------------------------------------------------------------------------


async def test_an_unknown_host_name_is_a_dns_error() -> None:
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    with pytest.raises(NameResolutionError, match="host name could not be resolved") as failed:
        await post(pool, Target.parse("http://user:s3cret@no-such-host.invalid/v1/complete"))
    assert "Unknown error" not in str(failed.value) and "s3cret" not in str(failed.value)
    await pool.aclose()


async def test_a_tls_handshake_that_never_finishes_is_a_connect_timeout() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await reader.read()

    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    async with serve(mute) as (target, _):
        tls_target = Target.parse(f"https://{HOST}:{target.port}/v1/complete")
        with pytest.raises(ConnectTimeout, match="connect timeout"):
            await pool.request(tls_target, HEADERS, b"{}", SHORT, 5.0)
        await pool.aclose()


async def test_ipv6_literal_hosts() -> None:
    server = await asyncio.start_server(lambda r, w: keep_answering(r, w, 1), "::1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
    try:
        target = Target.parse(f"http://[::1]:{port}/v1/complete")
        body = await post(pool, target)
        assert body.startswith(b'{"n": 1,')
        await pool.aclose()
    finally:
        server.close()


async def test_https_refuses_a_certificate_for_another_host_name(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(server_context)
    server = await asyncio.start_server(lambda r, w: keep_answering(r, w, 1), HOST, 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30, tls=trusting)
    try:
        with pytest.raises(TLSVerificationError, match="Hostname mismatch") as mismatch:
            await post(pool, Target.parse(f"https://user:s3cret@localhost:{port}/v1/complete"))
        assert "s3cret" not in str(mismatch.value)
        await pool.aclose()
    finally:
        server.close()
