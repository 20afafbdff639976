"""Offline enrichment (training, ``score``) without records: the state of every entity stays in
the kernel's arrays for the whole run.

Same columns, same label codes (``compute.label_code``), same kernel as the
``Enricher`` — only the per-batch record load/save and the idempotency bookkeeping, which an
in-order offline replay from empty state never needs (every row is new, applied once), are left
out. ``tests/unit/test_entity_kernel.py`` holds it equal to the per-event reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..entity_spec import EntitySpec
from ..feedback import Label
from ..schema import validate_event
from .block import Block
from .columns import Columns, Fields, attach, entity_value, gc_paused, read, timestamp_value


def enrich_columns(spec: EntitySpec, events: Sequence[dict[str, Any]], chunk: int = 65_536,
                   valid: Sequence[bool] | None = None) -> np.ndarray:
    """The entity features of a history in arrival order, as float64[N, len(spec.output_fields)]
    (columns in ``spec.output_fields`` order) — ``enrich_history`` without building dicts.
    Rows with ``valid[row]`` False get empty-history features and change no state."""
    n = len(events)
    cols = Columns.of(spec, events)
    out = np.empty((n, len(spec.output_fields)))
    col = 0
    for key in spec.keys:
        found = (entity_value(e.get(key)) if valid is None or ok else None
                 for e, ok in zip(events, valid or [True] * n, strict=True))
        width = len(spec.fields_for(key))
        out[:, col:col + width] = enrich_key(spec, key, cols, found, n, chunk)
        col += width
    return out


def enrich_key(spec: EntitySpec, key: str, cols: Columns, entities: Iterable[str | None], n: int,
               chunk: int = 65_536) -> np.ndarray:
    """One key's features (float64[n, len(spec.fields_for(key))]) of ``n`` events in arrival order:
    ``entities`` the entity id of each (None: keyless or invalid — empty history, no state kept),
    ``cols`` their timestamps, amounts and distinct labels. The rows of other entities never
    matter, so any subset of entities taken whole (a shard by key, ``big/shards.py``) gives
    each of its rows the same features as the whole history."""
    ids: dict[str, int] = {}
    rows = np.fromiter((-1 if v is None else ids.setdefault(v, len(ids)) for v in entities), np.int64, n)
    return enrich_rows(spec, key, cols, rows, len(ids), chunk)


def enrich_rows(spec: EntitySpec, key: str, cols: Columns, rows: np.ndarray, entities: int,
                chunk: int = 65_536) -> np.ndarray:
    """``enrich_key`` with the entities already numbered: ``rows`` int64[n], each event's entity in
    ``0 .. entities - 1`` (-1: keyless or invalid)."""
    n, chunk = len(rows), max(1, chunk)
    apply = np.ones(min(chunk, n), dtype=np.bool_)
    block = Block.of(spec, spec.distinct_for(key), [], extra=entities + min(chunk, n), cols=cols)
    out = np.empty((n, len(spec.fields_for(key))))
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        state_row = rows[part].copy()
        loose = state_row < 0
        state_row[loose] = entities + np.arange(int(loose.sum()))  # keyless: a fresh row each
        block.clear(slice(entities, None))
        size = part.stop - part.start
        out[part] = block.run(spec, state_row, apply[:size], cols.ts[part], cols.amount[part],
                              np.ascontiguousarray(block.codes[:, part]))
    return out


def enrich_offline(spec: EntitySpec, events: Sequence[dict[str, Any]], chunk: int) -> list[dict[str, Any]]:
    """``enrich_history`` from empty state: new dicts with ``spec.output_fields`` added, in order.
    Rows failing ``validate_event`` get empty-history features and change no state."""
    valid = [validate_event(e) is None for e in events]
    values = enrich_columns(spec, events, chunk, valid)
    out: list[dict[str, Any]] = []
    step = max(1, chunk)
    for start in range(0, len(events), step):  # the collector may run between chunks, not inside
        with gc_paused():
            out.extend(attach(events[start:start + step], spec.output_fields, values[start:start + step]))
    return out


@dataclass
class Selected:
    """Some rows of a history, enriched in the context of all of it (``enrich_selected``):
    ``positions`` int64[k] their positions in the history (ascending); ``events`` those events as
    given; ``rows`` new dicts, the events with ``spec.all_fields`` added (what ``enrich_history``
    gives for those rows); ``values`` float64[k, len(spec.all_fields)], the same features as a
    matrix (step 3a's ``Extra``)."""

    positions: np.ndarray
    events: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    values: np.ndarray


class _Indexed:
    """A ``LabelStore`` already indexed with the whole history: ``label_values`` asks it for books only."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def index(self, spec: EntitySpec, events: Sequence[dict[str, Any]], times: np.ndarray) -> None:
        pass

    def books(self, key: str, values: Sequence[str]) -> Any:
        return self.store.books(key, values)


def enrich_selected(spec: EntitySpec, chunks: Iterable[Sequence[dict[str, Any]]],
                    keep: Callable[[int, dict[str, Any]], bool], labels: Iterable[Label] = ()) -> Selected:
    """``enrich_history`` of a history given in consecutive parts (``chunks``, in arrival order),
    returning only the rows for which ``keep(position, event)`` is true — with the same values, bit
    for bit (``tests/unit/test_entity_selected.py``), in memory proportional to the kept rows plus
    the entities' state (``CarriedState``, carried from part to part) and the labelled events' ids:
    the retrainer enriches a history of millions of events it never holds as dicts
    (``retrain/job.py``). ``labels``: feedback records for ``spec.label_fields`` (none: zeros)."""
    from .labels import InMemoryLabels, label_values

    state = CarriedState(spec)  # the state crosses the parts: the kept rows' features as in one go
    store = InMemoryLabels(labels) if spec.label_keys else None
    waiting = store.waiting if store is not None else {}
    kept: list[dict[str, Any]] = []
    kept_at: list[int] = []
    kept_valid: list[bool] = []
    history: list[np.ndarray] = []
    n = 0
    for part in chunks:
        valid = [validate_event(e) is None for e in part]
        features = state.features(part, valid)
        picked: list[int] = []
        labelled: list[dict[str, Any]] = []
        for i, (event, ok) in enumerate(zip(part, valid, strict=True)):
            if keep(n + i, event):
                picked.append(i)
                kept.append(event)
                kept_at.append(n + i)
                kept_valid.append(ok)
            if ok and waiting and str(event.get("event_id")) in waiting:
                labelled.append(event)
        history.append(features[picked])
        if store is not None and labelled:  # every valid labelled event, in order (enrich_labels' index)
            times = np.fromiter((timestamp_value(e.get("timestamp")) for e in labelled), np.float64, len(labelled))
            store.index(spec, labelled, times)
        n += len(part)
    positions = np.asarray(kept_at, dtype=np.int64)
    col = len(spec.output_fields)
    values = np.zeros((len(kept), len(spec.all_fields)))
    if history:
        values[:, :col] = np.concatenate(history)
    if store is not None:  # labels known for the whole history first, then asked (enrich_labels' order)
        rows_ok = np.flatnonzero(np.asarray(kept_valid, dtype=bool))
        values[rows_ok, col:] = label_values(spec, _Indexed(store), [kept[i] for i in rows_ok.tolist()],
                                             np.ascontiguousarray(values[rows_ok, :col]))
    with gc_paused():
        rows = attach(kept, spec.all_fields, values)
    return Selected(positions, kept, rows, values)


class CarriedState:
    """Offline enrichment of a history given in consecutive parts, the state of every entity kept
    in the kernel's arrays between calls (``offline.OfflineScorer``: ``score`` and ``score
    --streamed``). ``features(part)`` for the parts in order equals ``enrich_columns`` of their
    concatenation, bit for bit (``tests/unit/test_entity_selected.py``); no record is encoded or
    decoded and no idempotency is kept (an offline replay applies every row once, in order).

    Every event given is applied (give only the events a worker would: valid, typed). Memory per
    entity: the kernel's arrays (``block.Block``: 8 + 24·W + F·(8 + 16·(K + 1)) bytes)."""

    def __init__(self, spec: EntitySpec) -> None:
        self.spec = spec
        self.keys = {key: _KeyState(spec, key) for key in spec.keys}
        self.late = 0  # events applied so far earlier than an earlier event of their entity, for any key

    def features(self, events: Sequence[dict[str, Any]], valid: Sequence[bool] | None = None,
                 fields: Fields | None = None) -> np.ndarray:
        """float64[N, len(spec.output_fields)] of the next part of the history (columns in
        ``spec.output_fields`` order); the state advances past it. Rows with ``valid[row]`` False
        get empty-history features and change no state (``enrich_columns``' rule). ``fields``:
        some fields of ``events`` already read out, {name: one value per event}."""
        cols = Columns.of(self.spec, events, fields)
        ok = valid if valid is not None else [True] * len(events)
        parts = [state.run(cols, [entity_value(v) if good else None
                                  for v, good in zip(read(events, key, fields), ok, strict=True)])
                 for key, state in self.keys.items()]
        if parts:  # the kernel's late flags of this part, per key (each key's block keeps its last run's)
            self.late += int(np.count_nonzero(np.logical_or.reduce([s.block.late_rows for s in self.keys.values()])))
        return np.concatenate(parts, axis=1) if parts else np.empty((len(events), 0))


class _KeyState:
    """One key's entities: their rows (in order of appearance) and the kernel's state arrays, grown
    as entities appear (kept values as their label codes, the same in every part)."""

    def __init__(self, spec: EntitySpec, key: str) -> None:
        self.spec, self.key = spec, key
        self.fields = spec.distinct_for(key)
        self.ids: dict[str, int] = {}
        self.block = Block(spec, self.fields, 0, np.zeros((len(self.fields), 0), dtype=np.int64))

    def run(self, cols: Columns, entities: list[str | None]) -> np.ndarray:
        n, before = len(entities), len(self.ids)
        ids = self.ids
        rows = np.fromiter((-1 if v is None else ids.setdefault(v, len(ids)) for v in entities), np.int64, n)
        loose = rows < 0
        rows[loose] = len(ids) + np.arange(int(loose.sum()))  # keyless: a fresh row each
        self._grow(len(ids) + int(loose.sum()))
        self.block.clear(slice(before, None))  # new entities and scratch rows start empty
        codes = np.stack([cols.codes[f] for f in self.fields]) if self.fields \
            else np.zeros((0, n), dtype=np.int64)
        return self.block.run(self.spec, rows, np.ones(n, dtype=np.bool_), cols.ts, cols.amount,
                              np.ascontiguousarray(codes))

    def _grow(self, rows: int) -> None:
        block = self.block
        have = block.t.shape[0]
        if rows <= have:
            return
        size = max(rows, 2 * have, 1024)
        extra = size - have
        block.t = np.concatenate((block.t, np.full(extra, np.nan)))
        block.w = np.concatenate((block.w, np.zeros((extra,) + block.w.shape[1:])))
        block.n = np.concatenate((block.n, np.zeros((extra,) + block.n.shape[1:], dtype=np.int64)))
        block.dt = np.concatenate((block.dt, np.zeros((extra,) + block.dt.shape[1:])))
        block.dc = np.concatenate((block.dc, np.zeros((extra,) + block.dc.shape[1:], dtype=np.int64)))
