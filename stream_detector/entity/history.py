"""Offline enrichment (training, ``score``) without records: the state of every entity stays in
the kernel's arrays for the whole run.

Same columns, same label coding (label order over the whole history), same kernel as the
``Enricher`` — only the per-batch record load/save and the idempotency bookkeeping, which an
in-order offline replay from empty state never needs (every row is new, applied once), are left
out. ``tests/unit/test_entity_kernel.py`` holds it equal to the per-event reference.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    n, chunk = len(events), max(1, chunk)
    cols = Columns.of(spec, events)
    apply = np.ones(min(chunk, n), dtype=np.bool_)
    out = np.empty((n, len(spec.output_fields)))
    col = 0
    for key in spec.keys:
        ids: dict[str, int] = {}
        found = (entity_value(e.get(key)) if valid is None or ok else None
                 for e, ok in zip(events, valid or [True] * n, strict=True))
        rows = np.fromiter((-1 if v is None else ids.setdefault(v, len(ids)) for v in found), np.int64, n)
        block = Block.of(spec, spec.distinct_for(key), [], extra=len(ids) + min(chunk, n), cols=cols)
        width = len(spec.fields_for(key))
        for start in range(0, n, chunk):
            part = slice(start, min(start + chunk, n))
            state_row = rows[part].copy()
            loose = state_row < 0
            state_row[loose] = len(ids) + np.arange(int(loose.sum()))  # keyless: a fresh row each
            block.clear(slice(len(ids), None))
            size = part.stop - part.start
            out[part, col:col + width] = block.run(spec, state_row, apply[:size], cols.ts[part], cols.amount[part],
                                                   np.ascontiguousarray(block.codes[:, part]))
        col += width
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
