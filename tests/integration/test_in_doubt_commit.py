"""A transaction that fails *at its commit* may have committed anyway (a ``commit_transaction``
that times out after the coordinator prepared the commit, as the failover tier's "two brokers down"
scenario produced). Here the commit really succeeds and then reports a failure: the worker must
settle it and not publish the batch a second time."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from stream_detector.errors import DeliveryError
from stream_detector.kafka_util import lag, read_all
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.transport.factory import make_sink
from stream_detector.worker import Worker
from tests.helpers import anomaly, wait_until

pytestmark = pytest.mark.integration


class _CommitThenFail:
    """The real transactional publisher, except that the first commit of a batch with alerts or dead
    letters succeeds and then raises."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lied = False
        self.sent = 0

    def publish(self, messages: Any) -> None:
        self.sent = len(messages)
        self.inner.publish(messages)

    def commit(self, source: Any, offsets: Any, group: Any = None) -> None:
        self.inner.commit(source, offsets, group)
        if not self.lied and self.sent:
            self.lied = True
            raise DeliveryError("injected: commit_transaction did not finish within 10.0s")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_commit_that_failed_after_committing_is_not_published_twice(settings: Settings, published) -> None:
    settings = settings.model_copy(update={"delivery": "exactly_once", "batch_size": 64, "worker_id": "doubt-0"})
    events, _ = Simulator(seed=41, accounts=300, run_id="doubt").batch(600, 0.0)
    injected = [anomaly(f"doubt-bad-{i}", f"acct-{i:05d}") for i in range(6)]
    publisher = _CommitThenFail(make_sink(settings))
    worker = Worker(settings, publisher=publisher)  # type: ignore[arg-type]
    worker.start()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with EventProducer(settings, settings.input_topic) as producer:
            producer.send(injected + events)  # the anomalies land in the first batches
        wait_until(lambda: lag(settings, settings.group_id, settings.input_topic) == 0, timeout_s=120,
                   message="drained")
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert publisher.lied and worker.stats.delivery_failures >= 1
    alerts = [orjson.loads(r.value)["event_id"] for r in read_all(settings, settings.alerts_topic,
                                                                  isolation_level="read_committed")]
    assert {e["event_id"] for e in injected} <= set(alerts)
    assert len(alerts) == len(set(alerts)), "an alert of the batch whose commit 'failed' was published twice"
