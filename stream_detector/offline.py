"""Offline scoring (backtests, training reports): the worker's steps 2-4 on events from a file.

Same validation, same ``FeatureSpec``, same TorchScript head as the worker, so ``stream-detector
score`` and a worker agree on every event (an integration test holds them to it). A bundle with
an entity spec enriches the valid rows in file order with in-memory state (step 3a), as a worker
fed the file from scratch would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .entity import Enricher, InMemoryState
from .model.bundle import Bundle
from .pipeline.decode import validate_event
from .pipeline.score import Scorer, scores_of


@dataclass
class OfflineScores:
    scores: np.ndarray  # float64, nan where rejected
    rejected: list[str | None]  # reason per row, None when scored

    @property
    def valid(self) -> np.ndarray:
        valid: np.ndarray = ~np.isnan(self.scores)
        return valid


def score_events(bundle: Bundle, events: Sequence[dict[str, Any]], device: str = "cpu",
                 batch_size: int = 8192, scorer: Scorer | None = None) -> OfflineScores:
    scorer = scorer or Scorer(bundle, device)
    n = len(events)
    scores = np.full(n, np.nan)
    reasons: list[str | None] = [None] * n
    enricher = Enricher(InMemoryState())
    for start in range(0, n, batch_size):
        chunk = events[start:start + batch_size]
        ok_rows: list[int] = []
        for j, event in enumerate(chunk):
            problem = validate_event(event)
            if problem is None:
                ok_rows.append(j)
            else:
                reasons[start + j] = problem[0].value
        valid = enricher.enrich(bundle.entity, [chunk[j] for j in ok_rows], [(0, start + j) for j in ok_rows])
        x, bad = bundle.spec.transform(valid)
        chunk_scores = scores_of(scorer.errors(x))
        for k, j in enumerate(ok_rows):
            if k in bad:
                reasons[start + j] = bad[k].partition(":")[0]
            else:
                scores[start + j] = chunk_scores[k]
    return OfflineScores(scores, reasons)
