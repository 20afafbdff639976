"""Adversarial payloads at a running worker: it never crashes, every bad record is dead-lettered
with a reason, and the good records around them still alert."""

from __future__ import annotations

import orjson
import pytest
from kafka import KafkaProducer

from stream_detector.kafka_util import lag, read_all
from stream_detector.schema import DeadLetterHeaders, RejectReason
from tests.fuzz_payloads import adversarial
from tests.helpers import anomaly, wait_until

pytestmark = pytest.mark.integration


def test_worker_survives_adversarial_input(settings, published, start_worker):
    bad = adversarial(seed=7, n_random=300)
    good = [anomaly(f"fuzz-good-{i}", f"acct-{i:05d}") for i in range(10)]
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=16 * 1024 * 1024,
                             acks="all")
    futures = []
    for i, payload in enumerate(bad):
        futures.append(producer.send(settings.input_topic, value=payload))
        if i % 30 == 0:
            futures.append(producer.send(settings.input_topic, value=orjson.dumps(good[(i // 30) % len(good)])))
    producer.flush()
    assert all(f.succeeded() for f in futures)
    producer.close()
    total = len(futures)

    running = start_worker(settings)
    wait_until(lambda: lag(settings, settings.group_id, settings.input_topic) == 0, timeout_s=120,
               message="every record committed")
    running.stop()
    assert running.error is None, "the worker never crashes on data"

    stats = running.worker.stats
    assert stats.events == total and stats.scored + stats.rejected == total
    dead = read_all(settings, settings.dlq_topic)
    assert len(dead) == stats.rejected
    reasons = {r.value for r in RejectReason}
    for record in dead:
        headers = dict(record.headers)
        assert headers[DeadLetterHeaders.REASON].decode() in reasons
    dead_values = {r.value for r in dead}
    assert b"\xff\xfe\xfd" in dead_values and b'{"event_id": "d", "amount": 1, "amount": 100000}' in dead_values
    assert any(len(v) > 10_000_000 for v in dead_values), "the 10 MB blob is kept intact in the dead-letter topic"
    alerted = {orjson.loads(r.value)["event_id"] for r in read_all(settings, settings.alerts_topic)}
    assert {str(e["event_id"]) for e in good} <= alerted
