"""Chaos tests break things (kill workers, stop Redis or Kafka), so each test gets its OWN real
Kafka + Redis on fresh ports and its own state folder; nothing is shared with other tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Services, start_services


@pytest.fixture
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    running = start_services(tmp_path_factory.mktemp("chaos-services"))
    try:
        yield running
    finally:
        running.run("down")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the chaos figures to ``SD_RELIABILITY_REPORT`` (e.g. docs/RELIABILITY.md) when set."""
    import os

    from tests.chaos.harness import FIGURES, ROUNDS

    target = os.environ.get("SD_RELIABILITY_REPORT")
    if not target or not FIGURES:
        return
    from tests.chaos.report import write_report

    write_report(target, FIGURES, ROUNDS)
