"""The labelled-tables benchmark (``benchmarks/labels_tables.py``) on a tiny synthetic table: its
split keeps anomalies out of the autoencoder's rows and apart between training and test, the head
is trained from 100 frauds on, and under 100 the product's fallback gives the autoencoder's figures."""

from __future__ import annotations

import numpy as np

from benchmarks import labels_tables as lt
from benchmarks import quality_data as qd


def _table(normal: int = 800, anomalous: int = 300, seed: int = 3) -> qd.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(normal + anomalous, 4))
    x[normal:, 0] += 4.0  # anomalies: far out on one field
    x[normal:, 1] = x[normal:, 2]  # and a broken correlation
    y = np.arange(normal + anomalous) >= normal
    return qd.Table("tiny", x, y, ["a", "b", "c", "d"])


def test_label_split_trains_on_normals_and_half_the_anomalies_and_tests_on_the_rest():
    table = _table()
    parts = lt.label_split(table, seed=0)
    assert not table.y[parts.normal].any() and table.y[parts.fraud].all()
    assert parts.fraud.size == 150 and parts.test.y.sum() == 150
    quality = qd.split(table.y, 0)  # the same normals as the quality benchmark's split
    assert np.array_equal(parts.normal, np.sort(np.concatenate([quality.fit, quality.calib])))
    trained = {tuple(r) for r in table.x[np.concatenate([parts.normal, parts.fraud])].tolist()}
    assert not trained & {tuple(r) for r in parts.test.x.tolist()}, "a training row reached the test part"
    fixed = _table()
    fixed.test = _table(50, 20, seed=9)
    fparts = lt.label_split(fixed, seed=0)
    assert fparts.fraud.size == 300 and len(fparts.test) == 70


def test_head_from_100_frauds_and_the_fallback_below_equals_the_autoencoder():
    rows = lt.run_split(_table(), seed=0, scarce=50, some=120, epochs=3, progress=lambda _m: None)
    by = {r["variant"]: r for r in rows}
    assert [r["variant"] for r in rows] == [lt.AE, lt.HEAD_ALL, lt.HEAD_SOME, lt.FALLBACK]
    assert by[lt.HEAD_ALL]["head"] and by[lt.HEAD_ALL]["frauds"] == 150
    assert by[lt.HEAD_SOME]["head"] and by[lt.HEAD_SOME]["frauds"] == 120
    assert by[lt.HEAD_ALL]["ae_scores_unchanged"] and by[lt.HEAD_ALL]["auc_roc"] > 0.9
    fallback = by[lt.FALLBACK]
    assert not fallback["head"] and fallback["same_as_ae"] and fallback["frauds"] == 50
    assert fallback["note"].startswith("TrainingError") and "at least 100" in fallback["note"]
    metrics = ("auc_roc", "average_precision", "precision_at_anomalies", "precision_at_fixed", "alert_precision",
               "alert_recall", "alerts")
    assert [fallback[k] for k in metrics] == [by[lt.AE][k] for k in metrics]  # equal, not close
    # the union decision keeps every autoencoder alert: recall never falls
    assert by[lt.HEAD_ALL]["alert_recall"] >= by[lt.AE]["alert_recall"]
    result = lt.TableResult("tiny", "", 0, 150, 0, 150, [0], [rows], 1.0)
    text = lt.markdown([result], [0], 50, 120, 1.0, [])
    assert "scarce: 50 frauds → no head (fallback), scores identical to the autoencoder's" in text
    assert "+ head, all 150 frauds" in text and "WARNING" not in text


def test_precision_at_k_counts_the_top_k():
    scores = np.array([0.9, 0.1, 0.8, 0.7, np.inf])
    y = np.array([True, False, False, True, True])
    assert lt.precision_at_k(scores, y, 2) == 1.0  # inf (a rejected row, ranked first) and 0.9
    assert lt.precision_at_k(scores, y, 4) == 0.75
