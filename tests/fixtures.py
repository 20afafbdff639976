"""Shared fixtures (registered by ``tests/conftest.py``): the real Kafka + Redis of the session, a
trained bundle, per-test settings with fresh topics, group and Redis prefix, a published model, CLI
environments and worker threads. ``services`` is started once per session, on first use, and shared
by ``tests/contract`` and ``tests/integration``; ``tests/chaos`` overrides it with one per test."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_detector.model.bundle import Bundle
from stream_detector.settings import Settings
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from stream_detector.worker import Worker
from tests.helpers import small_bundle
from tests.services import Services, start_services


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """One real Kafka broker and one real Redis, started by the project's own
    ``deploy/services.sh`` on free ports (never the dev stack's)."""
    try:
        running = start_services(tmp_path_factory.mktemp("services"))
    except RuntimeError as exc:
        pytest.fail(f"could not start Kafka/Redis: {exc}")
    try:
        yield running
    finally:  # the broker's data dies with the temporary folder: no graceful shutdown to wait for (~20 s)
        running.run("kill-kafka")
        running.run("down")


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    return small_bundle()


TRANSPORTS = ["kafka-python", "confluent"]
LONG_TIER = pytest.mark.long_tier  # make test-long, not make test (tests/conftest.py)


def transports_once(keep: str = "kafka-python") -> list[Any]:
    """``TRANSPORTS`` for a parametrize where ``make test`` checks the guarantee on ``keep`` and
    ``make test-long`` on every client (the others are ``long_tier`` params, same ids)."""
    return [t if t == keep else pytest.param(t, marks=LONG_TIER) for t in TRANSPORTS]


@pytest.fixture
def transport() -> str:
    """The worker's Kafka client library in ``settings``. A test module runs on both with
    ``pytest.mark.parametrize("transport", TRANSPORTS)`` (the parameter overrides this fixture)."""
    return "kafka-python"


@pytest.fixture
def settings(services: Services, transport: str) -> Settings:
    """Fresh topics, group and Redis prefix for this test."""
    tag = uuid.uuid4().hex[:10]
    return Settings(kafka_bootstrap=services.kafka, redis_url=services.redis, redis_prefix=f"test-{tag}",
                    input_topic=f"tx-{tag}", alerts_topic=f"alerts-{tag}", dlq_topic=f"dlq-{tag}", feedback_topic=f"fb-{tag}",
                    shadow_topic=f"shadow-{tag}",
                    group_id=f"group-{tag}", batch_max_wait_ms=20, threshold_refresh_s=0.2,
                    topic_partitions=4, transport=transport)


@pytest.fixture
def published(settings: Settings, bundle: Bundle) -> ControlPlane:
    control = ControlPlane.from_url(settings.redis_url, settings.redis_prefix)
    control.publish(bundle, set_by="pytest")
    ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic])
    return control


@pytest.fixture
def env_for(services: Services) -> Callable[[Settings], dict[str, str]]:
    """Environment for running the CLI as a subprocess against ``settings``."""
    def make(s: Settings) -> dict[str, str]:
        env = dict(os.environ)
        for name, value in s.model_dump().items():
            if value is None:  # unset (SD_TORCH_THREADS): the setting's own default
                env.pop(f"SD_{name.upper()}", None)
                continue
            env[f"SD_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env
    return make


class RunningWorker:
    def __init__(self, settings: Settings) -> None:
        self.worker = Worker(settings)
        self.worker.start()
        self.error: BaseException | None = None
        self.trace = ""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # surfaced by stop()
            import traceback

            self.error = exc
            self.trace = traceback.format_exc()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker() -> Iterator[Callable[[Settings], RunningWorker]]:
    running: list[RunningWorker] = []

    def start(s: Settings) -> RunningWorker:
        w = RunningWorker(s)
        running.append(w)
        return w
    yield start
    for w in running:
        if w.thread.is_alive():
            w.stop()


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path
