"""The console's arithmetic, pure and on arrays: histograms, alerts per hour at a threshold,
precision/recall from analyst labels, ROC and PR curves. No I/O; unit-tested on its own.

Scores come from the workers' weighted sample (``pipeline/score_feed.py``): each sampled score
stands for ``weight`` scored events, so a count of events is a sum of weights. A score is an
alert when it is **strictly** above the threshold, as in ``pipeline/threshold.decide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class Sample:
    """Recent scored traffic of one model version: scores, weights, event ids, seconds covered."""

    scores: np.ndarray
    weights: np.ndarray
    ids: list[str]
    span_s: float

    @classmethod
    def empty(cls) -> Sample:
        return cls(np.zeros(0), np.zeros(0), [], 0.0)

    @property
    def events(self) -> float:
        return float(self.weights.sum())


def alerts_per_hour(sample: Sample, threshold: float) -> float:
    """Scored events above ``threshold`` per hour of the sampled span (0 when the span is empty)."""
    if sample.span_s <= 0:
        return 0.0
    return float(sample.weights[sample.scores > threshold].sum()) * 3600.0 / sample.span_s


def events_per_hour(sample: Sample) -> float:
    return sample.events * 3600.0 / sample.span_s if sample.span_s > 0 else 0.0


def histogram(scores: np.ndarray, weights: np.ndarray, threshold: float | None, bins: int = 60) -> dict[str, Any]:
    """Weighted histogram of log10(score); the range always includes the threshold."""
    logs = np.log10(np.maximum(scores, LOG_FLOOR))
    marks = [float(np.log10(max(threshold, LOG_FLOOR)))] if threshold is not None else []
    if not logs.size and not marks:
        return {"edges": [], "counts": [], "threshold": threshold, "log_threshold": None}
    ends = np.r_[logs.min(initial=np.inf), logs.max(initial=-np.inf), marks]
    ends = ends[np.isfinite(ends)]
    lo, hi = float(ends.min()) - 0.05, float(ends.max()) + 0.05
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(logs, bins=edges, weights=weights if logs.size else None)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "threshold": threshold,
            "log_threshold": marks[0] if marks else None}


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def fpr(self) -> float | None:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else None

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "precision": self.precision,
                "recall": self.recall, "fpr": self.fpr}


def confusion(scores: np.ndarray, is_fraud: np.ndarray, threshold: float) -> Confusion:
    """Counts of labelled events (unweighted: each label is one analyst verdict) at ``threshold``."""
    y = is_fraud.astype(bool)
    pred = scores > threshold
    return Confusion(int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum()),
                     int((~pred & ~y).sum()))


def curves(scores: np.ndarray, is_fraud: np.ndarray, max_points: int = 200) -> dict[str, list[list[float]]]:
    """ROC ([fpr, tpr]) and precision-recall ([recall, precision]) points, thinned for drawing.

    Empty lists unless both classes are labelled (a curve needs positives and negatives).
    """
    y = is_fraud.astype(bool)
    if not y.any() or y.all():
        return {"roc": [], "pr": []}
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # one point per distinct score
    tp = np.cumsum(yy)[last]
    fp = np.cumsum(~yy)[last]
    tpr, fpr = tp / y.sum(), fp / (~y).sum()
    precision = tp / (tp + fp)
    pick = np.unique(np.linspace(0, last.size - 1, min(max_points, last.size)).astype(int))
    roc = [[0.0, 0.0], *np.c_[fpr[pick], tpr[pick]].tolist()]
    pr = np.c_[tpr[pick], precision[pick]].tolist()
    return {"roc": roc, "pr": pr}


def what_if(sample: Sample, threshold: float, labelled_scores: np.ndarray, labelled_fraud: np.ndarray,
            current: float | None) -> dict[str, Any]:
    """Everything the what-if panel shows for one candidate threshold."""
    out: dict[str, Any] = {
        "threshold": threshold,
        "alerts_per_hour": alerts_per_hour(sample, threshold),
        "current_threshold": current,
        "current_alerts_per_hour": alerts_per_hour(sample, current) if current is not None else None,
        "events_per_hour": events_per_hour(sample),
        "sampled": int(sample.scores.size),
        "span_s": sample.span_s,
        "labelled": int(labelled_scores.size),
        "labelled_fraud": int(labelled_fraud.sum()),
    }
    if labelled_scores.size:
        out["confusion"] = confusion(labelled_scores, labelled_fraud, threshold).to_dict()
        out["curves"] = curves(labelled_scores, labelled_fraud)
    return out
