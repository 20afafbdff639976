"""Why an alert fired (``Scorer.why``): the fields whose typical values clear it, chosen greedily."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_detector.model.bundle import Bundle
from stream_detector.pipeline.compute import Computed
from stream_detector.pipeline.score import Scorer
from tests.helpers import small_bundle


@pytest.fixture(scope="module")
def model() -> Bundle:
    return small_bundle(rows=3000, seed=3, epochs=15)


def _alerted(scorer: Scorer, events: list[dict[str, object]], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    x, bad = scorer.bundle.spec.transform(events)
    assert not bad
    scores = scorer.errors(x).mean(axis=1, dtype=np.float64)
    alerted = scores > threshold
    return x[alerted], scores[alerted]


def test_the_one_field_made_unusual_is_named_and_its_typical_value_clears_the_alert(model: Bundle) -> None:
    """A trial: an event whose only unusual field was tx_count_1h alerted with three other fields
    named by their errors. Made typical, the field named first takes the score under the
    threshold here, so it is the only one named, and what it took off is exactly the score less
    the rescored one."""
    from stream_detector.simulate import Simulator

    scorer = Scorer(model)
    assert scorer.column_means is not None and scorer.column_means.shape == (model.spec.width,)
    events, _ = Simulator(seed=9, accounts=300).batch(400, 0.0)
    for event in events:
        event["tx_count_1h"] = 60  # a burst: the training rows' largest is a few
    x, scores = _alerted(scorer, events, model.threshold)
    assert len(x) == 400
    named, parts = scorer.why(x, scores, model.threshold, 3)  # type: ignore[misc]
    assert (named[:, 0] == scorer.fields.index("tx_count_1h")).all()
    assert (named[:, 1:] == -1).mean() > 0.95  # nearly always the only one: its typical value clears the alert
    assert np.all(parts[:, 0] > 0) and np.all((named >= 0) == ~np.isnan(parts))
    # the parts add up to the score less the score with the named fields typical
    for k in range(len(x)):
        row = x[k].copy()
        for f in named[k][named[k] >= 0].tolist():
            lo = int(scorer.group_starts[f])
            hi = int(scorer.group_starts[f + 1]) if f + 1 < len(scorer.fields) else x.shape[1]
            row[lo:hi] = scorer.column_means[lo:hi]
        after = float(scorer.errors(row[None, :]).mean(dtype=np.float64))
        assert np.nansum(parts[k]) == pytest.approx(scores[k] - after, rel=1e-4, abs=1e-4)
        last = int((named[k] >= 0).sum())
        # it stopped because the score is at or under the threshold, or because three are named
        assert after <= model.threshold or last == 3 or not np.isfinite(parts[k][min(last, 2)])


def test_a_row_under_the_threshold_names_one_field_and_the_padding_is_minus_one(model: Bundle) -> None:
    """An alert only the supervised head fired has its score under the threshold already: one field
    is named (the one that lowers it most), the rest is -1 / NaN."""
    scorer = Scorer(model)
    x, _ = model.spec.transform([{"event_id": "e", "amount": 25.0}])
    score = scorer.errors(x).mean(axis=1, dtype=np.float64)
    named, parts = scorer.why(x, score, float(score[0]) + 100.0, 4)  # type: ignore[misc]
    assert named.shape == (1, 4) and named[0, 0] >= 0 and named[0, 1:].tolist() == [-1, -1, -1]
    assert np.isnan(parts[0, 1:]).all()
    empty = scorer.why(x[:0], score[:0], 1.0, 3)
    assert empty is not None and empty[0].shape == (0, 3)


def test_a_model_trained_before_column_means_keeps_the_error_ranking(model: Bundle) -> None:
    """A bundle without ``column_means`` (trained before 2026-12-07) has no typical values: ``why``
    is None and the alerts name the fields with the largest errors (``build_alerts``)."""
    import dataclasses

    from stream_detector.pipeline.publish import build_alerts
    from stream_detector.pipeline.threshold import Decision
    from stream_detector.store import Threshold
    from stream_detector.transport.base import Batch

    old = dataclasses.replace(model, calibration={k: v for k, v in model.calibration.items() if k != "column_means"})
    scorer = Scorer(old)
    x, _ = old.spec.transform([{"event_id": "e", "amount": 25.0}])
    assert scorer.why(x, np.array([1.0]), 0.5, 3) is None
    errors = scorer.field_errors(scorer.errors(x))
    decision = Decision.of(np.array([9.0]), old.version, Threshold(0.5, 1, old.version))
    batch = Batch(topic="tx", partitions=[0], offsets=[1], keys=[None], values=[b"{}"], timestamps=[1], headers=[[]])
    alert = orjson.loads(build_alerts(batch, [{"event_id": "e"}], [0], decision, errors, scorer.fields, 3,
                                      "alerts").pop().value)
    worst = np.argsort(-errors[0], kind="stable")[:3].tolist()
    assert [f["feature"] for f in alert["top_features"]] == [scorer.fields[j] for j in worst]
    assert [f["contribution"] for f in alert["top_features"]] == [None] * 3


def test_feature_rows_pick_the_rows_of_every_chunk() -> None:
    """The worker keeps each chunk's feature rows as they are (no copy of the batch's matrix) and
    picks the alerted rows across them."""
    parts = [np.arange(12, dtype=np.float32).reshape(4, 3), np.arange(12, 18, dtype=np.float32).reshape(2, 3),
             np.arange(18, 27, dtype=np.float32).reshape(3, 3)]
    done = Computed([], [], [], np.zeros((9, 3), dtype=np.float32), feature_parts=parts)
    whole = np.concatenate(parts)
    rows = np.array([8, 0, 4, 5, 3])
    assert np.array_equal(done.feature_rows(rows), whole[rows])  # type: ignore[arg-type]
    assert np.array_equal(Computed([], [], [], whole, feature_parts=[whole]).feature_rows(rows), whole[rows])  # type: ignore[arg-type]
    assert Computed([], [], [], whole).feature_rows(rows) is None
