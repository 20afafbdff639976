"""The kafka-python transport's producing side (steps 6 and 7); ``kafka_python.py`` is the source.

``KafkaPublisher`` (at-least-once) sends, waits for every acknowledgement (each send future is
checked: kafka-python's ``flush()`` does not report failed records), then commits through the
consumer. ``KafkaTransactions`` is the transactional producer ``eos.ExactlyOnce`` drives. Any
failure to deliver raises ``DeliveryError`` and the worker does not commit (the batch is redelivered).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from .base import DeliveryError, Membership, Offsets, OutMessage, Source, TransportConfig, commit_or_drop
from .eos import ExactlyOnce, watchdog
from .kafka_python import KafkaMembership, connection_options, theirs


def producer_config(config: TransportConfig, **overrides: Any) -> dict[str, Any]:
    """The alert producer's kafka-python options; ``overrides`` win."""
    t = config.tuning
    acks = t.acks
    options: dict[str, Any] = dict(
        connection_options(config.connection),
        acks=acks,
        enable_idempotence=acks == "all",
        linger_ms=t.linger_ms,
        batch_size=t.producer_batch_bytes,
        max_request_size=t.max_request_bytes,
        retries=2_147_483_647,
        delivery_timeout_ms=t.delivery_timeout_ms,
        request_timeout_ms=t.request_timeout_ms,
    )
    options["client_id"] = f"{config.connection.client_id}-out"
    options.update(overrides)
    return options


class KafkaSink:
    """``base.Sink`` on kafka-python: ``publish`` returns when every message is acknowledged,
    else raises ``DeliveryError``. The producer is (re)created on demand after a ``reset``."""

    def __init__(self, config: TransportConfig, **overrides: Any) -> None:
        self.config = config
        self.overrides = overrides
        self.producer: KafkaProducer | None = None

    def _config(self) -> dict[str, Any]:
        return producer_config(self.config, max_block_ms=self.config.tuning.delivery_timeout_ms, **self.overrides)

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

    def publish(self, messages: Sequence[OutMessage]) -> None:
        if not messages:
            return
        producer = self._p()
        try:
            futures = [producer.send(m.topic, value=m.value, key=m.key, headers=m.headers, partition=m.partition)
                       for m in messages]
            producer.flush(timeout=self.config.tuning.delivery_timeout_s)
        except Exception as exc:  # kafka-python raises a zoo of types here; all mean "not delivered"
            raise DeliveryError(f"send failed: {exc!r}") from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "timed out"
            raise DeliveryError(f"{len(failed)} of {len(futures)} records not acknowledged: {first!r}")

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
            self.producer.close(timeout=self.config.tuning.delivery_timeout_s)
            self.producer = None


class KafkaPublisher(KafkaSink):
    """At-least-once delivery (``base.Publisher``): send, wait for every acknowledgement, then commit.

    A commit refused because the partitions moved to another worker (rebalance) is logged and
    dropped: the new owner reprocesses the batch. Other commit failures raise ``DeliveryError``.
    """

    transactional = False

    def commit(self, source: Source, offsets: Offsets, group: Membership | None = None) -> bool:
        """Step 7 (``base.commit_or_drop``); ``group``, the poll's membership, is not needed here."""
        return commit_or_drop(source, offsets)

    def abandon(self) -> None:
        """Give up the current batch (at-least-once: its alerts are out; it will be redelivered)."""


class KafkaTransactions(KafkaSink):
    """The transactional producer (``eos.TransactionalClient``) on kafka-python.

    The transactional id is stable per worker slot (``{group_id}-{worker_id}``), so a restarted
    worker fences its predecessor and aborts its open transaction at once instead of stalling
    ``read_committed`` readers until the transaction timeout. kafka-python's transaction calls
    wait without a timeout; each runs under ``eos.watchdog`` (``SD_DELIVERY_TIMEOUT_S``), and
    after a timeout or a fatal error the producer is replaced (``reset``), which fences and aborts
    whatever the old one left open. Offsets are sent with the group metadata of the poll (KIP-447).
    """

    @property
    def transactional_id(self) -> str:
        return self.config.transactional_id

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config.update(transactional_id=self.transactional_id, enable_idempotence=True, acks="all",
                      transaction_timeout_ms=self.config.tuning.transaction_timeout_ms)
        return config

    def start(self) -> None:
        super().start()
        assert self.producer is not None
        try:
            self._guard(self.producer.init_transactions, "init_transactions")
        except DeliveryError:
            self.producer.close(timeout=0)
            self.producer = None
            raise

    def _guard(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` under the watchdog; kafka-python errors become ``DeliveryError``."""
        return watchdog(call, what, self.config.tuning.delivery_timeout_s, translate=(KafkaError,))

    def begin(self) -> None:
        """Local to the client (no round trip, so no watchdog); a producer left in a fatal or
        invalid transaction state refuses it, which holds the batch and replaces the producer."""
        producer = self._p()
        try:
            producer.begin_transaction()
        except KafkaError as exc:
            raise DeliveryError(f"begin_transaction failed: {exc!r}") from exc

    def send_offsets(self, source: Source, offsets: Offsets, group: Membership | None) -> None:
        """Offsets join the transaction with the membership *of the poll* (not the current one:
        kafka-python resets it to "no generation" when the member is evicted, which the broker
        would not fence)."""
        producer = self._p()
        committed = {theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        token = group if group is not None else source.membership()
        if not isinstance(token, KafkaMembership):
            raise DeliveryError(f"not a kafka-python group membership: {token!r}", retriable=False)
        metadata = token.metadata
        self._guard(lambda: producer.send_offsets_to_transaction(committed, metadata), "send_offsets_to_transaction")

    def commit(self) -> None:
        self._guard(self._p().commit_transaction, "commit_transaction")

    def abort(self) -> None:
        self._guard(self._p().abort_transaction, "abort_transaction")


class KafkaTransactionalPublisher(ExactlyOnce):
    """Exactly-once on kafka-python: ``eos.ExactlyOnce`` over ``KafkaTransactions``."""

    client: KafkaTransactions

    def __init__(self, config: TransportConfig, **overrides: Any) -> None:
        super().__init__(KafkaTransactions(config, **overrides))
