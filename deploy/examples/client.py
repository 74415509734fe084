"""A tiny OpenAI-style client of the proxy, standard library only (runs in a bare python image).

    PROXY_URL=http://127.0.0.1:8080 CLIENT_KEY=... python client.py

Waits for the proxy's /readyz, lists the models, asks for one chat completion, streams another, and
exits 0 - or 1 with the reason. Used by deploy/docker-compose.yaml (profiles sidecar and demo).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

PROXY_URL = os.environ.get("PROXY_URL", "http://127.0.0.1:8080").rstrip("/")
CLIENT_KEY = os.environ.get("CLIENT_KEY", "unused-in-server-key-mode")
MODEL = os.environ.get("MODEL", "gpt-4")


def request(path: str, body: dict[str, object] | None = None) -> urllib.request.Request:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    return urllib.request.Request(PROXY_URL + path, data=data, headers=headers)


def wait_until_ready(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(PROXY_URL + "/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"client: the proxy at {PROXY_URL} is not ready: {exc}") from None
        time.sleep(1)


def main() -> int:
    wait_until_ready()
    with urllib.request.urlopen(request("/v1/models"), timeout=10) as reply:
        models = [model["id"] for model in json.load(reply)["data"]]
    print(f"{len(models)} models, e.g. {', '.join(models[:3])}")

    messages = [{"role": "user", "content": "Say hello in five words."}]
    with urllib.request.urlopen(
        request("/v1/chat/completions", {"model": MODEL, "messages": messages}), timeout=120
    ) as reply:
        answer = json.load(reply)
    print(f"chat: {answer['choices'][0]['message']['content']!r} usage={answer['usage']}")

    body = {"model": MODEL, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    print("stream: ", end="", flush=True)
    with urllib.request.urlopen(request("/v1/chat/completions", body), timeout=120) as reply:
        for raw in reply:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            for choice in chunk.get("choices", []):
                print(choice["delta"].get("content") or "", end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except urllib.error.HTTPError as exc:
        print(f"client: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        sys.exit(1)
