"""Topic administration: create the input, alerts and dead-letter topics when missing; delete a
repartition topic's consumed records (``RecordPurge``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .settings import Settings

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int | None = None,
                  ready_timeout_s: float = 10.0, configs: Mapping[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. ``configs``: topic
    configs for the ones created (e.g. ``{"message.timestamp.type": "LogAppendTime"}``).

    Returns once the brokers describe every created topic with a leader for each partition (or
    after ``ready_timeout_s``): a consumer that subscribes right after (a worker with
    ``SD_CREATE_TOPICS``) must see the topic in its first metadata, else kafka-python joins the
    group with no partitions until its next metadata refresh (minutes)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        existing = set(admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        new = [NewTopic(n, partitions or settings.topic_partitions, settings.topic_replication or -1,
                        topic_configs=dict(configs or {})) for n in wanted]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:  # another process won the race: fine
            pass
        deadline = time.monotonic() + ready_timeout_s
        while not _described(admin, wanted) and time.monotonic() < deadline:
            threading.Event().wait(0.05)  # the controller has the topic; the brokers catch up
        return wanted
    finally:
        admin.close()


def _described(admin: KafkaAdminClient, names: list[str]) -> bool:
    """Every topic in ``names`` is known with a leader for each of its partitions."""
    try:
        found = admin.describe_topics(names)
    except KafkaError:
        return False
    return len(found) == len(names) and all(
        t.get("error_code") == 0 and t.get("partitions") and all(p.get("leader_id", -1) >= 0 for p in t["partitions"])
        for t in found)


def topic_partitions(settings: Settings, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        meta = admin.describe_topics([topic])
        return len(meta[0]["partitions"])
    finally:
        admin.close()


def missing_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    """The topics of ``names`` the cluster does not have (one metadata request), in their order."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [n for n in dict.fromkeys(names) if n not in existing]


def topic_exists(settings: Settings, topic: str) -> bool:
    """Whether the cluster has ``topic`` (one metadata request)."""
    return not missing_topics(settings, [topic])


class RecordPurge:
    """Deletes a topic's records below the offsets its consumer group has committed (Kafka's
    DeleteRecords, ``KafkaAdminClient.delete_records``), at most once per ``every_ms`` (the first
    one interval after it is made), on a thread of its own: the caller never waits for the
    broker. Kafka Streams does the same to its repartition topics
    (``repartition.purge.interval.ms``, default 30 s): the records a downstream stage has
    consumed are not needed again, since a restart reads from the committed offsets.
    Here: stage 2's repartition topic (``SD_REPARTITION_PURGE_MS``).

    ``committed`` takes {partition: committed offset (the next to read)} after each commit; the
    largest offset per partition since the last purge is kept, and sent once the interval has
    passed and no purge is in flight (a purge that ends with newer offsets pending sends them
    when due). A purge that fails is logged at WARNING and its offsets sent again with the next
    one: the records stay until then (the topic's retention bounds them). ``delete``: the call that
    purges ({partition: offset} → None; default the admin client's, built on first use), for the
    unit tests."""

    def __init__(self, settings: Settings, topic: str, every_ms: int,
                 delete: Callable[[Mapping[int, int]], None] | None = None) -> None:
        self.settings, self.topic, self.every_s = settings, topic, every_ms / 1000.0
        self._delete = delete or self._admin_delete
        self._admin: KafkaAdminClient | None = None
        self._lock = threading.Lock()
        self._wanted: dict[int, int] = {}  # partition → the largest committed offset not purged yet
        self._done: dict[int, int] = {}  # partition → the offset of its last purge
        self._busy = False
        self._last = time.monotonic()  # of the last purge started: the first comes one interval after the start
        self._thread: threading.Thread | None = None
        self.purges = 0  # purges that succeeded
        self.failures = 0

    def committed(self, offsets: Mapping[int, int]) -> None:
        """Offsets committed by this worker's group: {partition: the next offset to read}."""
        with self._lock:
            for p, offset in offsets.items():
                if offset > max(self._wanted.get(p, 0), self._done.get(p, 0)):
                    self._wanted[p] = offset
            self._maybe_start()

    def _maybe_start(self) -> None:  # under the lock
        if self._busy or not self._wanted or time.monotonic() - self._last < self.every_s:
            return
        batch, self._wanted = self._wanted, {}
        self._busy, self._last = True, time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(batch,), name="sd-purge", daemon=True)
        self._thread.start()

    def _run(self, batch: dict[int, int]) -> None:
        try:
            self._delete(batch)
        except Exception as exc:  # noqa: BLE001 - a purge is housekeeping: the worker goes on
            self.failures += 1
            log.warning("could not delete the consumed records of %s below %s: %s (tried again with the next "
                        "purge; the topic's retention bounds them meanwhile)", self.topic, batch, exc)
            with self._lock:
                for p, offset in batch.items():
                    self._wanted[p] = max(offset, self._wanted.get(p, 0))
                self._busy = False
            return
        (log.info if not self.purges else log.debug)(
            "deleted the records of %s below the committed offsets on %d partition(s)%s", self.topic, len(batch),
            " (the first purge; the next ones are logged at DEBUG)" if not self.purges else "")
        with self._lock:
            self.purges += 1
            self._done.update(batch)
            self._busy = False
            self._maybe_start()

    def purged(self) -> dict[int, int]:
        """{partition: the offset below which its records were deleted} so far (this worker's purges)."""
        with self._lock:
            return dict(self._done)

    def _admin_delete(self, offsets: Mapping[int, int]) -> None:
        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers,
                                           client_id="stream-detector-purge", **self.settings.kafka_security())
        self._admin.delete_records({KafkaTopicPartition(self.topic, p): o for p, o in offsets.items()},
                                   timeout_ms=10_000)

    def close(self, timeout_s: float = 5.0) -> None:
        """Waits for a purge in flight (up to ``timeout_s``), then closes the admin client."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        if self._admin is not None:
            self._admin.close()
            self._admin = None
