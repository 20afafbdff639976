"""The detection pipeline end to end on the real broker and Redis."""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import orjson
import pytest

from stream_detector.kafka_util import committed_offsets, end_offsets, group_owners, lag, read_all
from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.pipeline.score import Scorer
from stream_detector.producer import EventProducer
from stream_detector.schema import Alert, DeadLetterHeaders
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
from tests.fixtures import TRANSPORTS
from tests.helpers import anomaly, wait_until

# every test on both Kafka client libraries (SD_TRANSPORT): the guarantees must not depend on it
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("transport", TRANSPORTS)]


def _drained(settings: Settings) -> bool:
    return lag(settings, settings.group_id, settings.input_topic) == 0


def _alerts(settings: Settings) -> list[dict[str, object]]:
    return [orjson.loads(r.value) for r in read_all(settings, settings.alerts_topic)]


def _traffic(n: int, seed: int, n_anomalies: int) -> tuple[list[dict[str, object]], set[str]]:
    events, _ = Simulator(seed=seed, accounts=300, run_id=f"n{seed}").batch(n, 0.0)
    injected = [anomaly(f"bad-{seed}-{i}", f"acct-{i:05d}") for i in range(n_anomalies)]
    mixed = events[: n // 2] + injected + events[n // 2:]
    return mixed, {str(e["event_id"]) for e in injected}


def test_known_anomalies_give_exactly_the_expected_alerts(settings, published, bundle: Bundle, start_worker):
    events, injected = _traffic(3000, seed=11, n_anomalies=12)
    expected_scores = score_events(bundle, events).scores
    expected = {str(e["event_id"]) for e, s in zip(events, expected_scores, strict=True) if s > bundle.threshold}
    assert injected <= expected, "the crafted anomalies must score above the threshold"
    assert len(expected) < 0.02 * len(events), "normal traffic must mostly pass"

    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    worker = start_worker(settings)
    assert type(worker.worker.source).__name__ == {"kafka-python": "KafkaSource", "confluent": "ConfluentSource"}[
        settings.transport], "the transport parameter reaches the worker"
    wait_until(lambda: _drained(settings), message="all offsets committed")
    worker.stop()

    alerts = _alerts(settings)
    assert {a["event_id"] for a in alerts} == expected
    assert len(alerts) == len(expected), "no duplicate alerts in a clean run"
    by_id = {str(e["event_id"]): e for e in events}
    scorer = Scorer(bundle)
    threshold = published.threshold()
    assert threshold is not None
    for a in alerts:
        Alert.model_validate(a)  # complete and well-typed
        assert a["event"] == by_id[a["event_id"]]
        assert a["account_id"] == by_id[a["event_id"]]["account_id"]
        assert a["model_version"] == bundle.version
        assert a["threshold"] == pytest.approx(bundle.threshold)
        assert a["threshold_version"] == threshold.version
        assert a["score"] > a["threshold"]
        assert a["topic"] == settings.input_topic and a["offset"] >= 0 and 0 <= a["partition"] < 4
        assert 1 <= len(a["top_features"]) <= settings.top_features
        shares = [f["share"] for f in a["top_features"]]
        assert 0 < sum(shares) <= 1 + 1e-9
        # why: the fields whose typical values clear the alert (Scorer.why), each with what it took off the score
        x, _ = bundle.spec.transform([by_id[a["event_id"]]])  # the simulator's values are already typed
        assert float(scorer.errors(x).mean(dtype=np.float64)) == pytest.approx(a["score"], rel=1e-6)
        named = [scorer.units.index(f["feature"]) for f in a["top_features"]]
        assert all(f["fields"] == [f["feature"]] for f in a["top_features"])  # no entity features: a field alone
        typical = np.isin(scorer.column_unit, named)
        x[0, typical] = scorer.typical[typical]  # type: ignore[index]
        after = float(scorer.errors(x).mean(dtype=np.float64))
        taken = sum(f["contribution"] for f in a["top_features"])
        assert taken == pytest.approx(a["score"] - after, rel=1e-3, abs=1e-3)
        assert a["top_features"][-1]["score_after"] == pytest.approx(after, rel=1e-3, abs=1e-3)
        assert after <= a["threshold"] or len(named) == settings.top_features or a["top_features"][-1][
            "contribution"] is not None  # stopped: no other field lowered it (said by score_after > threshold)
    crafted = next(a for a in alerts if a["event_id"] in injected)
    assert crafted["top_features"][0]["feature"] in {"amount", "merchant_category", "country",
                                                      "distance_from_home_km", "tx_count_1h", "amount_to_avg",
                                                      "seconds_since_last", "device_new"}
    ends = end_offsets(settings, settings.input_topic)
    assert committed_offsets(settings, settings.group_id, settings.input_topic) == ends
    assert sum(ends.values()) == len(events)
    assert worker.worker.stats.events == len(events)


BAD = {
    "invalid_json": b'{"event_id": "x1", "amount": ',
    "not_an_object": b"[1, 2, 3]",
    "missing_event_id": b'{"amount": 12.5}',
    "wrong_type": b'{"event_id": 42, "amount": 1}',
    "non_finite_number": b'{"event_id": "nan-1", "amount": NaN}',
    "oversize": b'{"event_id": "big", "blob": "' + b"x" * 70_000 + b'"}',
    "unknown_schema": b'{"event_id": "s1", "schema_version": 7}',
    "invalid_timestamp": b'{"event_id": "t1", "timestamp": "yesterday"}',
}


def test_bad_events_go_to_the_dead_letter_topic_with_reasons(settings, published, bundle, start_worker):

    events, injected = _traffic(400, seed=12, n_anomalies=3)
    numeric_as_text = {**events[0], "event_id": "text-amount", "amount": "a lot"}
    raw_good = [orjson.dumps(e) for e in events]
    raw = raw_good[:200] + list(BAD.values()) + [orjson.dumps(numeric_as_text)] + raw_good[200:] + [b"\xff\xfe\x00"]
    worker = _drain_values(settings, start_worker, raw)

    dead = read_all(settings, settings.dlq_topic)
    reasons = {}
    for record in dead:
        headers = dict(record.headers)
        reasons[record.value] = headers[DeadLetterHeaders.REASON].decode()
        assert headers[DeadLetterHeaders.MESSAGE]
        assert headers[DeadLetterHeaders.TOPIC].decode() == settings.input_topic
        assert int(headers[DeadLetterHeaders.OFFSET]) >= 0
    for reason, value in BAD.items():
        assert reasons.get(value) == reason, reason
    assert reasons[orjson.dumps(numeric_as_text)] == "wrong_type"
    assert reasons[b"\xff\xfe\x00"] == "invalid_json"
    assert len(dead) == len(BAD) + 2
    alerts = {a["event_id"] for a in _alerts(settings)}
    assert injected <= alerts, "good events around the bad ones are still scored"
    stats = worker.worker.stats
    assert stats.scored == len(events) and stats.rejected == len(BAD) + 2 and stats.events == len(raw)


def test_an_event_without_any_input_field_is_a_dead_letter_not_a_score(settings, published: ControlPlane, bundle,
                                                                       start_worker):
    """A producer writing other field names (``amt``, camelCase), or only nulls, gave events the
    model scored on imputed values alone — at threshold 0 each was an alert. Now each is a dead
    letter ``no_features`` naming the fields, and the good events around them are scored."""

    events, _ = _traffic(300, seed=16, n_anomalies=2)
    published.set_threshold(0.0, bundle.version, "pytest", "flag every scored event")
    misnamed = {"event_id": "camel-1", "account_id": "acct-00001", "timestamp": events[0]["timestamp"],
                "amt": 12.5, "merchantCategory": "fuel"}
    nulls = {"event_id": "null-1", "amount": None, "country": None}
    raw = [orjson.dumps(e) for e in events[:150]] + [orjson.dumps(misnamed), orjson.dumps(nulls)] + \
        [orjson.dumps(e) for e in events[150:]]
    worker = _drain_values(settings, start_worker, raw)

    dead = {record.value: dict(record.headers) for record in read_all(settings, settings.dlq_topic)}
    assert set(dead) == {orjson.dumps(misnamed), orjson.dumps(nulls)}
    count = len(bundle.schema.input_fields)
    for headers in dead.values():
        assert headers[DeadLetterHeaders.REASON] == b"no_features"
        assert headers[DeadLetterHeaders.MESSAGE].decode().startswith(
            f"none of the model's {count} input fields is present (expected e.g. 'amount', ")
    assert b"the event has 'amt', 'merchantCategory', 'account_id', ...)" in dead[orjson.dumps(misnamed)][
        DeadLetterHeaders.MESSAGE]
    assert dead[orjson.dumps(nulls)][DeadLetterHeaders.MESSAGE].endswith(b"'amount', 'country' are null)")
    alerts = {a["event_id"] for a in _alerts(settings)}
    assert alerts == {str(e["event_id"]) for e in events}  # every good event scored (threshold 0), no other
    stats = worker.worker.stats
    assert stats.scored == len(events) and stats.rejected_by_reason == {"no_features": 2}


def test_threshold_change_in_redis_changes_what_is_flagged_live(settings, published: ControlPlane, bundle,
                                                                start_worker):
    events, _ = _traffic(300, seed=13, n_anomalies=0)
    worker = start_worker(settings)
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events[:150])
    wait_until(lambda: _drained(settings), message="first half committed")
    first = _alerts(settings)
    assert len(first) < 10

    new_version = published.set_threshold(0.0, bundle.version, "pytest", "flag everything")  # scores are > 0
    wait_until(lambda: worker.worker.thresholds.snapshot.threshold.version == new_version,
               message="worker sees the new threshold")
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events[150:])
    wait_until(lambda: _drained(settings), message="second half committed")
    worker.stop()
    later = [a for a in _alerts(settings) if a["threshold_version"] == new_version]
    assert {a["event_id"] for a in later} == {str(e["event_id"]) for e in events[150:]}
    assert all(a["threshold"] == 0.0 for a in later)
    history = published.threshold_history()
    assert history[0]["version"] == new_version and history[0]["set_by"] == "pytest"
    # every digit, as numbers (a new-user trial saw old_value as text and values cut to 14 digits)
    assert history[0]["old_value"] == bundle.threshold and history[0]["value"] == 0.0
    assert history[1]["old_value"] is None and history[1]["value"] == bundle.threshold


def test_two_workers_split_a_four_partition_topic(settings, published, bundle, start_worker, caplog):
    caplog.set_level(logging.INFO, logger="stream_detector")
    events, injected = _traffic(4000, seed=14, n_anomalies=20)
    expected_scores = score_events(bundle, events).scores
    expected = {str(e["event_id"]) for e, s in zip(events, expected_scores, strict=True) if s > bundle.threshold}
    one = start_worker(settings)
    two = start_worker(settings)
    wait_until(lambda: len(one.worker.source.assignment()) + len(two.worker.source.assignment()) == 4
               and one.worker.source.assignment() and two.worker.source.assignment(),
               message="both workers assigned")

    def held() -> dict[int, set[int]]:  # per worker, its partitions
        return {k: {tp.partition for tp in w.worker.source.assignment()} for k, w in enumerate((one, two))}

    # which member holds which partition, as `stream-detector lag` shows it (a trial: only the logs said)
    wait_until(lambda: (o := group_owners(settings, settings.group_id, settings.input_topic)).state == "Stable"
               and o.members == 2 and len(o.owners) == 4, message="the group stable, every partition held")
    owners = group_owners(settings, settings.group_id, settings.input_topic)
    by_member: dict[str, set[int]] = defaultdict(set)
    for partition, members in owners.owners.items():
        assert len(members) == 1, (partition, members)
        by_member[members[0].member_id].add(partition)
    assert sorted(by_member.values(), key=min) == sorted(held().values(), key=min)
    logged = " ".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("assigned ["))
    assert all(f"as member {m}" in logged for m in by_member)  # the log names the member lag shows
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    wait_until(lambda: _drained(settings), message="all offsets committed")
    one.stop()
    two.stop()
    assert one.worker.stats.events > 0 and two.worker.stats.events > 0
    assert one.worker.stats.events + two.worker.stats.events >= len(events)
    assert {a["event_id"] for a in _alerts(settings)} == expected
    assert injected <= expected
    # each partition change is logged, by both transports (kafka-python logged none: a new-user trial)
    assigned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("assigned [")]
    assert assigned and set().union(*(orjson.loads(m.removeprefix("assigned ").split(" as member ")[0])
                                      for m in assigned)) == {0, 1, 2, 3}


def test_partitions_added_to_the_input_topic_are_consumed_by_the_running_worker(settings: Settings, bundle,
                                                                                  start_worker):
    """An operator scales out by adding partitions to the input topic. The worker sees them within
    ``SD_METADATA_MAX_AGE_MS`` and consumes and commits them. On kafka-python 3.0.12 the group
    leader's rejoin after such a metadata change could be left unfinished: every commit then failed
    with ``RebalanceInProgressError`` and the new partitions were never assigned
    (``transport.kafka_python.finish_rejoin``)."""
    from kafka.admin import KafkaAdminClient, NewPartitions

    from stream_detector.topics import ensure_topics

    s = settings.model_copy(update={"metadata_max_age_ms": 500})
    ControlPlane.from_url(s.redis_url, s.redis_prefix).publish(bundle, set_by="pytest")
    ensure_topics(s, [s.input_topic], partitions=1)
    ensure_topics(s, [s.alerts_topic, s.dlq_topic])
    first, _ = _traffic(300, seed=31, n_anomalies=0)
    with EventProducer(s, s.input_topic) as producer:
        producer.send(first)
    running = start_worker(s)
    wait_until(lambda: _drained(s), message="the one partition's events committed")
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    try:
        admin.create_partitions({s.input_topic: NewPartitions(total_count=4)})
    finally:
        admin.close()
    events, injected = _traffic(3000, seed=32, n_anomalies=10)
    with EventProducer(s, s.input_topic) as producer:  # keyed by account: over the four partitions
        producer.send(events)
    wait_until(lambda: len(running.worker.source.assignment()) == 4, message="the added partitions assigned")
    wait_until(lambda: _drained(s), message="every partition's events committed")
    running.stop()
    committed = committed_offsets(s, s.group_id, s.input_topic)
    assert committed == end_offsets(s, s.input_topic) and len(committed) == 4
    assert all(offset > 0 for offset in committed.values())
    assert injected <= {str(a["event_id"]) for a in _alerts(s)}


def test_worker_scores_match_offline_scores(settings, published: ControlPlane, bundle, start_worker):
    events, _ = _traffic(500, seed=15, n_anomalies=5)
    published.set_threshold(0.0, bundle.version, "pytest", "flag everything to compare scores")
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    worker = start_worker(settings)
    wait_until(lambda: _drained(settings), message="all offsets committed")
    worker.stop()
    offline = dict(zip((str(e["event_id"]) for e in events), score_events(bundle, events).scores.tolist(), strict=True))
    alerts = _alerts(settings)
    assert len(alerts) == len(events)
    worst = max(abs(a["score"] - offline[a["event_id"]]) / max(1e-9, abs(offline[a["event_id"]])) for a in alerts)
    assert worst < 1e-5 and all(math.isfinite(a["score"]) for a in alerts)
    assert np.isclose(sorted(offline.values())[-1], max(a["score"] for a in alerts), rtol=1e-5)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_undeliverable_alerts_hold_the_batch_and_lose_nothing(settings: Settings, published, bundle, start_worker,
                                                              delivery):
    """The alerts topic disappears: the batch is held (not committed, partitions paused, memory
    bounded), and once the topic is back every anomaly is alerted; exactly-once: exactly once."""
    from kafka import KafkaAdminClient

    from stream_detector.topics import ensure_topics

    settings = settings.model_copy(update={"delivery": delivery, "delivery_timeout_s": 2.0, "batch_size": 128,
                                           "worker_id": "held-0"})
    events, injected = _traffic(1000, seed=16, n_anomalies=8)
    expected_scores = score_events(bundle, events).scores
    expected = {str(e["event_id"]) for e, s in zip(events, expected_scores, strict=True) if s > bundle.threshold}
    running = start_worker(settings)
    wait_until(lambda: running.worker.source.assignment(), message="worker assigned")
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.delete_topics([settings.alerts_topic])
        wait_until(lambda: settings.alerts_topic not in admin.list_topics(), message="alerts topic gone")
        with EventProducer(settings, settings.input_topic) as producer:
            producer.send(events)
        stats = running.worker.stats
        wait_until(lambda: stats.held_batches >= 2 and stats.delivery_failures >= 1, timeout_s=60,
                   message="worker holds the batch")
        assert sum(committed_offsets(settings, settings.group_id, settings.input_topic).values()) < len(events)
        assert running.worker.source.paused(), "partitions paused while held"
        ensure_topics(settings, [settings.alerts_topic])
    finally:
        admin.close()
    wait_until(lambda: _drained(settings), timeout_s=120, message="resumed and drained once alerts are writable")
    running.stop()
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    alerted = [orjson.loads(r.value)["event_id"] for r in read_all(settings, settings.alerts_topic,
                                                                   isolation_level=isolation)]
    assert injected <= expected and set(alerted) == expected, "every anomaly alerted, nothing else"
    if delivery == "exactly_once":
        assert len(alerted) == len(expected), "read_committed readers see each alert once"


def test_a_batch_polled_before_a_rebalance_is_abandoned_not_committed(settings, published, bundle, start_worker):
    """The zombie path: a worker polls a batch, the group rebalances (a second worker joins) before
    the batch is committed; the worker must see that its membership moved, commit nothing for that
    batch, rewind to the group's committed offsets, and the group must still process every event."""
    from stream_detector.worker import Worker

    events, injected = _traffic(3000, seed=21, n_anomalies=10)
    first = Worker(settings.model_copy(update={"worker_id": "zombie-a"}))
    first.start()
    try:
        with EventProducer(settings, settings.input_topic) as producer:
            producer.send(events)
        batch = wait_until(lambda: (lambda b: b if len(b) else None)(first.source.poll_batch()),
                           message="a first batch")
        second = start_worker(settings.model_copy(update={"worker_id": "zombie-b"}))  # joins: the group rebalances
        first.source.pause_all()  # take part in the rebalance without consuming (anything polled is rewound)
        wait_until(lambda: (first.source.poll_while_paused(100), not first.source.still_member(batch))[-1],
                   message="the first worker's membership moved")
        first.source.resume_all()
        first.handle(batch)
        assert first.stats.abandoned_batches == 1 and first.stats.batches == 0  # published, not committed
        wait_until(lambda: (first.run_once(), _drained(settings))[-1], message="the group processed everything")
        second.stop()
    finally:
        first.close()
    flagged = {a["event_id"] for a in _alerts(settings)}
    assert injected <= flagged  # nothing lost: the abandoned batch was read again
    # the records of the abandoned batch on partitions the first worker kept were read again (rewound),
    # not skipped: between them the two workers committed every event at least once
    assert first.stats.events + second.worker.stats.events >= len(events)


def test_a_commit_refused_by_a_rebalance_is_read_again_where_the_worker_keeps_the_partitions(settings, published,
                                                                                          bundle):
    """A batch that passes the membership check but whose commit the broker then refuses (a
    rebalance began in between: ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS) while the worker keeps
    its partitions (cooperative-sticky), its position past the batch. The refusal is injected at
    the consumer's commit, once; the rest is the real broker. Before the fix the refused commit
    was only dropped: when the batch held the last records of a partition nothing ever committed
    them and the backlog never drained (CI, 2026-12-03). Now the worker rewinds those partitions
    to the committed offsets and reads the batch again (at least once: its alerts twice)."""
    from stream_detector.transport.base import CommitRefused
    from stream_detector.worker import Worker

    events, injected = _traffic(300, seed=23, n_anomalies=4)
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    wait_until(lambda: sum(end_offsets(settings, settings.input_topic).values()) == len(events),
               message="every event in the topic")
    first = Worker(settings.model_copy(update={"worker_id": "refused", "batch_size": 4096,
                                                "batch_max_wait_ms": 2000}))
    first.start()
    try:
        batch = wait_until(lambda: (lambda b: b if len(b) else None)(first.source.poll_batch()),
                           message="a first batch")
        while len(batch) < len(events):  # the whole backlog in one batch: the last records of every partition
            more = first.source.poll_batch()
            batch = batch if not len(more) else _joined(batch, more)
        commit, refused = first.source.commit, []

        def refuse_once(offsets):
            if not refused:
                refused.append(dict(offsets))
                raise CommitRefused("injected: ILLEGAL_GENERATION (a rebalance began after the membership check)")
            commit(offsets)
        first.source.commit = refuse_once
        first.handle(batch)
        assert refused == [batch.next_offsets()]
        assert committed_offsets(settings, settings.group_id, settings.input_topic) == {}  # nothing committed
        wait_until(lambda: (first.run_once(), _drained(settings))[-1], message="the batch read again and committed")
    finally:
        first.close()
    assert first.stats.events == 2 * len(events)  # the whole batch again, no more
    flagged = [a["event_id"] for a in _alerts(settings)]
    assert all(flagged.count(event_id) == 2 for event_id in injected)


def _joined(a, b):
    """Two polled batches of one topic as one."""
    from stream_detector.transport.base import Batch

    return Batch(a.topic, a.partitions + b.partitions, a.offsets + b.offsets, a.keys + b.keys, a.values + b.values,
                 a.timestamps + b.timestamps, a.headers + b.headers, a.polled_at, a.group)


def _drain_values(settings, start_worker, raw: list[bytes]):
    """Send ``raw`` record values to the input topic, run a worker until every offset is committed."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=2_000_000)
    for value in raw:
        producer.send(settings.input_topic, value=value)
    producer.flush()
    producer.close()
    worker = start_worker(settings)
    wait_until(lambda: _drained(settings), message="all offsets committed")
    worker.stop()
    return worker
