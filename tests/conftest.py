"""Shared fixtures: a real mock upstream and real proxy processes on 127.0.0.1.

- `mock_upstream`: `python -m proxy mock-upstream` accepting any key.
- `keyed_mock`: a mock that accepts only `GOOD_UPSTREAM_KEY` (for auth tests).
- `proxy`: the proxy in server-key mode in front of `mock_upstream`.
- `passthrough_proxy`: the proxy without a server key, in front of `keyed_mock`: clients' Bearer
  tokens go upstream as `x-api-key`.
- `start_proxy(...)`: a context manager for tests that need their own configuration.
- `http`: a raw httpx client with a Bearer key, for byte-level checks.
- `client` / `async_client`: the official `openai` SDK pointed at `proxy`, with SDK retries off so
  that the tests see exactly what the proxy answered.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from tests.support.servers import Server, run_server, run_servers

if TYPE_CHECKING:  # imported by the fixtures that need it: it costs the fast loop ~0.4 s of start-up
    import openai

#: Directories whose tests start processes of their own: the proxy (tests/e2e), a redis-server
#: (tests/limits), the image's command (tests/deploy). They carry the `e2e` marker, so that
#: `pytest -m "not e2e"` is the fast loop: units, translators and the mock upstream (whose tests share one
#: session-scoped mock process: the mock is what they test).
E2E_DIRECTORIES = frozenset({"e2e", "limits", "deploy"})
TESTS = Path(__file__).parent


def _in_e2e_directory(path: Path) -> bool:
    parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
    return bool(parts) and parts[0] in E2E_DIRECTORIES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _in_e2e_directory(item.path):
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config: pytest.Config) -> None:
    """Collect young objects less often. The property tests allocate heavily (hypothesis keeps a tree of
    every example's choices) on top of a large heap of imported modules, and with the default threshold
    (700) the collector runs ~2,000 times and walks the whole heap ~20 times: ~1.5 s of a 10 s fast loop.
    Refcounting still frees everything not in a cycle at once; tests about garbage call `gc.collect()`."""
    gc.set_threshold(10_000)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection built (modules, strategies, test items): it lives as long as the run, and
    frozen objects are not walked again by each full collection (as `proxy.app` does at start-up)."""
    gc.freeze()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m "not e2e"` every test of those directories would be deselected: skip importing them too
    (the SDKs and LangChain they import are a good part of the fast loop's start-up)."""
    if " ".join(config.option.markexpr.split()) == "not e2e" and _in_e2e_directory(collection_path):
        return True
    return None


SERVER_KEY = "sk-ant-server-key-never-shown"
GOOD_UPSTREAM_KEY = "sk-ant-good-client-key"

#: Fast retries so that retry tests do not wait long; everything else is the default configuration.
FAST_RETRIES = {"PROXY_UPSTREAM__BACKOFF_INITIAL": "0.01", "PROXY_UPSTREAM__BACKOFF_MAX": "0.05"}

StartProxy = Callable[..., AbstractContextManager[Server]]


#: The session's mock upstreams: fixture name -> (arguments, log directory).
SESSION_MOCKS = {
    "mock_upstream": (["mock-upstream"], "mock"),
    "keyed_mock": (["mock-upstream", "--api-key", GOOD_UPSTREAM_KEY], "keyed-mock"),
}


@pytest.fixture(scope="session")
def session_mocks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """The mock upstreams that the session's tests use, started side by side and stopped side by side:
    each takes ~0.15 s to start and to stop, which then overlap."""
    used = [
        name for name in SESSION_MOCKS if any(name in item.fixturenames for item in request.session.items)
    ]
    runs = [
        (SESSION_MOCKS[name][0], tmp_path_factory.mktemp(SESSION_MOCKS[name][1]) / "mock.log")
        for name in used
    ]
    with run_servers(runs) as servers:
        yield dict(zip(used, servers, strict=True))


def _session_mock(
    name: str, mocks: dict[str, Server], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    if name in mocks:
        yield mocks[name]
        return
    args, directory = SESSION_MOCKS[name]  # asked for by `getfixturevalue`, not by a test's arguments
    with run_server(args, tmp_path_factory.mktemp(directory) / "mock.log") as server:
        yield server


@pytest.fixture(scope="session")
def mock_upstream(
    session_mocks: dict[str, Server], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`python -m proxy mock-upstream`, accepting any key."""
    yield from _session_mock("mock_upstream", session_mocks, tmp_path_factory)


@pytest.fixture(scope="session")
def keyed_mock(
    session_mocks: dict[str, Server], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A mock that accepts only `GOOD_UPSTREAM_KEY`."""
    yield from _session_mock("keyed_mock", session_mocks, tmp_path_factory)


@contextmanager
def _proxy(
    upstream: Server,
    directory: Path,
    api_key: str | None = SERVER_KEY,
    env: Mapping[str, str] | None = None,
    config: dict[str, object] | None = None,
) -> Iterator[Server]:
    full_env = {"ANTHROPIC_BASE_URL": upstream.base_url, "PROXY_LOGGING__FORMAT": "json", **FAST_RETRIES}
    if api_key is not None:
        full_env["ANTHROPIC_API_KEY"] = api_key
    full_env.update(env or {})
    args = ["serve"]
    if config is not None:
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    with run_server(args, directory / "proxy.log", env=full_env) as server:
        yield server


@pytest.fixture(scope="session")
def proxy(mock_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _proxy(mock_upstream, tmp_path_factory.mktemp("proxy")) as server:
        yield server


@pytest.fixture(scope="session")
def passthrough_proxy(keyed_mock: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _proxy(keyed_mock, tmp_path_factory.mktemp("passthrough"), api_key=None) as server:
        yield server


@pytest.fixture
def start_proxy(mock_upstream: Server, tmp_path: Path) -> StartProxy:
    """`with start_proxy(env={...}, config={...}, upstream=..., api_key=...) as server:`."""

    def start(
        env: Mapping[str, str] | None = None,
        config: dict[str, object] | None = None,
        upstream: Server | None = None,
        api_key: str | None = SERVER_KEY,
    ) -> AbstractContextManager[Server]:
        return _proxy(upstream or mock_upstream, tmp_path, api_key, env, config)

    return start


@pytest.fixture
def client(proxy: Server) -> Iterator[openai.OpenAI]:
    import openai

    with openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="client-key", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def async_client(proxy: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    import openai

    async with openai.AsyncOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key="client-key", max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """A raw HTTP client that sends what curl would: a Bearer key and a JSON body, nothing else."""
    with httpx.Client(timeout=httpx.Timeout(30.0), headers={"Authorization": "Bearer client-key"}) as raw:
        yield raw


from tests.support.redis import MISSING, RedisServer, redis_server_installed, run_redis  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the rate-limit tests. Missing redis-server is a failure, never a skip."""
    if not redis_server_installed():
        pytest.fail(MISSING, pytrace=False)
    with run_redis(tmp_path_factory.mktemp("redis") / "redis.log") as server:
        yield server


@contextmanager
def redis_replicas(
    mock: Server, redis: RedisServer, directory: Path, config: dict[str, object] | None = None
) -> Iterator[tuple[Server, Server]]:
    """Two proxies sharing one Redis (limits, stored responses, cache), under a fresh key prefix."""
    import uuid

    shared = {
        **(config or {}),
        "limits": {"backend": "redis", "redis_url": redis.url, "key_prefix": f"t{uuid.uuid4().hex[:8]}:"},
    }
    (directory / "a").mkdir()
    (directory / "b").mkdir()
    with _proxy(mock, directory / "a", config=shared) as a, _proxy(mock, directory / "b", config=shared) as b:
        yield a, b
