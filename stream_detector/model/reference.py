"""A model's score reference: bin edges of its normal traffic's scores and the share expected in each.

Part of a bundle's calibration (``calibration.json``: ``drift_reference``, else the validation
error quantiles). Workers bin their scores with it (``pipeline/control_link.py``), the retrainer
compares the summed bins with it (``retrain/drift.py``: PSI, KS). Pure numpy: no training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


def _masses(levels: Sequence[float]) -> list[float]:
    return [float(x) for x in np.diff([0.0, *levels, 1.0])]
