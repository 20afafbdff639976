"""The enrich step: a batch of decoded events → the same events plus entity features.

Per batch: read each event's inputs once into columns (``columns.py``), group the batch by
entity per key (``columns.entity_codes``), load every touched record in ONE read, decide per
entity which state the batch starts from (idempotency, below: for all entities at once in
``records.py``, event by event only where something was already applied), run every event of
every entity of a key through the compiled ``kernel`` in one call, write the new records
(``records.assemble``, compiled) in ONE write. Events are identified by ``(partition, offset)``
(offline: ``(0, row)``).

**Idempotency.** A record remembers, per partition, the last offset applied, and keeps an undo
snapshot: the state before its last write and the first offset of that write per partition.

* No event of the batch is at or below the applied offsets → normal: apply all, new undo.
* The batch re-delivers the last write from its start (the same first offsets — a held batch
  retried, or a restart before the commit, with a batch of any length, on all or some of the
  write's partitions: the others' part is undone too and applied again when read — only where
  this worker reads them itself, ``Enricher.held``, and never for a key in the replay log, whose
  third case is exact without undoing another worker's events) → replay from the undo snapshot:
  identical features, identical final state, nothing counted twice.
* Anything else already applied (a key shared across partitions read again after a crash in a
  write-behind window, or an older batch redelivered after a rebalance dropped a commit) → those
  events are not applied again and the undo snapshot is dropped; their features are the ones
  logged when they were applied (the **replay log**, ``replay_log.py``: a worker with
  write-behind logs the shared keys' features of every batch before writing their records),
  or, where none was logged, computed from the current state (approximate, never double-counted;
  counted in ``log_misses``).

**No lost update.** The write is a compare-and-set (``StateStore.save_raw(..., expected=)``): a
record another writer changed since this batch read it (another worker applying a shared
terminal's events from its partitions) is not overwritten; the enricher reads those entities
again, recomputes their events alone and retries, up to ``MAX_ATTEMPTS`` rounds, then raises
``EntityStateUnavailable`` (retriable: the batch is held and retried, idempotently).

Events without a usable key value get the features of an entity with no history and change no state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..entity_spec import EntitySpec
from ..errors import EntityStateUnavailable
from ..feedback import Label
from ..schema import validate_event
from . import binary, kernel, records
from .block import Block
from .block import warm as warm_blocks
from .columns import Columns, Fields, attach, entity_codes, entity_value, gc_paused
from .replay_log import FeatureLog
from .state import EntityKey, Record, StateStore

Position = tuple[int, int]  # (partition, offset)
# the events' positions: one (partition, offset) per event, or the same as two int64 arrays
# (partitions, offsets) — the worker's form, without a tuple per event
Positions = Sequence[Position] | tuple[np.ndarray, np.ndarray]
log = logging.getLogger("stream_detector.entity")
MAX_ATTEMPTS = 8  # compare-and-set rounds per batch before the batch is held as an outage (retriable)

__all__ = ["Enricher", "PendingWrite", "Position", "Positions", "enrich_history", "entity_value"]


class Enricher:
    """Applies a bundle's ``EntitySpec`` against a state store. ``on_enriched`` is a debug hook
    (tests compare worker and offline features with it); it gets every enriched batch.

    Construction compiles (or loads from numba's cache) the kernel, so the first batch does not."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.on_enriched: Callable[[list[dict[str, Any]]], None] | None = None
        self.conflicts = 0  # records recomputed because another writer changed them (``_redo``)
        self.last_untimed = 0  # events of the last batch without a usable timestamp (at their entity's last time)
        # per key, the last batch's events earlier than their entity's last time (applied at it: late)
        self.last_late: dict[str, int] = {}
        self._late_rows: dict[str, np.ndarray] = {}  # per key, which of the last batch's events (bool[N])
        self.replay_log: FeatureLog | None = None  # ``keep_replay_log``
        self.partition_key: str | None = None  # with ``log_writes``: its shared keys' features are logged
        self.log_writes = False
        self.log_hits = 0  # already-applied events whose features came from the replay log
        self.log_misses = 0  # ... and those it did not hold (computed from the current state: approximate)
        # the caller says the approximate features (``warn_misses``) once it knows the batch is kept: a
        # worker first asks whether it still owns the batch (an evicted one gives it up: no warning then)
        self.defer_miss_warnings = False
        self._miss_warnings: list[tuple[int, str, int]] = []  # (misses, key, hits) of the last ``begin``
        # the partitions (str) whose events this enricher reads again after a redelivery: its worker's
        # assignment; None (offline, tests): every one. A replay may undo only these (``replays``)
        self.held: frozenset[str] | None = None
        kernel.warm()
        records.warm()
        warm_blocks()

    def keep_replay_log(self, log: FeatureLog | None, partition_key: str | None, write: bool = True) -> None:
        """Take an already-applied event's features from ``log`` (``replay_log.py``), whatever wrote
        it: a worker that does not write the log itself (``SD_ENTITY_REPLAY_LOG=false``,
        ``SD_ENTITY_FLUSH_MS=0``) still replays exactly what a predecessor logged before it crashed
        (a trial: one restarted so after a crash raised 2.7x offline's alerts). ``write``: also log
        the features of every key shared across partitions of a topic keyed by ``partition_key``
        (``EntitySpec.shared_keys``) before their records are written. ``None``: neither."""
        self.replay_log, self.partition_key = log, partition_key
        self.log_writes = log is not None and write and bool(partition_key)

    def _logged(self, spec: EntitySpec) -> tuple[str, ...]:
        """The keys of ``spec`` whose features this enricher writes to the replay log."""
        if not self.log_writes or self.partition_key is None:
            return ()
        return spec.shared_keys(self.partition_key)

    def _log(self, spec: EntitySpec, batch: list[_KeyBatch], parts: list[np.ndarray], at: _Positions) -> None:
        """The replay log's entries of a batch about to be written: its logged keys' features, for
        the events with a usable key value — appended now, or kept with the batch's records where
        the store holds them in a window (``StateStore.log_sink``: a worker owning every partition;
        written by the window's flush before the records). Raises ``EntityStateUnavailable`` (retriable)."""
        logged = self._logged(spec)
        if not logged:
            return
        assert self.replay_log is not None
        sink = self.store.log_sink() or self.replay_log.append
        for kb, part in zip(batch, parts, strict=True):
            if kb.key not in logged:
                continue
            rows = np.flatnonzero(kb.codes >= 0)
            if rows.size:
                sink(spec, kb.key, at.values[at.part[rows]], at.offset[rows], part[rows])

    def enrich(self, spec: EntitySpec | None, events: Sequence[dict[str, Any]],
               positions: Sequence[Position]) -> list[dict[str, Any]]:
        """The events with entity fields added (new dicts, ``spec.output_fields`` as floats); the
        input list itself when ``spec`` is None. Raises ``EntityStateUnavailable`` (retriable)
        when the store cannot be read or written; then no state has changed."""
        if spec is None:
            return list(events)
        with gc_paused():
            return self.enrich_rows(spec, events, positions, None)

    def features(self, spec: EntitySpec, events: Sequence[dict[str, Any]],
                 positions: Positions, fields: Fields | None = None) -> np.ndarray:
        """``enrich`` without building dicts: the entity features as float64[N, len(spec.output_fields)]
        (columns in ``spec.output_fields`` order, the values ``enrich`` would add), for the feature
        step to read directly (``FeatureSpec.transform(..., extra=)``: the worker's and offline
        scoring's path). Same state changes and errors as ``enrich``. ``fields``: some fields of
        ``events`` already read out, {name: one value per event} (the decode step's ``Decoded.columns``)."""
        pending = self.begin(spec, events, positions, fields)
        pending.write()
        return pending.values

    def warn_misses(self) -> None:
        """Log (WARNING) the last ``begin``'s already-applied events that the replay log did not hold,
        per key: their features came from the current state (approximate). Said at once unless
        ``defer_miss_warnings``; then the caller says them when it keeps the batch."""
        for misses, key, hits in self._miss_warnings:
            log.warning("entity state: %d event(s) of %s already applied and not in the replay log: their "
                        "features come from the current state (approximate; %d found in the log)", misses, key, hits)
        self._miss_warnings.clear()

    def begin(self, spec: EntitySpec, events: Sequence[dict[str, Any]], positions: Positions,
              fields: Fields | None = None) -> PendingWrite:
        """``features`` in two halves, so that the caller can score while the state is written: the
        batch's records are read and its features computed (``PendingWrite.values``), and nothing
        is written until ``PendingWrite.write``, which may change the features of some rows (those
        of entities another writer changed in between: it returns them). Raises
        ``EntityStateUnavailable`` (retriable) when the store cannot be read; then no state has
        changed."""
        self._miss_warnings.clear()  # a batch given up unsaid (an evicted worker's) says nothing later
        with gc_paused():
            return self._begin(spec, events, positions, None, fields, hook=True)

    def enrich_rows(self, spec: EntitySpec, events: Sequence[dict[str, Any]], positions: Sequence[Position],
                    keyed: Sequence[bool] | None) -> list[dict[str, Any]]:
        """``enrich`` where rows with ``keyed[row]`` False are treated as keyless (no state)."""
        out = attach(events, spec.output_fields, self._values(spec, events, positions, keyed))
        if self.on_enriched is not None:
            self.on_enriched(out)
        return out

    def _values(self, spec: EntitySpec, events: Sequence[dict[str, Any]], positions: Sequence[Position],
                keyed: Sequence[bool] | None, fields: Fields | None = None) -> np.ndarray:
        pending = self._begin(spec, events, positions, keyed, fields, hook=False)
        pending.write()
        return pending.values

    def _begin(self, spec: EntitySpec, events: Sequence[dict[str, Any]], positions: Positions,
               keyed: Sequence[bool] | None, fields: Fields | None, hook: bool) -> PendingWrite:
        cols = Columns.of(spec, events, fields)
        self.last_untimed = int(np.count_nonzero(np.isnan(cols.ts)))
        self.last_late = {}
        self._late_rows = {}
        at = _Positions(positions)
        batch = [_KeyBatch(key, *entity_codes(events, key, keyed, fields)) for key in spec.keys]
        entities = [(kb.key, name) for kb in batch for name in kb.names]
        raws = self.store.load_raw(spec, entities)
        writes: dict[EntityKey, bytes] = {}
        parts, first = [], 0
        for kb in batch:
            mine = raws[first:first + len(kb.names)]
            first += len(mine)
            parts.append(self._apply(spec, kb, cols, list(range(len(kb.names))), mine, at, writes))
        return PendingWrite(self, spec, events, at, batch, parts, writes, dict(zip(entities, raws, strict=True)),
                            hook)

    def _apply(self, spec: EntitySpec, kb: _KeyBatch, cols: Columns, which: list[int], raws: list[bytes | None],
               at: _Positions, writes: dict[EntityKey, bytes], rows: np.ndarray | None = None) -> np.ndarray:
        """One key's features for the rows of ``cols``, the events of ``kb`` (the batch's ``rows`` of
        it, int64, default all: ``_redo``'s): the entities ``which`` (indices into ``kb.names``,
        records ``raws``) and, with all rows, the keyless ones; the records to write go into
        ``writes``, the late events into ``last_late``."""
        empty = binary.empty_core(spec, kb.key)
        n_fields = len(spec.distinct_for(kb.key))
        spans = kb.spans(at, which)
        parsed = records.parse(raws, empty, n_fields, len(spec.windows))
        plan = records.normal(parsed, spans)
        # the compiled path writes the normal entities: each starts from its current core, where
        # ``parse`` found it; the others (a redelivery, a record of another format: the per-event
        # decision) from their plan's core, appended after the batch's records
        buf, core_at = parsed.buf, parsed.core_start
        odd = np.flatnonzero(~plan.normal).tolist()
        undoable = frozenset() if kb.key in self._logged(spec) else self.held
        plans = {j: plan_bytes(spec, kb.key, raws[j], kb.rows_of(which[j]).tolist(), at.where, empty, n_fields,
                               undoable) for j in odd}
        if odd:
            core_at = core_at.copy()
            end = len(parsed.data)
            for j in odd:
                core_at[j] = end
                end += len(plans[j].start)
            buf = np.frombuffer(parsed.data + b"".join(plans[j].start for j in odd), dtype=np.uint8)
        codes = kb.codes
        state_row = np.full(codes.size, -1, dtype=np.int64)
        apply = np.ones(codes.size, dtype=np.bool_)
        slot = np.full(len(kb.names) + 1, -1, dtype=np.int64)  # kb code → block row (the last: keyless)
        slot[which] = np.arange(len(which))
        keyed = codes >= 0
        state_row[keyed] = slot[codes[keyed]]
        for j, p in plans.items():
            if p.apply:  # some events already applied (an older batch redelivered)
                apply[codes == which[j]] = p.apply
        loose = np.flatnonzero(state_row < 0)
        state_row[loose] = np.arange(len(which), len(which) + loose.size)
        fields = spec.distinct_for(kb.key)
        block = Block.from_buffer(spec, fields, buf, core_at, extra=loose.size, cols=cols)
        out = block.run(spec, state_row, apply, cols.ts, cols.amount)
        self._late(kb.key, block.late_rows, rows)
        if not apply.all() and self.replay_log is not None:  # applied before: the features it got then
            done = np.flatnonzero(~apply)
            found, logged = self.replay_log.find(spec, kb.key, at.values[at.part[done]], at.offset[done], out.shape[1])
            out[done[found]] = logged[found]
            hits = int(np.count_nonzero(found))
            self.log_hits += hits
            self.log_misses += done.size - hits
            if hits < done.size:
                self._miss_warnings.append((done.size - hits, kb.key, hits))
                if not self.defer_miss_warnings:
                    self.warn_misses()
            else:
                log.info("entity state: %d already-applied event(s) of %s replayed from the replay log", hits, kb.key)
        cores, bounds = block.core_buffer(len(which))
        fast_records = iter(records.assemble(parsed, plan, spans, cores, bounds))
        names = kb.names
        if not odd:
            for e, record in zip(which, fast_records, strict=True):
                writes[(kb.key, names[e])] = record
            return out
        cut = bounds.tolist()
        for j, e in enumerate(which):
            own = plans.get(j)  # None: a normal entity, written by the compiled path
            record = (next(fast_records) if own is None
                      else binary.assemble(own.applied, cores[cut[j]:cut[j + 1]], own.undo))
            writes[(kb.key, names[e])] = record
        return out

    def _late(self, key: str, late: np.ndarray, rows: np.ndarray | None) -> None:
        """``last_late[key]`` with ``late`` (bool, one per event applied) for the batch's ``rows``
        (default: all): an entity recomputed after a compare-and-set conflict (``_redo``) replaces its
        events' flags, so it is not counted twice (an upper bound before 2026-12-07)."""
        if rows is None:
            self._late_rows[key] = late.copy()
        else:
            self._late_rows[key][rows] = late
        self.last_late[key] = int(np.count_nonzero(self._late_rows[key]))

    def _redo(self, spec: EntitySpec, events: Sequence[dict[str, Any]], at: _Positions, batch: list[_KeyBatch],
              lost: list[EntityKey], parts: list[np.ndarray], changed: list[np.ndarray]) -> list[EntityKey]:
        """Entities another writer changed between this batch's read and its write: read them again,
        recompute only their events' features for their key (an entity's features depend on its own
        state and events alone) into ``parts`` (their rows added to ``changed``), and compare-and-set
        them again; the entities lost again are returned. They are read with ``reload_raw``, so a
        write-behind store keeps the batch's staged records staged."""
        raws = self.store.reload_raw(spec, lost)
        writes: dict[EntityKey, bytes] = {}
        for i, kb in enumerate(batch):
            number = {name: e for e, name in enumerate(kb.names)}
            mine = [(number[k[1]], raw) for k, raw in zip(lost, raws, strict=True) if k[0] == kb.key]
            if not mine:
                continue
            which = [e for e, _ in mine]
            rows = np.flatnonzero(np.isin(kb.codes, which))
            cols = Columns.of(spec, [events[r] for r in rows.tolist()])
            sub = _KeyBatch(kb.key, kb.names, kb.codes[rows])
            parts[i][rows] = self._apply(spec, sub, cols, which, [raw for _, raw in mine], at.subset(rows), writes,
                                         rows)
            changed.append(rows)
        self._log(spec, batch, parts, at)  # the batch's entries again, recomputed rows included: the last wins
        return self.store.save_raw(spec, writes, dict(zip(lost, raws, strict=True)))


class PendingWrite:
    """A batch enriched but not yet written (``Enricher.begin``): ``values`` are its entity features,
    float64[N, len(spec.output_fields)], final unless ``write`` says otherwise."""

    def __init__(self, enricher: Enricher, spec: EntitySpec, events: Sequence[dict[str, Any]], at: _Positions,
                 batch: list[_KeyBatch], parts: list[np.ndarray], writes: dict[EntityKey, bytes],
                 read: dict[EntityKey, bytes | None], hook: bool = True) -> None:
        self._enricher, self._spec, self._events, self._at = enricher, spec, events, at
        self._batch, self._parts, self._writes, self._read = batch, parts, writes, read
        self.values = np.concatenate(parts, axis=1) if parts else np.empty((len(events), 0))
        self.written = False
        self._hook = hook  # call the enricher's ``on_enriched`` once written (``Enricher.begin``'s)

    def write(self) -> np.ndarray:
        """The batch's records written, compare-and-set against what ``begin`` read; entities
        another writer changed in between are read again and their events recomputed
        (``Enricher._redo``), up to ``MAX_ATTEMPTS`` rounds. Returns the rows (int64 indices into
        the batch's events, sorted, unique) whose ``values`` changed: empty when nobody else wrote.
        Raises ``EntityStateUnavailable`` (retriable: the batch is held and retried, idempotently)
        when the store cannot be written or stays contended. Then calls the enricher's ``on_enriched``
        (``Enricher.begin``'s writes)."""
        enricher, spec = self._enricher, self._spec
        changed: list[np.ndarray] = []
        with gc_paused():
            enricher._log(spec, self._batch, self._parts, self._at)  # before the records: replay_log.py
            lost = enricher.store.save_raw(spec, self._writes, self._read)
            attempts = 1
            while lost:
                if attempts >= MAX_ATTEMPTS:
                    raise EntityStateUnavailable(
                        f"entity state contended: {len(lost)} records changed by another writer between read and "
                        f"write {attempts} times in a row")
                enricher.conflicts += len(lost)
                lost = enricher._redo(spec, self._events, self._at, self._batch, lost, self._parts, changed)
                attempts += 1
        self.written = True
        rows = np.unique(np.concatenate(changed)) if changed else np.zeros(0, dtype=np.int64)
        if rows.size:
            self.values = np.concatenate(self._parts, axis=1)
        if self._hook and enricher.on_enriched is not None:
            enricher.on_enriched(attach(self._events, spec.output_fields, self.values))
        return rows


class _Positions:
    """The batch's ``(partition, offset)`` per event as arrays (partitions numbered densely),
    with the per-event form (``where``: ``(str(partition), offset)``) built only when needed."""

    def __init__(self, positions: Positions) -> None:
        if isinstance(positions, tuple) and len(positions) == 2 and isinstance(positions[0], np.ndarray):
            partitions = np.asarray(positions[0], dtype=np.int64).reshape(-1)
            self.offset = np.asarray(positions[1], dtype=np.int64).reshape(-1)
        else:
            pairs = np.asarray(positions, dtype=np.int64).reshape(len(positions), 2)
            partitions, self.offset = pairs[:, 0], pairs[:, 1]
        self.values, part = np.unique(partitions, return_inverse=True)
        self.part = part.astype(np.int64).reshape(-1)
        self.names = [str(v) for v in self.values.tolist()]
        self._where: list[tuple[str, int]] | None = None

    @property
    def where(self) -> list[tuple[str, int]]:
        if self._where is None:
            names = self.names
            self._where = [(names[p], o) for p, o in zip(self.part.tolist(), self.offset.tolist(), strict=True)]
        return self._where

    def subset(self, rows: np.ndarray) -> _Positions:
        return _Positions((self.values[self.part[rows]], self.offset[rows]))


@dataclass(slots=True)
class _KeyBatch:
    """One key's entities in a batch: ids (``names``) and each event's entity code (-1: keyless)."""

    key: str
    names: list[str]
    codes: np.ndarray

    def rows_of(self, e: int) -> np.ndarray:
        return np.flatnonzero(self.codes == e)

    def spans(self, at: _Positions, which: list[int]) -> records.Spans:
        """Per (entity, partition) of the batch, entities numbered by their place in ``which``
        (indices into ``names``), ordered by entity then first appearance: (partition, offset of
        its first event, smallest offset, largest offset) — what the idempotency decision reads."""
        rows = np.flatnonzero(self.codes >= 0)
        if not rows.size:
            empty = np.zeros(0, dtype=np.int64)
            return records.Spans(empty, empty, empty, empty, empty)
        width = len(at.names)
        slot = np.full(len(self.names), -1, dtype=np.int64)
        slot[which] = np.arange(len(which))
        pair = slot[self.codes[rows]] * width + at.part[rows]
        order = np.argsort(pair, kind="stable")
        ordered = pair[order]
        starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
        offs = at.offset[rows][order]
        keys = ordered[starts]
        by = np.lexsort((order[starts], keys // width))  # by entity, then where each pair first appears
        return records.Spans(
            (keys // width)[by], at.values[keys % width][by], offs[starts][by],
            np.minimum.reduceat(offs, starts)[by], np.maximum.reduceat(offs, starts)[by])


@dataclass(slots=True)
class _BytesPlan:
    """One entity's part of a batch, on record bytes: the core bytes the batch starts from, which
    events it applies (empty: all of them), the offsets and undo section to write; ``core`` is
    filled with the state after the batch."""

    start: bytes
    apply: list[bool]
    applied: dict[str, int]
    undo: bytes | None
    core: bytes = b""


def plan_bytes(spec: EntitySpec, key: str, raw: bytes | None, rows: list[int], where: list[tuple[str, int]],
               empty: bytes, fields: int, undoable: frozenset[str] | None = None) -> _BytesPlan:
    """The idempotency decision (the module docstring's three cases) on a record's bytes: the
    cores stay bytes (the undo snapshot of a normal write is the loaded current core, copied).
    ``undoable``: the partitions a replay may undo without events of the batch (``replays``)."""
    if raw is None:
        parsed = binary.Parsed({}, empty, None, None, None)
    else:
        parsed = binary.parse(spec, key, raw, fields)
    applied = parsed.applied
    mine = [where[r] for r in rows]
    done = [o <= applied.get(p, -1) for p, o in mine]
    firsts: dict[str, int] = {}
    for p, o in mine:
        firsts.setdefault(p, o)
    if not any(done):
        result = _BytesPlan(parsed.core, [], applied, binary.undo_section(firsts, parsed.core))
    elif parsed.undo is not None and parsed.undo_core is not None and replays(parsed.undo_firsts or {}, firsts,
                                                                            mine, done, undoable):
        result = _BytesPlan(parsed.undo_core, [], applied, parsed.undo)
        for part in firsts:  # the state now ends where this batch ends (it may be shorter than the last write)
            applied[part] = -1
        for part, first in (parsed.undo_firsts or {}).items():
            if part not in firsts:  # the last write's events there are undone too: applied when read again
                applied[part] = first - 1
    else:
        result = _BytesPlan(parsed.core, [not d for d in done], applied, None)
    for p, o in mine:
        if o > applied.get(p, -1):
            applied[p] = o
    return result


def replays(last_firsts: dict[str, int], firsts: dict[str, int], where: list[tuple[str, int]],
            done: list[bool], undoable: frozenset[str] | None = None) -> bool:
    """True when the batch starts exactly where the last write started (``last_firsts``, the undo
    snapshot's first offsets) on every partition of that write it has events of, and has no
    already-applied event elsewhere. It may lack some of the write's partitions (a shared entity,
    a terminal, whose last write took events from four partitions, read again after a crash by a
    worker whose first batch released two of them): the replay then also undoes those partitions'
    part, which is applied again when read (``plan_bytes`` sets their applied offsets back) — so
    only where this worker reads them again itself: each such partition must be in ``undoable``
    (None: any). A partition another worker reads on from past that part (a rebalance that handed
    this one its partitions while the other kept its own: ``tests/chaos/test_entity_freeze.py``)
    would never apply it again, and the record would lose those events; the batch's
    already-applied events then take the third case (the replay log's features, else approximate)."""
    if any(p in firsts and firsts[p] != o for p, o in last_firsts.items()):
        return False
    if undoable is not None and any(p not in firsts and p not in undoable for p in last_firsts):
        return False
    return all(not d or p in last_firsts for (p, _o), d in zip(where, done, strict=True))


def exact_replay(record: Record, firsts: dict[str, int], where: list[tuple[str, int]],
                 done: list[bool]) -> bool:
    """``replays`` for a decoded record (the per-event reference's form)."""
    undo = record.get("u")
    if not undo:
        return False
    return replays(undo["f"], firsts, where, done)


def enrich_history(spec: EntitySpec, events: Sequence[dict[str, Any]], chunk: int = 8192,
                   store: StateStore | None = None, labels: Iterable[Label] = ()) -> list[dict[str, Any]]:
    """Offline, point-in-time enrichment of a history in arrival (file) order.

    Each row's features come only from rows before it — exactly what a worker computes when the
    rows arrive in this order. Rows a worker would reject at decode are not applied to any state
    (they get the features of an entity without history, so rows stay aligned). Without a
    ``store`` the state lives in arrays for the whole run (``history.py``, no records, same
    kernel); with one, chunks of ``chunk`` rows go through an ``Enricher`` on that store.
    A spec with label keys also gets ``spec.label_fields`` from ``labels`` (feedback records,
    ``labels.enrich_labels``; none given: no label is known, the label features are 0).
    """
    if store is None:
        from .history import enrich_offline

        out = enrich_offline(spec, events, chunk)
    else:
        enricher = Enricher(store)
        out = []
        for start in range(0, len(events), chunk):
            part = events[start:start + chunk]
            valid = [validate_event(e) is None for e in part]
            with gc_paused():
                out.extend(enricher.enrich_rows(spec, part, [(0, start + j) for j in range(len(part))], valid))
    if spec.label_keys:
        from .labels import enrich_labels

        return enrich_labels(spec, out, labels)
    return out
