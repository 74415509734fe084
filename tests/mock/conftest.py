"""Fixtures: the session's real mock-upstream processes (tests/conftest.py) and helpers to call them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.mock.helpers import Poster
from tests.support.servers import Server, reset_mock


@pytest.fixture(scope="session")
def mock(mock_upstream: Server) -> Server:
    """The session's mock upstream (tests/conftest.py), accepting any non-empty key."""
    return mock_upstream


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
