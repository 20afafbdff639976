"""Label-derived features in the worker (issue 17): the label ingester reads the feedback topic, the
worker computes what offline scoring computes from the same events and labels."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.entity.labels import RedisLabels
from stream_detector.feedback import Label, parse_label
from stream_detector.kafka_util import lag, read_all
from stream_detector.label_ingest import LabelIngester
from stream_detector.model.bundle import build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import HandbookSimulator
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000
DAY = 86_400_000
SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400), distinct_fields=(),
                  label_keys=("terminal_id",))


def test_a_worker_fed_the_feedback_topic_scores_as_offline_scoring_with_the_same_labels(
        settings: Settings, start_worker: Any) -> None:
    """Labels on the feedback topic before the events (a replay): the ingester attaches them as
    their events are scored, and every event's label features — hence its score — equal offline
    scoring's with the same records, bit for bit. A record that breaks the contract is dead-lettered."""
    sim = HandbookSimulator(seed=5, customers=400, terminals=150, run_id="lbl")
    history = sim.generate(4000, now_ms=T0, span_ms=14 * DAY)
    events, patterns = history.events(), history.patterns()
    records = history.labels()
    labels = [parse_label(r) for r in records]
    assert all(isinstance(lab, Label) for lab in labels) and any(p == "compromised_terminal" for p in patterns)
    known: list[Label] = labels  # type: ignore[assignment]
    normal = [e for e, p in zip(enrich_history(SPEC, events, labels=known), patterns, strict=True) if p == "legit"]
    bundle = build_bundle(train(normal, TrainConfig(epochs=4, seed=0, threshold_method="quantile", target_fpr=0.02),
                                entity=SPEC))
    settings = settings.model_copy(update={"batch_size": 256})
    control = ControlPlane.from_url(settings.redis_url, settings.redis_prefix)
    control.publish(bundle, set_by="pytest")
    ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic, settings.feedback_topic])
    with EventProducer(settings, settings.feedback_topic) as producer:
        producer.send([*records, {"event_id": "lbl-1", "label": "FRAUD", "labelled_at": T0}])
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    worker = start_worker(settings).worker
    assert worker.ingester is not None and worker.ingester.caught_up  # before the first batch was polled
    wait_until(lambda: lag(settings, settings.group_id, settings.input_topic) == 0, timeout_s=120, message="drained")

    offline = score_events(bundle, events, labels=known).scores
    expected = {e["event_id"]: s for e, s in zip(events, offline.tolist(), strict=True) if s > bundle.threshold}
    alerts = {a["event_id"]: a["score"] for a in map(lambda r: orjson.loads(r.value),
                                                     read_all(settings, settings.alerts_topic))}
    # same events, same scores: the worker's label features are offline's. Scores to float32 GEMM
    # precision: the model runs on batches of other shapes in the worker (the tail of a replay can be
    # a batch of one row), and the kernel's summation order follows the shape (~1e-7 relative).
    assert set(alerts) == set(expected)
    assert alerts == {k: pytest.approx(v, rel=1e-5) for k, v in expected.items()}
    blind = score_events(bundle, events).scores  # the same model without any label known
    assert {e["event_id"] for e, s in zip(events, blind.tolist(), strict=True) if s > bundle.threshold} != set(expected)
    ingester = worker.ingester
    assert ingester is not None and ingester.stats.labels == len(records) and ingester.stats.dead_letters == 1
    # every label waited for its event (the feedback topic was read first); those attached when a
    # worker scored their event are counted (a new-user trial saw only "waiting" grow)
    later = worker.metrics.registry.get_sample_value("stream_detector_feedback_labels_total",
                                                     {"outcome": "attached_later"})
    assert later is not None and 0 < later <= ingester.stats.waiting
    dead = [dict(r.headers) for r in read_all(settings, settings.dlq_topic)]
    assert [d["sd.error.reason"] for d in dead] == [b"invalid_label"]


def test_the_redis_label_store_holds_what_the_in_memory_one_holds_whatever_the_order(settings: Settings) -> None:
    """Labels ingested before their event is indexed wait for it; after, they attach at once;
    ingested twice, nothing changes. The books read back equal ``InMemoryLabels``'s."""
    import numpy as np
    import redis

    from stream_detector.entity.labels import InMemoryLabels, RedisLabels

    events = [{"event_id": f"e{i}", "terminal_id": f"t{i % 3}", "account_id": "a", "timestamp": float(T0 + i)}
              for i in range(9)]
    labels = [Label(f"e{i}", i % 2 == 0, "analyst", float(T0 + 100 + i)) for i in range(9)]
    labels.append(Label("e4", False, "chargeback", float(T0 + 500)))
    times = np.array([e["timestamp"] for e in events])
    store = RedisLabels(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    assert store.ingest(labels[:5]) == (0, 5)  # events not indexed yet: they wait
    store.index(SPEC, events[:6], times[:6])  # e0..e4 attached from waiting, e5 indexed
    assert store.attached_later == 5  # the worker's feedback_labels{outcome="attached_later"}
    assert store.ingest(labels[5:]) == (2, 3)  # e5 and e4's chargeback at once, e6..e8 wait
    store.index(SPEC, events[6:], times[6:])
    assert store.attached_later == 8
    assert store.ingest(labels) == (10, 0)  # redelivered: attached again, idempotent
    memory = InMemoryLabels(labels)
    memory.index(SPEC, events, times)
    values = ["t0", "t1", "t2"]
    assert store.books("terminal_id", values) == memory.books("terminal_id", values)
    assert store.client.hlen(f"{settings.redis_prefix}:labels:waiting") == 0  # every waiting label attached, cleared


def test_a_supervised_head_decides_in_the_worker_as_offline_and_its_threshold_is_versioned(
        settings: Settings, start_worker: Any, env_for: Any) -> None:
    """A bundle with label features and a supervised head: the worker alerts exactly the events
    offline scoring flags by the rule (error above the threshold or probability above the head's),
    each alert saying which part fired. The head's threshold lives in Redis beside the
    autoencoder's: kept when the latter changes, changed by its own set, restored on promote."""
    from stream_detector.model.supervised import HeadConfig, rows_for_head, train_head

    sim = HandbookSimulator(seed=6, customers=300, terminals=1000, run_id="sup")
    history = sim.generate(5000, now_ms=T0, span_ms=14 * DAY)
    events, patterns = history.events(), history.patterns()
    records = history.labels()
    known: list[Label] = [parse_label(r) for r in records]  # type: ignore[misc]
    fraud = [p != "legit" for p in patterns]
    rows = enrich_history(SPEC, events, labels=known)
    result = train([r for r, f in zip(rows, fraud, strict=True) if not f],
                   TrainConfig(epochs=3, seed=0, threshold_method="quantile", target_fpr=0.02), entity=SPEC)
    x, y = rows_for_head(result.spec, result.schema, rows, fraud)
    result.head, result.calibration["supervised"] = train_head(result.head, x, y, HeadConfig(target_fpr=0.02),
                                                               lambda _m: None)
    bundle = build_bundle(result)
    assert bundle.head_threshold is not None
    control = ControlPlane.from_url(settings.redis_url, settings.redis_prefix)
    control.publish(bundle, set_by="pytest")
    assert control.threshold().head == bundle.head_threshold  # type: ignore[union-attr]
    ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic, settings.feedback_topic])
    with EventProducer(settings, settings.feedback_topic) as producer:
        producer.send(records)
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    start_worker(settings.model_copy(update={"batch_size": 256}))
    wait_until(lambda: lag(settings, settings.group_id, settings.input_topic) == 0, timeout_s=120, message="drained")

    offline = score_events(bundle, events, labels=known)
    assert offline.probability is not None
    flagged = offline.flagged(bundle.threshold, bundle.head_threshold)
    by_id = {e["event_id"]: i for i, e in enumerate(events)}
    alerts = {a["event_id"]: a for a in (orjson.loads(r.value) for r in read_all(settings, settings.alerts_topic))}
    assert set(alerts) == {e["event_id"] for e, f in zip(events, flagged.tolist(), strict=True) if f}
    fired = {part for a in alerts.values() for part in a["fired"]}
    assert fired == {"autoencoder", "supervised"}  # both parts fire on this data
    for event_id, alert in alerts.items():
        i = by_id[event_id]
        assert alert["probability"] == pytest.approx(offline.probability[i], rel=1e-5, abs=1e-9)  # batch shapes
        assert alert["head_threshold"] == bundle.head_threshold
        assert ("supervised" in alert["fired"]) == (offline.probability[i] > bundle.head_threshold)
        assert ("autoencoder" in alert["fired"]) == (offline.scores[i] > bundle.threshold)

    version = control.threshold().version  # type: ignore[union-attr]
    control.set_threshold(bundle.threshold * 2, bundle.version, "pytest")
    assert control.threshold().head == bundle.head_threshold  # type: ignore[union-attr]  # kept
    control.set_threshold(bundle.threshold * 2, bundle.version, "pytest", head=0.9)
    now = control.threshold()
    assert now is not None and now.head == 0.9 and now.version == version + 2
    assert control.threshold_history(1)[0]["head"] == 0.9
    control.activate(bundle.version, "pytest")  # promoted again: its last thresholds, both
    assert control.threshold().head == 0.9 and control.threshold().value == bundle.threshold * 2  # type: ignore[union-attr]
    info = control.model_info(bundle.version)  # `model list` shows the head's too (it showed only the other)
    assert info["head_threshold"] == 0.9 and info["calibrated_head_threshold"] == bundle.head_threshold
    listed = subprocess.run([sys.executable, "-m", "stream_detector", "model", "list"], env=env_for(settings),
                            capture_output=True, text=True, timeout=120, check=True).stdout
    assert f"threshold={bundle.threshold * 2:.6g}  head=0.9  store=" in listed, listed


def refuse_one_commit(monkeypatch: pytest.MonkeyPatch, when: Callable[[], bool]) -> list[int]:
    """Every label consumer's ``commit`` refuses once, the first time it is called while ``when()``
    is true, as the broker refuses a commit during a rebalance (the consumer and everything else
    are real); returns the count of refusals (a one-element list)."""
    from kafka.errors import RebalanceInProgressError

    connect = LabelIngester._connect
    refused = [0]

    def connect_refusing(self: LabelIngester) -> Any:
        consumer = connect(self)
        commit = consumer.commit

        def refuse_once(*args: Any, **kwargs: Any) -> Any:
            if when() and not refused[0]:
                refused[0] += 1
                raise RebalanceInProgressError("Offset commit cannot be completed since the consumer is "
                                               "undergoing a rebalance")
            return commit(*args, **kwargs)

        consumer.commit = refuse_once
        return consumer

    monkeypatch.setattr(LabelIngester, "_connect", connect_refusing)
    return refused


def test_a_commit_refused_by_a_rebalance_during_the_catch_up_is_retried_not_fatal(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a new-user trial: a worker with a label model stopped at start with exit 1,
    ``RebalanceInProgressError`` from the label ingester's catch-up commit (2 of 7 starts of a new
    deployment). The real consumer's first commit is refused here as the broker refuses it during a
    rebalance: the catch-up logs it, rewinds to the committed offsets, reads the labels again and
    catches up; every label is counted once."""
    ensure_topics(settings, [settings.feedback_topic, settings.dlq_topic])
    with EventProducer(settings, settings.feedback_topic) as producer:
        producer.send([{"event_id": f"r{i}", "label": "fraud", "labelled_at": T0} for i in range(30)])
    store = RedisLabels(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    ingester = LabelIngester(settings, store)
    refused = refuse_one_commit(monkeypatch, lambda: True)
    try:
        ingester.start(catch_up_s=90.0)
        assert ingester.caught_up and refused[0] == 1 and ingester.stats.failures == 1
        assert ingester.stats.labels == 30 and ingester.stats.waiting == 30  # read twice, counted once
    finally:
        ingester.stop()


def test_a_label_ingester_making_no_progress_joins_again_with_a_new_consumer(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feedback topic does not exist yet when the ingester starts (the broker does not create
    topics): its consumer gets no partitions. After ``stall_s`` without progress it is closed and a
    new one joins (logged); once the topic exists the ingester catches up and reads its labels.

    A CI run (2026-12-05) lost the catch-up thread here: kafka-python's ``partitions_for_topic``,
    asked while the subscribed (missing) topic's metadata refresh was in flight, raised that
    refresh's ``UnknownTopicOrPartitionError``. The first consumer here raises it on every such
    call after subscribing, as the race did once."""
    from kafka.errors import UnknownTopicOrPartitionError

    store = RedisLabels(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    ingester = LabelIngester(settings, store)
    rejoined = threading.Event()
    connect, consumers = ingester._connect, []

    def connecting() -> Any:
        consumer = connect()
        if not consumers:
            def refreshing(topic: str) -> Any:
                raise UnknownTopicOrPartitionError(topic)
            monkeypatch.setattr(consumer, "partitions_for_topic", refreshing)
        consumers.append(consumer)
        return consumer

    monkeypatch.setattr(ingester, "_connect", connecting)

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "joining again with a new consumer" in record.getMessage():
                rejoined.set()

    seen = Seen()
    logging.getLogger("stream_detector.labels").addHandler(seen)
    starting = threading.Thread(target=ingester.start, kwargs={"catch_up_s": 90.0, "stall_s": 1.0}, daemon=True)
    try:
        starting.start()
        assert rejoined.wait(timeout=60), "the stalled consumer was not replaced"
        ensure_topics(settings, [settings.feedback_topic, settings.dlq_topic])
        with EventProducer(settings, settings.feedback_topic) as producer:
            producer.send([{"event_id": f"e{i}", "label": "fraud", "labelled_at": T0} for i in range(20)])
        starting.join(timeout=90)
        assert not starting.is_alive() and ingester.caught_up
        wait_until(lambda: ingester.stats.labels == 20, message="the labels ingested")
        assert ingester.stats.waiting == 20  # their events were never scored: they wait for them
    finally:
        logging.getLogger("stream_detector.labels").removeHandler(seen)
        ingester.stop()


def test_a_label_consumer_refusing_every_commit_is_replaced_and_the_labels_ingested(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI run (2026-12-03) showed a kafka-python consumer that read its records but refused every
    commit for 60 s with its client-side ``RebalanceInProgressError``, a rebalance it never finished;
    the ingester's thread retried from the committed offsets forever and no label counted. Here the
    first consumer's commits raise that error once the catch-up is done: after ``stall_s`` of
    failing polls a new consumer joins (logged) and every label is ingested once."""
    from kafka.errors import RebalanceInProgressError

    ensure_topics(settings, [settings.feedback_topic, settings.dlq_topic])
    store = RedisLabels(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    ingester = LabelIngester(settings, store)
    consumers: list[Any] = []
    connect = ingester._connect

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise RebalanceInProgressError("Offset commit cannot be completed since the consumer is undergoing a "
                                       "rebalance for auto partition assignment.")

    def connecting() -> Any:
        consumer = connect()
        if not consumers:
            monkeypatch.setattr(consumer, "commit", refuse)
        consumers.append(consumer)
        return consumer

    monkeypatch.setattr(ingester, "_connect", connecting)
    try:
        ingester.start(catch_up_s=60.0, stall_s=2.0)
        assert ingester.caught_up  # an empty topic: the labels below are the background thread's
        with EventProducer(settings, settings.feedback_topic) as producer:
            producer.send([{"event_id": f"e{i}", "label": "fraud", "labelled_at": T0} for i in range(20)])
        wait_until(lambda: ingester.stats.labels == 20, message="the labels ingested by a new consumer")
        assert ingester.rejoins >= 1 and len(consumers) >= 2
        assert ingester.stats.failures >= 1
        assert ingester.stats.waiting == 20
    finally:
        ingester.stop()


REBALANCE_REFUSALS = {"kafka.errors.RebalanceInProgressError", "kafka.errors.CommitFailedError"}  # a rebalance's


@pytest.mark.parametrize("refused_commit", [False, True], ids=["plain", "commit-refused-after-a-dead-letter"])
def test_a_feedback_record_the_client_cannot_read_is_dead_lettered_and_the_labels_after_it_ingested(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, refused_commit: bool) -> None:
    """kafka-python raises from ``poll`` at the same offset on every call when it cannot read a
    batch (here its zstd library made unavailable). The label ingester stalled there, retrying
    forever, and no later label was ever attached. Now each of that batch's offsets is an
    ``unreadable_record`` dead letter (as in the worker) and the labels around it are ingested.

    ``commit-refused-after-a-dead-letter``: the first commit after a dead letter was acknowledged is
    refused as a rebalance refuses it. A CI run (2026-12-04) saw a real one here (the poll retried
    from the committed offsets, the test then failed on ``failures == 0``); the records read again
    must not be dead-lettered twice. In ``plain`` a real rebalance may still refuse a commit (its
    retry is the tests above): every failure must be such a refusal, never the unreadable batch."""
    import kafka.codec
    from kafka import KafkaProducer

    import stream_detector.label_ingest as label_ingest
    from stream_detector.schema import DeadLetterHeaders

    ensure_topics(settings, [settings.feedback_topic, settings.dlq_topic], partitions=1)
    labels = [orjson.dumps({"event_id": f"e{i}", "label": "fraud", "labelled_at": T0}) for i in range(30)]
    plain = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    packed = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, compression_type="zstd", linger_ms=200)
    try:
        for group, producer in ((labels[:10], plain), (labels[10:14], packed), (labels[14:], plain)):
            for value in group:
                producer.send(settings.feedback_topic, value=value)
            producer.flush(timeout=30)
    finally:
        plain.close(timeout=10)
        packed.close(timeout=10)
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    store = RedisLabels(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    ingester = LabelIngester(settings, store)
    dead_lettered = threading.Event()  # a dead letter was sent: the next commit is refused once
    refusals = [0]
    if refused_commit:
        class Sending(KafkaProducer):  # type: ignore[misc]
            def send(self, *args: Any, **kwargs: Any) -> Any:
                dead_lettered.set()
                return super().send(*args, **kwargs)

        monkeypatch.setattr(label_ingest, "KafkaProducer", Sending)
        refusals = refuse_one_commit(monkeypatch, dead_lettered.is_set)
    try:
        ingester.start(catch_up_s=90.0)
        wait_until(lambda: ingester.stats.labels == 26 and ingester.stats.dead_letters == 4,
                   message="the readable labels ingested and the unreadable ones dead-lettered")
        kinds = ingester.stats.failure_kinds
        assert set(kinds) <= REBALANCE_REFUSALS, f"failures other than a rebalance's refusal: {kinds}"
        assert sum(kinds.values()) == ingester.stats.failures
        if refused_commit:
            assert refusals[0] == 1 and kinds.get("kafka.errors.RebalanceInProgressError", 0) >= 1
    finally:
        ingester.stop()
    dead = read_all(settings, settings.dlq_topic)
    assert sorted(int(dict(r.headers)[DeadLetterHeaders.OFFSET]) for r in dead) == list(range(10, 14))
    assert {dict(r.headers)[DeadLetterHeaders.REASON] for r in dead} == {b"unreadable_record"}
    assert b"zstd" in dict(dead[0].headers)[DeadLetterHeaders.MESSAGE]
    assert lag(settings, ingester.group, settings.feedback_topic) == 0


BOTH = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400), distinct_fields=(),
                  label_keys=("account_id", "terminal_id"))


def test_two_stages_carry_label_features_and_alert_as_offline_scoring(settings: Settings, start_worker: Any) -> None:
    """A model with label features of both keys in two stages (``SD_STAGE``): stage 1 computes the
    account's history and label features and carries them, stage 2 the terminal's; each stage's
    label ingester reads the feedback topic, and every event is indexed under both label keys by
    whichever stage comes first. The alerts are offline scoring's with the same labels, and not
    those of the same model with no label known."""
    from tests.integration.test_repartition import _settled

    sim = HandbookSimulator(seed=7, customers=300, terminals=120, run_id="lb2")
    history = sim.generate(3000, now_ms=T0, span_ms=14 * DAY)
    events, patterns = history.events(), history.patterns()
    records = history.labels()
    known: list[Label] = [parse_label(r) for r in records]  # type: ignore[misc]
    normal = [e for e, p in zip(enrich_history(BOTH, events, labels=known), patterns, strict=True) if p == "legit"]
    bundle = build_bundle(train(normal, TrainConfig(epochs=4, seed=0, threshold_method="quantile", target_fpr=0.02),
                                entity=BOTH))
    base = settings.model_copy(update={"batch_size": 256, "repartition_key": "terminal_id",
                                       "repartition_buckets": 1, "repartition_purge_ms": 0})
    ControlPlane.from_url(base.redis_url, base.redis_prefix).publish(bundle, set_by="pytest")
    ensure_topics(base, [base.input_topic, base.alerts_topic, base.dlq_topic, base.feedback_topic])
    with EventProducer(base, base.feedback_topic) as producer:
        producer.send(records)
    with EventProducer(base, base.input_topic) as producer:
        producer.send(events)
    second = start_worker(base.model_copy(update={"stage": "repartitioned", "worker_id": "stage2"})).worker
    first = start_worker(base.model_copy(update={"stage": "repartition", "delivery": "exactly_once",
                                                 "worker_id": "stage1"})).worker
    assert first.ingester is not None and second.ingester is not None  # both stages compute label features
    wait_until(lambda: lag(base, f"{base.group_id}.repartition", base.input_topic) == 0, timeout_s=120,
               message="stage 1 drained")
    wait_until(lambda: _settled(base, base.group_id, base.repartition_topic_name), timeout_s=120,
               message="stage 2 drained")

    offline = score_events(bundle, events, labels=known).scores
    expected = {e["event_id"]: s for e, s in zip(events, offline.tolist(), strict=True) if s > bundle.threshold}
    alerts = {a["event_id"]: a["score"] for a in map(lambda r: orjson.loads(r.value),
                                                     read_all(base, base.alerts_topic))}
    assert expected and set(alerts) == set(expected)
    assert alerts == {k: pytest.approx(v, rel=1e-5) for k, v in expected.items()}
    blind = score_events(bundle, events).scores  # the same model without any label known
    assert {e["event_id"] for e, s in zip(events, blind.tolist(), strict=True) if s > bundle.threshold} != set(expected)


def test_a_label_model_refuses_to_start_without_its_feedback_topic_when_it_may_not_create_it(
        settings: Settings) -> None:
    """A second new-user trial: ``SD_CREATE_TOPICS=false`` and no feedback topic gave a minute of
    the ingester's retries, then an ``UnknownTopicOrPartitionError`` and rc 1. The worker refuses
    at start, naming the topic and what to do."""
    from stream_detector.errors import ConfigError
    from stream_detector.worker import Worker

    sim = HandbookSimulator(seed=8, customers=100, terminals=50, run_id="lb3")
    history = sim.generate(600, now_ms=T0, span_ms=7 * DAY)
    known: list[Label] = [parse_label(r) for r in history.labels()]  # type: ignore[misc]
    bundle = build_bundle(train(enrich_history(SPEC, history.events(), labels=known),
                                TrainConfig(epochs=1, seed=0), entity=SPEC))
    s = settings.model_copy(update={"create_topics": False, "feedback_topic": f"{settings.feedback_topic}-nosuch"})
    ensure_topics(s, [s.input_topic, s.alerts_topic, s.dlq_topic])  # every topic but the feedback one
    ControlPlane.from_url(s.redis_url, s.redis_prefix).publish(bundle, set_by="pytest")
    worker = Worker(s)
    try:
        with pytest.raises(ConfigError, match=f"{s.feedback_topic} .the feedback topic, where this model's label "
                                              "features come from. does not exist and SD_CREATE_TOPICS=false"):
            worker.start()
    finally:
        worker.close()
