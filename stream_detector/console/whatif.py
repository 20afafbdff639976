"""The console's arithmetic, pure and on arrays: histograms, alerts per hour at a threshold,
precision/recall from analyst labels, ROC and PR curves. No I/O; unit-tested on its own.

Scores come from the workers' weighted sample (``pipeline/score_feed.py``): each sampled score
stands for ``weight`` scored events, so a count of events is a sum of weights. A score is an
alert when it is **strictly** above the threshold, as in ``pipeline/threshold.decide``.

With a supervised head (``model/supervised.py``) an event also carries a fraud probability, and
the rule is the worker's (``Decision.of``): an alert when the score is strictly above the
threshold **or** the probability strictly above the head threshold. Every function here takes
the probabilities and the head threshold as optional arguments; without them (``None``) the
result is the autoencoder's alone, exactly as before heads existed. A NaN probability (a sampled
event whose worker did not send one) is never above a head threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class Sample:
    """Recent scored traffic of one model version.

    ``scores``: float64 (n,), reconstruction errors; ``weights``: float64 (n,), scored events each
    sample stands for; ``ids``: n event ids; ``span_s``: seconds covered; ``probs``: float64 (n,),
    the supervised head's fraud probabilities in [0, 1] (NaN where unknown), or None without a head.
    """

    scores: np.ndarray
    weights: np.ndarray
    ids: list[str]
    span_s: float
    probs: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Sample:
        return cls(np.zeros(0), np.zeros(0), [], 0.0)

    @property
    def events(self) -> float:
        return float(self.weights.sum())


def fired(scores: np.ndarray, threshold: float, probs: np.ndarray | None = None,
          head: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which part alerts each event: (autoencoder, head), two bool arrays of ``scores``' shape.

    ``autoencoder``: score strictly above ``threshold``; ``head``: probability strictly above
    ``head`` (all False when ``probs`` or ``head`` is None; False where a probability is NaN).
    The decision rule alerts their union (``pipeline/threshold.Decision.of``).
    """
    autoencoder = scores > threshold
    if probs is None or head is None:
        return autoencoder, np.zeros(scores.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return autoencoder, probs > head


def alerts_per_hour(sample: Sample, threshold: float, head: float | None = None) -> float:
    """Scored events the rule alerts per hour of the sampled span (0 when the span is empty):
    score above ``threshold``, or (with ``head`` and the sample's ``probs``) probability above ``head``."""
    if sample.span_s <= 0:
        return 0.0
    autoencoder, by_head = fired(sample.scores, threshold, sample.probs, head)
    return float(sample.weights[autoencoder | by_head].sum()) * 3600.0 / sample.span_s


def parts_per_hour(sample: Sample, threshold: float, head: float | None) -> dict[str, float]:
    """Alerts per hour by the part that fires them, at the pair (``threshold``, ``head``).

    Keys: ``union`` (what the worker alerts), ``autoencoder`` and ``head`` (each part, whether or
    not the other fires too), ``both``, ``autoencoder_only`` and ``head_only``; so
    ``union = autoencoder_only + head_only + both``. All 0 when the span is empty.
    """
    autoencoder, by_head = fired(sample.scores, threshold, sample.probs, head)
    per_hour = 3600.0 / sample.span_s if sample.span_s > 0 else 0.0

    def rate(mask: np.ndarray) -> float:
        return float(sample.weights[mask].sum()) * per_hour

    return {"union": rate(autoencoder | by_head), "autoencoder": rate(autoencoder), "head": rate(by_head),
            "both": rate(autoencoder & by_head), "autoencoder_only": rate(autoencoder & ~by_head),
            "head_only": rate(by_head & ~autoencoder)}


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


def confusion(scores: np.ndarray, is_fraud: np.ndarray, threshold: float, probs: np.ndarray | None = None,
              head: float | None = None) -> Confusion:
    """Counts of labelled events (unweighted: each label is one analyst verdict) at ``threshold``,
    or, with ``probs`` (float64, same shape as ``scores``) and ``head``, under the union rule."""
    y = is_fraud.astype(bool)
    autoencoder, by_head = fired(scores, threshold, probs, head)
    pred = autoencoder | by_head
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
            current: float | None, head: float | None = None, current_head: float | None = None,
            labelled_probs: np.ndarray | None = None) -> dict[str, Any]:
    """Everything the what-if panel shows for one candidate threshold (and head threshold).

    ``labelled_scores`` (float64, m) and ``labelled_fraud`` (bool, m): the scores of labelled
    events and their labels; ``current``: the threshold in force (None: none yet).

    Without ``head`` the result is the autoencoder's alone. With ``head`` (a probability) the
    numbers follow the union rule at the pair (``threshold``, ``head``): ``alerts_per_hour``,
    ``confusion`` (with ``labelled_probs``, float64 (m,), NaN where unknown) and, at the pair in
    force (``current``, ``current_head``), ``current_alerts_per_hour``; added: ``head_threshold``,
    ``current_head_threshold``, ``parts`` (``parts_per_hour``), ``head_sampled`` (samples with a
    probability), ``labelled_with_probability`` and ``curves_head`` (ROC/PR of the probability
    over the labelled events that have one). ``curves`` stays the autoencoder score's.
    """
    probs = labelled_probs if head is not None else None
    known = np.isfinite(probs) if probs is not None else np.zeros(labelled_scores.shape, dtype=bool)
    out: dict[str, Any] = {
        "threshold": threshold,
        "alerts_per_hour": alerts_per_hour(sample, threshold, head),
        "current_threshold": current,
        "current_alerts_per_hour": alerts_per_hour(sample, current, current_head if head is not None else None)
                                   if current is not None else None,
        "events_per_hour": events_per_hour(sample),
        "sampled": int(sample.scores.size),
        "span_s": sample.span_s,
        "labelled": int(labelled_scores.size),
        "labelled_fraud": int(labelled_fraud.sum()),
    }
    if head is not None:
        out.update(head_threshold=head, current_head_threshold=current_head,
                   parts=parts_per_hour(sample, threshold, head),
                   head_sampled=int(np.isfinite(sample.probs).sum()) if sample.probs is not None else 0,
                   labelled_with_probability=int(known.sum()))
    if labelled_scores.size:
        out["confusion"] = confusion(labelled_scores, labelled_fraud, threshold, probs, head).to_dict()
        out["curves"] = curves(labelled_scores, labelled_fraud)
        if head is not None and probs is not None:
            out["curves_head"] = curves(probs[known], labelled_fraud[known])
    return out
