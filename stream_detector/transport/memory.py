"""An in-process transport: a tiny "broker" for fast worker tests without Kafka.

``MemoryBroker`` holds topics (partitions as lists of ``Record``), committed offsets per consumer
group and a generation per group that a test bumps (``evict``) to simulate a rebalance or an
eviction (``MemorySource.rebalance``: one that calls the source's revoke hook first, as the Kafka
clients do; ``MemorySource.revoke``: the hook alone). ``MemorySource``, ``MemoryPublisher``
(at-least-once) and ``MemoryTransactionalPublisher`` (``eos.ExactlyOnce`` over
``MemoryTransactions``) keep the contract of the Kafka adapters
(``tests/contract``): offsets move only by a commit; a commit of a stale generation is refused
(dropped at-least-once, fenced with ``DeliveryError`` in a transaction); a transaction's messages
and offsets appear together at its commit, and an abort drops them — readers only ever see
committed data, as ``read_committed`` consumers do. ``fail_sends`` makes the next sends fail.
Thread-safe (one lock); polls never wait.
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .base import (
    Batch,
    CommitRefused,
    DeliveryError,
    Membership,
    Offsets,
    OutMessage,
    Source,
    TopicPartition,
    commit_or_drop,
    commit_revoked,
)
from .eos import ExactlyOnce

_members = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Record:
    """One stored record; ``timestamp`` in ms since the epoch (append time)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = -1


def _refuse(offsets: Offsets) -> None:
    """``MemorySource.revoke(refuse_commit=True)``'s commit."""
    raise CommitRefused(f"the commit of {len(offsets)} partitions in the rebalance failed (MemorySource.revoke)")


@dataclass(frozen=True, slots=True)
class MemoryMembership(Membership):
    group: str
    generation: int
    member: int


@dataclass
class MemoryBroker:
    """Topics, committed offsets and group generations; every method is atomic."""

    topics: dict[str, list[list[Record]]] = field(default_factory=dict)
    fail_sends: int = 0  # the next this-many publish calls raise DeliveryError (nothing is stored)
    _committed: dict[str, Offsets] = field(default_factory=dict)
    _generations: dict[str, int] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        with self._lock:
            self.topics.setdefault(name, [[] for _ in range(partitions)])

    def append(self, messages: Sequence[OutMessage], partition: int | None = None) -> None:
        """Store ``messages`` (topics created with one partition when missing); a key picks its
        partition by CRC32, no key the first partition, unless the message or ``partition`` names one."""
        with self._lock:
            for m in messages:
                self.create_topic(m.topic)
                parts = self.topics[m.topic]
                p = (m.partition if m.partition is not None else partition if partition is not None
                     else zlib.crc32(m.key) % len(parts) if m.key else 0)
                parts[p].append(Record(m.key, m.value, tuple(m.headers), int(time.time() * 1000)))

    def produce(self, topic: str, values: Sequence[bytes | None], partition: int = 0) -> None:
        self.append([OutMessage(topic, None, v, []) for v in values], partition)

    def read(self, topic: str) -> list[Record]:
        """Every committed record of ``topic``, partition by partition in offset order."""
        with self._lock:
            return [r for part in self.topics.get(topic, []) for r in part]

    def end_offsets(self, topic: str) -> Offsets:
        with self._lock:
            return {TopicPartition(topic, p): len(part) for p, part in enumerate(self.topics.get(topic, []))}

    def committed(self, group: str) -> Offsets:
        with self._lock:
            return dict(self._committed.get(group, {}))

    def generation(self, group: str) -> int:
        with self._lock:
            return self._generations.get(group, 0)

    def evict(self, group: str) -> None:
        """A rebalance: every member of ``group`` must rejoin, their batches in flight are stale."""
        with self._lock:
            self._generations[group] = self.generation(group) + 1

    def commit(self, group: str, offsets: Offsets, generation: int) -> None:
        with self._lock:
            if generation != self.generation(group):
                raise CommitRefused(f"group {group} moved to generation {self.generation(group)}")
            self._committed.setdefault(group, {}).update(offsets)

    def take_send_failure(self) -> bool:
        with self._lock:
            if self.fail_sends <= 0:
                return False
            self.fail_sends -= 1
            return True

    def commit_transaction(self, messages: Sequence[OutMessage], offsets: Offsets,
                           membership: MemoryMembership | None) -> None:
        """Messages and offsets together, or nothing (a fenced membership raises ``DeliveryError``)."""
        with self._lock:
            if membership is not None:
                try:
                    self.commit(membership.group, offsets, membership.generation)
                except CommitRefused as exc:
                    raise DeliveryError(f"transaction fenced: {exc}", retriable=False) from exc
            self.append(messages)


class MemorySource:
    """``base.Source`` on a ``MemoryBroker``: one member of ``group_id`` owning every partition of
    ``topic`` (joined at ``start``, rejoined at the next poll after an ``evict``). A rejoin
    positions every partition at the committed offset (0 when none), like an eager rebalance."""

    def __init__(self, broker: MemoryBroker, topic: str, group_id: str, batch_size: int = 2048) -> None:
        self.broker, self.topic, self.group_id, self.batch_size = broker, topic, group_id, batch_size
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._generation = -1
        self._member = 0
        self._started = False
        self.on_revoke: Callable[[set[TopicPartition], bool], Offsets] | None = None  # base.Source (``rebalance``)
        self.on_revoke_done: Callable[[Offsets, bool], None] | None = None
        self._kept: dict[TopicPartition, int] | None = None  # positions a cooperative rebalance leaves (_join)

    def start(self) -> None:
        self.broker.create_topic(self.topic)
        self._started = True
        self._member = next(_members)
        self._join()

    def _join(self) -> None:
        committed = self.broker.committed(self.group_id)
        self._generation = self.broker.generation(self.group_id)
        if self._kept is not None:  # a cooperative rebalance (``rebalance(revoke=...)``): the rest stays as it was
            self._positions, self._kept = self._kept, None
        else:
            self._positions = {tp: committed.get(tp, 0) for tp in self.broker.end_offsets(self.topic)}
        self._paused &= set(self._positions)

    def _live(self) -> None:
        if not self._started:
            raise RuntimeError("source not started")
        if self._generation != self.broker.generation(self.group_id):
            self._join()

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:  # never waits: fill, wait_ms moot
        self._live()
        batch = Batch(topic=self.topic)
        with self.broker._lock:
            parts = self.broker.topics[self.topic]
            for tp, position in sorted(self._positions.items()):
                if tp in self._paused:
                    continue
                records = parts[tp.partition][position:position + self.batch_size - len(batch)]
                for offset, r in enumerate(records, start=position):
                    batch.partitions.append(tp.partition)
                    batch.offsets.append(offset)
                    batch.keys.append(r.key)
                    batch.values.append(r.value)
                    batch.timestamps.append(r.timestamp)
                    batch.headers.append(list(r.headers))
                self._positions[tp] = position + len(records)
        if len(batch):
            batch.polled_at = time.monotonic()
            batch.group = self.membership()
        return batch

    def commit(self, offsets: Offsets) -> None:
        """Raises ``CommitRefused`` when the generation moved since this member joined."""
        self.broker.commit(self.group_id, offsets, self._generation)

    def rebalance(self, refuse_commit: bool = False, revoke: set[int] | None = None) -> None:
        """A rebalance of this member's group as the Kafka clients run one (``base.Source``):
        ``revoke``, then the group's generation moves on, so the member joins again at its next
        poll. Eager (``revoke`` None, kafka-python's default assignors): every partition is taken
        and given back, read again from the committed offsets. Cooperative (confluent's
        cooperative-sticky): only the partitions ``revoke`` names go (to another member); the others
        stay this member's at their positions."""
        taken = self.revoke(refuse_commit, revoke)
        if revoke is not None:
            self._kept = {tp: at for tp, at in self._positions.items() if tp not in taken}
        self.broker.evict(self.group_id)

    def revoke(self, refuse_commit: bool = False, partitions: set[int] | None = None) -> set[TopicPartition]:
        """A rebalance's first half, while the partitions are still this member's: ``partitions``
        (default every one it holds) are revoked, the offsets ``on_revoke`` returns are committed
        (not, with ``refuse_commit``: a commit that fails) and ``on_revoke_done`` is told which;
        returns the partitions revoked. The second half is the broker's ``evict`` (``rebalance``
        does both); a test may run the worker in between."""
        self._live()
        taken = {tp for tp in self._positions if partitions is None or tp.partition in partitions}
        offsets = self.on_revoke(taken, False) if self.on_revoke is not None else {}
        if offsets:
            commit_revoked(self, offsets, _refuse if refuse_commit else self.commit)
        return taken

    def membership(self) -> MemoryMembership:
        return MemoryMembership(self.group_id, self._generation, self._member)

    def still_member(self, batch: Batch) -> bool:
        if not isinstance(batch.group, MemoryMembership):
            return True
        now = MemoryMembership(self.group_id, self.broker.generation(self.group_id), self._member)
        return batch.group == now

    def rewind_to_committed(self, batch: Batch) -> None:
        committed = self.broker.committed(self.group_id)
        for tp in batch.next_offsets():
            if tp in self._positions:
                self._positions[tp] = committed.get(tp, 0)

    def poll_while_paused(self, timeout_ms: int) -> None:
        self._live()
        self.pause_all()

    def pause_all(self) -> None:
        self._paused = set(self._positions)

    def resume_all(self) -> None:
        self._paused = set()

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def assignment(self) -> set[TopicPartition]:
        if not self._started:
            raise RuntimeError("source not started")
        return set(self._positions)

    def _ends(self) -> dict[int, int]:
        return {tp.partition: end for tp, end in self.broker.end_offsets(self.topic).items()}

    def highwaters(self) -> dict[int, int | None]:
        if not self._started:
            return {}
        return dict(self._ends())

    def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        committed = {tp.partition: o for tp, o in self.broker.committed(self.group_id).items()
                     if tp.topic == self.topic}
        return {p: committed[p] for p in partitions if p in committed}

    def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        ends = self._ends()
        return {p: ends.get(p, 0) for p in partitions}

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        if not self._started:
            return {}
        ends = self.broker.end_offsets(self.topic)
        return {tp.partition: max(ends.get(tp, 0) - position, 0) for tp, position in self._positions.items()}

    def close(self) -> None:
        self._started = False


class MemorySink:
    """``base.Sink``: ``publish`` stores every message at once (or raises ``DeliveryError`` while
    the broker's ``fail_sends`` counts down)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def start(self) -> None:
        pass

    def publish(self, messages: Sequence[OutMessage]) -> None:
        if messages and self.broker.take_send_failure():
            raise DeliveryError(f"injected: {len(messages)} records not acknowledged")
        self.broker.append(messages)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryPublisher(MemorySink):
    """At-least-once: a commit refused because the generation moved is logged and dropped."""

    transactional = False

    def commit(self, source: Source, offsets: Offsets, group: Membership | None = None) -> bool:
        return commit_or_drop(source, offsets)

    def abandon(self) -> None:
        pass


class MemoryTransactions:
    """``eos.TransactionalClient``: sends are held until ``commit`` stores them together with the
    offsets; ``abort`` (and ``start``/``reset``, which fence a predecessor) drop them."""

    def __init__(self, broker: MemoryBroker, transactional_id: str = "memory") -> None:
        self.broker = broker
        self._id = transactional_id
        self._pending: list[OutMessage] | None = None
        self._offsets: tuple[Offsets, MemoryMembership | None] = ({}, None)

    @property
    def transactional_id(self) -> str:
        return self._id

    def start(self) -> None:
        self._pending = None

    def begin(self) -> None:
        if self._pending is not None:
            raise DeliveryError("begin_transaction failed: a transaction is already open", retriable=False)
        self._pending, self._offsets = [], ({}, None)

    def publish(self, messages: Sequence[OutMessage]) -> None:
        if self._pending is None:
            raise DeliveryError("send outside a transaction", retriable=False)
        if messages and self.broker.take_send_failure():
            raise DeliveryError(f"injected: {len(messages)} records not acknowledged")
        self._pending.extend(messages)

    def send_offsets(self, source: Source, offsets: Offsets, group: Membership | None) -> None:
        token = group if group is not None else source.membership()
        if not isinstance(token, MemoryMembership):
            raise DeliveryError(f"not a memory group membership: {token!r}", retriable=False)
        self._offsets = (dict(offsets), token)

    def commit(self) -> None:
        if self._pending is None:
            raise DeliveryError("commit_transaction failed: no open transaction", retriable=False)
        pending, self._pending = self._pending, None
        self.broker.commit_transaction(pending, *self._offsets)

    def abort(self) -> None:
        self._pending = None

    def reset(self) -> None:
        self._pending = None

    def close(self) -> None:
        self._pending = None


class MemoryTransactionalPublisher(ExactlyOnce):
    """Exactly-once on the memory broker: ``eos.ExactlyOnce`` over ``MemoryTransactions``."""

    client: MemoryTransactions

    def __init__(self, broker: MemoryBroker, transactional_id: str = "memory") -> None:
        super().__init__(MemoryTransactions(broker, transactional_id))
