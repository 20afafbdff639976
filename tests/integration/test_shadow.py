"""A challenger in shadow on the real broker and Redis (docs/retraining.md, "Challenger in shadow"):
a worker scores live traffic with it beside the champion without alerting, its figures and shadow
records agree with offline scoring, the retrainer's gate promotes it on those figures and labels,
alerts go on exactly once across the swap, and a worse challenger is refused on its shadow figures."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from stream_detector.kafka_util import committed_offsets, end_offsets, lag, read_all
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.retrain.service import Retrainer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from stream_detector.worker import Worker
from tests.helpers import anomaly, small_bundle, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def challenger() -> Bundle:
    """Another model of the same traffic (its own seed): what a retraining produces."""
    return small_bundle(seed=7, epochs=5)


@pytest.fixture(scope="module")
def loud() -> Bundle:
    """A challenger whose threshold flags about 30 % of normal traffic."""
    history, _ = Simulator(seed=3, accounts=300, run_id="loud").batch(2000, 0.0, span_ms=86_400_000)
    return build_bundle(train(history, TrainConfig(epochs=3, seed=3, threshold_method="quantile", target_fpr=0.3,
                                                   max_self_flag_rate=0.9)))


def _wave(n: int, seed: int, tag: str, n_bad: int) -> tuple[list[dict[str, Any]], set[str]]:
    events, _ = Simulator(seed=seed, accounts=300, run_id=tag).batch(n, 0.0)
    bad = [anomaly(f"{tag}-bad-{i}", f"acct-{i:05d}") for i in range(n_bad)]
    return events[: n // 2] + bad + events[n // 2:], {str(e["event_id"]) for e in bad}


def _produce(s: Settings, events: list[dict[str, Any]]) -> None:
    with EventProducer(s, s.input_topic) as producer:
        producer.send(events)


def _drain(s: Settings) -> None:
    wait_until(lambda: lag(s, s.group_id, s.input_topic) == 0, 120, message="the worker drained the topic")


def test_a_challenger_in_shadow_is_promoted_on_its_figures_and_alerts_go_on_exactly_once(
        settings: Settings, published: ControlPlane, bundle: Bundle, challenger: Bundle, loud: Bundle) -> None:
    s = settings.model_copy(update={"delivery": "exactly_once", "score_summary_interval_s": 0.2})
    control = published
    control.start_shadow(challenger, "pytest", min_events=600, max_seconds=3600)
    worker = Worker(s)
    worker.start()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        first, bad1 = _wave(600, 11, "w1", 10)
        _produce(s, first)
        _drain(s)
        figures = wait_until(lambda: (f := control.shadow_figures()) is not None and f["events"] >= len(first) and f,
                             30, message="the workers' shadow figures")
        # the figures and the shadow records agree with offline scoring of each model
        champ = score_events(bundle, first).scores
        chall = score_events(challenger, first).scores
        assert figures["events"] == len(first) == figures["challenger_scored"]
        assert figures["champion_alerts"] == int((champ > bundle.threshold).sum())
        assert figures["challenger_alerts"] == int((chall > challenger.threshold).sum())
        assert figures["both_alerts"] == int(((champ > bundle.threshold) & (chall > challenger.threshold)).sum())
        alerts = [orjson.loads(r.value) for r in read_all(s, s.alerts_topic)]
        assert {a["model_version"] for a in alerts} == {bundle.version}, "the challenger alerts nobody"
        shadow = [orjson.loads(r.value) for r in read_all(s, s.shadow_topic)]
        by_id = {e["event_id"]: i for i, e in enumerate(first)}
        assert len(shadow) == int(((champ > bundle.threshold) | (chall > challenger.threshold)).sum())
        np.testing.assert_allclose([r["challenger"]["score"] for r in shadow],
                                   [chall[by_id[r["event_id"]]] for r in shadow], rtol=1e-4, atol=1e-6)
        assert bad1 <= {r["event_id"] for r in shadow if r["challenger"]["alert"]}

        # labels arrive: the injected anomalies are fraud; the gate promotes the challenger
        ensure_topics(s, [s.feedback_topic])
        producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
        for event_id in bad1:
            producer.send(s.feedback_topic, orjson.dumps({"event_id": event_id, "label": "fraud",
                                                          "source": "chargeback"}))
        producer.flush()
        producer.close()
        outcome = Retrainer(s, control).judge_shadow()
        assert outcome is not None and outcome.status == "promoted", outcome
        assert control.active_model() == challenger.version and control.challenger() is None
        decision = control.shadow_decisions(1)[0]
        assert decision["outcome"] == "promoted" and decision["numbers"]["challenger"]["frauds"] == len(bad1)
        assert decision["figures"]["events"] == len(first)

        # alerts go on across the swap: each event alerted at most once, by the model that scored it
        second, bad2 = _wave(600, 12, "w2", 10)
        _produce(s, second)
        _drain(s)
        wait_until(lambda: worker.scorer is not None and worker.scorer.version == challenger.version, 30,
                   message="the worker's swap to the promoted model")

        # a worse challenger (alerting on ~30 % of traffic) is refused on its shadow figures
        control.start_shadow(loud, "pytest", min_events=600, max_seconds=3600)
        wait_until(lambda: worker.shadow.current is not None, 30, message="the worker loaded the new challenger")
        third, bad3 = _wave(600, 13, "w3", 5)
        _produce(s, third)
        _drain(s)
        wait_until(lambda: (f := control.shadow_figures()) is not None and f["events"] >= len(third), 30,
                   message="the loud challenger's figures")
        refused = Retrainer(s, control).judge_shadow()
        assert refused is not None and refused.status == "rejected"
        assert "on live traffic above bound" in refused.message
        assert control.active_model() == challenger.version and control.challenger() is None
    finally:
        worker.stop()
        thread.join(timeout=60)
    alerts = [orjson.loads(r.value) for r in read_all(s, s.alerts_topic)]  # read_committed
    ids = [a["event_id"] for a in alerts]
    assert len(ids) == len(set(ids)), "exactly once: no alert twice, across the swap"
    assert bad1 | bad2 | bad3 <= set(ids), "no alert lost"
    models = {bundle.version: bundle, challenger.version: challenger}
    assert {a["model_version"] for a in alerts} == set(models)
    events = {e["event_id"]: e for e in first + second + third}
    for version, model in models.items():
        mine = [a for a in alerts if a["model_version"] == version]
        np.testing.assert_allclose([a["score"] for a in mine], score_events(model, [events[a["event_id"]] for a in mine]
                                                                            ).scores, rtol=1e-4, atol=1e-6)
    assert committed_offsets(s, s.group_id, s.input_topic) == end_offsets(s, s.input_topic)


def test_shadow_periods_are_guarded_against_what_would_stall_or_mix_them(
        settings: Settings, published: ControlPlane, bundle: Bundle, challenger: Bundle, loud: Bundle,
        env_for: Any) -> None:
    """From a new-user trial: a missing shadow topic refuses the challenger instead of holding live
    batches; a second start, the champion, another entity spec, no active model are refused; prune
    keeps the challenger; activating another model ends the period (its figures would mix two
    champions), activating the challenger ends it as promoted; a judgement with no feedback topic
    answers at once."""
    import dataclasses
    import subprocess
    import sys
    import time

    from stream_detector.entity_spec import EntitySpec
    from stream_detector.errors import ConfigError

    control = published
    empty = ControlPlane.from_url(settings.redis_url, settings.redis_prefix + "-empty")
    with pytest.raises(ConfigError, match="no active model"):
        empty.start_shadow(challenger, "pytest", 100, 60)
    with pytest.raises(ConfigError, match="its own challenger"):
        control.start_shadow(bundle, "pytest", 100, 60)
    other_spec = dataclasses.replace(challenger, entity=EntitySpec())
    with pytest.raises(ConfigError, match="entity spec differs"):
        control.start_shadow(other_spec, "pytest", 100, 60)
    with pytest.raises(ConfigError, match="min events >= 1"):
        control.start_shadow(challenger, "pytest", 0, 60)

    # SD_CREATE_TOPICS=false and no shadow topic: the CLI refuses; a worker refuses the challenger and alerts on
    s = settings.model_copy(update={"create_topics": False})
    control.store(challenger)
    done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "model", "shadow", challenger.version],
                          env=env_for(s), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "does not exist and SD_CREATE_TOPICS=false" in done.stderr.strip().splitlines()[-1]
    control.start_shadow(challenger, "pytest", 100, 60)  # named directly, as an operator without the check would
    worker = Worker(s)
    worker.start()
    try:
        assert worker.shadow.current is None and worker.shadow.refused == 1
        events, bad = _wave(300, 21, "g1", 3)
        _produce(s, events)
        for _ in range(200):
            if worker.run_once() == 0 and lag(s, s.group_id, s.input_topic) == 0:
                break
        assert worker.hold.active is False and worker.stats.events == len(events)
    finally:
        worker.close()
    assert bad <= {orjson.loads(r.value)["event_id"] for r in read_all(s, s.alerts_topic)}

    # a second start is refused; --replace ends the first as replaced
    with pytest.raises(ConfigError, match="already in shadow"):
        control.start_shadow(challenger, "pytest", 100, 60)
    assert control.start_shadow(loud, "pytest", 100, 60, replace=True) == challenger.version
    assert control.shadow_decisions(1)[0]["outcome"] == "replaced" and control.challenger() == loud.version
    assert loud.version not in control.prune(1), "prune keeps the challenger in shadow"
    started = time.monotonic()
    outcome = Retrainer(settings.model_copy(update={"feedback_topic": "no-such-topic"}), control).judge_shadow(30)
    assert outcome is not None and outcome.status == "shadow" and time.monotonic() - started < 20
    control.publish(challenger, set_by="pytest")  # another model made active: the period ends
    assert control.challenger() is None and control.shadow_decisions(1)[0]["outcome"] == "stopped"
    control.start_shadow(bundle, "pytest", 100, 60)  # the previous model, in shadow
    control.rollback("pytest")  # into the challenger: promoted
    assert control.active_model() == bundle.version and control.challenger() is None
    assert control.shadow_decisions(1)[0]["outcome"] == "promoted"
    assert control.model_info(bundle.version)["gate"]["shadow"]["outcome"] == "promoted"
    status = subprocess.run([sys.executable, "-m", "stream_detector.cli", "model", "shadow-status"],
                            env=env_for(settings), capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    report = orjson.loads(status.stdout)
    assert report["challenger"] is None and report["figures"] is None
    assert [d["outcome"] for d in report["decisions"][:3]] == ["promoted", "stopped", "replaced"]
    assert all("bins" not in d["figures"] for d in report["decisions"])


def test_a_refused_version_promoted_by_hand_from_shadow_keeps_its_refusal(
        settings: Settings, published: ControlPlane, challenger: Bundle, env_for: Any) -> None:
    """A trial: a version the gate refused, put in shadow again and promoted by hand after 0
    events, printed no note and showed gate=passed in model list. Now the note is said, as for a
    version not in shadow, and the gate's verdict stays refused; the hand's reason is added."""
    import subprocess
    import sys

    control = published
    control.store(challenger, gate={"passed": False, "reasons": ["precision@k below the champion's"]})
    control.start_shadow(challenger, "pytest", 100, 60)
    env = env_for(settings)
    done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "model", "promote", challenger.version],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (f"note: the gate refused {challenger.version} (precision@k below the champion's); promoted by hand"
            in done.stderr)
    assert f"the shadow period of {challenger.version} ended as promoted" in done.stdout
    assert control.active_model() == challenger.version and control.challenger() is None
    gate = control.model_info(challenger.version)["gate"]
    assert gate["passed"] is False and gate["reasons"][-1] == "shadow: promoted by hand"
    assert gate["shadow"]["outcome"] == "promoted" and gate["shadow"]["by_hand"] is True
    listed = subprocess.run([sys.executable, "-m", "stream_detector.cli", "model", "list"],
                            env=env, capture_output=True, text=True, timeout=120)
    line = next(x for x in listed.stdout.splitlines() if x.startswith(challenger.version))
    assert "gate=refused" in line, listed.stdout
