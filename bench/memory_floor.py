"""Memory per open stream of the stack without the proxy: what the 20 KiB target leaves for the proxy's own code.

Two servers, each measured in a fresh process with N streams open at once (20 chunks, one every 500 ms):

- `uvicorn`: uvicorn (httptools, uvloop) alone, sending the chunks itself;
- `relay`: uvicorn + one upstream stream per request through `proxy.upstream.http11`, its bytes relayed
  as they come (no parsing, no translation), from `bench/upstream.py`.

    .venv/bin/python bench/memory_floor.py [--streams 1000]

Prints RSS with none open, with all open, and the difference per stream. Bounded: about 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
CHUNKS, DELAY_S = 20, 0.5


def floor_app(kind: str, upstream_port: int, *, chunks: int, delay_ms: float) -> Any:
    """The floor's ASGI app: `uvicorn` sends `chunks` chunks itself, one every `delay_ms`; `relay` opens
    one `proxy.upstream.http11` stream per request and relays its bytes as they come (no parsing, no
    translation). `bench/memory_sites.py --floor` profiles the same relay."""
    import orjson
    from benchlib import marker

    from proxy.upstream.http11 import ConnectionPool, Target

    target = Target.parse(f"http://{HOST}:{upstream_port}/v1/complete")
    prompt = f"\n\nHuman: {marker(chunks, delay_ms)} hi\n\nAssistant:"
    body = orjson.dumps(
        {"model": "claude-2.1", "prompt": prompt, "max_tokens_to_sample": 100, "stream": True}
    )
    headers = [("x-api-key", "k"), ("anthropic-version", "2023-06-01"), ("content-type", "application/json")]
    pools: list[ConnectionPool] = []
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(start)
        if kind == "uvicorn":
            for i in range(chunks):
                await asyncio.sleep(delay_ms / 1000)
                await send(
                    {"type": "http.response.body", "body": b'data: {"i": %d}\n\n' % i, "more_body": True}
                )
        else:
            if not pools:
                pools.append(ConnectionPool(4096, 30))
            response = await pools[0].request(target, headers, body, 10, 120)
            while (chunk := await response.next_chunk()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            response.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def serve(kind: str, port: int, upstream_port: int) -> None:
    """The server process: `kind` is `uvicorn` or `relay`."""
    import uvicorn

    app = floor_app(kind, upstream_port, chunks=CHUNKS, delay_ms=DELAY_S * 1000)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="off")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_streams(port: int, count: int, pid: int) -> tuple[int, int]:
    async def one() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        while await reader.read(65536):
            pass
        writer.close()

    idle = rss_kib(pid)
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(CHUNKS * DELAY_S / 2)  # all open, none finished
    loaded = rss_kib(pid)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=CHUNKS * DELAY_S + 30)
    return idle, loaded


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--serve", choices=["uvicorn", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream_port)
        return
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", "0"], stdout=subprocess.PIPE
    )
    try:
        assert upstream.stdout is not None
        upstream_port = int(upstream.stdout.readline().split()[1])  # "LISTENING <port>"
        for kind in ("uvicorn", "relay"):
            port = free_port()
            command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
            server = subprocess.Popen([*command, "--upstream-port", str(upstream_port)], cwd=ROOT)
            try:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        asyncio.run(asyncio.wait_for(asyncio.open_connection(HOST, port), 1))
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                idle, loaded = asyncio.run(open_streams(port, args.streams, server.pid))
                per_stream = (loaded - idle) / args.streams
                print(
                    f"{kind:8s} RSS {idle / 1024:.1f} MiB idle -> {loaded / 1024:.1f} MiB with {args.streams} "
                    f"streams open = {per_stream:.1f} KiB per stream"
                )
            finally:
                server.terminate()
                server.wait(10)
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
