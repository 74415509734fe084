"""CPU per upstream call of a plain chat request: `UpstreamClient.complete`, sequentially, against
bench/upstream.py on 127.0.0.1 (a subprocess), under uvloop as the proxy runs.

Prints the process CPU time per call (min and median of the repeats; the upstream's CPU is not counted),
for comparing the upstream client of two builds: run it with each build's Python, alternating.

    .venv/bin/python bench/client_call.py --calls 2000 --repeats 15
    /path/to/other/.venv/bin/python bench/client_call.py --calls 2000 --repeats 15

Deterministic instead of timed (a shared machine's timings are noisy): the instructions per call are the
difference of two runs under `valgrind --tool=cachegrind --cache-sim=no`, e.g. `--calls 1500 --repeats 1`
minus `--calls 500 --repeats 1`, divided by 1000.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from proxy.config import UpstreamConfig
from proxy.upstream.client import Attempts, UpstreamClient

BENCH = Path(__file__).parent
BODY = {
    "model": "claude-2.1",
    "prompt": "\n\nHuman: hello [[bench:tokens=20;delay_ms=0]]\n\nAssistant:",
    "max_tokens_to_sample": 256,
    "stream": False,
}


async def measure(port: int, calls: int, repeats: int) -> list[float]:
    """CPU µs per call, one figure per repeat."""
    client = UpstreamClient(UpstreamConfig(base_url=f"http://127.0.0.1:{port}", api_key="sk-bench"))
    figures = []
    try:
        for _ in range(3):  # the connection, the first-use caches
            await client.complete("claude-2.1", BODY, None, Attempts())
        for _ in range(repeats):
            started = time.process_time()
            for _ in range(calls):
                answer = await client.complete("claude-2.1", BODY, None, Attempts())
            figures.append((time.process_time() - started) / calls * 1e6)
            assert answer["completion"]
    finally:
        await client.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=BENCH,
    )
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline().split()[1])  # "LISTENING <port>"
        figures = sorted(uvloop.run(measure(port, args.calls, args.repeats)))
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"CPU per call: min {figures[0]:.2f} µs, median {figures[len(figures) // 2]:.2f} µs")


if __name__ == "__main__":
    main()
