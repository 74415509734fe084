"""The proxy next to peer gateways in the same harness: LiteLLM proxy 1.77.4 and Portkey gateway 1.15.2.

    bash bench/setup_peers.sh                 # once: installs both into bench/.peers/ (gitignored)
    .venv/bin/python bench/peers.py           # about 3½ minutes; prints a markdown table
    .venv/bin/python bench/peers.py --quick   # about 1 minute

Every gateway talks to the same cheap `/v1/complete` upstream (`bench/upstream.py`): ours as `python -m
proxy serve`, LiteLLM through its `anthropic_text/` provider (its `/v1/complete` path), Portkey through its
`anthropic` provider with `x-portkey-custom-host` (its `/v1/completions` goes to `/v1/complete`; its chat
goes to the Messages API, which the upstream does not serve, and the table says so). Each round of a
scenario runs direct, then every gateway in turn (the order rotates from round to round), so ratios
against direct come from the same moment. The load generator checks every answer; a stream that ends
without `[DONE]` and a wrong finish reason are counted as deviations but still timed, so a peer's figures
exist; wrong text is never accepted. Everything stays on 127.0.0.1: the peers run with their telemetry
off, and each gateway's sockets are checked for non-loopback peers after every scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import run as harness
from benchlib import expected_text

PEERS = harness.BENCH / ".peers"
LITELLM = PEERS / "litellm-venv" / "bin" / "litellm"
PORTKEY = PEERS / "portkey" / "package"
TOLERATE = ["done", "finish_reason", "shape"]
GATEWAYS = ("proxy", "litellm", "portkey")
TITLES = {"proxy": "this proxy", "litellm": "LiteLLM 1.77.4", "portkey": "Portkey 1.15.2"}
LEGACY_MODEL = "claude-2.1"


# ---------------------------------------------------------------------------------------------------
# Gateways


class PeerProcess:
    """A peer gateway as a real process, with the accounting `run.Proxy` offers (cpu, rss, hwm)."""

    def __init__(
        self, args: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, ready: Callable[[], bool]
    ) -> None:
        self.log = log_path.open("ab")
        started = time.perf_counter()
        self.process = harness.CHILDREN.spawn(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        self.pid = self.process.pid
        deadline = started + 180  # LiteLLM imports for tens of seconds on a busy 2-core machine
        while True:
            if self.process.poll() is not None:
                raise harness.HarnessError(
                    f"{args[0]} exited with {self.process.returncode} (see {log_path})"
                )
            if ready():
                break
            if time.perf_counter() > deadline:
                raise harness.HarnessError(f"{args[0]} did not answer within 180 s (see {log_path})")
            time.sleep(0.05)
        self.startup_s = time.perf_counter() - started
        self.pids = harness.descendants(self.pid)

    def refresh_pids(self) -> None:
        self.pids = harness.descendants(self.pid)

    def cpu(self) -> float:
        return sum(harness.proc_cpu_seconds(pid) for pid in self.pids)

    def rss_kib(self) -> int:
        return sum(harness.proc_status_kib(pid, "VmRSS:") for pid in self.pids)

    def hwm_kib(self) -> int:
        return sum(harness.proc_status_kib(pid, "VmHWM:") for pid in self.pids)

    def stop(self) -> None:
        harness.Children.stop(self.process)
        self.log.close()


@dataclass
class Gateway:
    name: str
    port: int
    upstream_port: int
    process: Any = None  # run.Proxy or PeerProcess

    def request(
        self, kind: str, tokens: int, delay_ms: float, stream: bool
    ) -> tuple[str, dict[str, str], str]:
        """(path, headers, body) of one OpenAI request to this gateway."""
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        build = harness.chat_body if kind == "chat" else harness.completions_body
        body = build(tokens, delay_ms, stream)
        headers = dict(harness.SDK_HEADERS)
        if self.name == "portkey":
            # Portkey has no model list of its own here: the client names the provider, its key and
            # model, and where the provider lives.
            body["model"] = LEGACY_MODEL
            headers["x-portkey-provider"] = "anthropic"
            headers["x-portkey-custom-host"] = f"http://{harness.HOST}:{self.upstream_port}/v1"
            headers["Authorization"] = f"Bearer {harness.SERVER_KEY}"
        return path, headers, json.dumps(body)

    def answers(self, kind: str) -> bool:
        """One 5-token non-streamed request answered with 200 (start-up probe)."""
        path, headers, body = self.request(kind, 5, 0, False)
        try:
            answer = harness.post_json(self.port, path, json.loads(body), headers, timeout=10)
        except (ConnectionError, OSError):
            return False
        except harness.HarnessError as exc:
            raise harness.HarnessError(f"{self.name}'s first answer failed: {exc}") from None
        text = answer["choices"][0]["message"]["content"] if kind == "chat" else answer["choices"][0]["text"]
        if text not in (expected_text(5), harness.chat_text(5)):
            raise harness.HarnessError(f"{self.name}'s first answer is wrong: {text!r}")
        return True


def clean_env() -> dict[str, str]:
    """The environment without proxies or keys of the caller: every gateway talks to 127.0.0.1 only."""
    dropped = ("ANTHROPIC_", "PROXY_", "OPENAI_", "LITELLM_", "PORTKEY_")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


def litellm_config(upstream_port: int) -> str:
    params = {
        "model": "anthropic_text/claude-2",  # the provider for the legacy /v1/complete API
        "api_base": f"http://{harness.HOST}:{upstream_port}",  # LiteLLM appends /v1/complete
        "api_key": harness.SERVER_KEY,
    }
    config = {
        "model_list": [
            {"model_name": "gpt-4", "litellm_params": params},
            {"model_name": "gpt-3.5-turbo-instruct", "litellm_params": params},
        ],
        "litellm_settings": {"telemetry": False, "set_verbose": False},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def start_gateway(gateway: Gateway, log_dir: Path) -> Any:
    if gateway.name == "proxy":
        options = harness.ProxyOptions(workers=None, access_log=False, wrapper=[])
        return harness.Proxy(gateway.upstream_port, gateway.port, options, log_dir / "proxy.log")
    env = clean_env()
    if gateway.name == "litellm":
        if not LITELLM.exists():
            raise harness.HarnessError(f"{LITELLM} is missing: run `bash bench/setup_peers.sh`")
        config = log_dir / "litellm-config.yaml"
        config.write_text(litellm_config(gateway.upstream_port))
        env.update(
            {
                "LITELLM_TELEMETRY": "False",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "DISABLE_SCHEMA_UPDATE": "True",
            }
        )
        args = [str(LITELLM), "--config", str(config), "--host", harness.HOST, "--port", str(gateway.port)]
        args += ["--num_workers", "1"]
        return PeerProcess(
            args,
            env=env,
            cwd=log_dir,
            log_path=log_dir / "litellm.log",
            ready=lambda: gateway.answers("chat"),
        )
    node = shutil.which("node")
    if node is None or not (PORTKEY / "node_modules" / "hono").exists():
        raise harness.HarnessError(f"node or {PORTKEY} is missing: run `bash bench/setup_peers.sh`")
    env["NODE_ENV"] = "production"
    shim = (harness.BENCH / "portkey_loopback.mjs").as_uri()
    args = [node, "--import", shim, "build/start-server.js", f"--port={gateway.port}", "--headless"]
    return PeerProcess(
        args,
        env=env,
        cwd=PORTKEY,
        log_path=log_dir / "portkey.log",
        ready=lambda: gateway.answers("completions"),
    )


def foreign_sockets(pids: Sequence[int]) -> list[str]:
    """TCP/UDP sockets of these processes whose remote end is not a loopback or unset address."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError), open(f"/proc/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote, inode = fields[2].split(":")[0], fields[9]
                if inode in inodes and not loopback_or_unset(remote):
                    found.append(f"{table} {fields[1]} -> {fields[2]}")
    return found


def loopback_or_unset(hex_address: str) -> bool:
    if len(hex_address) == 8:  # IPv4, little-endian
        return hex_address == "00000000" or hex_address.endswith("7F")
    # IPv6: unset, ::1, or IPv4-mapped 127.x
    return (
        set(hex_address) == {"0"}
        or hex_address == "00000000000000000000000001000000"
        or (hex_address.startswith("0000000000000000FFFF0000") and hex_address.endswith("7F"))
    )


# ---------------------------------------------------------------------------------------------------
# Rounds


@dataclass
class Cell:
    """One gateway in one scenario: its rounds and the direct rounds they were paired with."""

    gateway: str
    scenario: harness.Scenario
    pairs: list[tuple[harness.Round, harness.Round]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rounds = [g for _, g in self.pairs if not g.lost]
        pairs = [(d, g) for d, g in self.pairs if not g.lost and not d.lost]
        requests = sum(r.completed_total for r in rounds)
        cpu = sum(r.proxy_cpu_s for r in rounds)
        # Per upstream token relayed (the scenario's tokens per answer), so gateways that split or
        # merge chunks differently are compared on the same work.
        tokens = requests * self.scenario.tokens if self.scenario.stream else 0
        samples: Counter[str] = Counter()
        deviations: Counter[str] = Counter()
        for _, r in self.pairs:
            samples.update(r.error_samples)
            deviations.update(r.deviations)
        m = harness.median
        answers = sum(r.completed_total for _, r in self.pairs)
        failed = sum(r.errors + r.bad_content for _, r in self.pairs)
        all_failed = answers > 0 and failed >= answers
        if all_failed:  # its speed says nothing
            rounds, pairs, cpu = [], [], 0.0
        return {
            "gateway": self.gateway,
            "scenario": self.scenario.label,
            "direct_rps": m([d.rps for d, _ in pairs]),
            "rps": m([r.rps for r in rounds]),
            "ratio": m([harness.ratio(g.rps, d.rps) for d, g in pairs]),
            "p50_ms": m([r.p50_ms for r in rounds]),
            "p99_ms": m([r.p99_ms for r in rounds]),
            "added_p50_ms": m([harness.minus(g.p50_ms, d.p50_ms) for d, g in pairs]),
            "added_p99_ms": m([harness.minus(g.p99_ms, d.p99_ms) for d, g in pairs]),
            "ttft_p50_ms": m([r.ttft_p50_ms for r in rounds]),
            "added_ttft_p50_ms": m([harness.minus(g.ttft_p50_ms, d.ttft_p50_ms) for d, g in pairs]),
            "cpu_ms_per_request": 1000 * cpu / requests if requests and cpu else None,
            "cpu_ms_per_token": 1000 * cpu / tokens if tokens and cpu else None,
            "rps_per_core": requests / cpu if cpu else None,
            "peak_rss_mib": max((r.peak_rss_kib for _, r in self.pairs), default=0) / 1024,
            "answers": answers,
            "all_failed": all_failed,
            "errors": sum(r.errors for _, r in self.pairs),
            "bad_content": sum(r.bad_content for _, r in self.pairs),
            "deviations": dict(deviations),
            "error_samples": dict(samples),
        }


class PeerBench(harness.Bench):
    """run.py's Bench with several gateways: `self.proxy` points at the gateway of the current round."""

    upstream_args = ("--accept-trailing-space",)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.gateways: dict[str, Gateway] = {}
        self.current: Gateway | None = None

    def command(
        self, scenario: harness.Scenario, target: str, duration: float, warmup: float, per_connection: int = 0
    ) -> dict[str, Any]:
        command = super().command(scenario, target, duration, warmup, per_connection)
        command["tolerate"] = TOLERATE
        if target != "direct":
            assert self.current is not None
            path, headers, body = self.current.request(
                scenario.kind, scenario.tokens, scenario.delay_ms, scenario.stream
            )
            command.update(port=self.current.port, path=path, headers=headers, body=body)
            if scenario.kind == "chat" and self.current.name != "proxy":
                command["expected"] = expected_text(scenario.tokens)  # peers keep the upstream's space
        return command

    def gateway_round(
        self, scenario: harness.Scenario, name: str, duration: float, warmup: float
    ) -> harness.Round:
        self.current = self.gateways[name]
        self.proxy = self.current.process
        try:
            result = self.run_round(scenario, "proxy", duration, warmup)
        finally:
            self.proxy = None
        result.target = name
        return result


def peer_scenarios(quick: bool) -> list[harness.Scenario]:
    return [
        harness.Scenario("chat", "chat", False, 10),
        harness.Scenario("chat-stream", "chat", True, 10, tokens=50),
        harness.Scenario("chat-stream-5ms", "chat", True, 10, tokens=50, delay_ms=5),
        harness.Scenario("completions", "completions", False, 10),
        harness.Scenario("completions-stream", "completions", True, 10, tokens=50),
    ]


# ---------------------------------------------------------------------------------------------------
# Output


def fmt(value: float | None, digits: int = 2) -> str:
    return harness.fmt(value, digits)


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | gateway | req/s | × direct | added p50 / p99 ms | TTFT added p50 ms | CPU ms/req "
        "| CPU ms/token | req/s per core | peak RSS MiB | answers | errors | wrong | deviations |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * 12]
    for s in summaries:
        deviated = sum(s["deviations"].values())
        lines.append(
            f"| {s['scenario']} | {TITLES[s['gateway']]} | {'all failed' if s['all_failed'] else fmt(s['rps'], 0)} | {fmt(s['ratio'], 3)} "
            f"| {fmt(s['added_p50_ms'])} / {fmt(s['added_p99_ms'])} | {fmt(s['added_ttft_p50_ms'])} "
            f"| {fmt(s['cpu_ms_per_request'], 3)} | {fmt(s['cpu_ms_per_token'], 4)} | {fmt(s['rps_per_core'], 0)} "
            f"| {s['peak_rss_mib']:.0f} | {s['answers']:,} | {s['errors']:,} | {s['bad_content']:,} | {deviated:,} |"
        )
    return "\n".join(lines)


def could_not_do(summaries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per gateway: each scenario with errors, wrong content or deviations, with the first samples."""
    found: dict[str, list[str]] = {}
    for s in summaries:
        problems = []
        if s["errors"] or s["bad_content"]:
            kinds = "; ".join(f"{n}× {m}" for m, n in Counter(s["error_samples"]).most_common(2))
            problems.append(
                f"{s['errors'] + s['bad_content']:,} of {s['answers']:,} answers failed ({kinds})"
            )
        if s["deviations"]:
            kinds = "; ".join(f"{n:,}× {m}" for m, n in Counter(s["deviations"]).most_common(3))
            problems.append(f"tolerated deviations: {kinds}")
        if problems:
            found.setdefault(s["gateway"], []).append(f"{s['scenario']}: " + " — ".join(problems))
    return found


# ---------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/peers.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per scenario")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per round (default 2.5; quick 1)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds at the start of a round (0.3)")
    parser.add_argument(
        "--gateways", default=",".join(GATEWAYS), help=f"comma-separated, from {', '.join(GATEWAYS)}"
    )
    parser.add_argument("--only", help="comma-separated scenario labels, e.g. 'chat c=10'")
    parser.add_argument("--json", type=Path, default=harness.RESULTS / "peers.json")
    parser.add_argument("--max-time", type=float, default=1200, help="hard limit for the whole run, seconds")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 2.5)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 0.3)
    # What run.Bench reads.
    args.generators, args.proxy_command, args.proxy_wrapper, args.access_log = 1, None, None, False
    args.workers, args.warmup_seconds = None, 1.0
    args.gateways = [g.strip() for g in args.gateways.split(",") if g.strip()]
    unknown = set(args.gateways) - set(GATEWAYS)
    if unknown:
        parser.error(f"unknown gateway(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    for name in ("proxy.log", "upstream.log", "loadgen.log", "litellm.log", "portkey.log"):
        (harness.RESULTS / name).unlink(missing_ok=True)
    harness.raise_fd_limit()
    began = time.monotonic()
    report: dict[str, Any] = {
        "machine": harness.machine(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        with harness.hard_limit(args.max_time):
            code = run(args, report)
    except harness.HarnessError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        report["harness_error"] = str(exc)
        code = 2
    except KeyboardInterrupt:
        code = 130
    finally:
        harness.CHILDREN.stop_all()
    report["runtime_s"] = round(time.monotonic() - began, 1)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nRuntime {report['runtime_s']:.0f} s. JSON: {harness.display_path(args.json)}")
    return code


def run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    bench = PeerBench(args)
    say = harness.say
    say(f"peers: upstream on port {bench.upstream.port}")
    for name in args.gateways:
        gateway = Gateway(name, harness.free_port(), bench.upstream.port)
        gateway.process = start_gateway(gateway, harness.RESULTS)
        bench.gateways[name] = gateway
        say(
            f"  {TITLES[name]} answered {gateway.process.startup_s:.1f} s after its start (pid {gateway.process.pid})"
        )

    wanted = {label.strip() for label in args.only.split(",")} if args.only else None
    chosen = [s for s in peer_scenarios(args.quick) if wanted is None or s.label in wanted]
    names = list(bench.gateways)
    say("warm-up:")
    for scenario in chosen:  # one short unmeasured round each, so pools and caches are filled
        for name in names:
            bench.gateway_round(scenario, name, 0.5, 0.0)
    cells = {(name, s.label): Cell(name, s) for s in chosen for name in names}
    foreign: dict[str, list[str]] = {}
    say("scenarios:")
    for scenario in chosen:
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            direct = bench.run_round(scenario, "direct", args.duration, args.warmup)
            for name in order:
                cells[name, scenario.label].pairs.append(
                    (direct, bench.gateway_round(scenario, name, args.duration, args.warmup))
                )
        for name in names:
            s = cells[name, scenario.label].summary()
            say(
                f"  {scenario.label:<24} {name:<8} {fmt(s['rps'], 0):>6} req/s  ×direct {fmt(s['ratio'], 3)}  "
                f"CPU/req {fmt(s['cpu_ms_per_request'], 3)} ms  errors {s['errors']}  wrong {s['bad_content']}  "
                f"deviations {sum(s['deviations'].values())}"
            )
            process = bench.gateways[name].process
            process.refresh_pids()
            for socket in foreign_sockets(process.pids):
                foreign.setdefault(name, []).append(socket)
    summaries = [cells[name, s.label].summary() for s in chosen for name in names]
    hwm = {name: bench.gateways[name].process.hwm_kib() / 1024 for name in names}
    startup = {name: bench.gateways[name].process.startup_s for name in names}
    for name in names:
        bench.gateways[name].process.stop()

    info = report["machine"]
    print(
        f"\nGateways side by side — {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"node {node_version()}, commit {info['git_commit']}; {args.rounds} round(s) × {args.duration:g} s, "
        f"medians; load average {info['load_average'][0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end."
    )
    print(
        "Each round: direct, then every gateway (rotating order); × direct and added latencies are paired with "
        "the round's direct run.\nCPU = the gateway's processes' utime+stime; per token = per upstream token "
        "relayed. Deviations (missing [DONE], wrong finish_reason, chunks without finish_reason) are counted but timed.\n"
    )
    print(markdown_table(summaries))
    print("\nPeak RSS (VmHWM) per gateway: " + ", ".join(f"{TITLES[n]} {hwm[n]:.0f} MiB" for n in names))
    print("Start-up to first answer: " + ", ".join(f"{TITLES[n]} {startup[n]:.1f} s" for n in names))
    problems = could_not_do(summaries)
    print("\nWhat each gateway could not do:")
    for name in names:
        print(f"- {TITLES[name]}: " + ("nothing: every answer right" if name not in problems else ""))
        for line in problems.get(name, []):
            print(f"  - {line}")
    print(
        "\nNon-loopback sockets seen: "
        + ("none" if not foreign else "; ".join(f"{n}: {', '.join(v[:3])}" for n, v in foreign.items()))
    )
    ratios = head_to_head(cells, chosen)
    if ratios:
        print("\nThis proxy vs LiteLLM, paired rounds (medians): " + "; ".join(ratios))
    report.update(
        {
            "summaries": summaries,
            "vm_hwm_mib": hwm,
            "startup_s": startup,
            "could_not_do": problems,
            "foreign_sockets": foreign,
            "head_to_head": ratios,
            "config": {k: v for k, v in vars(args).items() if k != "json"},
        }
    )
    return 0


def head_to_head(cells: dict[tuple[str, str], Cell], chosen: list[harness.Scenario]) -> list[str]:
    """Ours ÷ LiteLLM in req/s (round by round, the two ran next to each other) and in CPU per request."""
    found = []
    for scenario in chosen:
        ours, theirs = cells.get(("proxy", scenario.label)), cells.get(("litellm", scenario.label))
        if ours is None or theirs is None:
            continue
        per_round = [
            harness.ratio(o.rps, t.rps) for (_, o), (_, t) in zip(ours.pairs, theirs.pairs, strict=False)
        ]
        a, b = ours.summary(), theirs.summary()
        found.append(
            f"{scenario.label}: req/s ×{fmt(harness.median(per_round), 1)}, "
            f"CPU per request ÷{fmt(harness.ratio(b['cpu_ms_per_request'], a['cpu_ms_per_request']), 1)}"
        )
    return found


def node_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main())
