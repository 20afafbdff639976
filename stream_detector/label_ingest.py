"""The feedback topic → the label store: how label-derived features learn a verdict.

Each worker process runs one ``LabelIngester`` thread (``SD_LABEL_INGEST``, on by default): a
consumer of ``SD_FEEDBACK_TOPIC`` in a group of its own (``{SD_GROUP_ID}-labels``), so every label
is ingested by one worker of the group. For each poll:

1. each record is read with the feedback contract (``feedback.decode_label``; a missing
   ``labelled_at`` is the record's timestamp);
2. labels are attached to their event's entities in Redis (``entity/labels.py``: ``RedisLabels.ingest``;
   a label whose event has not been scored yet waits for it);
3. records that break the contract go to the dead-letter topic with their reason (the worker's
   headers: ``sd.error.reason``, ``sd.error.message``, source topic/partition/offset), and so
   does a record the client cannot read (``unreadable_record``: a corrupt batch, a codec it
   lacks), as in the worker, instead of a poll that fails at the same offset forever;
4. then the offsets are committed.

At least once: a crash between 2 and 4 redelivers the records; attaching a label twice changes
nothing (a label is a hash field), a dead letter may repeat after a crash. Redis or Kafka away, or
a commit refused by a rebalance: the poll's offsets are not committed, the consumer is rewound to
them and the ingester retries after a pause; a dead letter already acknowledged for one of those
records is not sent again by this process (``_dead_lettered``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from redis import RedisError

from .entity.labels import RedisLabels
from .errors import StreamDetectorError
from .feedback import Label, decode_label
from .kafka_util import known_partitions, partitions_of
from .pipeline.decode import Rejected
from .pipeline.publish import build_dead_letters
from .schema import Problem, RejectReason
from .settings import Settings
from .transport.base import Batch, Unreadable
from .transport.factory import transport_config
from .transport.kafka_python import consumer_config, poll_readable

log = logging.getLogger("stream_detector.labels")


@dataclass
class IngestStats:
    labels: int = 0  # valid records read
    attached: int = 0  # attached to their event's entities when read
    waiting: int = 0  # their event not indexed yet: attached when it is
    dead_letters: int = 0
    failures: int = 0  # polls retried after Redis or Kafka failed
    failure_kinds: dict[str, int] = field(default_factory=dict)  # failures by exception class (module.name)


def read_label(value: bytes | None, record_time_ms: float | None = None) -> Label | Problem:
    """``feedback.decode_label`` of a record read through ``poll_readable``: a record the client
    could not read (an ``Unreadable``) is ``unreadable_record`` with the client's error."""
    if type(value) is Unreadable:
        return RejectReason.UNREADABLE, value.message
    return decode_label(value, record_time_ms)


class LabelIngester:
    def __init__(self, settings: Settings, store: RedisLabels,
                 on_counts: Callable[[str, int], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.stats = IngestStats()
        self.on_counts = on_counts or (lambda _outcome, _n: None)  # (attached|waiting|dead_lettered, n)
        self.stop_event = threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None
        self.caught_up = False  # start(): every label on the topic when it began was ingested
        self.stall_s = 30.0  # start(): a consumer making no progress this long is replaced
        self._failing_since: float | None = None  # the first of the polls failing in a row
        self.rejoins = 0  # consumers replaced (no progress, or every poll failing for stall_s)
        # (topic, partition, offset) of records whose dead letter was acknowledged but whose offset
        # is not committed yet: a retried poll reads them again and must not dead-letter them twice
        self._dead_lettered: set[tuple[str, int, int]] = set()

    @property
    def group(self) -> str:
        return self.settings.label_group

    def start(self, catch_up_s: float = 120.0, stall_s: float = 30.0) -> None:
        """Join the group, ingest what is on the topic (``catch_up``), then go on in a thread."""
        s = self.settings
        self.stall_s = stall_s
        self.consumer = self._connect()
        self.producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all", **s.kafka_security())
        self.caught_up = self.catch_up(catch_up_s, stall_s)
        self._thread = threading.Thread(target=self._run, name="label-ingester", daemon=True)
        self._thread.start()

    def _connect(self) -> KafkaConsumer:
        s = self.settings
        consumer = KafkaConsumer(**consumer_config(
            transport_config(s), group_id=self.group, client_id=f"stream-detector-labels-{s.worker_id}",
            max_poll_records=5000, auto_offset_reset="earliest"))  # a new group reads every label
        # the topic's partitions known before joining (a topic created a moment ago has none until its
        # leaders are elected): else the group's assignor can run on metadata without them ("No
        # partition metadata for topic …" at starts, and now and then no assignment until a rejoin)
        try:
            partitions_of(consumer, s.feedback_topic, timeout_s=10.0)
        except TimeoutError:
            log.warning("feedback topic %s: no partitions known after 10 s (missing, and SD_CREATE_TOPICS off?); "
                        "the label ingester subscribes anyway", s.feedback_topic)
        consumer.subscribe([s.feedback_topic])
        return consumer

    def catch_up(self, timeout_s: float, stall_s: float = 30.0) -> bool:
        """Ingest, in the calling thread, every label already on this consumer's partitions (up to
        their end offsets once assigned), so that a worker replaying a backlog sees the labels known
        before it started. Gives up after ``timeout_s`` (logged; the thread goes on from there).

        A consumer that makes no progress for ``stall_s`` (no assignment, or its positions not
        moving while behind the ends) is closed and a new one joins the group; what happened is
        logged. Seen twice in full test runs on the 2-core dev machine (2026-12-02), never alone:
        the catch-up ran its 120 s without reaching the end, once after kafka-python's sticky
        assignor had found "no partition metadata" for the topic at the join."""
        assert self.consumer is not None
        started = time.monotonic()
        deadline = started + timeout_s
        ends: dict[Any, int] = {}
        looked = progress_at = started
        last: tuple[int, ...] = ()
        while time.monotonic() < deadline:
            now = time.monotonic()
            assigned = self.consumer.assignment()
            if not assigned:
                if now - looked >= 1.0:
                    # A group joined before the client's metadata held the topic assigns nothing, and
                    # kafka-python refreshes that metadata only every metadata_max_age_ms (5 min).
                    # Asking for the topic's partitions fetches the metadata when it is missing; the
                    # coordinator then sees the topic's partitions and joins again.
                    known_partitions(self.consumer, self.settings.feedback_topic)
                    looked = now
            else:
                if set(ends) != assigned:  # the ends as of the (new) assignment: later labels are live ones
                    ends = self.consumer.end_offsets(list(assigned))
                positions = {tp: self.consumer.position(tp) for tp in ends}
                if all(positions[tp] >= end for tp, end in ends.items()):
                    log.info("label ingester caught up with %s: %d labels, %d dead letters",
                             self.settings.feedback_topic, self.stats.labels, self.stats.dead_letters)
                    return True
                now_at = tuple(positions[tp] for tp in sorted(ends))
                if now_at != last:
                    last, progress_at = now_at, now
            if now - progress_at >= stall_s:
                log.warning("label ingester: no progress on %s for %.0f s (assigned %s, positions %s, ends %s); "
                            "joining again with a new consumer", self.settings.feedback_topic, now - progress_at,
                            sorted(tp.partition for tp in assigned), list(last), [ends[tp] for tp in sorted(ends)])
                self._replace_consumer()
                ends, last, progress_at, looked = {}, (), now, now
            self._poll_guarded(100)  # joins the group (records polled meanwhile are handled)
        log.warning("label ingester: not caught up with %s after %.0f s; continuing in the background",
                    self.settings.feedback_topic, timeout_s)
        return False

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close(timeout=5)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            if self._poll_guarded(500) is None:
                self.stop_event.wait(1.0)

    def _replace_consumer(self) -> None:
        assert self.consumer is not None
        self.consumer.close(autocommit=False)
        self.consumer = self._connect()
        self.rejoins += 1

    def _poll_guarded(self, timeout_ms: int) -> int | None:
        """``poll_once``, where a failure (Redis or Kafka unreachable, a commit refused while the group
        rebalances) is logged and counted and the consumer rewound to its committed offsets: the
        records are read again, nothing is lost. None on a failure. The catch-up at a worker's start
        used to let it through: a commit refused by a rebalance (``RebalanceInProgressError``) stopped
        the worker with exit 1 (a new-user trial, 2 of 7 starts of a new deployment).

        Polls failing in a row for ``stall_s`` with a Kafka error replace the consumer (logged, as a
        stalled catch-up does). Seen once in CI (2026-12-03): a kafka-python 3.0.12 consumer, after
        the topic appeared under it, read its records but refused every commit for 60 s with its
        client-side ``RebalanceInProgressError`` ("the consumer is undergoing a rebalance") and
        never finished that rebalance; a new consumer joins and commits."""
        try:
            handled = self.poll_once(timeout_ms)
        except (RedisError, KafkaError, StreamDetectorError, OSError) as exc:
            self.stats.failures += 1
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"  # redis' and the builtin ConnectionError apart
            self.stats.failure_kinds[kind] = self.stats.failure_kinds.get(kind, 0) + 1
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            log.warning("label ingestion failed, retrying from the last committed offsets: %s: %s",
                        type(exc).__name__, exc)
            if isinstance(exc, KafkaError) and now - self._failing_since >= self.stall_s:
                log.warning("label ingester: every poll failed for %.0f s; joining again with a new consumer",
                            now - self._failing_since)
                self._failing_since = None
                try:
                    self._replace_consumer()
                except (KafkaError, OSError) as again:  # the broker away: the next poll fails and retries
                    log.warning("label ingester: a new consumer could not join (%s); retrying", again)
                return None
            self._rewind()
            return None
        self._failing_since = None
        return handled

    def poll_once(self, timeout_ms: int) -> int:
        """One poll: attach, dead-letter, commit. Returns the records handled. Raises what Redis or
        Kafka raise (nothing committed then)."""
        assert self.consumer is not None and self.producer is not None
        polled = poll_readable(self.consumer, timeout_ms)  # a record the client cannot read: dead-lettered
        labels: list[Label] = []
        bad: list[tuple[Any, Rejected]] = []
        handled = 0
        for _tp, records in polled.items():
            for record in records:
                handled += 1
                parsed = read_label(record.value, record.timestamp)
                if isinstance(parsed, Label):
                    labels.append(parsed)
                else:
                    bad.append((record, Rejected(0, parsed[0], parsed[1])))
        if not handled:
            return 0
        attached, waiting = self.store.ingest(labels)
        sent = []
        for record, rejected in bad:
            position = (record.topic, record.partition, record.offset)
            if position in self._dead_lettered:  # sent before a refused commit: read again, not sent again
                continue
            batch = Batch(topic=record.topic, partitions=[record.partition], offsets=[record.offset],
                          keys=[record.key], values=[record.value])
            for message in build_dead_letters(batch, [rejected], self.settings.dlq_topic):
                sent.append((position, self.producer.send(message.topic, key=message.key, value=message.value,
                                                          headers=list(message.headers))))
        for position, future in sent:  # every dead letter acknowledged before the offsets move
            future.get(timeout=self.settings.delivery_timeout_s)
            self._dead_lettered.add(position)  # acknowledged: a retry of this poll does not send it again
        self.consumer.commit()
        self._dead_lettered.clear()  # every offset this consumer read is committed
        self.stats.labels += len(labels)
        self.stats.attached += attached
        self.stats.waiting += waiting
        self.stats.dead_letters += len(bad)
        for outcome, n in (("attached", attached), ("waiting", waiting), ("dead_lettered", len(bad))):
            if n:
                self.on_counts(outcome, n)
        return handled

    def _rewind(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        try:
            for tp in consumer.assignment():
                committed = consumer.committed(TopicPartition(tp.topic, tp.partition))
                if committed is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
        except (KafkaError, OSError) as exc:
            log.warning("could not rewind the label consumer (%s); the group will on its next rebalance", exc)
