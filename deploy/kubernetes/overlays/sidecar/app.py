"""Example application for overlays/sidecar: a tiny web app that asks the proxy on localhost.

    GET /healthz          200 while the app runs (liveness)
    GET /readyz           200 when the proxy sidecar answers its /readyz (readiness)
    GET /ask?q=question   the answer of a chat completion through http://127.0.0.1:8080/v1

Standard library only, so it runs in the plain python image. The app never sees the upstream key:
the sidecar holds it and accepts any bearer token from localhost.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROXY_URL = os.environ.get("PROXY_URL", "http://127.0.0.1:8080")
PORT = int(os.environ.get("PORT", "8000"))


class Handler(BaseHTTPRequestHandler):
    def reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            return self.reply(200, "ok\n")
        if url.path == "/readyz":
            try:
                with urllib.request.urlopen(f"{PROXY_URL}/readyz", timeout=2):
                    return self.reply(200, "ready\n")
            except (urllib.error.URLError, OSError) as exc:
                return self.reply(503, f"proxy not ready: {exc}\n")
        if url.path == "/ask":
            question = urllib.parse.parse_qs(url.query).get("q", ["Say hello."])[0]
            body = {"model": "gpt-4", "messages": [{"role": "user", "content": question}]}
            request = urllib.request.Request(
                f"{PROXY_URL}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": "Bearer example-app"},
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as answer:
                    text = json.load(answer)["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as exc:
                return self.reply(502, f"proxy said {exc.code}: {exc.read().decode(errors='replace')}\n")
            return self.reply(200, text + "\n")
        return self.reply(404, "not found\n")

    def log_message(self, format: str, *args: object) -> None:  # one line per request on stdout
        print(f"{self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
