"""The worker's logic without a broker or Redis: the in-memory transport (``transport/memory.py``)
and the in-memory control plane (``store/memory.py``). Swap race, hold and resume, abandon after
an eviction, delivery failures: each a fast, deterministic test of ``Worker.run_once``.
The same behaviours run against real Kafka + Redis in ``tests/integration``."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store.memory import MemoryControl
from stream_detector.transport.base import TopicPartition
from stream_detector.transport.memory import MemoryBroker, MemoryPublisher, MemorySource
from stream_detector.worker import Worker
from tests.helpers import anomaly, small_bundle, wait_until

TOPIC, ALERTS, DLQ, GROUP = "tx", "alerts", "dlq", "g"


@pytest.fixture(scope="module")
def other() -> Bundle:
    """A second, differently trained model: its scores are on another scale than ``bundle``'s."""
    return small_bundle(seed=7, epochs=5)


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"input_topic": TOPIC, "alerts_topic": ALERTS, "dlq_topic": DLQ, "group_id": GROUP,
                              "create_topics": False, "metrics_port": 0, "score_feed_sample": 0,
                              "threshold_refresh_s": 0.05, "worker_id": "w", **overrides}
    return Settings(**values)


def _events(n: int, tag: str, bad: int = 2) -> tuple[list[bytes], set[str]]:
    events, _ = Simulator(seed=len(tag), accounts=200, run_id=tag).batch(n, 0.0)
    frauds = [anomaly(f"{tag}-bad-{i}", f"acct-{i:05d}") for i in range(bad)]
    mixed = events[: n // 2] + frauds + events[n // 2:]
    return [orjson.dumps(e) for e in mixed], {str(e["event_id"]) for e in frauds}


def _worker(broker: MemoryBroker, control: MemoryControl, **overrides: Any) -> Worker:
    settings = _settings(**overrides)
    worker = Worker(settings, control, MemorySource(broker, TOPIC, GROUP, settings.batch_size),
                    MemoryPublisher(broker))
    worker.start()
    return worker


def _alerts(broker: MemoryBroker) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in broker.read(ALERTS) if r.value is not None]


def _drain(worker: Worker, limit: int = 50) -> None:
    for _ in range(limit):
        if not worker.run_once() and not worker.hold.active:
            return
    raise AssertionError("the worker did not drain the topic")


@pytest.fixture
def broker() -> MemoryBroker:
    b = MemoryBroker()
    for topic in (TOPIC, ALERTS, DLQ):
        b.create_topic(topic)
    return b


def test_a_batch_met_by_a_new_models_threshold_is_scored_again_by_that_model(broker, bundle, other):
    """The swap race: B's threshold is live while B still loads; the batch in hand was scored by A.
    It must not be decided against B's threshold or labelled B with A's scores: the worker waits
    for B and scores the batch again. Every alert agrees with offline scoring by the model it names."""
    control = MemoryControl()
    control.publish(bundle)
    worker = _worker(broker, control)
    try:
        first, first_bad = _events(300, "a")
        broker.produce(TOPIC, first)
        _drain(worker)
        gate, waiting = threading.Event(), threading.Event()
        load, finish = worker.models._load, worker.models.finish

        def gated_load(version: str) -> Any:
            if version == other.version:
                assert gate.wait(30)
            return load(version)

        def watched_finish(wait: bool) -> bool:
            if wait:
                waiting.set()
            return finish(wait)

        worker.models._load, worker.models.finish = gated_load, watched_finish  # type: ignore[method-assign]
        threading.Thread(target=lambda: waiting.wait(30) and gate.set(), daemon=True).start()
        control.publish(other)  # B's threshold is live, B is loading (held at the gate)
        worker.thresholds.refresh(force=True)  # the worker has seen it (else wave 2 is A's, rightly)
        second, second_bad = _events(300, "b")
        broker.produce(TOPIC, second)
        _drain(worker)
    finally:
        worker.close()
    assert worker.stats.rescored_batches == 1 and worker.stats.swaps == 1
    alerts = _alerts(broker)
    by_id = {a["event_id"]: a for a in alerts}
    assert first_bad | second_bad <= set(by_id)
    assert {by_id[i]["model_version"] for i in second_bad} == {other.version}
    models = {bundle.version: bundle, other.version: other}
    for version, model in models.items():
        mine = [a for a in alerts if a["model_version"] == version]
        assert mine, f"no alerts of {version}"
        offline = score_events(model, [a["event"] for a in mine]).scores
        np.testing.assert_allclose([a["score"] for a in mine], offline, rtol=1e-4, atol=1e-6)
        assert all(a["threshold"] == pytest.approx(model.threshold) and a["score"] > a["threshold"] for a in mine)
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_a_stale_threshold_holds_the_batch_paused_then_resumes_without_loss(broker, bundle):
    control = MemoryControl()
    control.publish(bundle)
    worker = _worker(broker, control, threshold_max_staleness_s=5.0)
    now = [0.0]
    worker.thresholds.clock = lambda: now[0]
    worker.thresholds.refresh(force=True)
    try:
        values, bad = _events(200, "h")
        broker.produce(TOPIC, values)
        control.unreachable = True
        now[0] = 10.0  # past the staleness bound: deciding is not allowed
        assert worker.run_once() == 0
        assert worker.hold.active and worker.source.paused() == {TopicPartition(TOPIC, 0)}
        assert worker.stats.held_batches == 1 and broker.committed(GROUP) == {} and not _alerts(broker)
        assert worker.run_once() == 0 and worker.stats.held_batches == 2  # still down: still held
        control.unreachable = False
        now[0] = 11.0
        assert worker.run_once() == len(values)  # the held batch, once Redis answers
        assert not worker.hold.active and worker.source.paused() == set()
    finally:
        worker.close()
    assert {a["event_id"] for a in _alerts(broker)} >= bad
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_a_delivery_failure_holds_the_batch_and_the_retry_delivers_it(broker, bundle):
    control = MemoryControl()
    control.publish(bundle)
    worker = _worker(broker, control)
    try:
        values, bad = _events(200, "d")
        broker.produce(TOPIC, values)
        broker.fail_sends = 1
        assert worker.run_once() == 0 and worker.hold.active and worker.stats.delivery_failures == 1
        assert broker.committed(GROUP) == {}
        assert worker.run_once() == len(values) and not worker.hold.active
    finally:
        worker.close()
    ids = [a["event_id"] for a in _alerts(broker)]
    assert set(ids) >= bad and len(ids) == len(set(ids)), "the failed send stored nothing: no duplicates"
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_an_eviction_during_the_batch_abandons_its_commit_and_rereads(broker, bundle):
    control = MemoryControl()
    control.publish(bundle)
    worker = _worker(broker, control)
    publish = worker.publisher.publish
    evicted = []

    def publish_then_evict(messages: Any) -> None:
        publish(messages)
        if not evicted:
            evicted.append(True)
            broker.evict(GROUP)  # the group moved on while this batch was in flight

    worker.publisher.publish = publish_then_evict  # type: ignore[method-assign]
    try:
        values, bad = _events(200, "e")
        broker.produce(TOPIC, values)
        worker.run_once()
        assert worker.stats.abandoned_batches == 1 and broker.committed(GROUP) == {}, "a zombie never commits"
        _drain(worker)
    finally:
        worker.close()
    ids = [a["event_id"] for a in _alerts(broker)]
    assert set(ids) >= bad and all(ids.count(i) == 2 for i in bad), "at least once: re-read and alerted again"
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_a_delivery_error_is_retriable_for_the_batch_whatever_the_client_said() -> None:
    """A fenced transaction's DeliveryError says its client call cannot succeed as is; the batch
    still can (the worker resets the producer and retries or re-reads it): it must be held."""
    from stream_detector.errors import DeliveryError

    fenced = DeliveryError("transaction fenced", retriable=False)
    assert fenced.retriable and not fenced.client_retriable


def test_a_challenger_in_shadow_scores_every_batch_without_alerting(broker, bundle, other):
    """Shadow scoring (pipeline/shadow.py): the champion alone alerts; a shadow record goes out for
    each event either model would alert, with both models' scores equal to offline scoring; the
    counts add up; the challenger promoted is scored as the champion and the shadow stops."""
    from stream_detector.pipeline.shadow import N_BINS

    broker.create_topic("alerts.shadow")
    control = MemoryControl()
    control.publish(bundle)
    control.shadow(other)
    worker = _worker(broker, control)
    try:
        values, bad = _events(600, "s")
        broker.produce(TOPIC, values)
        _drain(worker)
        worker.link.flush_now()
        assert worker.shadow.current is not None and worker.shadow.current.version == other.version
        alerts = _alerts(broker)
        assert {a["model_version"] for a in alerts} == {bundle.version}, "the challenger alerts nobody"
        shadow = [orjson.loads(r.value) for r in broker.read("alerts.shadow")]
        assert {r["challenger"]["model_version"] for r in shadow} == {other.version}
        assert {r["event_id"] for r in shadow if r["champion"]["alert"]} == {a["event_id"] for a in alerts}
        events = [orjson.loads(v) for v in values]
        by_id = {e["event_id"]: e for e in events}
        mine = [r for r in shadow if r["challenger"]["alert"]]
        assert bad <= {r["event_id"] for r in mine}, "the challenger sees the injected anomalies too"
        offline = score_events(other, [by_id[r["event_id"]] for r in shadow]).scores
        np.testing.assert_allclose([r["challenger"]["score"] for r in shadow], offline, rtol=1e-4, atol=1e-6)
        assert all(r["challenger"]["alert"] == (r["challenger"]["score"] > other.threshold) for r in shadow)
        counts = control.telemetry.shadow[other.version]
        all_scores = score_events(other, events).scores
        assert counts["events"] == len(values) == worker.stats.shadow_events
        assert worker.metrics.shadow_events._value.get() == len(values)
        assert counts["challenger_alerts"] == int((all_scores > other.threshold).sum()) == len(mine)
        assert counts["champion_alerts"] == len(alerts)
        assert counts["both_alerts"] == sum(r["champion"]["alert"] and r["challenger"]["alert"] for r in shadow)
        assert sum(counts.get(f"challenger_bin_{i}", 0) for i in range(N_BINS)) == len(values)
        control.publish(other)  # promoted: the challenger is now the champion
        wait_until(lambda: worker.run_once() == 0 and worker.scorer is not None
                   and worker.scorer.version == other.version, 30, message="the swap to the promoted model")
        broker.produce(TOPIC, values[:50])
        _drain(worker)
        assert worker.shadow.current is None and worker.scorer is not None and worker.scorer.version == other.version
        assert len(list(broker.read("alerts.shadow"))) == len(shadow), "no shadow records after the promotion"
    finally:
        worker.close()
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_a_challenger_with_another_entity_spec_is_not_shadow_scored(broker, bundle):
    """Its features would need their own per-entity state: refused once, the champion goes on."""
    import dataclasses

    from stream_detector.entity_spec import EntitySpec

    broker.create_topic("alerts.shadow")
    control = MemoryControl()
    control.publish(bundle)
    control.shadow(dataclasses.replace(bundle, metadata={**bundle.metadata, "version": "other-entity"},
                                       entity=EntitySpec()))
    worker = _worker(broker, control)
    try:
        values, bad = _events(200, "x")
        broker.produce(TOPIC, values)
        _drain(worker)
    finally:
        worker.close()
    assert worker.shadow.refused == 1 and worker.stats.shadow_events == 0
    assert worker.metrics.shadow_refused._value.get() == 1
    assert not list(broker.read("alerts.shadow")) and {a["event_id"] for a in _alerts(broker)} >= bad


def _progress_waiting(every_s: float) -> tuple[Any, Any, float, list[float]]:
    """A progress line every ``every_s`` whose peer wait (seconds) is ``waited[0]``: (stats, progress,
    its start, waited)."""
    from stream_detector.worker import WorkerStats, _Progress

    waited = [0.0]
    stats = WorkerStats()
    progress = _Progress(stats, every_s, lambda: waited[0])
    return stats, progress, progress.since, waited


def test_the_progress_line_says_what_the_worker_did_since_the_last_one(caplog) -> None:
    """``SD_LOG_PROGRESS_S``: one INFO line per period with events (none for a quiet one, none when 0)."""
    import logging

    from stream_detector.worker import WorkerStats, _Progress

    stats = WorkerStats()
    progress = _Progress(stats, 30.0)
    start = progress.since
    with caplog.at_level(logging.INFO, logger="stream_detector.worker"):
        stats.events, stats.alerts, stats.rejected = 3000, 4, 1
        progress.maybe_log(start + 10)  # not due yet
        progress.maybe_log(start + 30)
        progress.maybe_log(start + 61)  # a quiet period: nothing to say
        stats.events, stats.alerts = 3600, 5
        progress.maybe_log(start + 91)
        _Progress(stats, 0.0).maybe_log(start + 1e6)  # 0: never
    lines = [r.getMessage() for r in caplog.records if r.name == "stream_detector.worker"]
    assert lines == ["handled 3000 events in the last 30 s (100/s): 4 alerts, 1 dead letters; since start 3000 "
                     "events, 4 alerts, 1 dead letters",
                     "handled 600 events in the last 30 s (20/s): 1 alerts, 0 dead letters; since start 3600 "
                     "events, 5 alerts, 1 dead letters"]


def test_the_progress_line_says_how_many_labels_the_ingester_read(caplog) -> None:
    """A new-user trial saw the label ingester's work only through ``lag feedback``: the worker
    logged "caught up with feedback: 0 labels" at its start and nothing after."""
    import logging

    from stream_detector.worker import WorkerStats, _Progress

    stats, read = WorkerStats(), [5]
    progress = _Progress(stats, 30.0, labels=lambda: read[0])
    start = progress.since
    with caplog.at_level(logging.INFO, logger="stream_detector.worker"):
        stats.events, read[0] = 100, 45
        progress.maybe_log(start + 30)
        read[0] = 60  # labels, and no event
        progress.maybe_log(start + 60)
        progress.maybe_log(start + 90)  # neither: nothing
    lines = [r.getMessage() for r in caplog.records if r.name == "stream_detector.worker"]
    assert lines == ["handled 100 events in the last 30 s (3/s): 0 alerts, 0 dead letters; since start 100 "
                     "events, 0 alerts, 0 dead letters; 40 labels read from the feedback topic (45 since start)",
                     "15 labels read from the feedback topic (60 since start) in the last 30 s"]


def test_the_progress_line_warns_when_the_worker_mostly_waited_for_other_workers(caplog) -> None:
    """Found by a new-user trial: a second worker on a backlog sparse in event time made the group
    ~14x slower (the workers take turns in event time) and nothing said so. A period in which the
    alignment waited more than half the time for other workers' partitions is one WARNING naming
    the cause and the remedies."""
    import logging

    stats, progress, start, waited = _progress_waiting(30.0)
    with caplog.at_level(logging.INFO, logger="stream_detector.worker"):
        stats.events, waited[0] = 50, 27.0
        progress.maybe_log(start + 30)
        stats.events, waited[0] = 3050, 30.0  # 3 s of 30 waiting: no warning
        progress.maybe_log(start + 60)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("waited 27 of the last 30 s for other workers' partitions")
    assert "SD_ALIGN_PEER_GRACE_MS" in warnings[0] and "fewer workers" in warnings[0]
    assert "stopped responding" in warnings[0]


def test_a_wait_longer_than_the_period_is_said_as_the_whole_period(caplog) -> None:
    """A trial (2026-12-07): a peer frozen past its session timeout held this worker in one wait that
    began before the period and ended in it; the line said "waited 11 of the last 10 s"."""
    import logging

    stats, progress, start, waited = _progress_waiting(10.0)
    with caplog.at_level(logging.WARNING, logger="stream_detector.worker"):
        stats.events, waited[0] = 18, 11.0
        progress.maybe_log(start + 10)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("waited 10 of the last 10 s"), warning


def test_most_batches_cut_short_by_other_workers_is_a_warning_too(caplog) -> None:
    """Found by a new-user trial: two workers drained a 7-day simulated file at ~120 events/s
    together, each batch an event or two (a turn in event time), yet they waited only 26 of 704 s
    for each other, so the wait warning stayed silent. Most of a period's batches stopping at
    another worker's head, with few events each, is the same WARNING; large batches that stop
    there (live traffic, dense backlogs) are not."""
    import logging

    from stream_detector.worker import WorkerStats, _Progress

    cut = [0]
    stats = WorkerStats()
    progress = _Progress(stats, 30.0, lambda: 1.0, lambda: cut[0])
    start = progress.since
    with caplog.at_level(logging.INFO, logger="stream_detector.worker"):
        stats.batches, stats.events, cut[0] = 400, 600, 390  # 1.5 events per batch, nearly all cut short
        progress.maybe_log(start + 30)
        stats.batches, stats.events, cut[0] = 800, 600 + 400 * 500, 780  # cut short, but 500 events each
        progress.maybe_log(start + 60)
        stats.batches, stats.events, cut[0] = 810, 200_615, 790  # 10 batches: too few to tell
        progress.maybe_log(start + 90)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("390 of the last 400 batches (1.5 events each) stopped at other workers' partitions")
    assert "SD_ALIGN_PEER_GRACE_MS" in warnings[0] and "fewer workers" in warnings[0]
    assert "stopped responding" in warnings[0]


def test_the_worker_counts_dead_letters_by_reason(broker, bundle):
    """The stats the CLI prints at stop ("3 rejected (wrong_type 3)"): a dead letter per reason
    (a misplaced decorator once left ``WorkerStats`` a plain class, and counting crashed the worker)."""
    control = MemoryControl()
    control.publish(bundle)
    worker = _worker(broker, control)
    try:
        values, _ = _events(50, "r", bad=0)
        broker.produce(TOPIC, [*values, b"{not json", orjson.dumps({"event_id": 7, "account_id": "a"})])
        _drain(worker)
    finally:
        worker.close()
    assert worker.stats.rejected == 2 and sum(worker.stats.rejected_by_reason.values()) == 2
    assert set(worker.stats.rejected_by_reason) == {"invalid_json", "wrong_type"}
    assert len(broker.read(DLQ)) == 2 and worker.stats.events == len(values) + 2


def test_a_worker_sharing_its_topic_under_alignment_with_a_grace_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Several workers aligned at a grace above 0 give features that differ from offline scoring,
    and at grace 0 take turns about one event at a time (docs/entity-features.md, *Several
    workers*): the worker says so once when it comes to own only part of the topic, again only
    after it owned all of it in between; it says nothing alone or when the partition count is
    unknown."""
    import logging

    from stream_detector.pipeline.align import AlignedSource
    from stream_detector.store.watermarks import MemoryWatermarks
    from stream_detector.worker import SHARING_CHECK_S, sharing_warning

    assert sharing_warning(1, 4, 2000) is not None and "1 of the input topic's 4" in str(sharing_warning(1, 4, 2000))
    exact = sharing_warning(1, 4, 0)
    assert exact is not None and "taking turns" in exact and "one worker per group" in exact
    assert sharing_warning(4, 4, 2000) is None and sharing_warning(4, 4, 0) is None
    assert sharing_warning(0, 4, 2000) is None and sharing_warning(1, 0, 2000) is None

    class Owned:
        def __init__(self) -> None:
            self.n = 4

        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition("tx", p) for p in range(self.n)}

    owned = Owned()
    worker = Worker.__new__(Worker)
    worker.settings = Settings(align_peer_grace_ms=2000)
    worker._sharing_at, worker._sharing_warned, worker._sharing_assigned = float("-inf"), False, False
    worker.source = AlignedSource(owned, batch_size=10,  # type: ignore[arg-type]
                                  peers=MemoryWatermarks(grace_ms=2000, stale_ms=30_000, partitions=4))
    now = 0.0

    def check(n: int) -> int:
        nonlocal now
        owned.n = n
        now += SHARING_CHECK_S
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stream_detector.worker"):
            worker._check_sharing(now)
        return sum("SD_ALIGN_PEER_GRACE_MS=2000" in r.getMessage() for r in caplog.records)

    assert [check(4), check(2), check(2), check(1), check(4), check(1)] == [0, 1, 0, 0, 0, 1]


def test_a_worker_with_no_partition_says_it_stands_by_once_until_it_gets_one() -> None:
    """Found by a new-user trial: a stage-1 worker that joined a group with as many members as
    partitions said nothing of it. The progress line of a period that handled nothing says it once,
    and again only after partitions came and went. It names both causes (a later trial: a worker
    restarted after a kill -9 read "too many members" while the dead one's session held them)."""
    class _Source:
        assigned: set[TopicPartition] = set()

        def assignment(self) -> set[TopicPartition]:
            return self.assigned

    worker = Worker.__new__(Worker)
    worker.settings, worker.source, worker.control = Settings(input_topic="tx", group_id="g"), _Source(), MemoryControl()
    worker._standby_said = False
    said = [worker._idle_reason() for _ in range(2)]
    worker.source.assigned = {TopicPartition("tx", 0)}
    said.append(worker._idle_reason())
    worker.source.assigned = set()
    said.append(worker._idle_reason())
    assert said[1:3] == [None, None] and said[0] == said[3]
    assert said[0] == ("no partition of tx is assigned to this worker: either its consumer group g is still "
                       "rebalancing (a member that stopped without leaving, e.g. killed, keeps its partitions until "
                       "its session times out, 10 s), or the group has at least as many members as the topic has "
                       "partitions, and this one stands by until a member leaves or the topic gets more partitions")


def test_a_model_whose_input_fields_the_events_lack_is_said_once(broker, bundle, caplog) -> None:
    """Events of another producer (a new-user trial: the Handbook's raw events streamed to a
    model trained with other fields; every event alerted, nothing said why): the worker warns
    once, naming the absent fields, also when the whole backlog is one batch (a second trial:
    10,000 events in 2 batches said nothing); the same model's events with every field get no
    warning."""
    import logging

    from stream_detector.worker import watched_fields

    fields = watched_fields(bundle)
    values, _ = _events(200, "full", bad=0)
    lacking = [orjson.loads(v) for v in values]
    for event in lacking:
        for name in fields[1:]:
            event.pop(name, None)
    said = {}
    for name, records in (("full", values), ("lacking", [orjson.dumps(e) for e in lacking])):
        b = MemoryBroker()
        for topic in (TOPIC, ALERTS, DLQ):
            b.create_topic(topic)
        control = MemoryControl()
        control.publish(bundle)
        worker = _worker(b, control, batch_size=500)  # the whole backlog in one batch
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, logger="stream_detector.worker"):
                b.produce(TOPIC, records)
                _drain(worker)
                b.produce(TOPIC, records[:50])
                _drain(worker)
        finally:
            worker.close()
        said[name] = [r.getMessage() for r in caplog.records if "absent from every one" in r.getMessage()]
    assert len(fields) > 2 and said["full"] == []
    assert len(said["lacking"]) == 1 and f"{len(fields) - 1} of its input fields are absent" in said["lacking"][0]
    assert all(repr(name) in said["lacking"][0] for name in sorted(fields[1:])[:6])


def test_the_absent_fields_warning_names_them_once_per_model() -> None:
    from stream_detector.worker import AbsentFields

    watch = AbsentFields()
    fields = ("amount", "channel")
    full = [{"amount": 1.0, "channel": "pos", "x": 1}] * 10
    lacking = [{"amount": 2.0}] * 10
    assert [watch.observe("v1", fields, lacking) for _ in range(3)] == [None] * 3  # 30 events looked at
    said = watch.observe("v1", fields, lacking)
    assert said is not None and "1 of its input fields is absent from every one of the first 40 events" in said
    assert "'channel'" in said and not watch.wants("v1") and "(the first carries" not in said
    renamed = watch.observe("v6", fields, [{"amount": 1.0, "Channel": "pos", "event_id": "e"}] * 40)
    assert renamed is not None and "(the first carries 'Channel')" in renamed
    known = watch.observe("v7", fields, [{"amount": 1.0, "Channel": "pos", "country": "FR"}] * 40,
                          known=("amount", "channel", "country"))  # a field the model knows is not "instead"
    assert known is not None and "(the first carries 'Channel')" in known
    assert watch.observe("v1", fields, lacking) is None  # once
    assert watch.observe("v2", fields, [{"amount": 1.0}] * 100) is not None  # one big batch is enough
    assert [watch.observe("v3", fields, b) for b in (lacking, full, lacking, lacking, lacking)] == [None] * 5
    sparse = [{"amount": 1.0}] * 7 + [{"amount": 1.0, "channel": "pos"}]  # present in one event of eight
    assert [watch.observe("v4", fields, sparse) for _ in range(6)] == [None] * 6
    assert watch.observe("v5", (), lacking) is None and not watch.wants("v5")


def test_fields_the_model_was_trained_to_see_missing_are_not_watched() -> None:
    """A second trial: a model trained on events that mostly leave a field out was warned about
    for events of that very shape. The numeric fields with a missing indicator are not watched."""
    from stream_detector.worker import watched_fields

    events, _ = Simulator(seed=3, accounts=100, run_id="sparse").batch(1500, 0.0)
    for i, event in enumerate(events):
        if i % 20:
            event.pop("distance_from_home_km", None)
    from stream_detector.model.bundle import build_bundle
    from stream_detector.model.train import TrainConfig, train

    sparse = build_bundle(train(events, TrainConfig(epochs=1, seed=0)))
    assert "distance_from_home_km" in sparse.schema.input_fields
    assert "distance_from_home_km" not in watched_fields(sparse)
    assert set(watched_fields(sparse)) == set(sparse.schema.input_fields) - {"distance_from_home_km"}


def test_category_fields_the_model_was_trained_to_see_missing_are_not_watched() -> None:
    """A leftover of the absent-fields warning: a category field training often saw missing was
    watched (numeric ones with a missing indicator were not). A spec that records it
    (``CategoricalColumn.impute`` None beside ``other_share``: training saw the field missing)
    leaves it out; a field never missing in training (imputed) is watched, and so is every
    category field of an older spec, which does not say."""
    import dataclasses

    from stream_detector.model.bundle import build_bundle
    from stream_detector.model.train import TrainConfig, train
    from stream_detector.worker import watched_fields

    events, _ = Simulator(seed=4, accounts=100, run_id="sparse-cat").batch(1500, 0.0)
    for i, event in enumerate(events):
        if i % 3:
            event.pop("channel", None)
    sparse = build_bundle(train(events, TrainConfig(epochs=1, seed=0)))
    channel = next(c for c in sparse.spec.categorical if c.name == "channel")
    assert channel.impute is None and channel.other_share is not None
    assert "channel" in sparse.schema.input_fields and "channel" not in watched_fields(sparse)
    imputed = [c.name for c in sparse.spec.categorical if c.impute is not None]
    assert imputed and set(imputed) <= set(watched_fields(sparse))
    older = dataclasses.replace(sparse.spec, categorical=tuple(dataclasses.replace(c, other_share=None, impute=None)
                                                                for c in sparse.spec.categorical))
    assert "channel" in watched_fields(dataclasses.replace(sparse, spec=older))


def test_the_novel_values_warning_names_a_field_far_above_its_training_share_once_per_model() -> None:
    """Two new-user trials sent a ``channel`` value training never saw ("mobile"): one model
    alerted on every such event, another on few, and the worker said nothing either time. Now it
    warns once per model, after ``ENOUGH`` events, for a field whose share of values training did
    not keep is at least 1 % and over 5x its training share (``CategoricalColumn.other_share``),
    with the commonest new values — not for a field training often saw such values in, nor for
    missing values (imputed), nor the values of a redacted field; a spec without the training
    share (before 2026-12-05) is not watched."""
    from stream_detector.features import CategoricalColumn
    from stream_detector.worker import NovelValues

    columns = [CategoricalColumn("channel", ("atm", "pos", "web"), "pos", 0.0),
               CategoricalColumn("merchant", ("a", "b"), None, 0.30)]  # a field with many rare values
    normal = [{"channel": "pos", "merchant": "zz"}, {"channel": None, "merchant": "a"}, {"merchant": "b"}] * 40
    drifted = [{"channel": "mobile" if i % 10 == 0 else "pos", "merchant": "yy"} for i in range(120)]
    watch = NovelValues()
    steps = watch.ENOUGH // 120 + 1
    assert [watch.observe("v1", columns, normal) for _ in range(steps)] == [None] * steps
    assert not watch.wants("v1")
    said = [watch.observe("v2", columns, drifted) for _ in range(steps)]
    assert said[:-1] == [None] * (steps - 1) and said[-1] is not None
    assert "'channel': 10.0% of them (e.g. 'mobile'), against 0.0% in training" in said[-1]
    assert "'merchant'" not in said[-1] and "__other__" in said[-1]  # 100 % against 30 %: 3.3x, not 5x
    assert watch.observe("v2", columns, drifted) is None and not watch.wants("v2")  # once
    hidden = [watch.observe("v3", columns, drifted, redacted={"channel"}) for _ in range(steps)][-1]
    assert hidden is not None and "'channel': 10.0% of them, against" in hidden and "mobile" not in hidden
    old = [CategoricalColumn("channel", ("atm", "pos", "web"))]  # no training share: not watched
    assert watch.observe("v4", old, drifted) is None and not watch.wants("v4")
    seen_missing = [CategoricalColumn("channel", ("atm", "pos", "web"), None, 0.0)]  # a new value reads as missing
    assert watch.observe("v5", seen_missing, drifted) is None and not watch.wants("v5")
    assert watch.observe("v6", columns, drifted * (watch.ENOUGH // 120 + 1)) is not None  # one big batch decides


def test_the_missing_shares_warning_names_fields_missing_far_more_often_than_in_training() -> None:
    """A trial left out a field training saw missing in one event in 20 (so the absent-fields
    warning does not watch it) and the alerts went 1.9x, with no word; a field missing in one event
    in 20 where training never saw it missing is scored at its training median, which hides an
    anomaly in it, again with no word. ``MissingShares`` looks at the first ``ENOUGH`` scored
    events and names each input field whose share missing (absent, null, empty) is at least 2
    points above training's and twice it — once per model; a field missing from every event that
    ``AbsentFields`` watches is left to it; an older spec (no shares) is not watched."""
    import dataclasses

    from stream_detector.features import CategoricalColumn, FeatureSpec, NumericColumn
    from stream_detector.model.bundle import build_bundle
    from stream_detector.model.train import TrainConfig, train
    from stream_detector.worker import MissingShares

    spec = FeatureSpec(numeric=(NumericColumn("amount", 10.0, 2.0, 1.0, True, False, 0.0),
                                NumericColumn("distance", 3.0, 3.0, 1.0, False, True, 0.05)),
                       categorical=(CategoricalColumn("channel", ("pos", "web"), "pos", 0.0, 0.0),),
                       time_of_day=False)
    base = build_bundle(train([{"event_id": f"e{i}", "amount": float(i % 7 + 1), "distance": float(i % 5),
                                "channel": "pos" if i % 3 else "web"} for i in range(600)],
                              TrainConfig(epochs=1, seed=0, min_rows=100)))
    assert set(base.schema.input_fields) == {"amount", "distance", "channel"}

    def model(version: str, spec: FeatureSpec = spec) -> Bundle:
        return dataclasses.replace(base, spec=spec, metadata={**base.metadata, "version": version})

    n = MissingShares.ENOUGH
    normal = [{"amount": 5.0, "distance": None if i % 20 == 0 else 1.0, "channel": "web"} for i in range(n)]
    watch = MissingShares()
    assert watch.observe(model("v1"), normal[: n // 2]) is None and watch.wants("v1")
    assert watch.observe(model("v1"), normal[n // 2:]) is None and not watch.wants("v1")  # decided: nothing
    drifted = [{"amount": "" if i % 20 == 0 else 5.0, "channel": None if i % 2 else "pos"} for i in range(n)]
    said = watch.observe(model("v2"), drifted)  # one big batch decides
    assert said is not None and f"of the first {n:,} events model v2 scored, 3 of the model's input fields are" in said
    assert "'amount' in 5.1% (0.0% in training)" in said and "'channel' in 50.0% (0.0% in training)" in said
    assert "'distance' in 100.0% (5.0% in training)" in said  # left out: training saw it missing, not watched
    assert watch.observe(model("v2"), drifted) is None  # once
    gone = [{"distance": 1.0, "channel": "pos"}] * n  # amount absent from all: the absent-fields warning's
    assert watch.observe(model("v3"), gone) is None
    older = model("v4", dataclasses.replace(spec, numeric=tuple(
        dataclasses.replace(c, missing_share=None) for c in spec.numeric), categorical=tuple(
        dataclasses.replace(c, missing_share=None) for c in spec.categorical)))
    assert watch.observe(older, drifted) is None and not watch.wants("v4")
    slightly = [{"amount": None if i % 100 == 0 else 5.0, "distance": None if i % 15 == 0 else 1.0,
                 "channel": "pos"} for i in range(n)]  # 1 % (< 2 points) and 6.7 % (< twice 5 %)
    assert watch.observe(model("v5"), slightly) is None


def _worker_warnings(bundle: Bundle, records: list[bytes], phrase: str, caplog: Any) -> list[str]:
    """The worker's WARNING lines holding ``phrase`` while it drains ``records`` (batches of 500)
    with ``bundle``, on a fresh in-memory broker and control plane."""
    import logging

    b = MemoryBroker()
    for topic in (TOPIC, ALERTS, DLQ):
        b.create_topic(topic)
    control = MemoryControl()
    control.publish(bundle)
    worker = _worker(b, control, batch_size=500)
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="stream_detector.worker"):
            b.produce(TOPIC, records)
            _drain(worker)
    finally:
        worker.close()
    return [r.getMessage() for r in caplog.records if phrase in r.getMessage()]


def test_a_stream_with_a_category_value_training_never_kept_is_said_once(bundle, caplog) -> None:
    """The worker end to end: one event in 10 with ``channel: "mobile"`` (a value the model's
    training never saw) gets one warning naming the field and the value; the same events without
    it none."""
    values, _ = _events(1_500, "novel", bad=0)  # three batches of 500: ENOUGH events looked at
    events = [orjson.loads(v) for v in values]
    assert "channel" in {c.name for c in bundle.spec.categorical}
    drifted = [orjson.dumps(dict(e, channel="mobile") if i % 10 == 0 else e) for i, e in enumerate(events)]
    assert _worker_warnings(bundle, values, "training did not keep", caplog) == []
    said = _worker_warnings(bundle, drifted, "training did not keep", caplog)
    assert len(said) == 1 and "'channel': 10.0% of them (e.g. 'mobile')" in said[0]


def test_a_stream_missing_a_field_far_more_often_than_training_is_said_once(bundle, caplog) -> None:
    """The worker end to end: ``amount`` left out of one event in four (training never saw it
    missing) gets one warning naming it with both shares; the same events whole, none."""
    values, _ = _events(1_500, "gaps", bad=0)  # three batches of 500: ENOUGH events looked at
    events = [orjson.loads(v) for v in values]
    gaps = [orjson.dumps({k: v for k, v in e.items() if k != "amount"} if i % 4 == 0 else e)
            for i, e in enumerate(events)]
    assert _worker_warnings(bundle, values, "far more often than in its training", caplog) == []
    said = _worker_warnings(bundle, gaps, "far more often than in its training", caplog)
    assert len(said) == 1 and "'amount' in 25.0% (0.0% in training)" in said[0]


def test_a_history_model_watches_the_event_time_too(bundle) -> None:
    """A trial (trial E): events whose time was in `TX_DATETIME`, not `timestamp`, streamed to a
    model with customer history: 90 % alerted in the worker, no warning (every event was taken at
    its entity's last time). A model with entity features watches `timestamp` as an input field; the
    warning then names the event's other fields (`TX_DATETIME`); a stateless model does not."""
    from stream_detector.entity import EntitySpec
    from stream_detector.worker import AbsentFields, watched_fields
    from tests.helpers import entity_bundle, raw_card_events

    events = raw_card_events(400, seed=3, accounts=20, tag="ts")
    model = entity_bundle(EntitySpec(keys=("account_id",), windows=(3600,), distinct_fields=()), events, epochs=1)
    assert "timestamp" in watched_fields(model)
    moved = [{**{k: v for k, v in e.items() if k != "timestamp"}, "TX_DATETIME": e["timestamp"]} for e in events]
    absent = AbsentFields()
    said = absent.observe(model.version, watched_fields(model), moved, model.schema.input_fields)
    assert said is not None and "timestamp" in said and "TX_DATETIME" in said
    assert "--timestamp-column" not in said  # the model was not trained so
    said = AbsentFields().observe(model.version, watched_fields(model), moved, model.schema.input_fields,
                                  "TX_DATETIME")  # a model trained with --timestamp-column TX_DATETIME
    assert said is not None and said.endswith(
        "The model was trained with --timestamp-column TX_DATETIME, which these events carry: send it as timestamp "
        "(stream-detector produce --timestamp-column TX_DATETIME does)")
    assert AbsentFields().observe(model.version, watched_fields(model), events, model.schema.input_fields) is None
    assert bundle.entity is None and "timestamp" not in watched_fields(bundle)


def test_a_stream_of_mostly_dead_letters_is_said_once_with_the_models_id_column(bundle, caplog) -> None:
    """Trial O: raw Handbook events without ``event_id`` streamed to a model trained with
    ``--id-column TRANSACTION_ID``: all 500 dead-lettered, each with its reason on the dead-letter
    topic, and no line in the worker's log. Now one warning per model once ``ENOUGH`` events are in
    and at least half were dead letters: the counts per reason, the first one's message, and the
    model's ``--id-column``; the same events with their ids, none."""
    import dataclasses

    from stream_detector.pipeline.decode import Rejected
    from stream_detector.schema import RejectReason
    from stream_detector.worker import MostlyDeadLetters

    values, _ = _events(600, "dead", bad=0)
    events = [orjson.loads(v) for v in values]
    renamed = [orjson.dumps({("TRANSACTION_ID" if k == "event_id" else k): v for k, v in e.items()}) for e in events]
    assert _worker_warnings(bundle, values, "were dead letters", caplog) == []
    said = _worker_warnings(bundle, renamed, "were dead letters", caplog)
    assert len(said) == 1 and said[0].startswith(f"model {bundle.version}: 500 of the first 500 events received were "
                                                 "dead letters (missing_event_id 500; each with its reason")
    assert "the first: event_id is required (the event has 'TRANSACTION_ID'" in said[0]
    trained = dataclasses.replace(bundle, metadata={**bundle.metadata, "training_id_column": "TRANSACTION_ID"})
    watch = MostlyDeadLetters()
    missing = [Rejected(i, RejectReason.MISSING_EVENT_ID, "event_id is required") for i in range(150)]
    assert watch.observe(trained, 200, missing) is None and watch.wants(trained.version)  # 200 < ENOUGH: not yet
    said_once = watch.observe(trained, 200, missing[:50])
    assert said_once is not None and said_once.endswith(
        "The model was trained with --id-column TRANSACTION_ID: send it as event_id (stream-detector produce "
        "--id-column TRANSACTION_ID does)")
    assert "200 of the first 400" in said_once and watch.observe(trained, 200, missing) is None  # once
    few = MostlyDeadLetters()
    assert few.observe(trained, 400, missing[:199]) is None and not few.wants(trained.version)  # under half


def test_a_period_with_many_late_events_is_a_warning(caplog) -> None:
    """Trial Q: two stages that let a partition fall behind in event time (stage 1's idle marks on
    a stale end) applied thousands of terminal events late, and their alerts were wrong, while lag,
    the metrics and the log said nothing. The enricher now counts, per key, the events earlier than
    their entity's last one (``Enricher.last_late``; metric ``stream_detector_entity_late_events``);
    a period where they are more than 1 % of its events is one WARNING naming the key."""
    import logging

    from stream_detector.worker import WorkerStats, _Progress

    stats = WorkerStats()
    progress = _Progress(stats, 30.0)
    start = progress.since
    with caplog.at_level(logging.INFO, logger="stream_detector.worker"):
        stats.events, stats.late_events = 1000, {"account_id": 3, "terminal_id": 10}  # 1 %: not more
        progress.maybe_log(start + 30)
        stats.events, stats.late_events = 2000, {"account_id": 4, "terminal_id": 260}
        progress.maybe_log(start + 60)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        "250 of terminal_id of the 1000 events of the last 30 s came earlier in event time than their entity's "
        "last event")


def test_the_enricher_counts_the_events_it_applied_late_per_key() -> None:
    """``Enricher.last_late``: per key, the batch's applied events earlier in event time than their
    entity's last one (the kernel's ``late``); an event without a time is not."""
    from stream_detector.entity import Enricher, EntitySpec, InMemoryState

    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600,), distinct_fields=())
    enricher = Enricher(InMemoryState())
    first = [{"event_id": "a", "account_id": "x", "terminal_id": "t", "timestamp": 2_000_000, "amount": 1.0}]
    enricher.features(spec, first, [(0, 0)])
    assert enricher.last_late == {"account_id": 0, "terminal_id": 0}
    batch = [{"event_id": "b", "account_id": "x", "terminal_id": "u", "timestamp": 1_000_000, "amount": 1.0},
             {"event_id": "c", "account_id": "y", "terminal_id": "t", "timestamp": 1_500_000, "amount": 1.0},
             {"event_id": "d", "account_id": "y", "terminal_id": "t", "timestamp": 1_400_000, "amount": 1.0},
             {"event_id": "e", "account_id": "x", "terminal_id": "t", "timestamp": None, "amount": 1.0}]
    enricher.features(spec, batch, [(0, 1), (0, 2), (0, 3), (0, 4)])
    # b: x's last was 2,000,000 (late for account_id; u is new); c: t's last 2,000,000 (late for terminal_id);
    # d: earlier than c for y and for t (late for both); e: no time (not late)
    assert enricher.last_late == {"account_id": 2, "terminal_id": 2}


def test_late_events_of_an_entity_recomputed_after_a_conflict_are_counted_once() -> None:
    """Stop 66 left ``last_late`` an upper bound with several writers: an entity another writer
    changed between a batch's read and its write is recomputed (``Enricher._redo``), and its late
    events were counted again. Its events' flags are now replaced: two late events, counted 2."""
    from stream_detector.entity import Enricher, EntitySpec, InMemoryState

    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600,), distinct_fields=())
    store = InMemoryState()
    mine, other = Enricher(store), Enricher(store)

    def event(eid: str, account: str, ts: int) -> dict[str, Any]:
        return {"event_id": eid, "account_id": account, "terminal_id": "t", "timestamp": ts, "amount": 1.0}

    mine.features(spec, [event("a", "x", 2_000_000)], [(0, 0)])
    pending = mine.begin(spec, [event("b", "y", 1_000_000), event("c", "z", 1_100_000)], [(0, 1), (0, 2)])
    other.features(spec, [event("d", "w", 3_000_000)], [(1, 0)])  # another writer changes terminal t meanwhile
    changed = pending.write()
    assert changed.size == 2 and mine.conflicts >= 1  # t's two events recomputed against the other's record
    assert mine.last_late == {"account_id": 0, "terminal_id": 2}
