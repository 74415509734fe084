"""The per-process state every request shares: configuration, models, client keys, limits, upstream."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.auth import KeyRing
from proxy.config import Config
from proxy.limits import Limiter
from proxy.store.responses import MemoryStore, RedisStore, ResponseStore
from proxy.translate.models import ModelRegistry
from proxy.upstream.client import UpstreamClient


@dataclass
class Gateway:
    config: Config
    models: ModelRegistry
    keys: KeyRing
    limiter: Limiter
    upstream: UpstreamClient
    responses: ResponseStore

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        """Build everything; call inside the running event loop (the clients bind to it)."""
        return cls(
            config,
            ModelRegistry.from_config(config.models),
            KeyRing.from_config(config.auth, config.limits.default),
            Limiter.from_config(config.limits),
            UpstreamClient(config.upstream),
            response_store(config),
        )

    async def readiness(self) -> dict[str, str]:
        """Named checks, each "ok" or the reason it fails."""
        checks = {"config": "ok", "upstream_client": "ok" if not self.upstream.closed else "closed"}
        if self.config.limits.backend == "redis":
            checks["limits_backend"] = await self.limiter.ping()
        return checks

    async def aclose(self) -> None:
        try:
            await self.upstream.aclose()
        finally:
            try:
                await self.limiter.aclose()
            finally:
                await self.responses.aclose()


def response_store(config: Config) -> ResponseStore:
    """Where stored responses live: Redis when the limits share one, else this process's memory."""
    settings = config.responses
    if config.limits.backend == "redis" and config.limits.redis_url is not None:
        url = config.limits.redis_url.get_secret_value()
        prefix = config.limits.key_prefix + "response:"
        return RedisStore(url, prefix=prefix, ttl=settings.ttl_seconds, max_bytes=settings.max_bytes)
    return MemoryStore(
        ttl=settings.ttl_seconds,
        max_entries=settings.max_entries,
        max_bytes=settings.max_bytes,
        max_total_bytes=settings.max_total_bytes,
    )
