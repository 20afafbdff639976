"""Drift: live score distributions (from worker summaries) against a model's reference.

A model's **reference** is a set of score bin edges with the share of normal traffic expected in
each bin. A retrained bundle carries one in ``calibration.json`` (``drift_reference``: quantiles
of the candidate's scores on held-back recent traffic); older bundles fall back to their
validation error quantiles. Workers count their scores into those bins per batch (numpy, see
``pipeline/control_link.py``; edges from ``model/reference.py``) and publish the counts; the
retrainer sums them per model version and computes the population stability index (PSI) and the
Kolmogorov-Smirnov distance of the binned distributions. PSI above ``SD_DRIFT_PSI_BOUND`` (0.1 is
"some", 0.25 "major" shift by the usual rule of thumb) triggers a retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson


def psi(expected: np.ndarray, actual_counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index Σ (a - e)·ln(a / e), shares floored at ``eps``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(_shares(actual_counts), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the binned distributions (largest CDF gap at an edge)."""
    return float(np.max(np.abs(np.cumsum(_shares(actual_counts)) - np.cumsum(expected))))


@dataclass(frozen=True)
class DriftReport:
    model_version: str
    events: int
    psi: float
    ks: float

    def exceeds(self, bound: float) -> bool:
        return self.psi > bound


def summarize(model_version: str, edges: np.ndarray, expected: np.ndarray,
              summaries: Sequence[dict[str, str]]) -> DriftReport | None:
    """Sum worker summaries for ``model_version`` with matching edges; None when there are none."""
    total = np.zeros(len(edges) + 1, dtype=np.int64)
    for s in summaries:
        if s.get("model_version") != model_version:
            continue
        their_edges = np.asarray(orjson.loads(s["edges"]), dtype=np.float64)
        if their_edges.shape != edges.shape or not np.allclose(their_edges, edges):
            continue
        total += np.asarray(orjson.loads(s["counts"]), dtype=np.int64)
    n = int(total.sum())
    if n == 0:
        return None
    return DriftReport(model_version, n, psi(expected, total), ks(expected, total))


def _shares(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else c
