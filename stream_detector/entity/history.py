"""Offline enrichment (training, ``score``) without records: the state of every entity stays in
the kernel's arrays for the whole run.

Same columns, same label coding (label order over the whole history), same kernel as the
``Enricher`` — only the per-batch record load/save and the idempotency bookkeeping, which an
in-order offline replay from empty state never needs (every row is new, applied once), are left
out. ``tests/unit/test_entity_kernel.py`` holds it equal to the per-event reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..entity_spec import EntitySpec
from ..schema import validate_event
from .block import Block
from .columns import Columns, attach, entity_value, gc_paused


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
