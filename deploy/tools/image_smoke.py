"""Ask a running proxy container the questions scripts/check_image.sh needs answered (standard library only).

    python3 deploy/tools/image_smoke.py http://127.0.0.1:8080

Waits (bounded) for GET /healthz, checks GET /readyz, then streams one chat completion and requires an
SSE body of `data:` events with content that ends with `data: [DONE]`. Exits 0, or 1 with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def wait_for_health(base: str, *, timeout: float) -> None:
    """Poll /healthz until it answers 200; the container may still be starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                message = f"image_smoke: {base}/healthz did not answer within {timeout:.0f} s: {exc}"
                raise SystemExit(message) from None
        time.sleep(0.5)


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def stream_chat(base: str) -> tuple[str, str, str]:
    """One streamed chat completion: (content type, the raw SSE body, the text the deltas carry)."""
    body = {
        "model": "claude-2.1",
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer unused-in-server-key-mode"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        content_type = reply.headers.get("Content-Type", "")
        raw = reply.read().decode()
    text = ""
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return content_type, raw, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="the proxy's address, e.g. http://127.0.0.1:8080")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for /healthz")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")

    wait_for_health(base, timeout=args.timeout)
    status = get_status(base + "/readyz")
    print(f"   GET /healthz: 200; GET /readyz: {status}")
    if status != 200:
        print(f"image_smoke: /readyz answered {status}, expected 200", file=sys.stderr)
        return 1
    content_type, raw, text = stream_chat(base)
    events = [line for line in raw.splitlines() if line.startswith("data: ")]
    print(f"   streamed chat completion: {len(events)} events, {content_type!r}, text {text!r}")
    if not content_type.startswith("text/event-stream"):
        print(f"image_smoke: the stream's content type is {content_type!r}", file=sys.stderr)
        return 1
    if not raw.rstrip("\n").endswith("data: [DONE]") or not text:
        print(
            f"image_smoke: the SSE body does not end with data: [DONE] after content:\n{raw}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
