"""Client keys: who is calling and which models they may use.

Keys are kept only as SHA-256 digests, whether configured as a hash or read from the environment. A
presented token is hashed and compared with every configured digest in constant time, without stopping
at a match, so neither the comparison nor the position of the matching key shows in the timing.

| Request | Answer |
|---|---|
| no `Authorization: Bearer` (nor `x-api-key`) | 401 `invalid_api_key`, "You didn't provide an API key…" |
| a token that matches no key | 401 `invalid_api_key`, "Incorrect API key provided." (the token is not echoed) |
| a model the key may not use | 403 `model_not_found`, as OpenAI answers for a project without access |
| `GET /v1/models` | only the models the key may use; others answer 404 on `GET /v1/models/{id}` |
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config import AuthConfig, ClientKey
from proxy.errors import OpenAIError
from proxy.limits import KeyLimits

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
INVALID_KEY_MESSAGE = "Incorrect API key provided. Ask the operator of this gateway for a valid key."


@dataclass(frozen=True)
class Caller:
    """An authenticated client key, by name."""

    name: str
    limits: KeyLimits
    models: frozenset[str] | None  # None: every model

    def may_use(self, model: str) -> bool:
        """By the id the client asks for: an alias is a model of its own here, listed or not."""
        return self.models is None or model in self.models


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _configured_digest(key: ClientKey) -> bytes:
    if key.key_sha256 is not None:
        return bytes.fromhex(key.key_sha256)
    assert key.key is not None, "config resolves key_env into key"
    return _digest(key.key.get_secret_value())


class KeyRing:
    """The configured client keys; `enabled` is False when there are none (no client auth)."""

    def __init__(self, entries: list[tuple[bytes, Caller]]) -> None:
        self._entries = entries
        self.enabled = bool(entries)

    @classmethod
    def from_config(cls, auth: AuthConfig, default_limits: KeyLimits) -> KeyRing:
        entries = []
        for key in auth.keys:
            digest = _configured_digest(key)
            models = frozenset(key.models) if key.models is not None else None
            entries.append((digest, Caller(key.name, key.limits or default_limits, models)))
        return cls(entries)

    def identify(self, token: str) -> Caller | None:
        digest = _digest(token)
        found: Caller | None = None
        for candidate, caller in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = caller
        return found

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller presenting these headers, or the 401 OpenAI answers."""
        token = bearer_token(headers)
        if token is None:
            raise missing_key()
        caller = self.identify(token)
        if caller is None:
            raise OpenAIError(401, INVALID_KEY_MESSAGE, type="invalid_request_error", code="invalid_api_key")
        return caller


def missing_key(hint: str = "") -> OpenAIError:
    """OpenAI's 401 for a request without a key (`hint` says what the key is used for here)."""
    return OpenAIError(401, MISSING_KEY_MESSAGE + hint, type="invalid_request_error", code="invalid_api_key")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <token>`, else `x-api-key` (what Anthropic-style clients send)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return headers.get("x-api-key", "").strip() or None


def model_forbidden(caller: Caller, model: str) -> OpenAIError:
    return OpenAIError(
        403,
        f"Key '{caller.name}' does not have access to model `{model}`.",
        type="invalid_request_error",
        code="model_not_found",
    )


def hash_key(key: str) -> str:
    """The `key_sha256` value for a key (`python -m proxy hash-key`)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
