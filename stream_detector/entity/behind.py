"""Write-behind entity state for the key the input topic is partitioned by (``SD_ENTITY_PARTITION_KEY``).

When producers key the input topic by an entity field (``account_id``: Kafka's default
partitioner sends every event of an account to one partition), that entity's events reach only
the worker that owns its partition, so that worker is its only writer. Its records need not go to
the store on every batch: ``WriteBehind`` keeps them in memory, reads them from there, and writes
the ones a window of batches changed in **one compare-and-set at the flush** (as Kafka Streams
keeps a partition's state in a local store and writes its changelog before it commits). The worker
flushes every ``SD_ENTITY_FLUSH_MS`` and **commits the window's offsets only after the flush**
(``worker.py``), so the store always holds the state of the committed offsets or newer:

* a crash before the flush loses the window's state and its commit together; the window is read
  again from the committed offsets and computed again from the stored state — identical features;
* a crash after the flush, before the commit: each flushed record carries the **window's** undo
  snapshot (the state before the window's first batch, and that batch's first offset), so the
  re-delivered window replays from it (``enrich.py``, idempotency case 2) — identical features,
  nothing counted twice;
* a flush whose commit then fails (a rebalance in progress, the coordinator away) leaves the
  committed offsets behind the written state: the next window's records keep the undo snapshot of
  the **first window since the last commit** (``committed`` releases it), so whatever is read again
  from the committed offsets still starts where the undo does. (Found in CI, 2026-12-04: a window
  written, its commit refused by a rebalance, the next window written with its own undo; read
  again from the older commit, 8 events of one partition got approximate account features.)

Every other key (a terminal, seen from every partition) goes to the store on every batch exactly
as without write-behind (read once, compare-and-set once); what lets a crash replay such a key's
part of the window exactly is the worker's replay log of its features (``replay_log.py``), and
without it the worker passes every record through and commits batch by batch (``pass_through``).
What the records of the partition key cost per batch drops from a read and a write per touched
entity to nothing, plus one write per entity per window.

**A worker that owns every partition** (``own_all``: one worker in its group, the issue-16
deployment of one process per topic) is the only writer of the shared keys' records too: no other
worker of the group reads or writes them while it holds every partition. Those records then join
the window as well — read from memory, written once per window instead of once per batch — and
their replay-log entries (the features the window's batches computed from them) are kept with the
window and written by the flush **before** its compare-and-set, as the batch did before its own:
a crash after the flush and before the commit replays them from the log exactly as it replays a
record written by a batch. A shared record has no window undo snapshot (its events come from every
partition; it is written with the undo of its last batch, as a batch writes it, and a window read
again finds its events applied and takes their features from the log). It belongs to no partition:
a rebalance that takes any partition with such records unwritten abandons the whole window
(``shared_pending``; the worker's rebalance hook writes and commits it first where it can), and
leaving the mode drops the shared records held (another worker writes them from then on). What
it saves per batch: the shared keys' read, their compare-and-set and the log's append — three
round trips and the Redis time of a script over every record touched (``benchmarks/RESULTS.md``,
section ``entity-worker-sole``).

**Safety.** The flush is a compare-and-set against the bytes this worker last read or wrote: a
record another writer changed in between (a zombie, a partition that moved and came back, a topic
not keyed by that field after all) is not overwritten — ``flush`` raises ``WriteBehindConflict``
and forgets every record it holds, and the worker abandons the window (nothing committed; the
window is read again from the committed offsets). A record of the partition key that names two
partitions means the topic is not keyed by that field: the store logs an ERROR, asks for a flush
at once (``accept`` returns True) and, once the records it holds are written (or forgotten after a
conflict), stops deferring (``disabled``). Records of partitions revoked in a
rebalance are dropped unflushed (``drop_partitions``): their window's offsets are not committed
either, so the new owner reads the stored state of the committed offsets. Clean records (flushed)
are kept up to ``max_records``, least recently used dropped first; a dropped record is read from
the store again when next needed.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from ..entity_spec import EntitySpec
from ..errors import StreamDetectorError
from . import binary
from .state import CasWrite, EntityKey, Expected, LogSink, Record, SplitWrites, StateStore

log = logging.getLogger("stream_detector.entity")

Name = tuple[str, EntityKey]  # (spec fingerprint, entity)
P = ParamSpec("P")
R = TypeVar("R")
_PARTITION = struct.Struct("<i")
SHARED = -1  # the partition of a shared key's record held by a worker that owns every partition (``own_all``)
# a replay-log entry kept with the window (``stage_log``): spec, key, partitions, offsets, features
LogEntry = tuple[EntitySpec, str, np.ndarray, np.ndarray, np.ndarray]


def _fields(keys: Sequence[EntityKey]) -> str:
    """The key fields of ``keys`` for a message: "account_id", or "account_id and terminal_id" (a
    sole owner's window holds every key's records)."""
    return " and ".join(sorted({k[0] for k in keys}))


def _locked(method: Callable[Concatenate[WriteBehind, P], R]) -> Callable[Concatenate[WriteBehind, P], R]:
    """Run a ``WriteBehind`` method under its lock."""
    def locked(self: WriteBehind, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)
    locked.__doc__, locked.__name__ = method.__doc__, method.__name__
    return locked


class WriteBehindConflict(StreamDetectorError):
    """A flush found records of the partition key changed by another writer since this worker
    read or wrote them: the window since the last commit must be abandoned (not committed) and
    read again. Retriable."""

    retriable = True


@dataclass(slots=True)
class _Dirty:
    """A record changed since the last flush: the spec it follows, its latest bytes (with the last
    batch's undo), the window's undo section (the state before the window), the bytes the store
    held when the window began (``base``: what the flush compares against; None: absent), and its
    partition."""

    spec: EntitySpec
    record: bytes
    first: bytes  # the record after the window's first batch: its undo section is the window's
    base: bytes | None
    partition: int
    own: bytes  # the record after its first batch in this window (``first`` unless an older window is pinned)


class Flush:
    """A window's records on their way to the store (``WriteBehind.start_flush``): ``send`` writes
    them (one compare-and-set per spec, on any thread), ``result`` waits for it to have run and
    returns what each found changed, or raises what it raised."""

    def __init__(self, inner: SplitWrites, writes: list[CasWrite], count: int,
                 before: Callable[[], None] | None = None) -> None:
        self.inner, self.writes, self.count = inner, writes, count
        self.before = before  # the window's replay-log entries, written before its records (``own_all``)
        self._done = threading.Event()
        self._lost: list[list[int]] = []
        self._error: BaseException | None = None

    def send(self) -> None:
        try:
            if self.before is not None:
                self.before()
            self._lost = [self.inner.send_save(write) for write in self.writes]
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that settles the flush
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> list[list[int]]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._lost


class WriteBehind:
    """A ``StateStore`` around ``inner`` that keeps the records of key field ``key`` in memory and
    writes them at ``flush`` (module docstring). Records of other keys pass through to ``inner``.

    Protocol per batch: ``load_raw`` then ``save_raw`` (the enricher's, unchanged: records of
    ``key`` are only *staged* by ``save_raw``), then ``accept`` once the batch is delivered (a batch
    that is held or abandoned is never accepted: the next ``load_raw`` drops what it staged), and
    ``flush`` before the offsets are committed — or ``start_flush``, ``Flush.send`` on another
    thread while the next batches are read and accepted, and ``finish_flush`` before the window's
    offsets are committed (the worker's ``SD_ENTITY_FLUSH_ASYNC``)."""

    def __init__(self, inner: StateStore, key: str, max_records: int = 1_000_000) -> None:
        self.inner = inner
        self.key = key
        self.max_records = max(1, max_records)
        self.clean: OrderedDict[Name, tuple[bytes, int]] = OrderedDict()  # flushed: (bytes held, partition)
        self.dirty: dict[Name, _Dirty] = {}
        self.staged: dict[Name, tuple[EntitySpec, bytes]] = {}
        self.read: dict[Name, bytes | None] = {}  # what the store held, for records read this batch
        # written since the last commit: the record whose undo section is the first such window's
        # (what a re-read from the committed offsets replays from), and its partition
        self.pinned: dict[Name, tuple[bytes, int]] = {}
        self._keep_heads = getattr(inner, "keep_heads", None)  # RedisState: compare-and-set on write tokens
        self._tokens_kept = self.max_records + 100_000  # the records held, and those read beside them
        if self._keep_heads is not None:
            self._keep_heads(key, self._tokens_kept)
        # the worker's rebalance hook may flush from the Kafka client's thread while a batch is enriched
        self.lock = threading.RLock()
        self.disabled = False  # the topic turned out not to be keyed by ``key``: everything passes through
        self.passing = False  # ``pass_through``: the active model's records all go to ``inner`` on every batch
        self._disabling = False  # found so: ``disabled`` once the records held are flushed or forgotten
        self.sole = False  # ``own_all``: every key's records are held, the shared ones at partition SHARED
        self._log_sink: LogSink | None = None  # ``own_all``'s: where the window's log entries go at the flush
        self.staged_log: list[LogEntry] = []  # the batch in hand's log entries (``stage_log``)
        self.window_log: list[LogEntry] = []  # the accepted batches' since the last flush

    @property
    def unkeyed(self) -> bool:
        """The topic turned out not to be keyed by ``key`` (a record of it named two partitions):
        deferral stops once the records held are written (``disabled``), and the worker aligns
        that key's events in event time as it does a shared key's."""
        return self._disabling or self.disabled

    @property
    def round_trips(self) -> int:
        return self.inner.round_trips

    @round_trips.setter
    def round_trips(self, value: int) -> None:
        self.inner.round_trips = value

    # ---- a worker that owns every partition (module docstring) ---------------------------------------
    @_locked
    def own_all(self, on: bool, sink: LogSink | None = None) -> None:
        """``on``: this worker holds every partition of its input topic, so it is the only writer of
        every record: the shared keys' records are held in the window too, and the replay-log entries
        of their features (``stage_log``) go to ``sink`` at the flush, before the records. Off: the
        shared records held are dropped (read from the store again by each batch). Turning it off
        needs none of them unwritten (``shared_pending``: the caller writes or abandons the window
        first), else ``RuntimeError``."""
        if on:
            if sink is None:
                raise ValueError("write-behind: a worker owning every partition needs the replay log")
            self._log_sink = sink
            if not self.sole and self._keep_heads is not None:
                self._keep_heads(self.key, self._tokens_kept, every=True)
            self.sole = True
            return
        if not self.sole:
            return
        if self.shared_pending:
            raise RuntimeError("write-behind: write or abandon the window before leaving the sole-owner mode")
        for name in [n for n, (_raw, p) in self.clean.items() if p == SHARED]:
            del self.clean[name]
        self.sole, self._log_sink = False, None
        self.staged_log.clear()
        if self._keep_heads is not None and not self.passing:
            self._keep_heads(self.key, self._tokens_kept)

    @property
    def shared_pending(self) -> bool:
        """Shared records changed since the last flush (``own_all``), or their log entries."""
        return bool(self.window_log) or any(d.partition == SHARED for d in self.dirty.values())

    def log_sink(self) -> LogSink | None:
        """Where the enricher puts the replay-log entries of a batch (``Enricher._log``): ``stage_log``
        while this worker owns every partition (written with the window), else None (the log's own
        ``append``, before the batch's compare-and-set)."""
        return self.stage_log if self.sole else None

    @_locked
    def stage_log(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
                  values: np.ndarray) -> None:
        """A batch's replay-log entry (``FeatureLog.append``'s arguments), kept with its staged records:
        into the window at ``accept``, written by the flush before them; dropped with them."""
        self.staged_log.append((spec, key, partitions, offsets, values))

    def _log_writer(self, entries: list[LogEntry]) -> Callable[[], None] | None:
        """The window's log entries as one append per (spec, key), their batches joined (an event is
        in one batch of a window: a held batch's entries are never accepted), for the flush to send
        before its records."""
        sink = self._log_sink
        if not entries or sink is None:
            return None
        joined: dict[tuple[str, str], list[LogEntry]] = {}
        for entry in entries:
            joined.setdefault((entry[0].fingerprint, entry[1]), []).append(entry)

        def write() -> None:
            for group in joined.values():
                spec, key = group[0][0], group[0][1]
                sink(spec, key, np.concatenate([e[2] for e in group]), np.concatenate([e[3] for e in group]),
                     np.concatenate([e[4] for e in group]))
        return write

    # ---- the StateStore protocol (what the enricher calls) -----------------------------------------
    @_locked
    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        """A batch's read: records of ``key`` from memory where held, every other one (and those not
        held) with one read of ``inner``. Drops what an unaccepted batch staged."""
        self.staged.clear()
        self.staged_log.clear()
        self.read.clear()
        return self.reload_raw(spec, keys)

    @_locked
    def reload_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        """``load_raw`` within the batch: entities its compare-and-set lost to another writer
        (``Enricher._redo``) read again, keeping what the batch staged. (Before 2026-12-04 the redo
        read through ``load_raw`` and dropped the batch's staged records of ``key``: one conflict on a
        shared key lost that batch's account updates from the window, found by a CI run.)"""
        if self.disabled or self.passing:
            return self.inner.load_raw(spec, keys)
        ns, sole = spec.fingerprint, self.sole
        out: list[bytes | None] = [None] * len(keys)
        wanted: list[int] = []
        for i, k in enumerate(keys):
            if k[0] != self.key and not sole:
                wanted.append(i)
                continue
            name = (ns, k)
            dirty = self.dirty.get(name)
            if dirty is not None:
                out[i] = dirty.record
                continue
            clean = self.clean.get(name)
            if clean is not None:
                self.clean.move_to_end(name)
                out[i] = clean[0]
                continue
            wanted.append(i)
        if wanted:
            asked = [keys[i] for i in wanted]
            for i, k, raw in zip(wanted, asked, self.inner.load_raw(spec, asked), strict=True):
                out[i] = raw
                if k[0] == self.key or sole:
                    self.read[(ns, k)] = raw
        return out

    @_locked
    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes],
                 expected: Expected | None = None) -> list[EntityKey]:
        """Records of ``key`` are staged (written at ``flush`` once accepted); the others are written
        to ``inner`` now, as ``inner.save_raw`` does (the lost ones returned)."""
        if self.disabled or self.passing:
            return self.inner.save_raw(spec, records, expected)
        ns, sole = spec.fingerprint, self.sole
        through: dict[EntityKey, bytes] = {}
        for k, raw in records.items():
            if k[0] == self.key or sole:
                self.staged[(ns, k)] = (spec, raw)
            else:
                through[k] = raw
        if not through:
            return []
        return self.inner.save_raw(spec, through, expected)

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        return {k: None if v is None else binary.decode(spec, k[0], v)
                for k, v in zip(keys, self.load_raw(spec, keys), strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        self.save_raw(spec, {k: binary.encode(spec, k[0], r) for k, r in records.items()})
        self.accept()

    @_locked
    def pass_through(self, on: bool) -> None:
        """``on``: every record goes straight to ``inner`` (read and written by the batch itself, in
        its one read and its one compare-and-set), as for a model with a key shared across
        partitions, whose batches commit one by one (the worker's ``_defers``); off again: records
        of ``key`` are kept and written at ``flush``. Turning it on needs no window open (the
        caller flushes first) and forgets the records held, which the batches then change in
        ``inner``."""
        if on == self.passing:
            return
        if on:
            if self.dirty or self.window_log:
                raise RuntimeError("write-behind: flush the open window before passing records through")
            self.clean.clear()
            self.staged.clear()
            self.read.clear()
            self.pinned.clear()  # batches commit one by one from now on
            self.sole, self._log_sink = False, None
            self.staged_log.clear()
        if self._keep_heads is not None:  # the tokens are only needed for records held across batches
            self._keep_heads(None if on else self.key, self._tokens_kept)  # not sole: it ends with passing
        self.passing = on

    # ---- the window --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records changed since the last flush."""
        return len(self.dirty)

    @_locked
    def accept(self) -> bool:
        """The last batch was delivered: its staged records become the latest state (a record's
        first change in the window keeps that batch's undo as the window's). Returns True when the
        store must be flushed now (it found the topic not keyed by ``key`` and stopped deferring)."""
        staged, self.staged = self.staged, {}
        read, self.read = self.read, {}
        if self.staged_log:
            self.window_log.extend(self.staged_log)
            self.staged_log = []
        must = False
        dirty_of, clean_of = self.dirty, self.clean
        key = self.key
        for name, (spec, raw) in staged.items():
            if name[1][0] != key:  # a shared key's (``own_all``): its last batch's bytes, no window undo
                dirty = dirty_of.get(name)
                if dirty is not None:
                    dirty.record = dirty.first = dirty.own = raw
                    continue
                clean = clean_of.pop(name, None)
                dirty_of[name] = _Dirty(spec, raw, raw, clean[0] if clean is not None else read.get(name), SHARED, raw)
                continue
            # the version-3 header (binary.py): u8 version, u8 flags, u16 P, then P × (i32 partition, i64 offset)
            if raw[0] != binary.VERSION or raw[2] + (raw[3] << 8) != 1:
                if not self._disabling:  # the value itself is not logged: it may be a card number
                    applied = sorted(binary.parse(spec, name[1][0], raw).applied)
                    log.error("entity state: an entity of %s has events from partitions %s: the input topic is not "
                              "keyed by %s (SD_ENTITY_PARTITION_KEY), or partitions were added to it (a key then "
                              "moves to another partition); this worker writes its records every batch until it "
                              "restarts, and with SD_ALIGN_EVENT_TIME=auto aligns the partitions in event time from "
                              "the next batch (the events before had %s history in fetch order: alerts may be wrong). "
                              "Key the topic by %s (stream-detector produce keys by SD_ENTITY_PARTITION_KEY), or "
                              "set SD_ENTITY_PARTITION_KEY to the field it is keyed by", name[1][0],
                              ", ".join(applied), self.key, self.key, self.key)
                self._disabling = must = True
            partition = _PARTITION.unpack_from(raw, 4)[0] if raw[2] or raw[3] else -1
            dirty = dirty_of.get(name)
            if dirty is not None:
                dirty.record = raw
                continue
            clean = clean_of.pop(name, None)
            base = clean[0] if clean is not None else read.get(name)
            pin = self.pinned.get(name)  # a window written but not committed: its undo stays the record's
            dirty_of[name] = _Dirty(spec, raw, raw if pin is None else pin[0], base, partition, raw)
        return must

    def _window_values(self, items: list[tuple[Name, _Dirty]]) -> tuple[dict[EntityKey, bytes],
                                                                         dict[EntityKey, bytes | None]]:
        """One spec's changed records as written at a flush (each with its window's undo section)
        and what the store held when the window began."""
        spec = items[0][1].spec
        windows, fields = len(spec.windows), len(spec.distinct_for(self.key))
        values = {name[1]: d.record if d.record is d.first else binary.with_undo(d.record, d.first, windows, fields)
                  for name, d in items}
        return values, {name[1]: d.base for name, d in items}

    def _by_spec(self) -> list[list[tuple[Name, _Dirty]]]:
        by_spec: dict[str, list[tuple[Name, _Dirty]]] = {}
        for name, d in self.dirty.items():
            by_spec.setdefault(name[0], []).append((name, d))
        return list(by_spec.values())

    @_locked
    def start_flush(self) -> Flush | None:
        """``flush`` in three steps, so that the window's write leaves the worker's thread: this one
        (under the lock) prepares the compare-and-set of every record changed since the last flush
        and takes them out of the window as if written — later batches read them from memory and
        the next window compares against them, its records keeping this window's undo (``pinned``)
        until its commit (``committed``) — then ``Flush.send`` writes them (any thread, no lock),
        and ``finish_flush`` settles the outcome. None: nothing changed (or the store cannot split
        its writes: then written here, as ``flush`` does). Raises as ``flush`` does only then."""
        if not self.dirty and not self.window_log:
            self.disabled = self.disabled or self._disabling
            return None
        inner = self.inner
        if not isinstance(inner, SplitWrites):
            self.flush()
            return None
        before = self._log_writer(self.window_log)
        self.window_log = []
        parts: list[tuple[CasWrite, list[tuple[Name, _Dirty]]]] = []
        for items in self._by_spec():
            values, expected = self._window_values(items)
            parts.append((inner.prepare_save(items[0][1].spec, values, expected), items))
        count = 0
        for write, items in parts:
            for name, d in items:
                del self.dirty[name]
                self.clean[name] = (write.records[name[1]], d.partition)
                if d.partition != SHARED:
                    self.pinned.setdefault(name, (d.first, d.partition))
                count += 1
        return Flush(inner, [w for w, _items in parts], count, before)

    @_locked
    def finish_flush(self, flush: Flush) -> int:
        """``start_flush``'s last step (on the thread that reads this store): waits for ``Flush.send``
        and returns how many records were written. A write that failed (``EntityStateUnavailable``)
        or found a record changed by another writer (``WriteBehindConflict``) raises, and every
        record held is forgotten: the records may or may not be in the store, and later batches
        were computed from them, so the caller reads everything since the last commit again."""
        try:
            lost = flush.result()
        except BaseException:
            for write in flush.writes:
                flush.inner.finish_save(write, None)
            self.forget()
            raise
        conflicts = [key for write, gone in zip(flush.writes, lost, strict=True)
                     for key in flush.inner.finish_save(write, gone)]
        if conflicts:
            self.forget()
            raise WriteBehindConflict(
                f"entity state: {len(conflicts)} records of {_fields(conflicts)} were changed by another writer since "
                f"this worker read them (a partition that moved?); the batches since the last commit are read again")
        while len(self.clean) > self.max_records:
            self.clean.popitem(last=False)
        # off only once nothing it holds is left unwritten (the next window's records may be open already)
        self.disabled = self.disabled or (self._disabling and not self.dirty)
        return flush.count

    @_locked
    def flush(self) -> int:
        """Write every record changed since the last flush, with its window's undo snapshot, in one
        compare-and-set per spec; returns how many. Raises ``WriteBehindConflict`` when another
        writer changed any of them (every record held is forgotten) and ``EntityStateUnavailable``
        when the store fails (retriable: the records stay pending, the next flush tries again; one
        that was in fact written then conflicts, and the window is read again)."""
        if not self.dirty and not self.window_log:
            self.disabled = self.disabled or self._disabling
            return 0
        before = self._log_writer(self.window_log)
        if before is not None:
            before()  # raises EntityStateUnavailable before any record is written: the window stays pending
        self.window_log = []
        written = 0
        for items in self._by_spec():
            spec = items[0][1].spec
            values, expected = self._window_values(items)
            lost = self.inner.save_raw(spec, values, expected)
            if lost:
                self.forget()
                raise WriteBehindConflict(
                    f"entity state: {len(lost)} records of {_fields(lost)} were changed by another writer since this "
                    f"worker read them (a partition that moved?); the batches since the last commit are read again")
            for name, d in items:
                self.dirty.pop(name)
                self.clean[name] = (values[name[1]], d.partition)
                if d.partition != SHARED:
                    self.pinned.setdefault(name, (d.first, d.partition))
                written += 1
        while len(self.clean) > self.max_records:
            self.clean.popitem(last=False)
        self.disabled = self.disabled or self._disabling
        return written

    @_locked
    def committed(self, partitions: set[int]) -> None:
        """The offsets of ``partitions`` are committed up to what was flushed: their records' next
        window starts an undo snapshot of its own (module docstring). A window already open (its
        batches read while the last one was written: ``start_flush``) gives its records theirs now:
        what a crash reads again starts at the commit, where their own undo starts."""
        self._unpin(partitions)
        for d in self.dirty.values():
            if d.partition in partitions:
                d.first = d.own

    def _unpin(self, partitions: set[int]) -> None:
        """Release the undo snapshots pinned for ``partitions``' records (committed, or dropped)."""
        for n in [n for n, (_raw, p) in self.pinned.items() if p in partitions]:
            del self.pinned[n]

    @_locked
    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the records of ``partitions`` (revoked: their new owner starts from the stored state
        of the committed offsets), and the shared ones (``own_all``: another worker writes them from
        now on; the caller abandons the window where any of them is unwritten, ``shared_pending``);
        returns how many changed records were dropped unflushed."""
        if partitions:
            partitions = {*partitions, SHARED}
            self.window_log.clear()
            self.staged_log.clear()
        dropped = [n for n, d in self.dirty.items() if d.partition in partitions]
        for n in dropped:
            del self.dirty[n]
        for n in [n for n, (_raw, p) in self.clean.items() if p in partitions]:
            del self.clean[n]
        self._unpin(partitions)
        return len(dropped)

    @_locked
    def forget(self) -> None:
        """Drop every record held, changed or not (the window is abandoned)."""
        self.dirty.clear()
        self.clean.clear()
        self.staged.clear()
        self.staged_log.clear()
        self.window_log.clear()
        self.read.clear()
        self.pinned.clear()  # read from the store again: its records carry the undo they were written with
        self.disabled = self.disabled or self._disabling
