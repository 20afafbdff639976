"""Offline scoring (backtests, training reports): the worker's steps 2-4 on events from a file.

Same validation, same field schema (typing), same ``FeatureSpec``, same TorchScript head as the
worker, so ``stream-detector score`` and a worker agree on every event (an integration test holds
them to it), and a bad row is that row's rejection with the worker's reason, never the file's.
A bundle with an entity spec enriches the valid rows in file order with in-memory state (step
3a), as a worker fed the file from scratch would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .entity import Enricher, InMemoryState
from .fieldschema import JSON_TEXT, TextFormat
from .model.bundle import Bundle
from .pipeline.decode import Decoded, Rejected, type_events
from .pipeline.score import Scorer, scores_of


@dataclass
class OfflineScores:
    scores: np.ndarray  # float64, nan where rejected
    rejected: list[str | None]  # reason per row, None when scored
    messages: list[str | None] = field(default_factory=list)  # the rejection's message per row

    @property
    def valid(self) -> np.ndarray:
        valid: np.ndarray = ~np.isnan(self.scores)
        return valid


def typed_events(bundle: Bundle, events: Sequence[Any], text: TextFormat = JSON_TEXT) -> Decoded:
    """Step 2 on parsed objects: validate and type them with the bundle's field schema."""
    return type_events(events, range(len(events)), bundle.schema, text, [])


def score_events(bundle: Bundle, events: Sequence[Any], device: str = "cpu",
                 batch_size: int = 8192, scorer: Scorer | None = None) -> OfflineScores:
    """Score parsed events (JSON objects, or rows typed by ``inputs.load_events``) in order.

    Returns one score per input row (NaN where rejected, with the reason and message) — never
    raises on data.
    """
    scorer = scorer or Scorer(bundle, device)
    n = len(events)
    scores = np.full(n, np.nan)
    reasons: list[str | None] = [None] * n
    messages: list[str | None] = [None] * n
    enricher = Enricher(InMemoryState())
    for start in range(0, n, batch_size):
        chunk = events[start:start + batch_size]
        rejected: list[Rejected] = []
        decoded = type_events(chunk, range(start, start + len(chunk)), bundle.schema, JSON_TEXT, rejected)
        valid = enricher.enrich(bundle.entity, decoded.events, [(0, i) for i in decoded.indices])
        x, bad = bundle.spec.transform(valid)
        chunk_scores = scores_of(scorer.errors(x))
        for k, i in enumerate(decoded.indices):
            if k in bad:
                reasons[i], _, messages[i] = bad[k].partition(": ")
            else:
                scores[i] = chunk_scores[k]
        for rej in rejected:
            reasons[rej.index], messages[rej.index] = rej.reason.value, rej.message
    return OfflineScores(scores, reasons, messages)
