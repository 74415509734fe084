"""Benchmark the proxy against a cheap local upstream, every scenario also run directly against it.

    .venv/bin/python bench/run.py            # default run: a few minutes
    .venv/bin/python bench/run.py --quick    # smoke run: about 30 s

Everything runs on 127.0.0.1 in separate processes: the upstream (`bench/upstream.py`), the proxy
(`python -m proxy serve`, exactly as a user starts it) and the load generator (`bench/loadgen.py`), so
each one's CPU is its own. Each scenario alternates direct and proxy rounds (direct, proxy, direct,
proxy, ...) and reports medians and proxy/direct ratios, which hold on a noisy machine. See
bench/README.md for what each figure means. Results: a table on stdout and bench/results/latest.json.
Exit status: 0 when every answer was right (performance targets missed or not), 1 when any request
failed or had wrong content, 2 when the harness itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import queue
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import expected_text, marker

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
SERVER_KEY = "sk-bench"
CLIENT_KEY = "sk-client-unused"
CLK_TCK = os.sysconf("SC_CLK_TCK")
USER_TEXT = "Tell me the answer, please."
SYSTEM_TEXT = "You are a concise assistant."
MAX_TOKENS = 1024
# What the official openai-python SDK sends, so the proxy parses a realistic header set.
SDK_HEADERS = {
    "Accept": "application/json",
    "Accept-Encoding": "gzip, deflate",
    "Content-Type": "application/json",
    "User-Agent": "OpenAI/Python 1.59.7",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.59.7",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.7",
    "Authorization": f"Bearer {CLIENT_KEY}",
    "X-Stainless-Retry-Count": "0",
}
DIRECT_HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "x-api-key": SERVER_KEY,
    "anthropic-version": "2023-06-01",
}


class HarnessError(Exception):
    """The benchmark itself could not run (a server did not start, the time limit was hit...)."""


class GeneratorFailure(Exception):
    """A load generator gave no result for a round (stalled, died, or reported an exception). The round
    is counted as an error with this message and the run goes on; `restart`: replace the process."""

    def __init__(self, message: str, restart: bool) -> None:
        super().__init__(message)
        self.restart = restart


# ---------------------------------------------------------------------------------------------------
# Processes and /proc accounting


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat; 0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's workers are children of the supervisor)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Children:
    """Every child process started by the runner, each in its own process group; all killed on exit."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        # Workers left behind by a supervisor that died first share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(process, timeout=3.0)
        self.processes.clear()


CHILDREN = Children()


class Upstream:
    def __init__(self, log_path: Path, *, extra_args: Sequence[str] = ()) -> None:
        self.log = log_path.open("wb")
        self.process = CHILDREN.spawn(
            [sys.executable, str(BENCH / "upstream.py"), "--port", "0", "--api-key", SERVER_KEY, *extra_args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=BENCH,
        )
        stdout = self.process.stdout
        assert stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=15)
        except queue.Empty:
            raise HarnessError("the bench upstream did not start within 15 s") from None
        if not line.startswith(b"LISTENING "):
            raise HarnessError(f"the bench upstream failed to start: {line!r} (see {log_path})")
        self.port = int(line.split()[1])

    def cpu(self) -> float:
        return proc_cpu_seconds(self.process.pid)

    def rss_kib(self) -> int:
        return proc_status_kib(self.process.pid, "VmRSS:")


def chat_body(tokens: int, delay_ms: float, stream: bool) -> dict[str, Any]:
    return {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": SYSTEM_TEXT},
            {"role": "user", "content": f"{marker(tokens, delay_ms)} {USER_TEXT}"},
        ],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "stream": stream,
    }


def completions_body(tokens: int, delay_ms: float, stream: bool) -> dict[str, Any]:
    return {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": f"{marker(tokens, delay_ms)} {USER_TEXT}",
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "stream": stream,
    }


def direct_body(tokens: int, delay_ms: float, stream: bool) -> dict[str, Any]:
    return {
        "model": "claude-2.1",
        "prompt": f"\n\nHuman: {marker(tokens, delay_ms)} {USER_TEXT}\n\nAssistant:",
        "max_tokens_to_sample": MAX_TOKENS,
        "temperature": 0.7,
        "stream": stream,
    }


def post_json(port: int, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> Any:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise HarnessError(f"status {response.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        connection.close()


def chat_text(tokens: int, leading_space: bool = False) -> str:
    """What chat content holds: the upstream's text without its one leading space (README: chat content
    does not start with the legacy single space), unless the build predates that rule."""
    text = expected_text(tokens)
    return text if leading_space or not text.startswith(" ") else text[1:]


@dataclass
class ProxyOptions:
    workers: int | None
    access_log: bool
    wrapper: list[str]
    command: str | None = None  # a replacement for `python -m proxy serve ...`, with {host} {port} {workers}
    chat_leading_space: bool = False  # builds before chat dropped the upstream's leading space


class Proxy:
    """`python -m proxy serve` as a real process; `startup_s` is spawn → first correct chat answer."""

    def __init__(self, upstream_port: int, port: int, options: ProxyOptions, log_path: Path) -> None:
        self.port = port
        self.options = options
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PROXY_"))}
        env.update(
            {
                "ANTHROPIC_BASE_URL": f"http://{HOST}:{upstream_port}",
                "ANTHROPIC_API_KEY": SERVER_KEY,
                "PROXY_LOGGING__ACCESS_LOG": "true" if options.access_log else "false",
                # 1,000 idle streams need 1,000 upstream connections; the default pool allows 256.
                "PROXY_UPSTREAM__MAX_CONNECTIONS": "4096",
            }
        )
        if options.command:
            fields = {"host": HOST, "port": port, "workers": options.workers or 1, "python": sys.executable}
            args = [*options.wrapper, *shlex.split(options.command.format(**fields))]
        else:
            args = [
                *options.wrapper,
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--host",
                HOST,
                "--port",
                str(port),
            ]
            if options.workers is not None:
                args += ["--workers", str(options.workers)]
        self.log = log_path.open("ab")
        started = time.perf_counter()
        self.process = CHILDREN.spawn(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.pid = self.process.pid
        self.startup_s = self._wait_for_first_answer(started, log_path)
        self.pids = descendants(self.pid)

    def _wait_for_first_answer(self, started: float, log_path: Path, timeout: float = 30.0) -> float:
        expected = chat_text(5, self.options.chat_leading_space)
        body = chat_body(5, 0, False)
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise HarnessError(f"the proxy exited with {self.process.returncode} (see {log_path})")
            try:
                answer = post_json(self.port, "/v1/chat/completions", body, SDK_HEADERS, timeout=5)
            except (ConnectionError, OSError):
                time.sleep(0.005)
                continue
            content = answer["choices"][0]["message"]["content"]
            if content != expected:
                raise HarnessError(f"the proxy's first answer is wrong: {content!r}")
            return time.perf_counter() - started
        raise HarnessError(f"the proxy did not answer within {timeout:g} s (see {log_path})")

    def refresh_pids(self) -> None:
        self.pids = descendants(self.pid)

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def rss_kib(self) -> int:
        return sum(proc_status_kib(pid, "VmRSS:") for pid in self.pids)

    def hwm_kib(self) -> int:
        return sum(proc_status_kib(pid, "VmHWM:") for pid in self.pids)

    def stop(self) -> None:
        Children.stop(self.process)
        self.log.close()


class Generator:
    """A `bench/loadgen.py` process: one JSON command in, progress lines and one JSON result out."""

    def __init__(self, log_path: Path) -> None:
        self.log = log_path.open("ab")
        self.process = CHILDREN.spawn(
            [sys.executable, str(BENCH / "loadgen.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=BENCH,
        )
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put((time.monotonic(), json.loads(line)))
            except ValueError:
                self.lines.put((time.monotonic(), {"type": "failure", "message": f"bad line {line[:200]!r}"}))
        self.lines.put((time.monotonic(), {"type": "failure", "message": "the load generator exited"}))

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()

    def result(
        self, deadline: float, on_progress: Callable[[float, str], None] | None = None
    ) -> dict[str, Any]:
        """The command's result line, by `deadline` (time.monotonic()); GeneratorFailure otherwise. The
        generator has its own deadline, well before this one: this is the last resort."""
        started = time.monotonic()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GeneratorFailure(
                    f"harness stall: the load generator gave no result within {time.monotonic() - started:.0f} s"
                    " (restarted; the round's answers are not counted)",
                    restart=True,
                )
            try:
                at, message = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if message["type"] == "progress":
                if on_progress is not None:
                    on_progress(at, message["progress"])
                continue
            if message["type"] == "failure":  # it died, raised, or wrote a line that is not JSON
                raise GeneratorFailure(
                    f"load generator failure: {message['message']} (restarted; the round's answers are not"
                    " counted)",
                    restart=True,
                )
            return message

    def stop(self) -> None:
        Children.stop(self.process, timeout=2.0)
        self.log.close()


class RssSampler:
    """Samples the summed RSS of some processes every `interval` seconds on a thread."""

    def __init__(self, read: Callable[[], int], interval: float = 0.05) -> None:
        self.read = read
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.read()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self.read()))

    @property
    def peak_kib(self) -> int:
        return max((kib for _, kib in self.samples), default=0)


# ---------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an unsorted sample; None when it is empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


@dataclass
class Scenario:
    name: str  # "chat", "completions", "chat-stream", ...
    kind: str  # "chat" | "completions"
    stream: bool
    concurrency: int
    tokens: int = 20
    delay_ms: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name} c={self.concurrency}"


@dataclass
class Round:
    target: str  # "direct" | "proxy"
    rps: float | None  # None: a load generator gave no result (lost round, counted as an error)
    completed_in_window: int
    completed_total: int
    ok: int
    errors: int
    bad_content: int
    error_samples: dict[str, int]
    tokens: int
    p50_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    proxy_cpu_s: float
    upstream_cpu_s: float
    generator_cpu_s: float
    generator_wall_s: float
    generator_utilisation: float
    peak_rss_kib: int
    lost: bool = False  # a load generator gave no result: its figures are left out, its error counted
    # Deviations the command tolerated (loadgen's `tolerate`, used by bench/peers.py), by description.
    deviations: dict[str, int] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    scenario: Scenario
    rounds: list[Round] = field(default_factory=list)

    def of(self, target: str) -> list[Round]:
        return [r for r in self.rounds if r.target == target]

    def summary(self) -> dict[str, Any]:
        direct, proxy = self.of("direct"), self.of("proxy")
        pairs = list(zip(direct, proxy, strict=False))
        proxy_requests = sum(r.completed_total for r in proxy)
        proxy_tokens = sum(r.tokens for r in proxy)
        proxy_cpu = sum(r.proxy_cpu_s for r in proxy)
        return {
            "scenario": self.scenario.label,
            "direct_rps": median([r.rps for r in direct]),
            "proxy_rps": median([r.rps for r in proxy]),
            "throughput_ratio": median([ratio(p.rps, d.rps) for d, p in pairs]),
            "direct_p50_ms": median([r.p50_ms for r in direct]),
            "direct_p99_ms": median([r.p99_ms for r in direct]),
            "proxy_p50_ms": median([r.p50_ms for r in proxy]),
            "proxy_p99_ms": median([r.p99_ms for r in proxy]),
            "added_p50_ms": median([minus(p.p50_ms, d.p50_ms) for d, p in pairs]),
            "added_p99_ms": median([minus(p.p99_ms, d.p99_ms) for d, p in pairs]),
            "direct_ttft_p50_ms": median([r.ttft_p50_ms for r in direct]),
            "proxy_ttft_p50_ms": median([r.ttft_p50_ms for r in proxy]),
            "proxy_ttft_p99_ms": median([r.ttft_p99_ms for r in proxy]),
            "added_ttft_p50_ms": median([minus(p.ttft_p50_ms, d.ttft_p50_ms) for d, p in pairs]),
            "proxy_cpu_ms_per_request": 1000 * proxy_cpu / proxy_requests if proxy_requests else None,
            # What one fully available core would serve at this CPU cost: robust to a busy machine.
            "proxy_rps_per_core": proxy_requests / proxy_cpu if proxy_cpu else None,
            "proxy_cpu_ms_per_token": (
                1000 * proxy_cpu / proxy_tokens if proxy_tokens and self.scenario.stream else None
            ),
            "proxy_cpu_utilisation": median(
                [r.proxy_cpu_s / r.generator_wall_s for r in proxy if r.generator_wall_s]
            ),
            "upstream_cpu_us_per_request_direct": per_request_us(direct, "upstream_cpu_s"),
            "generator_cpu_us_per_request_direct": per_request_us(direct, "generator_cpu_s"),
            "generator_utilisation_direct": max((r.generator_utilisation for r in direct), default=None),
            "generator_utilisation_proxy": max((r.generator_utilisation for r in proxy), default=None),
            "peak_rss_mib": max((r.peak_rss_kib for r in proxy), default=0) / 1024,
            "errors_direct": sum(r.errors for r in direct),
            "errors_proxy": sum(r.errors for r in proxy),
            "bad_content_direct": sum(r.bad_content for r in direct),
            "bad_content_proxy": sum(r.bad_content for r in proxy),
            "answers_checked": sum(r.completed_total for r in self.rounds),
            "error_samples": dict(sum((Counter(r.error_samples) for r in self.rounds), Counter())),
        }


def per_request_us(rounds: list[Round], attribute: str) -> float | None:
    requests = sum(r.completed_total for r in rounds)
    return 1e6 * sum(getattr(r, attribute) for r in rounds) / requests if requests else None


# ---------------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    upstream_args: Sequence[str] = ()

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.upstream = Upstream(RESULTS / "upstream.log", extra_args=self.upstream_args)
        self.generators = [Generator(RESULTS / "loadgen.log") for _ in range(args.generators)]
        self.proxy: Proxy | None = None
        self.proxy_port = free_port()
        self.startups: list[float] = []
        self.workers_supported = (
            "{workers}" in args.proxy_command if args.proxy_command else workers_supported()
        )

    # proxies
    def start_proxy(self, workers: int | None = None, access_log: bool | None = None) -> Proxy:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if workers is None:
            workers = self.args.workers
        if workers is not None and not self.workers_supported:
            workers = None
        options = ProxyOptions(
            workers=workers,
            access_log=self.args.access_log if access_log is None else access_log,
            wrapper=shlex.split(self.args.proxy_wrapper or ""),
            command=self.args.proxy_command,
            chat_leading_space=getattr(self.args, "chat_leading_space", False),
        )
        self.proxy = Proxy(self.upstream.port, self.proxy_port, options, RESULTS / "proxy.log")
        self.startups.append(self.proxy.startup_s)
        say(
            f"  proxy started in {self.proxy.startup_s * 1000:.0f} ms "
            f"(pid {self.proxy.pid}, {len(self.proxy.pids)} process(es), workers={workers}, "
            f"access log {'on' if options.access_log else 'off'})"
        )
        return self.proxy

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    # commands
    def command(
        self, scenario: Scenario, target: str, duration: float, warmup: float, per_connection: int = 0
    ) -> dict[str, Any]:
        if target == "direct":
            path, headers, kind = "/v1/complete", DIRECT_HEADERS, "complete"
            body = direct_body(scenario.tokens, scenario.delay_ms, scenario.stream)
            port = self.upstream.port
        else:
            kind = scenario.kind
            path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
            build = chat_body if kind == "chat" else completions_body
            body, headers = build(scenario.tokens, scenario.delay_ms, scenario.stream), SDK_HEADERS
            port = self.proxy_port
        expected_stream_seconds = (scenario.tokens + 1) * scenario.delay_ms / 1000
        stagger = expected_stream_seconds if scenario.delay_ms and not per_connection else 0.0
        return {
            "host": HOST,
            "port": port,
            "path": path,
            "headers": headers,
            "body": json.dumps(body),
            "kind": kind,
            "stream": scenario.stream,
            "expected": (
                chat_text(scenario.tokens, getattr(self.args, "chat_leading_space", False))
                if kind == "chat"
                else expected_text(scenario.tokens)
            ),
            "concurrency": scenario.concurrency,
            "duration": duration,
            "warmup": max(warmup, stagger),
            "stagger": stagger,
            "requests_per_connection": per_connection,
            "timeout": 30.0 + expected_stream_seconds,
        }

    def run_round(
        self,
        scenario: Scenario,
        target: str,
        duration: float,
        warmup: float,
        per_connection: int = 0,
        on_progress: Callable[[float, str], None] | None = None,
        sampler: RssSampler | None = None,
    ) -> Round:
        base = self.command(scenario, target, duration, warmup, per_connection)
        split = split_concurrency(scenario.concurrency, 1 if on_progress else len(self.generators))
        generators = list(zip(range(len(self.generators)), self.generators, split, strict=False))
        proxy = self.proxy
        if proxy is not None:
            proxy.refresh_pids()
        proxy_cpu = proxy.cpu() if proxy is not None else 0.0
        upstream_cpu = self.upstream.cpu()
        own_sampler = sampler
        if own_sampler is None and proxy is not None and target == "proxy":
            own_sampler = RssSampler(proxy.rss_kib)
        # The generator ends a command by warm-up + duration + timeout + 5 s whatever happens; this is
        # the runner's own limit beyond that (connects, writing the result).
        deadline = time.monotonic() + base["warmup"] + duration + base["timeout"] + 30
        failures: list[str] = []
        results = []
        sent = []
        with own_sampler if sampler is None and own_sampler is not None else contextlib.nullcontext():
            for index, generator, concurrency in generators:
                try:
                    generator.send({**base, "concurrency": concurrency, "progress": on_progress is not None})
                    sent.append((index, generator))
                except OSError as exc:  # it died since the last round
                    failures.append(f"load generator gone: {exc} (restarted; the round is not counted)")
                    self.restart_generator(index)
            for index, generator in sent:
                try:
                    results.append(generator.result(deadline, on_progress))
                except GeneratorFailure as exc:
                    failures.append(str(exc))
                    if exc.restart:
                        self.restart_generator(index)
        for failure in failures:
            say(f"  {scenario.label}, {target} round: {failure}")
        proxy_cpu = (proxy.cpu() if proxy is not None else 0.0) - proxy_cpu
        upstream_cpu = self.upstream.cpu() - upstream_cpu
        if failures:
            return self.lost_round(target, results, failures)
        latencies = [x for r in results for x in r["latencies_ms"]]
        ttfts = [x for r in results for x in r["ttft_ms"]]
        samples: Counter[str] = Counter()
        deviations: Counter[str] = Counter()
        for r in results:
            samples.update(r["error_samples"])
            deviations.update(r.get("deviations", {}))
        generator_wall = max(r["wall_s"] for r in results)
        generator_cpu = sum(r["cpu_s"] for r in results)
        return Round(
            target=target,
            rps=sum(r["completed_in_window"] / r["window_s"] for r in results if r["window_s"] > 0),
            completed_in_window=sum(r["completed_in_window"] for r in results),
            completed_total=sum(r["completed_total"] for r in results),
            ok=sum(r["ok"] for r in results),
            errors=sum(r["errors"] for r in results),
            bad_content=sum(r["bad_content"] for r in results),
            error_samples=dict(samples),
            tokens=sum(r["tokens"] for r in results),
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            ttft_p50_ms=percentile(ttfts, 50),
            ttft_p99_ms=percentile(ttfts, 99),
            proxy_cpu_s=proxy_cpu if target == "proxy" else 0.0,
            upstream_cpu_s=upstream_cpu,
            generator_cpu_s=generator_cpu,
            generator_wall_s=generator_wall,
            generator_utilisation=generator_cpu / (generator_wall * len(results)) if generator_wall else 0.0,
            peak_rss_kib=own_sampler.peak_kib if own_sampler is not None else 0,
            deviations=dict(deviations),
        )

    def restart_generator(self, index: int) -> None:
        self.generators[index].stop()
        self.generators[index] = Generator(RESULTS / "loadgen.log")

    @staticmethod
    def lost_round(target: str, results: list[dict[str, Any]], failures: list[str]) -> Round:
        """A round some generator gave no result for: one error per such generator, with its message,
        plus what the others counted; no figures (the medians skip it, the CPU sums leave it out)."""
        samples: Counter[str] = Counter(failures)
        for r in results:
            samples.update(r["error_samples"])
        return Round(
            target=target,
            rps=None,
            completed_in_window=0,
            completed_total=0,
            ok=0,
            errors=len(failures) + sum(r["errors"] for r in results),
            bad_content=sum(r["bad_content"] for r in results),
            error_samples=dict(samples),
            tokens=0,
            p50_ms=None,
            p99_ms=None,
            ttft_p50_ms=None,
            ttft_p99_ms=None,
            proxy_cpu_s=0.0,
            upstream_cpu_s=0.0,
            generator_cpu_s=0.0,
            generator_wall_s=0.0,
            generator_utilisation=0.0,
            peak_rss_kib=0,
            lost=True,
        )

    def warm_up(self) -> None:
        """Fill the proxy's connection pools and caches before anything is measured."""
        for scenario in (
            Scenario("warm-up", "chat", False, 50),
            Scenario("warm-up", "completions", False, 10),
            Scenario("warm-up", "chat", True, 100, tokens=50),
        ):
            for target in ("direct", "proxy"):
                self.run_round(scenario, target, self.args.warmup_seconds, 0.0)

    def run_scenario(self, scenario: Scenario, profile: bool = False) -> ScenarioResult:
        result = ScenarioResult(scenario)
        profiler = self.start_py_spy(scenario) if profile else None
        try:
            for _ in range(self.args.rounds):
                for target in ("direct", "proxy"):
                    result.rounds.append(
                        self.run_round(scenario, target, self.args.duration, self.args.warmup)
                    )
        finally:
            if profiler is not None:
                self.stop_py_spy(profiler)
        s = result.summary()
        say(
            f"  {scenario.label:<24} direct {fmt(s['direct_rps'], 0):>7} req/s  proxy {fmt(s['proxy_rps'], 0):>6} "
            f"req/s  added p50 {fmt(s['added_p50_ms'], 2)} ms  errors {s['errors_direct'] + s['errors_proxy']}"
            f"  wrong {s['bad_content_direct'] + s['bad_content_proxy']}"
        )
        return result

    def idle_streams(self) -> dict[str, Any]:
        """RSS with no open stream vs with N slow streams open at once → memory per open stream."""
        args = self.args
        scenario = Scenario(
            "idle-streams", "chat", True, args.idle_streams, args.idle_tokens, args.idle_delay_ms
        )
        proxy = self.start_proxy()  # a fresh process, so memory freed by earlier scenarios is not reused
        quick = Scenario("warm-up", "chat", False, 10)
        stream = Scenario("warm-up", "chat", True, 10, tokens=50)
        self.run_round(quick, "proxy", 0.5, 0.0)
        self.run_round(stream, "proxy", 0.5, 0.0)
        direct = self.run_round(scenario, "direct", 0.0, 0.0, per_connection=1)
        time.sleep(0.5)
        proxy.refresh_pids()
        baseline_samples = []
        for _ in range(5):
            baseline_samples.append(proxy.rss_kib())
            time.sleep(0.1)
        baseline = int(statistics.median(baseline_samples))
        marks: dict[str, float] = {}

        def on_progress(at: float, progress: str) -> None:
            marks.setdefault(progress, at)

        with RssSampler(proxy.rss_kib, interval=0.1) as sampler:
            proxy_round = self.run_round(
                scenario, "proxy", 0.0, 0.0, per_connection=1, on_progress=on_progress, sampler=sampler
            )
        opened, first_done = marks.get("all_open"), marks.get("first_done")
        plateau = [
            kib for at, kib in sampler.samples if opened is not None and opened <= at <= (first_done or at)
        ]
        open_kib = max(plateau) if plateau else sampler.peak_kib
        streams = scenario.concurrency
        tokens = streams * scenario.tokens
        result = {
            "streams": streams,
            "tokens_per_stream": scenario.tokens,
            "token_delay_ms": scenario.delay_ms,
            "all_streams_open": opened is not None,
            "rss_baseline_mib": baseline / 1024,
            "rss_open_mib": open_kib / 1024,
            "kib_per_stream": (open_kib - baseline) / streams,
            "plateau_samples": len(plateau),
            "proxy_cpu_ms_per_slow_token": (
                1000 * proxy_round.proxy_cpu_s / tokens if tokens and not proxy_round.lost else None
            ),
            "direct_p50_ms": direct.p50_ms,
            "proxy_p50_ms": proxy_round.p50_ms,
            "proxy_p99_ms": proxy_round.p99_ms,
            "added_p50_ms": minus(proxy_round.p50_ms, direct.p50_ms),
            "errors_direct": direct.errors,
            "errors_proxy": proxy_round.errors,
            "bad_content_direct": direct.bad_content,
            "bad_content_proxy": proxy_round.bad_content,
            "answers_checked": direct.completed_total + proxy_round.completed_total,
            "error_samples": dict(Counter(direct.error_samples) + Counter(proxy_round.error_samples)),
            "generator_utilisation_proxy": proxy_round.generator_utilisation,
        }
        say(
            f"  {scenario.label:<24} RSS {result['rss_baseline_mib']:.1f} → {result['rss_open_mib']:.1f} MiB"
            f" = {result['kib_per_stream']:.1f} KiB/stream  errors {direct.errors + proxy_round.errors}"
            f"  wrong {direct.bad_content + proxy_round.bad_content}"
        )
        return result

    # profiling
    def start_py_spy(self, scenario: Scenario) -> subprocess.Popen[bytes] | None:
        assert self.proxy is not None
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            say("  py-spy is not installed in the venv (.venv/bin/pip install py-spy); not profiling")
            return None
        out = RESULTS / f"py-spy-{scenario.name}-c{scenario.concurrency}.txt"
        args = [str(py_spy), "record", "--pid", str(self.proxy.pid), "--format", "raw", "-o", str(out)]
        args += ["--rate", "250", "--subprocesses"]
        process = CHILDREN.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy needs a moment to attach
        return process

    def stop_py_spy(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            Children.stop(process)


def say(message: str) -> None:
    """Progress goes to stderr; the results table to stdout."""
    print(message, file=sys.stderr, flush=True)


def split_concurrency(concurrency: int, parts: int) -> list[int]:
    parts = max(1, min(parts, concurrency))
    return [concurrency // parts + (1 if i < concurrency % parts else 0) for i in range(parts)]


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def workers_supported() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"], capture_output=True, cwd=ROOT, timeout=30
    )
    return b"--workers" in result.stdout


def top_frames(raw_path: Path, count: int = 15) -> dict[str, Any]:
    """Top functions from py-spy's raw (collapsed stacks) output, by own time (the leaf of each stack)
    and by total time (anywhere in the stack). Lines are merged: `func (file:line)` → `func (file)`."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not raw_path.exists():
        return {"own": [], "total": []}
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit() or not stack:
            continue
        frames = [function_of(frame) for frame in stack.split(";")]
        # py-spy puts the process/thread as the first frame(s); they are not functions.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        own[frames[-1]] += int(samples)
        for frame in set(frames):
            if not frame.endswith(BOOTSTRAP_FRAMES):
                inclusive[frame] += int(samples)
        total += int(samples)

    def top(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "samples": n, "share": n / total} for f, n in counter.most_common(count)]

    return {"own": top(own), "total": top(inclusive), "samples": total}


# Frames every sample passes through (start-up and the event loop), left out of the total-time list.
BOOTSTRAP_FRAMES = (
    "(<frozen runpy>)",
    "(proxy/__main__.py)",
    "(proxy/cli.py)",
    "(proxy/server.py)",
    "(uvicorn/main.py)",
    "(uvicorn/server.py)",
    "(uvicorn/_compat.py)",
    "(asyncio/runners.py)",
    "(asyncio/base_events.py)",
)


def function_of(frame: str) -> str:
    """`send (uvicorn/protocols/http/httptools_impl.py:524)` → `send (uvicorn/protocols/http/httptools_impl.py)`."""
    head, sep, tail = frame.rpartition(":")
    if sep and tail.endswith(")") and tail[:-1].isdigit():
        return head + ")"
    return frame


# ---------------------------------------------------------------------------------------------------
# Output


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if digits == 0 else f"{value:.{digits}f}"


def pair(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{fmt(a, digits)}/{fmt(b, digits)}"


TABLE_COLUMNS = (
    ("scenario", 22),
    ("direct r/s", 10),
    ("proxy r/s", 9),
    ("ratio", 6),
    ("direct p50/p99", 14),
    ("proxy p50/p99", 13),
    ("added p50/p99", 13),
    ("TTFT d/p/+ p50", 16),
    ("CPU/req", 7),
    ("CPU/tok", 7),
    ("RSS MiB", 7),
    ("errors", 6),
    ("content", 7),
)


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in summaries:
        ttft = "-"
        if s["proxy_ttft_p50_ms"] is not None:
            ttft = (
                f"{fmt(s['direct_ttft_p50_ms'])}/{fmt(s['proxy_ttft_p50_ms'])}/{fmt(s['added_ttft_p50_ms'])}"
            )
        errors = s["errors_direct"] + s["errors_proxy"]
        wrong = s["bad_content_direct"] + s["bad_content_proxy"]
        rows.append(
            [
                s["scenario"],
                fmt(s["direct_rps"], 0),
                fmt(s["proxy_rps"], 0),
                fmt(s["throughput_ratio"], 3),
                pair(s["direct_p50_ms"], s["direct_p99_ms"]),
                pair(s["proxy_p50_ms"], s["proxy_p99_ms"]),
                pair(s["added_p50_ms"], s["added_p99_ms"]),
                ttft,
                fmt(s["proxy_cpu_ms_per_request"], 3),
                fmt(s["proxy_cpu_ms_per_token"], 4),
                fmt(s["peak_rss_mib"], 1),
                str(errors),
                "OK" if wrong == 0 else f"{wrong} BAD",
            ]
        )
    return rows


def render_table(rows: list[list[str]], columns: Sequence[tuple[str, int]] = TABLE_COLUMNS) -> str:
    names = [name for name, _ in columns]
    widths = [
        max(width, len(name), *(len(row[i]) for row in rows)) for i, (name, width) in enumerate(columns)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(names), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


HARNESS_COLUMNS = (
    ("scenario", 22),
    ("generator busy d/p", 18),
    ("upstream µs", 11),
    ("generator µs", 12),
    ("proxy busy", 10),
    ("proxy r/s per core", 18),
)


def harness_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            s["scenario"],
            f"{pct(s['generator_utilisation_direct'])}/{pct(s['generator_utilisation_proxy'])}",
            fmt(s["upstream_cpu_us_per_request_direct"], 1),
            fmt(s["generator_cpu_us_per_request_direct"], 1),
            pct(s["proxy_cpu_utilisation"]),
            fmt(s["proxy_rps_per_core"], 0),
        ]
        for s in summaries
    ]


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    unit: str
    higher_is_better: bool = False

    @property
    def status(self) -> str:
        if self.value is None:
            return "n/a"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "PASS" if ok else "MISS"


def find(summaries: list[dict[str, Any]], label: str) -> dict[str, Any]:
    return next((s for s in summaries if s["scenario"] == label), {})


def targets(
    summaries: list[dict[str, Any]],
    idle: dict[str, Any] | None,
    startup_s: float | None,
    errors: int,
    wrong: int,
) -> list[Target]:
    chat1, chat10, stream10, paced10 = (
        find(summaries, "chat c=1"),
        find(summaries, "chat c=10"),
        find(summaries, "chat-stream c=10"),
        find(summaries, "chat-stream-5ms c=10"),
    )
    rss50 = [s["peak_rss_mib"] for s in summaries if s["scenario"].endswith("c=50")]
    return [
        Target("added latency, chat c=1, p50", chat1.get("added_p50_ms"), 1.0, "ms"),
        Target("added latency, chat c=1, p99", chat1.get("added_p99_ms"), 3.0, "ms"),
        Target("chat throughput c=10", chat10.get("proxy_rps"), 1500, "req/s", higher_is_better=True),
        Target(
            "  same, per core of proxy CPU (1 ÷ CPU/req)",
            chat10.get("proxy_rps_per_core"),
            1500,
            "req/s",
            higher_is_better=True,
        ),
        Target("CPU per non-streamed request (chat c=10)", chat10.get("proxy_cpu_ms_per_request"), 0.6, "ms"),
        Target(
            "CPU per streamed token (chat-stream c=10)", stream10.get("proxy_cpu_ms_per_token"), 0.05, "ms"
        ),
        Target(
            "TTFT added by the proxy, p50 (chat-stream-5ms c=10)",
            paced10.get("added_ttft_p50_ms"),
            2.0,
            "ms",
        ),
        Target("peak RSS under c=50", max(rss50) if rss50 else None, 80, "MiB"),
        Target("memory per open stream", idle.get("kib_per_stream") if idle else None, 20, "KiB"),
        Target("start-up to first answer (median)", startup_s, 1.5, "s"),
        Target("errors (all scenarios)", errors, 0, ""),
        Target("wrong content (all scenarios)", wrong, 0, ""),
    ]


def render_targets(items: list[Target]) -> str:
    lines = []
    for t in items:
        digits = 0 if t.unit in ("req/s", "") else 3
        value = "-" if t.value is None else fmt(t.value, digits)
        op = "≥" if t.higher_is_better else "≤"
        lines.append(
            f"  {t.name:<56} {value:>9} {t.unit:<5}  target {op} {t.limit:g} {t.unit:<5}  {t.status}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = proc_meminfo_kib("MemTotal:")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=ROOT, text=True)
    versions = {}
    for module in ("uvicorn", "starlette", "httpx", "aiohttp", "uvloop", "httptools", "orjson"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version(module)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "git_commit": commit.stdout.strip() or None,
        "packages": versions,
    }


def proc_meminfo_kib(key: str) -> int:
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------------
# Main


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("chat", "chat", False, 1),
            Scenario("chat", "chat", False, 10),
            Scenario("chat", "chat", False, 50),
            Scenario("completions", "completions", False, 10),
            Scenario("chat-stream", "chat", True, 10, tokens=50),
            Scenario("chat-stream", "chat", True, 100, tokens=50),
            Scenario("chat-stream-5ms", "chat", True, 10, tokens=50, delay_ms=5),
        ]
    return [
        Scenario("chat", "chat", False, 1),
        Scenario("chat", "chat", False, 10),
        Scenario("chat", "chat", False, 50),
        Scenario("completions", "completions", False, 1),
        Scenario("completions", "completions", False, 10),
        Scenario("completions", "completions", False, 50),
        Scenario("chat-stream", "chat", True, 10, tokens=50),
        Scenario("chat-stream", "chat", True, 100, tokens=50),
        Scenario("completions-stream", "completions", True, 10, tokens=50),
        Scenario("chat-stream-5ms", "chat", True, 10, tokens=50, delay_ms=5),
        Scenario("chat-stream-10ms", "chat", True, 100, tokens=50, delay_ms=10),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (~30 s): 1 round of 1 s")
    parser.add_argument(
        "--rounds", type=int, help="direct+proxy round pairs per scenario (default 3; quick 1)"
    )
    parser.add_argument("--duration", type=float, help="measured seconds per round (default 2.5; quick 1)")
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds at the start of each round (default 0.3)"
    )
    parser.add_argument("--workers", type=int, help="pass --workers N to `python -m proxy serve`")
    parser.add_argument("--scaling", action="store_true", help="also run chat c=10/c=50 with 1 and 2 workers")
    parser.add_argument("--access-log", action="store_true", help="run the proxy with its access log on")
    parser.add_argument(
        "--no-log-compare", action="store_true", help="skip the extra chat c=10 row with the access log on"
    )
    parser.add_argument("--generators", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument("--only", help="comma-separated scenario labels to run, e.g. 'chat c=10,chat c=1'")
    parser.add_argument("--idle-streams", type=int, help="open streams in the memory scenario (default 1000)")
    parser.add_argument("--idle-tokens", type=int, help="tokens per idle stream (default 20)")
    parser.add_argument(
        "--idle-delay-ms", type=float, help="delay before each idle-stream token (default 500)"
    )
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-streams memory scenario")
    parser.add_argument(
        "--chat-leading-space",
        action="store_true",
        help="expect chat content to keep the upstream's leading space (builds before that rule, e.g. "
        "with --proxy-command on an older checkout)",
    )
    parser.add_argument("--startups", type=int, help="start-up measurements (default 3; quick 1)")
    parser.add_argument(
        "--py-spy", action="store_true", help="profile the proxy with py-spy during chat c=10"
    )
    parser.add_argument(
        "--proxy-wrapper",
        help="prefix for the proxy command, e.g. 'taskset -c 1' to pin it to a CPU (its children count too)",
    )
    parser.add_argument(
        "--proxy-command",
        help="run this instead of `python -m proxy serve` (placeholders {python} {host} {port} {workers}), "
        "e.g. to benchmark another implementation",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where to write the JSON")
    parser.add_argument("--max-time", type=float, default=900, help="hard limit for the whole run, seconds")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 1 if quick else 3,
        "duration": 1.0 if quick else 2.5,
        "warmup": 0.2 if quick else 0.3,
        "idle_streams": 200 if quick else 1000,
        "idle_tokens": 10 if quick else 20,
        "idle_delay_ms": 200.0 if quick else 500.0,
        "startups": 1 if quick else 3,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.warmup_seconds = 0.5 if quick else 1.0
    return args


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise HarnessError(f"the run exceeded --max-time {seconds:g} s")

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGALRM, expired)
    signal.signal(signal.SIGTERM, terminated)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in ("proxy.log", "upstream.log", "loadgen.log"):
        (RESULTS / name).unlink(missing_ok=True)
    raise_fd_limit()
    began = time.monotonic()
    report: dict[str, Any] = {"machine": machine(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with hard_limit(args.max_time):
            code = run(args, report)
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        report["harness_error"] = str(exc)
        code = 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        code = 130
    finally:
        CHILDREN.stop_all()
    report["runtime_s"] = round(time.monotonic() - began, 1)
    report["exit_code"] = code
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nRuntime {report['runtime_s']:.0f} s. JSON: {display_path(args.json)}")
    return code


def display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    bench = Bench(args)
    workers = args.workers if bench.workers_supported else None
    report["config"] = {
        key: value for key, value in vars(args).items() if key not in ("json",) and not callable(value)
    }
    report["config"]["workers_supported"] = bench.workers_supported
    if args.workers is not None and not bench.workers_supported:
        say(
            f"bench: `python -m proxy serve` has no --workers option; running one process (asked {args.workers})"
        )
    say(f"bench: upstream on port {bench.upstream.port}; proxy on port {bench.proxy_port}")

    say("start-up:")
    for _ in range(max(0, args.startups - 1)):
        bench.start_proxy()
        bench.stop_proxy()
    bench.start_proxy()
    bench.warm_up()

    wanted = {label.strip() for label in args.only.split(",")} if args.only else None
    chosen = [s for s in scenarios(args.quick) if wanted is None or s.label in wanted]
    say("scenarios:")
    results = [bench.run_scenario(s, profile=args.py_spy and s.label == "chat c=10") for s in chosen]
    summaries = [r.summary() for r in results]
    assert bench.proxy is not None
    hwm = bench.proxy.hwm_kib() / 1024

    extra: list[dict[str, Any]] = []
    if (
        not args.quick
        and not args.no_log_compare
        and not args.access_log
        and (wanted is None or "chat c=10" in wanted)
    ):
        say("access log on:")
        bench.start_proxy(access_log=True)
        bench.warm_up()
        logged = bench.run_scenario(Scenario("chat", "chat", False, 10)).summary()
        logged["scenario"] = "chat c=10 + access log"
        extra.append(logged)

    idle = None
    if not args.no_idle:
        say("idle streams:")
        idle = bench.idle_streams()

    scaling: dict[str, Any] | str | None = None
    if args.scaling:
        say("worker scaling:")
        if not bench.workers_supported:
            scaling = "not supported: `python -m proxy serve --help` has no --workers option"
            say(f"  {scaling}")
        else:
            scaling = {}
            for count in (1, 2):
                bench.start_proxy(workers=count)
                bench.warm_up()
                rows = []
                for concurrency in (10, 50):
                    summary = bench.run_scenario(Scenario("chat", "chat", False, concurrency)).summary()
                    summary["scenario"] = f"chat c={concurrency} workers={count}"
                    rows.append(summary)
                scaling[str(count)] = rows
    bench.stop_proxy()

    all_summaries = (
        summaries
        + extra
        + ([r for rows in scaling.values() for r in rows] if isinstance(scaling, dict) else [])
    )
    errors = sum(s["errors_direct"] + s["errors_proxy"] for s in all_summaries)
    wrong = sum(s["bad_content_direct"] + s["bad_content_proxy"] for s in all_summaries)
    if idle is not None:
        errors += idle["errors_direct"] + idle["errors_proxy"]
        wrong += idle["bad_content_direct"] + idle["bad_content_proxy"]
    startup = statistics.median(bench.startups) if bench.startups else None
    target_list = targets(summaries, idle, startup, errors, wrong)

    info = report["machine"]
    print()
    print(
        f"Proxy benchmark — {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"workers={workers or 1}, access log {'on' if args.access_log else 'off'}, "
        f"{args.rounds} round(s) × {args.duration:g} s per target, medians"
    )
    load_start, load_end = info["load_average"][0], os.getloadavg()[0]
    print(
        f"Machine load average (1 min): {load_start:.2f} at the start, {load_end:.2f} at the end "
        f"(above {info['nproc']}: other work competed for the CPUs)."
    )
    print("Latencies in ms; CPU in ms of proxy CPU time (utime+stime) per request / per streamed token;")
    print("ratio = proxy req/s ÷ direct req/s; added = proxy − direct, paired by round.\n")
    print(render_table(table_rows(summaries + extra)))
    if isinstance(scaling, dict):
        print("\nWorker scaling (chat):")
        print(render_table(table_rows([r for rows in scaling.values() for r in rows])))
    elif scaling is not None:
        print(f"\nWorker scaling: {scaling}")
    if idle is not None:
        print(
            f"\nIdle streams: {idle['streams']} streams of {idle['tokens_per_stream']} tokens, one every "
            f"{idle['token_delay_ms']:g} ms: RSS {idle['rss_baseline_mib']:.1f} MiB with none open → "
            f"{idle['rss_open_mib']:.1f} MiB with all open = {idle['kib_per_stream']:.1f} KiB per stream; "
            f"proxy CPU {fmt(idle['proxy_cpu_ms_per_slow_token'], 4)} ms per slow token; "
            f"added p50 {fmt(idle['added_p50_ms'])} ms; errors {idle['errors_direct'] + idle['errors_proxy']}; "
            f"content {'OK' if idle['bad_content_direct'] + idle['bad_content_proxy'] == 0 else 'BAD'}"
        )
    print(
        f"\nStart-up (spawn → first correct chat answer): median {fmt(startup, 3)} s, "
        f"max {fmt(max(bench.startups), 3)} s over {len(bench.startups)} start(s). "
        f"Proxy VmHWM after the main scenarios: {hwm:.1f} MiB."
    )
    print("\nHarness check: the load generator and the upstream must not be the bottleneck (CPU busy = CPU")
    print(
        "seconds ÷ wall seconds of the process, one core = 100%; µs = CPU per answer in the direct rounds)."
    )
    print("proxy r/s per core = answers ÷ proxy CPU seconds: the throughput of one fully available core.\n")
    print(render_table(harness_rows(summaries), HARNESS_COLUMNS))
    samples = Counter[str]()
    for s in all_summaries:
        samples.update(s["error_samples"])
    if idle is not None:
        samples.update(idle["error_samples"])
    if samples:
        print("\nError samples:")
        for message, count in samples.most_common(10):
            print(f"  {count}× {message}")
    print("\nTargets:")
    print(render_targets(target_list))

    profile = None
    if args.py_spy:
        raw = RESULTS / "py-spy-chat-c10.txt"
        profile = top_frames(raw)
        if profile["own"]:
            print(
                f"\npy-spy, chat c=10 ({profile['samples']} samples, {display_path(raw)}); the chat c=10 row"
            )
            print("was measured under the profiler. Top functions by own time:")
            for frame in profile["own"]:
                print(f"  {frame['share'] * 100:5.1f}%  {frame['frame']}")
            print("Top functions by total time (own + callees):")
            for frame in profile["total"]:
                print(f"  {frame['share'] * 100:5.1f}%  {frame['frame']}")

    report.update(
        {
            "scenarios": summaries,
            "rounds": {r.scenario.label: [asdict(x) for x in r.rounds] for r in results},
            "access_log_compare": extra,
            "idle_streams": idle,
            "scaling": scaling,
            "startup_s": {"median": startup, "all": bench.startups},
            "proxy_vm_hwm_mib": hwm,
            "targets": [{**asdict(t), "status": t.status} for t in target_list],
            "errors": errors,
            "wrong_content": wrong,
            "py_spy_top_frames": profile,
        }
    )
    report["machine"]["load_average_end"] = os.getloadavg()
    return 0 if errors == 0 and wrong == 0 else 1


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
