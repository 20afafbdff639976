"""Integration tests: one real Kafka broker and one real Redis per test session, started by the
project's own ``deploy/services.sh`` on free ports (never the dev stack's). Shared fixtures live in
``tests/fixtures.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Services, start_services


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    try:
        running = start_services(tmp_path_factory.mktemp("services"))
    except RuntimeError as exc:
        pytest.fail(f"could not start Kafka/Redis: {exc}")
    try:
        yield running
    finally:
        running.run("down")
