"""metrics.py without a broker: histogram buckets, counting hooks, lag math, health endpoints."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.errors import DeliveryError, ThresholdUnavailable
from stream_detector.metrics import RECORD_LATENCY_BUCKETS, BulkHistogram, WorkerMetrics, WorkerStatus
from stream_detector.pipeline.decode import Rejected
from stream_detector.schema import RejectReason
from stream_detector.settings import Settings
from stream_detector.transport.base import Batch
from stream_detector.transport.kafka_python import KafkaSource
from stream_detector.worker import Worker
from tests.helpers import http_get


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _families(text: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(text.decode())}


def test_bulk_histogram_matches_prometheus_client_bucket_for_bucket():
    values = np.array([0.0, 0.005, 0.0051, 0.3, 1.0, 2.5, 7.0, 299.0, 300.0, 301.0, 1e6])
    bulk = BulkHistogram("x_seconds", "doc", RECORD_LATENCY_BUCKETS)
    bulk.observe_many(values[:4])
    bulk.observe_many(values[4:])
    bulk.observe_many(np.zeros(0))
    registry = CollectorRegistry()
    reference = Histogram("x_seconds", "doc", buckets=RECORD_LATENCY_BUCKETS, registry=registry)
    for v in values.tolist():
        reference.observe(v)
    ours = {(n, lab.get("le")): v for n, lab, v in [(s.name, s.labels, s.value) for s in bulk.family().samples]}
    theirs = {(n, lab.get("le")): v for n, lab, v in _families(generate_latest(registry))["x_seconds"]
              if not n.endswith("_created")}
    assert ours == theirs
    assert ours[("x_seconds_bucket", "+Inf")] == len(values)


def _batch(n: int, partition_of: list[int], ts_ms: list[int]) -> Batch:
    return Batch(topic="tx", partitions=partition_of, offsets=list(range(10, 10 + n)), keys=[None] * n,
                 values=[b"{}"] * n, timestamps=ts_ms, headers=[[] for _ in range(n)],
                 polled_at=time.monotonic() - 0.05)


def test_batch_hooks_count_events_rejections_and_latencies():
    m = WorkerMetrics(Settings())
    now = int(time.time() * 1000)
    batch = _batch(5, [0, 0, 1, 1, 1], [now - 2000, now - 2000, now - 100, -1, now - 100])
    m.decided(batch, indices=[0, 2, 3], rows=np.array([1]))  # events at positions 0, 2, 3; row 1 → position 2
    m.batch_done(batch, scored=3, alerts=1, rejected=[Rejected(1, RejectReason.INVALID_JSON, "x"),
                                                      Rejected(4, RejectReason.OVERSIZE, "y")])
    s = _samples(m)
    assert s[("stream_detector_events_consumed_total", ())] == 5
    assert s[("stream_detector_events_scored_total", ())] == 3
    assert s[("stream_detector_alerts_total", ())] == 1
    assert s[("stream_detector_events_rejected_total", (("reason", "invalid_json"),))] == 1
    assert s[("stream_detector_events_rejected_total", (("reason", "oversize"),))] == 1
    assert s[("stream_detector_events_rejected_total", (("reason", "duplicate_key"),))] == 0
    assert s[("stream_detector_batch_size_events_sum", ())] == 5
    assert s[("stream_detector_batch_latency_seconds_sum", ())] >= 0.05
    assert s[("stream_detector_event_latency_seconds_count", ())] == 4  # one record had no timestamp
    assert 4.1 <= s[("stream_detector_event_latency_seconds_sum", ())] < 6.0
    assert s[("stream_detector_event_to_alert_latency_seconds_count", ())] == 1
    assert s[("stream_detector_event_latency_seconds_bucket", (("le", "1.0"),))] == 2
    assert s[("stream_detector_ready", ())] == 0  # no worker attached


def test_failed_batches_leave_latencies_uncounted_and_count_the_failure():
    m = WorkerMetrics(Settings())
    batch = _batch(2, [0, 0], [int(time.time() * 1000)] * 2)
    m.decided(batch, indices=[0, 1], rows=np.array([0, 1]))
    m.delivery_failed()
    m.held(DeliveryError("no ack"))
    m.held(ThresholdUnavailable("stale"))
    m.swapped(True)
    m.swapped(False)
    m.swapped(False)
    m.batch_done(batch, scored=2, alerts=0, rejected=[])
    s = _samples(m)
    assert s[("stream_detector_event_latency_seconds_count", ())] == 0
    assert s[("stream_detector_delivery_failures_total", ())] == 1
    assert s[("stream_detector_kafka_errors_total", (("operation", "deliver"),))] == 1
    assert s[("stream_detector_held_batches_total", (("cause", "delivery"),))] == 1
    assert s[("stream_detector_held_batches_total", (("cause", "threshold"),))] == 1
    assert s[("stream_detector_model_swaps_total", (("result", "success"),))] == 1
    assert s[("stream_detector_model_swaps_total", (("result", "failure"),))] == 2


def test_redis_errors_are_counted_and_reraised():
    import redis

    m = WorkerMetrics(Settings())

    def broken() -> None:
        raise redis.ConnectionError("down")
    wrapped = m.watch_redis(broken)
    with pytest.raises(redis.ConnectionError):
        wrapped()
    assert m.watch_redis(lambda: 7)() == 7
    assert _samples(m)[("stream_detector_redis_errors_total", (("operation", "snapshot"),))] == 1


class _Consumer:
    def __init__(self, high: dict[int, int | None]) -> None:
        self.high = high

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("tx", p) for p in self.high}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high[tp.partition]


class _Source:
    highwaters = KafkaSource.highwaters  # the real code, on the fake consumer

    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer
        self._ends: dict[int, int] = {}  # the broker's ends asked by backlog(ask=True): none here


def test_lag_is_highwater_minus_next_offset_for_assigned_partitions_only():
    m = WorkerMetrics(Settings(input_topic="tx"))
    consumer = _Consumer({0: 100, 1: 50, 2: None})
    m.attach(lambda: WorkerStatus(True, "v1", 2), _Source(consumer).highwaters)  # type: ignore[arg-type]
    m.batch_done(_batch(3, [0, 1, 3], [-1] * 3), scored=3, alerts=0, rejected=[])  # next: p0 11, p1 12, p3 13
    assert m._lag == {0: 89, 1: 38}  # p2: no fetch yet; p3: not assigned
    consumer.high = {0: 11}
    m.refresh_lag()  # held batches refresh at most once a second
    assert m._lag == {0: 89, 1: 38}
    m.refresh_lag(force=True)
    assert m._lag == {0: 0}
    consumer.high = {0: 20, 1: 15}
    m.batch_done(_batch(2, [0, 0], [-1] * 2), scored=2, alerts=0, rejected=[])  # next: p0 12; every batch refreshes
    assert m._lag == {0: 8, 1: 3}




def test_health_endpoints_of_a_worker_that_is_not_started():
    worker = Worker(Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"))
    worker.metrics.attach(worker.status, worker.source.highwaters)
    port = worker.metrics.serve(0, "127.0.0.1")
    try:
        assert http_get(port, "/healthz") == (200, b'{"status":"ok"}')
        status, body = http_get(port, "/readyz")
        assert status == 503
        assert orjson.loads(body) == {"status": "not ready", "checks": {
            "partitions_assigned": False, "model_loaded": False, "threshold_fresh": False, "running": True}}
        assert http_get(port, "/nope")[0] == 404
        status, body = http_get(port, "/metrics")
        assert status == 200 and b"stream_detector_events_consumed_total 0.0" in body
        assert b"stream_detector_ready 0.0" in body
    finally:
        worker.metrics.close()
    with pytest.raises(OSError):
        http_get(port, "/healthz")


def test_two_workers_in_one_process_have_separate_registries():
    a, b = WorkerMetrics(Settings()), WorkerMetrics(Settings())
    a.alerts.inc(3)
    assert _samples(a)[("stream_detector_alerts_total", ())] == 3
    assert _samples(b)[("stream_detector_alerts_total", ())] == 0


def test_names_follow_prometheus_conventions():
    families = list(WorkerMetrics(Settings()).registry.collect())
    assert len(families) >= 20
    for family in families:
        assert family.name.startswith("stream_detector_"), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client appends it to the samples
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_events")), family.name
        assert family.documentation, family.name


def test_batch_context_names_topic_partitions_and_offset_ranges():
    from stream_detector.metrics import batch_context

    batch = Batch(topic="tx", partitions=[1, 0, 1, 0], offsets=[7, 3, 9, 4], keys=[None] * 4,
                  values=[b"{}"] * 4, timestamps=[0] * 4, headers=[[]] * 4)
    ctx = batch_context(batch)
    assert ctx == {"topic": "tx", "partition": [0, 1], "offset": {"0": [3, 4], "1": [7, 9]},
                   "model_version": None, "where": "tx[0@3-4 1@7-9]"}


def test_json_logs_carry_the_context_fields_of_notable_lines():
    import logging

    from stream_detector.cli import _setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        _setup_logging(Settings(log_json=True))
        formatter = root.handlers[0].formatter
        assert formatter is not None
        record = logging.LogRecord("stream_detector.worker", logging.WARNING, __file__, 1, "holding %d", (3,), None)
        record.topic, record.partition, record.model_version = "tx", [0, 1], "v1"
        line = orjson.loads(formatter.format(record))
        assert line["msg"] == "holding 3" and line["level"] == "WARNING"
        assert (line["topic"], line["partition"], line["model_version"]) == ("tx", [0, 1], "v1")
        plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
        plain.created = 1_796_000_000.5
        assert set(orjson.loads(formatter.format(plain))) == {"ts", "level", "logger", "msg"}
        assert orjson.loads(formatter.format(plain))["ts"] == "2026-11-30T00:53:20.500Z"  # RFC 3339 UTC, not local
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_workers_log_lines_name_the_worker_and_its_process():
    """A new-user trial ran three workers in one terminal and could not tell whose "revoked" line
    was whose: a worker's lines carry its ``SD_WORKER_ID`` and process id, as text and as JSON;
    other commands' lines keep their shape."""
    import logging
    import os

    from stream_detector.cli import _setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    record = logging.LogRecord("stream_detector.source", logging.INFO, __file__, 1, "revoked %s", ([1],), None)
    try:
        _setup_logging(Settings(worker_id="pod-7"), worker=True)
        formatter = root.handlers[0].formatter
        assert formatter is not None
        assert formatter.format(record).endswith(f"Z INFO [pod-7 pid {os.getpid()}] stream_detector.source: revoked [1]")
        _setup_logging(Settings(worker_id="pod-7", log_json=True), worker=True)
        formatter = root.handlers[0].formatter
        assert formatter is not None
        line = orjson.loads(formatter.format(record))
        assert (line["worker"], line["pid"], line["msg"]) == ("pod-7", os.getpid(), "revoked [1]")
        _setup_logging(Settings(worker_id="pod-7"))
        formatter = root.handlers[0].formatter
        assert formatter is not None
        assert formatter.format(record).endswith("Z INFO stream_detector.source: revoked [1]")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_with_json_logs_the_commands_own_lines_are_json_too(capsys, monkeypatch) -> None:
    """Found by a new-user trial: with SD_LOG_JSON the worker's last line ("worker stopped: …") and
    a command's error line were plain text in a JSON log. Every line on stderr is now one JSON
    object of the log's shape."""
    import logging

    from stream_detector.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setenv("SD_LOG_JSON", "true")
    try:
        assert main(["simulate", "--count", "0", "--out", "x.csv"]) == 2
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        import stream_detector.cli as cli

        cli._JSON_LINES = False
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 1 and lines[0]["level"] == "ERROR" and lines[0]["logger"] == "stream_detector.cli"
    assert lines[0]["msg"] == "stream-detector simulate: error: --count must be >= 1, got 0"
    assert lines[0]["ts"].endswith("Z")
    # usage errors and settings errors (before the settings are read) too
    with pytest.raises(SystemExit) as usage:
        main(["simulate", "--bogus"])
    assert usage.value.code == 2
    monkeypatch.setenv("SD_BATCH_SIZE", "abc")
    assert main(["threshold", "get"]) == 2
    monkeypatch.delenv("SD_BATCH_SIZE")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["level"] for line in lines] == ["ERROR", "ERROR"]
    assert "unrecognized arguments: --bogus" in lines[0]["msg"] and "SD_BATCH_SIZE" in lines[1]["msg"]


def test_with_json_logs_the_commands_warnings_are_warnings_and_the_level_applies(capsys, monkeypatch) -> None:
    """A command's ``warning: …`` line is a WARNING log line, and lines below SD_LOG_LEVEL are left
    out (a new-user trial's log at ERROR had every line, its warnings as INFO)."""
    import logging

    from stream_detector import cli

    root = logging.getLogger()
    level = root.level
    monkeypatch.setattr(cli, "_JSON_LINES", True)
    try:
        root.setLevel(logging.INFO)
        cli._say("warning: 3 of 9 rows rejected")
        cli._say("scored 6 of 9 rows")
        root.setLevel(logging.ERROR)
        cli._say("warning: left out")
        cli._say("stream-detector score: error: no rows", "ERROR")
    finally:
        root.setLevel(level)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["level"], line["msg"]) for line in lines] == [
        ("WARNING", "warning: 3 of 9 rows rejected"), ("INFO", "scored 6 of 9 rows"),
        ("ERROR", "stream-detector score: error: no rows")]
