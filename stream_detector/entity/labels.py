"""Label-derived entity features (issue 17): an entity's known frauds, point in time.

For each label key ``k`` of the ``EntitySpec`` (e.g. ``terminal_id``) and each window ``w``, an event
at time ``t`` gets (``entity_spec.py`` names them)::

    k__fraud_w        = Σ exp(-(t - t_e) / w)   over the entity's earlier events e (t_e < t, within
                                                 the horizon) whose winning label, among the labels
                                                 with labelled_at <= t - delay, is fraud
    k__fraud_share_w  = k__fraud_w / k__count_w  (the decayed count of all its earlier events; 0 if none)

— the "terminal risk" of the Fraud Detection Handbook (Le Borgne et al., ch. 3.4: frauds among a
terminal's transactions over 1/7/30 days, counting only labels known after a delay), with the
entity features' exponential decay instead of a hard window, and the label's own ``labelled_at``
instead of an assumed fixed delay (``label_delay_s`` adds one on top).

**No look-ahead, by construction.** A label is used only where ``labelled_at + delay <= t``, and only
for events strictly earlier than ``t``; which label wins follows ``feedback.prefer`` over the known
labels only. A label that becomes known after an event can never change that event's features.

**The same numbers offline and in the worker.** Both call ``label_values`` with a ``LabelStore``:
``InMemoryLabels`` (training, ``score``: every label of the feedback file, attached to its event as
the history passes) or ``RedisLabels`` (the worker: the label ingester writes what the feedback
topic brings). Contributions are summed with ``math.fsum`` (exactly rounded, so the order labels
were stored in cannot change a bit). The worker sees a label once it is ingested; with the ingester
caught up, that is every label known at the event's time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..entity_spec import EntitySpec, window_name
from ..feedback import Label, prefer
from .columns import entity_value, timestamp_value


@dataclass(frozen=True, slots=True)
class Labelled:
    """An event that has labels: its event time (epoch ms) and every label known for it."""

    time_ms: float
    labels: tuple[Label, ...]


Book = dict[str, Labelled]  # one entity's labelled events, by event id


class LabelStore(Protocol):
    def index(self, spec: EntitySpec, events: Sequence[dict[str, Any]], times: np.ndarray) -> None:
        """Record ``events`` (ids, ``times`` float64[N] epoch ms, NaN = unusable, key values) so
        that labels can find their entities; attach the labels already waiting for them."""

    def books(self, key: str, values: Sequence[str]) -> dict[str, Book]:
        """The labelled events of each entity ``values`` of ``key`` (missing: none)."""


def label_values(spec: EntitySpec, store: LabelStore, events: Sequence[dict[str, Any]],
                 history: np.ndarray) -> np.ndarray:
    """Step 3a's label features of a batch, float64[N, len(spec.label_fields)] (columns in
    ``spec.label_fields`` order), after indexing the batch in ``store`` (so an event's labels can
    reach the events after it, in this batch and later ones). ``history``: the batch's entity
    features, float64[N, len(spec.output_fields)] (``k__count_w`` is the share's denominator).

    Raises what ``store`` raises (``EntityStateUnavailable`` for Redis: retriable).
    """
    n, windows = len(events), len(spec.windows)
    out = np.zeros((n, len(spec.label_fields)))
    if not spec.label_keys or n == 0:
        return out
    times = np.fromiter((timestamp_value(e.get("timestamp")) for e in events), np.float64, n)
    store.index(spec, events, times)
    taus = [w * 1000.0 for w in spec.windows]
    horizon = float(spec.horizon_ms)
    delay = spec.label_delay_s * 1000.0
    for k, key in enumerate(spec.label_keys):
        values = [entity_value(e.get(key)) for e in events]
        books = store.books(key, sorted({v for v in values if v is not None}))
        counts = history[:, [spec.output_fields.index(f"{key}__count_{window_name(w)}") for w in spec.windows]]
        base = 2 * windows * k
        for i, value in enumerate(values):
            book = books.get(value) if value is not None else None
            t = times[i]
            if not book or t != t:
                continue
            frauds = known_frauds(book, str(events[i].get("event_id")), float(t), t - delay, horizon, taus)
            for j, fraud in enumerate(frauds):
                count = counts[i, j]
                out[i, base + 2 * j] = fraud
                out[i, base + 2 * j + 1] = fraud / count if count > 1e-9 else 0.0
    return out


def known_frauds(book: Book, event_id: str, t: float, as_of: float, horizon_ms: float,
                 taus: Sequence[float]) -> list[float]:
    """Per window (time constants ``taus``, ms): the decayed count of ``book``'s events before
    ``t`` (and within ``horizon_ms``) whose winning label among those known at ``as_of`` is fraud."""
    parts: list[list[float]] = [[] for _ in taus]
    for other, item in book.items():
        age = t - item.time_ms
        if other == event_id or not 0.0 < age < horizon_ms:
            continue
        best: Label | None = None
        for label in item.labels:
            if label.labelled_at <= as_of:
                best = prefer(best, label)
        if best is not None and best.fraud:
            for j, tau in enumerate(taus):
                parts[j].append(math.exp(-age / tau))
    return [math.fsum(p) for p in parts]


class InMemoryLabels:
    """Every label of a feedback file, attached to its event when the history passes it
    (training, ``score --feedback``): ``label_values`` then sees exactly what a worker whose label
    ingester had read the same records would."""

    def __init__(self, labels: Iterable[Label]) -> None:
        self.waiting: dict[str, list[Label]] = {}
        for label in labels:
            self.waiting.setdefault(label.event_id, []).append(label)
        self._books: dict[tuple[str, str], Book] = {}

    def index(self, spec: EntitySpec, events: Sequence[dict[str, Any]], times: np.ndarray) -> None:
        for event, t in zip(events, times.tolist(), strict=True):
            labels = self.waiting.get(str(event.get("event_id")))
            if labels is None or t != t:
                continue
            for key in spec.label_keys:
                value = entity_value(event.get(key))
                if value is not None:
                    self._books.setdefault((key, value), {})[str(event["event_id"])] = Labelled(t, tuple(labels))

    def books(self, key: str, values: Sequence[str]) -> dict[str, Book]:
        return {v: self._books[(key, v)] for v in values if (key, v) in self._books}


def enrich_labels(spec: EntitySpec, rows: Sequence[dict[str, Any]], labels: Iterable[Label]) -> list[dict[str, Any]]:
    """Offline: ``rows`` (a history in arrival order, already carrying ``spec.output_fields``) with
    ``spec.label_fields`` added from ``labels`` (new dicts). Rows a worker would reject at decode
    are neither indexed nor given labels (zeros), as the worker never sees them at step 3a."""
    from ..schema import validate_event

    kept = [i for i, row in enumerate(rows) if validate_event(row) is None]
    history = np.array([[rows[i][f] for f in spec.output_fields] for i in kept], dtype=np.float64)
    values = label_values(spec, InMemoryLabels(labels), [rows[i] for i in kept],
                          history.reshape(len(kept), len(spec.output_fields)))
    names = spec.label_fields
    out = [{**row, **dict.fromkeys(names, 0.0)} for row in rows]
    for row, i in enumerate(kept):
        out[i].update(zip(names, values[row].tolist(), strict=True))
    return out
