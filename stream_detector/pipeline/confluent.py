"""The optional confluent-kafka (librdkafka) transport: ``SD_TRANSPORT=confluent``.

kafka-python parses every record in Python, which bounds a worker's events/s; librdkafka parses
in C. ``ConfluentSource`` and ``ConfluentPublisher`` / ``ConfluentTransactionalPublisher`` keep the
exact semantics of ``KafkaSource`` (``source.py``) and ``Publisher`` / ``TransactionalPublisher``
(``publish.py``): the same ``Batch``, the same ``OutMessage``s, offsets committed only after every
acknowledgement (or inside the batch's transaction), no auto-commit, read_committed, zombies
never commit. Topic partitions cross this module's boundary as kafka-python ``TopicPartition``
tuples, so the worker does not know which transport it runs on.

What librdkafka does differently: its group protocol runs in a background thread, so the
membership snapshot of a batch (``Membership``: the consumer's serialised group metadata, i.e.
generation and member id, plus a counter bumped by every revoke/lost callback) can go stale
while a batch is in flight, not only inside ``poll``. ``still_member`` then says no and the
worker abandons and re-reads the batch, exactly as for a kafka-python generation change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    libversion,
    version,
)
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import TopicPartition

from ..errors import ConfigError, DeliveryError
from ..settings import Settings
from .decode import Unreadable
from .publish import OutMessage, TransactionSteps
from .source import Batch, fill_batch

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

log = logging.getLogger("stream_detector.confluent")
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

# kafka-python option (Settings.kafka_security) -> librdkafka property
SECURITY_KEYS = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
}
# a commit the group refused because the partitions moved (kafka-python: CommitFailedError)
COMMIT_REFUSED = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID, KafkaError.STALE_MEMBER_EPOCH,
})


def ck_version() -> str:
    return str(version()[0])


def ck_libversion() -> str:
    return str(libversion()[0])


def librdkafka_security(settings: Settings) -> dict[str, str]:
    """``Settings.kafka_security()`` (kafka-python names) under librdkafka's property names.

    An empty ``SD_KAFKA_SSL_CAFILE`` leaves ``ssl.ca.location`` unset: the confluent-kafka wheels
    then probe the standard system CA paths, i.e. the system trust store as with kafka-python.
    """
    out: dict[str, str] = {}
    for key, value in settings.kafka_security().items():
        if key not in SECURITY_KEYS:  # a new security option must not be dropped silently
            raise ConfigError(f"Kafka security option {key} has no librdkafka equivalent here (SD_TRANSPORT=confluent)")
        out[SECURITY_KEYS[key]] = value
    return out


def _common(settings: Settings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": client_id,
        "logger": RDKAFKA_LOG,
        "log.connection.close": False,  # idle connections closed by the broker are not news
        **librdkafka_security(settings),  # TLS/SASL (docs/operations.md)
    }


def confluent_consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The consumer's librdkafka properties: ``source.consumer_config`` translated, same values."""
    config = _common(settings, f"stream-detector-{settings.group_id}")
    config.update({
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky" if settings.assignment == "cooperative"
        else "range,roundrobin",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "max.poll.interval.ms": 300_000,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": max(1, settings.batch_max_wait_ms),
    })
    config.update(overrides)
    return config


def confluent_producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The alert producer's librdkafka properties: ``publish.producer_config`` translated."""
    acks: int | str = "all" if settings.producer_acks == "all" else int(settings.producer_acks)
    config = _common(settings, f"stream-detector-{settings.group_id}-out")
    config.update({
        "acks": acks,
        "enable.idempotence": acks == "all",
        "linger.ms": 2,
        "batch.size": 256 * 1024,
        "message.max.bytes": 16 * 1024 * 1024,
        "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
        "request.timeout.ms": min(30_000, int(settings.delivery_timeout_s * 500)),
    })
    config.update(overrides)
    return config


class _Throttled:
    """Logs a recurring transient error at most every ``ERROR_LOG_INTERVAL_S``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = -float("inf")

    def __call__(self, error: Any) -> None:
        now = time.monotonic()
        if now - self.last >= ERROR_LOG_INTERVAL_S:
            self.last = now
            log.warning("%s failed, retrying (Kafka unreachable?): %s", self.what, error)


def _error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _ktp(tp: CTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


@dataclass(frozen=True, slots=True)
class Membership:
    """A batch's ``Batch.group`` on this transport: the group membership when it was polled."""

    epoch: int  # revoke/lost callbacks seen so far
    metadata: Any  # consumer_group_metadata(): generation and member id (KIP-447 fencing)


@dataclass
class _Rebalances:
    epoch: int = 0
    paused: set[tuple[str, int]] = field(default_factory=set)


class ConfluentSource:
    """``KafkaSource`` on librdkafka; explicit ``start``/``close``, no network I/O in the constructor.

    ``overrides`` are librdkafka properties with ``_`` for ``.`` (``fetch_wait_max_ms=5``).
    """

    def __init__(self, settings: Settings, idle_poll_ms: int = 500, **overrides: Any) -> None:
        self.settings = settings
        self.idle_poll_ms = idle_poll_ms
        self.overrides = {k.replace("_", "."): v for k, v in overrides.items()}
        self.consumer: Consumer | None = None
        self._state = _Rebalances()
        self._fatal: KafkaError | None = None
        self._poll_failed = _Throttled("poll")

    # ---- lifecycle and rebalance callbacks (they run inside consume(), on the worker thread) ----
    def start(self) -> None:
        config = confluent_consumer_config(self.settings, **self.overrides)
        config["error_cb"] = self._on_error
        self.consumer = Consumer(config)
        # no assign() in the callbacks: confluent-kafka then does the (incremental, with
        # cooperative-sticky) assign/unassign itself right after each callback returns
        self.consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        if partitions:
            log.info("assigned %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        self._state.epoch += 1  # a batch polled before this must not commit
        self._state.paused -= {(tp.topic, tp.partition) for tp in partitions}
        if partitions:
            log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
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
            error = _error_of(exc)
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

    def poll_batch(self) -> Batch:
        """Wait up to ``idle_poll_ms`` for a first record, then up to ``batch_max_wait_ms`` to fill."""
        consumer = self._c()
        batch = Batch(topic=self.settings.input_topic)

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

        return fill_batch(batch, self.settings, self.idle_poll_ms, take,
                          lambda: Membership(self._state.epoch, consumer.consumer_group_metadata()))

    # ---- offsets and membership ---------------------------------------------------------------
    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Synchronous commit; raises ``KafkaException`` (also for a partition-level error)."""
        done = self._c().commit(offsets=[CTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()],
                                asynchronous=False)
        for tp in done or []:
            if tp.error is not None:
                raise KafkaException(tp.error)

    def group_metadata(self) -> Any:
        """Group generation and member id, for KIP-447 fencing in transactional commits."""
        return self._c().consumer_group_metadata()

    def still_member(self, batch: Batch) -> bool:
        """False when the batch's membership moved since it was polled: partitions revoked or
        lost, a new generation or member id (evicted, e.g. frozen past the session timeout)."""
        group = batch.group
        if not isinstance(group, Membership):
            return True
        consumer = self._c()
        return bool(group.epoch == self._state.epoch and consumer.memberid()
                    and consumer.consumer_group_metadata() == group.metadata)

    def rewind_to_committed(self, batch: Batch) -> None:
        """Seek the batch's partitions (those still assigned) back to the group's committed
        offsets, so an abandoned batch is neither skipped nor read past what others committed."""
        consumer = self._c()
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        mine = [CTopicPartition(tp.topic, tp.partition) for tp in batch.next_offsets()
                if (tp.topic, tp.partition) in owned]
        if not mine:
            return
        try:
            for tp in consumer.committed(mine, timeout=self.settings.delivery_timeout_s):
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
        for m in self._consume(self.settings.batch_size, timeout_ms):
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
            return {_ktp(tp) for tp in self._c().assignment()}
        except KafkaException as exc:
            raise RuntimeError(f"assignment unavailable: {exc}") from exc

    def highwaters(self) -> dict[int, int | None]:
        """Per assigned partition, the highwater mark cached from the last fetch (None before one)."""
        consumer = self.consumer
        if consumer is None:
            return {}
        out: dict[int, int | None] = {}
        try:
            for tp in consumer.assignment():
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                out[tp.partition] = high if high >= 0 else None
        except KafkaException as exc:
            raise RuntimeError(f"watermarks unavailable: {exc}") from exc
        return out

    def close(self) -> None:
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            consumer.close()  # leaves the group; auto-commit is off, so nothing is committed


class ConfluentPublisher:
    """``Publisher`` on librdkafka: produce every message, wait for every delivery report, then
    commit offsets through the consumer. Any message not acknowledged raises ``DeliveryError``."""

    transactional = False

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.overrides = {k.replace("_", "."): v for k, v in overrides.items()}
        self.producer: Producer | None = None
        self._failed = _Throttled("produce")

    def _config(self) -> dict[str, Any]:
        config = confluent_producer_config(self.settings, **self.overrides)
        config["error_cb"] = self._on_error
        return config

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("producer error: %s", error)  # the batch's deliveries fail; reset() replaces it
        else:
            self._failed(error)

    def start(self) -> None:
        self.producer = Producer(self._config())

    def _p(self) -> Producer:
        """The producer, (re)created on demand after a ``reset``; failures become ``DeliveryError``."""
        if self.producer is None:
            try:
                self.start()
            except (KafkaException, ValueError, TypeError) as exc:
                self.producer = None
                raise DeliveryError(f"cannot create the Kafka producer: {exc!r}") from exc
        assert self.producer is not None
        return self.producer

    def _send_all(self, messages: Sequence[OutMessage]) -> None:
        producer = self._p()
        timeout = self.settings.delivery_timeout_s
        acked = 0
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            nonlocal acked
            if error is None:
                acked += 1
            else:
                errors.append(error)

        deadline = time.monotonic() + timeout
        try:
            for m in messages:
                while True:
                    try:
                        producer.produce(m.topic, value=m.value, key=m.key, headers=list(m.headers),
                                         on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: serve delivery reports, then retry
                        if time.monotonic() > deadline:
                            raise DeliveryError(f"producer queue full for {timeout}s") from None
                        producer.poll(0.05)
            producer.flush(max(0.0, deadline - time.monotonic()))
        except KafkaException as exc:
            raise DeliveryError(f"send failed: {exc!r}") from exc
        if acked != len(messages):
            first = errors[0] if errors else "timed out"
            raise DeliveryError(f"{len(messages) - acked} of {len(messages)} records not acknowledged: {first!s}")

    def publish(self, messages: Sequence[OutMessage]) -> None:
        if messages:
            self._send_all(messages)

    def commit(self, source: ConfluentSource, offsets: dict[TopicPartition, int], group: Any = None) -> None:
        """Step 7. ``group`` is the membership snapshot taken when the batch was polled."""
        try:
            source.commit(offsets)
        except KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.code() in COMMIT_REFUSED:
                log.warning("offsets of a batch were not committed (partitions moved to another worker; "
                            "they will be reprocessed there): %s", error)
                return
            raise DeliveryError(f"offset commit failed: {exc!r}") from exc

    def abandon(self) -> None:
        """Give up the current batch (at-least-once: its alerts are out; it will be redelivered)."""

    def reset(self) -> None:
        """Drop the producer after a failure (queued messages purged); the next batch starts a fresh one."""
        if self.producer is not None:
            producer, self.producer = self.producer, None
            try:
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.flush(0)  # serve the purged messages' reports into the old batch's callbacks
            except Exception:  # noqa: BLE001 - a broken producer may fail here; it is replaced anyway
                pass

    def close(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            if producer.flush(self.settings.delivery_timeout_s):
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.flush(0)


class ConfluentTransactionalPublisher(TransactionSteps, ConfluentPublisher):
    """``TransactionalPublisher`` on librdkafka: one transaction per batch holding the alerts, the
    dead letters and the offsets (sent with the group metadata of the poll, KIP-447). Every
    transaction call has a timeout (``SD_DELIVERY_TIMEOUT_S``), so no watchdog thread is needed;
    an abortable error aborts, a fatal one replaces the producer (``reset``), which fences and
    aborts whatever the old one left open, as does a restarted worker with the same id."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._open = False

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.group_id}-{self.settings.worker_id}"

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        txn_ms = int(self.settings.transaction_timeout_s * 1000)
        config.update({"transactional.id": self.transactional_id, "enable.idempotence": True, "acks": "all",
                       "transaction.timeout.ms": txn_ms,
                       # librdkafka refuses a delivery timeout longer than the transaction timeout
                       "delivery.timeout.ms": min(config["delivery.timeout.ms"], txn_ms)})
        return config

    def start(self) -> None:
        super().start()
        self._open = False
        assert self.producer is not None
        try:
            self._call(lambda p: p.init_transactions(self.settings.delivery_timeout_s), "init_transactions")
        except DeliveryError:
            self.producer = None
            raise

    def _call(self, call: Any, what: str) -> None:
        producer = self.producer
        assert producer is not None
        try:
            call(producer)
        except KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.fatal():
                log.warning("%s: fatal producer error, replacing the producer: %s", what, error)
                self.reset()
            raise DeliveryError(f"{what} failed: {exc!r}") from exc

    def _begin(self) -> None:
        self._p()
        self._call(lambda p: p.begin_transaction(), "begin_transaction")

    def _commit_offsets(self, source: ConfluentSource, offsets: dict[TopicPartition, int], group: Any) -> None:
        """Offsets join the transaction with the membership *of the poll* (a zombie is fenced by
        the broker), then the transaction commits."""
        self._p()
        positions = [CTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        metadata = group.metadata if isinstance(group, Membership) else source.group_metadata()
        timeout = self.settings.delivery_timeout_s
        self._call(lambda p: p.send_offsets_to_transaction(positions, metadata, timeout),
                   "send_offsets_to_transaction")
        self._call(lambda p: p.commit_transaction(timeout), "commit_transaction")

    def _abort_call(self) -> None:
        if self.producer is not None:  # no producer (replaced after a fatal error): nothing is open
            self._call(lambda p: p.abort_transaction(self.settings.delivery_timeout_s), "abort_transaction")

    def reset(self) -> None:
        self._open = False
        super().reset()

    def close(self) -> None:
        self._abort()
        super().close()
