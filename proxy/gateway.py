"""The per-process state every request shares: configuration, models, client keys, limits, upstream."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.auth import KeyRing
from proxy.config import CacheConfig, Config, ResponsesConfig
from proxy.limits import Limiter
from proxy.store.cache import ResponseCache
from proxy.store.kv import KeyValue, MemoryKeyValue, RedisKeyValue
from proxy.store.responses import ResponseStore
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
    cache: ResponseCache | None

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        """Build everything; call inside the running event loop (the clients bind to it)."""
        return cls(
            config,
            ModelRegistry.from_config(config.models),
            KeyRing.from_config(config.auth, config.limits.default),
            Limiter.from_config(config.limits),
            UpstreamClient(config.upstream),
            ResponseStore(_values(config, config.responses, "response")),
            ResponseCache(_values(config, config.cache, "cache")) if config.cache.enabled else None,
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
                if self.cache is not None:
                    await self.cache.aclose()


def _values(config: Config, settings: ResponsesConfig | CacheConfig, name: str) -> KeyValue:
    """Redis when the limits share one (so every replica sees the same values), else this process."""
    if config.limits.backend == "redis" and config.limits.redis_url is not None:
        return RedisKeyValue(
            config.limits.redis_url.get_secret_value(),
            prefix=f"{config.limits.key_prefix}{name}:",
            ttl=settings.ttl_seconds,
            max_bytes=settings.max_bytes,
        )
    return MemoryKeyValue(
        ttl=settings.ttl_seconds,
        max_entries=settings.max_entries,
        max_bytes=settings.max_bytes,
        max_total_bytes=settings.max_total_bytes,
    )
