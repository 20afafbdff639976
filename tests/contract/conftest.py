"""One harness per transport, so that ``test_transport_contract.py`` runs the same tests on each:
the in-memory broker, and kafka-python and confluent-kafka on the session's real broker (the
``services`` fixture of ``tests/fixtures.py``, started only when a real transport is asked for).
Every test gets fresh topics and a fresh group; clients are closed at its end."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stream_detector.settings import Settings
from stream_detector.transport.base import Batch, Offsets, Publisher, Source, TopicPartition
from stream_detector.transport.factory import make_sink, transport_config
from stream_detector.transport.memory import MemoryBroker, MemoryPublisher, MemorySource, MemoryTransactionalPublisher
from tests.helpers import wait_until

TRANSPORTS = ["memory", "kafka-python", "confluent"]
Row = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers of a stored record


def _tag() -> str:
    return uuid.uuid4().hex[:10]


class Harness:
    """What a contract test needs from a transport besides the transport itself: topics, input
    records, committed reads of an output topic (read_committed) and the group's committed offsets."""

    name = ""

    def __init__(self) -> None:
        self.opened: list[Any] = []

    def topic(self, partitions: int = 1) -> str:
        raise NotImplementedError

    def produce(self, topic: str, values: list[bytes], partition: int = 0) -> None:
        raise NotImplementedError

    def source(self, topic: str, group: str) -> Source:
        raise NotImplementedError

    def publisher(self, transactional: bool) -> Publisher:
        raise NotImplementedError

    def read(self, topic: str) -> list[Row]:
        raise NotImplementedError

    def committed(self, group: str) -> Offsets:
        raise NotImplementedError

    def move_membership(self, source: Source, group: str) -> None:
        """The source's group membership moves on (a restart: a new member; memory: an eviction)."""
        source.close()
        source.start()

    def rebalance(self, source: Source, topic: str, group: str, until: Callable[[], bool]) -> None:
        """Another member joins ``source``'s group: poll both until ``until()`` (the rebalance's
        effect the test waits for)."""
        other = self.source(topic, group)

        def polled() -> bool:
            source.poll_batch(wait_ms=50)
            other.poll_batch(wait_ms=50)
            return until()
        wait_until(polled, timeout_s=60, interval_s=0, message="the rebalance")

    def group(self) -> str:
        return f"ct-group-{_tag()}"

    def close(self) -> None:
        for client in reversed(self.opened):
            client.close()


class MemoryHarness(Harness):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.broker = MemoryBroker()

    def topic(self, partitions: int = 1) -> str:
        name = f"ct-{_tag()}"
        self.broker.create_topic(name, partitions)
        return name

    def produce(self, topic: str, values: list[bytes], partition: int = 0) -> None:
        self.broker.produce(topic, values, partition)

    def source(self, topic: str, group: str) -> Source:
        source = MemorySource(self.broker, topic, group, batch_size=64)
        source.start()
        self.opened.append(source)
        return source

    def publisher(self, transactional: bool) -> Publisher:
        publisher = MemoryTransactionalPublisher(self.broker) if transactional else MemoryPublisher(self.broker)
        publisher.start()
        self.opened.append(publisher)
        return publisher

    def read(self, topic: str) -> list[Row]:
        return [(r.key, r.value, list(r.headers)) for r in self.broker.read(topic)]

    def committed(self, group: str) -> Offsets:
        return self.broker.committed(group)

    def move_membership(self, source: Source, group: str) -> None:
        self.broker.evict(group)

    def rebalance(self, source: Source, topic: str, group: str, until: Callable[[], bool]) -> None:
        assert isinstance(source, MemorySource)
        source.rebalance()
        assert until()


class KafkaHarness(Harness):
    """kafka-python or confluent-kafka (``name``) on the session's broker."""

    def __init__(self, name: str, kafka: str, redis: str) -> None:
        super().__init__()
        self.name = name
        self.settings = Settings(kafka_bootstrap=kafka, redis_url=redis, transport=name,  # type: ignore[arg-type]
                                 batch_size=64, batch_max_wait_ms=20, delivery_timeout_s=15,
                                 transaction_timeout_s=15, worker_id=f"ct-{_tag()}", create_topics=False)
        self._producer: Any = None
        self._admin: Any = None

    def topic(self, partitions: int = 1) -> str:
        """A new topic whose every partition has a leader in the broker's metadata: a consumer that
        joins before the broker's metadata lists the topic gets no partition until its next
        metadata refresh (minutes; seen as "No partition metadata for topic" and a timed-out poll)."""
        from stream_detector.topics import ensure_topics

        name = f"ct-{_tag()}"
        ensure_topics(self.settings, [name], partitions)
        wait_until(lambda: self._leaders(name) == partitions, timeout_s=20, interval_s=0.05,
                   message=f"metadata of {name}")
        return name

    def _leaders(self, topic: str) -> int:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers)
            self.opened.insert(0, self._admin)
        described = self._admin.describe_topics([topic])
        return sum(1 for p in described[0]["partitions"] if p["leader_id"] >= 0) if not described[0]["error_code"] else 0

    def produce(self, topic: str, values: list[bytes], partition: int = 0) -> None:
        from kafka import KafkaProducer

        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=0)
            self.opened.insert(0, self._producer)
        futures = [self._producer.send(topic, value=v, partition=partition) for v in values]
        self._producer.flush(timeout=15)
        for f in futures:
            f.get(timeout=15)

    def source(self, topic: str, group: str) -> Source:
        config = transport_config(self.settings.model_copy(update={"input_topic": topic, "group_id": group}))
        source: Source
        if self.name == "confluent":
            from stream_detector.transport.confluent import ConfluentSource

            source = ConfluentSource(config, idle_poll_ms=200)
        else:
            from stream_detector.transport.kafka_python import KafkaSource

            source = KafkaSource(config, idle_poll_ms=200)
            source.start()
            # kafka-python can join before its metadata lists the topic and then compute an empty
            # assignment that no later metadata update repairs (a race in its coordinator); so the
            # topic's metadata is fetched before the first poll joins the group.
            consumer = source.consumer
            assert consumer is not None
            wait_until(lambda: consumer.partitions_for_topic(topic), timeout_s=20, message=f"metadata of {topic}")
            self.opened.append(source)
            return source
        source.start()
        self.opened.append(source)
        return source

    def publisher(self, transactional: bool) -> Publisher:
        delivery = "exactly_once" if transactional else "at_least_once"
        publisher = make_sink(self.settings.model_copy(update={"delivery": delivery, "worker_id": f"ct-{_tag()}"}))
        publisher.start()
        self.opened.append(publisher)
        return publisher

    def read(self, topic: str) -> list[Row]:
        from stream_detector.kafka_util import read_all

        return [(r.key, r.value, [(k, bytes(v)) for k, v in r.headers])
                for r in read_all(self.settings, topic, timeout_s=20, isolation_level="read_committed")]

    def committed(self, group: str) -> Offsets:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers)
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        return {TopicPartition(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


@pytest.fixture(params=TRANSPORTS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h: Harness
    if request.param == "memory":
        h = MemoryHarness()
    else:
        if request.param == "confluent":
            pytest.importorskip("confluent_kafka")
        services = request.getfixturevalue("services")
        h = KafkaHarness(request.param, services.kafka, services.redis)
    try:
        yield h
    finally:
        h.close()


def poll_until(source: Source, count: int, timeout_s: float = 30.0) -> list[Batch]:
    """Poll until ``count`` records came (a readiness check: the group join takes a moment)."""
    batches: list[Batch] = []

    def enough() -> bool:
        batch = source.poll_batch()
        if len(batch):
            batches.append(batch)
        return sum(map(len, batches)) >= count

    wait_until(enough, timeout_s=timeout_s, interval_s=0, message=f"{count} records")
    return batches


def positions(batches: list[Batch]) -> list[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record, in the order the batches returned them."""
    return [(p, o, v) for b in batches for p, o, v in zip(b.partitions, b.offsets, b.values, strict=True)]
