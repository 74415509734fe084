"""`--workers N`: gunicorn's master process runs N uvicorn workers on one listening socket.

gunicorn is the process manager (configured here from our `Config`, not from a gunicorn file or its
command line); each worker is `uvicorn-worker`'s worker running our `ProxyServer`, so a worker serves,
drains and logs exactly as the single-process server does. What gunicorn brings:

- SIGTERM (or SIGINT) to the master reaches every worker, which drains; the master waits up to
  `shutdown_timeout` plus a grace period, then exits 0.
- A worker that crashes while serving is replaced. A worker that fails at start-up stops the server:
  the master exits with status 3 ("Worker failed to boot") instead of restarting it in a loop.
- A worker whose master is gone (SIGKILL) notices within a second, drains and exits: no orphans.
- A dead worker's live gauges are dropped from the shared metrics directory (`child_exit`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.workers.base import Worker
from prometheus_client import multiprocess
from uvicorn_worker import UvicornWorker

from proxy.config import Config
from proxy.http.metrics import MULTIPROC_ENV
from proxy.portfile import bound_port, write_port_file
from proxy.server import _CLOSE_GRACE, ProxyServer, uvicorn_config

_log = structlog.get_logger("proxy")


class ProxyWorker(UvicornWorker):  # type: ignore[misc]
    """A gunicorn worker running `ProxyServer` with our uvicorn settings."""

    app: ProxyApplication

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn-worker points uvicorn's loggers at gunicorn's handlers; ours render every line instead.
        for name in ("uvicorn", "uvicorn.error"):
            logger = glogging.logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
        self.config = uvicorn_config(
            self.app.proxy_config,
            timeout_notify=self.timeout,
            callback_notify=self.callback_notify,
        )

    async def _serve(self) -> None:
        server = ProxyServer(self.config, self.app.proxy_config, parent_pid=self.ppid)
        # gunicorn's quick shutdown (SIGQUIT from the master on SIGINT): drain as for SIGTERM.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None
        )
        # The sockets themselves, not gunicorn's wrappers: uvicorn closes them at shutdown, and a wrapper
        # would log EBADF (the event loop has closed the descriptor already).
        await server.serve(sockets=[listener.sock for listener in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's lines go to the root logger, which `proxy.logging` renders; no access log."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), glogging.logging.INFO)
        self.error_log.setLevel(self.loglevel)
        self.error_log.handlers.clear()
        self.error_log.propagate = True
        self.access_log.handlers.clear()
        self.access_log.propagate = False
        self.access_log.disabled = True

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        pass


class ProxyApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from our `Config`: no gunicorn file, command line or GUNICORN_CMD_ARGS."""

    def __init__(self, config: Config, *, port_file: Path | None = None) -> None:
        self.proxy_config = config
        self.port_file = port_file
        super().__init__()

    def load_config(self) -> None:
        server = self.proxy_config.server
        host = f"[{server.host}]" if ":" in server.host else server.host
        settings: dict[str, Any] = {
            "bind": [f"{host}:{server.port}"],
            "workers": server.workers,
            "worker_class": "proxy.workers.ProxyWorker",
            "logger_class": "proxy.workers.GunicornLogger",
            "loglevel": self.proxy_config.logging.level,
            "accesslog": None,
            "keepalive": int(server.keepalive_timeout) or 1,
            # Workers drain for shutdown_timeout, then end what remains in-band: wait for that.
            "graceful_timeout": int(server.shutdown_timeout + 2 * _CLOSE_GRACE),
            "proc_name": "claude-legacy-proxy",
            "control_socket_disable": True,  # gunicorn 24+'s gunicornc socket: not used, not wanted in $HOME
            "when_ready": self.when_ready,
            "child_exit": child_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Config:
        """gunicorn's "application"; each `ProxyWorker` builds the real app from it."""
        return self.proxy_config

    def when_ready(self, arbiter: Arbiter) -> None:
        port = bound_port(listener.sock for listener in arbiter.LISTENERS)
        if self.port_file is not None:
            write_port_file(self.port_file, port)
        _log.info("listening", host=self.proxy_config.server.host, port=port)


def child_exit(arbiter: Arbiter, worker: Worker) -> None:
    """In the master, after a worker exited: its live gauges no longer count (prometheus-client's advice)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def run_workers(config: Config, *, port_file: Path | None = None) -> int:
    """Run gunicorn's master until it stops; its exit status (0 after a drained shutdown)."""
    try:
        ProxyApplication(config, port_file=port_file).run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except HaltServer as halt:
        # Two workers failing to boot at once: gunicorn's halt meets the second failure while stopping
        # and raises it instead of exiting. Same outcome, same status.
        _log.error("halted", reason=halt.reason, exit_code=halt.exit_status)
        return int(halt.exit_status)
    return 0
