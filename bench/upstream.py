"""A very cheap stand-in for Anthropic's legacy `POST /v1/complete`, for benchmarking the proxy.

Raw asyncio (uvloop when installed) with the httptools request parser: HTTP/1.1 keep-alive,
Content-Length or chunked request bodies. It answers with the real 2023-06-01 shapes:

* non-streamed: `{"type":"completion","id":…,"completion":…,"stop_reason":"stop_sequence","model":…,
  "stop":"\\n\\nHuman:","log_id":…}` with `request-id` and `content-type: application/json`;
* `"stream": true`: a chunked `text/event-stream` of `event: completion` events (CRLF line ends, JSON padded
  before its closing brace as the real API does), an `event: ping` after the 2nd token, and a final event
  carrying `stop_reason`; the body then ends.

The answer is `benchlib.expected_text(tokens)`; the prompt's `[[bench:tokens=N;delay_ms=D]]` marker picks N
and the delay before each streamed token. Requests are checked (path, method, `x-api-key`,
`anthropic-version`, JSON body, legacy prompt turns), so a proxy sending something wrong gets an error
that the load generator counts.

Run: `python bench/upstream.py --port 0` prints `LISTENING <port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import signal
import sys
import time
from typing import Any, cast

import httptools
import orjson
from benchlib import parse_marker, token

VERSIONS = (b"2023-06-01", b"2023-01-01")
PADDING = (5, 8, 4, 11, 0, 10, 6)  # spaces before the closing brace, as in captured real streams
PING = b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
CHUNKED_END = b"0\r\n\r\n"
WANTED_HEADERS = frozenset({b"x-api-key", b"anthropic-version", b"content-type"})


class Clock:
    """The `date` header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


class State:
    """Counters and caches shared by every connection."""

    def __init__(self, api_key: str | None, *, trailing_space: bool = False) -> None:
        self.api_key = api_key.encode() if api_key else None
        # Accept a prompt ending in "\n\nAssistant: " (trailing spaces), which the real API sanitizes
        # and LiteLLM sends; off by default, so the proxy's prompts are held to the strict form.
        self.trailing_space = trailing_space
        self.clock = Clock()
        self.counter = 0
        self.requests = 0
        self.streams = 0
        self.open_streams = 0
        self.token_json: dict[int, bytes] = {}
        self.text_json: dict[int, bytes] = {}

    def next_id(self) -> bytes:
        self.counter += 1
        return b"%024d" % self.counter

    def encoded_token(self, index: int) -> bytes:
        key = index % 1_000_000
        cached = self.token_json.get(key)
        if cached is None:
            cached = self.token_json[key] = orjson.dumps(token(index))
        return cached

    def encoded_text(self, tokens: int) -> bytes:
        cached = self.text_json.get(tokens)
        if cached is None:
            cached = self.text_json[tokens] = orjson.dumps("".join(token(i) for i in range(tokens)))
        return cached


def head(state: State, status: bytes, fields: list[bytes], keep_alive: bool) -> bytes:
    lines = [
        b"HTTP/1.1 " + status,
        b"date: " + state.clock.date(),
        *fields,
        b"connection: keep-alive" if keep_alive else b"connection: close",
        b"request-id: req_bench" + state.next_id(),
        b"via: 1.1 google",
        b"server: cloudflare",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_response(state: State, status: bytes, error_type: str, message: str, keep_alive: bool) -> bytes:
    body = orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    fields = [b"content-type: application/json", b"content-length: %d" % len(body)]
    return head(state, status, fields, keep_alive) + body


class Stream:
    """One streamed answer, written token by token (call_soon, or call_later with a delay)."""

    def __init__(self, conn: UpstreamProtocol, tokens: int, delay: float, model: bytes) -> None:
        state = conn.state
        self.conn = conn
        self.tokens = tokens
        self.delay = delay
        self.index = 0
        self.handle: asyncio.Handle | None = None
        ident = b'"compl_bench' + state.next_id() + b'"'
        self.head = b'event: completion\r\ndata: {"type":"completion","id":' + ident + b',"completion":'
        self.open_tail = b',"stop_reason":null,"model":' + model + b',"stop":null,"log_id":' + ident
        self.final_tail = (
            b',"stop_reason":"stop_sequence","model":' + model + b',"stop":"\\n\\nHuman:","log_id":' + ident
        )

    @staticmethod
    def chunk(payload: bytes) -> bytes:
        return b"%x\r\n" % len(payload) + payload + b"\r\n"

    def event(self, text: bytes, tail: bytes, index: int) -> bytes:
        return self.head + text + tail + b" " * PADDING[index % len(PADDING)] + b"}\r\n\r\n"

    def schedule(self) -> None:
        loop = self.conn.loop
        if self.delay > 0:
            self.handle = loop.call_later(self.delay, self.step)
        else:
            self.handle = loop.call_soon(self.step)

    def step(self) -> None:
        self.handle = None
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        state = self.conn.state
        if self.index < self.tokens:
            out = self.chunk(self.event(state.encoded_token(self.index), self.open_tail, self.index))
            self.index += 1
            if self.index == 2:
                out += self.chunk(PING)
        else:
            out = b""
        if self.index >= self.tokens:
            out += self.chunk(self.event(b'""', self.final_tail, self.index)) + CHUNKED_END
            transport.write(out)
            self.conn.stream_done()
            return
        transport.write(out)
        self.schedule()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer them one at a time."""

    def __init__(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.stream: Stream | None = None
        self.pending: collections.deque[tuple[bytes, bytes, dict[bytes, bytes], bytes, bool]] = (
            collections.deque()
        )

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                reply = error_response(
                    self.state, b"400 Bad Request", "invalid_request_error", "bad HTTP", False
                )
                self.transport.write(reply)
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None
            self.state.open_streams -= 1
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in WANTED_HEADERS:
            self.headers[name] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (
            self.parser.get_method(),
            self.url,
            self.headers,
            b"".join(self.body),
            self.parser.should_keep_alive(),
        )
        if self.stream is not None:  # a pipelined request: answer it after the stream
            self.pending.append(request)
            return
        self.handle(*request)

    # answering
    def stream_done(self) -> None:
        self.stream = None
        self.state.open_streams -= 1
        while self.pending and self.stream is None:
            self.handle(*self.pending.popleft())

    def reply(self, data: bytes, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()

    def handle(
        self, method: bytes, url: bytes, headers: dict[bytes, bytes], raw: bytes, keep_alive: bool
    ) -> None:
        state = self.state
        state.requests += 1
        if url == b"/healthz":
            self.reply(
                head(state, b"200 OK", [b"content-type: text/plain", b"content-length: 2"], keep_alive)
                + b"ok",
                keep_alive,
            )
            return
        if url != b"/v1/complete" or method != b"POST":
            self.reply(
                error_response(state, b"404 Not Found", "not_found_error", "Not found", keep_alive),
                keep_alive,
            )
            return
        key = headers.get(b"x-api-key")
        if not key or (state.api_key is not None and key != state.api_key):
            reply = error_response(
                state, b"401 Unauthorized", "authentication_error", "invalid x-api-key", keep_alive
            )
            self.reply(reply, keep_alive)
            return
        if headers.get(b"anthropic-version") not in VERSIONS:
            message = "anthropic-version: header is required"
            self.reply(
                error_response(state, b"400 Bad Request", "invalid_request_error", message, keep_alive),
                keep_alive,
            )
            return
        problem, body = self.parse_body(raw, trailing_space=self.state.trailing_space)
        if problem is not None:
            self.reply(
                error_response(state, b"400 Bad Request", "invalid_request_error", problem, keep_alive),
                keep_alive,
            )
            return
        prompt: str = body["prompt"]
        tokens, delay_ms = parse_marker(prompt)
        limit = body["max_tokens_to_sample"]
        stop_reason, stop = b'"stop_sequence"', b'"\\n\\nHuman:"'
        if tokens > limit:
            tokens, stop_reason, stop = limit, b'"max_tokens"', b"null"
        model = orjson.dumps(body["model"])
        if body.get("stream") is True:
            fields = [
                b"content-type: text/event-stream; charset=utf-8",
                b"transfer-encoding: chunked",
                b"cache-control: no-cache",
            ]
            if self.transport is None:
                return
            self.transport.write(head(state, b"200 OK", fields, True))
            state.streams += 1
            state.open_streams += 1
            self.stream = Stream(self, tokens, delay_ms / 1000.0, model)
            self.stream.schedule()
            return
        ident = b'"compl_bench' + state.next_id() + b'"'
        payload = (
            b'{"type":"completion","id":'
            + ident
            + b',"completion":'
            + state.encoded_text(tokens)
            + b',"stop_reason":'
            + stop_reason
            + b',"model":'
            + model
            + b',"stop":'
            + stop
            + b',"log_id":'
            + ident
            + b"}"
        )
        fields = [b"content-type: application/json", b"content-length: %d" % len(payload)]
        self.reply(head(state, b"200 OK", fields, keep_alive) + payload, keep_alive)

    @staticmethod
    def parse_body(raw: bytes, *, trailing_space: bool = False) -> tuple[str | None, dict[str, Any]]:
        """(problem, body): the checks a real upstream would make that matter to the benchmark."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "request body is not valid JSON", {}
        if not isinstance(body, dict):
            return "request body must be an object", {}
        prompt, model, limit = body.get("prompt"), body.get("model"), body.get("max_tokens_to_sample")
        if not isinstance(model, str) or not model.startswith("claude-"):
            return f"model: {model!r} is not a legacy Claude model", {}
        if not isinstance(limit, int) or limit < 1:
            return "max_tokens_to_sample: must be a positive integer", {}
        if isinstance(prompt, str) and trailing_space:
            prompt = prompt.rstrip(" ")
        if not isinstance(prompt, str) or "\n\nHuman:" not in prompt or not prompt.endswith("\n\nAssistant:"):
            return 'prompt must contain "\\n\\nHuman:" turns and end with "\\n\\nAssistant:"', {}
        if "stream" in body and not isinstance(body["stream"], bool):
            return "stream: must be a boolean", {}
        return None, body


async def serve(host: str, port: int, api_key: str | None, *, trailing_space: bool = False) -> None:
    loop = asyncio.get_running_loop()
    state = State(api_key, trailing_space=trailing_space)
    server = await loop.create_server(lambda: UpstreamProtocol(state, loop), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--api-key", help="accept only this x-api-key (default: any non-empty key)")
    parser.add_argument(
        "--accept-trailing-space",
        action="store_true",
        help='accept prompts ending in "\\n\\nAssistant: " (the real API sanitizes trailing spaces)',
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    run = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
    run(serve(args.host, args.port, args.api_key, trailing_space=args.accept_trailing_space))
    return 0


if __name__ == "__main__":
    sys.exit(main())
