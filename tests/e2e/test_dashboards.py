"""The Grafana dashboard and the alert rules query only metrics a real proxy exports.

A proxy with a two-entry pool (one entry a closed port, so it cools down), client keys and an rpm
limit serves a plain request, a stream, an upstream error and a rate-limit rejection; its live
`/metrics` is scraped, and every metric name in every dashboard query and alert expression must be in
that scrape. Names come from promql-parser's syntax tree, not from a regular expression, so label
names, functions, `by (...)` lists and Grafana's `$variables` are never mistaken for metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVER_KEY, _proxy
from tests.support.servers import HOST, Server, access_line, free_port

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "claude-legacy-proxy.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"

#: Sample names a family of each type exposes (a labelled metric without series yet shows only its
#: HELP and TYPE lines, which still prove the proxy exports it).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
#: Grafana's interval variables, replaced by a duration so that the query parses.
GRAFANA_DURATIONS = re.compile(
    r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}"
)
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", re.S)


# -- PromQL ------------------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects (by name or `{__name__="..."}`)."""
    return set(_selected(promql_parser.parse(GRAFANA_DURATIONS.sub("5m", expr))))


def _selected(node: Any) -> Iterator[str]:
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                yield matcher.value
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _selected(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _selected(node.lhs)
        yield from _selected(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for argument in node.args:
            yield from _selected(argument)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from _selected(node.expr)
        if node.param is not None:
            yield from _selected(node.param)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        yield from _selected(node.expr)
    elif not isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)):
        raise TypeError(f"unknown PromQL node {type(node).__name__}: {node}")


def test_metric_names_come_from_the_syntax_tree() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_seconds_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (job) group_left max(b_total offset 5m) + -(c) * sum_over_time(d[10m:1m])"
        ' or {__name__="e", job="x"} > bool 1 and topk(3, f)'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d", "e", "f"}
    assert metric_names("vector(1) * time()") == set()
    with pytest.raises(ValueError):
        metric_names("sum(rate(x[5m])")


# -- what the files query ----------------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"variable {variable['name']}: only label_values(expr, label) is checked"
            queries.append((f"variable {variable['name']}", match.group(1)))
    return queries


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert graphs and all(panel.get("targets") for panel in graphs), "every panel queries something"
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$\{?([a-z_]+)", json.dumps(dashboard["panels"])))
    assert used - {"__rate_interval"} <= variables


# -- a live scrape -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Server) -> set[str]:
    """Sample names of a live scrape after a plain request, a stream, an error and a 429."""

    dead = f"http://{HOST}:{free_port()}"
    config = {
        "upstream": {
            "pool": [
                {"name": "dead", "base_url": dead, "api_key": SERVER_KEY, "weight": 100},
                {"name": "live", "base_url": mock_upstream.base_url, "api_key": SERVER_KEY, "weight": 1},
            ],
            "cooldown": 600,
        },
        "auth": {"keys": [{"name": "team-a", "key_env": "TEAM_A_KEY", "limits": {"rpm": 3}}]},
    }
    directory = tmp_path_factory.mktemp("dashboards")
    with _proxy(mock_upstream, directory, config=config, env={"TEAM_A_KEY": "sk-team-a"}) as server:
        base = f"{server.base_url}/v1"
        with openai.OpenAI(base_url=base, api_key="sk-team-a", max_retries=0) as client:
            messages: Any = [{"role": "user", "content": "Hello dashboards"}]
            headers = {"x-request-id": "req-dash-first"}
            client.chat.completions.create(model="gpt-4", messages=messages, extra_headers=headers)
            chunks = client.chat.completions.create(model="claude-2.1", messages=messages, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            with pytest.raises(openai.InternalServerError):
                error: Any = [{"role": "user", "content": "[[mock:status=529]]"}]
                client.chat.completions.create(model="claude-2.1", messages=error)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="claude-2.1", messages=messages)
        assert access_line(server, "req-dash-first")["upstream_entry"] == "dead,live"
        response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


def test_the_scrape_has_series_of_the_new_gauges(exported: set[str]) -> None:
    """Not vacuous: the traffic above produced the series the dashboard's upstream rows show."""
    assert {
        "claude_proxy_upstream_entry_healthy",
        "claude_proxy_upstream_entry_cooldown_seconds",
        "claude_proxy_upstream_active_calls",
        "claude_proxy_upstream_max_concurrent_calls",
        "claude_proxy_rate_limit_backend_up",
        "claude_proxy_rate_limited_total",
        "claude_proxy_time_to_first_token_seconds_bucket",
        "claude_proxy_upstream_errors_total",
    } <= exported


@pytest.mark.parametrize(
    ("where", "expr"), [*dashboard_queries(), *alert_expressions()], ids=lambda value: str(value)[:60]
)
def test_every_query_names_exported_metrics(exported: set[str], where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: selects no metric"
    missing = names - exported
    assert not missing, f"{where}: {sorted(missing)} not in a live scrape"
