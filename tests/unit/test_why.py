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
    assert scorer.typical is not None and scorer.typical.shape == (model.spec.width,)
    events, _ = Simulator(seed=9, accounts=300).batch(400, 0.0)
    for event in events:
        event["tx_count_1h"] = 60  # a burst: the training rows' largest is a few
    x, scores = _alerted(scorer, events, model.threshold)
    assert len(x) == 400
    why = scorer.why(x, scores, model.threshold, 3)
    assert why is not None
    named, parts = why.named, why.parts
    assert (named[:, 0] == why.units.index("tx_count_1h")).all()
    assert (named[:, 1:] == -1).mean() > 0.95  # nearly always the only one: its typical value clears the alert
    assert np.all(parts[:, 0] > 0) and np.all((named >= 0) == ~np.isnan(parts))
    # the parts add up to the score less the score with the named fields typical
    for k in range(len(x)):
        row = x[k].copy()
        typical = np.isin(scorer.column_unit, named[k][named[k] >= 0])
        row[typical] = scorer.typical[typical]
        after = float(scorer.errors(row[None, :]).mean(dtype=np.float64))
        assert np.nansum(parts[k]) == pytest.approx(scores[k] - after, rel=1e-4, abs=1e-4)
        last = int((named[k] >= 0).sum())
        assert why.after[k, last - 1] == pytest.approx(after, rel=1e-4, abs=1e-4)  # the alert's score_after
        # it stopped because the score is at or under the threshold, or because three are named
        assert after <= model.threshold or last == 3 or not np.isfinite(parts[k][min(last, 2)])


def test_a_row_under_the_threshold_names_one_field_and_the_padding_is_minus_one(model: Bundle) -> None:
    """An alert only the supervised head fired has its score under the threshold already: one field
    is named (the one that lowers it most), the rest is -1 / NaN."""
    scorer = Scorer(model)
    x, _ = model.spec.transform([{"event_id": "e", "amount": 25.0}])
    score = scorer.errors(x).mean(axis=1, dtype=np.float64)
    why = scorer.why(x, score, float(score[0]) + 100.0, 4)
    assert why is not None
    assert why.named.shape == (1, 4) and why.named[0, 0] >= 0 and why.named[0, 1:].tolist() == [-1, -1, -1]
    assert np.isnan(why.parts[0, 1:]).all() and np.isnan(why.after[0, 1:]).all()
    empty = scorer.why(x[:0], score[:0], 1.0, 3)
    assert empty is not None and empty.named.shape == (0, 3)


def test_a_model_trained_before_column_means_keeps_the_error_ranking(model: Bundle) -> None:
    """A bundle without ``column_medians`` and ``column_means`` (trained before 2026-12-07) has no
    typical values: ``why`` is None and the alerts name the fields with the largest errors
    (``build_alerts``), as with ``SD_WHY_CANDIDATES=0``."""
    import dataclasses

    from stream_detector.pipeline.publish import build_alerts
    from stream_detector.pipeline.threshold import Decision
    from stream_detector.store import Threshold
    from stream_detector.transport.base import Batch

    old = dataclasses.replace(model, calibration={k: v for k, v in model.calibration.items()
                                                  if k not in ("column_means", "column_medians")})
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
    assert [(f["contribution"], f["score_after"]) for f in alert["top_features"]] == [(None, None)] * 3


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


def test_a_categorical_fields_typical_value_is_its_most_frequent_category(model: Bundle) -> None:
    """Trial K: a never-seen country, made "typical" as the categories' shares (the columns'
    means), still scored twice the threshold: a row of shares is no category at all. The typical
    value is the most frequent category's one-hot; a number's is its median."""
    from stream_detector.pipeline.score import typical_row

    row = typical_row(model)
    assert row is not None
    means = np.asarray(model.calibration["column_means"])
    for column in model.spec.categorical:
        group = [j for j, name in enumerate(model.spec.columns) if name.startswith(f"{column.name}=")]
        assert sorted(row[group].tolist()) == [0.0] * (len(group) - 1) + [1.0]
        assert row[group].argmax() == means[group].argmax()
    numbers = [j for j, name in enumerate(model.spec.columns) if "=" not in name]
    assert np.allclose(row[numbers], np.asarray(model.calibration["column_medians"])[numbers])


def test_an_amount_is_made_typical_with_its_ratios_to_the_entitys_history() -> None:
    """Trial K: with account and terminal history, an amount ten times the account's was never
    named: made typical alone, its ratios to the history stayed unusual. An input field's unit
    holds the entity features computed from its value in this event."""
    from stream_detector.entity import EntitySpec
    from tests.helpers import entity_bundle, raw_card_events

    spec = EntitySpec(keys=("account_id",), windows=(3600, 86_400), distinct_fields=("country",))
    events = raw_card_events(4000, seed=4, accounts=200, tag="why")
    scorer = Scorer(entity_bundle(spec, events, epochs=3))
    assert "account_id__amount_ratio_1h" not in scorer.units and "account_id__new_country" not in scorer.units
    amount = scorer.units.index("amount")
    assert {scorer.fields[f] for f in np.unique(scorer.column_field[scorer.column_unit == amount])} == {
        "amount", "account_id__amount_ratio_1h", "account_id__amount_z_1h", "account_id__amount_ratio_1d",
        "account_id__amount_z_1d"}
    country = scorer.units.index("country")
    assert "account_id__new_country" in {scorer.fields[f] for f in scorer.column_field[scorer.column_unit == country]}
    # the history before the event: one unit per key, its fields those of no input field's unit
    history = scorer.units.index("account_id__history")
    assert "account_id__count_1h" not in scorer.units
    assert [scorer.fields[f] for f in scorer.unit_fields[history]] == [
        "account_id__count_1h", "account_id__sum_1h", "account_id__mean_1h", "account_id__distinct_country_1h",
        "account_id__count_1d", "account_id__sum_1d", "account_id__mean_1d", "account_id__distinct_country_1d",
        "account_id__seconds_since_last"]
    assert sorted(f for u in scorer.unit_fields for f in u) == list(range(len(scorer.fields)))  # each field once


def test_a_keys_history_and_its_known_frauds_are_one_unit_each() -> None:
    """The demo's labelled model: made typical one at a time, a terminal's fraud count and fraud
    share left each other unusual, and a third of its alerts were not cleared by the three fields
    named. A key's history features are one unit (``k__history``), its label features another
    (``k__frauds``); an alert lists the unit's fields with the largest errors."""
    from stream_detector.entity import EntitySpec

    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400), distinct_fields=(),
                      label_keys=("terminal_id",))
    units = spec.history_units()
    assert units["terminal_id__fraud_1d"] == units["terminal_id__fraud_share_7d"] == "terminal_id__frauds"
    assert units["terminal_id__count_1d"] == units["terminal_id__seconds_since_last"] == "terminal_id__history"
    assert units["account_id__mean_7d"] == "account_id__history"
    assert "account_id__amount_ratio_1d" not in units and "account_id__amount_z_7d" not in units  # the amount's
    assert set(units) | set(spec.derived_from()) == set(spec.all_fields)


def test_a_field_already_typical_is_not_named_for_float_noise(model: Bundle) -> None:
    """Trial L: after the field that cleared most of the score, ``tx_count_1h`` (already 0, its
    typical value) was named for a contribution of 3.6e-15. A row made of typical values but one
    field names that field alone, even when the threshold is never reached."""
    scorer = Scorer(model)
    assert scorer.typical is not None
    rows = 200
    x = np.repeat(scorer.typical[None, :], rows, axis=0)
    unit = scorer.units.index("amount")
    x[:, scorer.column_unit == unit] += np.linspace(3.0, 90.0, rows, dtype=np.float32)[:, None]
    score = scorer.errors(x).mean(axis=1, dtype=np.float64)
    why = scorer.why(x, score, -1.0, 3)  # a threshold no score gets under: only "no field lowers it" stops it
    assert why is not None and (why.named[:, 0] == unit).all()
    assert (why.named[:, 1:] == -1).all(), why.parts[why.named[:, 1] >= 0][:3]


def _greedy_reference(scorer: Scorer, row: np.ndarray, score: float, threshold: float, top_n: int,
                      candidates: int) -> list[int]:
    """``why`` for one row, the plain way: each candidate's occluded score computed on its own."""
    from stream_detector.pipeline.score import WHY_LATER, WHY_NOISE

    assert scorer.typical is not None

    def occluded(current: np.ndarray, unit: int) -> float:
        r = np.where(scorer.column_unit == unit, scorer.typical, current)
        return float(scorer.errors(r[None, :].astype(np.float32)).mean(dtype=np.float64))

    errors = scorer.unit_errors(scorer.errors(row[None, :]))[0]
    tried = np.argsort(-errors, kind="stable")[:min(candidates, len(scorer.units))].tolist()
    current, now, named = row.copy(), score, []
    for step in range(min(top_n, len(tried))):
        drops = {u: now - occluded(current, u) for u in tried if u not in named}
        best = max(drops, key=lambda u: (drops[u], -tried.index(u)))  # the first of equal drops
        if step == 0:
            tried = sorted(tried, key=lambda u: (-drops[u], tried.index(u)))[:1 + WHY_LATER]
        elif drops[best] <= WHY_NOISE * max(now, 1.0):
            break
        named.append(best)
        current = np.where(scorer.column_unit == best, scorer.typical, current)
        now -= drops[best]
        if now <= threshold:
            break
    return named


def test_the_greedy_steps_score_only_the_fields_not_yet_typical_and_name_the_same_fields(model: Bundle) -> None:
    """Each later step scores the first step's runners-up not yet made typical (3, then 2), not the
    fields it already made typical again; the fields named are those of a plain per-row greedy
    search (the same candidates, each scored on its own)."""
    from stream_detector.simulate import Simulator

    scorer = Scorer(model)
    events, _ = Simulator(seed=5, accounts=300).batch(300, 0.0)
    for i, event in enumerate(events):  # two or three unusual fields at a time, of varied size
        event["tx_count_1h"] = 5 + i % 40
        event["distance_from_home_km"] = 50.0 * (1 + i % 11)
        if i % 3:
            event["amount_to_avg"] = 2.0 + i % 13
    x, _ = scorer.bundle.spec.transform(events)
    scores = scorer.errors(x).mean(axis=1, dtype=np.float64)
    threshold = float(np.quantile(scores, 0.05))  # most rows need more than one field to clear it
    rows = 0
    outputs = scorer.outputs

    def counted(block: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        nonlocal rows
        rows += block.shape[0]
        return outputs(block)

    scorer.outputs = counted  # type: ignore[method-assign]
    why = scorer.why(x, scores, threshold, 3, candidates=6)
    scorer.outputs = outputs  # type: ignore[method-assign]
    assert why is not None
    steps = (why.named >= 0).sum(axis=1)
    assert (steps >= 2).sum() > 20  # enough rows that needed later steps
    width = min(6, len(scorer.units))
    # the first step scores every candidate; each later step the rows still above the threshold
    # after the one before, each its runners-up not yet typical (3, then 2)
    later = [(why.after[:, s - 1] > threshold) & (why.named[:, s - 1] >= 0) for s in (1, 2)]
    assert rows == len(x) + len(x) * width + 3 * int(later[0].sum()) + 2 * int((later[0] & later[1]).sum())
    for k in range(0, len(x), 7):
        expect = _greedy_reference(scorer, x[k], float(scores[k]), threshold, 3, 6)
        assert why.named[k][why.named[k] >= 0].tolist() == expect, k
