"""The transport's own vocabulary: what steps 1 (source), 6 (publish) and 7 (commit) exchange with
the rest of the worker, whatever Kafka client library sits underneath.

Nothing here imports a client library or the settings: each adapter (``kafka_python.py``,
``confluent.py``, ``memory.py``) converts between its client's types and these at its edge, and
``factory.py`` builds ``TransportConfig`` from ``Settings`` in one place. Errors are
``TransportError`` (``errors.py``), whose ``DeliveryError`` means "not delivered / not committed:
hold the batch".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import DeliveryError, TransportError

__all__ = [
    "Batch", "ClientTuning", "CommitRefused", "Committer", "Connection", "DeliveryError", "EndOffsets", "Membership",
    "Offsets", "OutMessage", "Publisher", "Sink", "Source", "TopicPartition", "TransportConfig", "TransportError",
    "Unreadable",
    "commit_or_drop", "fill_batch",
]

EndOffsets = Callable[[set[int]], dict[int, int]]
"""Partitions of the source's topic → the broker's end offsets now (``Source.end_offsets``): how
event-time alignment checks another worker's claim that its partition is idle."""

log = logging.getLogger("stream_detector.publish")


class CommitRefused(TransportError):
    """The group refused an offset commit because the partitions moved (a rebalance, an eviction):
    the new owner re-reads them, so the commit is dropped, not retried."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, retriable=False)


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """One partition of one topic. Adapters convert their client's own type to this one."""

    topic: str
    partition: int


Offsets = dict[TopicPartition, int]  # per partition, the next offset to read (what a commit stores)


class Membership:
    """Opaque token: the consumer-group membership (generation, member id, ...) a batch was polled
    under. Only the source that made it looks inside (``Source.still_member``) and the same
    adapter's committer (KIP-447 fencing of a zombie's transactional commit)."""

    __slots__ = ()


class Unreadable(bytes):
    """Stands in a batch for a record the Kafka client could not read (a corrupt batch, a codec it
    lacks): empty bytes carrying the client's error, so the record is dead-lettered with the reason
    ``unreadable_record`` and its offset advances instead of the poll failing forever."""

    message: str

    def __new__(cls, message: str) -> Unreadable:
        self = super().__new__(cls, b"")
        self.message = message
        return self


@dataclass(slots=True)
class Batch:
    """Records of one poll as parallel lists (one entry per record; no per-record objects).

    ``values[i]`` is the record's bytes (``None`` for a tombstone, an ``Unreadable`` for a record
    the client could not read), at ``partitions[i]``/``offsets[i]`` of ``topic``; ``timestamps``
    in ms (-1 when unknown); ``headers[i]`` a sequence of ``(str, bytes)``. ``group`` is the
    membership when the first record arrived (``None``: no group, never fenced). ``past``: per
    partition, an offset to commit up to even where this batch holds no record there (records the
    worker consumed but does not handle: a repartition topic's marks, ``without``).
    """

    topic: str = ""
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    polled_at: float = 0.0
    group: Membership | None = None
    past: dict[int, int] | None = None
    _ends: tuple[int, dict[int, int]] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def naming(cls, topic: str, partitions: Iterable[int]) -> Batch:
        """A batch of one placeholder record (offset 0, no value) per partition in ``partitions``:
        what ``Source.rewind_to_committed`` takes to rewind partitions rather than a polled batch."""
        parts = sorted(set(partitions))
        n = len(parts)
        return cls(topic=topic, partitions=parts, offsets=[0] * n, keys=[None] * n, values=[None] * n,
                   timestamps=[-1] * n, headers=[()] * n)

    def only(self, partitions: set[int]) -> Batch:
        """The records of this batch on ``partitions`` (a held batch after a rebalance)."""
        return self._rows([i for i, p in enumerate(self.partitions) if p in partitions],
                          None if self.past is None else {p: o for p, o in self.past.items() if p in partitions})

    def without(self, rows: Sequence[int]) -> Batch:
        """This batch without the records at ``rows`` (ascending), still committing past them
        (``past``): what a worker handles of a batch some of whose records are consumed and not
        handled (a repartition topic's marks, ``pipeline/repartition.py``)."""
        if not rows:
            return self
        drop = set(rows)
        return self._rows([i for i in range(len(self.values)) if i not in drop],
                          {tp.partition: o for tp, o in self.next_offsets().items()})

    def _rows(self, keep: list[int], past: dict[int, int] | None) -> Batch:
        """The records at ``keep`` (ascending), committing past ``past``."""
        return Batch(self.topic, [self.partitions[i] for i in keep], [self.offsets[i] for i in keep],
                     [self.keys[i] for i in keep], [self.values[i] for i in keep],
                     [self.timestamps[i] for i in keep], [self.headers[i] for i in keep], self.polled_at,
                     self.group, past)

    def next_offsets(self) -> Offsets:
        """Per partition, the offset after the last record of this batch (what to commit). Worked
        out once per batch (the commit, the alignment's heads and the metrics each ask; ~1 ms per
        8,192 records) and again only if records were added since."""
        if self._ends is None or self._ends[0] != len(self.offsets):
            ends: dict[int, int] = {}
            for p, o in zip(self.partitions, self.offsets, strict=True):  # ints only: one TopicPartition per partition
                if o + 1 > ends.get(p, -1):
                    ends[p] = o + 1
            for p, o in (self.past or {}).items():
                if o > ends.get(p, -1):
                    ends[p] = o
            self._ends = (len(self.offsets), ends)
        return {TopicPartition(self.topic, p): o for p, o in self._ends[1].items()}


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One record to publish (an alert, a dead letter, a record of a repartition topic); headers are
    ``(name, bytes)`` pairs."""

    topic: str
    key: bytes | None
    value: bytes | None  # None only for a dead-lettered tombstone (kept null, distinct from b"")
    headers: list[tuple[str, bytes]]
    partition: int | None = None  # None: the client's partitioner picks it from the key (a repartition topic's: set)


@dataclass(frozen=True, slots=True)
class Connection:
    """How every client reaches the cluster; each adapter renders it under its client's option names.

    ``security_protocol`` is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; the SASL fields are set
    only for SASL_*, ``ssl_cafile`` only for *SSL with a CA bundle (None: the system trust store).
    """

    bootstrap_servers: tuple[str, ...]
    client_id: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None


@dataclass(frozen=True, slots=True)
class ClientTuning:
    """Consumer and producer tuning, written once for every adapter (values, not option names).

    The consumer never auto-commits and reads ``read_committed``; ``acks`` is ``"all"``, 0 or 1
    (idempotence only with ``"all"``).
    """

    batch_size: int = 2048  # most records a batch holds (also the consumer's max records per poll)
    batch_max_wait_ms: int = 50  # after the first record, how long a batch may wait to fill
    auto_offset_reset: str = "earliest"
    cooperative: bool = True  # cooperative-sticky, else eager range/round-robin
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    max_poll_interval_ms: int = 300_000
    fetch_max_bytes: int = 64 * 1024 * 1024
    max_partition_fetch_bytes: int = 16 * 1024 * 1024
    fetch_min_bytes: int = 1
    acks: int | str = "all"
    linger_ms: int = 2
    producer_batch_bytes: int = 256 * 1024
    max_request_bytes: int = 16 * 1024 * 1024
    delivery_timeout_s: float = 30.0  # bounds every send, flush and transaction call
    transaction_timeout_s: float = 30.0
    metadata_max_age_ms: int = 300_000  # the consumer sees partitions added to its topics within this

    @property
    def fetch_max_wait_ms(self) -> int:
        return max(1, self.batch_max_wait_ms)

    @property
    def delivery_timeout_ms(self) -> int:
        return int(self.delivery_timeout_s * 1000)

    @property
    def request_timeout_ms(self) -> int:
        return min(30_000, int(self.delivery_timeout_s * 500))

    @property
    def transaction_timeout_ms(self) -> int:
        return int(self.transaction_timeout_s * 1000)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Everything an adapter needs: where (``connection``), how (``tuning``), which input ``topic``
    and consumer ``group_id``, and the ``transactional_id`` of this worker slot (exactly-once)."""

    connection: Connection
    tuning: ClientTuning
    topic: str
    group_id: str
    transactional_id: str


class Source(Protocol):
    """The consumer side (step 1) and the group's offsets. Explicit ``start``/``close``; no network
    I/O before ``start`` (``RuntimeError`` when called before it). ``poll_batch`` rides out
    retriable client errors; others propagate as the client raised them. ``commit`` raises
    ``CommitRefused`` when the partitions moved, else ``TransportError``; so do ``assignment``
    and ``highwaters``. ``on_revoke(partitions, lost)``, when set, is called inside ``poll_batch``
    with the partitions a rebalance takes away: revoked (``lost`` False), while they are still this
    consumer's, the offsets it returns are committed before the rebalance goes on (the worker's
    write-behind window, ``entity/behind.py``; a failed commit is logged: their new owner reads
    them again); lost (evicted, ``lost`` True), nothing can be committed and what it returns is
    ignored. A rebalance that only adds partitions does not call it. ``on_revoke_done(offsets,
    committed)``, when set, is called on the same thread right after the commit of what
    ``on_revoke`` returned (only when it returned offsets), with whether the commit went through —
    also when it raised: the hook's caller learns the outcome before the rebalance goes on (the
    worker keeps its window as it is between the two calls, ``Worker._revoking``)."""

    on_revoke: Callable[[set[TopicPartition], bool], Offsets] | None
    on_revoke_done: Callable[[Offsets, bool], None] | None

    def start(self) -> None: ...
    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch: ...
    def commit(self, offsets: Offsets) -> None: ...
    def membership(self) -> Membership: ...
    def still_member(self, batch: Batch) -> bool: ...
    def rewind_to_committed(self, batch: Batch) -> None: ...
    def poll_while_paused(self, timeout_ms: int) -> None: ...
    def pause_all(self) -> None: ...
    def resume_all(self) -> None: ...
    def paused(self) -> set[TopicPartition]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def highwaters(self) -> dict[int, int | None]: ...

    def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The broker's end offset (the offset the next record appended gets) of these partitions
        of the source's topic, assigned to this consumer or not: one round trip. Event-time
        alignment checks another worker's claim that its partition is idle with it
        (``pipeline/align.py``). ``TransportError`` when the broker does not answer."""
        ...

    def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The consumer group's committed offset (the next to read) of these partitions of the
        source's topic, asked of the group coordinator now (a partition without a commit is left
        out): a round trip, for the rare check of whether the group has moved past a batch
        (``Worker._overtaken``). ``TransportError`` when the broker does not answer."""
        ...

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        """Per assigned partition, how many records the client has still to hand out: its high
        watermark minus its position (0: at its end, as far as the client knows), None while either
        is unknown. ``ask``: where the client has cached no high watermark, ask the broker (a
        blocking round trip)."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """The producing side (step 6): ``publish`` returns once every message is acknowledged, else
    raises ``DeliveryError``; ``reset`` drops the client after a failure (the next call makes one)."""

    def start(self) -> None: ...
    def publish(self, messages: Sequence[OutMessage]) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class Committer(Protocol):
    """Step 7: move the offsets of a published batch. ``group`` is the membership of its poll.
    A commit refused by a rebalance is dropped and the partitions still held are rewound (the
    batch is read again, here or by their new owner);
    any other failure raises ``DeliveryError``. ``transactional``: commits are part of a
    transaction with the batch's messages (a failed commit may then be in doubt)."""

    transactional: bool

    def commit(self, source: Source, offsets: Offsets, group: Membership | None = None) -> bool:
        """Commit ``offsets``: True once committed; False when a rebalance refused them (dropped,
        the partitions rewound: ``commit_or_drop``); other failures raise ``DeliveryError``."""
        ...

    def abandon(self) -> None: ...


class Publisher(Sink, Committer, Protocol):
    """What the worker holds for steps 6 and 7: a sink that also commits."""


def commit_revoked(source: Source, offsets: Offsets, commit: Callable[[Offsets], None]) -> None:
    """What a transport does with the offsets ``source.on_revoke`` returned, inside its rebalance
    callback (``Source``): ``commit`` them and tell ``source.on_revoke_done`` whether that went
    through, also when it raised. A failure is logged, not raised: the rebalance goes on, and the
    partitions' new owner reads them again. (kafka-python's listener awaits its commit: the same
    steps, written out there.)"""
    committed = False
    try:
        commit(offsets)
        committed = True
    except Exception as exc:  # noqa: BLE001 - inside the client's callback: the rebalance goes on
        logging.getLogger("stream_detector.source").warning(  # the consumer's logger, as the clients' lines
            "offsets of partitions being revoked were not committed (read again by their new owner): %r", exc)
    finally:
        if source.on_revoke_done is not None:
            source.on_revoke_done(offsets, committed)


def commit_or_drop(source: Source, offsets: Offsets) -> bool:
    """Step 7 of at-least-once delivery on every transport: commit through the consumer. A commit
    refused by a rebalance (``CommitRefused``) is logged and dropped, and the partitions in
    ``offsets`` that this consumer still holds are rewound to the group's committed offsets: the
    batch is read again here, or by the partitions' new owner. Any other failure raises
    ``DeliveryError`` (the batch is held and retried); so does a rewind that fails. Returns True
    when committed, False when refused (and rewound)."""
    try:
        source.commit(offsets)
        return True
    except CommitRefused as exc:
        log.warning("offsets of a batch were not committed (the group is rebalancing, or the partitions "
                    "moved: their new owner reads them again): %s", exc)
        # a cooperative rebalance may leave some of them with this worker, its position past the batch:
        # read those again from the committed offsets, or nothing would ever commit them (a finite backlog
        # would never drain; a restart would read them again anyway)
        topics: dict[str, set[int]] = {}
        for tp in offsets:
            topics.setdefault(tp.topic, set()).add(tp.partition)
        for topic, partitions in topics.items():
            source.rewind_to_committed(Batch.naming(topic, partitions))
        return False
    except TransportError as exc:
        raise DeliveryError(f"offset commit failed: {exc!r}") from exc


def fill_batch(batch: Batch, tuning: ClientTuning, idle_poll_ms: int, take: Callable[[int, int, bool], None],
               membership: Callable[[], Membership], fill: bool = True, wait_ms: int | None = None) -> Batch:
    """The batching rule of every transport: wait up to ``idle_poll_ms`` for a first record, then up
    to ``batch_max_wait_ms`` to fill ``batch`` to ``batch_size``. ``take(max_records, timeout_ms,
    first)`` appends what one poll returned; ``membership()`` is snapshotted with the first record
    (the group generation a commit of this batch must belong to). ``fill`` False: return with the
    first poll that brought records, without waiting to fill (the alignment step, holding records
    until other partitions catch up, wants what the client has now, not a full batch). ``wait_ms``:
    wait at most that long for a first record (0: take what the client has fetched already), when
    less than ``idle_poll_ms`` (the alignment step, waiting for another worker's partition, looks at
    the peers' heads again by its own deadline instead of blocking in the client)."""
    limit = tuning.batch_size
    deadline: float | None = None
    timeout_ms = idle_poll_ms if wait_ms is None else max(0, min(idle_poll_ms, wait_ms))
    while len(batch) < limit:
        take(limit - len(batch), timeout_ms, deadline is None)
        now = time.monotonic()
        if not batch.values:
            break
        if deadline is None:
            batch.polled_at = now
            batch.group = membership()
            if not fill:
                break
            deadline = now + tuning.batch_max_wait_ms / 1000.0
        timeout_ms = int((deadline - now) * 1000)
        if timeout_ms <= 0:
            break
    return batch
