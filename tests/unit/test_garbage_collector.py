"""`settle_garbage_collector`: start-up objects frozen, young collections rarer, older ones as before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from proxy.app import YOUNG_GC_THRESHOLD, settle_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


@pytest.mark.usefixtures("restored_collector")
def test_settle_raises_only_the_young_threshold_and_freezes() -> None:
    gc.set_threshold(700, 11, 12)
    kept = [[]]  # a container object alive across the call: frozen by it
    settle_garbage_collector()
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 11, 12)
    assert YOUNG_GC_THRESHOLD > 700
    assert gc.get_freeze_count() > 0
    assert kept
