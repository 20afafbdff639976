"""Drift: live score distributions (from worker summaries) against a model's reference.

A model's **reference** is a set of score bin edges with the share of normal traffic expected in
each bin. A retrained bundle carries one in ``calibration.json`` (``drift_reference``: quantiles
of the candidate's scores on held-back recent traffic); older bundles fall back to their
validation error quantiles. Workers count their scores into those bins per batch (numpy, see
``pipeline/control_link.py``) and publish the counts; the retrainer sums them per model version
and computes the population stability index (PSI) and the Kolmogorov-Smirnov distance of the
binned distributions. PSI above ``SD_DRIFT_PSI_BOUND`` (0.1 is "some", 0.25 "major" shift by
the usual rule of thumb) triggers a retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

REFERENCE_KEY = "drift_reference"
REFERENCE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def reference_from_scores(scores: np.ndarray, levels: Sequence[float] = REFERENCE_LEVELS) -> dict[str, Any]:
    """A reference from scores of normal traffic: their quantiles at ``levels``."""
    edges = np.quantile(np.asarray(scores, dtype=np.float64), levels)
    return {"edges": [float(e) for e in edges], "expected": _masses(levels), "rows": len(scores)}


def reference_bins(calibration: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(edges, expected shares) for a bundle's calibration; equal edges are merged."""
    ref = calibration.get(REFERENCE_KEY)
    if ref:
        edges, expected = list(ref["edges"]), list(ref["expected"])
    else:
        q = calibration["validation_error_quantiles"]
        levels = sorted(q, key=float)
        edges, expected = [float(q[k]) for k in levels], _masses([float(k) for k in levels])
    out_edges: list[float] = []
    out_mass = [expected[0]]
    for edge, mass in zip(edges, expected[1:], strict=True):
        if out_edges and edge <= out_edges[-1]:
            out_mass[-1] += mass
        else:
            out_edges.append(float(edge))
            out_mass.append(mass)
    return np.asarray(out_edges, dtype=np.float64), np.asarray(out_mass, dtype=np.float64)


def bin_counts(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (``len(edges) + 1`` bins; bin i holds edges[i-1] <= s < edges[i])."""
    return np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)


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


def _masses(levels: Sequence[float]) -> list[float]:
    return [float(x) for x in np.diff([0.0, *levels, 1.0])]


def _shares(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else c
