"""The kafka-python transport's pure helpers (its Kafka paths are tested on the real broker)."""

from __future__ import annotations


def test_an_unreadable_record_is_logged_at_error_once_then_at_debug(caplog) -> None:
    """The retrainer reads its history on every run: each unreadable record in it was one more ERROR
    line per run. Now the first read of a position logs at ERROR and every later one at DEBUG."""
    import logging

    from stream_detector.transport import kafka_python

    exc = ValueError("zstd codec missing")
    with caplog.at_level(logging.DEBUG, logger=kafka_python.log.name):
        for _ in range(3):
            kafka_python._log_unreadable("t-once", 0, 7, exc)
        kafka_python._log_unreadable("t-once", 1, 7, exc)  # another position: ERROR again
    levels = [(r.levelno, r.getMessage().split(",")[0]) for r in caplog.records if "t-once" in r.getMessage()]
    assert levels == [(logging.ERROR, "unreadable record at t-once[0] offset 7"),
                      (logging.DEBUG, "unreadable record at t-once[0] offset 7"),
                      (logging.DEBUG, "unreadable record at t-once[0] offset 7"),
                      (logging.ERROR, "unreadable record at t-once[1] offset 7")]


def test_a_commit_refused_by_a_rebalance_is_commit_refused_as_on_confluent() -> None:
    """kafka-python raises ``RebalanceInProgressError`` itself when it commits while it knows the
    group is rebalancing. It was a retriable ``TransportError`` (the worker's DeliveryError), while
    the confluent transport calls REBALANCE_IN_PROGRESS a refusal (``COMMIT_REFUSED``): a written
    write-behind window then stayed open past the rebalance (a CI run, 2026-12-04). Every refusal
    of the group is now ``CommitRefused`` on both transports; other errors stay ``TransportError``."""
    import pytest
    from kafka.errors import (
        CommitFailedError,
        FencedInstanceIdError,
        IllegalGenerationError,
        KafkaTimeoutError,
        RebalanceInProgressError,
        UnknownMemberIdError,
    )

    from stream_detector.transport.base import CommitRefused, TopicPartition, TransportError
    from stream_detector.transport.kafka_python import KafkaSource

    class _Refusing:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def commit(self, offsets: object) -> None:
            raise self.exc

    for exc in (RebalanceInProgressError("rebalancing"), CommitFailedError("moved"), IllegalGenerationError(),
                UnknownMemberIdError(), FencedInstanceIdError()):
        source = KafkaSource(None)  # type: ignore[arg-type]  # never started: only its commit is called
        source.consumer = _Refusing(exc)  # type: ignore[assignment]
        with pytest.raises(CommitRefused):
            source.commit({TopicPartition("t", 0): 5})
    source.consumer = _Refusing(KafkaTimeoutError())  # type: ignore[assignment]
    with pytest.raises(TransportError) as raised:
        source.commit({TopicPartition("t", 0): 5})
    assert not isinstance(raised.value, CommitRefused)
