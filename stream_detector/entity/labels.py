"""Label-derived entity features (issue 17): an entity's known frauds, point in time.

For each label key ``k`` of the ``EntitySpec`` (e.g. ``terminal_id``) and each window ``w``, an event
at time ``t`` gets (``entity_spec.py`` names them)::

    k__fraud_w        = Σ exp(-(t - t_e) / w)   over the entity's earlier events e (t_e < t, within
                                                 the horizon) whose winning label, among the labels
                                                 with labelled_at <= t - delay (and labelled within
                                                 label_within_s of e), is fraud
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
import orjson
from redis import RedisError

from ..entity_spec import EntitySpec, window_name
from ..errors import EntityStateUnavailable
from ..feedback import Label, decode_label, prefer
from .columns import entity_value, timestamp_value


@dataclass(frozen=True, slots=True)
class Labelled:
    """An event that has labels: its event time (epoch ms) and every label known for it."""

    time_ms: float
    labels: tuple[Label, ...]


Book = dict[str, Labelled]  # one entity's labelled events, by event id


def _ordered(labels: Iterable[Label]) -> tuple[Label, ...]:
    """One order for a labelled event's labels, whatever the store (the verdict does not depend on it)."""
    return tuple(sorted(set(labels), key=lambda x: (x.labelled_at, x.source, x.fraud)))


class LabelStore(Protocol):
    def index(self, spec: EntitySpec, events: Sequence[dict[str, Any]], times: np.ndarray) -> None:
        """Record ``events`` (ids, ``times`` float64[N] epoch ms, NaN = unusable, key values) so
        that labels can find their entities; attach the labels already waiting for them."""

    def books(self, key: str, values: Sequence[str]) -> dict[str, Book]:
        """The labelled events of each entity ``values`` of ``key`` (missing: none)."""


def label_values(spec: EntitySpec, store: LabelStore, events: Sequence[dict[str, Any]],
                 history: np.ndarray, indexed: EntitySpec | None = None) -> np.ndarray:
    """Step 3a's label features of a batch, float64[N, len(spec.label_fields)] (columns in
    ``spec.label_fields`` order), after indexing the batch in ``store`` (so an event's labels can
    reach the events after it, in this batch and later ones). ``history``: the batch's entity
    features, float64[N, len(spec.output_fields)] (``k__count_w`` is the share's denominator).
    ``indexed``: the spec whose label keys the events are indexed under (default ``spec``; two
    stages compute part of a model's label keys each, and index every event under all of them, the
    model's spec: an event's index record is one, written whole by either stage).

    Raises what ``store`` raises (``EntityStateUnavailable`` for Redis: retriable).
    """
    n, windows = len(events), len(spec.windows)
    out = np.zeros((n, len(spec.label_fields)))
    if not spec.label_keys or n == 0:
        return out
    times = np.fromiter((timestamp_value(e.get("timestamp")) for e in events), np.float64, n)
    store.index(indexed or spec, events, times)
    taus = [w * 1000.0 for w in spec.windows]
    horizon = float(spec.horizon_ms)
    delay, within = spec.label_delay_s * 1000.0, spec.label_within_s * 1000.0
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
            frauds = known_frauds(book, str(events[i].get("event_id")), float(t), t - delay, horizon, taus, within)
            for j, fraud in enumerate(frauds):
                count = counts[i, j]
                out[i, base + 2 * j] = fraud
                out[i, base + 2 * j + 1] = fraud / count if count > 1e-9 else 0.0
    return out


def known_frauds(book: Book, event_id: str, t: float, as_of: float, horizon_ms: float,
                 taus: Sequence[float], within_ms: float = float("inf")) -> list[float]:
    """Per window (time constants ``taus``, ms): the decayed count of ``book``'s events before
    ``t`` (and within ``horizon_ms``) whose winning label among those known at ``as_of`` — and
    labelled at most ``within_ms`` after the event — is fraud."""
    parts: list[list[float]] = [[] for _ in taus]
    for other, item in book.items():
        age = t - item.time_ms
        if other == event_id or not 0.0 < age < horizon_ms:
            continue
        best: Label | None = None
        for label in item.labels:
            if label.labelled_at <= as_of and label.labelled_at - item.time_ms <= within_ms:
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
                    self._books.setdefault((key, value), {})[str(event["event_id"])] = Labelled(t, _ordered(labels))

    def books(self, key: str, values: Sequence[str]) -> dict[str, Book]:
        return {v: self._books[(key, v)] for v in values if (key, v) in self._books}


def enrich_labels(spec: EntitySpec, rows: Sequence[dict[str, Any]], labels: Iterable[Label]) -> list[dict[str, Any]]:
    """Offline: ``rows`` (a history in arrival order, already carrying ``spec.output_fields``) with
    ``spec.label_fields`` added from ``labels`` (new dicts). Rows a worker would reject at decode
    are neither indexed nor given labels (zeros), as the worker never sees them at step 3a."""
    from ..schema import validate_event

    kept = [i for i, row in enumerate(rows) if validate_event(row) is None]
    fields = spec.output_fields  # a property that builds the list: once, not per row
    history = np.array([[rows[i][f] for f in fields] for i in kept], dtype=np.float64)
    history = history.reshape(len(kept), len(fields))
    values = label_values(spec, InMemoryLabels(labels), [rows[i] for i in kept], history)
    names = spec.label_fields
    out = [{**row, **dict.fromkeys(names, 0.0)} for row in rows]
    for row, i in enumerate(kept):
        out[i].update(zip(names, values[row].tolist(), strict=True))
    return out


# Append one label (ARGV[2]) to the labels waiting for an event (field ARGV[1]) unless it is there.
APPEND_WAITING = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  if string.find(v, ARGV[2], 1, true) then return 0 end
  v = v .. '\\n' .. ARGV[2]
else
  v = ARGV[2]
end
redis.call('HSET', KEYS[1], ARGV[1], v)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
WAITING_TTL_MS = 90 * 86_400_000  # a label whose event never comes is forgotten after 90 quiet days


class RedisLabels:
    """The worker's label store: labels attached to entities in Redis, shared by every worker.

    Layout (prefix ``SD_REDIS_PREFIX``; not the spec's fingerprint: labels are facts, every model
    version reads the same ones)::

        {prefix}:labels:event:{event_id}  → {"t": event time ms, "k": {key: value}, "h": horizon ms}
                                            (written by ``index``, PX label_within_s; ~200 B each)
        {prefix}:labels:{key}:{value}     → hash: a label's JSON → its event's time (repr float),
                                            PX horizon from the last label
        {prefix}:labels:waiting           → hash: event_id → its labels' JSON lines (labels that
                                            arrived before their event was indexed)

    A label finds its entities through its event's index record; one that arrives first waits and
    is attached when the event is indexed. ``index`` writes the record, then reads the waiting
    labels; ``ingest``, when the record is not there, appends to the waiting labels, then reads the
    record again — whichever runs second sees the other's write, so no label is left waiting for an
    event that was indexed. A waiting entry is cleared once attached (by either side: a label
    appended after the other side's read attaches itself). Writes are
    idempotent (a label is a hash field), so a redelivered label or batch changes nothing.
    One round trip per batch for ``index`` (two when labels were waiting), one per label key for
    ``books``, two per polled set of labels for ``ingest``.
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._append = client.register_script(APPEND_WAITING)
        self.attached_later = 0  # labels that waited for their event and were attached when it was indexed

    def _event_key(self, event_id: str) -> str:
        return f"{self.prefix}:labels:event:{event_id}"

    def _entity_key(self, key: str, value: str) -> str:
        return f"{self.prefix}:labels:{key}:{value}"

    @property
    def _waiting(self) -> str:
        return f"{self.prefix}:labels:waiting"

    def index(self, spec: EntitySpec, events: Sequence[dict[str, Any]], times: np.ndarray) -> None:
        pipe = self.client.pipeline(transaction=False)
        indexed: list[tuple[str, float, dict[str, str]]] = []
        for event, t in zip(events, times.tolist(), strict=True):
            values = {k: v for k in spec.label_keys if (v := entity_value(event.get(k))) is not None}
            if t != t or not values:
                continue
            event_id = str(event.get("event_id"))
            pipe.set(self._event_key(event_id), orjson.dumps({"t": t, "k": values, "h": spec.horizon_ms}),
                     px=spec.label_within_s * 1000)  # a label known later is never counted
            indexed.append((event_id, t, values))
        if not indexed:
            return
        pipe.hmget(self._waiting, [event_id for event_id, _, _ in indexed])
        waiting = self._execute(pipe)[-1]
        pipe = self.client.pipeline(transaction=False)
        resolved = []
        attached = 0
        for (event_id, t, values), lines in zip(indexed, waiting, strict=True):
            if lines:
                labels = _labels_of(lines)
                self._attach(pipe, t, values, labels, spec.horizon_ms)
                resolved.append(event_id)
                attached += len(labels)
        if resolved:
            pipe.hdel(self._waiting, *resolved)  # attached; a label appended since attaches itself
            self._execute(pipe)
            self.attached_later += attached  # the worker's feedback_labels{outcome="attached_later"}

    def books(self, key: str, values: Sequence[str]) -> dict[str, Book]:
        pipe = self.client.pipeline(transaction=False)
        for value in values:
            pipe.hgetall(self._entity_key(key, value))
        out: dict[str, Book] = {}
        for value, fields in zip(values, self._execute(pipe), strict=True):
            if fields:
                out[value] = _book_of(fields)
        return out

    def ingest(self, labels: Sequence[Label]) -> tuple[int, int]:
        """Attach labels from the feedback topic to their event's entities; the ones whose event is
        not indexed (yet) wait for it. Returns (attached, waiting). Raises ``RedisError``.

        Per label: read its event's record; found, attach. Not found: append it to the waiting
        labels, then read the record again (the event may have been indexed meanwhile: attach, and
        clear its waiting entry). An event indexed after that second read finds the label waiting."""
        if not labels:
            return 0, 0
        pipe = self.client.pipeline(transaction=False)
        for label in labels:
            pipe.get(self._event_key(label.event_id))
        first = pipe.execute()
        missing = [label for label, raw in zip(labels, first, strict=True) if raw is None]
        found = [(label, raw) for label, raw in zip(labels, first, strict=True) if raw is not None]
        if missing:
            pipe = self.client.pipeline(transaction=False)
            for label in missing:
                self._append(keys=[self._waiting], args=[label.event_id, label.to_json(), WAITING_TTL_MS],
                             client=pipe)
            for label in missing:
                pipe.get(self._event_key(label.event_id))
            second = pipe.execute()[len(missing):]
            found += [(label, raw) for label, raw in zip(missing, second, strict=True) if raw is not None]
        pipe = self.client.pipeline(transaction=False)
        for label, raw in found:
            record = orjson.loads(raw)
            self._attach(pipe, float(record["t"]), record["k"], [label], int(record["h"]))
        late = [label.event_id for label in missing if any(f[0] is label for f in found)]
        if late:
            pipe.hdel(self._waiting, *late)
        if found:
            pipe.execute()
        return len(found), len(labels) - len(found)

    def _attach(self, pipe: Any, t: float, values: dict[str, str], labels: Sequence[Label], horizon_ms: int) -> None:
        for key, value in values.items():
            name = self._entity_key(key, value)
            pipe.hset(name, mapping={label.to_json(): repr(t) for label in labels})
            pipe.pexpire(name, horizon_ms)

    @staticmethod
    def _execute(pipe: Any) -> list[Any]:
        try:
            return list(pipe.execute())
        except RedisError as exc:
            raise EntityStateUnavailable(f"label store: {type(exc).__name__}: {exc}") from exc


def _labels_of(lines: bytes) -> list[Label]:
    out = []
    for line in lines.split(b"\n"):
        label = decode_label(line)
        if isinstance(label, Label):
            out.append(label)
    return out


def _book_of(fields: dict[bytes, bytes]) -> Book:
    grouped: dict[str, tuple[float, list[Label]]] = {}
    for raw, t in fields.items():
        label = decode_label(raw)
        if isinstance(label, Label):
            grouped.setdefault(label.event_id, (float(t), []))[1].append(label)
    return {event_id: Labelled(t, _ordered(labels)) for event_id, (t, labels) in grouped.items()}
