"""Step 6, publish: alerts and dead-letter records out, and wait until Kafka acknowledged each.

``kafka-python``'s ``flush()`` does not report failed records, so every send future is checked;
any failure raises ``DeliveryError`` and the worker does not commit (the batch is redelivered).
Alerts are built only for flagged rows (a few per thousand), so pydantic here costs nothing.
Step 7 (commit) lives here too, because how offsets move depends on the delivery mode:
``Publisher`` (at-least-once) commits through the consumer after every ack;
``TransactionalPublisher`` (exactly-once) commits them inside the batch's transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
import orjson
from kafka import KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from ..errors import DeliveryError
from ..schema import Alert, DeadLetterHeaders, FeatureContribution
from ..settings import Settings
from ..store import Threshold
from .decode import Rejected
from .source import Batch, KafkaSource, confluent_transport

log = logging.getLogger("stream_detector.publish")


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes | None  # None only for a dead-lettered tombstone (kept null, distinct from b"")
    headers: list[tuple[str, bytes]]


class BatchPublisher(Protocol):
    """What the worker needs from a transport's publishing side (steps 6 and 7): ``Publisher`` /
    ``TransactionalPublisher`` (kafka-python) or their librdkafka twins in ``pipeline/confluent.py``."""

    transactional: bool

    def start(self) -> None: ...
    def publish(self, messages: Sequence[OutMessage]) -> None: ...
    def commit(self, source: Any, offsets: dict[TopicPartition, int], group: Any = None) -> None: ...
    def abandon(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    acks: int | str = "all" if settings.producer_acks == "all" else int(settings.producer_acks)
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        acks=acks,
        enable_idempotence=acks == "all",
        linger_ms=2,
        batch_size=256 * 1024,
        max_request_size=16 * 1024 * 1024,
        retries=2_147_483_647,
        delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),
        request_timeout_ms=min(30_000, int(settings.delivery_timeout_s * 500)),
        client_id=f"stream-detector-{settings.group_id}-out",
    )
    config.update(settings.kafka_security())  # TLS/SASL (docs/operations.md)
    config.update(overrides)
    return config


def build_alerts(
    batch: Batch,
    events: Sequence[dict[str, Any]],
    indices: Sequence[int],
    rows: np.ndarray,
    scores: np.ndarray,
    field_errors: np.ndarray,
    fields: Sequence[str],
    threshold: Threshold,
    top_n: int,
    topic: str,
    redact: frozenset[str] = frozenset(),
) -> list[OutMessage]:
    """One alert per flagged row.

    ``rows`` index into ``events``/``indices``/``scores``; ``field_errors`` has one row per entry
    of ``rows`` (per-field errors of the flagged events only). Fields in ``redact`` are replaced by
    ``"[redacted]"`` in the alert's copy of the event (PII such as card numbers).
    """
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out: list[OutMessage] = []
    for k, row in enumerate(rows.tolist()):
        event = events[row]
        if redact:
            event = {k: ("[redacted]" if k in redact else v) for k, v in event.items()}
        i = indices[row]
        errs = field_errors[k]
        total = float(errs.sum()) or 1.0
        worst = np.argsort(-errs, kind="stable")[:top_n]
        account = event.get("account_id")
        alert = Alert(
            event_id=event["event_id"],
            account_id=None if account is None else str(account),
            score=float(scores[row]),
            threshold=threshold.value,
            threshold_version=threshold.version,
            model_version=threshold.model_version,
            top_features=[
                FeatureContribution(feature=fields[j], share=float(errs[j]) / total, error=float(errs[j]))
                for j in worst.tolist()
            ],
            event=event,
            detected_at=now,
            event_time_ms=batch.timestamps[i],
            topic=batch.topic,
            partition=batch.partitions[i],
            offset=batch.offsets[i],
        )
        key = batch.keys[i] or (None if account is None else str(account).encode())
        out.append(OutMessage(topic, key, orjson.dumps(alert.model_dump()),
                              [("sd.model_version", threshold.model_version.encode())]))
    return out


def build_dead_letters(batch: Batch, rejected: Sequence[Rejected], topic: str) -> list[OutMessage]:
    """Original bytes (a tombstone's null stays null) and key; reason, message and source position
    as headers."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
    out = []
    for rej in rejected:
        i = rej.index
        raw = batch.values[i]
        value = raw if raw is None or type(raw) is bytes else bytes(raw)  # an Unreadable stand-in: b""
        out.append(OutMessage(topic, batch.keys[i], value, [
            (DeadLetterHeaders.REASON, rej.reason.value.encode()),
            (DeadLetterHeaders.MESSAGE, rej.message.encode("utf-8", "replace")[:1000]),
            (DeadLetterHeaders.TOPIC, batch.topic.encode()),
            (DeadLetterHeaders.PARTITION, str(batch.partitions[i]).encode()),
            (DeadLetterHeaders.OFFSET, str(batch.offsets[i]).encode()),
            (DeadLetterHeaders.FAILED_AT, now),
        ]))
    return out


class Publisher:
    """At-least-once delivery: send, wait for every acknowledgement, then commit offsets.

    ``publish`` (step 6) returns only when every message is acknowledged; ``commit`` (step 7)
    moves the consumer's offsets. A commit refused because the partitions moved to another
    worker (rebalance) is logged and dropped: the new owner reprocesses the batch.
    """

    transactional = False

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.overrides = overrides
        self.producer: KafkaProducer | None = None

    def _config(self) -> dict[str, Any]:
        return producer_config(self.settings, max_block_ms=int(self.settings.delivery_timeout_s * 1000),
                               **self.overrides)

    def start(self) -> None:
        self.producer = KafkaProducer(**self._config())

    def _p(self) -> KafkaProducer:
        """The producer, (re)created on demand: after a reset while the broker was unreachable
        the next batch retries the connection instead of the worker dying."""
        if self.producer is None:
            try:
                self.start()
            except Exception as exc:  # noqa: BLE001 - bootstrap failures come in many types
                self.producer = None
                raise DeliveryError(f"cannot reach Kafka to publish: {exc!r}") from exc
        assert self.producer is not None
        return self.producer

    def _send_all(self, messages: Sequence[OutMessage]) -> list[Any]:
        producer = self._p()
        try:
            futures = [producer.send(m.topic, value=m.value, key=m.key, headers=m.headers) for m in messages]
            producer.flush(timeout=self.settings.delivery_timeout_s)
        except Exception as exc:  # kafka-python raises a zoo of types here; all mean "not delivered"
            raise DeliveryError(f"send failed: {exc!r}") from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "timed out"
            raise DeliveryError(f"{len(failed)} of {len(futures)} records not acknowledged: {first!r}")
        return futures

    def publish(self, messages: Sequence[OutMessage]) -> None:
        if messages:
            self._send_all(messages)

    def commit(self, source: KafkaSource, offsets: dict[TopicPartition, int], group: Any = None) -> None:
        """Step 7. ``group`` is the membership snapshot taken when the batch was polled."""
        try:
            source.commit(offsets)
        except CommitFailedError as exc:
            log.warning("offsets of a batch were not committed (partitions moved to another worker; "
                        "they will be reprocessed there): %s", exc)
        except KafkaError as exc:
            raise DeliveryError(f"offset commit failed: {exc!r}") from exc

    def abandon(self) -> None:
        """Give up the current batch (at-least-once: its alerts are out; it will be redelivered)."""

    def reset(self) -> None:
        """Drop the producer after a failure; the next batch starts a fresh one."""
        if self.producer is not None:
            try:
                self.producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - a broken producer may fail to close; we replace it anyway
                pass
            self.producer = None  # the next batch creates a fresh one (see ``_p``)

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=self.settings.delivery_timeout_s)
            self.producer = None


class TransactionSteps:
    """The exactly-once batch protocol of every transport: begin, send the alerts, add the offsets
    with the group membership of the poll (KIP-447: a zombie is fenced), commit; any failure aborts
    the transaction, and so does ``abandon``. Subclasses supply the client calls (``_begin``,
    ``_commit_offsets``, ``_abort_call``) next to a publisher's ``_send_all``."""

    transactional = True
    _open = False
    _send_all: Callable[[Sequence[OutMessage]], Any]

    def _begin(self) -> None:
        raise NotImplementedError

    def _commit_offsets(self, source: Any, offsets: dict[TopicPartition, int], group: Any) -> None:
        raise NotImplementedError

    def _abort_call(self) -> None:
        raise NotImplementedError

    def publish(self, messages: Sequence[OutMessage]) -> None:
        self._begin()
        self._open = True
        if messages:
            try:
                self._send_all(messages)
            except DeliveryError:
                self._abort()
                raise

    def commit(self, source: Any, offsets: dict[TopicPartition, int], group: Any = None) -> None:
        """Step 7 inside the transaction; ``group`` is the membership snapshot of the poll."""
        try:
            self._commit_offsets(source, offsets, group)
            self._open = False
        except DeliveryError:
            self._abort()
            raise

    def abandon(self) -> None:
        """Give up the current batch: its transaction (alerts included) is aborted."""
        self._abort()

    def _abort(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._abort_call()
        except DeliveryError as exc:
            log.warning("abort failed (%s); the producer will be replaced", exc)


class TransactionalPublisher(TransactionSteps, Publisher):
    """Exactly-once: alerts, dead letters and the batch's offsets in one Kafka transaction.

    The transactional id is stable per worker slot (``{group_id}-{worker_id}``), so a restarted
    worker fences its predecessor and aborts its open transaction at once instead of stalling
    ``read_committed`` readers until the transaction timeout. kafka-python's transaction calls
    wait without a timeout; each runs under a watchdog, and after a timeout or a fatal error the
    producer is replaced (``reset``), which fences and aborts whatever the old one left open.
    Offsets are sent with the consumer's group metadata (KIP-447), so a zombie that lost its
    partitions in a rebalance cannot commit.
    """

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._open = False

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.group_id}-{self.settings.worker_id}"

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config.update(transactional_id=self.transactional_id, enable_idempotence=True, acks="all",
                      transaction_timeout_ms=int(self.settings.transaction_timeout_s * 1000))
        return config

    def start(self) -> None:
        super().start()
        self._open = False
        assert self.producer is not None
        try:
            self._guard(self.producer.init_transactions, "init_transactions")
        except DeliveryError:
            self.producer.close(timeout=0)
            self.producer = None
            raise

    def _guard(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` on a daemon thread, waited for up to ``SD_DELIVERY_TIMEOUT_S``. A call that never
        returns keeps only its own daemon thread: a ThreadPoolExecutor's threads are joined at
        interpreter exit, so one stuck kafka-python call made the worker hang on shutdown (seen
        in the failover tier after brokers were killed)."""
        outcome: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=run, name=f"txn-watchdog-{what}", daemon=True).start()
        if not done.wait(self.settings.delivery_timeout_s):
            raise DeliveryError(f"{what} did not finish within {self.settings.delivery_timeout_s}s")
        ok, value = outcome[0]
        if ok:
            return value
        if isinstance(value, KafkaError):
            raise DeliveryError(f"{what} failed: {value!r}") from value
        raise value

    def _begin(self) -> None:
        """Local to the client (no round trip, so no watchdog); a producer left in a fatal or
        invalid transaction state refuses it, which holds the batch and replaces the producer."""
        producer = self._p()
        try:
            producer.begin_transaction()
        except KafkaError as exc:
            raise DeliveryError(f"begin_transaction failed: {exc!r}") from exc

    def _commit_offsets(self, source: KafkaSource, offsets: dict[TopicPartition, int], group: Any) -> None:
        """Offsets join the transaction with the membership *of the poll* (not the current one:
        kafka-python resets it to "no generation" when the member is evicted, which the broker
        would not fence), then the transaction commits."""
        producer = self._p()
        committed = {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        metadata = group if group is not None else source.group_metadata()
        self._guard(lambda: producer.send_offsets_to_transaction(committed, metadata), "send_offsets_to_transaction")
        self._guard(producer.commit_transaction, "commit_transaction")

    def _abort_call(self) -> None:
        self._guard(self._p().abort_transaction, "abort_transaction")

    def reset(self) -> None:
        self._open = False
        super().reset()

    def close(self) -> None:
        self._abort()
        super().close()


def make_publisher(settings: Settings) -> BatchPublisher:
    """The publisher of ``settings.delivery`` on ``settings.transport``."""
    exactly_once = settings.delivery == "exactly_once"
    if settings.transport == "confluent":
        confluent = confluent_transport()
        publisher: BatchPublisher = (confluent.ConfluentTransactionalPublisher(settings) if exactly_once
                                     else confluent.ConfluentPublisher(settings))
        return publisher
    return TransactionalPublisher(settings) if exactly_once else Publisher(settings)
