"""Which model ids the proxy serves, and what each one means upstream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.config import ModelsConfig
from proxy.errors import model_not_found


@dataclass(frozen=True)
class ModelRegistry:
    """Served ids and aliases, resolved once from configuration."""

    served: tuple[str, ...]
    aliases: dict[str, str]
    pass_through_unknown: bool
    created: int
    owned_by: str

    @classmethod
    def from_config(cls, config: ModelsConfig) -> ModelRegistry:
        served = tuple(dict.fromkeys(config.served))
        return cls(
            served, dict(config.aliases), config.unknown == "pass_through", config.created, config.owned_by
        )

    def ids(self) -> list[str]:
        """Everything a client may send as `model`: served ids, then aliases, no duplicates."""
        return list(dict.fromkeys([*self.served, *self.aliases]))

    def resolve(self, model: str) -> str:
        """Client-facing id → upstream model id; 404 model_not_found for unknown ids unless passed through."""
        if model in self.aliases:
            return self.aliases[model]
        if model in self.served or self.pass_through_unknown:
            return model
        raise model_not_found(model)

    def card(self, model: str, allowed: Allowed | None = None) -> dict[str, Any]:
        """The OpenAI `Model` object for an id this proxy knows (and the caller may use); 404 otherwise."""
        if model not in self.aliases and model not in self.served:
            raise model_not_found(model)
        if allowed is not None and not allowed(model):
            raise model_not_found(model)
        return {"id": model, "object": "model", "created": self.created, "owned_by": self.owned_by}

    def listing(self, allowed: Allowed | None = None) -> dict[str, Any]:
        ids = self.ids()
        if allowed is not None:
            ids = [model for model in ids if allowed(model)]
        return {"object": "list", "data": [self.card(model) for model in ids]}


#: `client-facing id -> may the caller use it`.
Allowed = Callable[[str], bool]
