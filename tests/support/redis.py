"""A real `redis-server` on a free loopback port, for the tests of the Redis rate-limit backend.

Nothing is persisted (`--save '' --appendonly no`). The server can be stopped and started again on the
same port within a test, to check how the proxy behaves while Redis is down and after it returns.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import HOST, free_port

MISSING = (
    "redis-server is not installed, but the rate-limit tests need a real one: "
    "install it (`apt-get install -y redis-server`; .ci/run does this on CI) and run the tests again."
)


def redis_server_installed() -> bool:
    return shutil.which("redis-server") is not None


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(MISSING)
    return binary


@dataclass
class RedisServer:
    """A redis-server process; `stop()` and `start()` may be called repeatedly (same port, same password)."""

    port: int
    log_path: Path
    password: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self.log_path.read_text(errors='replace')}")
            if self._pong():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s")

    def stop(self) -> None:
        """Kill the server at once (as a crash would) and wait until the port is closed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def _pong(self) -> bool:
        """PING in RESP, authenticating first when the server has a password."""
        commands = b""
        if self.password:
            secret = self.password.encode()
            commands += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
        commands += b"*1\r\n$4\r\nPING\r\n"
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(commands)
                received = b""
                while b"PONG" not in received:
                    chunk = sock.recv(1024)
                    if not chunk:
                        return False
                    received += chunk
                return True
        except OSError:
            return False


@contextmanager
def run_redis(log_path: Path, password: str | None = None) -> Iterator[RedisServer]:
    """A started redis-server, killed when the block exits."""
    server = RedisServer(port=free_port(), log_path=log_path, password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
