"""`python -m proxy serve`: load the configuration, set up logging, and run one server or several workers.

One worker (the default) is one uvicorn process (`proxy.server`). With `--workers N` gunicorn's master
process (`proxy.workers`) holds the listening socket and runs N uvicorn workers: it restarts a worker
that crashes, stops the whole server when a worker fails at start-up, and its workers exit when it is
gone.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import structlog

from proxy import __version__
from proxy.config import Config, ConfigError, load_config
from proxy.http.metrics import prepare_multiprocess
from proxy.logging import configure_logging, redact_url
from proxy.server import STARTUP_FAILURE, ProxyServer, uvicorn_config

#: File descriptors the server asks for (up to the hard limit): each client connection holds one.
_OPEN_FILES = 65536

_log = structlog.get_logger("proxy")


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
