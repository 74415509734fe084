"""`python -m proxy serve`: load configuration, set up logging, run uvicorn with graceful shutdown.

One worker (the default) is one uvicorn process. With `--workers N` gunicorn's master process
(`proxy.workers`) holds the listening socket and runs N uvicorn workers: it restarts a worker that
crashes, stops the whole server when a worker fails at start-up, and its workers exit when it is gone.

Each worker process builds its own app (and so its own upstream connections) from the configuration
the parent loaded. On SIGTERM or SIGINT a worker stops accepting connections, lets requests and
streams run for up to `server.shutdown_timeout` seconds, ends what remains in-band
(`proxy.http.drain`) and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from proxy import __version__
from proxy.app import create_app
from proxy.config import Config, ConfigError, load_config
from proxy.http.drain import Drain
from proxy.http.metrics import prepare_multiprocess
from proxy.http.protocol import EdgeLimits, protocol_class
from proxy.logging import configure_logging, redact_url
from proxy.portfile import bound_port, write_port_file

#: Time after the drain deadline for the in-band endings to be written before uvicorn cancels tasks.
_CLOSE_GRACE = 5.0
#: uvicorn's exit status when the app or the socket cannot start; gunicorn uses it for a worker too.
STARTUP_FAILURE = 3
#: File descriptors the server asks for (up to the hard limit): each client connection holds one.
_OPEN_FILES = 65536

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
        """Start the drain deadline (from any thread or a signal handler)."""
        if self._loop is not None and not self.should_exit:
            timeout = self.proxy_config.server.shutdown_timeout
            self._loop.call_soon_threadsafe(self.drain.begin, timeout)
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


def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None = None,
    *,
    port_file: str | None = None,
) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    if workers is not None:
        if workers < 1:
            print("proxy: --workers must be at least 1", file=sys.stderr)
            return 2
        config.server.workers = workers
    configure_logging(config.logging)
    upstream = config.upstream
    _log.info(
        "starting",
        version=__version__,
        listen=f"http://{config.server.host}:{config.server.port}",
        workers=config.server.workers,
        upstreams=len(upstream.pool) or 1,
        upstream=redact_url(upstream.base_url) if not upstream.pool else None,
        pool=[redact_url(entry.base_url) for entry in upstream.pool] or None,
        anthropic_version=upstream.anthropic_version,
        client_keys=len(config.auth.keys),
        limits_backend=config.limits.backend,
    )
    _raise_open_files_limit()
    path = Path(port_file) if port_file else None
    if config.server.workers == 1:
        return _run_single(config, path)
    from proxy.workers import run_workers  # gunicorn only when it is used

    prepare_multiprocess(config.server.workers)
    return run_workers(config, port_file=path)


def _run_single(config: Config, port_file: Path | None) -> int:
    server = ProxyServer(uvicorn_config(config), config, port_file=port_file)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits so when the app or the socket cannot start
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else STARTUP_FAILURE  # ProxyServer.serve logged why


def _raise_open_files_limit() -> None:
    """Each connection holds a file descriptor: take what the hard limit allows (up to _OPEN_FILES)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
