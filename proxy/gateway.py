"""The per-process state every request shares: configuration, model registry and the upstream client."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config
from proxy.translate.models import ModelRegistry
from proxy.upstream.client import UpstreamClient


@dataclass
class Gateway:
    config: Config
    models: ModelRegistry
    upstream: UpstreamClient

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        return cls(config, ModelRegistry.from_config(config.models), UpstreamClient(config.upstream))

    async def readiness(self) -> dict[str, str]:
        """Named checks, each "ok" or the reason it fails."""
        return {"config": "ok", "upstream_client": "ok" if not self.upstream.closed else "closed"}

    async def aclose(self) -> None:
        await self.upstream.aclose()
