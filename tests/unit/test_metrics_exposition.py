"""What every request changes is counted in plain numbers in one process (`proxy.http.live_metrics`):
over random request sequences, the scrape is exactly what prometheus-client's own metrics fed the same
requests show (every family, sample, label, order and `_created` series, both exposition formats, with
and without `_created` series). In multiprocess mode the library's file-backed metrics stay, and show
the same values."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.metrics import disable_created_metrics, enable_created_metrics
from prometheus_client.parser import text_string_to_metric_families

import proxy.http.metrics as metrics_module
from proxy.http.metrics import DURATION_BUCKETS, MULTIPROC_ENV, TTFT_BUCKETS, Metrics
from proxy.http.record import RequestLog

FORMATS = ["text/plain", "application/openmetrics-text; version=1.0.0"]
SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream")],
}
JSON_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json")],
}
MODELS, ALIASES = ["claude-2.1", "claude-instant-1.2"], {"gpt-4": "claude-2.1"}
#: Durations on and next to the bucket bounds, and ordinary ones.
SECONDS = [*DURATION_BUCKETS, *TTFT_BUCKETS, 0.0, 0.0049999, 0.0050001, 0.75, 601.0, 1e-9]


def library_metrics() -> Metrics:
    """`Metrics` with prometheus-client's own metrics on the request path: the reference."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics_module, "_live_counter", lambda *a: Counter(*a[:3], registry=a[3]))
        patch.setattr(
            metrics_module, "_live_histogram", lambda *a: Histogram(*a[:3], buckets=a[3], registry=a[4])
        )
        patch.setattr(metrics_module, "_live_gauge", lambda *a: Gauge(*a[:2], registry=a[2]))
        return Metrics(MODELS, ALIASES)


def random_record(rng: random.Random) -> RequestLog:
    ms = [None, *(seconds * 1000 for seconds in SECONDS)]
    return RequestLog(
        "req_1",
        route=rng.choice(["/v1/chat/completions", "/v1/completions", "/v1/models", None]),
        model=rng.choice(["gpt-4", "claude-2.1", "unknown-model", None]),
        upstream_model=rng.choice(["claude-2.1", "claude-instant-1.2", "unconfigured", None]),
        n=rng.choice([None, 1, 2]),
        prompt_tokens=rng.choice([None, 0, 1, 35]),
        completion_tokens=rng.choice([None, 0, 7, 34]),
        upstream_ms=rng.choice(ms),
        first_token_ms=rng.choice(ms),
        attempts=rng.choice([None, 1, 2, 3]),
        key_name=rng.choice([None, "team-a", "team-b"]),
        error_code=rng.choice([None, "overloaded", "internal_error", "something_else"]),
        limit=rng.choice([None, "allowed", "rejected:rpm", "too_large:tpm", "fail_open", "fail_closed"]),
        cache=rng.choice([None, "hit", "miss"]),
    )


def request_events(seed: int) -> Iterator[tuple[str, int, RequestLog | None]]:
    """Random starts, response starts (some of them streams) and ends of overlapping requests."""
    rng = random.Random(seed)
    running: dict[int, bool | None] = {}  # request → None (no response yet), streamed or not
    for number in range(rng.randrange(1, 100)):
        action = rng.choice(["start", "respond", "finish", "finish"] if running else ["start"])
        if action == "start":
            running[number] = None
            yield "start", 0, None
            continue
        request = rng.choice(list(running))
        if action == "respond" and running[request] is None:
            running[request] = rng.random() < 0.5
            yield ("stream" if running[request] else "answer"), 0, None
        elif action == "finish":
            status = rng.choice([200, 200, 400, 429, 499, 500, 503])
            yield ("finish_stream" if running.pop(request) else "finish"), status, random_record(rng)


def feed(metrics: Metrics, event: str, status: int, record: RequestLog | None, seconds: float) -> None:
    if event == "start":
        metrics.request_started()
    elif event in ("stream", "answer"):
        assert metrics.response_started(SSE_START if event == "stream" else JSON_START) == (event == "stream")
    else:
        assert record is not None
        metrics.request_finished(status, seconds, record, event == "finish_stream")


def exposition(metrics: Metrics, accept: str | None) -> str:
    """The scrape without the process's own metrics (CPU time, memory: they change between scrapes)."""
    text = metrics.exposition(accept)[0].decode()
    return "\n".join(line for line in text.splitlines() if "process_" not in line and "python_" not in line)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every child made at the same wall-clock time, so the two `_created` series can be compared."""
    monkeypatch.setattr(time, "time", lambda: 1767225600.25)


@pytest.mark.parametrize("created", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_the_scrape_is_the_librarys_over_random_requests(fixed_clock: None, seed: int, created: bool) -> None:
    """Scraped after every fourth event (at a seed-dependent phase), in the two formats by turns, and in
    both at the end: a scrape is most of this test's time."""
    ours, library = Metrics(MODELS, ALIASES), library_metrics()
    assert type(ours.requests) is not type(library.requests)  # the live metrics against the library's
    rng = random.Random(-seed)
    if not created:
        disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        for number, (event, status, record) in enumerate(request_events(seed)):
            seconds = rng.choice(SECONDS)
            feed(ours, event, status, record, seconds)
            feed(library, event, status, record, seconds)
            if (number + seed) % 4 == 0:
                accept = FORMATS[number // 4 % len(FORMATS)]
                assert exposition(ours, accept) == exposition(library, accept), (event, accept)
        for accept in FORMATS:
            assert exposition(ours, accept) == exposition(library, accept), accept
        assert ("_created" in exposition(ours, None)) == created or "_total" not in exposition(ours, None)
    finally:
        enable_created_metrics()  # type: ignore[no-untyped-call]


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # in-memory values again


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the proxy's own families but `_created` (multiprocess mode has none)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("claude_proxy_") and family.name != "claude_proxy_build_info"
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@pytest.mark.parametrize("seed", range(6))
def test_multiprocess_mode_shows_the_same_values(multiprocess_dir: Path, seed: int) -> None:
    rng = random.Random(-seed)
    events = [(*event, rng.choice(SECONDS)) for event in request_events(seed)]
    shared = Metrics(MODELS, ALIASES)
    assert shared.directory == multiprocess_dir
    for event in events:
        feed(shared, *event)
    assert any(multiprocess_dir.glob("gauge_livesum_*.db"))
    assert any(multiprocess_dir.glob("counter_*.db"))
    scraped = samples(shared.exposition(None)[0].decode())
    del shared

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(MULTIPROC_ENV)
        alone = Metrics(MODELS, ALIASES)
        for event in events:
            feed(alone, *event)
        assert samples(alone.exposition(None)[0].decode()) == scraped
