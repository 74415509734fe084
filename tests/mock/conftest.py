"""Fixtures: one real mock-upstream process for the whole session, plus one that checks keys."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.mock.helpers import ACCEPTED_KEY, Poster
from tests.support.servers import Server, reset_mock, run_server


@pytest.fixture(scope="session")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m proxy mock-upstream` accepting any non-empty key."""
    log = tmp_path_factory.mktemp("mock") / "mock.log"
    with run_server(["mock-upstream"], log) as server:
        yield server


@pytest.fixture(scope="session")
def keyed_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second mock started with `--api-key`, so only that key is accepted."""
    log = tmp_path_factory.mktemp("keyed-mock") / "mock.log"
    with run_server(["mock-upstream", "--api-key", ACCEPTED_KEY], log) as server:
        yield server


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        yield client


@pytest.fixture
def fresh_mock(mock: Server) -> Server:
    """The shared mock with its recorder and counters cleared."""
    reset_mock(mock)
    return mock


@pytest.fixture
def post(http: httpx.Client, mock: Server) -> Poster:
    return Poster(http, mock)
