"""Registers the shared fixtures for every test folder, and keeps the long tier out of ``make test``."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``long_tier`` are deselected — not skipped — unless ``SD_LONG_TIER=1`` (``make
    test-long``; ``make test-chaos`` and ``make reliability`` set ``SD_CHAOS_STORMS=1``, which selects
    them too). They are a guarantee ``make test`` already checks once, checked again on the other
    client, delivery mode or timing setting, or a scenario too slow for CI's 25 minutes on 2 cores;
    each says which test of ``make test`` covers its guarantee."""
    if os.environ.get("SD_LONG_TIER", "0") == "1" or os.environ.get("SD_CHAOS_STORMS", "0") == "1":
        return
    long_tier = [item for item in items if item.get_closest_marker("long_tier") is not None]
    if long_tier:
        config.hook.pytest_deselected(items=long_tier)
        items[:] = [item for item in items if item.get_closest_marker("long_tier") is None]
