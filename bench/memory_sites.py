"""Where the proxy's memory per open stream goes: a tracemalloc diff, none open vs N open, by allocation site.

The proxy runs in this process (as `python -m proxy serve` runs it: `ProxyServer`, uvicorn, httptools,
uvloop, access log off) under tracemalloc; the upstream (`bench/upstream.py`) and the client (this
script with `--client`) are separate processes, so only the proxy's allocations are traced.

    .venv/bin/python bench/memory_sites.py [--streams 400] [--top 25] [--frames 12] [--group traceback]

After a warm-up (a few streams run to their end), it takes a snapshot with no stream open, opens N slow
chat streams at once (each holds until all have their first chunk), takes a second snapshot, and prints
the largest differences per stream (`--phase waiting`: while every request waits for its first upstream
event, which is when the most is allocated at once) by `traceback` (the innermost frames of each site, default), by
`lineno` or by `filename`. Python objects only: sockets' kernel buffers and C libraries' own allocations
(uvloop's, httptools') are not traced, so the total is below the RSS figure of `bench/run.py
--idle-streams`. Bounded: about 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
TOKENS = 20  # `--tokens`
DELAY_MS = 1000.0  # `--delay-ms`: before each token, the first one included


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def request_bytes(port: int) -> bytes:
    """`bench/run.py --idle-streams`' request: its chat body and the OpenAI SDK's headers."""
    sys.path.insert(0, str(ROOT / "bench"))
    from run import SDK_HEADERS, chat_body

    body = orjson.dumps(chat_body(TOKENS, DELAY_MS, True))
    headers = {"Host": f"{HOST}:{port}", **SDK_HEADERS, "Content-Length": str(len(body))}
    head = "POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


async def client(port: int, streams: int) -> None:
    """Open `streams` streams; print OPEN once each has its first chunk, then read them to their end."""
    request = request_bytes(port)
    first = 0
    all_first = asyncio.Event()

    sent = 0
    all_sent = asyncio.Event()

    async def one() -> None:
        nonlocal first, sent
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        await writer.drain()
        sent += 1
        if sent == streams:
            all_sent.set()
        seen = False
        while data := await reader.read(65536):
            if not seen and b"data:" in data:
                seen = True
                first += 1
                if first == streams:
                    all_first.set()
            if b"[DONE]" in data or b'"stop_reason":"' in data:  # the proxy's end, or the floor's
                break
        writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    await asyncio.wait_for(all_sent.wait(), timeout=30)
    print("SENT", flush=True)
    await asyncio.wait_for(all_first.wait(), timeout=30)
    print("OPEN", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=TOKENS * DELAY_MS / 1000 + 30)


async def settled(server: Any, count: int) -> None:
    """Every request is running and what they hold has stopped growing (traced memory steady for 0.3 s)."""
    previous, steady = -1, 0
    while steady < 3:
        await asyncio.sleep(0.1)
        current = tracemalloc.get_traced_memory()[0]
        running = len(server.server_state.tasks) >= count
        steady = steady + 1 if running and abs(current - previous) < 0.002 * current else 0
        previous = current


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_client(port: int, streams: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--client", "--port", str(port), "--streams", str(streams)]
    command += ["--delay-ms", str(DELAY_MS), "--tokens", str(TOKENS)]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def floor_app(upstream_port: int) -> Any:
    """`bench/memory_floor.py`'s relay: uvicorn + one `proxy.upstream.http11` stream per request, its
    bytes relayed as they come (no parsing, no translation)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import memory_floor

    return memory_floor.floor_app("relay", upstream_port, chunks=TOKENS, delay_ms=DELAY_MS)


async def profile(args: argparse.Namespace, upstream_port: int) -> None:
    import uvicorn

    from proxy.config import load_config
    from proxy.server import ProxyServer, uvicorn_config

    port = free_port()
    environ = {
        "ANTHROPIC_BASE_URL": f"http://{HOST}:{upstream_port}",
        "ANTHROPIC_API_KEY": "sk-ant-bench",
        "PROXY_LOGGING__ACCESS_LOG": "false",
        "PROXY_LOGGING__LEVEL": "warning",
        "PROXY_UPSTREAM__MAX_CONNECTIONS": "4096",
        "PROXY_SERVER__PORT": str(port),
        "PROXY_SERVER__HOST": HOST,
    }
    server: uvicorn.Server
    if args.floor:
        server = uvicorn.Server(
            uvicorn.Config(
                floor_app(upstream_port),
                host=HOST,
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                loop="none",
            )
        )
    else:
        config = load_config(None, environ)
        server = ProxyServer(uvicorn_config(config), config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn has no event for it)
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()

    async def streams(count: int, during: asyncio.Future[None] | None = None) -> None:
        process = run_client(port, count)
        assert process.stdout is not None
        line = await loop.run_in_executor(None, process.stdout.readline)
        assert line.strip() == b"SENT", line
        if during is not None and args.phase == "waiting":
            await settled(server, count)  # all arrived, none has its first event yet
            during.set_result(None)
            await asyncio.sleep(0)
        line = await loop.run_in_executor(None, process.stdout.readline)
        assert line.strip() == b"OPEN", line
        if during is not None and args.phase == "open":
            during.set_result(None)
            await asyncio.sleep(0)
        await loop.run_in_executor(None, process.wait)
        assert process.returncode == 0

    await streams(10)  # warm-up: pools, caches, first-use imports
    await asyncio.sleep(0.5)
    if args.gc:
        gc.collect()
    before = tracemalloc.take_snapshot()
    traced_before, rss_before = tracemalloc.get_traced_memory()[0], rss_kib()
    tracemalloc.reset_peak()
    timeline: list[tuple[float, int]] = []

    async def sample() -> None:
        started = loop.time()
        while True:
            timeline.append((loop.time() - started, tracemalloc.get_traced_memory()[0]))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    opened: asyncio.Future[None] = loop.create_future()
    running = asyncio.create_task(streams(args.streams, opened))
    await opened
    if args.gc:
        gc.collect()
    peak, rss_during = tracemalloc.get_traced_memory()[1], rss_kib()
    during = tracemalloc.take_snapshot()
    await running
    sampler.cancel()
    count = args.streams
    if args.timeline:
        print("\ntraced memory per stream over time (s: KiB):")
        step = max(1, len(timeline) // 40)
        print("  ".join(f"{t:.1f}: {(m - traced_before) / count / 1024:.1f}" for t, m in timeline[::step]))
    print(
        f"\nRSS +{(rss_during - rss_before) / count:.2f} KiB per stream (tracemalloc's own memory included); "
        f"traced peak since none were open +{(peak - traced_before) / count / 1024:.2f} KiB per stream"
    )
    report(before, during, args)
    server.should_exit = True
    await serving


def report(before: tracemalloc.Snapshot, during: tracemalloc.Snapshot, args: argparse.Namespace) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, during = before.filter_traces(ignore), during.filter_traces(ignore)
    diffs = during.compare_to(before, args.group)
    total = sum(d.size_diff for d in diffs)
    count = args.streams
    state = "open" if args.phase == "open" else "waiting for their first upstream event"
    print(f"\n{count} streams {state}: traced Python memory +{total / count / 1024:.2f} KiB per stream\n")
    for diff in sorted(diffs, key=lambda d: d.size_diff, reverse=True)[: args.top]:
        if diff.size_diff <= 0:
            break
        print(
            f"{diff.size_diff / count:8.0f} B/stream  {diff.count_diff / count:5.1f} blocks/stream  "
            f"({diff.size_diff / total:5.1%})"
        )
        frames = list(diff.traceback)
        for frame in frames[-args.frames :] if args.group == "traceback" else frames[-1:]:
            name = frame.filename
            for prefix in (str(ROOT) + "/", *sorted((p + "/" for p in sys.path if p), key=len, reverse=True)):
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    break
            print(f"      {name}:{frame.lineno}")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=12, help="innermost frames shown per site")
    parser.add_argument("--group", choices=["traceback", "lineno", "filename"], default="traceback")
    parser.add_argument(
        "--phase",
        choices=["open", "waiting"],
        default="open",
        help="snapshot when every stream has its first chunk (default), or while all wait for the upstream",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        help="upstream delay before each token (default 1000; --phase waiting 10000)",
    )
    parser.add_argument("--tokens", type=int, help="tokens per stream (default 20; --phase waiting 2)")
    parser.add_argument("--timeline", action="store_true", help="also print traced memory over time")
    parser.add_argument("--gc", action="store_true", help="collect garbage before each snapshot")
    parser.add_argument(
        "--floor", action="store_true", help="profile memory_floor.py's bare relay instead of the proxy"
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DELAY_MS, TOKENS
    DELAY_MS = args.delay_ms or (10000.0 if args.phase == "waiting" else DELAY_MS)
    TOKENS = args.tokens or (2 if args.phase == "waiting" else TOKENS)
    if args.client:
        asyncio.run(client(args.port, args.streams))
        return
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", "0"], stdout=subprocess.PIPE
    )
    try:
        assert upstream.stdout is not None
        upstream_port = int(upstream.stdout.readline().split()[1])  # "LISTENING <port>"
        tracemalloc.start(max(args.frames, 1) + 13)
        import uvloop

        uvloop.run(profile(args, upstream_port))
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
