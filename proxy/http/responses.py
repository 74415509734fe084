"""The one way endpoints answer with JSON (compact, via orjson)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json", headers=headers)
