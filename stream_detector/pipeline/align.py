"""Step 1½, event-time alignment: the records of a worker's partitions released in event-time order.

Kafka orders records within a partition only. A worker that owns several partitions gets them in
fetch order. On a backlog (a catch-up after an outage, a deploy, a rebalance, a replay) one fetch
can hold days of one partition's events before the next partition's first. A key that is not the
partition key, such as a terminal, then sees its events out of time order: the late-event rule
clamps them, and its features leave the training distribution (measured: ``benchmarks/RESULTS.md``,
*Entity features end to end*). ``AlignedSource`` wraps the worker's ``transport.Source`` and
buffers each partition. It releases records in order of **(their partition's clock, partition,
offset)**, the clock being the running maximum of the partition's event times with lone jumps
left out (a record more than ``max_jump_ms`` ahead moves it only when the next timed record is
that far ahead too: ``_clock_keys``; one wrong device clock must not hold its partition back),
up to the **release bound**: the smallest newest key among the partitions that may still
deliver older records. Because the key never decreases within a
partition, every release is a contiguous prefix of each partition, so offsets still commit after
delivery, batch by batch, exactly as without alignment.

A partition holds the others back while it has records left to read: its client's position is
below its high watermark (``Source.backlog``; however long the client takes to hand them out:
kafka-python hands out a backlog one partition after another and caches a partition's high
watermark only then, so the broker is asked for the ends it lacks, at most once per ``idle_ms``).
While its backlog is unknown, it holds for ten times ``idle_ms`` at most after its last record
(or its assignment). A partition nothing has come from yet holds them back entirely; once it
is known to be at its end, for ``idle_ms`` more. A partition at its end holds the others at
its newest key until it has been quiet for ``idle_ms`` (idle, as Flink's idle sources): its next
record, live or from a backlog still being written, cannot be older than its newest (partitions
are in event-time order). So at live traffic a record waits until every partition has delivered
one at least as new, or has been quiet for ``idle_ms``. The buffer is capped
(``max_buffered``: 200,000 records or 8 batches, whichever is more, about 60 MB of 300-byte
events); past the cap the oldest records are released regardless (alignment is best effort
then, never a stall). Event time is the event's ``timestamp`` (RFC 3339 or epoch ms); a record
without a usable one takes its partition's clock (it never moves the order).

**Several workers** of one consumer group align against each other through ``peers``
(``store/watermarks.py``): each publishes its partitions' *heads* (the key of the next record it
will apply) in Redis after every commit, and releases a record only while its key is at most
``SD_ALIGN_PEER_GRACE_MS`` past every other partition's head. With a grace of 0 a shared
entity's events are applied in exact event-time order, the workers taking turns; a worker held
back only by another's partition looks at the heads again every 5 ms instead of blocking in the
client's poll, and polls its client every ``idle_ms`` without waiting (``poll_batch(wait_ms=0)``).

**Marks** (``idle_mark`` given: two stages' stage 2, ``pipeline/repartition.py``): the partitions
carry their upstream's marks, records like events to this step. A partition is idle only while the
last record read from it is an idle mark and its client has nothing left of it, never for being
quiet (a quiet partition of the repartition topic may be a stage-1 worker that is behind), and a
poll's deadline forces nothing out (the buffer cap still does).

Enabled per worker (``SD_ALIGN_EVENT_TIME``: ``auto`` turns it on when the active model has
entity features keyed by a field other than the topic's key, ``EntitySpec.shared_keys``; the
worker wraps its source at start or at the swap to such a model); disabled, it is a pass-through. Rebalances and rewinds
drop the buffer and rewind the inner source to the group's committed offsets, so buffered
records are read again, never lost.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

import msgspec
import numpy as np
import orjson

from ..compiled import jit
from ..errors import TransportError
from ..fieldschema import EventTime
from ..transport.base import Batch, EndOffsets, Membership, Offsets, Source, TopicPartition

NEG_INF = float("-inf")
INF = float("inf")
MAX_JUMP_MS = 3_600_000.0  # default of SD_ALIGN_MAX_JUMP_MS (settings.py)
PEER_WAIT_S = 0.005  # how often a worker held back by another's partition looks at the heads again


class Peers(Protocol):
    """The other workers of the consumer group (``store/watermarks.py``): ``publish`` this worker's
    partitions' heads (event time in epoch ms of the next record to apply; idle or not),
    ``bound`` the largest event time the other partitions allow this worker to release now (+inf
    when none holds it back). An idle partition is published with its end offset (``ends``), and
    ``bound`` checks such claims against the broker's end offsets now (its ``ends`` callable):
    records appended since make the partition hold at its head again."""

    partitions: int  # the topic's partition count (0: unknown)

    def publish(self, heads: dict[int, tuple[float, bool]], ends: dict[int, int] | None = None) -> None: ...

    def bound(self, own: set[int], ends: EndOffsets | None = None) -> float: ...


def event_time_ms(value: bytes | None) -> float | None:
    """The ``timestamp`` of a JSON event as epoch ms, or None when absent or unusable (numbers as
    epoch ms, RFC 3339 strings: the reader of a model without a field schema)."""
    t = _LEGACY(_timestamp_of(value))
    return None if t != t else t


def event_times(values: Sequence[Any], reader: EventTime | None = None) -> np.ndarray:
    """Each value's event time as float64[N] epoch ms, NaN where unusable: its ``timestamp`` read by
    ``reader`` (the model's field schema: unit and plausible range, ``fieldschema.EventTime``;
    default: numbers as epoch ms, RFC 3339 strings, no range — ``event_time_ms``).

    A batch is read with msgspec into a struct of the one field (``_Peek``), which skips the other
    fields without building them: 0.6 against 1.7 µs per 250-byte event for a whole ``orjson``
    parse (measured by hand on ``benchmarks/entity_speed.workload``). The values are orjson's for
    every JSON object: the same last-one-wins on a repeated key, a number past 64 bits read as the
    nearest float either way. Skipped fields are not validated, so a record whose *other* fields
    are invalid text (bad UTF-8) still has its time here; the decode step dead-letters it later.
    A batch with any value that is not a JSON object (or not JSON) goes value by value (orjson,
    ``event_time_ms``'s rule)."""
    reader = reader or _LEGACY
    try:
        raw = [peek.timestamp for peek in map(_PEEK, values)]
    except (msgspec.DecodeError, TypeError, RecursionError):  # ValidationError (not an object) is a DecodeError;
        # RecursionError: msgspec skips a deeply nested field by recursion (a new-user trial: one event nested
        # 1,000 deep stopped an aligned worker at every restart); orjson refuses it (depth limit), value by value
        raw = [_timestamp_of(v) for v in values]
    return reader.batch(raw)


class _Peek(msgspec.Struct):
    """The one field alignment reads from an event."""

    timestamp: Any = None


_PEEK = msgspec.json.Decoder(_Peek).decode


def _timestamp_of(value: Any) -> Any:
    try:
        event = orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return event.get("timestamp") if isinstance(event, dict) else None


_LEGACY = EventTime()


@jit
def _clock_keys(times: np.ndarray, clock: float, jump: float,
                keys: np.ndarray) -> tuple[int, float]:  # pragma: no cover (compiled)
    """The sort keys of a partition's records in offset order (``times`` float64[N] epoch ms, NaN:
    none usable), from its clock ``clock``, into ``keys`` float64[N]. A record within ``jump`` ms
    past the clock moves it to its time (a running maximum). A record further ahead moves it only
    if the next timed record is also that far ahead, and then to the smaller of the two; otherwise
    it is a lone jump and takes the clock as it is. A partition's first timed record (clock -inf)
    sets the clock to its time. An untimed record takes the clock. Returns (how many records have
    their key, the clock): a jump whose next timed record has not arrived yet, and the untimed
    records after it, wait."""
    n = times.size
    i = 0
    while i < n:
        x = times[i]
        if x != x:
            keys[i] = clock
            i += 1
            continue
        if clock == -np.inf or x <= clock + jump:
            if x > clock:
                clock = x
            keys[i] = clock
            i += 1
            continue
        j = i + 1
        while j < n and times[j] != times[j]:
            j += 1
        if j == n:
            return i, clock
        y = times[j]
        if y > clock + jump:
            clock = min(x, y)
        keys[i] = clock
        i += 1
    return n, clock


@dataclass
class _Partition:
    """One partition's buffered records, from index ``at`` on: their sort keys and offsets as
    arrays, polled-at times, and the batch fields as lists (released prefixes are dropped at the
    next ``add``). The records past ``keys`` have no key yet (``tail``: their event times, a jump
    waiting for the next timed record, then untimed ones) and cannot be released. A jump keyed by
    ``settle`` before its next timed record came is provisional: ``prior`` is the clock before it
    (NaN: none provisional); its keys, and those of the untimed records after it, are the
    buffered keys above ``prior``."""

    jump: float
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    tail: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    offsets: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    polled: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    record_keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    at: int = 0
    newest: float = NEG_INF  # the partition's clock: every later record's key is at least this
    last_offset: int = -1
    last_record_at: float = 0.0  # wall clock (monotonic)
    prior: float = float("nan")
    idle_mark: bool = False  # marks mode: the last record read from it is an upstream's idle mark

    @property
    def held(self) -> int:
        return len(self.values) - self.at

    @property
    def ready(self) -> int:
        """Buffered records with a key (releasable as far as this partition goes)."""
        return self.keys.size - self.at

    def head_key(self) -> float:
        return float(self.keys[self.at]) if self.at < self.keys.size else self.newest

    def add(self, times: np.ndarray, offsets: np.ndarray, polled_at: float, keys: list[bytes | None],
            values: list[bytes | None], timestamps: list[int], headers: list[Any]) -> None:
        """Append records (event times float64, NaN: none usable) and key them (``_clock_keys``)."""
        if self.at:
            self.keys, self.offsets, self.polled = self.keys[self.at:], self.offsets[self.at:], self.polled[self.at:]
            for column in (self.record_keys, self.values, self.timestamps, self.headers):
                del column[:self.at]
            self.at = 0
        if self.prior == self.prior:
            self._decide(times)
        pending = np.concatenate((self.tail, times)) if self.tail.size else times
        out = np.empty(pending.size, dtype=np.float64)
        done, self.newest = _clock_keys(pending, self.newest, self.jump, out)
        self.keys = np.concatenate((self.keys, out[:done]))
        self.tail = pending[done:].copy()
        self.offsets = np.concatenate((self.offsets, offsets))
        self.polled = np.concatenate((self.polled, np.full(len(values), polled_at)))
        self.record_keys += keys
        self.values += values
        self.timestamps += timestamps
        self.headers += headers

    def settle(self) -> None:
        """Key a waiting jump when no next record came (the partition is idle, or the buffer is
        forced out): provisionally by its own time, so that the last record of a sparse backlog is
        released where its time puts it. Its partition's next timed record decides (``_decide``)."""
        if not self.tail.size:
            return
        ahead = float(self.tail[0])
        self.prior = self.newest
        self.keys = np.concatenate((self.keys, np.full(self.tail.size, ahead)))
        self.newest = ahead
        self.tail = self.tail[:0]

    def _decide(self, times: np.ndarray) -> None:
        """The next timed record after a provisional jump has come: confirmed (that far ahead of
        the clock before it too), the clock is the smaller of the two; a lone jump after all, the
        clock goes back to what it was (a wrong device clock followed by a quiet spell must not
        hold its partition back until the others catch up). The jump and the untimed records after
        it that are still buffered are keyed again; one already released stays where it went."""
        timed = times[times == times]
        if not timed.size:
            return
        nxt = float(timed[0])
        clock = min(self.newest, nxt) if nxt > self.prior + self.jump else self.prior
        self.keys[np.searchsorted(self.keys, self.prior, side="right"):] = clock  # called with at == 0
        self.newest, self.prior = clock, float("nan")


class AlignedSource:
    """``transport.Source`` over another, releasing records in event-time order (see the module
    docstring). ``enabled`` may be switched before the first poll; disabled, every call goes
    straight to ``inner``."""

    def __init__(self, inner: Source, batch_size: int, idle_ms: int = 2000, max_buffered: int | None = None,
                 clock: Callable[[], float] = time.monotonic, peers: Peers | None = None,
                 heartbeat_s: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 max_jump_ms: float = MAX_JUMP_MS, idle_mark: Callable[[Any], bool] | None = None) -> None:
        self.inner = inner
        self.idle_mark = idle_mark
        self.max_jump_ms = float(max_jump_ms)
        _clock_keys(np.zeros(1), NEG_INF, 0.0, np.zeros(1))  # compile (or load numba's cache) now, not on a batch
        self.sleep = sleep
        self._peer_blocked = False  # the last release stopped at the peers' bound, not this worker's
        self._polled_at = NEG_INF  # when the inner source was last polled
        self.peers = peers
        self.heartbeat_s = heartbeat_s
        # released, not yet committed: per partition, chunks of (offsets int64, sort keys float64)
        self._released: dict[int, deque[tuple[np.ndarray, np.ndarray]]] = {}
        self._settled: dict[int, float] = {}  # partition → sort key of its last committed record
        self._next: dict[int, int] = {}  # partition → the next offset after its last commit
        self._published_at = NEG_INF
        self._asked_at = NEG_INF  # when the broker was last asked for partitions' ends (``_backlog``)
        self._unseen_at: dict[int, float] = {}  # partition → since when ``_unseen`` has found it so
        self.batch_size = batch_size
        self.idle_ms = idle_ms
        self.max_buffered = max_buffered or max(8 * batch_size, 200_000)
        self.clock = clock
        self.enabled = False
        self.event_time: EventTime | None = None  # the model's timestamp rule (the worker sets it)
        self.topic = ""
        self._parts: dict[int, _Partition] = {}
        self._since: dict[int, float] = {}  # partition → when it was first seen assigned
        self._known: dict[int, float] = {}  # partition → when its high watermark was first known
        self._group: Membership | None = None  # the membership the buffered records were polled under
        self.held_back = 0  # records waiting in the buffer (metrics, tests)
        self.holding: int | None = None  # the partition the last release bound came from (None: none held it)
        self.peer_wait_s = 0.0  # seconds spent waiting for other workers' partitions (metrics, the progress log)
        self.peer_cut_batches = 0  # batches released that stopped at another worker's head (the progress log)

    # ---- the Source protocol ------------------------------------------------------------------
    def start(self) -> None:
        self.inner.start()

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        if not self.enabled:
            return self.inner.poll_batch(fill, wait_ms)
        limit_ms = self.idle_ms if wait_ms is None else min(self.idle_ms, wait_ms)
        deadline = self.clock() + limit_ms / 1000.0
        if self.held_back and not self.inner.still_member(Batch(topic=self.topic, group=self._group)):
            self.rewind_to_committed(Batch(topic=self.topic))  # a rebalance since the buffer filled
        while True:
            if self.peers is not None and self.clock() - self._published_at >= self.heartbeat_s:
                self._publish()
            released = self._release()
            if released is not None:
                return released
            now = self.clock()
            if self._peer_blocked and now - self._polled_at < self.idle_ms / 1000.0:
                # Held back only by another worker's partition: its head moves within a turn, so
                # look again shortly instead of blocking in the client's poll (idle_poll_ms);
                # the client is still polled every idle_ms (its poll interval, the buffer's fill).
                if now >= deadline:
                    return Batch(topic=self.topic)
                self.sleep(PEER_WAIT_S)
                self.peer_wait_s += self.clock() - now
                continue
            # Holding records back, what is wanted is the other partitions' next records, now: the
            # client's poll returns with what it has instead of waiting batch_max_wait_ms to fill,
            # and waits for a first record no longer than this call's deadline; held back by
            # another worker's partition, not at all (what was fetched comes at once): a client
            # poll blocking for idle_poll_ms (500 ms) would keep this worker from looking at the
            # heads, and the peers waiting for its own head, that long on every turn.
            wait = None
            if self.held_back:
                wait = 0 if self._peer_blocked else max(0, int((deadline - now) * 1000))
            incoming = self.inner.poll_batch(fill=not self.held_back, wait_ms=wait)
            self._polled_at = self.clock()
            self._take(incoming)
            if not incoming.values and not self.held_back:
                return incoming  # nothing anywhere: an idle poll, as without alignment
            if not incoming.values and self.clock() >= deadline:
                if self.idle_mark is not None:  # marks: a partition waits for its upstream (the cap forces)
                    return self._release() or Batch(topic=self.topic)
                return self._release(force=True) or Batch(topic=self.topic)

    def commit(self, offsets: Offsets) -> None:
        self.inner.commit(offsets)

    @property
    def on_revoke(self) -> Callable[[set[TopicPartition], bool], Offsets] | None:
        """The inner source's hook (``base.Source``): its rebalances happen inside its poll."""
        return self.inner.on_revoke

    @on_revoke.setter
    def on_revoke(self, hook: Callable[[set[TopicPartition], bool], Offsets] | None) -> None:
        self.inner.on_revoke = hook

    @property
    def on_revoke_done(self) -> Callable[[Offsets, bool], None] | None:
        """The inner source's (``base.Source``): told whether the hook's offsets were committed."""
        return self.inner.on_revoke_done

    @on_revoke_done.setter
    def on_revoke_done(self, hook: Callable[[Offsets, bool], None] | None) -> None:
        self.inner.on_revoke_done = hook

    def settled(self, offsets: Offsets, publish: bool = True) -> None:
        """The worker committed ``offsets`` (either delivery mode), or, with write-behind entity
        state (``entity/behind.py``), delivered them with their shared entities' records written:
        their records are applied, so their partitions' heads move on and are published to the peers.
        ``publish`` False (a rebalance hook, inside the client's poll: no client or Redis call
        there): published at this source's next turn instead."""
        for tp, next_offset in offsets.items():
            if tp.topic != self.topic:
                continue
            released = self._released.get(tp.partition)
            while released:  # chunks of released records in offset order, keys nondecreasing
                offs, keys = released[0]
                n = int(np.searchsorted(offs, next_offset, side="left"))  # those below next_offset
                if n == 0:
                    break
                if keys[n - 1] > self._settled.get(tp.partition, NEG_INF):
                    self._settled[tp.partition] = float(keys[n - 1])
                if n < offs.size:
                    released[0] = (offs[n:], keys[n:])
                    break
                released.popleft()
            self._next[tp.partition] = next_offset
        if self.peers is not None:
            if publish:
                self._publish_soon()
            else:
                self._published_at = NEG_INF  # the heartbeat's turn: the next pass of ``poll_batch``

    def _publish_soon(self) -> None:
        """A head moved (records taken in, or applied): published now, for the peers waiting on it,
        unless this worker owns every partition of the topic. Then no peer holds one and none waits
        on these heads, and the heartbeat (``heartbeat_s``) publishes them for a worker that joins.
        Exactness does not depend on how fresh a published head is: heads only move forward and an
        idle claim is checked against the broker's end (``store/watermarks.py``), so an older one
        only holds a peer back longer. Measured by hand at 20,000 events/s with one worker (about
        280-event batches): 2 publishes per batch (an HSET and librdkafka's assignment, watermarks
        and positions each), 1.2 ms of the worker's thread, before this."""
        assert self.peers is not None
        count = self.peers.partitions
        if count > 0 and len(assigned := self._assigned()) >= count and assigned.issuperset(range(count)):
            return
        self._publish()

    def _publish(self) -> None:
        """Per partition of this worker, its **head** and whether it is **idle**; see
        ``store/watermarks.py``. The head is the sort key of the first record not yet committed
        (released or buffered), else of the newest one (every later record's key is at least that).
        Idle is ``_bound``'s rule: at its end and quiet for ``idle_ms``, or nothing came from it since
        its high watermark was known for ``idle_ms`` (ten times that while none is known)."""
        assert self.peers is not None
        now = self.clock()
        self._published_at = now
        try:  # read before the backlog: an end the client learns in between (librdkafka fetches in the
            highs = self.inner.highwaters()  # background) then shows as records left, not as a claim
        except TransportError:
            highs = {}
        left = self._backlog(now)
        out: dict[int, tuple[float, bool]] = {}
        ends: dict[int, int] = {}
        for p in self._assigned():
            released = self._released.get(p)
            part = self._parts.get(p)
            if released:
                out[p] = (float(released[0][1][0]), False)
            elif part is not None and part.held:
                out[p] = (part.head_key(), False)
            elif part is not None:
                out[p] = (max(part.newest, self._settled.get(p, NEG_INF)), self._idle(p, part, left.get(p), now))
            else:  # nothing from it since assignment or a rewind
                out[p] = (self._settled.get(p, NEG_INF), self._idle(p, None, left.get(p), now))
            high = highs.get(p)
            if out[p][1] and high is not None:  # idle: nothing left to hand out, so its position is this end
                ends[p] = high  # the peers check the claim against the broker's end (store/watermarks.py)
        self.peers.publish(out, ends)

    def _backlog(self, now: float) -> dict[int, int | None]:
        """Per assigned partition, the records its client has still to hand out (``Source.backlog``).
        Where that is unknown, or 0 (a partition that may be called idle), the broker is asked for
        every partition's end, at most once per ``idle_ms``: kafka-python knows a partition's high
        watermark only once it hands out that partition's fetch, and keeps an old one while it hands
        out another's backlog (trial Q, on stage 1's idle marks), so a long drain of one partition
        could otherwise let another with records left pass for idle once ``_unseen``'s hold ran out."""
        left = self.inner.backlog()
        if any(n is None or n == 0 for n in left.values()) and now - self._asked_at >= self.idle_ms / 1000.0:
            self._asked_at = now
            left = self.inner.backlog(ask=True)
        return left

    def _idle(self, p: int, part: _Partition | None, left: int | None, now: float) -> bool:
        """Whether partition ``p`` holds nothing back (``_bound``, and its peers through ``_publish``):
        its client has nothing left to hand out (``left`` 0) and nothing came from it for ``idle_ms``
        (quiet: its next record, live or from a backlog still being written, is not older than its
        newest); or nothing is known of its backlog for ten times ``idle_ms`` (a broker that does not
        answer must not stall the group). A partition with records left holds, however long its
        client takes to hand them out: kafka-python drains a backlog one partition after another,
        and a worker waiting for its peers polls it only every ``idle_ms`` (the helper's trial: two
        workers on a backlog raised 2.4x offline's alerts while a partition with 10k records left
        was published idle for 24 s and the others ran 36 hours of event time ahead of it)."""
        if self.idle_mark is not None:  # marks: idle only on its upstream's word, with nothing read past it
            return part is not None and part.idle_mark and not left
        grace = self.idle_ms / 1000.0
        since = self._since.setdefault(p, now)
        if left is None:
            quiet_since = part.last_record_at if part is not None else since
            return now - max(quiet_since, since) > 10 * grace
        known = self._known.setdefault(p, now)
        if left:
            return False
        return now - (part.last_record_at if part is not None else known) > grace

    def membership(self) -> Membership:
        return self.inner.membership()

    def still_member(self, batch: Batch) -> bool:
        return self.inner.still_member(batch)

    def rewind_to_committed(self, batch: Batch) -> None:
        """Drop the buffer and rewind ``batch``'s partitions and every buffered one."""
        parts = set(batch.partitions) | {p for p, part in self._parts.items() if part.held}
        self._drop()
        self.inner.rewind_to_committed(Batch.naming(batch.topic or self.topic, parts))

    def poll_while_paused(self, timeout_ms: int) -> None:
        self.inner.poll_while_paused(timeout_ms)

    def pause_all(self) -> None:
        self.inner.pause_all()

    def resume_all(self) -> None:
        self.inner.resume_all()

    def paused(self) -> set[TopicPartition]:
        return self.inner.paused()

    def assignment(self) -> set[TopicPartition]:
        return self.inner.assignment()

    def highwaters(self) -> dict[int, int | None]:
        return self.inner.highwaters()

    def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return self.inner.end_offsets(partitions)

    def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return self.inner.committed_offsets(partitions)

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        return self.inner.backlog(ask)

    def close(self) -> None:
        self._drop()
        self.inner.close()

    # ---- alignment ----------------------------------------------------------------------------
    def _drop(self) -> None:
        self._released.clear()  # read again from the committed offsets
        self._parts.clear()
        self._since.clear()
        self._known.clear()
        self.held_back = 0

    def _take(self, batch: Batch) -> None:
        if batch.topic:
            self.topic = batch.topic
        if self.held_back and batch.values and not self.inner.still_member(Batch(topic=self.topic, group=self._group)):
            self.rewind_to_committed(batch)  # a rebalance since the buffer filled: read it all again
            return
        if not self.held_back:
            self._group = batch.group
        now = self.clock()
        head_moved = False
        if not batch.values:
            return
        times = event_times(batch.values, self.event_time)
        first = batch.partitions[0]
        groups: list[tuple[int, np.ndarray | None]]
        if batch.partitions.count(first) == len(batch.partitions):  # one partition (kafka-python's fetches)
            groups = [(first, None)]
        else:
            parts = np.asarray(batch.partitions, dtype=np.int64)
            groups = [(int(p), np.flatnonzero(parts == p)) for p in dict.fromkeys(batch.partitions)]
        offsets = np.asarray(batch.offsets, dtype=np.int64)
        for p, rows in groups:
            part = self._parts.setdefault(p, _Partition(self.max_jump_ms))
            head_moved = head_moved or (not part.held and not self._released.get(p))
            if rows is None:
                part.add(times, offsets, batch.polled_at, list(batch.keys), list(batch.values),
                         list(batch.timestamps), list(batch.headers))
                n, last = len(batch.values), batch.offsets[-1]
            else:
                picked = rows.tolist()
                part.add(times[rows], offsets[rows], batch.polled_at, [batch.keys[i] for i in picked],
                         [batch.values[i] for i in picked], [batch.timestamps[i] for i in picked],
                         [batch.headers[i] for i in picked])
                n, last = len(picked), batch.offsets[picked[-1]]
            part.last_offset = last
            part.last_record_at = now
            if self.idle_mark is not None:
                part.idle_mark = self.idle_mark(batch.headers[len(batch.values) - 1 if rows is None else picked[-1]])
            self.held_back += n
        if head_moved and self.peers is not None:
            self._publish_soon()  # a partition's next record is known now: the peers may move on

    def _assigned(self) -> set[int]:
        return {tp.partition for tp in self.inner.assignment() if not self.topic or tp.topic == self.topic}

    def _bound(self, assigned: set[int]) -> float:
        """The release bound: the smallest newest key among partitions that hold the others back."""
        now = self.clock()
        for p in list(self._parts):  # revoked partitions: their new owner reads them from the commit
            if p not in assigned:
                self.held_back -= self._parts.pop(p).held
        for p in [p for p in self._settled if p not in assigned]:  # their new owner publishes them
            del self._settled[p]
            self._next.pop(p, None)
            self._released.pop(p, None)
        left = self._backlog(now)
        bound = float("inf")
        self.holding = None
        quiet: dict[int, float] = {}  # idle partitions at their end: the key each would hold at
        for p in assigned:
            part = self._parts.get(p)
            if self._idle(p, part, left.get(p), now):
                quiet[p] = part.newest if part is not None else self._settled.get(p, NEG_INF)
                continue
            # Records are left, or it is at its end but not idle: its next record (live, or a
            # backlog still being written) has a key at least its newest, so it holds there;
            # one nothing came from yet holds everything.
            key = part.newest if part is not None else NEG_INF
            if key < bound:
                bound, self.holding = key, p
        for p in self._unseen([p for p, key in quiet.items() if key < bound and left.get(p) == 0], now):
            key = quiet.pop(p)  # not idle after all: it holds at its newest, as at its end and not quiet
            if key < bound:
                bound, self.holding = key, p
        for p in quiet:
            if p in self._parts:
                self._parts[p].settle()  # no next record is coming soon: a waiting jump is a lone one
        return bound

    def _unseen(self, quiet: list[int], now: float) -> set[int]:
        """Of partitions idle by ``_idle``'s rule (at their end as the client knows it, and quiet),
        those the broker holds records of past the client's high watermark: a burst after a quiet
        spell that the client has fetched from some partitions and not yet from these. They hold
        the others, as a partition with records left does, for ``idle_ms`` at most (records the
        client cannot fetch, such as an open transaction's under read_committed, must not hold the
        group longer than the rule did). Asked only where an idle partition is all that lets a
        release pass its newest key (one ListOffsets round trip, ~1 ms). Before 2026-12-06 one
        worker released the first-fetched partitions' part of such a burst past the others' (an
        integration test's second burst of 2,500 events: 2,242-2,483 with other merchant features
        than offline enrichment, on kafka-python); several workers already checked each other's
        idle claims so (``store/watermarks.py``). Not in marks mode (idle on the upstream's word),
        nor where the broker does not answer: the rule as it was."""
        if not quiet or self.idle_mark is not None:
            self._unseen_at = {}
            return set()
        try:
            highs = self.inner.highwaters()  # before the ends: an end learnt in between then holds
            ends = self.inner.end_offsets(quiet)
        except TransportError:
            return set()
        found = {p for p in quiet if (high := highs.get(p)) is not None and ends.get(p, -1) > high}
        self._unseen_at = {p: self._unseen_at.get(p, now) for p in found}
        return {p for p in found if now - self._unseen_at[p] <= self.idle_ms / 1000.0}

    def _release(self, force: bool = False) -> Batch | None:
        self._peer_blocked = False
        if not self.held_back:
            return None
        assigned = self._assigned()
        own = self._bound(assigned)  # also drops revoked partitions' records, forced or not
        own = INF if force else own
        # never past other partitions' heads + grace; an idle one's claim checked against the broker
        peer = INF if self.peers is None else self.peers.bound(assigned, self.inner.end_offsets)
        bound = min(own, peer)
        over = self.held_back - self.max_buffered
        if force or over > 0:
            for part in self._parts.values():
                part.settle()
        # A k-way merge of the partitions' runs (each sorted by key, then offset) is a sort of their
        # leading records by (key, partition, offset): only a partition's first batch_size records,
        # and (unless the cap forces more out) those up to the bound plus one, can be released now.
        limit = self.batch_size
        cand_keys, cand_parts, cand_pos = [], [], []
        for p, part in self._parts.items():
            if not part.ready:
                continue
            keys = part.keys[part.at:part.at + limit]
            take = keys.size if over > 0 else min(keys.size, int(np.searchsorted(keys, bound, side="right")) + 1)
            cand_keys.append(keys[:take])
            cand_parts.append(np.full(take, p, dtype=np.int64))
            cand_pos.append(np.arange(part.at, part.at + take, dtype=np.int64))
        if not cand_keys:
            return None
        keys = np.concatenate(cand_keys)
        parts = np.concatenate(cand_parts)
        pos = np.concatenate(cand_pos)
        order = np.lexsort((pos, parts, keys))
        keys, parts, pos = keys[order], parts[order], pos[order]
        within = int(np.searchsorted(keys, bound, side="right"))  # keys up to the bound
        m = min(limit, keys.size, max(within, over))
        if m < keys.size and m < limit:  # stopped at the bound, not by a full batch
            key = float(keys[m])
            self._peer_blocked = key > peer and key <= own
        if m == 0:
            return None
        self.peer_cut_batches += self._peer_blocked
        chosen, at = parts[:m], pos[:m]
        first_part = self._parts[int(chosen[0])]
        polled_at = float(first_part.polled[int(at[0])])
        present, which = np.unique(chosen, return_inverse=True)
        counts = np.bincount(which, minlength=present.size).tolist()
        shifts = np.empty(present.size, dtype=np.int64)
        pool: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
        pool_offsets = []
        for j, (p, n) in enumerate(zip(present.tolist(), counts, strict=True)):  # each one's part is a prefix
            part = self._parts[p]
            start = part.at
            shifts[j] = len(pool[0]) - start
            columns: tuple[list[Any], ...] = (part.record_keys, part.values, part.timestamps, part.headers)
            for into, column in zip(pool, columns, strict=True):
                into.extend(column[start:start + n])
            offsets = part.offsets[start:start + n].copy()
            pool_offsets.append(offsets)
            self._released.setdefault(p, deque()).append((offsets, part.keys[start:start + n].copy()))
            part.at += n
            self.held_back -= n
        index = at + shifts[which.reshape(-1)]
        out = Batch(topic=self.topic, partitions=chosen.tolist(), offsets=np.concatenate(pool_offsets)[index].tolist())
        if m == 1:
            out.keys, out.values, out.timestamps, out.headers = ([column[0]] for column in pool)
        else:
            gather = itemgetter(*index.tolist())
            out.keys, out.values, out.timestamps, out.headers = (list(gather(column)) for column in pool)
        out.group, out.polled_at = self._group, polled_at
        return out
