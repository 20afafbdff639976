"""The confluent-kafka transport's producing side (steps 6 and 7); ``confluent.py`` is the source.

``ConfluentPublisher`` produces every message, waits for every delivery report, then commits
through the consumer; ``ConfluentTransactions`` is the transactional producer that
``eos.ExactlyOnce`` drives (``ConfluentTransactionalPublisher``). Imports only ``base``, ``eos``,
``confluent`` and confluent-kafka.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from .base import DeliveryError, Membership, Offsets, OutMessage, Source, TransportConfig, commit_or_drop
from .confluent import ConfluentMembership, Throttled, confluent_producer_config, error_of, theirs
from .eos import ExactlyOnce

log = logging.getLogger("stream_detector.confluent")


class ConfluentSink:
    """``base.Sink`` on librdkafka: produce every message and wait for every delivery report; any
    message not acknowledged raises ``DeliveryError``. ``overrides`` are librdkafka properties
    with ``_`` for ``.``; the producer is (re)created on demand after a ``reset``."""

    def __init__(self, config: TransportConfig, **overrides: Any) -> None:
        self.config = config
        self.overrides = {k.replace("_", "."): v for k, v in overrides.items()}
        self.producer: Producer | None = None
        self._failed = Throttled("produce")

    def _config(self) -> dict[str, Any]:
        options = confluent_producer_config(self.config, **self.overrides)
        options["error_cb"] = self._on_error
        return options

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

    def publish(self, messages: Sequence[OutMessage]) -> None:
        if not messages:
            return
        producer = self._p()
        timeout = self.config.tuning.delivery_timeout_s
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
                        if m.partition is None:
                            producer.produce(m.topic, value=m.value, key=m.key, headers=list(m.headers),
                                             on_delivery=on_delivery)
                        else:  # librdkafka takes no partition=None: the argument only when set
                            producer.produce(m.topic, value=m.value, key=m.key, headers=list(m.headers),
                                             partition=m.partition, on_delivery=on_delivery)
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
            if producer.flush(self.config.tuning.delivery_timeout_s):
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.flush(0)


class ConfluentPublisher(ConfluentSink):
    """At-least-once delivery (``base.Publisher``) on librdkafka: publish, then commit offsets
    through the consumer. A commit refused because the partitions moved is logged and dropped."""

    transactional = False

    def commit(self, source: Source, offsets: Offsets, group: Membership | None = None) -> bool:
        """Step 7 (``base.commit_or_drop``); ``group``, the poll's membership, is not needed here."""
        return commit_or_drop(source, offsets)

    def abandon(self) -> None:
        """Give up the current batch (at-least-once: its alerts are out; it will be redelivered)."""


class ConfluentTransactions(ConfluentSink):
    """The transactional producer (``eos.TransactionalClient``) on librdkafka: one transaction per
    batch holding the alerts, the dead letters and the offsets (sent with the group metadata of the
    poll, KIP-447). Every transaction call has a timeout (``SD_DELIVERY_TIMEOUT_S``), so no
    watchdog thread is needed; an abortable error aborts, a fatal one replaces the producer
    (``reset``), which fences and aborts whatever the old one left open, as does a restarted
    worker with the same id."""

    @property
    def transactional_id(self) -> str:
        return self.config.transactional_id

    def _config(self) -> dict[str, Any]:
        options = super()._config()
        txn_ms = self.config.tuning.transaction_timeout_ms
        options.update({"transactional.id": self.transactional_id, "enable.idempotence": True, "acks": "all",
                        "transaction.timeout.ms": txn_ms,
                        # librdkafka refuses a delivery timeout longer than the transaction timeout
                        "delivery.timeout.ms": min(options["delivery.timeout.ms"], txn_ms)})
        return options

    def start(self) -> None:
        super().start()
        try:
            self._call(lambda p: p.init_transactions(self.config.tuning.delivery_timeout_s), "init_transactions")
        except DeliveryError:
            self.producer = None
            raise

    def _call(self, call: Any, what: str) -> None:
        producer = self.producer
        assert producer is not None
        try:
            call(producer)
        except KafkaException as exc:
            error = error_of(exc)
            if error is not None and error.fatal():
                log.warning("%s: fatal producer error, replacing the producer: %s", what, error)
                self.reset()
            raise DeliveryError(f"{what} failed: {exc!r}") from exc

    def begin(self) -> None:
        self._p()
        self._call(lambda p: p.begin_transaction(), "begin_transaction")

    def send_offsets(self, source: Source, offsets: Offsets, group: Membership | None) -> None:
        """Offsets join the transaction with the membership *of the poll* (a zombie is fenced by
        the broker)."""
        self._p()
        positions = [theirs(tp, o) for tp, o in offsets.items()]
        token = group if group is not None else source.membership()
        if not isinstance(token, ConfluentMembership):
            raise DeliveryError(f"not a confluent-kafka group membership: {token!r}", retriable=False)
        timeout = self.config.tuning.delivery_timeout_s
        self._call(lambda p: p.send_offsets_to_transaction(positions, token.metadata, timeout),
                   "send_offsets_to_transaction")

    def commit(self) -> None:
        self._p()
        self._call(lambda p: p.commit_transaction(self.config.tuning.delivery_timeout_s), "commit_transaction")

    def abort(self) -> None:
        if self.producer is not None:  # no producer (replaced after a fatal error): nothing is open
            self._call(lambda p: p.abort_transaction(self.config.tuning.delivery_timeout_s), "abort_transaction")


class ConfluentTransactionalPublisher(ExactlyOnce):
    """Exactly-once on librdkafka: ``eos.ExactlyOnce`` over ``ConfluentTransactions``."""

    client: ConfluentTransactions

    def __init__(self, config: TransportConfig, **overrides: Any) -> None:
        super().__init__(ConfluentTransactions(config, **overrides))
