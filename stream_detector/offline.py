"""Offline scoring (backtests, training reports): the worker's steps 2-4 on events from a file.

Same validation, same field schema (typing), same ``FeatureSpec``, same TorchScript head as the
worker, so ``stream-detector score`` and a worker agree on every event (an integration test holds
them to it), and a bad row is that row's rejection with the worker's reason, never the file's.
A bundle with an entity spec enriches the valid rows in file order (step 3a), as a worker fed the
file from scratch would: the state lives in the kernel's arrays between batches
(``entity.history.CarriedState``, equal to the worker's records path bit for bit, tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .entity.history import CarriedState
from .entity.labels import InMemoryLabels, label_values
from .features import Extra
from .feedback import Label
from .fieldschema import JSON_TEXT
from .model.bundle import Bundle
from .pipeline.compute import Enrich, Fields, score_decoded
from .pipeline.decode import type_events
from .pipeline.score import Scorer, scores_of


@dataclass
class OfflineScores:
    """One entry per input row: ``scores`` float64 (n,), NaN where rejected; ``rejected`` the
    reason per row (``None`` when scored) and ``messages`` its message; ``per_feature`` (only with
    ``keep_errors``) float32 (n, width), the per-feature errors, NaN rows where rejected;
    ``probability`` (a bundle with a supervised head) float64 (n,), the calibrated fraud
    probability, NaN where rejected; ``features`` (only with ``keep_errors``) float32 (n, width),
    the feature rows (``Scorer.why`` reads them), NaN rows where rejected."""

    scores: np.ndarray
    rejected: list[str | None]
    messages: list[str | None] = field(default_factory=list)
    per_feature: np.ndarray | None = None
    probability: np.ndarray | None = None
    features: np.ndarray | None = None

    def flagged(self, threshold: float, head: float | None = None) -> np.ndarray:
        """bool (n,): the worker's decision (``pipeline/threshold.py``): score > ``threshold`` or,
        with a head, probability > ``head``; False where rejected."""
        out: np.ndarray = np.nan_to_num(self.scores, nan=-np.inf) > threshold
        if self.probability is not None and head is not None:
            out |= np.nan_to_num(self.probability, nan=-np.inf) > head
        return out

    def take(self, rows: Sequence[int]) -> OfflineScores:
        """The entries of ``rows`` (indices into this result), in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        return OfflineScores(self.scores[idx], [self.rejected[i] for i in idx.tolist()],
                             [self.messages[i] for i in idx.tolist()] if self.messages else [],
                             None if self.per_feature is None else self.per_feature[idx],
                             None if self.probability is None else self.probability[idx])

    @property
    def valid(self) -> np.ndarray:
        valid: np.ndarray = ~np.isnan(self.scores)
        return valid


def score_events(bundle: Bundle, events: Sequence[Any], device: str = "cpu", batch_size: int = 8192,
                 scorer: Scorer | None = None, keep_errors: bool = False,
                 labels: Iterable[Label] = ()) -> OfflineScores:
    """Score parsed events (JSON objects, or rows typed by ``inputs.load_events``) in order,
    ``batch_size`` rows at a time, through the worker's core (``pipeline.compute.score_decoded``).
    A bundle with label features reads ``labels`` (feedback records, ``entity/labels.py``; none:
    no label known, those features are 0).

    Returns one score per input row (NaN where rejected, with the reason and message) — never
    raises on data.
    """
    return OfflineScorer(bundle, device, scorer, labels).score(events, batch_size, keep_errors)


class OfflineScorer:
    """``score_events`` over a history given in consecutive parts (``big/score.py`` streams a big
    file): the entity state carries from one call to the next, so scoring the parts in order
    equals scoring their concatenation."""

    def __init__(self, bundle: Bundle, device: str = "cpu", scorer: Scorer | None = None,
                 labels: Iterable[Label] = ()) -> None:
        self.bundle = bundle
        self.scorer = scorer or Scorer(bundle, device)
        self.enrich: Enrich | None = None
        self.state: CarriedState | None = None  # the entity state carried between parts (``late``: its late events)
        if bundle.entity is not None:
            spec, state, known = bundle.entity, CarriedState(bundle.entity), InMemoryLabels(labels)
            self.state = state

            def enrich(typed: Sequence[dict[str, Any]], _indices: list[int], fields: Fields) -> Extra:
                values = state.features(typed, fields=fields)  # the valid, typed events only, in order
                if not spec.label_keys:
                    return spec.output_fields, values
                return spec.all_fields, np.hstack([values, label_values(spec, known, typed, values)])

            self.enrich = enrich

    def score(self, events: Sequence[Any], batch_size: int = 8192, keep_errors: bool = False) -> OfflineScores:
        """The next part of the history: one entry per event of ``events`` (see ``score_events``)."""
        bundle, n = self.bundle, len(events)
        scores = np.full(n, np.nan)
        per_feature = np.full((n, bundle.spec.width), np.nan, dtype=np.float32) if keep_errors else None
        features = np.full((n, bundle.spec.width), np.nan, dtype=np.float32) if keep_errors else None
        reasons: list[str | None] = [None] * n
        messages: list[str | None] = [None] * n
        probability = np.full(n, np.nan) if bundle.supervised is not None else None
        for start in range(0, n, batch_size):
            chunk = events[start:start + batch_size]
            decoded = type_events(chunk, range(start, start + len(chunk)), bundle.schema, JSON_TEXT, [])  # 2
            done = score_decoded(self.scorer, decoded, self.enrich)  # 3a, 3, 4
            scores[done.indices] = scores_of(done.per_feature)
            if probability is not None and done.probability is not None:
                probability[done.indices] = done.probability
            if per_feature is not None and features is not None:
                per_feature[done.indices] = done.per_feature
                features[done.indices] = done.feature_parts[0]
            for rej in done.rejected:
                reasons[rej.index], messages[rej.index] = rej.reason.value, rej.message
        return OfflineScores(scores, reasons, messages, per_feature, probability, features)
