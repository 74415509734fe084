"""Measure the proxy's resident memory idle and under a short, bounded load (for resource sizing).

    .venv/bin/python deploy/measure_memory.py [--concurrency 64] [--seconds 15]

Starts the built-in mock upstream and one proxy process on free loopback ports (nothing leaves
127.0.0.1), samples the proxy's RSS from /proc, and prints the figures that deploy/README.md quotes:

- idle: right after start-up, and after a handful of warm-up requests (imports done, pools created);
- loaded: peak RSS (VmHWM) while `--concurrency` clients loop for `--seconds` seconds over a mix of
  streamed and non-streamed chat completions, with the mock pacing tokens so streams stay open;
- after: RSS once the load has stopped (memory is not returned to the OS at once; that is normal).

The load is bounded in time and count and stops by itself. Linux only (reads /proc/PID/status).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"
MAX_REQUESTS = 100_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def start(args: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args, "--host", HOST, "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{args[0]} exited early:\n{log.read_text()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{args[0]} did not listen:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def body(i: int) -> dict[str, object]:
    streamed = i % 2 == 0
    # ~60 tokens paced at 5 ms: each request holds its connection ~0.3 s, streamed or not.
    prompt = f"request {i}: say something long [[mock:tokens=60]][[mock:token_delay_ms=5]]"
    return {
        "model": "gpt-4",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}],
        "stream": streamed,
        **({"stream_options": {"include_usage": True}} if streamed else {}),
    }


async def load(base_url: str, concurrency: int, seconds: float) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    counter = iter(range(MAX_REQUESTS))
    done = failed = 0
    first_failure = ""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": "Bearer measure"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30, headers=headers) as client:

        async def worker() -> None:
            nonlocal done, failed, first_failure
            for i in counter:
                if time.monotonic() >= deadline:
                    return
                payload = body(i)
                problem = ""
                try:
                    if payload["stream"]:
                        async with client.stream("POST", "/v1/chat/completions", json=payload) as reply:
                            text = b"".join([chunk async for chunk in reply.aiter_bytes()])
                    else:
                        reply = await client.post("/v1/chat/completions", json=payload)
                        text = reply.content
                    if reply.status_code != 200 or b'"error"' in text:
                        problem = f"{reply.status_code} {text[:300]!r}"
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                done += 1
                if problem:
                    failed += 1
                    first_failure = first_failure or problem

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if first_failure:
        print(f"first failure: {first_failure}", file=sys.stderr)
    return done, failed


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    options = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PROXY_"))}
    with tempfile.TemporaryDirectory() as tmp:
        mock_port, proxy_port = free_port(), free_port()
        mock = start(["mock-upstream"], mock_port, env, Path(tmp) / "mock.log")
        proxy_env = {
            **env,
            "ANTHROPIC_BASE_URL": f"http://{HOST}:{mock_port}",
            "ANTHROPIC_API_KEY": "measure-key",
            "PROXY_LOGGING__FORMAT": "json",
        }
        try:
            proxy = start(["serve"], proxy_port, proxy_env, Path(tmp) / "proxy.log")
            try:
                base_url = f"http://{HOST}:{proxy_port}"
                time.sleep(1.0)
                at_start = memory_kib(proxy.pid)["VmRSS"]
                asyncio.run(load(base_url, concurrency=4, seconds=1.0))
                time.sleep(1.0)
                warm = memory_kib(proxy.pid)["VmRSS"]
                started = time.monotonic()
                done, failed = asyncio.run(load(base_url, options.concurrency, options.seconds))
                elapsed = time.monotonic() - started
                loaded = memory_kib(proxy.pid)
                time.sleep(2.0)
                after = memory_kib(proxy.pid)["VmRSS"]
            finally:
                stop(proxy)
        finally:
            stop(mock)
    print(f"python {sys.version.split()[0]}, one proxy process")
    print(f"idle at start-up:        {mib(at_start)}")
    print(f"idle after warm-up:      {mib(warm)}")
    print(
        f"peak under load:         {mib(loaded['VmHWM'])}  "
        f"({options.concurrency} concurrent clients, {done} requests in {elapsed:.1f} s, "
        f"{done / elapsed:.0f} req/s, {failed} failed)"
    )
    print(f"2 s after the load:      {mib(after)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
