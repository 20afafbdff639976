"""The optional confluent-kafka (librdkafka) transport: ``SD_TRANSPORT=confluent``. This module is
step 1 (``ConfluentSource``) and the rendering of ``TransportConfig`` into librdkafka properties;
the producing side (steps 6 and 7) is ``confluent_out.py``.

kafka-python parses every record in Python, which bounds a worker's events/s; librdkafka parses
in C. ``ConfluentSource`` and ``ConfluentPublisher`` / ``ConfluentTransactionalPublisher`` keep the
exact semantics of the kafka-python adapter: the same ``Batch``, the same ``OutMessage``s, offsets
committed only after every acknowledgement (or inside the batch's transaction), no auto-commit,
read_committed, zombies never commit. librdkafka's ``TopicPartition`` never leaves these modules:
it becomes ``base.TopicPartition`` at the edge. Imports only ``base``, ``eos`` and confluent-kafka.

What librdkafka does differently: its group protocol runs in a background thread, so the
membership snapshot of a batch (``Membership``: the consumer's serialised group metadata, i.e.
generation and member id, plus a counter bumped by every revoke/lost callback) can go stale
while a batch is in flight, not only inside ``poll``. ``still_member`` then says no and the
worker abandons and re-reads the batch, exactly as for a kafka-python generation change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    libversion,
    version,
)
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]  # re-exported untyped

from .base import (
    Batch,
    CommitRefused,
    Connection,
    DeliveryError,
    Membership,
    Offsets,
    TopicPartition,
    TransportConfig,
    TransportError,
    Unreadable,
    commit_revoked,
    fill_batch,
)

# librdkafka's per-message errors for a record it fetched but cannot hand over (corrupt, or a
# batch it cannot decompress): that offset is dead-lettered as ``unreadable_record``.
UNREADABLE_CODES = frozenset({KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION, KafkaError.INVALID_MSG})


class _UnreadableMessage:
    """A consumed error message standing in the batch as its offset's ``Unreadable`` record."""

    def __init__(self, message: Any, error: KafkaError) -> None:
        self._m = message
        self._value = Unreadable(f"librdkafka: {error.str()}"[:500])

    def topic(self) -> str | None:
        return cast("str | None", self._m.topic())

    def partition(self) -> int | None:
        return cast("int | None", self._m.partition())

    def offset(self) -> int | None:
        return cast("int | None", self._m.offset())

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_NOT_AVAILABLE, -1

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None

log = logging.getLogger("stream_detector.source")  # as kafka_python.py: assigned, revoked, lost
ERROR_LOG_INTERVAL_S = 10.0  # transient client errors (broker unreachable) are logged at most this often
NO_HEADERS: tuple[tuple[str, bytes], ...] = ()  # a record without headers (kafka-python: []); one shared,
# immutable empty sequence instead of a new list per record, which would feed the garbage collector


class _OncePerInterval(logging.Filter):
    """Lets one librdkafka log line per (facility, client, level) through every
    ``ERROR_LOG_INTERVAL_S``: while a broker is down librdkafka logs a failed connect per retry."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[Any, ...], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        key = (*args[:2], record.levelno)  # confluent-kafka logs ("%s [%s] %s", facility, client, text)
        now = time.monotonic()
        if now - self.last.get(key, -float("inf")) < ERROR_LOG_INTERVAL_S:
            return False
        self.last[key] = now
        return True


RDKAFKA_LOG = logging.getLogger("stream_detector.librdkafka")  # librdkafka's own log lines, via poll/consume
RDKAFKA_LOG.addFilter(_OncePerInterval())

# a commit the group refused because the partitions moved (kafka-python: CommitFailedError)
COMMIT_REFUSED = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID, KafkaError.STALE_MEMBER_EPOCH,
})


def ck_version() -> str:
    return str(version()[0])


def ck_libversion() -> str:
    return str(libversion()[0])


def librdkafka_security(connection: Connection) -> dict[str, str]:
    """The TLS/SASL part of ``connection`` under librdkafka's property names (empty for PLAINTEXT).

    No CA file leaves ``ssl.ca.location`` unset: the confluent-kafka wheels then probe the
    standard system CA paths, i.e. the system trust store as with kafka-python.
    """
    if connection.security_protocol == "PLAINTEXT":
        return {}
    names = (("security.protocol", connection.security_protocol), ("sasl.mechanisms", connection.sasl_mechanism),
             ("sasl.username", connection.sasl_username), ("sasl.password", connection.sasl_password),
             ("ssl.ca.location", connection.ssl_cafile))
    return {name: value for name, value in names if value is not None}


def _common(connection: Connection, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": ",".join(connection.bootstrap_servers),
        "client.id": client_id,
        "logger": RDKAFKA_LOG,
        "log.connection.close": False,  # idle connections closed by the broker are not news
        **librdkafka_security(connection),  # TLS/SASL (docs/operations.md)
    }


def confluent_consumer_config(config: TransportConfig, **overrides: Any) -> dict[str, Any]:
    """The consumer's librdkafka properties: the kafka-python consumer's values, librdkafka's names."""
    t = config.tuning
    options = _common(config.connection, config.connection.client_id)
    options.update({
        "group.id": config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": t.auto_offset_reset,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky" if t.cooperative else "range,roundrobin",
        "session.timeout.ms": t.session_timeout_ms,
        "heartbeat.interval.ms": t.heartbeat_interval_ms,
        "max.poll.interval.ms": t.max_poll_interval_ms,
        "topic.metadata.refresh.interval.ms": t.metadata_max_age_ms,
        "fetch.max.bytes": t.fetch_max_bytes,
        "max.partition.fetch.bytes": t.max_partition_fetch_bytes,
        "fetch.min.bytes": t.fetch_min_bytes,
        "fetch.wait.max.ms": t.fetch_max_wait_ms,
    })
    options.update(overrides)
    return options


def confluent_producer_config(config: TransportConfig, **overrides: Any) -> dict[str, Any]:
    """The alert producer's librdkafka properties: the kafka-python producer's values, librdkafka's names."""
    t = config.tuning
    options = _common(config.connection, f"{config.connection.client_id}-out")
    options.update({
        "acks": t.acks,
        "enable.idempotence": t.acks == "all",
        "linger.ms": t.linger_ms,
        "batch.size": t.producer_batch_bytes,
        "message.max.bytes": t.max_request_bytes,
        "delivery.timeout.ms": t.delivery_timeout_ms,
        "request.timeout.ms": t.request_timeout_ms,
    })
    options.update(overrides)
    return options


class Throttled:
    """Logs a recurring transient error at most every ``ERROR_LOG_INTERVAL_S``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = -float("inf")

    def __call__(self, error: Any) -> None:
        now = time.monotonic()
        if now - self.last >= ERROR_LOG_INTERVAL_S:
            self.last = now
            log.warning("%s failed, retrying (Kafka unreachable?): %s", self.what, error)


def error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def ours(tp: CTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def theirs(tp: TopicPartition, offset: int | None = None) -> CTopicPartition:
    return CTopicPartition(tp.topic, tp.partition) if offset is None else CTopicPartition(tp.topic, tp.partition,
                                                                                           offset)


@dataclass(frozen=True, slots=True)
class ConfluentMembership(Membership):
    """A batch's ``Batch.group`` on this transport: the group membership when it was polled."""

    epoch: int  # revoke/lost callbacks seen so far
    metadata: Any  # consumer_group_metadata(): generation and member id (KIP-447 fencing)


@dataclass
class _Rebalances:
    epoch: int = 0
    paused: set[tuple[str, int]] = field(default_factory=set)


_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # list_offsets' "end offset" spec


class ConfluentSource:
    """``KafkaSource`` on librdkafka; explicit ``start``/``close``, no network I/O in the constructor.

    ``overrides`` are librdkafka properties with ``_`` for ``.`` (``fetch_wait_max_ms=5``).
    """

    def __init__(self, config: TransportConfig, idle_poll_ms: int = 500, **overrides: Any) -> None:
        self.config = config
        self.idle_poll_ms = idle_poll_ms
        self.overrides = {k.replace("_", "."): v for k, v in overrides.items()}
        self.consumer: Consumer | None = None
        self._state = _Rebalances()
        self._ends: dict[int, int] = {}  # partition → an end offset asked of the broker (``backlog``)
        self._starts: dict[int, int] = {}  # partition → where it starts, while nothing consumed (``backlog``)
        self._fatal: KafkaError | None = None
        self._admin: AdminClient | None = None  # end_offsets' client, made on first use
        self._poll_failed = Throttled("poll")
        self.on_revoke: Callable[[set[TopicPartition], bool], Offsets] | None = None  # base.Source
        self.on_revoke_done: Callable[[Offsets, bool], None] | None = None  # base.Source

    # ---- lifecycle and rebalance callbacks (they run inside consume(), on the worker thread) ----
    def start(self) -> None:
        options = confluent_consumer_config(self.config, **self.overrides)
        options["error_cb"] = self._on_error
        self.consumer = Consumer(options)
        # no assign() in the callbacks: confluent-kafka then does the (incremental, with
        # cooperative-sticky) assign/unassign itself right after each callback returns
        self.consumer.subscribe([self.config.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        self._ends.clear()  # ends and starts asked under the old assignment
        self._starts.clear()
        if partitions:  # as `stream-detector lag` names the member
            log.info("assigned %s as member %s", sorted(tp.partition for tp in partitions), consumer.memberid())

    def _on_revoke(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        if partitions and self.on_revoke is not None:  # still ours until this returns: commits go through
            offsets = self.on_revoke({ours(tp) for tp in partitions}, False)
            if offsets:
                commit_revoked(self, offsets, self.commit)
        self._state.epoch += 1  # a batch polled before this must not commit
        self._state.paused -= {(tp.topic, tp.partition) for tp in partitions}
        if partitions:
            log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        if partitions and self.on_revoke is not None:
            self.on_revoke({ours(tp) for tp in partitions}, True)
        self._state.epoch += 1
        self._state.paused -= {(tp.topic, tp.partition) for tp in partitions}
        log.warning("partitions %s lost (evicted from the group?); their batch will not be committed",
                    sorted(tp.partition for tp in partitions))

    def _on_error(self, error: KafkaError) -> None:
        """Client-level errors (broker down, resolve failures) come here from consume()."""
        if error.fatal():
            self._fatal = error
        else:
            self._poll_failed(error)

    def _c(self) -> Consumer:
        if self.consumer is None:
            raise RuntimeError("source not started")
        return self.consumer

    # ---- polling ---------------------------------------------------------------------------
    def _consume(self, max_records: int, timeout_ms: int) -> list[Message]:
        """``consume`` that rides out transient errors (the client reconnects by itself) and
        raises fatal ones; error messages (partition EOF aside) are logged, never batched."""
        try:
            messages = self._c().consume(num_messages=max(1, max_records), timeout=max(0, timeout_ms) / 1000.0)
        except KafkaException as exc:
            error = error_of(exc)
            if error is None or error.fatal() or not error.retriable():
                raise
            self._poll_failed(error)
            return []
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        good = [m for m in messages if m.error() is None]
        if len(good) != len(messages):
            good = []
            for m in messages:
                error = m.error()
                if error is None:
                    good.append(m)
                elif error.code() in UNREADABLE_CODES and (m.offset() or -1) >= 0:
                    good.append(cast("Message", _UnreadableMessage(m, error)))  # dead-lettered, never skipped
                elif error.code() == KafkaError._PARTITION_EOF:
                    continue
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    self._poll_failed(f"{m.topic()}[{m.partition()}]: {error}")
        return good

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        """Wait up to ``idle_poll_ms`` (or ``wait_ms``, when less) for a first record, then (``fill``)
        up to ``batch_max_wait_ms`` to fill."""
        consumer = self._c()
        batch = Batch(topic=self.config.topic)

        def take(max_records: int, timeout_ms: int, first: bool) -> None:
            if first:
                # librdkafka's consume() waits its whole timeout unless num_messages arrive, so the
                # first record is awaited alone (whatever is already fetched comes at once), and only
                # then the batch fills until the deadline: a quiet stream is not held for idle_poll_ms.
                messages = self._consume(max_records, 0) or self._consume(1, timeout_ms)
            else:
                messages = self._consume(max_records, timeout_ms)
            if messages:
                batch.topic = messages[-1].topic() or batch.topic
                # a consumed message always has a partition and an offset
                batch.partitions += cast("list[int]", [m.partition() for m in messages])
                batch.offsets += cast("list[int]", [m.offset() for m in messages])
                batch.keys += [m.key() for m in messages]
                batch.values += [m.value() for m in messages]
                for m in messages:
                    kind, ts = m.timestamp()
                    batch.timestamps.append(ts if kind != TIMESTAMP_NOT_AVAILABLE else -1)
                batch.headers += [m.headers() or NO_HEADERS for m in messages]

        return fill_batch(batch, self.config.tuning, self.idle_poll_ms, take,
                          lambda: ConfluentMembership(self._state.epoch, consumer.consumer_group_metadata()),
                          fill, wait_ms)

    # ---- offsets and membership ---------------------------------------------------------------
    def commit(self, offsets: Offsets) -> None:
        """Synchronous commit; ``CommitRefused`` when the partitions moved (``COMMIT_REFUSED``),
        else ``TransportError`` (also for a partition-level error)."""
        try:
            done = self._c().commit(offsets=[theirs(tp, o) for tp, o in offsets.items()], asynchronous=False)
            for tp in done or []:
                if tp.error is not None:
                    raise KafkaException(tp.error)
        except KafkaException as exc:
            error = error_of(exc)
            if error is not None and error.code() in COMMIT_REFUSED:
                raise CommitRefused(str(error)) from exc
            raise TransportError(f"{exc!r}", retriable=bool(error is not None and error.retriable())) from exc

    def membership(self) -> ConfluentMembership:
        """Group generation and member id now, for KIP-447 fencing in transactional commits."""
        return ConfluentMembership(self._state.epoch, self._c().consumer_group_metadata())

    def still_member(self, batch: Batch) -> bool:
        """False when the batch's membership moved since it was polled: partitions revoked or
        lost, a new generation or member id (evicted, e.g. frozen past the session timeout)."""
        group = batch.group
        if not isinstance(group, ConfluentMembership):
            return True
        consumer = self._c()
        return bool(group.epoch == self._state.epoch and consumer.memberid()
                    and consumer.consumer_group_metadata() == group.metadata)

    def rewind_to_committed(self, batch: Batch) -> None:
        """Seek the batch's partitions (those still assigned) back to the group's committed
        offsets, so an abandoned batch is neither skipped nor read past what others committed."""
        consumer = self._c()
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        mine = [theirs(tp) for tp in batch.next_offsets() if (tp.topic, tp.partition) in owned]
        if not mine:
            return
        try:
            for tp in consumer.committed(mine, timeout=self.config.tuning.delivery_timeout_s):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                consumer.seek(CTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:  # not rewound: the batch must not be skipped, so hold and retry
            raise DeliveryError(f"cannot rewind to the committed offsets: {exc}") from exc

    # ---- holding a batch ---------------------------------------------------------------------
    def poll_while_paused(self, timeout_ms: int) -> None:
        """Keep group membership while holding a batch: poll, and rewind anything that arrives.

        Partitions assigned during the pause (a rebalance) are not paused yet, so their records
        may come back here: seek to their first offset and pause them too, so nothing is skipped.
        """
        consumer = self._c()
        first: dict[tuple[str, int], int] = {}
        for m in self._consume(self.config.tuning.batch_size, timeout_ms):
            first.setdefault((m.topic() or "", m.partition() or 0), m.offset() or 0)
        for (topic, partition), offset in first.items():
            consumer.seek(CTopicPartition(topic, partition, offset))
        self.pause_all()

    def pause_all(self) -> None:
        consumer = self._c()
        assigned = consumer.assignment()
        if assigned:
            consumer.pause(assigned)
        self._state.paused = {(tp.topic, tp.partition) for tp in assigned}

    def resume_all(self) -> None:
        consumer = self._c()
        paused = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) in self._state.paused]
        if paused:
            consumer.resume(paused)
        self._state.paused = set()

    def paused(self) -> set[TopicPartition]:
        return {TopicPartition(t, p) for t, p in self._state.paused}

    def assignment(self) -> set[TopicPartition]:
        try:
            return {ours(tp) for tp in self._c().assignment()}
        except KafkaException as exc:
            raise TransportError(f"assignment unavailable: {exc}") from exc

    def highwaters(self) -> dict[int, int | None]:
        """Per assigned partition, the highwater mark cached from the last fetch, or the broker's
        answer to ``backlog(ask=True)`` where that is higher or there is none (None: neither)."""
        consumer = self.consumer
        if consumer is None:
            return {}
        out: dict[int, int | None] = {}
        try:
            for tp in consumer.assignment():
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                high = max(high, self._ends.get(tp.partition, -1))  # or the broker's, asked by backlog
                out[tp.partition] = high if high >= 0 else None
        except KafkaException as exc:
            raise TransportError(f"watermarks unavailable: {exc}") from exc
        return out

    def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """``base.Source.committed_offsets``: one OffsetFetch for them all (``Consumer.committed``)."""
        wanted = [CTopicPartition(self.config.topic, p) for p in sorted(set(partitions))]
        if not wanted:
            return {}
        try:
            done = self._c().committed(wanted, timeout=self.config.tuning.delivery_timeout_s)
        except KafkaException as exc:
            raise TransportError(f"committed offsets unavailable: {exc}", retriable=True) from exc
        return {tp.partition: tp.offset for tp in done if tp.error is None and tp.offset >= 0}

    def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """``base.Source.end_offsets``: the broker's high watermark of each partition, uncached: one
        ListOffsets request for them all through an admin client kept by the source (``AdminClient.
        list_offsets``, at most 1 s). ``python -m benchmarks end-offsets`` (same run, local broker):
        0.4-1.2 ms for 1 to 12 partitions, where the consumer's ``get_watermark_offsets(cached=False)``
        per partition (used before 2026-12-06) took 0.4-0.9 ms for 1-3 and 240-260 ms for 11-12, on
        the worker's thread, on every release that checks an idle partition (``pipeline/align.py``)."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        self._c()
        if self._admin is None:
            self._admin = AdminClient(_common(self.config.connection, f"{self.config.connection.client_id}-admin"))
        try:
            specs = {CTopicPartition(self.config.topic, p): _LATEST for p in wanted}
            asked = self._admin.list_offsets(specs, isolation_level=IsolationLevel.READ_UNCOMMITTED,
                                             request_timeout=1.0)
            return {tp.partition: int(future.result().offset) for tp, future in asked.items()}
        except KafkaException as exc:
            raise TransportError(f"end offsets unavailable: {exc}") from exc

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        """``base.Source.backlog``: per assigned partition, its high watermark (cached from the last
        fetch; ``ask``: every assigned partition's from the broker, ``end_offsets``, one round trip
        of at most 1 s, kept as a lower bound of the partition's end: a cached one can lag a
        burst by a fetch, and a contract test found it 200 records behind) minus the consumer's
        position (local). Before
        the first record of a partition is consumed librdkafka reports no position, so ``ask`` also
        asks where it starts: the group's committed offset, else (nothing committed) the partition's
        low watermark (``auto.offset.reset`` earliest) or its end (latest), kept until a record is
        consumed. (Without it, such a partition's backlog stayed unknown, and event-time
        alignment could call it idle with a burst already fetched into the client.)"""
        consumer = self.consumer
        if consumer is None:
            return {}
        out: dict[int, int | None] = {}
        try:
            positions = consumer.position(consumer.assignment())
            unknown = [tp for tp in positions if tp.offset < 0 and tp.partition not in self._starts]
            if ask and unknown:
                try:
                    for c in consumer.committed(unknown, timeout=1.0):
                        low, end = consumer.get_watermark_offsets(c, timeout=1.0, cached=False)
                        earliest = self.config.tuning.auto_offset_reset == "earliest"
                        self._starts[c.partition] = c.offset if c.offset >= 0 else (low if earliest else end)
                except KafkaException:
                    pass  # the coordinator is not known yet (a group still forming): unknown, asked again later
            if ask and positions:  # every partition's end from the broker: a cached one may be behind
                try:
                    self._ends.update(self.end_offsets([tp.partition for tp in positions]))
                except TransportError:
                    pass  # the cached ends, as without ask
            for tp in positions:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                high = max(high, self._ends.get(tp.partition, -1))
                position = tp.offset if tp.offset >= 0 else self._starts.get(tp.partition, -1)
                out[tp.partition] = max(high - position, 0) if high >= 0 and position >= 0 else None
        except KafkaException as exc:
            raise TransportError(f"backlog unavailable: {exc}") from exc
        return out

    def close(self) -> None:
        self._admin = None  # librdkafka's admin client has no close: it ends with its last reference
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            consumer.close()  # leaves the group; auto-commit is off, so nothing is committed


