"""The per-process state every request shares: configuration, models, client keys, limits, upstream."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from proxy.auth import KeyRing
from proxy.config import CacheConfig, Config, ConfigError, Reload, ResponsesConfig, reload_config
from proxy.limits import Limiter, limiter_for
from proxy.store.cache import ResponseCache
from proxy.store.kv import KeyValue, MemoryKeyValue, RedisKeyValue
from proxy.store.responses import ResponseStore
from proxy.translate.models import ModelRegistry
from proxy.upstream.client import UpstreamClient

log = structlog.get_logger("proxy.reload")


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
            limiter_for(config.limits),
            UpstreamClient(config.upstream),
            ResponseStore(_values(config, config.responses, "response")),
            ResponseCache(_values(config, config.cache, "cache")) if config.cache.enabled else None,
        )

    def reload(self) -> Reload | None:
        """Re-read the configuration (on SIGHUP) and swap in what may change at runtime: client keys with
        their limits and models, the model list, the generation settings.

        Everything new is built before anything is swapped, and the swap runs between two awaits, so a
        request sees either the old or the new keys. A request already authenticated keeps its `Caller`
        (name, limits, models) until it ends; the limiter keeps its counters, which are per key name, so
        a changed limit applies to what the key has already used. A configuration that cannot be used is
        refused with an error line and the running one stays. Never raises.
        """
        try:
            outcome = reload_config(self.config)
            models = ModelRegistry.from_config(outcome.config.models)
            keys = KeyRing.from_config(outcome.config.auth, outcome.config.limits.default)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="the running configuration")
            return None
        except Exception as exc:  # a bug must not take the signal handler (or the old keys) down
            log.error("config_reload_failed", error=type(exc).__name__, kept="the running configuration")
            return None
        before = {key.name: key for key in self.config.auth.keys}
        after = {key.name: key for key in outcome.config.auth.keys}
        self.config, self.models, self.keys = outcome.config, models, keys
        log.info(
            "config_reloaded",
            changed=outcome.changed,
            client_keys=len(after),
            keys_added=sorted(after.keys() - before.keys()),
            keys_removed=sorted(before.keys() - after.keys()),
            keys_changed=sorted(name for name in after.keys() & before.keys() if after[name] != before[name]),
        )
        if outcome.needs_restart:
            log.warning(
                "config_reload_needs_restart",
                sections=outcome.needs_restart,
                detail="changed in the file; these sections keep their running values until a restart",
            )
        return outcome

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
