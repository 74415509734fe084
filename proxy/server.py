"""One uvicorn server process with graceful shutdown: what a single process and each worker run.

Each process builds its own app (and so its own upstream connections) from the configuration the
launcher (`proxy.launch`) loaded. On SIGTERM or SIGINT it stops accepting connections, lets requests and
streams run for up to `server.shutdown_timeout` seconds, ends what remains in-band (`proxy.http.drain`)
and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from proxy.app import create_app
from proxy.config import Config
from proxy.http.drain import Drain
from proxy.http.protocol import EdgeLimits, protocol_class
from proxy.portfile import bound_port, write_port_file

#: Time after the drain deadline for the in-band endings to be written before uvicorn cancels tasks.
_CLOSE_GRACE = 5.0
#: uvicorn's exit status when the app or the socket cannot start; gunicorn uses it for a worker too.
STARTUP_FAILURE = 3

_log = structlog.get_logger("proxy")


class ProxyServer(uvicorn.Server):
    """uvicorn's server plus the drain deadline; one per process (single mode, or a gunicorn worker)."""

    def __init__(
        self,
        uvicorn_config: uvicorn.Config,
        config: Config,
        *,
        port_file: Path | None = None,
        parent_pid: int | None = None,
    ) -> None:
        super().__init__(uvicorn_config)
        self.proxy_config = config
        self.drain = Drain()
        self.port_file = port_file
        #: A gunicorn worker's master: when it is gone, the worker drains and exits.
        self.parent_pid = parent_pid
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain = Drain()
        self._loop = asyncio.get_running_loop()
        try:
            self.config.app = create_app(self.proxy_config, self.drain)
        except Exception:
            _log.exception("startup_failed", pid=os.getpid())
            return
        self.config.loaded = False
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets is None:  # single mode: this process bound the socket
            port = bound_port(sock for server in self.servers for sock in server.sockets)
            if self.port_file is not None:
                write_port_file(self.port_file, port)
            _log.info("listening", host=self.config.host, port=port)

    async def on_tick(self, counter: int) -> bool:
        if (
            self.parent_pid is not None
            and counter % 10 == 0
            and not self.should_exit
            and os.getppid() != self.parent_pid
        ):
            self.begin_drain("master_gone")
            self.should_exit = True
        return await super().on_tick(counter)

    def begin_drain(self, reason: str) -> None:
        """Start the drain deadline (from any thread or a signal handler).

        It only hands the work to the loop. A signal handler runs in the middle of whatever the main
        thread was doing; if that was writing a log line, the log's lock is held, and a log line
        written here would wait for it forever (the process then ignored SIGTERM until killed)."""
        if self._loop is not None and not self.should_exit:
            self._loop.call_soon_threadsafe(self._start_drain, reason)

    def _start_drain(self, reason: str) -> None:
        timeout = self.proxy_config.server.shutdown_timeout
        self.drain.begin(timeout)
        _log.info("draining", signal=reason, deadline_s=timeout, pid=os.getpid())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.begin_drain(signal.Signals(sig).name)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """As uvicorn's, without re-raising the signal at the end: a drained shutdown exits with 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(config: Config, **overrides: Any) -> uvicorn.Config:
    """uvicorn's settings from ours; a gunicorn worker adds its heartbeat callback."""
    server = config.server
    limits = EdgeLimits(
        max_header_bytes=server.max_header_bytes,
        header_timeout=server.header_timeout,
        body_timeout=server.body_timeout,
    )
    return uvicorn.Config(
        "proxy.app:create_app",  # replaced by the app each worker builds in ProxyServer.serve
        host=server.host,
        port=server.port,
        log_level=config.logging.level,
        log_config=None,  # proxy.logging renders uvicorn's lines in the configured format
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the proxy never uses the client's address; skipping it saves per-request work
        loop="auto",
        http=protocol_class(limits),
        ws="none",
        lifespan="on",
        timeout_keep_alive=int(server.keepalive_timeout) or 1,
        timeout_graceful_shutdown=int(server.shutdown_timeout + _CLOSE_GRACE),
        **overrides,
    )
