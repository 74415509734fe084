"""`--workers N`: gunicorn's master with uvicorn workers, as real processes.

Draining on SIGTERM is in test_shutdown.py and shared metrics in test_metrics.py; here: a worker that
cannot start stops the server (no restart loop), a crashed worker is replaced, and workers do not
outlive a master killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import StartProxy
from tests.support.servers import HOST, Server

#: A metrics directory no worker can create its files in (not even as root): each worker's app fails
#: at start-up, after the master has bound the socket.
UNWRITABLE_METRICS_DIR = "/proc/self/fdinfo"


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return {int(child) for child in path.read_text().split()}
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_for_workers(server: Server, count: int, timeout: float = 20.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            len(workers := children(server.process.pid)) == count
            and server.log().count("Application startup complete") >= count
        ):
            return workers
        time.sleep(0.05)
    raise AssertionError(f"{count} workers did not start:\n{server.log()}")


def run_to_exit(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PROXY_"))}
    full_env.update(env)
    log = tmp_path / "failing.log"
    with log.open("wb") as out:
        process = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--host", HOST, "--port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            timeout=60,
            check=False,
        )
    return process.returncode, log.read_text()


def test_a_worker_failing_at_startup_stops_the_server(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": UNWRITABLE_METRICS_DIR, "PROXY_LOGGING__FORMAT": "json"}
    code, log = run_to_exit(["--workers", "2"], env, tmp_path)
    assert code == 3, log
    assert "Worker failed to boot" in log
    assert '"event":"startup_failed"' in log  # with the worker's traceback
    assert log.count("Booting worker") <= 2  # no restart loop


def test_a_single_process_failing_at_startup_exits_non_zero(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": UNWRITABLE_METRICS_DIR, "PROXY_LOGGING__FORMAT": "json"}
    code, log = run_to_exit([], env, tmp_path)
    assert code == 3, log
    assert '"event":"startup_failed"' in log


def test_a_crashed_worker_is_replaced(start_proxy: StartProxy) -> None:
    with start_proxy(env={"PROXY_SERVER__WORKERS": "2"}) as server:
        first = wait_for_workers(server, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = children(server.process.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.05)
        assert victim not in children(server.process.pid)
        wait_for_workers(server, 2)
        for _ in range(4):  # new connections: either worker may answer
            assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 200


def test_workers_exit_when_the_master_is_killed(start_proxy: StartProxy) -> None:
    env = {"PROXY_SERVER__WORKERS": "2", "PROXY_SERVER__SHUTDOWN_TIMEOUT": "2"}
    with start_proxy(env=env) as server:
        workers = wait_for_workers(server, 2)
        server.process.kill()
        server.process.wait(10)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), server.log()
    assert server.log().count('"signal":"master_gone"') == 2
