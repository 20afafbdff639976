"""Metrics and health endpoints of a real worker on the real broker and Redis."""

from __future__ import annotations

import orjson
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.kafka_util import lag, read_all
from stream_detector.model.bundle import Bundle
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from tests.helpers import anomaly, http_get, wait_until
from tests.services import free_port

pytestmark = pytest.mark.integration




def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_match_what_the_worker_processed(settings: Settings, published, bundle: Bundle, start_worker):
    port = free_port()
    s = settings.model_copy(update={"metrics_port": port, "metrics_addr": "127.0.0.1"})
    events, _ = Simulator(seed=21, accounts=300, run_id="m").batch(300, 0.0)
    events += [anomaly("metrics-bad-1"), anomaly("metrics-bad-2", "acct-00002")]
    bad = [b'{"event_id": "x1", "amount": ', b"[1, 2]", b'{"amount": 3}']

    worker = start_worker(s)
    assert http_get(port, "/healthz") == (200, b'{"status":"ok"}')
    ready = wait_until(lambda: http_get(port, "/readyz")[0] == 200, message="/readyz 200 once partitions are assigned")
    assert ready
    body = orjson.loads(http_get(port, "/readyz")[1])
    assert body["checks"] == {"partitions_assigned": True, "model_loaded": True, "threshold_fresh": True,
                              "running": True}

    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
    for i, value in enumerate([orjson.dumps(e) for e in events] + bad):
        producer.send(s.input_topic, key=f"k{i}".encode(), value=value)  # keys spread over the 4 partitions
    producer.flush()
    producer.close()
    total = len(events) + len(bad)

    def drained_and_counted() -> bool:
        if lag(s, s.group_id, s.input_topic) != 0:
            return False
        return _value(_samples(port), "stream_detector_events_consumed_total") == total
    wait_until(drained_and_counted, message="every record handled and counted")

    samples = _samples(port)
    alerts = read_all(s, s.alerts_topic)
    stats = worker.worker.stats
    assert len(alerts) >= 2, "the crafted anomalies alert"
    assert _value(samples, "stream_detector_alerts_total") == len(alerts) == stats.alerts
    assert _value(samples, "stream_detector_events_scored_total") == len(events)
    assert _value(samples, "stream_detector_events_rejected_total", reason="invalid_json") == 1
    assert _value(samples, "stream_detector_events_rejected_total", reason="not_an_object") == 1
    assert _value(samples, "stream_detector_events_rejected_total", reason="missing_event_id") == 1
    assert _value(samples, "stream_detector_events_rejected_total", reason="oversize") == 0
    assert _value(samples, "stream_detector_batches_total") == stats.batches >= 1
    assert _value(samples, "stream_detector_batch_latency_seconds_count") == stats.batches
    assert _value(samples, "stream_detector_batch_size_events_sum") == total
    assert _value(samples, "stream_detector_event_latency_seconds_count") == total
    assert _value(samples, "stream_detector_event_to_alert_latency_seconds_count") == len(alerts)
    assert _value(samples, "stream_detector_event_latency_seconds_sum") > 0
    assert _value(samples, "stream_detector_model_info", version=bundle.version) == 1
    assert _value(samples, "stream_detector_threshold") == pytest.approx(bundle.threshold)
    threshold = published.threshold()
    assert threshold is not None
    assert _value(samples, "stream_detector_threshold_version") == threshold.version
    assert _value(samples, "stream_detector_assigned_partitions") == 4
    assert _value(samples, "stream_detector_model_swaps_total", result="failure") == 0
    assert _value(samples, "stream_detector_delivery_failures_total") == 0
    assert _value(samples, "stream_detector_ready") == 1

    def lags() -> dict[str, float]:
        return {dict(labels)["partition"]: v for (name, labels), v in _samples(port).items()
                if name == "stream_detector_consumer_lag_records" and dict(labels)["topic"] == s.input_topic}
    drained = wait_until(lambda: (lag := lags()) and not any(lag.values()) and lag, message="lag 0 once drained")
    assert set(drained) == {"0", "1", "2", "3"}, drained

    worker.stop()
    with pytest.raises(OSError):
        http_get(port, "/healthz")  # the server goes with the worker
