"""``report.evaluate`` and ``decision_figures``: a figure the labels cannot define is None, never a
made-up 0 (a trial: an all-normal file printed recall=0.0000, f1=0.0000 as if measured)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.report import decision_figures, evaluate


def test_figures_from_the_confusion_counts() -> None:
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.05])
    truth = np.array([False, False, True, False, True, True])
    got = evaluate(scores, truth, threshold=0.5)  # alerts: 0.9 (tp), 0.8 (fp), 0.7 (tp); 0.05 missed
    assert (got["precision"], got["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert got["f1"] == pytest.approx(2 / 3) and got["accuracy"] == pytest.approx(4 / 6)
    assert got["flag_rate"] == pytest.approx(0.5) and got["anomalies"] == 3 and got["auc_roc"] is not None
    assert decision_figures(scores > 0.5, truth)["precision"] == pytest.approx(2 / 3)


def test_undefined_figures_are_none() -> None:
    normal = np.zeros(4, dtype=bool)
    got = evaluate(np.array([0.1, 0.9, 0.2, 0.3]), normal, threshold=0.5)
    assert got["precision"] == 0.0, "one alert, a false positive: precision is measured, and 0"
    assert got["recall"] is None and got["f1"] is None and got["auc_roc"] is None and got["auc_pr"] is None
    quiet = evaluate(np.array([0.1, 0.2]), np.array([True, False]), threshold=0.5)
    assert quiet["precision"] is None and quiet["recall"] == 0.0 and quiet["f1"] is None
    assert decision_figures(np.zeros(2, dtype=bool), np.array([True, False]))["precision"] is None
    assert decision_figures(np.ones(2, dtype=bool), normal[:2])["recall"] is None
