"""The retrainer refreshes a model with account and terminal history, label features and a
supervised head (issue 18's first item), on the real broker and Redis.

A worker decides a Handbook-like history with the active model; the retrainer reads that history
back from the input topic by time and every label from the feedback topic
(``retrain/history.py``), and its candidate equals a model trained by hand with the public API on
the same events — the time-ordered history enriched point in time, the same clean training rows,
the same labelled rows for the head — score for score."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.feedback import Label, Verdicts, parse_label
from stream_detector.kafka_util import committed_offsets, end_offsets, read_all
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.supervised import HeadConfig, rows_for_head, train_head
from stream_detector.model.train import TrainConfig, at_most_weighted_above, row_errors, train
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.retrain.job import ids_digest
from stream_detector.retrain.service import Retrainer
from stream_detector.settings import Settings
from stream_detector.simulate import HandbookSimulator, LabelDelays, Scenarios
from stream_detector.store import ControlPlane
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
DAY = 86_400_000
SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400), distinct_fields=(),
                  label_keys=("terminal_id",))


def _active_model(events: list[dict[str, Any]], labels: list[Label], end: int,
                  ) -> tuple[Bundle, list[dict[str, Any]], Verdicts]:
    """The active model, trained by hand on the events older than a week before ``end`` (the ones not
    known as fraud), with the head on their labels; also the enriched rows and the verdicts."""
    first = [i for i, e in enumerate(events) if e["timestamp"] < end - 7 * DAY]
    rows = enrich_history(SPEC, events, labels=labels)
    verdicts = Verdicts(labels)
    fraud = [bool(verdicts.verdict(events[i]["event_id"])) for i in first]
    active = train([rows[i] for i, f in zip(first, fraud, strict=True) if not f],
                   TrainConfig(epochs=3, threshold_method="quantile", target_fpr=0.01), entity=SPEC)
    x, y = rows_for_head(active.spec, active.schema, [rows[i] for i in first], fraud)
    active.head, active.calibration["supervised"] = train_head(active.head, x, y, HeadConfig(target_fpr=0.01),
                                                               lambda _m: None)
    return build_bundle(active), rows, verdicts


def test_the_retrainer_rebuilds_an_entity_label_and_supervised_model_as_one_trained_by_hand(
        settings: Settings, start_worker: object) -> None:
    s = settings.model_copy(update={
        "feedback_topic": f"fb-{uuid.uuid4().hex[:8]}", "retrain_epochs": 3, "retrain_min_events": 200,
        "retrain_target_fpr": 0.01, "gate_max_alert_rate_ratio": 10.0, "gate_min_labels": 10**6})
    end = int(time.time() * 1000) // DAY * DAY  # the last midnight: the history is the three weeks before
    sim = HandbookSimulator(seed=3, customers=300, terminals=600, run_id=f"re{uuid.uuid4().hex[:6]}",
                            scenarios=Scenarios(terminals_per_day=1, cards_per_day=1))
    world = sim.generate(300 * 2 * 21, now_ms=end, span_ms=21 * DAY)
    events = world.events()
    due = world.label_columns(LabelDelays())[3] <= end
    records = [r for r, d in zip(world.labels(), due.tolist(), strict=True) if d]
    labels = [lab for lab in map(parse_label, records) if isinstance(lab, Label)]

    # the active model: trained by hand on the first two weeks, with the head on their labels
    active_bundle, rows, verdicts = _active_model(events, labels, end)
    control = ControlPlane.from_url(s.redis_url, s.redis_prefix)
    control.publish(active_bundle, set_by="pytest")

    with EventProducer(s, s.input_topic) as producer:
        producer.send(events)
        producer.send_records(s.feedback_topic, records)
    running = start_worker(s)  # type: ignore[operator]
    wait_until(lambda: committed_offsets(s, s.group_id, s.input_topic) == end_offsets(s, s.input_topic),
               timeout_s=120, message="the worker decided every event")
    running.stop()

    outcome = Retrainer(s).run_once(timeout_s=120)
    assert outcome.status == "promoted", outcome.to_dict()
    candidate = control.fetch_bundle(str(outcome.version))
    assert candidate.entity == SPEC and candidate.supervised is not None and candidate.head_threshold is not None
    training = control.model_info(str(outcome.version))["metadata"]["training"]
    assert training["history_events"] == len(events) and training["history_labels"] == len(labels)
    assert training["left_out_not_in_history"] == 0

    # by hand, from what is in the topics: the clean events (not alerted, not labelled fraud as known
    # now) in record order, the newest 10 % held back; the history in event-time order
    kafka = sorted(read_all(s, s.input_topic), key=lambda r: (r.timestamp / 1000.0, r.partition, r.offset))
    alerted = {orjson.loads(r.value)["event_id"] for r in read_all(s, s.alerts_topic)}
    clean = [orjson.loads(r.value)["event_id"] for r in kafka]
    clean = [i for i in clean if i not in alerted and not verdicts.verdict(i)]
    n_hold = max(1, int(len(clean) * s.retrain_holdout_fraction))
    train_ids = clean[:-n_hold]
    assert training["train_ids_sha256"] == ids_digest(train_ids), "no alerted or fraud event trained on"
    by_id = {e["event_id"]: r for e, r in zip(events, rows, strict=True)}  # events are in event-time order
    hand = train([by_id[i] for i in train_ids], TrainConfig(epochs=3, threshold_method="quantile",
                                                             target_fpr=0.01), entity=SPEC, schema=active_bundle.schema)
    # its threshold: the budget's share of the training span's traffic, the alerted events no label says
    # are fraud included (each clean validation row standing for its share of the clean events)
    order = [orjson.loads(r.value)["event_id"] for r in kafka]
    span_alerted = [i for i in order[:order.index(train_ids[-1]) + 1] if i in alerted and not verdicts.verdict(i)]
    assert training["calibrated_with_alerted"] == len(span_alerted) > 0
    extra, validation = row_errors(hand, [by_id[i] for i in span_alerted]), hand.validation_errors
    assert validation is not None
    # an alerted event labelled legit counts whole, one nobody labelled as the window's labelled alerts' legit share
    winners = [verdicts.winner(i) for i in order if i in alerted and i in verdicts]  # reviewed: not by chargeback
    reviewed = [not w.fraud for w in winners if w is not None and w.source != "chargeback"]
    share = reviewed.count(True) / len(reviewed) if len(reviewed) >= 20 else 1.0
    assert training["alerted_legit_share"] == pytest.approx(share)
    counted = np.array([1.0 if verdicts.verdict(i) is False else share for i in span_alerted])
    weights = np.concatenate([np.full(validation.size, len(train_ids) / validation.size), np.clip(counted, 1e-6, 1)])
    hand.threshold = hand.calibration["threshold"] = max(hand.threshold, at_most_weighted_above(
        np.concatenate([validation, extra]), weights, 0.01))
    times = [by_id[i]["timestamp"] for i in train_ids]
    labelled = [e["event_id"] for e in events if e["event_id"] in verdicts
                and min(times) <= e["timestamp"] <= max(times)]
    head_ids = list(dict.fromkeys(train_ids + labelled))
    x, y = rows_for_head(hand.spec, hand.schema, [by_id[i] for i in head_ids],
                         [bool(verdicts.verdict(i)) for i in head_ids])
    assert training["head_rows"] == len(y) and training["head_frauds"] == int(y.sum()) >= 100
    # the head's threshold on traffic too: the span's alerted events nobody labelled, each as legit as the head says
    silent = [i for i in span_alerted if i not in set(labelled)]
    extra = rows_for_head(hand.spec, hand.schema, [by_id[i] for i in silent], [False] * len(silent))[0]
    hand.head, hand.calibration["supervised"] = train_head(hand.head, x, y, HeadConfig(target_fpr=0.01),
                                                           lambda _m: None, extra)
    assert hand.calibration["supervised"]["traffic"]["alerted_events"] == len(silent) > 0
    by_hand = build_bundle(hand)
    assert candidate.threshold == pytest.approx(by_hand.threshold, rel=1e-5), candidate.calibration.get("traffic")
    assert candidate.head_threshold == pytest.approx(by_hand.head_threshold, rel=1e-5)
    ours, theirs = score_events(candidate, events, labels=labels), score_events(by_hand, events, labels=labels)
    np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-5)
    assert ours.probability is not None and theirs.probability is not None
    np.testing.assert_allclose(ours.probability, theirs.probability, rtol=1e-5, atol=1e-7)


def test_an_entity_label_candidate_is_shadow_scored_on_live_traffic_promoted_and_alerts_go_on_exactly_once(
        settings: Settings, start_worker: object) -> None:
    """Issue 18's path end to end: an entity + label + head model is active; the retrainer builds a
    candidate from the history on the topics and, with SD_RETRAIN_SHADOW_EVENTS, makes it the
    challenger instead of promoting it; the running worker shadow-scores the next days' traffic
    (new compromised terminals and cards) with the same entity and label state; once the labels of
    those days arrive the gate promotes it on its shadow figures, and alerts go on exactly once
    across the swap. (The label rules' refusals: tests/integration/test_shadow.py, unit tests.)"""
    live_days = 4
    s = settings.model_copy(update={
        "feedback_topic": f"fb-{uuid.uuid4().hex[:8]}", "retrain_epochs": 3, "retrain_min_events": 200,
        "retrain_target_fpr": 0.01, "gate_max_alert_rate_ratio": 10.0, "gate_min_labels": 5,
        "gate_recall_tolerance": 0.5, "delivery": "exactly_once", "score_summary_interval_s": 0.2})
    # the live days end at the last midnight: event times more than a day ahead of the clock are
    # implausible (fieldschema.FUTURE_MS), so "the next days" are the last ones, not tomorrow's
    end = int(time.time() * 1000) // DAY * DAY - live_days * DAY
    sim = HandbookSimulator(seed=4, customers=300, terminals=600, run_id=f"sh{uuid.uuid4().hex[:6]}",
                            scenarios=Scenarios(terminals_per_day=1, cards_per_day=1))
    world = sim.generate(300 * 2 * (21 + live_days), now_ms=end + live_days * DAY, span_ms=(21 + live_days) * DAY)
    events = world.events()
    history = [e for e in events if e["timestamp"] < end]
    live = [e for e in events if e["timestamp"] >= end]
    _, _, _, known_at = world.label_columns(LabelDelays())
    records = world.labels()
    past = [r for r, t in zip(records, known_at.tolist(), strict=True) if t <= end]
    labels = [lab for lab in map(parse_label, past) if isinstance(lab, Label)]

    champion, _, _ = _active_model(history, labels, end)
    control = ControlPlane.from_url(s.redis_url, s.redis_prefix)
    control.publish(champion, set_by="pytest")
    with EventProducer(s, s.input_topic) as producer:
        producer.send(history)
        producer.send_records(s.feedback_topic, past)
    running = start_worker(s)  # type: ignore[operator]
    decided = lambda: committed_offsets(s, s.group_id, s.input_topic) == end_offsets(s, s.input_topic)  # noqa: E731
    wait_until(decided, timeout_s=120, message="the worker decided the history")

    outcome = Retrainer(s.model_copy(update={"retrain_shadow_events": len(live) // 2})).run_once(timeout_s=120)
    assert outcome.status == "shadow", outcome.to_dict()
    challenger = str(outcome.version)
    assert control.challenger() == challenger and control.active_model() == champion.version
    wait_until(lambda: running.worker.shadow.current is not None, 60, message="the worker loaded the challenger")

    # the next days: shadow-scored beside the champion, then their labels arrive
    half = len(live) // 2
    with EventProducer(s, s.input_topic) as producer:
        producer.send(live[:half])
    wait_until(decided, timeout_s=120, message="the worker decided the shadow days")
    figures = wait_until(lambda: (f := control.shadow_figures()) is not None and f["events"] >= half and f, 30,
                         message="the shadow figures")
    assert figures["events"] == half == figures["challenger_scored"]
    ids = {e["event_id"] for e in live[:half]}
    with EventProducer(s, s.input_topic) as producer:
        producer.send_records(s.feedback_topic, [r for r in records if r["event_id"] in ids])
    shadowed = Retrainer(s).judge_shadow()
    assert shadowed is not None and shadowed.status == "promoted", shadowed.to_dict()
    decision = control.shadow_decisions(1)[0]
    assert decision["numbers"]["challenger"]["frauds"] >= 5 and decision["figures"]["events"] == half
    assert control.active_model() == challenger and control.challenger() is None

    # alerts go on across the swap, each event decided once
    with EventProducer(s, s.input_topic) as producer:
        producer.send(live[half:])
    wait_until(decided, timeout_s=120, message="the worker decided the rest")
    wait_until(lambda: running.worker.scorer is not None and running.worker.scorer.version == challenger, 30,
               message="the worker's swap")
    running.stop()
    alerts = [orjson.loads(r.value) for r in read_all(s, s.alerts_topic)]
    alert_ids = [a["event_id"] for a in alerts]
    assert len(alert_ids) == len(set(alert_ids)), "exactly once across the swap"
    late = {e["event_id"] for e in live[half:]}
    by_model = {a["model_version"] for a in alerts if a["event_id"] in late}
    assert challenger in by_model and by_model <= {champion.version, challenger}
    shadow_ids = [orjson.loads(r.value)["event_id"] for r in read_all(s, s.shadow_topic)]
    assert len(shadow_ids) == len(set(shadow_ids)) and set(shadow_ids) <= ids, "shadow records of the period only"
