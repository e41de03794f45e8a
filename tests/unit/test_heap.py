"""settle_heap: what the server does to its collector once it has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from grassroots.app import GC_THRESHOLDS, settle_heap


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_server_freezes_what_start_up_loaded_and_collects_in_bigger_rounds(
        collector: None) -> None:
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() > 1000  # the modules and tables loaded so far
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default, which the server outgrows
