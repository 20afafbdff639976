"""Step 1, source: poll a batch from Kafka, closed by size or by deadline.

The batch keeps parallel lists (no per-record objects beyond kafka-python's own), and knows the
offsets to commit once it is fully handled. Auto-commit is off: offsets move only in
step 7 (``publish.py``: ``Publisher.commit``), after delivery.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaConnectionError, KafkaError, UnsupportedCodecError

from ..errors import ConfigError
from ..settings import Settings
from .decode import Unreadable

log = logging.getLogger("stream_detector.source")


@dataclass(slots=True)
class Batch:
    topic: str = ""
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    polled_at: float = 0.0
    group: Any = None  # the consumer's group membership (generation) when this batch was polled

    def __len__(self) -> int:
        return len(self.values)

    def only(self, partitions: set[int]) -> Batch:
        """The records of this batch on ``partitions`` (a held batch after a rebalance)."""
        keep = [i for i, p in enumerate(self.partitions) if p in partitions]
        return Batch(self.topic, [self.partitions[i] for i in keep], [self.offsets[i] for i in keep],
                     [self.keys[i] for i in keep], [self.values[i] for i in keep],
                     [self.timestamps[i] for i in keep], [self.headers[i] for i in keep], self.polled_at,
                     self.group)

    def next_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last record of this batch (what to commit)."""
        ends: dict[int, int] = {}
        for p, o in zip(self.partitions, self.offsets, strict=True):  # ints only: one TopicPartition per partition
            if o + 1 > ends.get(p, -1):
                ends[p] = o + 1
        return {TopicPartition(self.topic, p): o for p, o in ends.items()}


@dataclass(frozen=True)
class _Placeholder:
    """The record fields a batch needs, for a record the client could not read."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: int = -1
    headers: tuple[Any, ...] = ()


class BatchSource(Protocol):
    """What the worker needs from a transport's consumer side: ``KafkaSource`` (kafka-python) or
    ``ConfluentSource`` (librdkafka, ``pipeline/confluent.py``). Topic partitions are kafka-python
    ``TopicPartition`` tuples in both."""

    def start(self) -> None: ...
    def poll_batch(self) -> Batch: ...
    def commit(self, offsets: dict[TopicPartition, int]) -> None: ...
    def group_metadata(self) -> Any: ...
    def still_member(self, batch: Batch) -> bool: ...
    def rewind_to_committed(self, batch: Batch) -> None: ...
    def poll_while_paused(self, timeout_ms: int) -> None: ...
    def pause_all(self) -> None: ...
    def resume_all(self) -> None: ...
    def paused(self) -> set[TopicPartition]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def highwaters(self) -> dict[int, int | None]: ...
    def close(self) -> None: ...


def confluent_transport() -> ModuleType:
    """``pipeline.confluent``, or a ``ConfigError`` saying how to install it (SD_TRANSPORT=confluent)."""
    try:
        from . import confluent
    except ImportError as exc:
        if not (exc.name or "").startswith("confluent_kafka"):
            raise
        raise ConfigError("SD_TRANSPORT=confluent needs confluent-kafka, which is not installed: "
                          "pip install 'stream-detector[confluent]' (or SD_TRANSPORT=kafka-python)") from None
    return confluent


def make_source(settings: Settings) -> BatchSource:
    """The consumer side of ``settings.transport``."""
    if settings.transport == "confluent":
        source: BatchSource = confluent_transport().ConfluentSource(settings)
        return source
    return KafkaSource(settings)


def fill_batch(batch: Batch, settings: Settings, idle_poll_ms: int, take: Callable[[int, int, bool], None],
               membership: Callable[[], Any]) -> Batch:
    """The batching rule of every transport: wait up to ``idle_poll_ms`` for a first record, then up
    to ``batch_max_wait_ms`` to fill ``batch`` to ``batch_size``. ``take(max_records, timeout_ms,
    first)`` appends what one poll returned; ``membership()`` is snapshotted with the first record
    (the group generation a commit of this batch must belong to)."""
    limit = settings.batch_size
    deadline: float | None = None
    timeout_ms = idle_poll_ms
    while len(batch) < limit:
        take(limit - len(batch), timeout_ms, deadline is None)
        now = time.monotonic()
        if not batch.values:
            break
        if deadline is None:
            batch.polled_at = now
            batch.group = membership()
            deadline = now + settings.batch_max_wait_ms / 1000.0
        timeout_ms = int((deadline - now) * 1000)
        if timeout_ms <= 0:
            break
    return batch


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=settings.batch_size,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_min_bytes=1,
        fetch_max_wait_ms=max(1, settings.batch_max_wait_ms),
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
        max_poll_interval_ms=300_000,
        client_id=f"stream-detector-{settings.group_id}",
        partition_assignment_strategy=_assignors(settings),
        isolation_level="read_committed",
    )
    config.update(settings.kafka_security())  # TLS/SASL (docs/operations.md)
    config.update(overrides)
    return config


def _assignors(settings: Settings) -> tuple[type, ...]:
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    if settings.assignment == "cooperative":
        return (CooperativeStickyAssignor,)
    return (RangePartitionAssignor, RoundRobinPartitionAssignor)


class KafkaSource:
    """Owns the consumer; explicit ``start``/``close``, no network I/O in the constructor."""

    def __init__(self, settings: Settings, idle_poll_ms: int = 500, **overrides: Any) -> None:
        self.settings = settings
        self.idle_poll_ms = idle_poll_ms
        self.overrides = overrides
        self.consumer: KafkaConsumer | None = None
        self._last_poll_error = -float("inf")

    def start(self) -> None:
        self.consumer = KafkaConsumer(**consumer_config(self.settings, **self.overrides))
        self.consumer.subscribe([self.settings.input_topic])

    def _c(self) -> KafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("source not started")
        return self.consumer

    def poll_batch(self) -> Batch:
        """Wait up to ``idle_poll_ms`` for a first record, then up to ``batch_max_wait_ms`` to fill."""
        consumer = self._c()
        batch = Batch(topic=self.settings.input_topic)

        def take(max_records: int, timeout_ms: int, _first: bool) -> None:
            for tp, records in self._poll(timeout_ms, max_records).items():
                batch.topic = tp.topic
                for r in records:
                    batch.partitions.append(r.partition)
                    batch.offsets.append(r.offset)
                    batch.keys.append(r.key)
                    batch.values.append(r.value)
                    batch.timestamps.append(r.timestamp)
                    batch.headers.append(r.headers)

        return fill_batch(batch, self.settings, self.idle_poll_ms, take, consumer.group_metadata)

    def _poll(self, timeout_ms: int, max_records: int | None) -> dict[TopicPartition, list[Any]]:
        """``consumer.poll`` that rides out retriable client errors (broker or coordinator
        unreachable: the network blipped) by returning nothing after the poll timeout; the
        client reconnects by itself. Non-retriable errors (authorisation, config) propagate."""
        consumer = self._c()
        try:
            if max_records is None:
                return dict(consumer.poll(timeout_ms=timeout_ms))
            return dict(consumer.poll(timeout_ms=timeout_ms, max_records=max_records))
        except Exception as exc:
            unreadable = self._unreadable(exc)
            if unreadable is not None:
                return unreadable
            if not isinstance(exc, KafkaError) or not (
                    getattr(exc, "retriable", False) or isinstance(exc, KafkaConnectionError)):
                raise
            now = time.monotonic()
            if now - self._last_poll_error >= 10.0:
                log.warning("poll failed, retrying (Kafka unreachable?): %r", exc)
                self._last_poll_error = now
            time.sleep(min(timeout_ms, 500) / 1000.0)  # back off as the poll would have waited
            return {}

    def _unreadable(self, exc: Exception) -> dict[TopicPartition, list[Any]] | None:
        """A record the client cannot read (kafka-python raises from ``poll`` at the same position on
        every call: a crash loop) becomes one ``Unreadable`` record at that offset, and the consumer
        moves past it; a corrupt or undecodable batch so yields one dead letter per offset. ``None``
        when ``exc`` is not about a record (authorisation, configuration: those still propagate).
        Reads the fetcher's parse state, which kafka-python does not expose otherwise."""
        record_level = isinstance(exc, (CorruptRecordError, UnsupportedCodecError)) or (
            not isinstance(exc, KafkaError) and any(
                "/kafka/record/" in frame.filename or frame.filename.endswith("/kafka/codec.py")
                for frame in traceback.extract_tb(exc.__traceback__)))
        if not record_level:
            return None
        fetcher = getattr(self._c(), "_fetcher", None)
        failed = getattr(fetcher, "_next_partition_records", None)
        if fetcher is None or failed is None:
            return None
        tp, offset = failed.topic_partition, failed.next_fetch_offset
        if self._c().position(tp) != offset:
            return None
        fetcher._next_partition_records = None
        self._c().seek(tp, offset + 1)
        log.error("unreadable record at %s[%d] offset %d, dead-lettered: %r", tp.topic, tp.partition, offset, exc)
        record = _Placeholder(tp.topic, tp.partition, offset, Unreadable(f"{type(exc).__name__}: {exc}"[:500]))
        return {tp: [record]}

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        self._c().commit(offsets={tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

    def group_metadata(self) -> Any:
        """Group generation and member id, for KIP-447 fencing in transactional commits."""
        return self._c().group_metadata()

    def still_member(self, batch: Batch) -> bool:
        """False when the group generation moved since ``batch`` was polled (this worker was
        evicted, e.g. frozen past the session timeout): its offsets must not be committed."""
        if batch.group is None:
            return True
        now = self._c().group_metadata()
        return bool(now.generation_id >= 0 and now.generation_id == batch.group.generation_id
                    and now.member_id == batch.group.member_id)

    def rewind_to_committed(self, batch: Batch) -> None:
        """Seek the batch's partitions (those still assigned) back to the group's committed
        offsets, so an abandoned batch is neither skipped nor read past what others committed."""
        consumer = self._c()
        owned = consumer.assignment()
        for tp in batch.next_offsets():
            if tp in owned:
                committed = consumer.committed(tp)
                if committed is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)

    def poll_while_paused(self, timeout_ms: int) -> None:
        """Keep group membership while holding a batch: poll, and rewind anything that arrives.

        Partitions assigned during the pause (a rebalance) are not paused yet, so their records
        may come back here: seek to their first offset and pause them too, so nothing is skipped.
        """
        consumer = self._c()
        for tp, records in self._poll(timeout_ms, None).items():
            if records:
                consumer.seek(tp, records[0].offset)
        self.pause_all()

    def pause_all(self) -> None:
        consumer = self._c()
        consumer.pause(*consumer.assignment())

    def resume_all(self) -> None:
        consumer = self._c()
        consumer.resume(*consumer.paused())

    def paused(self) -> set[TopicPartition]:
        return set(self._c().paused())

    def assignment(self) -> set[TopicPartition]:
        return set(self._c().assignment())

    def highwaters(self) -> dict[int, int | None]:
        """Per assigned partition, the highwater mark of the last fetch response (None before one)."""
        consumer = self.consumer
        if consumer is None:
            return {}
        return {tp.partition: consumer.highwater(tp) for tp in consumer.assignment()}

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None
