"""The shutdown state (`proxy.http.drain`) and what /readyz makes of it."""

from __future__ import annotations

from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import Config
from proxy.http.drain import Drain
from tests.support.wait import eventually


async def test_callbacks_run_at_the_deadline_only_while_watched() -> None:
    drain = Drain()
    calls: list[str] = []
    with drain.watch(lambda: calls.append("inside")):
        drain.begin(0.05)
        drain.begin(10)  # a second signal does not move the deadline
        assert drain.draining and not drain.expired
        await eventually(lambda: drain.expired, "the drain deadline passes")
    assert drain.expired
    assert calls == ["inside"]
    with drain.watch(lambda: calls.append("late")):  # watching after the deadline fires at once
        pass
    assert calls == ["inside", "late"]


def test_readyz_reports_draining() -> None:
    drain = Drain()
    app = create_app(Config.model_validate({"upstream": {"base_url": "http://127.0.0.1:9"}}), drain)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        drain.draining = True
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["shutdown"] == "draining"
        assert client.get("/healthz").status_code == 200  # still alive while draining
