"""The stack's floor: uvicorn (httptools, uvloop) + one aiohttp upstream call, and no translation.

Serves just enough of `POST /v1/chat/completions` for the benchmark's content check: the last message
becomes a legacy prompt, the upstream's completion becomes the answer. No validation, no logging, no
metrics, no limits. Comparing its CPU per request with the proxy's shows what the proxy's own code
costs and what the server and client libraries cost on this machine. Since the proxy moved its upstream
calls to its own HTTP/1.1 client (`proxy/upstream/http11.py`), this floor's aiohttp call costs more than
the proxy's: read it as "uvicorn + a general-purpose client", not as a bound the proxy cannot pass.

    .venv/bin/python bench/run.py --only 'chat c=10' --no-idle \
        --proxy-command '{python} bench/floor.py --host {host} --port {port}'
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import aiohttp
import orjson
import uvicorn

UPSTREAM = os.environ.get("ANTHROPIC_BASE_URL", "http://127.0.0.1:8090") + "/v1/complete"
HEADERS = {
    "x-api-key": os.environ.get("ANTHROPIC_API_KEY", "sk-floor"),
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


class Floor:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4096))
                await send({"type": "lifespan.startup.complete"})
            assert self.session is not None
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        prompt = f"\n\nHuman: {request['messages'][-1]['content']}\n\nAssistant:"
        upstream = {"model": "claude-2.1", "prompt": prompt, "max_tokens_to_sample": 256}
        assert self.session is not None
        async with self.session.post(UPSTREAM, data=orjson.dumps(upstream), headers=HEADERS) as response:
            answer = orjson.loads(await response.read())
        reply = {
            "id": "chatcmpl-floor",
            "object": "chat.completion",
            "created": 0,
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer["completion"]},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(reply)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    uvicorn.run(Floor(), host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")
