"""Start the proxy and the mock upstream as real server processes on 127.0.0.1.

Every end-to-end test talks to real sockets: each server runs in its own Python process, started
exactly as a user would start it (`python -m proxy ...`), and is stopped with SIGTERM afterwards.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

HOST = "127.0.0.1"
FORWARD_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process and where to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process and wait for it; SIGKILL if it will not stop."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
        return int(self.process.returncode)

    def terminate(self) -> None:
        """SIGTERM the process if it still runs, without waiting (`stop` waits)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def _wait_for_port(process: subprocess.Popen[bytes], port_file: Path, log_path: Path, timeout: float) -> int:
    """The port the server wrote to its port file once listening (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise RuntimeError(f"server exited early ({process.returncode}):\n{log}")
        if port_file.exists():
            return int(port_file.read_text())
        time.sleep(0.02)
    raise RuntimeError(f"server did not listen within {timeout}s:\n{log_path.read_text(errors='replace')}")


@contextmanager
def run_server(
    args: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 20.0,
) -> Iterator[Server]:
    """Run `python -m proxy <args>` until the block exits.

    Without `port` the server binds port 0 and reports the port the kernel chose in its `--port-file`
    (no free-port-then-rebind race); either way the block starts once the server listens.
    """
    with _run_servers([(args, log_path)], env, port, timeout) as (server,):
        yield server


@contextmanager
def run_servers(
    runs: Sequence[tuple[Sequence[str], Path]], env: Mapping[str, str] | None = None, timeout: float = 20.0
) -> Iterator[list[Server]]:
    """`run_server` for each `(args, log_path)`, side by side: their start-ups (~0.15 s each, mostly
    imports) overlap, and so do their shut-downs."""
    with _run_servers(runs, env, None, timeout) as servers:
        yield servers


@contextmanager
def _run_servers(
    runs: Sequence[tuple[Sequence[str], Path]],
    env: Mapping[str, str] | None,
    port: int | None,
    timeout: float,
) -> Iterator[list[Server]]:
    # The upstream client honours HTTP(S)_PROXY/NO_PROXY: a server gets them only from `env`.
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "PROXY_")) and k.lower() not in FORWARD_PROXY_VARIABLES
    }
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    servers: list[Server] = []
    log_files: list[BinaryIO] = []
    try:
        for args, log_path in runs:
            port_file = log_path.with_name(log_path.name + ".port")
            port_file.unlink(missing_ok=True)
            command = [sys.executable, "-m", "proxy", *args, "--host", HOST, "--port", str(port or 0)]
            log_files.append(log_path.open("wb"))
            process = subprocess.Popen(
                [*command, "--port-file", str(port_file)],
                stdout=log_files[-1],
                stderr=subprocess.STDOUT,
                env=full_env,
            )
            servers.append(Server(process=process, port=port or 0, log_path=log_path))
        for server in servers:
            port_file = server.log_path.with_name(server.log_path.name + ".port")
            server.port = _wait_for_port(server.process, port_file, server.log_path, timeout)
        yield servers
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
        for log_file in log_files:
            log_file.close()


@functools.cache
def _helper_client() -> httpx.Client:
    """One client for the helpers below: building one (as each `httpx.get` does) costs ~20 ms of CPU for
    its TLS context, and they run hundreds of times. No keep-alive, so each call opens its own connection
    as `httpx.get` did; no proxy from the environment: these servers are on the loopback."""
    return httpx.Client(timeout=5, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))


def mock_requests(mock: Server) -> list[dict[str, object]]:
    """The upstream requests the mock has recorded, oldest first."""
    response = _helper_client().get(f"{mock.base_url}/_mock/requests")
    response.raise_for_status()
    records: list[dict[str, object]] = response.json()["requests"]
    return records


def mock_stats(mock: Server) -> dict[str, int]:
    """The mock's stream counters (active, completed, cancelled)."""
    response = _helper_client().get(f"{mock.base_url}/_mock/stats")
    response.raise_for_status()
    stats: dict[str, int] = response.json()
    return stats


def reset_mock(mock: Server) -> None:
    _helper_client().delete(f"{mock.base_url}/_mock/requests").raise_for_status()


def mock_outage(mock: Server, status: int | None = 529, retry_after: str | None = None) -> None:
    """Make every completion on `mock` fail with `status` (None ends the outage)."""
    url = f"{mock.base_url}/_mock/outage"
    if status is None:
        _helper_client().delete(url).raise_for_status()
    else:
        _helper_client().post(url, json={"status": status, "retry_after": retry_after}).raise_for_status()


def access_line(proxy: Server, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The proxy's access-log line for a request, waiting (bounded) until it has been written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proxy.log().splitlines():
            if request_id in line and '"event":"request"' in line:
                record: dict[str, Any] = json.loads(line)
                return record
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}")
