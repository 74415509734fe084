"""`python -m proxy serve`: load configuration, set up logging, run uvicorn with graceful shutdown.

Each worker process builds its own app (and so its own upstream connections) from the configuration
the parent loaded. On SIGTERM or SIGINT a worker stops accepting connections, lets requests and
streams run for up to `server.shutdown_timeout` seconds, ends what remains in-band
(`proxy.http.drain`) and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import structlog
import uvicorn

from proxy import __version__
from proxy.app import create_app
from proxy.config import Config, ConfigError, load_config
from proxy.http.drain import Drain
from proxy.http.metrics import prepare_multiprocess
from proxy.logging import configure_logging

#: Time after the drain deadline for the in-band endings to be written before uvicorn cancels tasks.
_CLOSE_GRACE = 5.0


class ProxyServer(uvicorn.Server):
    """uvicorn's server plus the drain deadline; picklable, so each worker process runs its own."""

    def __init__(self, uvicorn_config: uvicorn.Config, config: Config) -> None:
        super().__init__(uvicorn_config)
        self.proxy_config = config
        self.drain = Drain()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        configure_logging(self.proxy_config.logging)  # again: a spawned worker starts afresh
        self.drain = Drain()
        self._loop = asyncio.get_running_loop()
        self.config.app = create_app(self.proxy_config, self.drain)
        self.config.loaded = False
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None and not self.should_exit:
            timeout = self.proxy_config.server.shutdown_timeout
            self._loop.call_soon_threadsafe(self.drain.begin, timeout)
            structlog.get_logger("proxy").info(
                "draining", signal=signal.Signals(sig).name, deadline_s=timeout
            )
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


def _uvicorn_config(config: Config) -> uvicorn.Config:
    return uvicorn.Config(
        "proxy.app:create_app",  # replaced by the app each worker builds in ProxyServer.serve
        host=config.server.host,
        port=config.server.port,
        workers=config.server.workers,
        log_level=config.logging.level,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the proxy never uses the client's address; skipping it saves per-request work
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=int(config.server.shutdown_timeout + _CLOSE_GRACE),
    )


def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None = None) -> int:
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
    structlog.get_logger("proxy").info(
        "starting",
        version=__version__,
        listen=f"http://{config.server.host}:{config.server.port}",
        workers=config.server.workers,
        upstreams=len(upstream.pool) or 1,
        upstream=upstream.base_url if not upstream.pool else None,
        anthropic_version=upstream.anthropic_version,
        client_keys=len(config.auth.keys),
        limits_backend=config.limits.backend,
    )
    server = ProxyServer(_uvicorn_config(config), config)
    if config.server.workers == 1:
        server.run()
        return 0
    prepare_multiprocess(config.server.workers)
    return supervise(server.config, config)


def _worker(uvicorn_config: uvicorn.Config, config: Config, sockets: list[socket.socket]) -> None:
    """A worker process: its own server, app and upstream connections on the shared socket."""
    ProxyServer(uvicorn_config, config).run(sockets=sockets)


def supervise(uvicorn_config: uvicorn.Config, config: Config) -> int:
    """Run `server.workers` processes on one listening socket; restart any that dies; on SIGTERM or
    SIGINT pass the signal on and wait for their graceful shutdown (then kill what is left)."""
    log = structlog.get_logger("proxy")
    sock = uvicorn_config.bind_socket()
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(uvicorn_config, config, [sock]), daemon=False)
        process.start()
        return process

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = [start() for _ in range(config.server.workers)]
    try:
        while not stop.wait(0.5):
            for index, process in enumerate(workers):
                if not process.is_alive() and not stop.is_set():
                    log.error("worker_died", pid=process.pid, exitcode=process.exitcode)
                    workers[index] = start()
    finally:
        deadline = time.monotonic() + config.server.shutdown_timeout + _CLOSE_GRACE + 5
        for process in workers:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker drains
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0
