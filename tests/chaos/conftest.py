"""Chaos tests break things (kill workers, stop Redis or Kafka). A test that stops or restarts
Kafka or Redis, and every storm, is marked ``own_services`` and gets its OWN real Kafka + Redis on
fresh ports and its own state folder. The others only kill, stop or add workers, or delete a topic
of their own: they use the session's Kafka + Redis (``tests/fixtures.py``) with fresh topics, group
and Redis prefix, as integration tests do; starting a broker per test cost ~15 s of each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Services, start_services


@pytest.fixture(scope="module")
def _module_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """One Kafka + Redis of their own for the ``own_services`` tests of ``test_chaos.py``, apart from
    the session's: each stops and brings back Kafka or Redis, with its own topics, group and prefix;
    a start and a stop cost ~12 s of each test."""
    running = start_services(tmp_path_factory.mktemp("chaos-services"))
    try:
        yield running
    finally:
        running.run("down")


@pytest.fixture
def services(services: Services, request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The session's services (the ``services`` argument), or, for a test marked ``own_services``,
    services apart from the session's: the module's in ``test_chaos.py`` (``up`` first: both running,
    whatever the test before left), each storm's own."""
    if request.node.get_closest_marker("own_services") is None:
        yield services
        return
    if request.node.path.name == "test_chaos.py":
        shared: Services = request.getfixturevalue("_module_services")
        shared.run("up")
        yield shared
        return
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The storms (``test_storms.py``: thousands of events through kill, stop and network storms,
    ~6 min on 2 cores) are the long chaos tier: deselected — not skipped — unless
    ``SD_CHAOS_STORMS=1`` (``make test-chaos`` and ``make reliability`` set it). ``make test`` keeps
    ``test_chaos.py``: every guarantee once, on both clients; its ``long_tier`` variants (a
    guarantee checked again on the other client or delivery mode) run with the storms
    (``tests/conftest.py`` deselects them)."""
    import os

    if os.environ.get("SD_CHAOS_STORMS", "0") == "1":
        return
    storms = [item for item in items if "tests/chaos/test_storms.py" in item.nodeid]
    if storms:
        config.hook.pytest_deselected(items=storms)
        items[:] = [item for item in items if item not in storms]
