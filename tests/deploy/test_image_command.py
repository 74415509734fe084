"""The container image's command, run for real without Docker.

No Docker engine is available where the tests run, so this test does what the image does, from
`deploy/Dockerfile` itself rather than from a copy of it:

1. it parses the Dockerfile: the final stage's ENV, USER, WORKDIR, COPY, ENTRYPOINT/CMD and
   HEALTHCHECK, and what the builder stage COPYs from the build context;
2. builds the project's wheel from exactly those files (`pip wheel --no-deps`, as the builder stage
   does) and installs it with its dependencies into a clean virtualenv made `--without-pip` (as the
   runtime stage does), at a temporary path standing for the image's `VIRTUAL_ENV`;
3. writes the configuration file the CMD expects from the file the Dockerfile COPYs there;
4. starts ENTRYPOINT + CMD with exactly the Dockerfile's environment (nothing inherited), plus what
   `docker run -e` would add: the upstream secrets, and - to bind only loopback on a free port -
   PROXY_SERVER__HOST=127.0.0.1 and PROXY_SERVER__PORT=<free port> over the image's 0.0.0.0:8080;
5. as the Dockerfile's numeric USER when the test runs as root (setuid/setgid in the child via
   subprocess's user=/group=, no supplementary groups). Not root: it runs as the current user and
   says so in a warning;
6. waits for /healthz, runs the HEALTHCHECK command (exit 0 while the server is up, non-zero against
   a port where nothing listens), makes a chat completion through the mock upstream, and checks that
   SIGTERM ends the server with exit code 0 within a few seconds and that nothing was written
   outside the directory standing for /tmp.

Container paths map to temporary host paths: VIRTUAL_ENV -> <tmp>/venv, the --config directory ->
<tmp>/etc, /tmp -> <tmp>/tmp (mode 1777, like the image's /tmp).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import Stage, parse, seconds
from tests.support.servers import HOST, Server, free_port, mock_requests

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
#: The environment of the python:*-slim base images that the Dockerfile's ENV builds on.
BASE_IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
SECRET = "sk-ant-deploy-test-" + uuid.uuid4().hex
STOP_WITHIN = 10.0


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text(), BASE_IMAGE_ENV)


@pytest.fixture(scope="module")
def stage(stages: list[Stage]) -> Stage:
    """The final stage: what the image runs."""
    return stages[-1]


def build_context_files(stages: list[Stage]) -> list[str]:
    """What the earlier (builder) stages COPY from the build context: all the wheel is built from."""
    return [
        src for st in stages[:-1] for flags, sources, _ in st.copies if "from" not in flags for src in sources
    ]


def numeric_user(stage: Stage) -> tuple[int, int]:
    assert stage.user, "the final stage must set USER"
    uid, _, gid = stage.user.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"USER must be numeric (uid:gid), got {stage.user!r}"
    return int(uid), int(gid or uid)


def test_dockerfile_contract(stage: Stage) -> None:
    """What the run below relies on, and what Kubernetes' runAsNonRoot needs (a numeric, non-zero USER)."""
    uid, gid = numeric_user(stage)
    assert uid != 0 and gid != 0
    assert not stage.shell_forms, f"use the exec form for {stage.shell_forms}: SIGTERM must reach the server"
    assert stage.entrypoint and stage.cmd is not None
    assert stage.healthcheck is not None, "the final stage must have a HEALTHCHECK"
    assert stage.healthcheck.command[0] == "python" and "/healthz" in " ".join(stage.healthcheck.command)
    assert stage.env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert stage.env.get("VIRTUAL_ENV"), "ENV VIRTUAL_ENV names where the wheel is installed"
    assert stage.env["PROXY_SERVER__PORT"] in stage.exposed, "EXPOSE the port the server listens on"
    assert stage.args.get("VERSION") == project_version(), "ARG VERSION's default must match pyproject.toml"
    assert "--config" in stage.cmd


class PathMap:
    """Container paths -> temporary host paths (whole path components only)."""

    def __init__(self, mapping: Mapping[str, Path]) -> None:
        self.mapping = sorted(mapping.items(), key=lambda item: -len(item[0]))

    def path(self, value: str) -> str:
        for container, host in self.mapping:
            if value == container or value.startswith(container.rstrip("/") + "/"):
                return str(host) + value[len(container) :]
        return value

    def value(self, value: str) -> str:
        """A path, a PATH-like list, or text that merely contains no mapped path."""
        return ":".join(self.path(part) for part in value.split(":"))


def run(command: list[str], timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


def make_readable(root: Path) -> None:
    """Readable (and directories searchable) by everyone, as files in an image are."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
        if path.is_dir() or mode & stat.S_IXUSR:
            extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        path.chmod(mode | extra)


def snapshot(root: Path, skip: Path) -> set[str]:
    return {str(path) for path in root.rglob("*") if skip != path and skip not in path.parents}


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """Not pytest's tmp_path: that is private to root, and the server runs as another user."""
    root = Path(tempfile.mkdtemp(prefix="clp-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def timed(label: str, started: float) -> None:
    print(f"[image test] {label}: {time.monotonic() - started:.1f} s")


def base_interpreter(user: Mapping[str, object]) -> str:
    """A Python >= 3.11 that the image's user can run (this one may live under a private /root)."""
    candidates = [getattr(sys, "_base_executable", sys.executable), sys.executable]
    candidates += [
        f"{prefix}/bin/python3.{minor}" for minor in (11, 12, 13) for prefix in ("/usr/local", "/usr")
    ]
    for candidate in dict.fromkeys(candidates):
        if not os.path.isfile(candidate):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"],
                capture_output=True,
                timeout=30,
                check=False,
                cwd="/",
                **user,
            )
        except PermissionError:  # e.g. a pyenv interpreter under /root (mode 0700)
            continue
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no Python >= 3.11 runnable by the image's user among {candidates}")


def install_wheel(stages: list[Stage], root: Path, user: Mapping[str, object]) -> Path:
    """Build the wheel from what the builder stage copies, as it does; install it as the runtime stage does."""
    started = time.monotonic()
    stage = stages[-1]
    source, dist, venv = root / "src", root / "dist", root / "venv"
    source.mkdir()
    for name in build_context_files(stages):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)])
    version = stage.args["VERSION"]
    wheel = dist / f"claude_legacy_openai_proxy-{version}-py3-none-any.whl"
    assert wheel.is_file(), f"expected {wheel.name}, built {[p.name for p in dist.iterdir()]}"
    timed("wheel built", started)
    interpreter = base_interpreter(user)
    print(f"[image test] virtualenv based on {interpreter}")
    run([interpreter, "-m", "venv", "--without-pip", str(venv)])
    run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--only-binary=:all:",
            "--find-links",
            str(dist),
            f"claude-legacy-openai-proxy=={version}",
        ]
    )
    assert not (venv / "bin" / "pip").exists(), "the runtime venv must not contain pip"
    make_readable(venv)
    timed("wheel installed into a clean venv", started)
    return venv


def container_env(stage: Stage, paths: PathMap, port: int, mock: Server) -> dict[str, str]:
    env = {key: paths.value(value) for key, value in stage.env.items()}
    # What `docker run -e ...` adds: the secrets, and the loopback/free-port override for this test.
    env.update(
        ANTHROPIC_API_KEY=SECRET,
        ANTHROPIC_BASE_URL=mock.base_url,
        PROXY_SERVER__HOST=HOST,
        PROXY_SERVER__PORT=str(port),
    )
    return env


def as_image_user(stage: Stage) -> dict[str, object]:
    """subprocess arguments that run a command as the Dockerfile's USER (when we can)."""
    uid, gid = numeric_user(stage)
    if os.geteuid() == 0:
        print(f"[image test] running the image's command as uid {uid}, gid {gid} (setuid in the child)")
        return {"user": uid, "group": gid, "extra_groups": []}
    message = (
        f"not running as root: the image's command runs as the current user (uid {os.geteuid()}), "
        f"not as the Dockerfile's USER {stage.user}"
    )
    print(f"[image test] {message}")
    warnings.warn(message, stacklevel=2)
    return {}


def wait_for_health(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited early ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()}")


def test_image_command_serves_and_stops_cleanly(
    stages: list[Stage], stage: Stage, image_root: Path, mock_upstream: Server
) -> None:
    user = as_image_user(stage)
    venv = install_wheel(stages, image_root, user)
    assert stage.cmd is not None and stage.entrypoint is not None and stage.healthcheck is not None

    config_path = stage.cmd[stage.cmd.index("--config") + 1]
    etc, scratch = image_root / "etc", image_root / "tmp"
    etc.mkdir()
    scratch.mkdir()
    scratch.chmod(0o1777)
    paths = PathMap({stage.env["VIRTUAL_ENV"]: venv, str(Path(config_path).parent): etc, "/tmp": scratch})
    copied = [sources for flags, sources, dest in stage.copies if dest == config_path and "from" not in flags]
    assert copied, f"the Dockerfile must COPY a default configuration to {config_path}"
    shutil.copyfile(REPO / copied[0][0], paths.path(config_path))
    make_readable(etc)

    port = free_port()
    env = container_env(stage, paths, port, mock_upstream)
    command = [paths.value(word) for word in stage.entrypoint + stage.cmd]
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable == str(venv / "bin" / command[0]), (
        f"{command[0]} resolves to {executable}, not the venv"
    )
    log = image_root / "server.log"  # written by this process (the child inherits the descriptor)
    log.touch()
    before = snapshot(image_root, skip=scratch)

    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=paths.path(stage.workdir), stdout=out, stderr=subprocess.STDOUT, **user
        )
    try:
        base_url = f"http://{HOST}:{port}"
        wait_for_health(process, f"{base_url}/healthz", log)
        timed("server answering /healthz", started)

        health = [paths.value(word) for word in stage.healthcheck.command]
        check_timeout = seconds(stage.healthcheck.options.get("timeout", "30s"))
        healthy = subprocess.run(health, env=env, capture_output=True, timeout=check_timeout, **user)
        assert healthy.returncode == 0, f"HEALTHCHECK failed while the server is up: {healthy.stderr!r}"
        closed = {**env, "PROXY_SERVER__PORT": str(free_port())}
        dead = subprocess.run(health, env=closed, capture_output=True, timeout=check_timeout, **user)
        assert dead.returncode != 0, "HEALTHCHECK must fail when nothing answers on the port"

        assert httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
        marker = uuid.uuid4().hex
        reply = httpx.post(
            f"{base_url}/v1/chat/completions",
            headers={"Authorization": "Bearer any-client-key"},
            json={
                "model": "gpt-4",
                "messages": [{"role": "user", "content": f"Hello from the image test {marker}"}],
            },
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        upstream = [r for r in mock_requests(mock_upstream) if marker in str(r.get("raw"))]
        assert upstream, "the completion did not reach the mock upstream"
        headers = upstream[-1]["headers"]
        assert isinstance(headers, dict) and headers.get("x-api-key") == SECRET, (
            "server key from the environment"
        )
    finally:
        stopping = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the server did not stop within {STOP_WITHIN} s of SIGTERM:\n{log.read_text()}")
        stop_seconds = time.monotonic() - stopping
    output = log.read_text()
    timed(f"stopped by SIGTERM in {stop_seconds:.1f} s with exit code {code}", started)
    assert code == 0, (
        f"SIGTERM must end the server cleanly with exit code 0, got {code}"
        + (
            " (killed by the signal itself: it was re-raised after shutdown)"
            if code == -signal.SIGTERM
            else ""
        )
        + f":\n{output[-3000:]}"
    )
    assert SECRET not in output, "the upstream key must never be logged"
    assert '"event"' in output, "PROXY_LOGGING__FORMAT=json from the Dockerfile should give JSON log lines"
    assert snapshot(image_root, skip=scratch) == before, "the server wrote outside /tmp (read-only root fs)"
