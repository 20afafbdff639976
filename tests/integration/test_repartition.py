"""Two stages through a repartition topic on the real broker and Redis (``SD_STAGE``,
``pipeline/repartition.py``): several workers per stage give the features of offline enrichment of
the time-ordered file, bit for bit, for a key the input topic is not keyed by."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from stream_detector.entity import enrich_history
from stream_detector.errors import DeliveryError
from stream_detector.kafka_util import beginning_offsets, committed_offsets, end_offsets, lag, read_all
from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.pipeline.align import AlignedSource
from stream_detector.pipeline.repartition import marked_rows, split_buckets, stage_settings
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.topics import topic_partitions
from stream_detector.transport.factory import make_sink
from stream_detector.worker import Worker
from tests.fixtures import transports_once
from tests.helpers import wait_until
from tests.integration.test_entity import (
    TWO_KEYS,
    _Collector,
    _publish,
    _raw,
    _small_batches,
    run_worker,
    two_keys_bundle,
)

pytestmark = pytest.mark.integration
__all__ = ["run_worker", "two_keys_bundle"]  # fixtures of test_entity.py, used here by name


def _stages(settings: Settings, n1: int, n2: int, buckets: int) -> tuple[Settings, list[Worker], list[Worker]]:
    base = _small_batches(settings).model_copy(update={"repartition_key": "merchant_category",
                                                        "repartition_buckets": buckets,
                                                        "repartition_purge_ms": 0})  # the tests read the topic back
    first = [Worker(base.model_copy(update={"stage": "repartition", "delivery": "exactly_once",
                                            "worker_id": f"stage1-{i}"})) for i in range(n1)]
    second = [Worker(base.model_copy(update={"stage": "repartitioned", "worker_id": f"stage2-{i}"}))
              for i in range(n2)]
    return base, first, second


def _settled(settings: Settings, group: str, topic: str) -> bool:
    """Every record of ``topic``, a topic written in transactions, committed by ``group``: each
    partition ends with a transaction's commit marker, which the last record's offset + 1 does not
    pass (a partition never written: end 0)."""
    ends, done = end_offsets(settings, topic), committed_offsets(settings, group, topic)
    return all(done.get(tp, 0) >= end - 1 for tp, end in ends.items()) and \
        sum(done.get(tp, 0) for tp in ends) > 0


def _events_in(settings: Settings, topic: str, isolation: str = "read_committed") -> list[Any]:
    """The events of the repartition ``topic`` a reader with ``isolation`` sees (its marks left out)."""
    records = read_all(settings, topic, isolation_level=isolation)
    marks = set(marked_rows([r.headers for r in records]))
    return [r for i, r in enumerate(records) if i not in marks]


@pytest.mark.parametrize("transport", transports_once())
def test_two_stages_of_two_workers_replay_a_backlog_like_the_time_ordered_file(
        settings: Settings, run_worker: Any, two_keys_bundle: Bundle, env_for: Any) -> None:
    """Issue 16: a backlog keyed by account on four partitions, a model with account and merchant
    history. Two stage-1 workers (exactly once) forward it with the account features to a
    repartition topic of 2 buckets x 4 partitions; two stage-2 workers (range assignor: one whole
    bucket each) merge their bucket's partitions in event time. Every event's features equal
    offline enrichment of the time-ordered file bit for bit (account from stage 1, merchant from
    stage 2), and the alerts are offline scoring's, once each. `stream-detector lag` with the stages'
    settings reports stage 1's group on the input topic and stage 2's on the repartition topic."""
    events = _raw(400, seed=29)
    times = [e["timestamp"] for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    base, first, second = _stages(settings, 2, 2, buckets=2)
    _publish(base, two_keys_bundle)
    with EventProducer(base, base.input_topic) as producer:
        producer.send(events)
    seen = {id(w): _Collector() for w in first + second}
    for worker in second + first:  # stage 2 first: it makes the repartition topic (a test of 15e3522's missed it)
        worker.start()
        assert worker.enricher is not None
        worker.enricher.on_enriched = seen[id(worker)]
    assert all(isinstance(w.source, AlignedSource) and w.source.peers is None for w in second)  # whole buckets
    assert not any(isinstance(w.source, AlignedSource) for w in first)
    rekeyed = base.repartition_topic_name
    assert topic_partitions(base, rekeyed) == 8 and {w.settings.input_topic for w in second} == {rekeyed}
    for worker in first + second:
        run_worker.run_started(worker)
    wait_until(lambda: lag(base, f"{base.group_id}.repartition", base.input_topic) == 0, timeout_s=120,
               message="stage 1 drained")
    wait_until(lambda: _settled(base, base.group_id, rekeyed), timeout_s=120, message="stage 2 drained")

    held = [{tp.partition for tp in w.source.assignment()} for w in second]
    assert sorted(map(len, held)) == [4, 4] and not any(split_buckets(h, 4) for h in held)  # whole buckets

    def marked(partition: int) -> float:  # stage 1's idle marks for an input partition, by its metric
        return sum(w.metrics.registry.get_sample_value("stream_detector_repartition_idle_marks_total",
                                                       {"partition": str(partition)}) or 0.0 for w in first)

    # drained and quiet: every input partition is marked idle (counted, as operators see it)
    wait_until(lambda: all(marked(p) >= 1 for p in range(4)), timeout_s=60, message="idle marks for every partition")
    merged: dict[str, dict[str, Any]] = {}
    for worker in first + second:
        for event_id, event in seen[id(worker)].by_id().items():
            merged.setdefault(event_id, {}).update(event)
    offline = enrich_history(TWO_KEYS, events)
    assert len(merged) == len(offline)
    different = [e["event_id"] for e in offline if merged[e["event_id"]] != e]
    assert not different, f"{len(different)} events differ from offline enrichment, e.g. {different[:3]}"
    assert len(_events_in(base, rekeyed)) == len(events)  # each forwarded once
    scores = score_events(two_keys_bundle, events).scores
    expected = {e["event_id"] for e, s in zip(events, scores, strict=True) if s > two_keys_bundle.threshold}
    records = [orjson.loads(r.value) for r in read_all(base, base.alerts_topic)]
    assert expected and sorted(a["event_id"] for a in records) == sorted(expected)
    assert {a["topic"] for a in records} == {base.input_topic}  # alerts point at the event in the input topic

    for worker, thread in run_worker.started:  # no more marks: each partition ends with a commit marker
        if worker in first:
            worker.stop()
            thread.join(timeout=60)
            assert not thread.is_alive()
    wait_until(lambda: _settled(base, base.group_id, rekeyed), timeout_s=60, message="stage 2 drained the last marks")
    env = {**env_for(first[0].settings), "SD_STAGE": "repartition", "SD_GROUP_ID": base.group_id,
           "SD_DELIVERY": "exactly_once", "SD_INPUT_TOPIC": base.input_topic}
    lags = [orjson.loads(subprocess.run([sys.executable, "-m", "stream_detector.cli", "lag", *where, "--json"],
                                        env=env, capture_output=True, text=True, timeout=120, check=True).stdout)
            for where in ([], ["repartition"])]
    assert (lags[0]["group"], lags[0]["topic"], lags[0]["lag"]) == (f"{base.group_id}.repartition", base.input_topic, 0)
    assert (lags[1]["group"], lags[1]["topic"]) == (base.group_id, rekeyed)  # stage 2's
    # drained: each partition ends one offset past the committed one, its transaction's commit marker,
    # which is no record to read (a headline "lag 48" on a drained topic before 2026-12-05)
    assert [p["end"] - p["committed"] for p in lags[1]["partitions"]] == [1] * 8
    assert [p["lag"] for p in lags[1]["partitions"]] == [0] * 8 and lags[1]["lag"] == 0
    unstaged = subprocess.run([sys.executable, "-m", "stream_detector.cli", "lag"], capture_output=True, text=True,
                              env={k: v for k, v in env.items() if k != "SD_STAGE"}, timeout=120, check=True)
    # SD_STAGE left out: the workers' group has read nothing of the input topic; the note names stage 1's
    assert f"group {base.group_id}.repartition has, stage 1 of a two-stage deployment" in unstaged.stderr


def test_stage_2_deletes_the_records_of_the_repartition_topic_it_has_committed(
        settings: Settings, run_worker: Any, two_keys_bundle: Bundle) -> None:
    """Kafka Streams' purge (``SD_REPARTITION_PURGE_MS``, ``topics.RecordPurge``): once stage 2
    has committed the repartition topic, each partition's records below its committed offset are
    deleted (the log start offset moves up to it), and the alerts are all there."""
    events = _raw(200, seed=32)
    base, [first], _ = _stages(settings, 1, 0, buckets=1)
    second = Worker(base.model_copy(update={"stage": "repartitioned", "worker_id": "stage2-0",
                                            "repartition_purge_ms": 1}))
    _publish(base, two_keys_bundle)
    with EventProducer(base, base.input_topic) as producer:
        producer.send(events)
    rekeyed = base.repartition_topic_name
    for worker in (second, first):
        run_worker(worker)
    wait_until(lambda: lag(base, f"{base.group_id}.repartition", base.input_topic) == 0, timeout_s=120,
               message="stage 1 drained")
    wait_until(lambda: _settled(base, base.group_id, rekeyed), timeout_s=120, message="stage 2 drained")

    def purged() -> bool:
        starts, done = beginning_offsets(base, rekeyed), committed_offsets(base, base.group_id, rekeyed)
        return sum(starts.values()) > 0 and all(starts[tp] == done.get(tp, 0) for tp in starts)

    wait_until(purged, timeout_s=60, message="each partition's log start at stage 2's committed offset")
    assert second._purge is not None and second._purge.failures == 0
    scores = score_events(two_keys_bundle, events).scores
    expected = {e["event_id"] for e, s in zip(events, scores, strict=True) if s > two_keys_bundle.threshold}
    alerts = [orjson.loads(r.value) for r in read_all(base, base.alerts_topic)]
    assert expected and sorted(a["event_id"] for a in alerts) == sorted(expected)


class _AbortFirstCommit:
    """Stage 1's transactional publisher, except that its first commit aborts the open transaction
    (the batch's records already sent to the repartition topic) and fails, as a crash or a fenced
    worker would leave it: the batch is read again and forwarded again."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    def commit(self, *args: Any, **kwargs: Any) -> bool:
        if not self.failed:
            self.failed = True
            self.inner.abandon()
            raise DeliveryError("injected: the transaction was aborted")
        return bool(self.inner.commit(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_stage_1_batch_whose_transaction_aborted_is_forwarded_once_with_the_same_features(
        settings: Settings, run_worker: Any, two_keys_bundle: Bundle) -> None:
    """Stage 1's first transaction is aborted after its records were sent: stage 2 (reading
    committed records only) sees each event once, and the batch forwarded again carries the same
    account features (its state replayed from the records' undo snapshot)."""
    events = _raw(300, seed=30)
    base, _, [second] = _stages(settings, 0, 1, buckets=1)
    _publish(base, two_keys_bundle)
    with EventProducer(base, base.input_topic) as producer:
        producer.send(events)
    s1 = base.model_copy(update={"stage": "repartition", "delivery": "exactly_once", "worker_id": "stage1-abort"})
    publisher = _AbortFirstCommit(make_sink(stage_settings(s1)))
    first = Worker(s1, publisher=publisher)
    seen1, seen2 = _Collector(), _Collector()
    for worker, seen in ((second, seen2), (first, seen1)):
        worker.start()
        assert worker.enricher is not None
        worker.enricher.on_enriched = seen
        run_worker.run_started(worker)
    wait_until(lambda: lag(base, f"{base.group_id}.repartition", base.input_topic) == 0, timeout_s=120,
               message="stage 1 drained")
    wait_until(lambda: _settled(base, base.group_id, base.repartition_topic_name), timeout_s=120,
               message="stage 2 drained")

    assert publisher.failed and first.stats.held_batches + first.stats.delivery_failures >= 1
    assert len(_events_in(base, base.repartition_topic_name)) == len(events)
    assert len(_events_in(base, base.repartition_topic_name, "read_uncommitted")) > len(events)  # the aborted ones
    merged = seen1.by_id()
    for event_id, event in seen2.by_id().items():
        merged[event_id] = {**merged[event_id], **event}
    offline = enrich_history(TWO_KEYS, events)
    assert [e["event_id"] for e in offline if merged[e["event_id"]] != e] == []
    assert sum(len(b) for b in seen2.batches) == len(events)  # stage 2 applied each event once


class _SlowCommits:
    """A stage-1 worker's transactional publisher whose every commit waits ``delay_s`` first: a
    worker that falls behind (a slow host, a long GC) while the other stage-1 worker runs ahead."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.commits = 0

    def commit(self, *args: Any, **kwargs: Any) -> bool:
        time.sleep(self.delay_s)  # the slowness under test, not a wait for a condition
        self.commits += 1
        return bool(self.inner.commit(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("transport", transports_once("confluent"))
def test_a_stage_1_worker_that_falls_behind_holds_stage_2_back_until_its_marks_come(
        settings: Settings, run_worker: Any, two_keys_bundle: Bundle) -> None:
    """Both stages replay a backlog at once and one stage-1 worker waits 0.3 s before each commit
    of 16 events, while stage 2 takes a quiet partition for idle after 100 ms: a quiet partition of
    the repartition topic is not idle until its upstream's idle mark says so, so every feature still
    equals offline enrichment (before the marks, 395 of these 400 events differed)."""
    events = _raw(400, seed=31)
    base = settings.model_copy(update={"batch_size": 16, "repartition_key": "merchant_category",
                                       "repartition_buckets": 2, "align_idle_ms": 100, "repartition_purge_ms": 0})
    _publish(base, two_keys_bundle)
    with EventProducer(base, base.input_topic) as producer:
        producer.send(events)
    second = [Worker(base.model_copy(update={"stage": "repartitioned", "worker_id": f"stage2-{i}"}))
              for i in range(2)]
    s1 = [base.model_copy(update={"stage": "repartition", "delivery": "exactly_once", "worker_id": f"stage1-{i}"})
          for i in range(2)]
    slow = _SlowCommits(make_sink(stage_settings(s1[0])), delay_s=0.3)
    first = [Worker(s1[0], publisher=slow), Worker(s1[1])]
    seen = {id(w): _Collector() for w in first + second}
    for worker in second + first:
        worker.start()
        assert worker.enricher is not None
        worker.enricher.on_enriched = seen[id(worker)]
        run_worker.run_started(worker)
    wait_until(lambda: lag(base, f"{base.group_id}.repartition", base.input_topic) == 0, timeout_s=120,
               message="stage 1 drained")
    wait_until(lambda: _settled(base, base.group_id, base.repartition_topic_name), timeout_s=120,
               message="stage 2 drained")

    assert slow.commits >= 3  # the slow worker forwarded part of the backlog
    merged: dict[str, dict[str, Any]] = {}
    for worker in first + second:
        for event_id, event in seen[id(worker)].by_id().items():
            merged.setdefault(event_id, {}).update(event)
    offline = enrich_history(TWO_KEYS, events)
    different = [e["event_id"] for e in offline if merged[e["event_id"]] != e]
    assert not different, f"{len(different)} events differ from offline enrichment, e.g. {different[:3]}"
    assert len(_events_in(base, base.repartition_topic_name)) == len(events)
    offline_scores = dict(zip((e["event_id"] for e in events), score_events(two_keys_bundle, events).scores.tolist(),
                              strict=True))
    alerts = [orjson.loads(r.value) for r in read_all(base, base.alerts_topic)]
    assert alerts and [a for a in alerts if a["score"] != offline_scores[a["event_id"]]] == []  # to the bit (MIN_ROWS)
