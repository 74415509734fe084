"""Configuration: one validated pydantic model, loaded from YAML and then the environment.

Precedence, lowest first: defaults < YAML file < `ANTHROPIC_*` variables < `PROXY_SECTION__KEY` variables.
Every key is documented in `config.example.yaml`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.limits.config import KeyLimits, LimitsConfig

ENV_PREFIX = "PROXY_"

#: Models named in the upstream API reference, plus the ones /v1/complete historically served.
DEFAULT_SERVED_MODELS: tuple[str, ...] = (
    "claude-2.1",
    "claude-2.0",
    "claude-instant-1.2",
    "claude-opus-4-5",
    "claude-opus-4-5-20251101",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-1-20250805",
    "claude-opus-4-0",
    "claude-opus-4-20250514",
    "claude-4-opus-20250514",
    "claude-sonnet-4-0",
    "claude-sonnet-4-20250514",
    "claude-4-sonnet-20250514",
    "claude-3-7-sonnet-latest",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest",
    "claude-3-5-haiku-20241022",
    "claude-3-opus-latest",
    "claude-3-opus-20240229",
    "claude-3-haiku-20240307",
)

#: OpenAI model names that existing tools hard-code, mapped to legacy Claude models.
DEFAULT_ALIASES: dict[str, str] = {
    "gpt-3.5-turbo": "claude-instant-1.2",
    "gpt-3.5-turbo-instruct": "claude-instant-1.2",
    "gpt-4": "claude-2.1",
    "gpt-4-turbo": "claude-2.1",
    "gpt-4o": "claude-2.1",
    "gpt-4o-mini": "claude-instant-1.2",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Worker processes; each holds its own upstream connections and in-process limits. 1: one uvicorn
    #: process; more: gunicorn runs that many uvicorn workers on the one listening socket.
    workers: int = Field(1, ge=1, le=64)
    #: Largest request head (request line and headers together); a larger one gets 431.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    #: Seconds a client has to send a complete request head; then it gets 408 (a connection that sent
    #: nothing is closed). Bounds what slow-header ("slowloris") clients can hold.
    header_timeout: float = Field(10.0, gt=0)
    #: Seconds an unfinished request body may go without new bytes; then 408 and the connection closes.
    body_timeout: float = Field(30.0, gt=0)
    #: Seconds an idle kept-alive client connection stays open between requests.
    keepalive_timeout: float = Field(5.0, gt=0)
    #: Largest request body accepted; larger ones get 413 before they are read in full.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: On SIGTERM: stop accepting, let requests and streams finish for up to this many seconds, then
    #: end the remaining streams with an in-band error event and exit.
    shutdown_timeout: float = Field(30.0, ge=0)


def _base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


class Timeouts(_Section):
    """Seconds; each bounds one phase of an upstream call."""

    #: Establishing the TCP/TLS connection.
    connect: float = Field(10.0, gt=0)
    #: From sending the request to the response headers, and for a stream to its first real event.
    #: A non-streamed completion arrives all at once, so this bounds its whole generation time.
    first_byte: float = Field(600.0, gt=0)
    #: Longest silence between two reads of a stream (pings count as traffic).
    idle: float = Field(120.0, gt=0)
    #: The whole exchange, stream included.
    total: float = Field(900.0, gt=0)


class TimeoutOverrides(_Section):
    """Per-entry overrides of `upstream.timeouts`; unset fields keep the shared value."""

    connect: float | None = Field(None, gt=0)
    first_byte: float | None = Field(None, gt=0)
    idle: float | None = Field(None, gt=0)
    total: float | None = Field(None, gt=0)

    def over(self, shared: Timeouts) -> Timeouts:
        return shared.model_copy(update=self.model_dump(exclude_none=True))


class UpstreamEntry(_Section):
    """One upstream in the pool: where to send, with which key, and how much of the traffic."""

    #: Shown in logs and metrics; defaults to the base URL's host (plus a number if repeated).
    name: str | None = None
    base_url: str
    #: The key for this entry. `api_key_env` names an environment variable holding it instead.
    #: With neither, the entry uses `upstream.api_key`, and without that the client's own Bearer token.
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    #: Share of the traffic relative to the other healthy entries of its group; 0 = standby, used only
    #: when every weighted entry is cooling down.
    weight: int = Field(1, ge=0)
    #: Upstream model ids this entry serves. Empty: it belongs to the default group, which serves every
    #: model that no entry lists.
    models: list[str] = Field(default_factory=list)
    timeouts: TimeoutOverrides = Field(default_factory=lambda: TimeoutOverrides())

    _check_url = field_validator("base_url")(classmethod(lambda cls, v: _base_url(v)))


class UpstreamConfig(_Section):
    #: The upstream when `pool` is empty (the common single-upstream setup).
    base_url: str = "https://api.anthropic.com"
    #: Server-side key: when set, every client is served with it and never sees it.
    #: When unset, the client's `Authorization: Bearer` token is passed upstream as `x-api-key`.
    api_key: SecretStr | None = None
    #: Several upstreams, load-balanced by weight with cooldown and failover. Replaces base_url (api_key
    #: stays the key of entries that have none of their own).
    pool: list[UpstreamEntry] = Field(default_factory=list)
    anthropic_version: Literal["2023-06-01", "2023-01-01"] = "2023-06-01"
    timeouts: Timeouts = Field(default_factory=lambda: Timeouts())
    #: Seconds an entry sits out after a 429, 529, 5xx or connection failure (longer if the upstream's
    #: retry-after says so). Other entries take its traffic meanwhile.
    cooldown: float = Field(30.0, ge=0)
    #: Connections kept per process across all entries; requests beyond it wait for a free connection.
    max_connections: int = Field(256, ge=1)
    #: Seconds an idle upstream connection is kept open for reuse.
    keepalive_timeout: float = Field(30.0, gt=0)
    #: Upstream calls in flight per process (each of `n` choices is one call, streams hold theirs
    #: until they end). Beyond it requests get 503 `server_overloaded` at once instead of queueing.
    max_concurrent_calls: int = Field(1024, ge=1)
    max_retries: int = Field(2, ge=0, le=10)
    backoff_initial: float = Field(0.5, ge=0)
    backoff_max: float = Field(8.0, ge=0)
    #: An upstream `retry-after` longer than this is not waited for by the proxy; it is passed on instead.
    retry_after_max: float = Field(20.0, ge=0)

    _check_url = field_validator("base_url")(classmethod(lambda cls, v: _base_url(v)))

    @model_validator(mode="after")
    def _unique_names(self) -> UpstreamConfig:
        names = [entry.name for entry in self.pool if entry.name]
        if len(names) != len(set(names)):
            raise ValueError("pool entry names must be unique")
        for entry in self.pool:
            if entry.api_key is not None and entry.api_key_env is not None:
                raise ValueError(
                    f"pool entry {entry.name or entry.base_url}: set api_key or api_key_env, not both"
                )
        return self


class ModelsConfig(_Section):
    #: Model ids listed by /v1/models and accepted as `model`.
    served: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVED_MODELS))
    #: Client-facing name -> upstream model id. Aliases are listed and accepted too.
    aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALIASES))
    #: `reject`: a model outside `served`/`aliases` gets 404 model_not_found without an upstream call.
    #: `pass_through`: it is sent upstream as given and the upstream decides.
    unknown: Literal["reject", "pass_through"] = "reject"
    #: `created` timestamp reported for every model (the legacy API has no model metadata).
    created: int = 1700000000
    owned_by: str = "anthropic"


class GenerationConfig(_Section):
    #: `max_tokens_to_sample` when the client sets no limit. 4096 is Claude 2's output cap, so an
    #: ordinary answer is never cut short by the proxy's default.
    default_max_tokens: int = Field(4096, ge=1)
    #: Largest `max_tokens` / `max_completion_tokens` a client may ask for; above it: 400
    #: integer_above_max_value. The upstream does not reject values above the models' 4096-token output
    #: cap (generation just stops there), so this only keeps nonsense such as 2**63 from going upstream;
    #: 100000 is the smallest context window of the served models (claude-2.0, claude-instant-1.2).
    max_tokens_ceiling: int = Field(100_000, ge=1)
    #: OpenAI temperature is 0..2, the upstream's 0..1. `clamp`: values above 1 are sent as 1 (0..1 mean
    #: the same on both); `scale`: the value is halved; `reject`: values above 1 get a 400.
    temperature: Literal["clamp", "scale", "reject"] = "clamp"
    #: Fields the upstream cannot honour (penalties, logit_bias, seed, service_tier, ...):
    #: `drop` ignores them; `reject` answers 400 when one is set to a non-neutral value.
    unsupported_params: Literal["drop", "reject"] = "drop"
    #: Upper bound for `n`, and for prompts × `n` in /v1/completions (each choice is one upstream call).
    max_n: int = Field(128, ge=1, le=128)
    #: Corrective retries when a strict answer (a `json_schema` with `strict: true`, or a strict tool's
    #: arguments) fails its schema; after them the client gets 502 `invalid_model_output`.
    structured_output_retries: int = Field(1, ge=0, le=5)

    @model_validator(mode="after")
    def _default_within_ceiling(self) -> GenerationConfig:
        if self.default_max_tokens > self.max_tokens_ceiling:
            raise ValueError("default_max_tokens must not be above max_tokens_ceiling")
        return self


_SHA256 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


class ClientKey(_Section):
    """One client key of the team gateway. Exactly one of `key`, `key_env`, `key_sha256` is set."""

    #: Shown in logs, metrics and rate-limit messages (the key itself never is).
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@:-]+$")
    #: The key itself (only sensible from the environment: PROXY_AUTH__KEYS as JSON).
    key: SecretStr | None = None
    #: An environment variable holding the key, read at start-up.
    key_env: str | None = None
    #: The key's SHA-256 as 64 hex digits, optionally prefixed `sha256:`; safe to keep in a file.
    #: `python -m proxy hash-key` prints it.
    key_sha256: str | None = None
    #: Model ids this key may ask for, as clients send them (an alias is listed on its own). None: all.
    models: list[str] | None = None
    #: This key's limits; unset: `limits.default`.
    limits: KeyLimits | None = None

    @field_validator("key_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not _SHA256.match(value):
            raise ValueError("must be 64 hex digits, optionally prefixed with sha256:")
        return value.removeprefix("sha256:")

    @model_validator(mode="after")
    def _one_source(self) -> ClientKey:
        sources = [self.key is not None, self.key_env is not None, self.key_sha256 is not None]
        if sum(sources) != 1:
            raise ValueError(f"key {self.name!r}: set exactly one of key, key_env, key_sha256")
        return self


class AuthConfig(_Section):
    #: Client keys. Empty (the default): no client authentication (a sidecar on localhost, or
    #: pass-through where each client brings its own Anthropic key). Non-empty: every request except
    #: the probes and /metrics needs `Authorization: Bearer <one of these keys>`.
    keys: list[ClientKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        names = [key.name for key in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("client key names must be unique")
        return self


#: Headers a browser script may read besides the CORS-safelisted ones: the request id and the rate-limit
#: headers (OpenAI's, the proxy's daily ones, and the retry hints of a 429).
DEFAULT_EXPOSE_HEADERS: tuple[str, ...] = (
    "x-request-id",
    "x-upstream-request-id",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-tokens-day",
    "x-ratelimit-remaining-tokens-day",
    "x-ratelimit-reset-tokens-day",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
)


class CorsConfig(_Section):
    """Cross-origin access for browser clients. Off (no CORS headers at all) until an origin is allowed."""

    #: Origins allowed to call the API from a browser, e.g. `https://app.example.com`; `*` allows any.
    allow_origins: list[str] = Field(default_factory=list)
    #: A regular expression an origin may fully match instead, e.g. `https://.*\.example\.com`.
    allow_origin_regex: str | None = None
    #: DELETE is for `DELETE /v1/responses/{id}`.
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE"])
    #: Request headers a browser may send; `*` allows whatever the preflight asks for (the official SDKs
    #: send `authorization`, `content-type` and several `x-stainless-*` headers).
    allow_headers: list[str] = Field(default_factory=lambda: ["*"])
    #: Response headers a browser script may read.
    expose_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_EXPOSE_HEADERS))
    #: Let browsers send cookies and HTTP auth with requests (the allowed origin is then echoed, never `*`).
    allow_credentials: bool = False
    #: Seconds a browser may cache a preflight answer.
    max_age: int = Field(600, ge=0)

    @field_validator("allow_origin_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.allow_origins) or self.allow_origin_regex is not None


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: `auto` is console output in a terminal and JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True


class ResponsesConfig(_Section):
    """The store behind `/v1/responses` with `store: true` (in Redis when `limits.backend` is redis)."""

    #: Seconds a stored response can be retrieved or continued with `previous_response_id`.
    ttl_seconds: float = Field(default=86_400.0, gt=0)
    #: Largest stored record (the response, its input and the conversation so far); larger ones are
    #: answered but not stored.
    max_bytes: int = Field(default=1_048_576, ge=1024)
    #: In-memory store only: most records, and most bytes in all, before the least recently used go.
    max_entries: int = Field(default=10_000, ge=1)
    max_total_bytes: int = Field(default=268_435_456, ge=1024)


class CacheConfig(_Section):
    """The exact-match response cache (in Redis when `limits.backend` is redis)."""

    enabled: bool = False
    #: Seconds an answer is served from the cache.
    ttl_seconds: float = Field(default=300.0, gt=0)
    #: Largest cached answer; larger ones are not stored.
    max_bytes: int = Field(default=1_048_576, ge=1024)
    #: In-memory cache only: most answers, and most bytes in all, before the least recently used go.
    max_entries: int = Field(default=10_000, ge=1)
    max_total_bytes: int = Field(default=67_108_864, ge=1024)


class TracingConfig(_Section):
    """What spans carry. Tracing itself is switched on by the standard OTEL_* variables (proxy/tracing.py)."""

    #: Record the upstream prompt and (non-streamed) completion text on client spans
    #: (`gen_ai.input.messages` / `gen_ai.output.messages`). Off: spans never hold prompt or completion text.
    capture_content: bool = False
    #: Also record the proxy's token estimates as `gen_ai.usage.input_tokens` / `output_tokens` (they are
    #: always on the server span as `claude_legacy_proxy.usage.estimated_*_tokens`).
    estimated_usage: bool = False


class Config(_Section):
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    upstream: UpstreamConfig = Field(default_factory=lambda: UpstreamConfig())
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig())
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig())
    logging: LoggingConfig = Field(default_factory=lambda: LoggingConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    responses: ResponsesConfig = Field(default_factory=lambda: ResponsesConfig())
    cache: CacheConfig = Field(default_factory=lambda: CacheConfig())
    cors: CorsConfig = Field(default_factory=lambda: CorsConfig())
    tracing: TracingConfig = Field(default_factory=lambda: TracingConfig())

    #: Where `load_config` read this configuration, for a reload; None when built otherwise.
    _source: ConfigSource | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _no_pass_through_behind_client_keys(self) -> Config:
        _check_upstream_key(self.auth, self.upstream)
        return self

    @property
    def source(self) -> ConfigSource | None:
        return self._source


def _check_upstream_key(auth: AuthConfig, upstream: UpstreamConfig) -> None:
    """With client keys, the Bearer token is a proxy key: it must never be sent upstream."""
    if not auth.keys:
        return
    keyless = [e for e in upstream.pool if e.api_key is None and e.api_key_env is None]
    if upstream.api_key is None and (not upstream.pool or keyless):
        raise ValueError(
            "auth.keys needs an upstream key (ANTHROPIC_API_KEY, upstream.api_key or each pool entry's "
            "api_key/api_key_env): client keys are never passed upstream"
        )


@dataclass(frozen=True)
class ConfigSource:
    """The file (None: environment only) and what it gave when last read, before any command-line
    override: a reload compares the new reading with this one, not with the running values."""

    path: str | None
    loaded: Config


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


#: Conventional variables, honoured without the PROXY_ prefix.
_WELL_KNOWN_ENV: dict[str, tuple[str, str]] = {
    "ANTHROPIC_BASE_URL": ("upstream", "base_url"),
    "ANTHROPIC_API_KEY": ("upstream", "api_key"),
    "ANTHROPIC_VERSION": ("upstream", "anthropic_version"),
}


def _env_value(raw: str) -> Any:
    """Environment values are strings; JSON lists and objects are parsed so they can set them too."""
    if raw[:1] in "[{":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def _overlay_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, (section, key) in _WELL_KNOWN_ENV.items():
        if environ.get(name):
            data.setdefault(section, {})[key] = environ[name]
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        data.setdefault(section, {})[key] = _env_value(raw)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from an optional YAML file and the environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read config file {path}: {_yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    _overlay_env(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    _resolve_secrets(config, environ)
    config._source = ConfigSource(None if path is None else str(path), config.model_copy(deep=True))
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the offending line (it may hold a secret)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return where + ": ".join(filter(None, [exc.context, exc.problem]))
    return type(exc).__name__


#: Sections a running proxy swaps on a reload (SIGHUP); every other section needs a restart.
RELOADABLE = ("auth", "limits.default", "models", "generation")


@dataclass(frozen=True)
class Reload:
    """The outcome of re-reading the configuration of a running proxy."""

    #: What to run with now: the new reloadable sections, every other section as it runs.
    config: Config
    #: Reloadable sections whose values changed.
    changed: list[str]
    #: Sections that changed in the file but need a restart (their new values are not used).
    needs_restart: list[str]


def reload_config(running: Config, environ: Mapping[str, str] | None = None) -> Reload:
    """Read the running configuration's source again; `ConfigError` if it cannot be used (then the
    running configuration stays as it is)."""
    source = running.source
    if source is None:
        raise ConfigError("this configuration was not loaded from a file or the environment")
    fresh = load_config(source.path, environ)
    before = source.loaded
    needs_restart = [
        name
        for name in ("server", "upstream", "logging", "cors", "responses", "cache")
        if getattr(fresh, name) != getattr(before, name)
    ]
    if fresh.limits.model_copy(update={"default": before.limits.default}) != before.limits:
        needs_restart.append("limits (other than limits.default)")
    effective = running.model_copy(
        update={
            "auth": fresh.auth,
            "models": fresh.models,
            "generation": fresh.generation,
            "limits": running.limits.model_copy(update={"default": fresh.limits.default}),
        }
    )
    try:
        _check_upstream_key(effective.auth, effective.upstream)
    except ValueError as exc:
        raise ConfigError(f"{exc} (the running upstream section is kept until a restart)") from None
    effective._source = fresh.source
    changed = [
        name
        for name, old, new in (
            ("auth", running.auth, effective.auth),
            ("limits.default", running.limits.default, effective.limits.default),
            ("models", running.models, effective.models),
            ("generation", running.generation, effective.generation),
        )
        if old != new
    ]
    return Reload(effective, changed, needs_restart)


def _secret_from_env(environ: Mapping[str, str], name: str, where: str) -> SecretStr:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set or empty")
    return SecretStr(value)


def _resolve_secrets(config: Config, environ: Mapping[str, str]) -> None:
    """Secrets named by `*_env` keys are read here, once, so the file itself never holds them."""
    for index, entry in enumerate(config.upstream.pool):
        if entry.api_key_env:
            entry.api_key = _secret_from_env(environ, entry.api_key_env, f"upstream.pool.{index}.api_key_env")
    digests: dict[str, str] = {}
    for index, key in enumerate(config.auth.keys):
        if key.key_env:
            key.key = _secret_from_env(environ, key.key_env, f"auth.keys.{index}.key_env")
        digest = key.key_sha256 or hashlib.sha256(key.key.get_secret_value().encode()).hexdigest()  # type: ignore[union-attr]
        if digest in digests:
            raise ConfigError(f"auth.keys: {key.name!r} is the same key as {digests[digest]!r}")
        digests[digest] = key.name
