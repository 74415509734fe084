"""`GET /metrics`: Prometheus counters and histograms move by exactly what real requests cost.

Each end-to-end test runs its own proxy (`start_proxy`), so every expected value is absolute. A scrape
is taken once the proxy is idle (`in_flight_requests == 0`): the access-log hook updates every metric
of a request in one synchronous step, after the client already has its last byte. The labelling rules
(every rate-limit decision, the upstream-error rule) are also checked case by case by feeding
`Metrics.request_finished` directly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from proxy.http.metrics import MULTIPROC_ENV, Metrics, prepare_multiprocess
from proxy.http.record import RequestLog
from tests.conftest import StartProxy, _proxy
from tests.support.servers import Server
from tests.support.upstream import marker

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SLOW = "[[mock:tokens=12]][[mock:token_delay_ms=60]]"  # about 0.7 s of streamed tokens

FAMILIES = {
    "claude_proxy_requests",
    "claude_proxy_request_duration_seconds",
    "claude_proxy_upstream_duration_seconds",
    "claude_proxy_time_to_first_token_seconds",
    "claude_proxy_tokens",
    "claude_proxy_in_flight_requests",
    "claude_proxy_in_flight_streams",
    "claude_proxy_upstream_errors",
    "claude_proxy_upstream_retries",
    "claude_proxy_rate_limited",
    "claude_proxy_rate_limit_unavailable",
    "claude_proxy_build_info",
}


# -- scraping -------------------------------------------------------------------------------------


def scrape(server: Server) -> Samples:
    response = httpx.get(f"{server.base_url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def scrape_when(server: Server, ready: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    deadline = time.monotonic() + timeout
    samples = scrape(server)
    while not ready(samples) and time.monotonic() < deadline:
        time.sleep(0.02)
        samples = scrape(server)
    return samples


def idle(server: Server) -> Samples:
    """A scrape once no request is in flight, so every finished request is fully counted."""
    return scrape_when(server, lambda s: value(s, "claude_proxy_in_flight_requests") == 0)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(series)[label] for (n, series) in samples if n == name and label in dict(series)}


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="client-key", max_retries=0)


def ask(client: openai.OpenAI, text: str, model: str = "gpt-4", **params: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **params)


# -- end to end -----------------------------------------------------------------------------------


def test_requests_latency_and_tokens_of_plain_and_streamed_requests(start_proxy: StartProxy) -> None:
    with start_proxy() as server, sdk(server) as client:
        reply = ask(client, "Hello there")
        chunks = list(
            client.completions.create(
                model="claude-instant-1.2",
                prompt="Count to three",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        pair = ask(client, "Two please", n=2)
        samples = idle(server)

    assert reply.usage is not None and pair.usage is not None
    usage = chunks[-1].usage
    assert usage is not None
    chat = {"route": CHAT, "model": "claude-2.1", "key": "anonymous"}
    assert value(samples, "claude_proxy_requests_total", status="200", **chat) == 2
    completions = {"route": COMPLETIONS, "model": "claude-instant-1.2", "status": "200", "key": "anonymous"}
    assert value(samples, "claude_proxy_requests_total", **completions) == 1
    assert total(samples, "claude_proxy_requests_total") == 3

    assert value(samples, "claude_proxy_request_duration_seconds_count", route=CHAT) == 2
    assert value(samples, "claude_proxy_request_duration_seconds_count", route=COMPLETIONS) == 1
    assert value(samples, "claude_proxy_request_duration_seconds_sum", route=CHAT) > 0
    # Every observation lands in the +Inf bucket, and buckets are cumulative.
    assert value(samples, "claude_proxy_request_duration_seconds_bucket", route=CHAT, le="+Inf") == 2
    assert value(samples, "claude_proxy_upstream_duration_seconds_count", model="claude-2.1") == 2
    assert value(samples, "claude_proxy_upstream_duration_seconds_count", model="claude-instant-1.2") == 1

    tokens = "claude_proxy_tokens_total"
    both = reply.usage.prompt_tokens + pair.usage.prompt_tokens
    assert value(samples, tokens, direction="prompt", model="claude-2.1", key="anonymous") == both
    both = reply.usage.completion_tokens + pair.usage.completion_tokens
    assert value(samples, tokens, direction="completion", model="claude-2.1", key="anonymous") == both
    instant = {"model": "claude-instant-1.2", "key": "anonymous"}
    assert value(samples, tokens, direction="prompt", **instant) == usage.prompt_tokens
    assert value(samples, tokens, direction="completion", **instant) == usage.completion_tokens

    assert value(samples, "claude_proxy_upstream_retries_total") == 0  # n=2 is two calls, no retries
    assert total(samples, "claude_proxy_upstream_errors_total") == 0
    assert value(samples, "claude_proxy_in_flight_requests") == 0
    assert value(samples, "claude_proxy_in_flight_streams") == 0
    assert value(samples, "claude_proxy_build_info", version=__version__, python=_python()) == 1


def test_time_to_first_token_of_streams(start_proxy: StartProxy) -> None:
    """Only streams have a first token; it comes after the upstream's first-token delay."""
    with start_proxy() as server, sdk(server) as client:
        for _ in ask(client, "[[mock:first_token_delay_ms=300]]", stream=True):
            pass
        ask(client, "[[mock:first_token_delay_ms=300]]")
        samples = idle(server)

    ttft = "claude_proxy_time_to_first_token_seconds"
    assert value(samples, f"{ttft}_count", model="claude-2.1") == 1
    assert 0.3 <= value(samples, f"{ttft}_sum", model="claude-2.1") < 5
    assert value(samples, f"{ttft}_bucket", model="claude-2.1", le="0.25") == 0
    assert total(samples, f"{ttft}_count") == 1


def test_in_flight_gauges_follow_a_stream_and_a_plain_request(start_proxy: StartProxy) -> None:
    body = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": SLOW}]}
    with start_proxy() as server:
        with httpx.stream("POST", f"{server.base_url}{CHAT}", json=body, timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = response.iter_raw()
            next(chunks)  # the stream has started
            during = scrape(server)
            rest = b"".join(chunks)
        assert rest.endswith(b"data: [DONE]\n\n")
        after_stream = idle(server)

        with sdk(server) as client:
            worker = threading.Thread(target=ask, args=(client, SLOW))
            worker.start()
            waiting = scrape_when(server, lambda s: value(s, "claude_proxy_in_flight_requests") == 1)
            worker.join(timeout=30)
        after_plain = idle(server)

    assert value(during, "claude_proxy_in_flight_requests") == 1
    assert value(during, "claude_proxy_in_flight_streams") == 1
    assert value(after_stream, "claude_proxy_in_flight_streams") == 0
    assert value(waiting, "claude_proxy_in_flight_requests") == 1
    assert value(waiting, "claude_proxy_in_flight_streams") == 0
    assert value(after_plain, "claude_proxy_in_flight_streams") == 0
    assert total(after_plain, "claude_proxy_requests_total", status="200") == 2


def test_errors_and_retries(start_proxy: StartProxy) -> None:
    overloaded = "[[mock:status=529]]"
    flaky = f"[[mock:fail_times=1]][[mock:fail_id={marker()}]]"
    with start_proxy() as server, sdk(server) as client:
        with pytest.raises(openai.NotFoundError):
            ask(client, "hi", model="no-such-model")  # rejected by the proxy: no upstream call
        with pytest.raises(openai.InternalServerError) as caught:
            ask(client, overloaded)  # 3 attempts (max_retries=2), then 503 overloaded
        assert caught.value.status_code == 503
        assert ask(client, flaky).choices[0].message.content  # one retry, then 200
        with pytest.raises(openai.APIError):
            for _ in ask(client, "[[mock:stream_error_after=2]]", stream=True):
                pass  # the upstream fails inside the stream: status 200, error event
        with pytest.raises(openai.BadRequestError):
            ask(client, "hi", logprobs=True)  # refused before resolution: labelled through the alias
        samples = idle(server)

    requests = "claude_proxy_requests_total"
    assert value(samples, requests, route=CHAT, model="other", status="404", key="anonymous") == 1
    assert value(samples, requests, route=CHAT, model="claude-2.1", status="503", key="anonymous") == 1
    assert value(samples, requests, route=CHAT, model="claude-2.1", status="200", key="anonymous") == 2
    assert value(samples, requests, route=CHAT, model="claude-2.1", status="400", key="anonymous") == 1
    assert total(samples, requests) == 5

    assert value(samples, "claude_proxy_upstream_retries_total") == 3  # 2 for the 529s, 1 for the flake
    assert value(samples, "claude_proxy_upstream_errors_total", code="overloaded") == 1
    assert value(samples, "claude_proxy_upstream_errors_total", code="overloaded_error") == 1  # in-stream
    assert total(samples, "claude_proxy_upstream_errors_total") == 2
    # Upstream latency exists for the requests that reached the upstream: 503, flake, stream.
    assert value(samples, "claude_proxy_upstream_duration_seconds_count", model="claude-2.1") == 3


def test_upstream_client_errors_are_not_upstream_failures(start_proxy: StartProxy) -> None:
    """A 404 from the upstream for a passed-through model is the client's mistake, and its model is
    outside the configuration, so its label is `other` like any unconfigured id."""
    with start_proxy(config={"models": {"unknown": "pass_through"}}) as server, sdk(server) as client:
        for name in ("mystery-1", "mystery-2", "mystery-3"):
            with pytest.raises(openai.NotFoundError):
                ask(client, "hi", model=name)
        samples = idle(server)

    assert (
        value(
            samples, "claude_proxy_requests_total", route=CHAT, model="other", status="404", key="anonymous"
        )
        == 3
    )
    assert label_values(samples, "claude_proxy_requests_total", "model") == {"other"}
    assert value(samples, "claude_proxy_upstream_duration_seconds_count", model="other") == 3
    assert total(samples, "claude_proxy_upstream_errors_total") == 0


def test_label_values_are_bounded(start_proxy: StartProxy) -> None:
    with start_proxy() as server, sdk(server) as client:
        for index in range(4):
            with pytest.raises(openai.NotFoundError):
                ask(client, "hi", model=f"made-up-model-{index}")
            assert httpx.get(f"{server.base_url}/no/such/path/{index}").status_code == 404
            assert httpx.get(f"{server.base_url}/v1/models/claude-2.{index % 2}").status_code == 200
        assert httpx.get(f"{server.base_url}/models/gpt-4").status_code == 200  # the unprefixed route
        httpx.get(f"{server.base_url}/v1/models").raise_for_status()
        samples = idle(server)

    requests = "claude_proxy_requests_total"
    assert label_values(samples, requests, "route") == {
        CHAT,
        "other",
        "/v1/models/{model}",
        "/models/{model}",
        "/v1/models",
    }
    assert label_values(samples, requests, "model") == {"other", "none"}
    assert value(samples, requests, route=CHAT, model="other", status="404", key="anonymous") == 4
    assert value(samples, requests, route="other", model="none", status="404", key="anonymous") == 4
    assert (
        value(samples, requests, route="/v1/models/{model}", model="none", status="200", key="anonymous") == 4
    )


def test_key_names_and_rate_limit_rejections(start_proxy: StartProxy) -> None:
    """With client keys: series carry the key's configured name, a rejection by its limit is counted,
    and /metrics still answers without a key."""
    keys = [{"name": "team-a", "key_env": "TEAM_A_KEY", "limits": {"rpm": 2}}]
    with start_proxy(config={"auth": {"keys": keys}}, env={"TEAM_A_KEY": "sk-team-a"}) as server:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-team-a", max_retries=0) as client:
            first, second = ask(client, "one"), ask(client, "two")
            with pytest.raises(openai.RateLimitError):
                ask(client, "three")
        with sdk(server) as stranger, pytest.raises(openai.AuthenticationError):
            ask(stranger, "who am I")
        samples = idle(server)  # no Authorization header

    requests = "claude_proxy_requests_total"
    assert value(samples, requests, route=CHAT, model="claude-2.1", status="200", key="team-a") == 2
    assert value(samples, requests, route=CHAT, model="claude-2.1", status="429", key="team-a") == 1
    assert value(samples, requests, route=CHAT, model="none", status="401", key="anonymous") == 1
    assert value(samples, "claude_proxy_rate_limited_total", key="team-a", limit="rpm") == 1
    assert total(samples, "claude_proxy_rate_limited_total") == 1
    assert first.usage is not None and second.usage is not None
    tokens = {"direction": "prompt", "model": "claude-2.1", "key": "team-a"}
    prompt = first.usage.prompt_tokens + second.usage.prompt_tokens
    assert value(samples, "claude_proxy_tokens_total", **tokens) == prompt
    assert total(samples, "claude_proxy_upstream_errors_total") == 0


def test_probes_and_scrapes_are_not_counted(start_proxy: StartProxy) -> None:
    with start_proxy() as server:
        for _ in range(3):
            httpx.get(f"{server.base_url}/healthz").raise_for_status()
            httpx.get(f"{server.base_url}/readyz").raise_for_status()
            scrape(server)
        samples = scrape(server)

    assert total(samples, "claude_proxy_requests_total") == 0
    assert total(samples, "claude_proxy_request_duration_seconds_count") == 0
    assert value(samples, "claude_proxy_in_flight_requests") == 0  # the scrape itself is not in flight


def test_metrics_format_and_no_client_key(passthrough_proxy: Server) -> None:
    """Prometheus text by default, OpenMetrics when asked; no Authorization even in pass-through mode."""
    response = httpx.get(f"{passthrough_proxy.base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["x-request-id"]
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert families >= FAMILIES
    assert "process_resident_memory_bytes" in response.text

    headers = {"accept": "application/openmetrics-text; version=1.0.0"}
    open_metrics = httpx.get(f"{passthrough_proxy.base_url}/metrics", headers=headers)
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert open_metrics.text.endswith("# EOF\n")

    assert httpx.post(f"{passthrough_proxy.base_url}/metrics").status_code == 405
    assert httpx.get(f"{passthrough_proxy.base_url}/v1/metrics").status_code == 404


# -- multiprocess mode ----------------------------------------------------------------------------


def test_multiprocess_mode_aggregates_processes(mock_upstream: Server, tmp_path: Path) -> None:
    """Two proxy processes sharing PROMETHEUS_MULTIPROC_DIR (what uvicorn workers do): either one's
    scrape reports the sum of both; a worker that exits cleanly keeps its counters but drops its gauges."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {MULTIPROC_ENV: str(directory)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _proxy(mock_upstream, tmp_path / "a", env=env) as first, sdk(first) as first_client:
        with _proxy(mock_upstream, tmp_path / "b", env=env) as second, sdk(second) as second_client:
            ask(first_client, "one")
            ask(second_client, "two")
            ask(second_client, "three")
            with pytest.raises(openai.InternalServerError):
                ask(second_client, "[[mock:status=529]]")
            idle(first)
            from_first, from_second = idle(second), scrape(first)
            files = {path.name.rsplit("_", 1)[0] for path in directory.glob("*.db")}
            second_pid = second.process.pid
        after_exit = idle(first)

    ok = {"route": CHAT, "model": "claude-2.1", "status": "200", "key": "anonymous"}
    for samples in (from_first, from_second):
        assert value(samples, "claude_proxy_requests_total", **ok) == 3
        assert total(samples, "claude_proxy_requests_total") == 4
        assert value(samples, "claude_proxy_request_duration_seconds_count", route=CHAT) == 4
        assert value(samples, "claude_proxy_upstream_retries_total") == 2
        assert value(samples, "claude_proxy_upstream_errors_total", code="overloaded") == 1
        # livesum / livemax gauges: one series for the whole proxy, no pid label.
        assert value(samples, "claude_proxy_in_flight_requests") == 0
        assert value(samples, "claude_proxy_build_info", version=__version__, python=_python()) == 1
        assert "process_resident_memory_bytes" not in {name for name, _ in samples}
    assert {"counter", "histogram", "gauge_livesum", "gauge_livemax"} <= files
    assert value(after_exit, "claude_proxy_requests_total", **ok) == 3  # the exited worker's counts stay
    assert not list(directory.glob(f"gauge_live*_{second_pid}.db"))


def test_workers_serve_one_view_of_the_metrics(start_proxy: StartProxy, tmp_path: Path) -> None:
    """`--workers 2` with the operator's directory: its stale files are cleared at start, both workers
    write into it, and every scrape, whichever worker answers, counts every request."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left by an earlier run")
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    env = {MULTIPROC_ENV: str(directory), "PROXY_SERVER__WORKERS": "2"}
    with start_proxy(env=env) as server:
        for _ in range(12):  # a new connection each time, so that either worker may take it
            httpx.post(f"{server.base_url}{CHAT}", json=body, timeout=30).raise_for_status()
        scrapes = [idle(server) for _ in range(6)]
        pids = _pids(directory, "counter")
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _pids(directory, "counter")

    assert len(pids) == 2
    assert 999999 not in pids
    for samples in scrapes:
        assert total(samples, "claude_proxy_requests_total", route=CHAT, status="200") == 12
        assert value(samples, "claude_proxy_request_duration_seconds_count", route=CHAT) == 12
        assert value(samples, "claude_proxy_in_flight_requests") == 0


def test_multiprocess_mode_forgets_a_killed_workers_in_flight_requests(
    mock_upstream: Server, tmp_path: Path
) -> None:
    """A worker killed mid-request leaves `in_flight_requests` at 1 in its file; the worker started in
    its place (as uvicorn does) drops the dead worker's gauges."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {MULTIPROC_ENV: str(directory)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    slow = "[[mock:tokens=200]][[mock:token_delay_ms=50]]"
    with _proxy(mock_upstream, tmp_path / "a", env=env) as doomed, sdk(doomed) as client:
        threading.Thread(target=_ignore_errors, args=(lambda: ask(client, slow),), daemon=True).start()
        stuck = scrape_when(doomed, lambda s: value(s, "claude_proxy_in_flight_requests") == 1)
        doomed.process.kill()
        doomed.process.wait(timeout=10)
        with _proxy(mock_upstream, tmp_path / "b", env=env) as replacement:
            samples = scrape(replacement)

    assert value(stuck, "claude_proxy_in_flight_requests") == 1
    assert value(samples, "claude_proxy_in_flight_requests") == 0


def test_prepare_multiprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "")  # so that monkeypatch restores the variable's absence...
    monkeypatch.delenv(MULTIPROC_ENV)  # ...after prepare_multiprocess sets it
    prepare_multiprocess(1)
    assert MULTIPROC_ENV not in os.environ  # one worker: plain in-process metrics

    prepare_multiprocess(4)
    created = Path(os.environ[MULTIPROC_ENV])
    assert created.is_dir() and not any(created.iterdir())

    operator = tmp_path / "operator-dir"
    operator.mkdir()
    (operator / "counter_123.db").write_bytes(b"stale")
    (operator / "notes.txt").write_text("kept")
    monkeypatch.setenv(MULTIPROC_ENV, str(operator))
    prepare_multiprocess(4)
    assert os.environ[MULTIPROC_ENV] == str(operator)
    assert sorted(path.name for path in operator.iterdir()) == ["notes.txt"]

    missing = tmp_path / "not-there-yet"
    monkeypatch.setenv(MULTIPROC_ENV, str(missing))
    prepare_multiprocess(1)
    assert missing.is_dir()

    monkeypatch.setenv(MULTIPROC_ENV, "")  # set but empty: prometheus-client would use the working dir
    prepare_multiprocess(1)
    assert MULTIPROC_ENV not in os.environ


# -- fields the routes fill later, fed directly -------------------------------------------------------


def _finish(
    metrics: Metrics, record: RequestLog, status: int = 200, route: str = CHAT, streamed: bool = False
) -> None:
    metrics.request_started()
    if streamed:
        metrics.response_started(
            {"type": "http.response.start", "headers": [(b"content-type", b"text/event-stream")]}
        )
    record.route = route
    metrics.request_finished(status, 0.25, record, streamed)


def _series(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    """Every series of the sample `name` in an in-process registry, by label values."""
    return {
        tuple(sample.labels.values()): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def _metrics() -> Metrics:
    assert MULTIPROC_ENV not in os.environ
    return Metrics(["claude-2.1", "claude-instant-1.2"], {"gpt-4": "claude-2.1"})


def test_time_to_first_token_and_key_names() -> None:
    metrics = _metrics()
    record = RequestLog(
        "req_1",
        model="gpt-4",
        upstream_model="claude-2.1",
        stream=True,
        n=1,
        prompt_tokens=7,
        completion_tokens=11,
        upstream_ms=80.0,
        attempts=1,
        first_token_ms=120.0,
        key_name="team-a",
    )
    _finish(metrics, record, streamed=True)
    get = metrics.registry.get_sample_value
    assert get("claude_proxy_time_to_first_token_seconds_count", {"model": "claude-2.1"}) == 1
    assert get("claude_proxy_time_to_first_token_seconds_sum", {"model": "claude-2.1"}) == 0.12
    assert get("claude_proxy_time_to_first_token_seconds_bucket", {"model": "claude-2.1", "le": "0.1"}) == 0
    assert get("claude_proxy_time_to_first_token_seconds_bucket", {"model": "claude-2.1", "le": "0.25"}) == 1
    requests = {"route": CHAT, "model": "claude-2.1", "status": "200", "key": "team-a"}
    assert get("claude_proxy_requests_total", requests) == 1
    tokens = {"model": "claude-2.1", "key": "team-a"}
    assert get("claude_proxy_tokens_total", {"direction": "prompt", **tokens}) == 7
    assert get("claude_proxy_tokens_total", {"direction": "completion", **tokens}) == 11
    assert get("claude_proxy_in_flight_streams", {}) == 0
    assert get("claude_proxy_in_flight_requests", {}) == 0


def test_rate_limit_decisions() -> None:
    metrics = _metrics()
    decisions = ["rejected:rpm", "rejected:rpm", "too_large:tpm", "allowed", "fail_open", "fail_closed"]
    for limit in decisions:
        _finish(metrics, RequestLog("r", model="gpt-4", key_name="team-b", limit=limit), status=429)
    _finish(metrics, RequestLog("r", model="gpt-4", limit="rejected:concurrency"), status=429)
    _finish(metrics, RequestLog("r", model="gpt-4", limit="fail_open"), status=200)
    get = metrics.registry.get_sample_value
    assert get("claude_proxy_rate_limited_total", {"key": "team-b", "limit": "rpm"}) == 2
    assert get("claude_proxy_rate_limited_total", {"key": "team-b", "limit": "tpm"}) == 1
    assert get("claude_proxy_rate_limited_total", {"key": "anonymous", "limit": "concurrency"}) == 1
    assert _series(metrics, "claude_proxy_rate_limited_total") == {
        ("team-b", "rpm"): 2.0,
        ("team-b", "tpm"): 1.0,
        ("anonymous", "concurrency"): 1.0,
    }
    assert _series(metrics, "claude_proxy_rate_limit_unavailable_total") == {
        ("fail_open",): 2.0,
        ("fail_closed",): 1.0,
    }
    assert get("claude_proxy_upstream_errors_total", {"code": "rate_limit_exceeded"}) is None  # no attempt


@pytest.mark.parametrize(
    ("status", "code", "attempts", "counted_as"),
    [
        (503, "overloaded", 3, "overloaded"),
        (502, "upstream_connection_error", 1, "upstream_connection_error"),
        (429, "rate_limit_exceeded", 1, "rate_limit_exceeded"),
        (200, "api_error", 1, "api_error"),  # inside a stream
        (502, "some_new_code", 1, "other"),  # bounded: unknown codes are `other`
        (404, "model_not_found", 1, None),  # the client's mistake
        (400, "context_length_exceeded", 1, None),
        (500, "internal_error", 1, None),  # the proxy's own failure
        (503, "server_overloaded", 1, None),
        (200, "internal_error", 1, None),
        (404, "model_not_found", None, None),  # never reached the upstream
        (429, "rate_limit_exceeded", None, None),  # the proxy's own limiter
    ],
)
def test_upstream_error_rule(status: int, code: str, attempts: int | None, counted_as: str | None) -> None:
    metrics = _metrics()
    _finish(
        metrics, RequestLog("r", upstream_model="claude-2.1", n=1, attempts=attempts, error_code=code), status
    )
    counted = _series(metrics, "claude_proxy_upstream_errors_total")
    assert counted == ({(counted_as,): 1.0} if counted_as else {})


def test_retries_count_attempts_beyond_each_call() -> None:
    metrics = _metrics()
    _finish(metrics, RequestLog("r", upstream_model="claude-2.1", n=3, attempts=3))  # three calls, no retry
    _finish(metrics, RequestLog("r", upstream_model="claude-2.1", n=3, attempts=5))
    _finish(metrics, RequestLog("r", upstream_model="claude-2.1", n=1, attempts=1))
    assert metrics.registry.get_sample_value("claude_proxy_upstream_retries_total", {}) == 2


# -- helpers --------------------------------------------------------------------------------------


def _python() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


def _pids(directory: Path, kind: str) -> set[int]:
    return {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob(f"{kind}_*.db")}


def _ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        call()
