"""Evaluation numbers and PNG plots (score distributions with the threshold, ROC and PR curves).

``evaluate_on_input`` is what ``stream-detector train`` reports on a labelled input: the bundle
scores the rows as ``stream-detector score`` would, then the numbers and ``report/*.png``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .feedback import Label
from .model.bundle import Bundle
from .offline import score_events


def evaluate_on_input(bundle: Bundle, events: Sequence[Any], is_anomaly: np.ndarray, out: Path,
                      input_name: str, labels: Iterable[Label] = ()) -> dict[str, Any]:
    """Score ``events`` (one per row of ``is_anomaly``, bool (n,)) with ``bundle`` (offline core:
    rejected rows are left out), evaluate at the bundle's threshold, and write
    ``out/report/scores.png`` (and ``curves.png`` when both classes are present). ``labels``:
    feedback records for a bundle with label features (``offline.score_events``)."""
    scored = score_events(bundle, events, labels=labels)
    ok = scored.valid
    scores, y, threshold = scored.scores[ok], is_anomaly[ok], bundle.threshold
    numbers = evaluate(scores, y, threshold)
    if scored.probability is not None and bundle.head_threshold is not None:  # the supervised head's own figures
        numbers["supervised_head"] = evaluate(scored.probability[ok], y, bundle.head_threshold)
        numbers["decision"] = decision_figures(scored.flagged(threshold, bundle.head_threshold)[ok], y)
    if y.any() and (~y).any():
        plot_curves(scores, y, threshold, out / "report" / "curves.png", out.name)
    plot_scores(scores, y, threshold, out / "report" / "scores.png", f"scores on {input_name}")
    return numbers


def decision_figures(flagged: np.ndarray, is_anomaly: np.ndarray) -> dict[str, Any]:
    """The worker's decision against labels: ``flagged`` (bool (n,)) is what it alerts (with a
    supervised head: error above its threshold **or** probability above the head's), ``is_anomaly``
    (bool (n,)) the truth. Alerts, precision, recall, F1 and flag rate (share of rows alerted);
    precision is None (undefined) without alerts, recall without anomalies, F1 without either."""
    pred, y = flagged.astype(bool), is_anomaly.astype(bool)
    tp = int((pred & y).sum())
    precision = tp / int(pred.sum()) if pred.any() else None
    recall = tp / int(y.sum()) if y.any() else None
    return {"alerts": int(pred.sum()), "precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "flag_rate": float(pred.mean()) if y.size else 0.0}


def _f1(precision: float | None, recall: float | None) -> float | None:
    """The harmonic mean; None where either is undefined, 0.0 where both are 0."""
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def evaluate(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC-ROC, AUC-PR and precision/recall/F1/accuracy at ``threshold`` (score > threshold), of
    ``scores`` (float (n,)) against ``is_anomaly`` (bool (n,)). Undefined figures are None, never a
    made-up 0: precision without alerts, recall without anomalies (an all-normal file), F1 without
    either, the AUCs without both classes."""
    y = is_anomaly.astype(bool)
    pred = scores > threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    both = y.any() and (~y).any()
    return {
        "rows": int(y.size),
        "anomalies": int(y.sum()),
        "auc_roc": float(roc_auc_score(y, scores)) if both else None,
        "auc_pr": float(average_precision_score(y, scores)) if both else None,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "accuracy": (tp + tn) / y.size if y.size else 0.0,
        "flag_rate": float(pred.mean()) if y.size else 0.0,
    }


def plot_scores(scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float, path: Path,
                title: str) -> Path:
    """Histogram of (log) scores, normal vs anomalous when labels exist, with the threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    safe = np.log10(np.maximum(scores, 1e-12))
    bins = np.linspace(safe.min(), max(safe.max(), np.log10(max(threshold, 1e-12))) + 1e-9, 80)
    if is_anomaly is None:
        ax.hist(safe, bins=bins.tolist(), color="tab:blue", alpha=0.8, label="events")
    else:
        y = is_anomaly.astype(bool)
        for rows, colour, name in ((~y, "tab:blue", "normal"), (y, "tab:red", "anomalous")):
            if rows.any():  # a density of no rows is 0/0: a class without rows is left out
                ax.hist(safe[rows], bins=bins.tolist(), color=colour, alpha=0.6, density=True,
                        label=f"{name} ({rows.sum()})")
    ax.axvline(np.log10(max(threshold, 1e-12)), color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("log10(reconstruction error)")
    ax.set_ylabel("density" if is_anomaly is not None else "events")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float, path: Path, title: str) -> Path:
    """ROC and precision-recall curves side by side, the operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = is_anomaly.astype(bool)
    fpr, tpr, _ = roc_curve(y, scores)
    prec, rec, _ = precision_recall_curve(y, scores)
    op = evaluate(scores, y, threshold)
    op_fpr = float(((scores > threshold) & ~y).sum() / max(1, (~y).sum()))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(fpr, tpr, label=f"AUC {op['auc_roc']:.3f}")
    a.plot([0, 1], [0, 1], color="grey", linestyle=":")
    a.scatter([op_fpr], [op["recall"]], color="black", zorder=3, label="threshold")
    a.set_xlabel("false positive rate")
    a.set_ylabel("true positive rate")
    a.set_title(f"ROC — {title}")
    a.legend(loc="lower right")
    b.plot(rec, prec, label=f"AP {op['auc_pr']:.3f}")
    if op["precision"] is not None:  # no alert at the threshold: no point on the curve
        b.scatter([op["recall"]], [op["precision"]], color="black", zorder=3, label="threshold")
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_title(f"Precision-recall — {title}")
    b.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
