"""Egress through a real forward proxy: Debian's `tinyproxy`, started per test on a free 127.0.0.1 port
with a generated configuration (and failing, not skipping, when it is not installed).

Plain http upstreams are reached with absolute-form requests to the proxy, https ones through a
`CONNECT` tunnel with TLS to the upstream inside it (a trustme CA). That traffic really went through
the proxy is shown by tinyproxy's log, by the `Via` header it adds to what it forwards, and by the
failure once it is stopped. The proxy settings come from `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` or an
explicit mapping; every test sets them itself (environments often carry a `NO_PROXY` with localhost).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from proxy.upstream.http11 import ConnectionPool, ProxyError, Target
from tests.conftest import SERVER_KEY
from tests.support.servers import HOST, Server, free_port, mock_requests, run_server

PASSWORD = "pr0xy-s3cret"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "REQUEST_METHOD")


@dataclass
class Tinyproxy:
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def run_tinyproxy(directory: Path, *, basic_auth: tuple[str, str] | None = None) -> Iterator[Tinyproxy]:
    binary = shutil.which("tinyproxy") or (
        "/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None
    )
    if binary is None:
        pytest.fail(
            "tinyproxy is not installed: `bash scripts/setup.sh test` installs it (Debian package tinyproxy)"
        )
    port = free_port()
    log_path = directory / "tinyproxy.log"
    config = directory / "tinyproxy.conf"
    lines = [
        f"Port {port}",
        f"Listen {HOST}",
        "Timeout 30",
        f'LogFile "{log_path}"',
        "LogLevel Info",
        "MaxClients 50",
        f"Allow {HOST}",
        # No ConnectPort line: CONNECT is allowed to any port (the test upstreams' are random).
    ]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    config.write_text("\n".join(lines) + "\n")
    output = (directory / "tinyproxy.out").open("wb")
    process = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=output, stderr=subprocess.STDOUT)
    proxy = Tinyproxy(port, log_path, process)
    try:
        deadline = time.monotonic() + 10
        while "Accepting connections" not in (log_path.read_text() if log_path.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"tinyproxy did not start:\n{(directory / 'tinyproxy.out').read_text()}")
            time.sleep(0.02)
        yield proxy
    finally:
        proxy.stop()
        output.close()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    with run_tinyproxy(tmp_path) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@asynccontextmanager
async def upstream(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A raw HTTP/1.1 upstream on 127.0.0.1 that records each request head and answers `{"ok": n}`."""
    heads: list[bytes] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                body = b'{"ok": %d}' % len(heads)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, HOST, 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        server.close()


async def post(pool: ConnectionPool, url: str) -> tuple[int, bytes]:
    response = await pool.request(Target.parse(url), [("content-type", "application/json")], b"{}", 5.0, 10.0)
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def test_plain_http_goes_through_the_proxy_named_by_http_proxy(
    tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url())
    monkeypatch.setenv("NO_PROXY", "")
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30)  # the default: read the environment
    async with upstream() as (port, heads):
        assert await post(pool, f"http://{HOST}:{port}/v1/complete") == (200, b'{"ok": 1}')
        assert f"POST http://{HOST}:{port}/v1/complete HTTP/1.1" in tinyproxy.log()  # absolute-form
        assert b"\r\nvia: " in heads[0].lower() and b"tinyproxy" in heads[0]  # forwarded by the proxy
        tinyproxy.stop()
        with pytest.raises(ProxyError, match="cannot connect to the forward proxy: Connection refused"):
            await post(pool, f"http://{HOST}:{port}/v1/complete")  # no way around the proxy
        await pool.aclose()


async def test_no_proxy_bypasses_the_proxy(tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", tinyproxy.url())
    for no_proxy in (HOST, f"localhost,{HOST}", "127.0.0.0/8", "*"):
        monkeypatch.setenv("no_proxy", no_proxy)
        pool = ConnectionPool(max_connections=4, keepalive_timeout=30)
        async with upstream() as (port, heads):
            assert await post(pool, f"http://{HOST}:{port}/v1/complete") == (200, b'{"ok": 1}')
            assert b"via:" not in heads[0].lower(), no_proxy
            await pool.aclose()
    assert "POST http://" not in tinyproxy.log()


async def test_https_goes_through_a_connect_tunnel(
    tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url())
    monkeypatch.setenv("NO_PROXY", "")
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30, tls=trusting)
    async with upstream(server_context) as (port, heads):
        assert await post(pool, f"https://{HOST}:{port}/v1/complete") == (200, b'{"ok": 1}')
        assert f"CONNECT {HOST}:{port} HTTP/1.1" in tinyproxy.log()
        assert heads[0].startswith(b"POST /v1/complete HTTP/1.1")  # origin-form inside the tunnel
        assert b"via:" not in heads[0].lower()  # the proxy saw only TLS bytes
        assert await post(pool, f"https://{HOST}:{port}/v1/complete") == (200, b'{"ok": 2}')
        assert len(heads) == 2
        await pool.aclose()


async def test_https_through_the_tunnel_still_verifies_the_upstream(tinyproxy: Tinyproxy) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    pool = ConnectionPool(max_connections=4, keepalive_timeout=30, proxies={"https": tinyproxy.url()})
    async with upstream(server_context) as (port, _):
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):  # system CAs do not know trustme's
            await post(pool, f"https://{HOST}:{port}/v1/complete")
        await pool.aclose()


async def test_proxy_credentials_are_sent_and_never_shown(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with run_tinyproxy(tmp_path, basic_auth=("egress", PASSWORD)) as tinyproxy:
        good = {"http": tinyproxy.url(f"egress:{PASSWORD}@"), "https": tinyproxy.url(f"egress:{PASSWORD}@")}
        bad = {"http": tinyproxy.url("egress:wrong-pass@"), "https": tinyproxy.url("egress:wrong-pass@")}
        async with upstream() as (port, heads), upstream(server_context) as (tls_port, _):
            pool = ConnectionPool(max_connections=4, keepalive_timeout=30, tls=trusting, proxies=good)
            assert await post(pool, f"http://{HOST}:{port}/v1/complete") == (200, b'{"ok": 1}')
            assert b"proxy-authorization" not in heads[0].lower()  # the proxy consumes it
            assert (await post(pool, f"https://{HOST}:{tls_port}/v1/complete"))[0] == 200
            await pool.aclose()

            pool = ConnectionPool(max_connections=4, keepalive_timeout=30, tls=trusting, proxies=bad)
            # tinyproxy answers wrong credentials with 401 (an answer like any other), missing ones 407
            assert (await post(pool, f"http://{HOST}:{port}/v1/complete"))[0] == 401
            await pool.aclose()
            pool = ConnectionPool(max_connections=4, keepalive_timeout=30, proxies={"http": tinyproxy.url()})
            with pytest.raises(ProxyError, match="HTTP 407"):
                await post(pool, f"http://{HOST}:{port}/v1/complete")
            await pool.aclose()
            pool = ConnectionPool(max_connections=4, keepalive_timeout=30, tls=trusting, proxies=bad)
            with pytest.raises(ProxyError, match=r"refused the tunnel .*\(HTTP 40[17]\)") as refused:
                await post(pool, f"https://{HOST}:{tls_port}/v1/complete")
            assert "wrong-pass" not in str(refused.value) and "egress" not in str(refused.value)
            await pool.aclose()
        tinyproxy.stop()
        pool = ConnectionPool(max_connections=4, keepalive_timeout=30, proxies=good)
        with pytest.raises(ProxyError) as unreachable:
            await post(pool, f"http://{HOST}:{port}/v1/complete")
        assert PASSWORD not in str(unreachable.value) and PASSWORD not in repr(
            pool.proxy_for(Target.parse("http://x"))
        )
        await pool.aclose()


def test_unusable_proxy_settings_fail_at_start_without_the_password() -> None:
    with pytest.raises(ValueError, match="only http:// proxies") as socks:
        ConnectionPool(
            max_connections=1, keepalive_timeout=1, proxies={"https": f"socks5://u:{PASSWORD}@h:1080"}
        )
    with pytest.raises(ValueError, match="not a valid URL") as port:
        ConnectionPool(
            max_connections=1, keepalive_timeout=1, proxies={"http": f"http://u:{PASSWORD}@h:port"}
        )
    assert PASSWORD not in str(socks.value) + str(port.value)


def test_the_proxy_process_answers_through_tinyproxy(
    tinyproxy: Tinyproxy, mock_upstream: Server, tmp_path: Path
) -> None:
    """`python -m proxy serve` with HTTP_PROXY set reaches the mock upstream only through tinyproxy."""
    env = {
        "ANTHROPIC_BASE_URL": mock_upstream.base_url,
        "ANTHROPIC_API_KEY": SERVER_KEY,
        "HTTP_PROXY": tinyproxy.url(),
        "NO_PROXY": "",  # the environment may exempt 127.0.0.1: this test needs the proxy used
        "PROXY_UPSTREAM__MAX_RETRIES": "0",
    }
    body = {"model": "claude-2.1", "messages": [{"role": "user", "content": "Hello through tinyproxy"}]}
    with run_server(["serve"], tmp_path / "proxy.log", env=env) as server:
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
        assert f"POST http://{HOST}:{mock_upstream.port}/v1/complete HTTP/1.1" in tinyproxy.log()
        recorded = mock_requests(mock_upstream)
        assert any("Hello through tinyproxy" in str(record) for record in recorded)
        tinyproxy.stop()
        failed = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        error = failed.json()["error"]  # no direct route around the proxy
        assert failed.status_code == 502 and error["code"] == "upstream_connection_error"
        assert "cannot connect to the forward proxy" in error["message"]
