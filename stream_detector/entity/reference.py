"""The per-event reference of the enrich step: the enricher as it was before the compiled kernel
(one ``compute.step`` per event and key, Python dicts). Not used on any hot path: it defines the
semantics the ``Enricher`` must reproduce (``tests/unit/test_entity_kernel.py`` compares the two
on random streams, retries included) and is the baseline of ``python -m benchmarks entity``.

Same contract as ``enrich.py`` (read that module's docstring for the idempotency rules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..entity_spec import EntitySpec
from ..schema import validate_event
from .columns import entity_value
from .compute import Core, copy_core, empty_core, features_only, step
from .enrich import exact_replay
from .state import EntityKey, InMemoryState, Record, StateStore

Position = tuple[int, int]  # (partition, offset)
Item = tuple[int, dict[str, Any], Position]  # (row, event, position)


class ReferenceEnricher:
    """The per-event ``Enricher``: same constructor, same ``enrich``, same records in the store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.on_enriched: Callable[[list[dict[str, Any]]], None] | None = None

    def enrich(self, spec: EntitySpec | None, events: Sequence[dict[str, Any]],
               positions: Sequence[Position]) -> list[dict[str, Any]]:
        """The events with entity fields added (new dicts); the input list itself when ``spec`` is None."""
        if spec is None:
            return list(events)
        out = [dict(e) for e in events]
        groups: dict[EntityKey, list[Item]] = {}
        for key in spec.keys:
            for row, event in enumerate(events):
                value = entity_value(event.get(key))
                if value is None:
                    step(spec, key, empty_core(spec, key), event, out[row])
                else:
                    groups.setdefault((key, value), []).append((row, event, positions[row]))
        records = self.store.load(spec, list(groups))
        updated = {k: advance(spec, k[0], records.get(k), items, out) for k, items in groups.items()}
        self.store.save(spec, updated)
        if self.on_enriched is not None:
            self.on_enriched(out)
        return out


def advance(spec: EntitySpec, key: str, record: Record | None, items: list[Item],
            out: list[dict[str, Any]]) -> Record:
    """One entity's events of a batch (in order) against its record; returns the new record."""
    if record is None:
        record = {"c": empty_core(spec, key), "a": {}, "u": None}
    applied: dict[str, int] = record["a"]
    done = [o <= applied.get(str(p), -1) for _, _, (p, o) in items]
    firsts: dict[str, int] = {}
    for _, _, (p, o) in items:
        firsts.setdefault(str(p), o)
    if not any(done):
        undo = {"s": copy_core(record["c"]), "f": firsts}
        core = _apply(spec, key, record["c"], items, out)
    elif exact_replay(record, firsts, [(str(p), o) for _, _, (p, o) in items], done):
        undo = record["u"]
        core = _apply(spec, key, copy_core(undo["s"]), items, out)
        for part in firsts:  # the state now ends where this batch ends (it may be shorter than the last write)
            applied[part] = -1
        for part, first in undo["f"].items():
            if part not in firsts:  # the last write's events there are undone too: applied when read again
                applied[part] = first - 1
    else:
        undo = None
        core = record["c"]
        for (row, event, _), was_applied in zip(items, done, strict=True):
            if was_applied:
                out[row].update(features_only(spec, key, core, event))
            else:
                core = step(spec, key, core, event, out[row])
    for _, _, (p, o) in items:
        if o > applied.get(str(p), -1):
            applied[str(p)] = o
    return {"c": core, "a": applied, "u": undo}


def _apply(spec: EntitySpec, key: str, core: Core, items: list[Item], out: list[dict[str, Any]]) -> Core:
    for row, event, _ in items:
        core = step(spec, key, core, event, out[row])
    return core


def reference_enrich_history(spec: EntitySpec, events: Sequence[dict[str, Any]], chunk: int = 8192,
                   store: StateStore | None = None) -> list[dict[str, Any]]:
    """Offline, point-in-time enrichment of a history in arrival (file) order.

    Each row's features come only from rows before it — exactly what a worker computes when the
    rows arrive in this order. Rows a worker would reject at decode are not applied to any state
    (they get the features of an entity without history, so rows stay aligned).
    """
    store = store or InMemoryState()
    enricher = ReferenceEnricher(store)
    out: list[dict[str, Any]] = []
    for start in range(0, len(events), chunk):
        part = events[start:start + chunk]
        valid = [j for j, e in enumerate(part) if validate_event(e) is None]
        enriched = enricher.enrich(spec, [part[j] for j in valid], [(0, start + j) for j in valid])
        rows: list[dict[str, Any]] = [dict(e) for e in part]
        for j, e in zip(valid, enriched, strict=True):
            rows[j] = e
        for j in set(range(len(part))) - set(valid):
            for key in spec.keys:
                step(spec, key, empty_core(spec, key), part[j], rows[j])
        out.extend(rows)
    return out
