"""Steps 2-4: the one pure core (``score_decoded``) and the worker's chunked form of it.

``score_decoded`` runs steps 3a-4 on decoded events: enrich (when given) → features → score, rows
the feature step refuses becoming typed ``Rejected``. Offline scoring (``offline.score_events``),
the console's explain and the worker all score through it; they differ only in step 2 (bytes from
Kafka, or parsed objects from files and requests) and in how rows are batched.

The worker runs steps 2-4 over one batch in chunks: decode → (3a enrich) → features → score.

A Kafka batch stays large (publish and commit round trips are paid per batch), but the CPU work
runs over ``compute_chunk`` rows at a time, for two measured reasons (``benchmarks/RESULTS.md``):

- **cache**: a chunk's event dicts are still in cache when the feature step reads them, and its
  matrix when the model does; the whole 8192-row batch is not (decode+features+score 109k → 124k
  rows/s in process at 1024-row chunks);
- **overlap**: torch releases the GIL, so chunk k is scored on the scoring thread (the second core)
  while this thread decodes and featurises chunk k+1 (→ 156k rows/s). A batch of one chunk is
  scored inline: there is nothing to overlap, and no thread hop is added to low-load latency —
  unless step 3a defers its state write (``Deferred``): the write then overlaps the scoring.

With an entity spec, step 3a needs the whole batch's events in order (its Redis state is read and
written once per batch), so decode runs over the whole batch first and chunking starts at step 3.
Results are identical to one unchunked pass (a unit test compares them row for row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np
import torch

from ..entity_spec import EntitySpec
from ..features import Extra
from ..fieldschema import FieldSchema, FieldType
from ..schema import Problem
from .decode import Decoded, LazyEvents, Rejected, decode_batch
from .score import Scorer

Fields = Mapping[str, Sequence[Any]]  # some fields of a list of events, read out: ``Decoded.columns``
Events = Sequence[dict[str, Any]]  # a list, or the decode step's LazyEvents (each dict parsed when read)


@dataclass(slots=True)
class Deferred:
    """Step 3a's features with the entity state not written yet (``entity.enrich.PendingWrite``):
    ``extra`` (names, float64 n × len(names)) and ``write``, to be called once: it writes the state
    and returns the rows (int64 indices into the enriched events) whose values it changed (entities
    another writer changed meanwhile: recomputed) and the matrix to read them from. The worker
    scores the batch's chunks while the state is written (``ChunkedCompute.run``)."""

    extra: Extra
    write: Callable[[], tuple[np.ndarray, np.ndarray]]

    def now(self) -> Extra:
        """The features once written: ``write`` called here."""
        _rows, matrix = self.write()
        return self.extra[0], matrix


# step 3a: (typed events, batch indices, their fields already read out: ``Decoded.columns``) →
# (feature names, float64 values n × len(names)) read by step 3, or the same with the write deferred
Enrich = Callable[[Events, list[int], Fields], "Extra | Deferred"]


@dataclass(slots=True)
class Computed:
    """The scored events of a batch (batch order) with their indices, every rejection (decode and
    features), and the per-feature errors: one row per scored event."""

    events: Events  # a list, or the decode step's LazyEvents
    indices: list[int]
    rejected: list[Rejected]
    per_feature: np.ndarray
    probability: np.ndarray | None = None  # the supervised head's, float64 (n,); None without a head
    # a challenger in shadow (pipeline/shadow.py): its scores of the same n rows (float64, NaN where it
    # refused a row) and its head's probability; None without a challenger
    shadow_scores: np.ndarray | None = None
    shadow_probability: np.ndarray | None = None
    # every feature row (float32, n × width) in parts, one per chunk (not joined: a copy per batch): feature_rows
    # picks the alerted ones (Scorer.why, with a head Scorer.head_attributions)
    feature_parts: list[np.ndarray] = field(default_factory=list)

    def feature_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The feature rows (float32, len(rows) × width) of the scored events ``rows`` (indices
        into ``events``, e.g. the alerted ones), or None where they were not kept."""
        if not self.feature_parts:
            return None
        if len(self.feature_parts) == 1:
            picked: np.ndarray = self.feature_parts[0][rows]
            return picked
        starts = np.cumsum([0] + [len(part) for part in self.feature_parts])
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(starts, rows, side="right") - 1
        width = self.feature_parts[0].shape[1]
        out = np.empty((len(rows), width), dtype=np.float32)
        for k in np.unique(which).tolist():
            hit = which == k
            out[hit] = self.feature_parts[k][rows[hit] - starts[k]]
        return out


def featurise(scorer: Scorer, received: Events, indices: list[int],
              inputs: Events, rejected: list[Rejected], extra: Extra | None = None,
              fields: Fields | None = None) -> tuple[np.ndarray, Events, list[int]]:
    """Step 3 on ``inputs`` (the typed events; aligned with ``received`` and ``indices``) and
    ``extra`` (step 3a's entity features, one row per input): the float32 matrix (n_kept × width)
    and the kept events and indices. Rows the feature step refuses are appended to ``rejected``
    with their reason. ``fields``: the inputs' fields already read out (``Decoded.columns``)."""
    x, bad = scorer.bundle.spec.transform(inputs, extra, fields=fields)
    if bad:
        return _drop(x, received, indices, bad, rejected)
    return x, received, indices


def score_decoded(scorer: Scorer, decoded: Decoded, enrich: Enrich | None = None) -> Computed:
    """Steps 3a-4 on decoded events, unchunked: the scored events, their indices, every
    rejection (``decoded.rejected`` and the feature step's, in index order) and the per-feature
    errors (float32, one row per scored event). Never raises on data."""
    rejected = list(decoded.rejected)
    extra = enrich(decoded.events, decoded.indices, decoded.columns) if enrich is not None else None
    if isinstance(extra, Deferred):
        extra = extra.now()
    x, events, indices = featurise(scorer, decoded.received, decoded.indices, decoded.events, rejected, extra,
                                   decoded.columns)
    rejected.sort(key=lambda r: r.index)
    return Computed(events, indices, rejected, *scorer.outputs(x), feature_parts=[x])


def enrich_reads_columns(spec: EntitySpec | None, schema: FieldSchema | None) -> bool:
    """Whether step 3a of ``spec`` reads the decode step's columns alone, never an event's dict,
    for a model of field ``schema`` — so a batch it enriches may be read flat
    (``decode_batch(lazy=True)``: each dict parsed only when read). True when every field the
    enricher reads (``spec.input_fields`` and ``timestamp``: ``entity.columns.Columns.of``,
    ``entity_codes``) is a field of the schema the decode step reads out, and the spec has no
    label keys (their features read each event's dict: ``entity.labels.label_values``)."""
    if spec is None or schema is None or spec.label_keys:
        return False
    read = {rule.name for rule in schema.fields if rule.type is not FieldType.IGNORED}
    return read.issuperset((*spec.input_fields, "timestamp"))


Outputs = tuple[np.ndarray, "np.ndarray | None"]  # Scorer.outputs: per-feature errors, probability
StepTime = Callable[[str, float], None]  # (step name, seconds): the worker's step-time hook (metrics.StepTimer)


def _no_timer(step: str, seconds: float) -> None:
    return None


class ChunkedCompute:
    """Runs steps 2-4 of a batch in ``chunk`` rows at a time, scoring on one background thread.

    ``timer(step, seconds)`` receives the time of each ``decode``, ``enrich`` and ``features``
    call on the caller's thread and of each ``scoring thread`` call (on that thread): one
    ``perf_counter`` pair per chunk, cheap enough to stay on in production (Prometheus)."""

    def __init__(self, chunk: int, torch_threads: int = 0, timer: StepTime = _no_timer) -> None:
        self.chunk = max(1, chunk)
        self.timer = timer
        init = (lambda: torch.set_num_threads(torch_threads)) if torch_threads else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring", initializer=init)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, scorer: Scorer, values: Sequence[bytes | None], max_bytes: int,
            enrich: Enrich | None = None, shadow: Scorer | None = None, flat_enrich: bool = False) -> Computed:
        """Decode, enrich (when given), featurise and score ``values``; never raises on data.
        ``shadow``: a challenger (same field schema and entity spec as ``scorer``) that also scores
        the rows ``scorer`` kept, from the same typed events and entity features, featurised by
        its own spec (``Computed.shadow_scores``). A deferred state write (``Deferred``) is made
        once every chunk is on the scoring thread, a batch of one chunk included; with a
        challenger it is made first. Without ``enrich`` every chunk may be read flat
        (``decode_batch(lazy=True)``); with it, only when ``flat_enrich`` says that step 3a reads
        the decode step's columns alone (``enrich_reads_columns``), not every event's dict."""
        rejected: list[Rejected] = []  # decode's rejections; each chunk's feature step keeps its own
        chunks: list[_Chunk] = []
        shadows: list[Future[tuple[np.ndarray, np.ndarray | None]] | tuple[np.ndarray, np.ndarray | None]] = []
        inline = len(values) <= self.chunk
        later: list[Deferred] = []  # step 3a's state write, done once every chunk is submitted for scoring
        try:
            parts_in = self._chunks(values, max_bytes, enrich, rejected, scorer.bundle.schema,
                                    later if shadow is None else None, flat_enrich)
            for part_received, part_indices_in, features_of, extra, fields in parts_in:
                chunk = _Chunk(part_received, part_indices_in, features_of, extra, fields)
                # a deferred write overlaps even one chunk's scoring: the scoring thread, then the write
                self._featurise(scorer, chunk, inline and not later)
                chunks.append(chunk)
                if shadow is not None:  # the challenger on the rows the champion kept
                    t = perf_counter()
                    x2, bad2 = shadow.bundle.spec.transform(features_of, extra, fields=fields)
                    kept = np.searchsorted(np.asarray(part_indices_in), np.asarray(chunk.indices, dtype=np.int64))
                    refused = np.isin(kept, np.fromiter(bad2, dtype=np.int64, count=len(bad2)))
                    self.timer("shadow features", perf_counter() - t)
                    args = (shadow, x2[kept], refused)
                    shadows.append(self._shadow(*args) if inline else self._pool.submit(self._shadow, *args))
            if later:
                self._write(scorer, later[0], chunks)
            parts = [c.result() for c in chunks]
            shadow_parts = [p if isinstance(p, tuple) else p.result() for p in shadows]
        finally:  # on an error, no scoring of this batch may still run when the caller retries it
            wait([f for c in chunks for f in c.futures] + [p for p in shadows if isinstance(p, Future)])
        events = _joined([c.events for c in chunks])
        indices = [i for c in chunks for i in c.indices]
        rejected.extend(r for c in chunks for r in c.rejected)
        per_feature = (np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0] if parts
                       else np.zeros((0, scorer.bundle.spec.width), dtype=np.float32))
        probability = None
        if scorer.supervised:
            probability = np.concatenate([p[1] for p in parts if p[1] is not None]) if parts else np.zeros(0)
        rejected.sort(key=lambda r: r.index)  # dead letters in batch order
        shadow_scores = shadow_probability = None
        if shadow is not None:
            shadow_scores = np.concatenate([p[0] for p in shadow_parts]) if shadow_parts else np.zeros(0)
            if shadow.supervised:
                shadow_probability = (np.concatenate([p[1] for p in shadow_parts if p[1] is not None])
                                      if shadow_parts else np.zeros(0))
        return Computed(events, indices, rejected, per_feature, probability, shadow_scores, shadow_probability,
                        [c.x for c in chunks if c.x is not None])

    def _featurise(self, scorer: Scorer, chunk: _Chunk, inline: bool) -> None:
        """Step 3 on ``chunk`` (its kept events, indices, refusals, with a head its rows), and step 4
        submitted to the scoring thread (run here when ``inline``)."""
        t = perf_counter()
        chunk.rejected = []
        x, chunk.events, chunk.indices = featurise(scorer, chunk.received, chunk.indices_in, chunk.features_of,
                                                   chunk.rejected, chunk.extra, chunk.fields)
        self.timer("features", perf_counter() - t)
        chunk.x = x  # kept: the alerted rows' why (Scorer.why), with a head its attributions
        if inline:
            chunk.outputs = self._score(scorer, x)
        else:
            future = self._pool.submit(self._score, scorer, x)
            chunk.outputs = future
            chunk.futures.append(future)

    def _write(self, scorer: Scorer, deferred: Deferred, chunks: list[_Chunk]) -> None:
        """Step 3a's state written while the scoring thread scores the chunks; the chunks holding
        rows whose entity features the write changed (another writer's update, recomputed) are
        featurised and scored again, here, from the new values."""
        t = perf_counter()
        try:
            rows, matrix = deferred.write()
        finally:
            self.timer("enrich", perf_counter() - t)
        if not rows.size:
            return
        names = deferred.extra[0]
        start = 0
        for chunk in chunks:
            end = start + len(chunk.received)
            if np.any((rows >= start) & (rows < end)):
                chunk.extra = (names, matrix[start:end])
                self._featurise(scorer, chunk, inline=True)
            start = end

    def _shadow(self, shadow: Scorer, x: np.ndarray, refused: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The challenger's scores (float64; NaN on rows its feature step refused) and probability."""
        t = perf_counter()
        try:
            per_feature, probability = shadow.outputs(x)
            scores = per_feature.mean(axis=1, dtype=np.float64)
            scores[refused] = np.nan
            if probability is not None:
                probability = probability.copy()
                probability[refused] = np.nan
            return scores, probability
        finally:
            self.timer("shadow scoring", perf_counter() - t)

    def _score(self, scorer: Scorer, x: np.ndarray) -> Outputs:
        t = perf_counter()
        try:
            return scorer.outputs(x)
        finally:
            self.timer("scoring thread", perf_counter() - t)

    def _decode(self, values: Sequence[bytes | None], max_bytes: int, first: int,
                schema: FieldSchema | None, lazy: bool = False) -> Decoded:
        t = perf_counter()
        try:
            return decode_batch(values, max_bytes, first, schema, lazy)  # 2 decode + type
        finally:
            self.timer("decode", perf_counter() - t)

    def _chunks(self, values: Sequence[bytes | None], max_bytes: int, enrich: Enrich | None,
                rejected: list[Rejected], schema: FieldSchema | None, later: list[Deferred] | None,
                flat_enrich: bool = False) -> Iterator[tuple[Events, list[int], Events, Extra | None, Fields]]:
        """Per chunk: the valid events as received, their batch indices, the dicts to featurise
        (typed by the bundle's field schema), with an entity spec their entity features, and the
        fields the decode step read out (``Decoded.columns``). Decode rejections are added to
        ``rejected``. A deferred state write (``Deferred``) goes into ``later`` for the caller;
        without ``later`` (None) it is done here, before the first chunk."""
        step = self.chunk
        if enrich is None:
            for start in range(0, len(values), step):
                part = self._decode(values[start:start + step], max_bytes, start, schema, lazy=True)
                rejected.extend(part.rejected)
                yield part.received, part.indices, part.events, None, part.columns
            return
        whole = self._decode(values, max_bytes, 0, schema, flat_enrich)  # 3a needs the whole batch: decode it first
        rejected.extend(whole.rejected)
        t = perf_counter()
        result = enrich(whole.events, whole.indices, whole.columns)  # columns: the events are not copied
        if isinstance(result, Deferred):
            if later is None:
                result = result.now()
            else:
                later.append(result)
                result = result.extra
        names, matrix = result
        self.timer("enrich", perf_counter() - t)
        one = len(whole.events) <= step
        for start in range(0, len(whole.events), step):
            rows = slice(start, start + step)
            fields = whole.columns if one else {name: column[rows] for name, column in whole.columns.items()}
            yield whole.received[rows], whole.indices[rows], whole.events[rows], (names, matrix[rows]), fields


@dataclass(slots=True)
class _Chunk:
    """One chunk of a batch in ``ChunkedCompute.run``: step 3's inputs (kept, so that a deferred
    state write that changed some entity features can featurise it again) and its results."""

    received: Events
    indices_in: list[int]
    features_of: Events
    extra: Extra | None
    fields: Fields
    events: Events = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    x: np.ndarray | None = None
    outputs: Future[Outputs] | Outputs | None = None
    futures: list[Future[Outputs]] = field(default_factory=list)  # every scoring submitted: awaited before return

    def result(self) -> Outputs:
        assert self.outputs is not None, "featurised first"
        return self.outputs if isinstance(self.outputs, tuple) else self.outputs.result()


def _drop(x: np.ndarray, events: Events, indices: list[int], bad: dict[int, Problem],
          rejected: list[Rejected]) -> tuple[np.ndarray, Events, list[int]]:
    """Rows the feature step refused leave the matrix and become rejections with their reason."""
    keep = np.ones(len(events), dtype=bool)
    for row, (reason, message) in bad.items():
        keep[row] = False
        rejected.append(Rejected(indices[row], reason, message))
    rows = np.flatnonzero(keep).tolist()
    kept = events.take(rows) if isinstance(events, LazyEvents) else [events[row] for row in rows]
    return x[keep], kept, [indices[row] for row in rows]


def _joined(parts: Sequence[Events]) -> Events:
    """The chunks' scored events as one sequence: still unparsed where every chunk's is
    (``LazyEvents``), else a list."""
    if parts and all(isinstance(part, LazyEvents) for part in parts):
        return LazyEvents.concat(parts)  # type: ignore[arg-type]  # all LazyEvents, checked above
    return [event for part in parts for event in part]
