"""Prometheus metrics, fed once per request from the access log's `RequestLog`, served on `GET /metrics`.

The routes already record what a request cost (model, tokens, upstream time, attempts, errors) for the
access line, so the metrics read the same record at the same moment instead of instrumenting the routes
a second time. Label values are bounded by configuration, never taken from what a client sent: `route`
is the matched route template, `model` a configured upstream model id, `key` a configured key name.

The state of the upstream pool (each entry's cooldown, calls in flight against their cap) and of the
limit store is read when scraped, never on the request path: `observe` reads it just before the
exposition.

What every request changes is counted in plain numbers in one process (`proxy.http.live_metrics`: no
lock per change) and exposed as the library's own families.

Several uvicorn workers share one `/metrics` through prometheus-client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`): each worker writes its values to memory-mapped files and a scrape merges
them. `prepare_multiprocess` sets that up before the workers start; see docs/operations-metrics.md.
A scrape reaches one worker only, so there each worker also writes its own pool state every
`PUBLISH_INTERVAL` seconds (`start_publishing`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from proxy import __version__
from proxy.config import Config
from proxy.http.live_metrics import LiveCounter, LiveGauge, LiveHistogram
from proxy.http.record import RequestLog
from proxy.translate.upstream_errors import STATUS_BY_TYPE, TRANSPORT_STATUS

if TYPE_CHECKING:
    from proxy.gateway import Gateway
    from proxy.upstream.client import UpstreamClient

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds, from a 5 ms validation error to a 10 min completion (longer ones land in +Inf only).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
#: Seconds to the first token: an upstream queue shows up between 0.1 s and a minute.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60, 120)

OTHER = "other"  # a value outside the configured set
NONE = "none"  # the request never named a model (listing, unparseable body)
ANONYMOUS = "anonymous"

#: Codes an upstream failure reaches the client with (proxy/translate/upstream_errors.py); in-stream
#: failures carry the upstream's error type. Anything else is counted as `other`.
UPSTREAM_ERROR_CODES = frozenset(
    {
        "server_error",
        "overloaded",
        "timeout",
        "rate_limit_exceeded",
        "insufficient_quota",
        "upstream_authentication_error",
        "upstream_permission_error",
        *TRANSPORT_STATUS,
        *STATUS_BY_TYPE,
    }
)

#: Failures of the proxy itself, even when they happen after an upstream attempt.
PROXY_ERROR_CODES = frozenset({"internal_error", "server_overloaded"})

#: Rate-limit decisions where the limit store could not decide (the request went on, or got a 503).
UNDECIDED_LIMITS = frozenset({"fail_open", "fail_closed", "error"})

#: Seconds between two writes of a worker's pool state to the shared files (multiprocess mode only).
PUBLISH_INTERVAL = 1.0

_EVENT_STREAM = b"text/event-stream"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")

C = TypeVar("C")
C_co = TypeVar("C_co", covariant=True)


class Counting(Protocol):
    """A counter's child: the library's, or a `LiveCounter`'s."""

    def inc(self, amount: float = ...) -> None: ...


class Observing(Protocol):
    """A histogram's child: the library's, or a `LiveHistogram`'s."""

    def observe(self, amount: float) -> None: ...


class Family(Protocol[C_co]):
    """A metric with labels: `labels(*values)` gives the child of those values."""

    def labels(self, *values: str) -> C_co: ...


class Metrics:
    """Every metric the proxy exports, with label children cached per label tuple (`.labels()` is slow)."""

    def __init__(self, models: Iterable[str], aliases: dict[str, str], version: str = __version__) -> None:
        directory = os.environ.get(MULTIPROC_ENV)
        self.directory = Path(directory) if directory else None
        self.registry = CollectorRegistry(auto_describe=True)
        own: CollectorRegistry | None = self.registry
        _follow_environment(bool(directory))
        if directory:
            _reap_dead_workers(Path(directory), starting=True)
            multiprocess.MultiProcessCollector(self.registry, directory)  # type: ignore[no-untyped-call]
            own = None  # values live in the files; registering them too would export them twice
        else:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

        served = [*models, *aliases.values()]
        self._upstream_models = frozenset(served)
        self._client_models = {**{model: model for model in served}, **aliases}

        prefix = "claude_proxy_"
        # What every request changes: plain numbers in one process (`proxy.http.live_metrics`), the
        # library's file-backed metrics in multiprocess mode. Registered in this order either way.
        counter, histogram, gauge = (
            (_file_counter, _file_histogram, _file_gauge)
            if own is None
            else (_live_counter, _live_histogram, _live_gauge)
        )
        registry = self.registry
        self.requests = counter(
            prefix + "requests",
            "Requests answered, by route template, configured upstream model, HTTP status and key name.",
            ["route", "model", "status", "key"],
            registry,
        )
        self.request_duration = histogram(
            prefix + "request_duration_seconds",
            "Time from receiving the request to sending its last byte (whole stream included).",
            ["route"],
            DURATION_BUCKETS,
            registry,
        )
        self.upstream_duration = histogram(
            prefix + "upstream_duration_seconds",
            "Upstream phase: the whole answer when not streamed, every choice's first event when streamed; "
            "retries and backoff included.",
            ["model"],
            DURATION_BUCKETS,
            registry,
        )
        self.time_to_first_token = histogram(
            prefix + "time_to_first_token_seconds",
            "Streams: time from receiving the request to sending the first content byte.",
            ["model"],
            TTFT_BUCKETS,
            registry,
        )
        self.tokens = counter(
            prefix + "tokens",
            "Estimated tokens (the legacy API reports none), prompt and completion, by model and key name.",
            ["direction", "model", "key"],
            registry,
        )
        self.in_flight_requests = gauge(
            prefix + "in_flight_requests",
            "Requests being served now (probes and /metrics excluded).",
            registry,
        )
        self.in_flight_streams = gauge(
            prefix + "in_flight_streams", "Event streams being sent now.", registry
        )
        #: Fed by RequestContextMiddleware as a request starts: the in-flight gauge's own `inc` (no frame
        #: of this class's per request).
        self.request_started: Callable[[], None] = self.in_flight_requests.inc
        self.upstream_errors = Counter(
            prefix + "upstream_errors",
            "Requests that reached the upstream and failed because of it (status >= 500 or 429, or an "
            "error inside a stream), by the error code the client got.",
            ["code"],
            registry=own,
        )
        self.upstream_retries = Counter(
            prefix + "upstream_retries",
            "Upstream attempts beyond the first of each upstream call.",
            registry=own,
        )
        self.rate_limited = Counter(
            prefix + "rate_limited",
            "Requests rejected (429) by the proxy's own rate limits, by key name and the limit hit.",
            ["key", "limit"],
            registry=own,
        )
        self.rate_limit_unavailable = Counter(
            prefix + "rate_limit_unavailable",
            "Requests the limit store could not decide on: fail_open (let through unchecked), "
            "fail_closed (refused with 503) or error.",
            ["decision"],
            registry=own,
        )
        self.cache_requests = Counter(
            prefix + "cache_requests",
            "Requests that consulted the response cache, by result: hit or miss.",
            ["result"],
            registry=own,
        )
        build = Gauge(
            prefix + "build_info",
            "Always 1; the labels say which proxy and Python versions run.",
            ["version", "python"],
            registry=own,
            multiprocess_mode="livemax",
        )
        build.labels(version, "{}.{}.{}".format(*sys.version_info[:3])).set(1)

        # Read when scraped (`observe`). Cooldowns and the call cap are per process: with several
        # workers, an entry is unhealthy if any live worker cools it down (livemin), its cooldown is the
        # longest any worker still waits (livemax), and calls and caps add up (livesum).
        self.upstream_entry_healthy = Gauge(
            prefix + "upstream_entry_healthy",
            "1 while the upstream pool entry is in rotation, 0 while it cools down after a failure.",
            ["entry"],
            registry=own,
            multiprocess_mode="livemin",
        )
        self.upstream_entry_cooldown = Gauge(
            prefix + "upstream_entry_cooldown_seconds",
            "Seconds until the upstream pool entry is back in rotation (0 when it is).",
            ["entry"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.upstream_entry_weight = Gauge(
            prefix + "upstream_entry_weight",
            "The configured weight of the upstream pool entry (0: standby).",
            ["entry"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.upstream_active_calls = Gauge(
            prefix + "upstream_active_calls",
            "Upstream calls in flight now (each of n choices is one call; a stream holds its call).",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.upstream_max_calls = Gauge(
            prefix + "upstream_max_concurrent_calls",
            "upstream.max_concurrent_calls, the cap on calls in flight per process; beyond it requests "
            "get 503 server_overloaded.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self._entry_children: dict[str, tuple[Gauge, Gauge]] = {}
        self._publisher: asyncio.Task[None] | None = None
        self._limits_backend = _LimitsBackend()
        self.registry.register(self._limits_backend)

        self._series: dict[tuple[str, str, int, str], _Series] = {}
        self._duration_children: dict[tuple[str, ...], Observing] = {}
        self._upstream_children: dict[tuple[str, ...], Observing] = {}
        self._ttft_children: dict[tuple[str, ...], Observing] = {}
        self._token_children: dict[tuple[str, ...], Counting] = {}
        self._error_children: dict[tuple[str, ...], Counter] = {}
        self._limit_children: dict[tuple[str, ...], Counter] = {}
        self._undecided_children: dict[tuple[str, ...], Counter] = {}
        self._cache_children: dict[tuple[str, ...], Counter] = {}

    @classmethod
    def from_config(cls, config: Config) -> Metrics:
        return cls(config.models.served, config.models.aliases)

    # -- fed by RequestContextMiddleware ----------------------------------------------------------

    def response_started(self, message: Message) -> bool:
        """Count an event stream from its first byte; True if `message` starts one."""
        for name, value in message.get("headers", ()):
            if name == b"content-type":
                if bytes(value).startswith(_EVENT_STREAM):
                    self.in_flight_streams.inc()
                    return True
                return False
        return False

    def request_finished(self, status: int, seconds: float, record: RequestLog, streamed: bool) -> None:
        self.in_flight_requests.dec()
        if streamed:
            self.in_flight_streams.dec()
        route = record.route or OTHER
        model = self._model_label(record)
        key = record.key_name or ANONYMOUS

        series = self._series.get((route, model, status, key))
        if series is None:
            series = self._series[(route, model, status, key)] = self._new_series(route, model, status, key)
        series.requests.inc()
        series.duration.observe(seconds)
        if record.upstream_ms is not None:
            upstream = series.upstream
            if upstream is None:
                upstream = series.upstream = _child(self._upstream_children, self.upstream_duration, model)
            upstream.observe(record.upstream_ms / 1000)
        if record.first_token_ms is not None:
            _child(self._ttft_children, self.time_to_first_token, model).observe(record.first_token_ms / 1000)
        if record.prompt_tokens:
            prompt = series.prompt
            if prompt is None:
                prompt = series.prompt = _child(self._token_children, self.tokens, "prompt", model, key)
            prompt.inc(record.prompt_tokens)
        if record.completion_tokens:
            completion = series.completion
            if completion is None:
                completion = series.completion = _child(
                    self._token_children, self.tokens, "completion", model, key
                )
            completion.inc(record.completion_tokens)
        if record.attempts:
            # `attempts` sums over the request's n upstream calls; a call that never started (its
            # sibling failed first) makes this an undercount, never an overcount.
            retries = record.attempts - (record.n or 1)
            if retries > 0:
                self.upstream_retries.inc(retries)
            code = record.error_code
            if code is not None and code not in PROXY_ERROR_CODES and (status >= 500 or status in (429, 200)):
                label = code if code in UPSTREAM_ERROR_CODES else OTHER
                _child(self._error_children, self.upstream_errors, label).inc()
        decision = record.limit
        if decision is not None and decision != "allowed":
            # "rejected:<limit>" (over a limit now) or "too_large:<limit>" (the request can never fit)
            limit = decision.partition(":")[2]
            if limit:
                _child(self._limit_children, self.rate_limited, key, limit).inc()
            elif decision in UNDECIDED_LIMITS:
                _child(self._undecided_children, self.rate_limit_unavailable, decision).inc()
        if record.cache is not None:
            _child(self._cache_children, self.cache_requests, record.cache).inc()

    def _new_series(self, route: str, model: str, status: int, key: str) -> _Series:
        """The children of one kind of request: those every request updates at once, the others when
        first needed (a child, once made, is exported even at zero)."""
        return _Series(
            self.requests.labels(route, model, str(status), key),
            _child(self._duration_children, self.request_duration, route),
        )

    def _model_label(self, record: RequestLog) -> str:
        """The resolved upstream id if configured; else the client's id resolved through the aliases
        (a request that failed before resolution); `other` for anything unconfigured."""
        if record.upstream_model is not None:
            return record.upstream_model if record.upstream_model in self._upstream_models else OTHER
        if record.model is not None:
            return self._client_models.get(record.model, OTHER)
        return NONE

    # -- state read at scrape time ------------------------------------------------------------------

    async def observe(self, gateway: Gateway) -> None:
        """Before a scrape: this worker's pool state, and whether the limit store answers a ping now."""
        self.publish(gateway.upstream)
        try:
            status = await gateway.limiter.ping()
        except Exception:  # a scrape must not fail because the store does in an unexpected way
            status = "error"
        self._limits_backend.set(gateway.config.limits.backend, up=status == "ok")

    def publish(self, upstream: UpstreamClient) -> None:
        """Copy the pool's entries and the calls in flight into the gauges."""
        pool = upstream.pool
        for entry in pool.entries:
            children = self._entry_children.get(entry.name)
            if children is None:
                self.upstream_entry_weight.labels(entry.name).set(entry.weight)
                children = self._entry_children[entry.name] = (
                    self.upstream_entry_healthy.labels(entry.name),
                    self.upstream_entry_cooldown.labels(entry.name),
                )
            healthy, cooldown = children
            left = pool.cooldown_left(entry)
            healthy.set(0 if left > 0 else 1)
            cooldown.set(left)
        self.upstream_active_calls.set(upstream.active_calls)
        self.upstream_max_calls.set(upstream.config.max_concurrent_calls)

    def start_publishing(self, upstream: UpstreamClient) -> None:
        """With several workers: write this worker's pool state every PUBLISH_INTERVAL seconds, since
        the scrape that reads the shared files runs in one worker only. Nothing to do with one."""
        if self.directory is not None and self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_forever(upstream))

    async def stop_publishing(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None

    async def _publish_forever(self, upstream: UpstreamClient) -> None:
        while True:
            self.publish(upstream)
            await asyncio.sleep(PUBLISH_INTERVAL)

    # -- exposition -------------------------------------------------------------------------------

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type: Prometheus text, or OpenMetrics when asked for."""
        if self.directory is not None:
            _reap_dead_workers(self.directory)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: needs no client key, like the probes."""
    metrics: Metrics = request.app.state.metrics
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is not None:
        await metrics.observe(gateway)
    body, content_type = metrics.exposition(request.headers.get("accept"))
    return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})


class _LimitsBackend(Collector):
    """`claude_proxy_rate_limit_backend_up`: the answer of the ping made for this scrape, by the worker
    that serves it (kept in memory, not in the multiprocess files: another worker's ping is older)."""

    def __init__(self) -> None:
        self._state: tuple[str, bool] | None = None

    def set(self, backend: str, *, up: bool) -> None:
        self._state = (backend, up)

    def collect(self) -> Iterator[Metric]:
        if self._state is None:
            return
        backend, up = self._state
        family = GaugeMetricFamily(
            "claude_proxy_rate_limit_backend_up",
            "1 if the rate-limit store answered a ping during this scrape (always 1 in memory), else 0.",
            labels=["backend"],
        )
        family.add_metric([backend], 1 if up else 0)
        yield family


class _Series:
    """The metric children one kind of request (route, model, status, key) updates, found with one
    lookup instead of one per metric."""

    __slots__ = ("completion", "duration", "prompt", "requests", "upstream")

    def __init__(self, requests: Counting, duration: Observing) -> None:
        self.requests = requests
        self.duration = duration
        self.upstream: Observing | None = None
        self.prompt: Counting | None = None
        self.completion: Counting | None = None


# The request-path metrics of each mode (see `Metrics.__init__`). Each gauge counts requests or streams
# in flight: the live one in this process, the library's summed over the live workers.


def _live_counter(
    name: str, documentation: str, labels: list[str], registry: CollectorRegistry
) -> Family[Counting]:
    return LiveCounter(name, documentation, labels, registry=registry)


def _file_counter(
    name: str, documentation: str, labels: list[str], registry: CollectorRegistry
) -> Family[Counting]:
    return Counter(name, documentation, labels, registry=None)


def _live_histogram(
    name: str, documentation: str, labels: list[str], buckets: Sequence[float], registry: CollectorRegistry
) -> Family[Observing]:
    return LiveHistogram(name, documentation, labels, buckets=buckets, registry=registry)


def _file_histogram(
    name: str, documentation: str, labels: list[str], buckets: Sequence[float], registry: CollectorRegistry
) -> Family[Observing]:
    return Histogram(name, documentation, labels, buckets=buckets, registry=None)


def _live_gauge(name: str, documentation: str, registry: CollectorRegistry) -> Gauge | LiveGauge:
    return LiveGauge(name, documentation, registry=registry)


def _file_gauge(name: str, documentation: str, registry: CollectorRegistry) -> Gauge | LiveGauge:
    return Gauge(name, documentation, registry=None, multiprocess_mode="livesum")


def _child(cache: dict[tuple[str, ...], C], metric: Family[C], *labels: str) -> C:
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child


# -- multiprocess mode ----------------------------------------------------------------------------


def prepare_multiprocess(workers: int) -> None:
    """Before uvicorn starts `workers` processes: give them a fresh shared metrics directory.

    With several workers and no PROMETHEUS_MULTIPROC_DIR, a temporary directory is created (and removed
    when this process exits). A directory the operator set is emptied of the previous run's files, whatever
    the worker count, so counters restart at zero as they do in single-process mode.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory == "":
        del os.environ[MULTIPROC_ENV]  # prometheus-client would write its files to the working directory
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    if not directory and workers > 1:
        created = tempfile.mkdtemp(prefix="claude-proxy-metrics-")
        atexit.register(shutil.rmtree, created, ignore_errors=True)
        os.environ[MULTIPROC_ENV] = created


def _follow_environment(multiprocess: bool) -> None:
    """prometheus-client picks its value storage (memory or files) from the environment when first
    imported; if `prepare_multiprocess` changed the variable since, follow it before any metric exists."""
    if getattr(values.ValueClass, "_multiprocess", False) != multiprocess:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _reap_dead_workers(directory: Path, starting: bool = False) -> None:
    """Drop the gauges of workers that are gone, so a stopped or crashed worker's in-flight count does not
    stay in the sum. A killed worker runs no exit hook, so this is done on every scrape, and by a starting
    worker for files left by an earlier process with its pid. Counters and histograms of gone workers
    stay: their totals are part of the proxy's."""
    for file in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(file.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            if starting:
                multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, owned by another user
