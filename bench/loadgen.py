"""Closed-loop HTTP/1.1 load generator for the benchmark, on raw asyncio (uvloop) with httptools' parser.

It runs as its own process so its CPU never lands on the proxy's account: it reads one JSON command per
line on stdin and answers with one JSON result line on stdout (plus `progress` lines when asked).
Each of `concurrency` keep-alive connections sends its next request as soon as the previous answer is
complete (driven from the protocol callbacks, no task per request). Every answer is checked: status 200,
and the text (reassembled from the SSE chunks for streams) equal to the expected completion, with the
right finish reason and stream terminator. Anything else is counted, never raised.

Modes: `duration` (warm-up, then a timed window; throughput counts answers completed inside the window)
or `requests_per_connection` (each connection sends exactly that many requests, e.g. the idle streams).

Nothing may hang: requests are aborted after `timeout` (the watchdog), connects too, and a command whose
connection slots have not all finished by its deadline ends anyway, each slot left counted as an error
that says in which state it was. Result lines are written with `write_all`: a blocking pipe write can
return short with no error (see there), and a lost tail would leave the runner waiting for the rest of
the line while this process waits for the next command.
"""

from __future__ import annotations

import asyncio
import collections
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson

ERROR_SAMPLES = 5
# Seconds past the last moment every connection slot should have finished before the command gives up
# on the ones left and reports them as errors.
STALL_GRACE = 5.0
CONNECT_TIMEOUT = 10.0


@dataclass
class Command:
    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: str
    kind: str  # "chat" | "completions" (OpenAI, through the proxy) | "complete" (legacy, direct)
    stream: bool
    expected: str
    concurrency: int
    duration: float = 0.0
    warmup: float = 0.0
    requests_per_connection: int = 0
    timeout: float = 30.0
    progress: bool = False
    # Spread the connections' first requests evenly over this many seconds, so equally long (paced)
    # streams do not run in lockstep and hit the server in bursts.
    stagger: float = 0.0
    # Known deviations to accept (and count in `deviations`) instead of failing the answer, so a peer
    # gateway's figures can still be measured: "done" (a stream that ends without its terminator),
    # "finish_reason" (another finish reason than the expected one), "shape" (a stream chunk without its
    # `finish_reason` or `text` field, which OpenAI always sends). Wrong text is never accepted.
    tolerate: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Command:
        return cls(**data)

    def request_bytes(self) -> bytes:
        body = self.body.encode()
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    completed_total: int = 0
    ok: int = 0
    errors: int = 0
    bad_content: int = 0
    tokens: int = 0
    error_samples: collections.Counter[str] = field(default_factory=collections.Counter)
    deviations: collections.Counter[str] = field(default_factory=collections.Counter)

    def deviation(self, detail: str) -> None:
        """A tolerated deviation (see `Command.tolerate`): counted, the answer still counts as right."""
        if len(self.deviations) < ERROR_SAMPLES or detail in self.deviations:
            self.deviations[detail] += 1

    def error(self, kind: str, detail: str) -> None:
        if kind == "content":
            self.bad_content += 1
        else:
            self.errors += 1
        key = detail[:300]
        if len(self.error_samples) < ERROR_SAMPLES or key in self.error_samples:
            self.error_samples[key] += 1


class BadContent(Exception):
    """The answer is a 200 but its content or framing is wrong."""


class StreamError(Exception):
    """The stream carried an error event."""


class Client(asyncio.Protocol):
    """One keep-alive connection sending requests back to back."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.in_flight = False
        self.started = 0.0
        self.first_token = 0.0
        self.status = 0
        self.body: list[bytes] = []
        self.buffer = b""
        self.parts: list[str] = []
        self.finish: str | None = None
        self.terminated = False
        self.sent = 0
        self.timed_out = False
        self.finished = False  # this connection's virtual user has sent all it will
        self.noted: set[str] = set()  # tolerated deviations of the answer in flight

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A check that raised inside a parser callback reaches here wrapped; report the check.
            cause = exc.__context__
            if isinstance(cause, StreamError):
                self.fail("stream", f"error event: {cause}")
            elif isinstance(cause, (BadContent, KeyError, IndexError, TypeError, ValueError)):
                self.fail("content", f"{type(cause).__name__}: {cause}")
            else:
                self.fail("http", f"unparsable response: {exc}")
        except Exception as exc:  # a checker bug must not stop the run; count it instead
            self.fail("content", f"{type(exc).__name__}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.in_flight:
            self.in_flight = False
            if not self.timed_out:
                self.run.stats.error("connection", f"connection lost mid-request: {exc}")
            self.run.finished_request(self, ok=False)
        self.run.connection_closed(self)

    # requests
    def send(self) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.timed_out = False
        self.status = 0
        self.body = []
        self.buffer = b""
        self.parts = []
        self.finish = None
        self.terminated = False
        self.first_token = 0.0
        self.noted.clear()
        self.sent += 1
        self.started = time.perf_counter()
        self.transport.write(self.run.request)

    def fail(self, kind: str, detail: str) -> None:
        if self.in_flight:
            self.in_flight = False
            self.run.stats.error(kind, detail)
            self.run.finished_request(self, ok=False)
        if self.transport is not None:
            self.transport.abort()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.run.command.stream and self.status == 200:
            self.feed_events(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.in_flight:
            return
        self.in_flight = False
        run = self.run
        stats = run.stats
        ok = False
        if self.status != 200:
            stats.error(
                "status", f"status {self.status}: {b''.join(self.body)[:200].decode('utf-8', 'replace')}"
            )
        else:
            try:
                self.check()
                ok = True
            except StreamError as exc:
                stats.error("stream", f"error event: {exc}")
            except (BadContent, KeyError, IndexError, TypeError, ValueError) as exc:
                stats.error("content", f"{type(exc).__name__}: {exc}")
        run.finished_request(self, ok)
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()
            return
        run.next_request(self)

    # checks
    def check(self) -> None:
        command = self.run.command
        if command.stream:
            if self.buffer.strip():
                raise BadContent(f"unterminated event at the end of the stream: {self.buffer[:100]!r}")
            if not self.terminated:
                self.note("done", "the stream ended without its terminator ([DONE] / final event)")
            text = "".join(self.parts)
        else:
            data = orjson.loads(b"".join(self.body))
            if command.kind == "chat":
                choice = data["choices"][0]
                text, self.finish = choice["message"]["content"], choice["finish_reason"]
                if data["object"] != "chat.completion":
                    raise BadContent(f"object {data['object']!r}")
            elif command.kind == "completions":
                choice = data["choices"][0]
                text, self.finish = choice["text"], choice["finish_reason"]
                if data["object"] != "text_completion":
                    raise BadContent(f"object {data['object']!r}")
            else:
                text, self.finish = data["completion"], data["stop_reason"]
        if text != command.expected:
            expected = command.expected
            at = next((i for i, (a, b) in enumerate(zip(text, expected, strict=False)) if a != b), None)
            at = min(len(text), len(expected)) if at is None else at
            raise BadContent(
                f"text differs from the expected one at character {at} (lengths {len(text)} and "
                f"{len(expected)}): got {text[max(0, at - 20) : at + 20]!r}, "
                f"expected {expected[max(0, at - 20) : at + 20]!r}"
            )
        wanted = "stop_sequence" if command.kind == "complete" else "stop"
        if self.finish != wanted:
            self.note("finish_reason", f"finish reason {self.finish!r}, expected {wanted!r}")
        for detail in self.noted:
            self.run.stats.deviation(detail)

    def note(self, kind: str, detail: str) -> None:
        """A deviation: fails the answer, unless the command tolerates its kind (then counted once)."""
        if kind not in self.run.command.tolerate:
            raise BadContent(detail)
        self.noted.add(detail)

    def token(self, text: str) -> None:
        if text:
            if not self.parts:
                self.first_token = time.perf_counter()
                self.run.first_token_seen()
            self.parts.append(text)

    def feed_events(self, data: bytes) -> None:
        direct = self.run.command.kind == "complete"
        separator = b"\r\n\r\n" if direct else b"\n\n"
        buffer = self.buffer + data if self.buffer else data
        events = buffer.split(separator)
        self.buffer = events.pop()
        for event in events:
            if self.terminated:
                raise BadContent(f"event after the end of the stream: {event[:100]!r}")
            if direct:
                self.direct_event(event)
            else:
                self.openai_event(event)

    def openai_event(self, event: bytes) -> None:
        if event.startswith(b":"):
            return  # a keep-alive comment
        if not event.startswith(b"data: ") or b"\n" in event:
            raise BadContent(f"not a single data line: {event[:100]!r}")
        payload = event[6:]
        if payload == b"[DONE]":
            self.terminated = True
            return
        chunk = orjson.loads(payload)
        if "error" in chunk:
            raise StreamError(str(chunk["error"])[:200])
        choices = chunk["choices"]
        if not choices:
            return  # the usage chunk
        choice = choices[0]
        if self.run.command.kind == "chat":
            text = choice["delta"].get("content")
            if chunk["object"] != "chat.completion.chunk":
                raise BadContent(f"object {chunk['object']!r}")
        else:
            text = choice.get("text")
            if text is None:
                self.note("shape", "a text_completion chunk without its text field")
        if text:
            self.token(text)
        if "finish_reason" not in choice:
            self.note("shape", "chunks without their finish_reason field (OpenAI sends null)")
        if choice.get("finish_reason") is not None:
            if self.finish is not None:
                raise BadContent("a second finish_reason")
            self.finish = choice["finish_reason"]

    def direct_event(self, event: bytes) -> None:
        name, _, data = event.partition(b"\r\n")
        if name == b"event: ping":
            return
        if not data.startswith(b"data: "):
            raise BadContent(f"event without data: {event[:100]!r}")
        payload = orjson.loads(data[6:])
        if name == b"event: error":
            raise StreamError(str(payload)[:200])
        if name != b"event: completion":
            raise BadContent(f"unexpected event {name!r}")
        self.token(payload["completion"])
        if payload["stop_reason"] is not None:
            self.finish = payload["stop_reason"]
            self.terminated = True


class Run:
    """One command: its connections, its clock and its statistics."""

    def __init__(self, command: Command, loop: asyncio.AbstractEventLoop) -> None:
        self.command = command
        self.loop = loop
        self.request = command.request_bytes()
        self.stats = Stats()
        self.clients: list[Client] = []
        self.window_start = 0.0
        self.window_end = float("inf")
        self.stop_sending = float("inf")
        self.counted = command.requests_per_connection > 0
        self.active = 0
        self.done = loop.create_future()
        self.reconnecting: set[asyncio.Task[None]] = set()  # referenced here, or they may be collected
        self.first_tokens = 0
        self.first_done_reported = False

    def emit(self, progress: str) -> None:
        write_all(orjson.dumps({"type": "progress", "progress": progress, "t": time.time()}) + b"\n")

    def first_token_seen(self) -> None:
        if self.command.progress:
            self.first_tokens += 1
            if self.first_tokens == self.command.concurrency:
                self.emit("all_open")

    def wants_more(self, client: Client) -> bool:
        if self.counted:
            return client.sent < self.command.requests_per_connection
        return time.perf_counter() < self.stop_sending

    def finished_request(self, client: Client, ok: bool) -> None:
        now = time.perf_counter()
        stats = self.stats
        stats.completed_total += 1
        if self.command.progress and not self.first_done_reported:
            self.first_done_reported = True
            self.emit("first_done")
        if client.started >= self.window_start:
            if ok:
                stats.ok += 1
                stats.latencies_ms.append(round((now - client.started) * 1000, 4))
                if client.first_token:
                    stats.ttft_ms.append(round((client.first_token - client.started) * 1000, 4))
                stats.tokens += len(client.parts)
            if now <= self.window_end:
                stats.completed_in_window += 1
        elif ok:
            stats.tokens += len(client.parts)

    def next_request(self, client: Client) -> None:
        if client.transport is not None and self.wants_more(client):
            client.send()
        else:
            self.idle(client)

    def idle(self, client: Client) -> None:
        if not client.finished:
            client.finished = True
            self.slot_done()

    def slot_done(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)

    def start(self, client: Client) -> None:
        """A connection's first request (staggered): unless it was closed and replaced meanwhile, as the
        replacement then carries its slot."""
        if client in self.clients:
            self.next_request(client)

    def connection_closed(self, client: Client) -> None:
        if client in self.clients and not self.done.done() and not client.finished:
            self.clients.remove(client)
            if self.wants_more(client):
                task = self.loop.create_task(self.reconnect(client.sent))
                self.reconnecting.add(task)
                task.add_done_callback(self.reconnecting.discard)
            else:
                self.idle(client)

    async def connect(self) -> Client:
        _, protocol = await asyncio.wait_for(
            self.loop.create_connection(lambda: Client(self), self.command.host, self.command.port),
            min(CONNECT_TIMEOUT, self.command.timeout),
        )
        return protocol

    async def reconnect(self, sent: int) -> None:
        """Replace a closed connection (the server closed it, or it timed out) and carry on."""
        while True:
            try:
                client = await self.connect()
                break
            except OSError as exc:  # TimeoutError included
                self.stats.error("connect", f"connect failed: {type(exc).__name__}: {exc}")
                if self.counted or time.perf_counter() >= self.stop_sending:
                    self.slot_done()
                    return
                await asyncio.sleep(0.05)
            except Exception as exc:  # never lose the slot silently
                self.stats.error("connect", f"reconnect failed: {type(exc).__name__}: {exc}")
                self.slot_done()
                return
        client.sent = sent
        self.clients.append(client)
        self.next_request(client)

    def deadline(self) -> float:
        """Seconds from the start by which every slot must have finished: a request lasts at most
        `timeout` (the watchdog), a reconnect less. Duration mode: nothing is sent after the window's
        end. Counted mode: each connection's requests, a reconnect between any two."""
        command = self.command
        if self.counted:
            per_connection = command.requests_per_connection
            return command.stagger + (2 * per_connection - 1) * command.timeout + STALL_GRACE
        return command.warmup + command.duration + command.timeout + STALL_GRACE

    def stalled(self, waited: float) -> None:
        """The deadline passed with slots unfinished: count each as an error, stating its state, and end."""
        open_slots = [c for c in self.clients if not c.finished]
        in_flight = sum(1 for c in open_slots if c.in_flight)
        closed = sum(1 for c in open_slots if c.transport is None)
        detail = (
            f"harness stall: {self.active} connection slot(s) unfinished after {waited:.0f} s "
            f"(in flight {in_flight}, open and idle {len(open_slots) - in_flight - closed}, closed {closed}, "
            f"reconnecting {len(self.reconnecting)})"
        )
        for _ in range(max(1, self.active)):
            self.stats.error("stall", detail)
        for task in list(self.reconnecting):
            task.cancel()
        for client in open_slots:
            client.finished = True
            client.in_flight = False
            if client.transport is not None:
                client.transport.abort()
        self.active = 0
        if not self.done.done():
            self.done.set_result(None)

    async def watchdog(self) -> None:
        """Abort requests that take longer than the timeout; they count as errors."""
        timeout = self.command.timeout
        while not self.done.done():
            await asyncio.sleep(0.2)
            limit = time.perf_counter() - timeout
            for client in list(self.clients):
                if client.in_flight and client.started < limit:
                    client.timed_out = True
                    client.in_flight = False
                    self.stats.error("timeout", f"no complete answer within {timeout:g}s")
                    self.finished_request(client, ok=False)
                    if client.transport is not None:
                        client.transport.abort()

    async def execute(self) -> dict[str, Any]:
        command = self.command
        stats = self.stats
        results = await asyncio.gather(
            *(self.connect() for _ in range(command.concurrency)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                stats.error("connect", f"connect failed: {result}")
            else:
                self.clients.append(result)
        self.active = len(self.clients)
        begin = time.perf_counter()
        if self.counted:
            self.window_start = begin
        else:
            self.window_start = begin + command.warmup
            self.window_end = self.window_start + command.duration
            self.stop_sending = self.window_end
        watchdog = self.loop.create_task(self.watchdog())
        if self.active:
            step = command.stagger / len(self.clients)
            for index, client in enumerate(list(self.clients)):
                if step > 0 and index:
                    self.loop.call_later(index * step, self.start, client)
                else:
                    self.next_request(client)
            try:
                await asyncio.wait_for(asyncio.shield(self.done), self.deadline())
            except TimeoutError:
                self.stalled(time.perf_counter() - begin)
        end = time.perf_counter()
        watchdog.cancel()
        for task in list(self.reconnecting):
            task.cancel()
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()
        window = (
            min(end, self.window_end) - self.window_start if not self.counted else end - self.window_start
        )
        return {
            "type": "result",
            "window_s": window,
            "wall_s": end - begin,
            "completed_in_window": stats.completed_in_window,
            "completed_total": stats.completed_total,
            "ok": stats.ok,
            "errors": stats.errors,
            "bad_content": stats.bad_content,
            "error_samples": dict(stats.error_samples),
            "deviations": dict(stats.deviations),
            "tokens": stats.tokens,
            "latencies_ms": stats.latencies_ms,
            "ttft_ms": stats.ttft_ms,
        }


def write_all(data: bytes) -> None:
    """Write all of `data` to stdout (a pipe to the runner), however many write(2) calls it takes.

    A result line is often several hundred KB, far more than the 64 KiB a pipe holds, so the write blocks
    until the runner has read. A blocking pipe write that is interrupted while waiting returns short, with
    no error, and that happens right after a uvloop loop is closed, which is when a result is written:
    measured here, about 1 in 3 large writes made just after `uvloop.run` returned came back short (none
    with asyncio's loop, none 0.3 s later; no signal handler is installed), most likely the kernel task
    work queued when libuv's io_uring ring is torn down. Python's raw `FileIO.write` (stdout is raw under
    PYTHONUNBUFFERED) just returns the short count, and the rest of the line was lost.
    """
    view = memoryview(data)
    fd = sys.stdout.fileno()
    while view:
        view = view[os.write(fd, view) :]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def execute(command: Command) -> dict[str, Any]:
    run = Run(command, asyncio.get_running_loop())
    return await run.execute()


def main() -> int:
    runner = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        cpu_before = cpu_seconds()
        try:
            command = Command.from_json(orjson.loads(line))
            result = runner(execute(command))
        except Exception as exc:  # report, never die: the runner waits for one line per command
            result = {"type": "failure", "message": f"{type(exc).__name__}: {exc}"}
        result["cpu_s"] = cpu_seconds() - cpu_before
        write_all(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
