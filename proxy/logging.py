"""structlog set-up: JSON lines for machines, a readable console format in a terminal.

The proxy's own lines go through structlog straight to standard output. Every other library's lines
(uvicorn's, gunicorn's, asyncio's) arrive through the standard `logging` module; one root handler renders
them with the same processors, so every line of output has the configured format. uvicorn's access log
stays off: the proxy writes its own access line per request.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import structlog

from proxy.config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Query parameter names whose values are credentials (`?key=`, `?api_key=`, `?sig=`, `?token=` ...).
_SECRET_PARAM = re.compile(r"(key|token|secret|password|passwd|pwd|sig|signature|auth|credential)", re.I)


def redact_url(url: str) -> str:
    """`url` without its credentials, for logs: userinfo goes, key-like query values become `***`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _stdlib_json(event: Any, **kwargs: Any) -> str:
    return _json.dumps(event, default=str, separators=(",", ":"))


def configure_logging(config: LoggingConfig) -> None:
    """Configure structlog, and route the standard `logging` module's records through the same format."""
    json = config.format == "json" or (config.format == "auto" and not sys.stdout.isatty())
    level = _LEVELS[config.level]
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    stdlib_renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        stdlib_renderer = structlog.processors.JSONRenderer(serializer=_stdlib_json)
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory()
    else:
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        factory = structlog.PrintLoggerFactory()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            stdlib_renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "gunicorn", "gunicorn.error"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    for name in ("uvicorn.access", "gunicorn.access"):  # the proxy has its own access line
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = False
        named.disabled = True
