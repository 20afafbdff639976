"""Registers the shared fixtures for every test folder, and keeps the long tier out of ``make test``."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``long_tier`` are deselected — not skipped — unless ``SD_LONG_TIER=1`` (``make
    test-long``; ``make test-chaos`` and ``make reliability`` set ``SD_CHAOS_STORMS=1``, which selects
    them too). Each is a parametrization of a test whose other parametrization ``make test`` runs: the
    same guarantee on the other client, delivery mode, assignment or timing setting, left out to keep
    CI within its 25 minutes on 2 cores (a CI run of 2026-12-05 took 26 minutes for the services
    tiers alone)."""
    if os.environ.get("SD_LONG_TIER", "0") == "1" or os.environ.get("SD_CHAOS_STORMS", "0") == "1":
        return
    long_tier = [item for item in items if item.get_closest_marker("long_tier") is not None]
    if long_tier:
        config.hook.pytest_deselected(items=long_tier)
        items[:] = [item for item in items if item.get_closest_marker("long_tier") is None]
