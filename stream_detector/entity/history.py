"""Offline enrichment (training, ``score``) without records: the state of every entity stays in
the kernel's arrays for the whole run.

Same columns, same label coding (label order over the whole history), same kernel as the
``Enricher`` — only the per-batch record load/save and the idempotency bookkeeping, which an
in-order offline replay from empty state never needs (every row is new, applied once), are left
out. ``tests/unit/test_entity.py`` holds it equal to the ``Enricher`` on an in-memory store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pipeline.decode import validate_event
from .block import Block
from .columns import Columns, attach, entity_value
from .spec import EntitySpec


def enrich_offline(spec: EntitySpec, events: Sequence[dict[str, Any]], chunk: int) -> list[dict[str, Any]]:
    """``enrich_history`` from empty state: new dicts with ``spec.output_fields`` added, in order.
    Rows failing ``validate_event`` get empty-history features and change no state."""
    n, chunk = len(events), max(1, chunk)
    valid = [validate_event(e) is None for e in events]
    cols = Columns.of(spec, events)
    per_key = []
    for key in spec.keys:
        ids: dict[str, int] = {}
        found = (entity_value(e.get(key)) if ok else None for e, ok in zip(events, valid, strict=True))
        rows = np.fromiter((-1 if v is None else ids.setdefault(v, len(ids)) for v in found), np.int64, n)
        fields = spec.distinct_for(key)
        block = Block.of(spec, fields, [], extra=len(ids) + min(chunk, n), labels=[cols.labels[f] for f in fields])
        per_key.append((block, rows, len(ids)))
    out: list[dict[str, Any]] = []
    apply = np.ones(min(chunk, n), dtype=np.bool_)
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        width = part.stop - part.start
        values: list[np.ndarray] = []
        for block, rows, entities in per_key:
            state_row = rows[part].copy()
            loose = state_row < 0
            state_row[loose] = entities + np.arange(int(loose.sum()))  # keyless: a fresh row each
            block.clear(slice(entities, None))
            values.append(block.run(spec, state_row, apply[:width], cols.ts[part], cols.amount[part],
                                    block.codes[:, part]))
        out.extend(attach(events[part], spec.output_fields, np.concatenate(values, axis=1)))
    return out
