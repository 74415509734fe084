"""`python -m proxy serve`: load configuration, set up logging, run uvicorn."""

from __future__ import annotations

import sys

import structlog
import uvicorn

from proxy import __version__
from proxy.app import create_app
from proxy.config import ConfigError, load_config
from proxy.logging import configure_logging


def serve(config_path: str | None, host: str | None, port: int | None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    configure_logging(config.logging)
    upstream = config.upstream
    structlog.get_logger("proxy").info(
        "starting",
        version=__version__,
        listen=f"http://{config.server.host}:{config.server.port}",
        upstream=upstream.base_url,
        anthropic_version=upstream.anthropic_version,
        credentials="server key" if upstream.api_key else "pass-through (client's Bearer token)",
    )
    uvicorn.run(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        log_level=config.logging.level,
        access_log=False,
        server_header=False,
        loop="auto",
        http="auto",
    )
    return 0
