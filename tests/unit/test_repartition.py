"""Two stages through a repartition topic (``pipeline/repartition.py``, ``SD_STAGE``): the pure
parts, and both stages' workers on the in-memory transport giving offline enrichment's features
and alerts for a backlog of four partitions keyed by account."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.errors import ConfigError
from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.pipeline.align import AlignedSource, event_times
from stream_detector.pipeline.repartition import (
    CARRIED,
    CARRIED_SPEC,
    IDLE_MARK,
    SOURCE,
    TIME_MARK,
    IdleMarks,
    bucket_of,
    carried_spec,
    forwards,
    idle_marks,
    is_idle_mark,
    marked_rows,
    read_carried,
    rest_spec,
    split_buckets,
    stage_problem,
    stage_settings,
    time_marks,
)
from stream_detector.schema import RejectReason
from stream_detector.settings import Settings
from stream_detector.store.memory import MemoryControl
from stream_detector.transport.base import Batch, OutMessage, TopicPartition
from stream_detector.transport.memory import MemoryBroker, MemoryPublisher, MemorySource, MemoryTransactionalPublisher
from stream_detector.worker import Worker
from tests.helpers import entity_bundle, raw_card_events, wait_until

SPEC = EntitySpec(keys=("account_id", "merchant_category"), windows=(3600, 86_400), max_distinct=8)
TOPIC, ALERTS, DLQ, GROUP = "tx", "alerts", "dlq", "g"
REKEYED = "g.tx.by-merchant_category"  # SD_GROUP_ID.SD_INPUT_TOPIC.by-SD_REPARTITION_KEY


def _raw(n: int, seed: int) -> list[dict[str, Any]]:
    return raw_card_events(n, seed, accounts=40, tag="rp")


@pytest.fixture(scope="module")
def two_keys() -> Bundle:
    return entity_bundle(SPEC, _raw(1200, seed=31), epochs=3)


def _settings(stage: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"input_topic": TOPIC, "alerts_topic": ALERTS, "dlq_topic": DLQ, "group_id": GROUP,
                              "create_topics": False, "metrics_port": 0, "score_feed_sample": 0, "batch_size": 64,
                              "threshold_refresh_s": 0.05, "worker_id": "w", "stage": stage,
                              "repartition_key": "merchant_category", "repartition_buckets": 3, **overrides}
    return Settings(**values)


# ---- the pure parts -----------------------------------------------------------------------------
def test_buckets_are_stable_and_one_per_entity_whatever_its_type() -> None:
    got = bucket_of(["t-1", 5, "5", None, "", True], 7)
    assert got.dtype == np.int64 and got[1] == got[2]  # 5 and "5" are one entity (entity_value)
    assert got[3] == got[4] == got[5] == 0  # no usable id: bucket 0
    assert list(bucket_of(["t-1"] * 3, 7)) == [got[0]] * 3 and 0 <= got[0] < 7


def test_a_forwarded_event_keeps_its_bytes_and_goes_to_its_buckets_partition_of_its_upstream() -> None:
    batch = Batch(topic=TOPIC, partitions=[2, 0, 1], offsets=[10, 11, 12], keys=[None] * 3,
                  values=[b'{"a":1}', b"bad", b'{"a":3}'], timestamps=[0] * 3, headers=[()] * 3)
    carried = np.array([[1.5, -0.0], [np.pi, 1e300]])
    out = forwards(batch, [0, 2], ["t-1", 7], carried, "fp", REKEYED, 4, 3)
    buckets = bucket_of(["t-1", 7], 3)
    assert [m.partition for m in out] == [buckets[0] * 4 + 2, buckets[1] * 4 + 1]
    assert [m.value for m in out] == [b'{"a":1}', b'{"a":3}'] and [m.key for m in out] == [b"t-1", b"7"]
    headers = [dict(m.headers) for m in out]
    assert headers[1][SOURCE] == b"tx/1/12/0" and headers[0][CARRIED_SPEC] == b"fp"
    back, bad = read_carried([m.headers for m in out], 2, "fp")
    assert not bad and back.tobytes() == carried.tobytes()  # bit for bit, -0.0 included
    with pytest.raises(ValueError, match="beyond the 2"):
        forwards(batch, [0], ["t"], carried[:1], "fp", REKEYED, 2, 3)


def test_a_record_without_usable_carried_features_is_named_with_why() -> None:
    good = [(CARRIED, np.array([1.0, 2.0]).tobytes()), (CARRIED_SPEC, b"fp")]
    matrix, bad = read_carried([good, (), [(CARRIED, b"\0" * 16), (CARRIED_SPEC, b"other")],
                                [(CARRIED, b"\0" * 8), (CARRIED_SPEC, b"fp")]], 2, "fp")
    assert list(matrix[0]) == [1.0, 2.0] and np.isnan(matrix[1:]).all()
    assert set(bad) == {1, 2, 3}
    assert "stage-1" in bad[1] and "other" in bad[2] and "holds 1 values" in bad[3]


def test_each_batch_ends_every_bucket_of_its_upstream_partitions_at_their_newest_time() -> None:
    """Time marks: per upstream partition of the batch, one at every bucket but the one its last
    forwarded event went to, carrying that event's timestamp as it was (read by stage 2 as the
    event's: the same sort key) and its place in the input topic."""
    values = [b'{"timestamp":"2026-01-01T00:00:01Z","x":1}', b'{"timestamp":1767225602000}', b'{"x":3}',
              b'{"timestamp":"2026-01-01T00:00:04Z"}']
    batch = Batch(topic=TOPIC, partitions=[0, 1, 0, 1], offsets=[5, 6, 7, 8], keys=[None] * 4, values=values,
                  timestamps=[0] * 4, headers=[()] * 4)
    out = forwards(batch, [0, 1, 3], ["t-1", "t-2", "t-3"], np.zeros((3, 1)), "fp", REKEYED, 4, 3)
    marks = time_marks(out, REKEYED, 4, 3)
    by_part = {m.partition: m for m in marks}
    assert len(marks) == len(by_part) == 2 * 2  # two upstream partitions, two buckets each
    b0, b3 = bucket_of(["t-1"], 3)[0], bucket_of(["t-3"], 3)[0]
    assert set(by_part) == {b * 4 + 0 for b in range(3) if b != b0} | {b * 4 + 1 for b in range(3) if b != b3}
    for m in marks:
        upstream_last = out[0] if (m.partition or 0) % 4 == 0 else out[2]
        assert m.headers[0] == TIME_MARK and dict(m.headers)[SOURCE] == dict(upstream_last.headers)[SOURCE]
        assert event_times([m.value]).tolist() == event_times([upstream_last.value]).tolist()
    assert marked_rows([m.headers for m in out + marks]) == list(range(len(out), len(out) + len(marks)))
    idle = idle_marks([2, 0], REKEYED, 4, 3)
    assert [m.partition for m in idle] == [0, 4, 8, 2, 6, 10] and all(is_idle_mark(m.headers) for m in idle)
    assert not any(is_idle_mark(m.headers) for m in out + marks) and np.isnan(event_times([idle[0].value])).all()


def test_an_upstream_partition_is_owed_an_idle_mark_when_at_its_end_and_quiet_then_every_idle_time() -> None:
    owed = IdleMarks(idle_s=1.0, every_s=1.0)
    assert IdleMarks(idle_s=2.0).every_s == 10.0
    asked: list[float] = []

    def backlog(left: dict[int, int | None]) -> Any:
        return lambda: asked.append(1) or left  # type: ignore[func-returns-value]

    assert owed.due({0, 1}, backlog({0: 0, 1: 0}), now=10.0) == [] and not asked  # just assigned: not quiet yet
    owed.seen([1], now=10.5)
    assert owed.due({0, 1}, backlog({0: 0, 1: 0}), now=11.0) == [0]
    assert owed.due({0, 1}, backlog({0: 0, 1: None}), now=11.6) == [0]  # 1: its end unknown
    assert owed.due({0, 1}, backlog({0: 3, 1: 0}), now=11.6) == [1]  # 0: records left
    owed.sent([0, 1], now=11.6)
    assert owed.due({0, 1}, backlog({0: 0, 1: 0}), now=12.0) == []  # marked within the idle time
    assert owed.due({0, 1}, backlog({0: 0, 1: 0}), now=12.6) == [0, 1]  # the heartbeat
    owed.seen([0], now=12.7)
    assert owed.due({0}, backlog({0: 0}), now=13.0) == []  # a record ended 0's idleness; 1 revoked
    assert owed.due({0, 1}, backlog({0: 0, 1: 0}), now=13.8) == [0]  # 1 assigned again: quiet from now


def test_batch_without_some_records_still_commits_past_them() -> None:
    batch = Batch(topic=TOPIC, partitions=[0, 1, 0, 1], offsets=[5, 6, 7, 9], keys=[None] * 4,
                  values=[b"a", b"m", b"c", b"m"], timestamps=[1, 2, 3, 4], headers=[()] * 4)
    events = batch.without([1, 3])
    assert events.values == [b"a", b"c"] and events.offsets == [5, 7]
    assert events.next_offsets() == batch.next_offsets() == {TopicPartition(TOPIC, 0): 8, TopicPartition(TOPIC, 1): 10}
    assert not len(batch.without([0, 1, 2, 3])) and batch.without([0, 1, 2, 3]).next_offsets() == batch.next_offsets()
    assert events.only({1}).next_offsets() == {TopicPartition(TOPIC, 1): 10} and batch.without([]) is batch


def test_stage_2_takes_a_quiet_partition_for_idle_only_on_its_upstreams_idle_mark() -> None:
    """A partition of the repartition topic that is quiet because its stage-1 worker is behind holds
    the others back however long (without marks it is idle after SD_ALIGN_IDLE_MS); its upstream's
    idle mark lets them go, and a record after the mark makes it hold again."""
    broker = _broker()
    source = MemorySource(broker, REKEYED, GROUP, 64)
    now = [0.0]

    def clock() -> float:  # each look at the clock takes 10 ms: a poll's deadline comes
        now[0] += 0.01
        return now[0]
    aligned = AlignedSource(source, 64, idle_ms=100, clock=clock, idle_mark=is_idle_mark)
    aligned.enabled = True
    aligned.start()

    def put(partition: int, ts: int | None, headers: list[tuple[str, bytes]]) -> None:
        value = orjson.dumps({"timestamp": ts})
        broker.append([OutMessage(REKEYED, None, value, headers, partition=partition)], partition=partition)

    carried = [(CARRIED, b"")]
    put(0, 1000, carried)
    for p in range(1, 12):
        put(p, 500, [TIME_MARK])  # every other partition's upstream has reached 500
    got = aligned.poll_batch()
    assert sorted(got.offsets) == [0] * 11 and 0 not in got.partitions  # 500s out; 1000 waits for the others
    for _ in range(3):
        now[0] += 10.0  # far past idle_ms: quiet is not idle with marks
        assert not len(aligned.poll_batch())
    assert aligned.held_back == 1 and aligned.holding in range(1, 12)  # what stage 2's progress line names
    worker = Worker.__new__(Worker)
    worker.settings, worker.source, worker._upstream, worker.source_topic = \
        stage_settings(_settings("repartitioned")), aligned, 4, TOPIC
    said = worker._waiting_for_marks()
    p = aligned.holding
    assert said is not None and said.startswith(f"stage 2 holds 1 records in event-time order, waiting for partition "
                                                f"{p} of {REKEYED} (bucket {p // 4}, input partition {p % 4} of {TOPIC})")
    for p in range(1, 12):
        put(p, None, [IDLE_MARK])
    got = aligned.poll_batch()
    assert got.partitions.count(0) == 1 and len(got) == 12  # the idle marks, then the event at 1000
    put(5, 2000, carried)
    put(0, 1500, carried)
    got = aligned.poll_batch()
    assert got.partitions == [0]  # 1500 out; 2000 holds until partition 0 says more (it is not idle)


def test_split_buckets_names_the_buckets_a_worker_holds_only_part_of() -> None:
    assert split_buckets(range(8), 4) == []
    assert split_buckets([0, 1, 2, 3, 4, 5], 4) == [1]
    assert split_buckets([], 4) == []


def test_the_stages_read_their_own_topic_and_group_and_compute_their_own_keys() -> None:
    one, two = stage_settings(_settings("repartition")), stage_settings(_settings("repartitioned"))
    assert (one.group_id, one.input_topic, one.align_event_time) == ("g.repartition", TOPIC, "off")
    assert (two.group_id, two.input_topic, two.assignment, two.align_event_time, two.entity_partition_key) == \
        (GROUP, REKEYED, "eager", "on", "")
    assert one.repartition_topic_name == two.repartition_topic_name == REKEYED  # one topic between the stages
    # named after the deployment: two deployments on one input topic (a new-user trial) get two
    other = _settings("repartition", group_id="h")
    assert other.repartition_topic_name == "h.tx.by-merchant_category" != REKEYED
    assert stage_settings(other).repartition_topic_name == "h.tx.by-merchant_category"  # not stage 1's group's
    with pytest.raises(ValueError, match="set SD_REPARTITION_TOPIC"):
        _settings("repartition", group_id="fraud team")  # not a topic name: named by hand
    assert _settings("repartition", group_id="fraud team", repartition_topic="t2").repartition_topic_name == "t2"
    assert stage_settings(_settings("whole")) == _settings("whole")
    assert carried_spec(SPEC, "account_id").output_fields == SPEC.fields_for("account_id")
    assert rest_spec(SPEC, "account_id").output_fields == SPEC.fields_for("merchant_category")
    assert stage_problem(SPEC, "account_id", "merchant_category") is None
    assert "entity keys" in str(stage_problem(SPEC, "account_id", "terminal_id"))
    assert "no entity features" in str(stage_problem(None, "account_id", "merchant_category"))
    labelled = dataclasses.replace(SPEC, label_keys=("merchant_category",))  # label features: the key's stage's
    assert stage_problem(labelled, "account_id", "merchant_category") is None
    one_spec, two_spec = carried_spec(labelled, "account_id"), rest_spec(labelled, "account_id")
    assert (one_spec.label_keys, two_spec.label_keys) == ((), ("merchant_category",))
    assert one_spec.fingerprint == carried_spec(SPEC, "account_id").fingerprint  # no label key of its own
    assert two_spec.all_fields == [*SPEC.fields_for("merchant_category"), *labelled.label_fields]
    both = dataclasses.replace(SPEC, label_keys=("account_id", "merchant_category"))
    assert carried_spec(both, "account_id").all_fields == [*SPEC.fields_for("account_id"),
                                                          *[f for f in both.label_fields if f.startswith("account_id")]]
    with pytest.raises(ValueError, match="SD_REPARTITION_KEY"):
        _settings("repartition", repartition_key="")


# ---- both stages' workers -----------------------------------------------------------------------
def _stage1(broker: MemoryBroker, control: MemoryControl, **overrides: Any) -> Worker:
    settings = _settings("repartition", **overrides)
    worker = Worker(settings, control, MemorySource(broker, TOPIC, f"{GROUP}.repartition", settings.batch_size),
                    MemoryTransactionalPublisher(broker))
    worker.start()
    return worker


def _stage2(broker: MemoryBroker, control: MemoryControl, **overrides: Any) -> Worker:
    settings = _settings("repartitioned", **overrides)
    worker = Worker(settings, control, MemorySource(broker, REKEYED, GROUP, settings.batch_size),
                    MemoryPublisher(broker))
    worker.start()
    return worker


def _drain(worker: Worker) -> None:
    for _ in range(400):
        if not worker.run_once() and not worker.hold.active and not worker.run_once():
            return
    raise AssertionError("the worker did not drain its topic")


def _broker() -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 4)
    broker.create_topic(REKEYED, 4 * 3)
    for topic in (ALERTS, DLQ):
        broker.create_topic(topic)
    return broker


def test_two_stages_give_a_backlog_of_four_partitions_offlines_features_and_alerts(two_keys: Bundle) -> None:
    """Stage 1 computes the account history and forwards; stage 2, holding every bucket (one
    worker here: whole buckets), merges each bucket's four partitions in event time and computes
    the merchant history: every feature equals offline enrichment of the time-ordered file, bit for
    bit, and the alerts are offline scoring's."""
    events = _raw(600, seed=32)
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    broker = _broker()
    broker.append([_message(e) for e in events])  # keyed by account: four partitions, each in time order
    control = MemoryControl()
    control.publish(two_keys)
    first = _stage1(broker, control, align_idle_ms=50)
    seen1: list[dict[str, Any]] = []
    assert first.enricher is not None
    first.enricher.on_enriched = seen1.extend
    _drain(first)
    rekeyed = broker.read(REKEYED)
    marks = marked_rows([r.headers for r in rekeyed])
    assert len(rekeyed) - len(marks) == len(events) and not broker.read(ALERTS)  # stage 1 alerts nothing
    second = _stage2(broker, control, align_idle_ms=50)
    seen2: list[dict[str, Any]] = []
    assert second.enricher is not None
    second.enricher.on_enriched = seen2.extend
    _drain(second)  # the newest events wait until stage 1 says its partitions are idle
    wait_until(lambda: first.run_once() == 0 and all(part and is_idle_mark(part[-1].headers)
                                                      for part in broker.topics[REKEYED]),
               timeout_s=30, message="stage 1's idle marks")
    _drain(second)

    offline = enrich_history(SPEC, events)
    merged = {e["event_id"]: dict(e) for e in seen1}
    for e in seen2:
        merged[e["event_id"]].update(e)
    assert len(merged) == len(offline) and all(merged[e["event_id"]] == e for e in offline)
    scores = score_events(two_keys, events).scores
    expected = {e["event_id"] for e, s in zip(events, scores, strict=True) if s > two_keys.threshold}
    records = [orjson.loads(r.value) for r in broker.read(ALERTS) if r.value is not None]
    assert expected and {a["event_id"] for a in records} == expected
    where = {orjson.loads(r.value)["event_id"]: (p, o)  # each event's place in the input topic
             for p, part in enumerate(broker.topics[TOPIC]) for o, r in enumerate(part)}
    assert all((a["topic"], a["partition"], a["offset"]) == (TOPIC, *where[a["event_id"]]) for a in records)


def _message(event: dict[str, Any]) -> Any:
    return OutMessage(TOPIC, str(event["account_id"]).encode(), orjson.dumps(event), [])


def test_a_record_of_the_repartition_topic_without_stage_1s_features_is_a_dead_letter(two_keys: Bundle) -> None:
    broker = _broker()
    control = MemoryControl()
    control.publish(two_keys)
    broker.append([OutMessage(REKEYED, b"m", orjson.dumps(_raw(1, seed=33)[0]), [])], partition=0)
    for m in idle_marks(range(4), REKEYED, 4, 3)[1:]:  # what a stage 1 at its end says of every other partition
        broker.append([m], partition=m.partition)
    worker = _stage2(broker, control)
    wait_until(lambda: worker.run_once() > 0, timeout_s=30, message="the record released")
    dead = broker.read(DLQ)
    assert len(dead) == 1 and dict(dead[0].headers)["sd.error.reason"] == RejectReason.NO_CARRIED_FEATURES.encode()


def test_stage_1_refuses_to_run_without_exactly_once_delivery(two_keys: Bundle) -> None:
    broker = _broker()
    control = MemoryControl()
    control.publish(two_keys)
    settings = _settings("repartition")
    worker = Worker(settings, control, MemorySource(broker, TOPIC, GROUP, 64), MemoryPublisher(broker))
    with pytest.raises(ConfigError, match="SD_DELIVERY=exactly_once"):
        worker.start()


def test_stage_2_warns_of_a_split_bucket_within_a_second_of_getting_its_partitions(
        caplog: pytest.LogCaptureFixture) -> None:
    """A trial's short run ended before the split-bucket WARNING (looked at every 10 s): while
    nothing is assigned yet the worker looks again every second."""
    import logging

    class Owned:
        parts: set[int] = set()

        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition(REKEYED, p) for p in self.parts}

    owned = Owned()
    worker = Worker.__new__(Worker)
    worker.settings = stage_settings(_settings("repartitioned"))
    worker._upstream = 4
    worker._sharing_at, worker._sharing_warned, worker._sharing_assigned = float("-inf"), False, False
    worker.source = AlignedSource(owned, batch_size=10)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="stream_detector.worker"):
        worker._check_sharing(0.0)  # not joined yet
        owned.parts = {0, 1, 2, 3, 4, 5}  # bucket 0 whole, bucket 1 half
        worker._check_sharing(1.0)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "bucket(s) 1 of the repartition topic" in warned[0]


@pytest.mark.parametrize("stage", ["whole", "repartition"])
def test_an_event_nested_thousands_deep_is_a_dead_letter_not_a_stopped_worker(two_keys: Bundle, stage: str) -> None:
    """Found by a new-user trial: one event with a field nested 1,000 deep stopped a worker with
    event-time alignment (and stage 1's time marks read the same way) on RecursionError, at every
    restart, so its partition never moved again. It is a dead letter; the events around it are
    handled."""
    events = _raw(40, seed=34)
    deep = [b'{"event_id": "deep-%d", "account_id": "a-1", "x": ' % n + b"[" * n + b"]" * n + b"}"
            for n in (1000, 5000)]
    broker = _broker()
    broker.append([_message(e) for e in events[:20]])
    broker.append([OutMessage(TOPIC, b"a-1", v, []) for v in deep], partition=0)
    broker.append([_message(e) for e in events[20:]])
    control = MemoryControl()
    control.publish(two_keys)
    if stage == "whole":
        settings = _settings("whole", align_event_time="on", align_idle_ms=50)
        worker = Worker(settings, control, MemorySource(broker, TOPIC, GROUP, 64), MemoryPublisher(broker))
        worker.start()
    else:
        worker = _stage1(broker, control, align_idle_ms=50)
    wait_until(lambda: not worker.run_once() and worker.stats.events == len(events) + 2,
               timeout_s=30, message="every record handled")
    reasons = [dict(r.headers)["sd.error.reason"] for r in broker.read(DLQ)]
    assert sorted(reasons) == [b"invalid_json", b"wrong_type"] and worker.stats.rejected == 2
