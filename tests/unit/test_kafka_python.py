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


def test_a_topic_whose_metadata_refresh_fails_as_unknown_is_not_known_yet() -> None:
    """kafka-python's ``partitions_for_topic`` raises a refresh's ``UnknownTopicOrPartitionError``
    when a subscribed topic does not exist yet (a CI run, 2026-12-05, lost the label ingester's
    catch-up to it). ``known_partitions`` calls that "no partitions yet" and ``partitions_of`` keeps
    waiting for the topic; an error that is not retriable is raised."""
    import pytest
    from kafka.errors import TopicAuthorizationFailedError, UnknownTopicOrPartitionError

    from stream_detector.kafka_util import known_partitions, partitions_of

    class Consumer:
        def __init__(self, answers: list[object]) -> None:
            self.answers = answers

        def partitions_for_topic(self, topic: str) -> object:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    consumer = Consumer([UnknownTopicOrPartitionError("t"), None, {1, 0}])
    assert known_partitions(consumer, "t") == set()  # type: ignore[arg-type]
    assert partitions_of(consumer, "t", timeout_s=5.0) == [0, 1]  # type: ignore[arg-type]
    assert consumer.answers == []
    with pytest.raises(TopicAuthorizationFailedError):
        known_partitions(Consumer([TopicAuthorizationFailedError("t")]), "t")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        partitions_of(Consumer([UnknownTopicOrPartitionError("t")] * 3 + [set()] * 100), "t", timeout_s=0.15)  # type: ignore[arg-type]
