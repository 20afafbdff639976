"""The transaction watchdog: a kafka-python transaction call that never returns becomes a
``DeliveryError`` after ``SD_DELIVERY_TIMEOUT_S`` and leaves only a daemon thread behind, so the
worker can still exit (a ThreadPoolExecutor's stuck thread was joined at exit: the process hung)."""

from __future__ import annotations

import threading

import pytest
from kafka.errors import KafkaTimeoutError

from stream_detector.errors import DeliveryError
from stream_detector.settings import Settings
from stream_detector.transport.factory import transport_config
from stream_detector.transport.kafka_python_out import KafkaTransactions


def _publisher() -> KafkaTransactions:
    return KafkaTransactions(transport_config(Settings(delivery="exactly_once", delivery_timeout_s=0.2)))


def test_a_stuck_call_times_out_and_leaves_only_a_daemon_thread() -> None:
    release = threading.Event()
    try:
        with pytest.raises(DeliveryError, match="commit_transaction did not finish"):
            _publisher()._guard(release.wait, "commit_transaction")
        stuck = [t for t in threading.enumerate() if t.name == "txn-watchdog-commit_transaction" and t.is_alive()]
        assert stuck and all(t.daemon for t in stuck)
    finally:
        release.set()


def test_results_and_kafka_errors_come_back() -> None:
    publisher = _publisher()
    assert publisher._guard(lambda: 42, "init_transactions") == 42

    def fails() -> None:
        raise KafkaTimeoutError("coordinator gone")

    with pytest.raises(DeliveryError, match="abort_transaction failed"):
        publisher._guard(fails, "abort_transaction")
