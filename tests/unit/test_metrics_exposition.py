"""The in-flight gauges of one process are plain counts exposed by a custom collector
(`proxy.http.metrics.LiveGauge`): over random request sequences, the scrape shows exactly what
prometheus-client's own gauges fed the same starts and ends show, in both exposition formats. In
multiprocess mode the library's gauges (shared files) stay, and show the same counts."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from proxy.http.metrics import MULTIPROC_ENV, Metrics
from proxy.http.record import RequestLog

FAMILIES = {
    "claude_proxy_in_flight_requests": "Requests being served now (probes and /metrics excluded).",
    "claude_proxy_in_flight_streams": "Event streams being sent now.",
}
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


def families(text: str) -> str:
    """The in-flight families' lines (HELP, TYPE, samples) of an exposition, in their order."""
    return "\n".join(line for line in text.splitlines() if any(name in line for name in FAMILIES))


def request_sequence(seed: int) -> Iterator[tuple[str, int]]:
    """Random starts, response starts (some of them streams) and ends of overlapping requests."""
    rng = random.Random(seed)
    running: dict[int, bool | None] = {}  # request → None (no response yet), streamed or not
    for number in range(rng.randrange(1, 200)):
        action = rng.choice(["start", "respond", "finish"] if running else ["start"])
        if action == "start":
            running[number] = None
            yield "start", number
            continue
        request = rng.choice(list(running))
        if action == "respond" and running[request] is None:
            running[request] = rng.random() < 0.5
            yield ("stream" if running[request] else "answer"), request
        elif action == "finish":
            yield ("finish_stream" if running.pop(request) else "finish"), request


def feed(metrics: Metrics, event: str) -> None:
    if event == "start":
        metrics.request_started()
    elif event in ("stream", "answer"):
        assert metrics.response_started(SSE_START if event == "stream" else JSON_START) == (event == "stream")
    else:
        record = RequestLog("req_1", route="/v1/chat/completions", model="gpt-4", upstream_model="claude-2.1")
        metrics.request_finished(200, 0.01, record, event == "finish_stream")


@pytest.mark.parametrize("seed", range(40))
def test_the_live_gauges_expose_what_the_librarys_gauges_do(seed: int) -> None:
    metrics = Metrics(["claude-2.1"], {"gpt-4": "claude-2.1"})
    library = CollectorRegistry()
    requests, streams = (Gauge(name, doc, registry=library) for name, doc in FAMILIES.items())
    for event, _ in request_sequence(seed):
        feed(metrics, event)
        if event == "start":
            requests.inc()
        elif event == "stream":
            streams.inc()
        elif event.startswith("finish"):
            requests.dec()
            if event == "finish_stream":
                streams.dec()
        for accept in FORMATS:
            encoder, _ = choose_encoder(accept)
            ours = families(metrics.exposition(accept)[0].decode())
            assert ours == families(encoder(library).decode()), (event, accept)
    assert "claude_proxy_in_flight_requests" in ours


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # in-memory values again


@pytest.mark.parametrize("seed", range(5))
def test_multiprocess_mode_counts_in_flight_in_the_shared_files(multiprocess_dir: Path, seed: int) -> None:
    metrics = Metrics(["claude-2.1"], {"gpt-4": "claude-2.1"})
    assert metrics.directory == multiprocess_dir
    expected = {name: 0.0 for name in FAMILIES}
    for event, _ in request_sequence(seed):
        feed(metrics, event)
        expected["claude_proxy_in_flight_requests"] += {"start": 1, "finish": -1, "finish_stream": -1}.get(
            event, 0
        )
        expected["claude_proxy_in_flight_streams"] += {"stream": 1, "finish_stream": -1}.get(event, 0)
        scraped = {
            family.name: family.samples[0].value
            for family in text_string_to_metric_families(metrics.exposition(None)[0].decode())
            if family.name in FAMILIES
        }
        assert scraped == expected, event
    assert any(multiprocess_dir.glob("gauge_livesum_*.db"))
