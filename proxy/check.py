"""`python -m proxy check-config`: validate a configuration without starting the proxy.

Exit status 0 with a summary on standard output, or 2 with the validation errors on standard error.
Neither ever holds a secret: keys are named by their configured name and where they come from, URLs
lose any user:password part, and the errors never quote the file (see `proxy.config`).
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from proxy.config import ClientKey, Config, ConfigError, load_config
from proxy.limits import KeyLimits


def _url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _limits(limits: KeyLimits | None) -> str:
    if limits is None:
        return "default limits"
    fields = limits.model_dump(exclude_none=True)
    return ", ".join(f"{name}={value}" for name, value in fields.items()) or "unlimited"


def _key(key: ClientKey) -> str:
    source = "sha256 in file" if key.key_sha256 else f"env {key.key_env}" if key.key_env else "key inline"
    models = "all models" if key.models is None else f"{len(key.models)} model(s)"
    return f"{key.name} ({source}; {_limits(key.limits)}; {models})"


def summary(config: Config) -> list[str]:
    upstream = config.upstream
    server_key = (
        "server key set" if upstream.api_key is not None else "no server key: clients' keys pass through"
    )
    if upstream.pool:
        entries = ", ".join(f"{e.name or _url(e.base_url)} (weight {e.weight})" for e in upstream.pool)
        upstream_line = f"pool of {len(upstream.pool)}: {entries}; {server_key}"
    else:
        upstream_line = f"{_url(upstream.base_url)}; {server_key}"
    keys = config.auth.keys
    cors = config.cors
    origins = [*cors.allow_origins, *([f"/{cors.allow_origin_regex}/"] if cors.allow_origin_regex else [])]
    return [
        f"listen: http://{config.server.host}:{config.server.port}, workers {config.server.workers}",
        f"upstream: {upstream_line}",
        f"models: {len(config.models.served)} served, {len(config.models.aliases)} aliases, "
        f"unknown models: {config.models.unknown}",
        f"client keys: {len(keys)}" + ("" if keys else " (no client authentication)"),
        *(f"  - {_key(key)}" for key in keys),
        f"limits: backend {config.limits.backend}, default {_limits(config.limits.default)}",
        f"cors: {'allowed origins ' + ', '.join(origins) if cors.enabled else 'off'}",
    ]


def check_config(path: str | None) -> int:
    """Validate `path` (None: the environment only) as `serve` would, environment included."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2
    print(f"configuration OK ({path or 'environment only'})")
    for line in summary(config):
        print(f"  {line}")
    return 0
