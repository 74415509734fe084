"""Hostile clients against a real `python -m proxy serve` process, over raw sockets.

The server edge (`proxy/http/protocol.py`) caps the request head (431), times out a head that does not
arrive (408, or a plain close for a connection that sent nothing) and a body that stalls (408), and
answers these, and unparsable requests (400), with OpenAI's error envelope and `connection: close`.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import StartProxy
from tests.support.servers import HOST, Server

MIB = 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it

    def envelope(self) -> dict[str, object]:
        assert self.headers["content-type"] == "application/json"
        assert self.headers["connection"] == "close"
        document: dict[str, object] = json.loads(self.body)
        error = document["error"]
        assert isinstance(error, dict)
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None
        return error


@contextmanager
def connect(server: Server) -> Iterator[socket.socket]:
    sock = socket.create_connection((HOST, server.port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def read_answer(sock: socket.socket, timeout: float = 15.0) -> Answer:
    """Everything the server sends until it closes the connection (bounded in time and size)."""
    data = b""
    closed = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(data) < MIB:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0]:
        return Answer(0, {}, b"", closed)
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body, closed)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server lets through; it may close the connection part way (that is the point)."""
    with suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def healthz(server: Server) -> int:
    return httpx.get(f"{server.base_url}/healthz", timeout=10).status_code


def test_an_oversized_head_gets_431_and_the_connection_closes(start_proxy: StartProxy) -> None:
    with start_proxy() as server, connect(server) as sock:
        send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (40 * 1024))
        answer = read_answer(sock)
        assert answer.status == 431
        assert answer.envelope()["code"] == "request_header_fields_too_large"
        assert answer.closed
        assert healthz(server) == 200
    assert '"event":"http_rejected"' in server.log()


def test_the_head_limit_is_configurable_and_a_body_in_the_same_read_is_not_counted(
    start_proxy: StartProxy,
) -> None:
    """A 40 KiB head passes with `max_header_bytes: 65536`; a head just under the limit sent in one
    write with a 200 KiB body is a normal request (the body is not part of the head)."""
    with start_proxy(config={"server": {"max_header_bytes": 65536}}) as server:
        big = {"x-big": "a" * (40 * 1024)}
        assert httpx.get(f"{server.base_url}/healthz", headers=big, timeout=10).status_code == 200
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 60000 + b"\r\n"
        body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "h" * 200000}]})
        request = head + f"content-type: application/json\r\ncontent-length: {len(body)}\r\n".encode()
        with connect(server) as sock:
            sock.sendall(request + b"connection: close\r\n\r\n" + body.encode())
            answer = read_answer(sock)
        assert answer.status == 200, answer.body[:300]


def test_a_request_line_that_does_not_parse_gets_400_in_the_envelope(start_proxy: StartProxy) -> None:
    with start_proxy() as server, connect(server) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        answer = read_answer(sock)
        assert answer.status == 400
        assert answer.envelope()["code"] == "invalid_request"
        assert answer.closed


def test_a_slow_head_gets_408_and_a_silent_connection_is_closed(start_proxy: StartProxy) -> None:
    config = {"server": {"header_timeout": 1}}
    with start_proxy(config=config) as server, connect(server) as slow, connect(server) as silent:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = read_answer(slow)
        assert answer.status == 408
        assert answer.envelope()["code"] == "request_timeout"
        assert answer.closed
        quiet = read_answer(silent)
        assert quiet.status == 0  # nothing to answer: just closed
        assert quiet.closed


def test_a_slow_second_head_on_a_kept_alive_connection_gets_408(start_proxy: StartProxy) -> None:
    config = {"server": {"header_timeout": 1, "keepalive_timeout": 30}}
    with start_proxy(config=config) as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, "closed after the first request"
            first += chunk
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = read_answer(sock)
        assert answer.status == 408
        assert answer.envelope()["code"] == "request_timeout"


def test_kept_alive_and_pipelined_requests_still_work(start_proxy: StartProxy) -> None:
    with start_proxy(config={"server": {"max_header_bytes": 1024}}) as server:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for _ in range(20):  # 20 heads over one connection: more than the limit in total
                assert client.get("/healthz").status_code == 200
        with connect(server) as sock:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_answer(sock)
        assert answer.status == 200
        assert answer.body.count(b"HTTP/1.1 200") == 3  # the three after the first


def test_a_stalled_body_gets_408(start_proxy: StartProxy) -> None:
    with start_proxy(config={"server": {"body_timeout": 1}}) as server, connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + b'{"model": "gpt-4", '
        )
        answer = read_answer(sock)
        assert answer.status == 408
        assert answer.envelope()["code"] == "request_timeout"
        assert answer.closed
        assert healthz(server) == 200
    # The app saw the client go away while it read the body (its access line says so); what the
    # client saw is the 408 above.


def test_a_slow_but_moving_body_is_not_cut(start_proxy: StartProxy) -> None:
    """The body timeout is the longest silence, not the whole upload."""
    body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with start_proxy(config={"server": {"body_timeout": 1}}) as server, connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        pieces = [body[i : i + 10] for i in range(0, len(body), 10)]
        for piece in pieces[:-1]:
            sock.sendall(piece)
            time.sleep(0.3)  # pacing the upload (3 s in all) is the behaviour under test, not a wait
        sock.sendall(pieces[-1])
        answer = read_answer(sock)
    assert answer.status == 200, answer.body[:300]


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, f"ulimit -Hn {hard} < {wanted}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_500_slowloris_connections_do_not_stop_a_normal_client(start_proxy: StartProxy) -> None:
    count = 500
    _raise_fd_limit(count * 2 + 256)
    with start_proxy(config={"server": {"header_timeout": 5}}) as server, ExitStack() as stack:
        before = rss_kib(server.process.pid)
        slow = []
        for index in range(count):
            sock = stack.enter_context(connect(server))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow-%d: " % index)
            slow.append(sock)
        deadline = time.monotonic() + 5
        while open_fds(server.process.pid) < count and time.monotonic() < deadline:
            time.sleep(0.02)  # the proxy accepts them from its backlog
        held = open_fds(server.process.pid)
        assert held >= count  # all of them are open in the proxy now
        # A normal client is served while all of them are open.
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=10)
        assert answer.status_code == 200
        # Every slow connection gets its 408 and is closed (header_timeout, plus a bounded margin).
        pending = set(slow)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(list(pending)[:1000], [], [], 1.0)
            for sock in readable:
                answer_ = read_answer(sock, timeout=5)
                assert answer_.status == 408
                assert answer_.closed
                pending.discard(sock)
        assert not pending
        grown_mib = (rss_kib(server.process.pid) - before) / 1024
        assert grown_mib < 64, f"RSS grew {grown_mib:.1f} MiB for {count} slow connections"
        deadline = time.monotonic() + 10
        while open_fds(server.process.pid) > held - count + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds(server.process.pid) <= held - count + 20  # the proxy let go of them


def test_unfinished_8_mb_heads_do_not_grow_memory(start_proxy: StartProxy) -> None:
    """20 connections each sending 8 MB of a head that never ends: each is refused at 32 KiB with
    431 and closed; the proxy's memory stays bounded (it was +176 MiB before the cap)."""
    with start_proxy() as server:
        assert healthz(server) == 200
        before = rss_kib(server.process.pid)
        answers: list[Answer] = []
        lock = threading.Lock()

        def hostile() -> None:
            with connect(server) as sock:
                send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"h" * (8 * MIB))
                answer = read_answer(sock)
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=hostile) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after = rss_kib(server.process.pid)
        assert healthz(server) == 200
    assert len(answers) == 20
    assert all(answer.status == 431 and answer.closed for answer in answers), [a.status for a in answers]
    grown_mib = (after - before) / 1024
    assert grown_mib < 24, f"RSS grew {grown_mib:.1f} MiB"
