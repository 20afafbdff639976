"""The enrich step: a batch of decoded events → the same events plus entity features.

Per batch: read each event's inputs once into columns (``columns.py``), collect every (key,
entity) the batch touches, load their records in ONE read, decide per entity which state the
batch starts from (idempotency, below), run every event of every entity of a key through the
compiled ``kernel`` in one call, save every touched record in ONE write. Events are identified by
``(partition, offset)`` (offline: ``(0, row)``).

**Idempotency.** A record remembers, per partition, the last offset applied, and keeps an undo
snapshot: the state before its last write and the first offset of that write per partition.

* No event of the batch is at or below the applied offsets → normal: apply all, new undo.
* The batch re-delivers the last write from its start (the same first offsets — a held batch
  retried, or a restart before the commit, with a batch of any length) → replay from the undo
  snapshot: identical features, identical final state, nothing counted twice.
* Anything else already applied (rare: an older batch redelivered after a rebalance dropped a
  commit) → those events are not applied again; their features are computed from the current
  state (approximate, never double-counted) and the undo snapshot is dropped.

**No lost update.** The write is a compare-and-set (``StateStore.save_raw(..., expected=)``): a
record another writer changed since this batch read it (another worker applying a shared
terminal's events from its partitions) is not overwritten; the enricher reads those entities
again, recomputes their events alone and retries, up to ``MAX_ATTEMPTS`` rounds, then raises
``EntityStateUnavailable`` (retriable: the batch is held and retried, idempotently).

Events without a usable key value get the features of an entity with no history and change no state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..entity_spec import EntitySpec
from ..errors import EntityStateUnavailable
from ..feedback import Label
from ..schema import validate_event
from . import binary, kernel
from .block import Block
from .columns import Columns, attach, entity_value, gc_paused
from .state import EntityKey, Record, StateStore

Position = tuple[int, int]  # (partition, offset)
MAX_ATTEMPTS = 8  # compare-and-set rounds per batch before the batch is held as an outage (retriable)

__all__ = ["Enricher", "Position", "enrich_history", "entity_value"]


class Enricher:
    """Applies a bundle's ``EntitySpec`` against a state store. ``on_enriched`` is a debug hook
    (tests compare worker and offline features with it); it gets every enriched batch.

    Construction compiles (or loads from numba's cache) the kernel, so the first batch does not."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.on_enriched: Callable[[list[dict[str, Any]]], None] | None = None
        self.conflicts = 0  # records recomputed because another writer changed them (``_redo``)
        kernel.warm()

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
                 positions: Sequence[Position]) -> np.ndarray:
        """``enrich`` without building dicts: the entity features as float64[N, len(spec.output_fields)]
        (columns in ``spec.output_fields`` order, the values ``enrich`` would add), for the feature
        step to read directly (``FeatureSpec.transform(..., extra=)``: the worker's and offline
        scoring's path). Same state changes and errors as ``enrich``."""
        with gc_paused():
            values = self._values(spec, events, positions, None)
            if self.on_enriched is not None:
                self.on_enriched(attach(events, spec.output_fields, values))
            return values

    def enrich_rows(self, spec: EntitySpec, events: Sequence[dict[str, Any]], positions: Sequence[Position],
                    keyed: Sequence[bool] | None) -> list[dict[str, Any]]:
        """``enrich`` where rows with ``keyed[row]`` False are treated as keyless (no state)."""
        out = attach(events, spec.output_fields, self._values(spec, events, positions, keyed))
        if self.on_enriched is not None:
            self.on_enriched(out)
        return out

    def _values(self, spec: EntitySpec, events: Sequence[dict[str, Any]], positions: Sequence[Position],
                keyed: Sequence[bool] | None) -> np.ndarray:
        cols = Columns.of(spec, events)
        groups: dict[EntityKey, list[int]] = {}
        loose: dict[str, list[int]] = {}
        for key in spec.keys:
            for row, event in enumerate(events):
                value = entity_value(event.get(key)) if keyed is None or keyed[row] else None
                if value is None:
                    loose.setdefault(key, []).append(row)
                else:
                    groups.setdefault((key, value), []).append(row)
        entities = list(groups)
        raws = self.store.load_raw(spec, entities)
        where = [(str(p), o) for p, o in positions]
        writes: dict[EntityKey, bytes] = {}
        parts = []
        for key in spec.keys:
            mine = [(k, groups[k], raw) for k, raw in zip(entities, raws, strict=True) if k[0] == key]
            parts.append(self._apply(spec, key, cols, mine, where, loose.get(key, []), writes))
        lost = self.store.save_raw(spec, writes, dict(zip(entities, raws, strict=True)))
        attempts = 1
        while lost:
            if attempts >= MAX_ATTEMPTS:
                raise EntityStateUnavailable(
                    f"entity state contended: {len(lost)} records changed by another writer between read and "
                    f"write {attempts} times in a row")
            self.conflicts += len(lost)
            lost = self._redo(spec, events, where, groups, lost, parts)
            attempts += 1
        return np.concatenate(parts, axis=1) if parts else np.empty((len(events), 0))

    def _apply(self, spec: EntitySpec, key: str, cols: Columns, mine: list[tuple[EntityKey, list[int], bytes | None]],
               where: list[tuple[str, int]], loose: list[int], writes: dict[EntityKey, bytes]) -> np.ndarray:
        """One key's features for the rows of ``cols`` (its entities ``mine`` and keyless ``loose``
        rows); the records to write go into ``writes``."""
        empty = binary.empty_core(spec, key)
        n_fields = len(spec.distinct_for(key))
        plans = [plan_bytes(spec, key, raw, rows, where, empty, n_fields) for _, rows, raw in mine]
        out = self._key(spec, key, cols, mine, plans, loose)
        for (k, _, _), p in zip(mine, plans, strict=True):
            writes[k] = binary.assemble(p.applied, p.core, p.undo)
        return out

    def _redo(self, spec: EntitySpec, events: Sequence[dict[str, Any]], where: list[tuple[str, int]],
              groups: dict[EntityKey, list[int]], lost: list[EntityKey], parts: list[np.ndarray]) -> list[EntityKey]:
        """Entities another writer changed between this batch's read and its write: read them again,
        recompute only their events' features for their key (an entity's features depend on its own
        state and events alone) into ``parts``, and compare-and-set them again; the entities lost
        again are returned."""
        raws = self.store.load_raw(spec, lost)
        writes: dict[EntityKey, bytes] = {}
        for i, key in enumerate(spec.keys):
            mine = [(k, raw) for k, raw in zip(lost, raws, strict=True) if k[0] == key]
            if not mine:
                continue
            rows = sorted(r for k, _ in mine for r in groups[k])
            at = {r: j for j, r in enumerate(rows)}
            cols = Columns.of(spec, [events[r] for r in rows])
            sub = [(k, [at[r] for r in groups[k]], raw) for k, raw in mine]
            parts[i][rows] = self._apply(spec, key, cols, sub, [where[r] for r in rows], [], writes)
        return self.store.save_raw(spec, writes, dict(zip(lost, raws, strict=True)))

    @staticmethod
    def _key(spec: EntitySpec, key: str, cols: Columns, mine: list[tuple[EntityKey, list[int], bytes | None]],
             plans: list[_BytesPlan], loose: list[int]) -> np.ndarray:
        fields = spec.distinct_for(key)
        block = Block.from_bytes(spec, fields, [p.start for p in plans], extra=len(loose), cols=cols)
        n = cols.ts.size
        state_row = np.empty(n, dtype=np.int64)
        apply = np.ones(n, dtype=np.bool_)
        for e, ((_, rows, _), p) in enumerate(zip(mine, plans, strict=True)):
            state_row[rows] = e
            if p.apply:  # some events already applied (an older batch redelivered)
                apply[rows] = p.apply
        state_row[loose] = np.arange(len(mine), len(mine) + len(loose))
        out = block.run(spec, state_row, apply, cols.ts, cols.amount)
        for p, core in zip(plans, block.core_bytes(len(plans)), strict=True):
            p.core = core
        return out


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
               empty: bytes, fields: int) -> _BytesPlan:
    """The idempotency decision (the module docstring's three cases) on a record's bytes: the
    cores stay bytes (the undo snapshot of a normal write is the loaded current core, copied)."""
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
                                                                            mine, done):
        result = _BytesPlan(parsed.undo_core, [], applied, parsed.undo)
        for part in firsts:  # the state now ends where this batch ends (it may be shorter than the last write)
            applied[part] = -1
    else:
        result = _BytesPlan(parsed.core, [not d for d in done], applied, None)
    for p, o in mine:
        if o > applied.get(p, -1):
            applied[p] = o
    return result


def replays(last_firsts: dict[str, int], firsts: dict[str, int], where: list[tuple[str, int]],
            done: list[bool]) -> bool:
    """True when the batch starts exactly where the last write started (``last_firsts``, the undo
    snapshot's first offsets), on every partition it wrote."""
    if any(firsts.get(p) != o for p, o in last_firsts.items()):
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
