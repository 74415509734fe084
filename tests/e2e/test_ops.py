"""Probes: `/healthz` and `/readyz` answer without a client key, in JSON, and are not under `/v1`."""

from __future__ import annotations

import httpx

from tests.support.servers import Server


def test_healthz_answers_without_a_key(proxy: Server) -> None:
    response = httpx.get(f"{proxy.base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_readyz_reports_each_check(proxy: Server) -> None:
    response = httpx.get(f"{proxy.base_url}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["upstream_client"] == "ok"


def test_probes_only_answer_get(proxy: Server) -> None:
    response = httpx.post(f"{proxy.base_url}/healthz")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
