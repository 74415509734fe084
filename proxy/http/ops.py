"""Operational endpoints: liveness and readiness probes. Neither needs a client key.

`/healthz` answers while the process serves requests. `/readyz` checks what a request depends on
(the configuration, the upstream client, and the limit store when one is configured) and answers 503
with the failing checks otherwise, or while the process drains for shutdown, so a load balancer stops
sending traffic to this replica.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.gateway import Gateway
from proxy.http.responses import json_response

#: Paths that answer operators, not clients: no key, and kept out of the request metrics (they would
#: drown them in noise).
HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
PROBE_PATHS = frozenset({HEALTHZ, READYZ, METRICS})


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:
        return json_response({"status": "starting", "checks": {"gateway": "not started"}}, status=503)
    checks = await gateway.readiness()
    if request.app.drain.draining:
        checks["shutdown"] = "draining"
    ready = all(value == "ok" for value in checks.values())
    return json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
