"""Small Kafka helpers shared by the demo, the benchmarks and the tests: lag and topic reads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from .errors import ConfigError
from .settings import Settings
from .transport.kafka_python import known_partitions as known_partitions  # re-exported: label_ingest, retrain
from .transport.kafka_python import partitions_of as partitions_of
from .transport.kafka_python import poll_readable


class NoSuchTopic(ConfigError):
    """The cluster has no topic ``topic`` (``group_lag``, ``tail``)."""

    def __init__(self, topic: str, bootstrap: str) -> None:
        super().__init__(f"no topic {topic} on {bootstrap}")
        self.topic = topic


def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """Each partition of ``topic``: the offset its next record will get (the high watermark)."""
    return _offsets(settings, topic, beginning=False)


def beginning_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """Each partition of ``topic``: the offset of its first record still held (the log start offset:
    above 0 once retention or a purge, ``topics.RecordPurge``, deleted records below it)."""
    return _offsets(settings, topic, beginning=True)


def _offsets(settings: Settings, topic: str, beginning: bool) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             **settings.kafka_security())
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        return dict(consumer.beginning_offsets(tps) if beginning else consumer.end_offsets(tps))
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, topic: str) -> dict[TopicPartition, int]:
    """Committed offsets of ``group`` on ``topic``; empty while the group coordinator is not ready yet."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security())
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    except KafkaError as exc:
        if getattr(exc, "retriable", False):
            return {}
        raise
    finally:
        admin.close()


@dataclass(frozen=True)
class Member:
    """A consumer group member as Kafka's ``kafka-consumer-groups.sh --describe`` names it:
    ``member_id`` (CONSUMER-ID: the client id and a suffix the coordinator gave it at its join;
    workers log it with each assignment, "assigned [...] as member ..."), ``host`` (the address it
    connected from) and ``client_id``."""

    member_id: str
    host: str
    client_id: str


@dataclass(frozen=True)
class GroupOwners:
    """``group_owners``: the group's ``state`` (``Stable``, ``PreparingRebalance``,
    ``CompletingRebalance``, ``Empty``, ``Dead``: no such group), its ``members`` count and, per
    partition of the topic, the members it is assigned to: one, or more where two members claim it
    (what an operator runs ``lag`` to find); a partition of no member is missing (nothing reads it
    now). The coordinator gives assignments only in a ``Stable`` group: while it rebalances none is
    known (``rebalancing``)."""

    state: str
    members: int
    owners: dict[int, list[Member]]
    idle: tuple[Member, ...] = ()  # members holding no partition of the topic (more members than partitions)

    @property
    def rebalancing(self) -> bool:
        return self.state in ("PreparingRebalance", "CompletingRebalance")


def group_owners(settings: Settings, group: str, topic: str) -> GroupOwners:
    """Which member of ``group`` holds each partition of ``topic`` now: one DescribeGroups request
    to the group's coordinator (joins nothing, disturbs no member). Raises ``KafkaError`` when the
    coordinator does not answer or refuses (kafka-python returns a group's error in its answer: a
    coordinator still loading, a group not authorised; a group that does not exist is state
    ``Dead``, not an error) and ``ValueError`` when a member's assignment is not the consumer
    protocol's (another client's group)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security())
    try:
        described = admin.describe_groups([group]).get(group) or {}
    finally:
        admin.close()
    return owners_of(described, topic)


def owners_of(described: dict[str, Any], topic: str) -> GroupOwners:
    """``group_owners`` from one group's entry of kafka-python's ``describe_groups`` answer (same errors)."""
    error = described.get("error")
    if error and "GroupIdNotFound" not in str(error):
        raise KafkaError(str(error))
    members = described.get("members") or []
    owners: dict[int, list[Member]] = {}
    idle = []
    for m in members:
        member = Member(str(m.get("member_id") or ""), str(m.get("client_host") or "").lstrip("/"),
                        str(m.get("client_id") or ""))
        assignment = m.get("member_assignment")
        given = assignment.get("assigned_partitions") if isinstance(assignment, dict) else None
        held = [int(p) for part in given or [] if part.get("topic") == topic for p in part.get("partitions") or []]
        for p in held:
            owners.setdefault(p, []).append(member)
        if not held:
            idle.append(member)
    return GroupOwners(str(described.get("group_state") or "Dead"), len(members), owners, tuple(idle))


def lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed (0 for a topic that does not exist)."""
    return sum(behind for *_, behind in _partition_lags(settings, group, topic))


def _partition_lags(settings: Settings, group: str, topic: str) -> list[tuple[int, int, int | None, int]]:
    """Per partition (ascending): (partition, end, committed or None, end − committed or end − 0);
    none for a topic that does not exist. The committed offsets are read first: a partition's end
    only grows, so a commit that lands between the two reads cannot pass the end read after it
    (read the other way round, a new-user trial's ``lag`` under live traffic showed a committed
    offset past the end, 1,885 records of lag for about 0, and "the topic recreated?")."""
    done = committed_offsets(settings, group, topic)
    ends = end_offsets(settings, topic)
    out = []
    for tp in sorted(ends, key=lambda t: t.partition):
        committed = done.get(tp)
        committed = committed if committed is not None and committed >= 0 else None
        out.append((tp.partition, ends[tp], committed, max(0, ends[tp] - (committed or 0))))
    return out


MARKER_GAP = 1_000  # group_lag reads a gap of up to this many offsets to count its records exactly


@dataclass(frozen=True)
class PartitionLag:
    """One partition's row of ``group_lag``: its ``end`` offset, the group's ``committed`` offset
    (None: none committed), ``lag`` (records the group has still to read) and how it was
    ``counted``: ``records`` (read as the group reads: exact), ``offsets`` (end − start: a gap over
    ``MARKER_GAP``, or one not read in time; in a topic written in transactions its markers count
    too), ``at_most`` (read up to a transaction still open, whose offsets count: an upper bound)."""

    partition: int
    end: int
    committed: int | None
    lag: int
    counted: str
    log_start: int = 0  # the partition's first offset still held (above 0 after retention or a purge)


def group_lag(settings: Settings, group: str, topic: str, is_record: Callable[[Any], bool] | None = None,
              reset: str = "earliest") -> list[PartitionLag]:
    """Per partition of ``topic`` (ascending), what ``group`` has still to read (``PartitionLag``).

    The group reads from its committed offset, or, with none (or one outside the partition's
    offsets, as after the topic was recreated), as its reset policy ``reset`` says: from the log
    start offset (``earliest``) or from the end (``latest``: nothing to read). A gap of at most
    ``MARKER_GAP`` offsets is read as a read-committed reader reads it (``unread_records``): in a
    topic written in transactions (the two stages' repartition topic) commit and abort markers and
    aborted records take offsets but are never read, and a drained partition ended one offset short
    of the end (a new-user trial's headline "lag 48" on a drained topic); ``is_record`` leaves out
    records the readers do not count as work (the repartition topic's marks). Larger gaps are
    end − start. Raises ``ConfigError`` when Kafka cannot be reached or the topic does not exist."""
    try:
        rows = _partition_lags(settings, group, topic)
        held = {tp.partition: offset for tp, offset in beginning_offsets(settings, topic).items()} if rows else {}
        starts = {p: held.get(p, 0) for p, *_ in rows}
        froms = {p: (committed if committed is not None and starts[p] <= committed <= end
                     else end if reset == "latest" else starts[p]) for p, end, committed, _ in rows}
        gaps = {p: (froms[p], end) for p, end, _, _ in rows if 0 < end - froms[p] <= MARKER_GAP}
        counted = unread_records(settings, topic, gaps, is_record=is_record) if gaps else {}
    except KafkaError as exc:
        raise ConfigError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    if not rows:
        raise NoSuchTopic(topic, settings.kafka_bootstrap)
    out = []
    for p, end, committed, _ in rows:
        if p in counted:
            n, bounded = counted[p]
            out.append(PartitionLag(p, end, committed, n, "at_most" if bounded else "records", starts[p]))
        else:
            behind = max(0, end - froms[p])
            out.append(PartitionLag(p, end, committed, behind, "offsets" if behind else "records", starts[p]))
    return out


def unread_records(settings: Settings, topic: str, gaps: dict[int, tuple[int, int]], timeout_s: float = 10.0,
                   is_record: Callable[[Any], bool] | None = None) -> dict[int, tuple[int, bool]]:
    """Per partition of ``topic`` in ``gaps`` (partition → (start, end) offsets): (how many records
    a read-committed consumer gets from ``start`` up to ``end``, whether that is an upper bound).
    Transaction markers and aborted records are skipped, as the group's own reads skip them;
    ``is_record(record)`` false leaves a record out too. Offsets from the partition's last stable
    offset on (a transaction still open: a read-committed reader cannot pass it yet) count as
    records: an upper bound. A partition whose read does not reach its last stable offset within
    ``timeout_s`` is left out: its caller keeps end − start. A ``start`` below the log start
    (records deleted by retention) reads from the log start, as the workers' reset policy does.
    Joins no group."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             isolation_level="read_committed", auto_offset_reset="earliest",
                             **settings.kafka_security())
    try:
        tps = {TopicPartition(topic, p): (start, end) for p, (start, end) in gaps.items()}
        stable = consumer.end_offsets(list(tps))  # read-committed: the last stable offsets
        until = {tp: min(end, stable.get(tp, end)) for tp, (_start, end) in tps.items()}
        consumer.assign(list(tps))
        for tp, (start, _end) in tps.items():
            consumer.seek(tp, start)
        counts = {tp: max(0, end - max(start, until[tp])) for tp, (start, end) in tps.items()}  # open: offsets
        bounded = {tp for tp, count in counts.items() if count}
        reached: set[TopicPartition] = set()
        deadline = time.monotonic() + timeout_s
        while True:
            # position() is None while a reset is pending (the log start moved past ``start``)
            reached = {tp for tp in tps if (at := consumer.position(tp)) is not None and at >= until[tp]}
            if len(reached) == len(tps) or time.monotonic() >= deadline:
                break
            # a record the client cannot read (a corrupt batch, a codec missing) is one record to read
            # (the worker dead-letters it), not an error that fails the command
            for tp, records in poll_readable(consumer, 100, quiet=True).items():
                counts[tp] += sum(1 for r in records if r.offset < until[tp] and (is_record is None or is_record(r)))
        return {tp.partition: (counts[tp], tp in bounded) for tp in reached}
    finally:
        consumer.close()


def wait_for_zero_lag(settings: Settings, group: str, topic: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lag(settings, group, topic) == 0:
            return True
        time.sleep(0.2)
    return False


def read_all(settings: Settings, topic: str, timeout_s: float = 30.0,
             isolation_level: str = "read_uncommitted") -> list[Any]:
    """Every record currently in ``topic`` (from the beginning up to the end offsets at call time).

    With ``isolation_level="read_committed"`` records of aborted transactions are skipped, as an
    alert consumer of an exactly-once deployment would see them.
    """
    ends = end_offsets(settings, topic)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest", isolation_level=isolation_level,
                             **settings.kafka_security())
    try:
        tps = list(ends)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        remaining = {tp for tp, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for tp, batch in poll_readable(consumer, 200).items():
                for r in batch:
                    if r.offset < ends[tp]:
                        records.append(r)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if remaining:
            raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
        return records
    finally:
        consumer.close()


def tail(settings: Settings, topic: str, last: int, follow: bool, out: Callable[[Any], None],
         poll_ms: int = 500, stop: Callable[[], bool] = lambda: False,
         following: Callable[[], None] = lambda: None) -> int:
    """The last ``last`` records of ``topic`` over all its partitions, oldest first (by record
    timestamp, then partition and offset), each given to ``out``; with ``follow``, then every new
    record as it arrives, until ``stop()`` is true (``following()`` is called once, when every
    record produced from then on will be given). ``stop()`` is asked between polls, at least every
    ``poll_ms``; true while the backlog is read, it raises ``KeyboardInterrupt`` once the consumer
    is closed. Reads committed records only (an exactly-once deployment's aborted alerts are never
    shown) and joins no consumer group: nothing is committed, no worker is disturbed. Returns how
    many records were given. Raises ``ConfigError`` when the topic does not exist.

    Interrupt it through ``stop`` (a signal handler setting a flag), not by raising in a signal
    handler: kafka-python 3's I/O thread and the calls that wait on it are not written to be
    interrupted anywhere, and a ``tail --follow`` ended that way once never exited (CI, 2026-12-06)."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                 isolation_level="read_committed", **settings.kafka_security())
    except KafkaError as exc:
        raise ConfigError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    try:
        try:
            parts = consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise ConfigError(f"cannot read the topics of Kafka at {settings.kafka_bootstrap}: {exc}") from None
        if not parts:
            raise NoSuchTopic(topic, settings.kafka_bootstrap)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends, begins = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - last))
        backlog: list[Any] = []
        remaining = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        while remaining:
            if stop():
                raise KeyboardInterrupt
            for tp, batch in poll_readable(consumer, poll_ms, quiet=True).items():
                backlog.extend(r for r in batch if r.offset < ends[tp])
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
        # oldest first; among equal timestamps, a record further from its partition's end is older
        backlog.sort(key=lambda r: (r.timestamp, r.offset - ends[TopicPartition(topic, r.partition)], r.partition))
        shown = backlog[-last:] if last > 0 else []
        for record in shown:
            out(record)
        given = len(shown)
        if follow:
            following()
        while follow and not stop():
            for batch in poll_readable(consumer, poll_ms, quiet=True).values():
                for record in batch:
                    out(record)
                    given += 1
        return given
    finally:
        consumer.close()
