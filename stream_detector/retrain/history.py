"""Durable history for retraining models with entity features (issue 18): read from Kafka by time.

A model with account/terminal history (and label features) needs, for every training event, the
entity's events before it over the spec's horizon (its longest window, and ``label_within_s`` for
label features), and every label known at the event's time. The retrainer's in-memory window holds
neither (it is bounded and refills after a restart), so before training such a model it reads them
from the topics themselves:

* the **input topic** from the first offset at or after ``since_ms`` (``offsets_for_times``, by
  record timestamp) on each partition up to the worker group's committed offset (what the workers
  have decided: the same events the window's selection may use); records that fail decoding are
  left out, as the workers dead-letter them;
* the **feedback topic** from ``since_ms`` to its end: every valid label record (the contract of
  ``feedback.py``), all of them, so that point-in-time label features see what was known when.

Events are ordered by their own ``timestamp`` (then partition, offset), the order of a time-ordered
history file: entity features computed over it equal ``stream-detector train`` on that file, and
what a worker with event-time alignment computes (docs/entity-features.md).

Retention is the limit: the input topic must keep at least the horizon plus the training window
(``retention.ms``; 30-day windows need ≥ 30 days plus ``SD_RETRAIN_WINDOW_SECONDS``). Cost: the
events are held as parsed dicts (~1.5 KB each in CPython) for the run; 1M events ≈ 1.5 GB. Reading
columnar and out of core is issue 19's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from ..feedback import Label, decode_label
from ..kafka_util import partitions_of
from ..pipeline.decode import decode_batch
from ..settings import Settings


@dataclass
class History:
    """``events``: decoded input events (JSON objects) in event-time order; ``labels``: every valid
    feedback record read; ``counts``: records read and left out, per topic."""

    events: list[dict[str, Any]] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def read_history(settings: Settings, since_ms: int, decided: Mapping[int, int], timeout_s: float = 300.0,
                 progress: Callable[[str], None] | None = None) -> History:
    """Read the input topic from ``since_ms`` (epoch ms, record time) up to ``decided`` (partition →
    first offset not yet committed by the workers; a partition absent reads nothing) and the feedback
    topic from ``since_ms`` to its end. Raises ``TimeoutError`` when the topics cannot be read within
    ``timeout_s``."""
    say = progress or (lambda _m: None)
    out = History(counts={"input_records": 0, "input_rejected": 0, "feedback_records": 0, "feedback_rejected": 0})
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             isolation_level="read_committed", client_id="stream-detector-retrainer-history",
                             max_poll_records=10_000, **settings.kafka_security())
    try:
        keyed: list[tuple[float, int, int, dict[str, Any]]] = []
        for tp, records in _read(consumer, settings.input_topic, since_ms, decided, timeout_s):
            out.counts["input_records"] += len(records)
            decoded = decode_batch([r.value for r in records], settings.max_event_bytes)
            out.counts["input_rejected"] += len(decoded.rejected)
            for event, i in zip(decoded.events, decoded.indices, strict=True):
                keyed.append((_event_time(event, records[i].timestamp), tp.partition, records[i].offset, event))
        keyed.sort(key=lambda k: (k[0], k[1], k[2]))
        out.events = [k[3] for k in keyed]
        for _tp, records in _read(consumer, settings.feedback_topic, since_ms, None, timeout_s):
            out.counts["feedback_records"] += len(records)
            for r in records:
                label = decode_label(r.value, r.timestamp)
                if isinstance(label, Label):
                    out.labels.append(label)
                else:
                    out.counts["feedback_rejected"] += 1
    finally:
        consumer.close(autocommit=False)
    since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since_ms / 1000))
    say(f"history from Kafka: {len(out.events):,} events since {since} UTC ({out.counts['input_rejected']} "
        f"undecodable left out), {len(out.labels):,} labels")
    return out


def _event_time(event: Mapping[str, Any], record_ms: int) -> float:
    """The event's own timestamp when it is a number (epoch ms, as the simulators write), else the
    record's: only the order matters here, the features read the field itself."""
    value = event.get("timestamp")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(record_ms)


def _read(consumer: KafkaConsumer, topic: str, since_ms: int, until: Mapping[int, int] | None,
          timeout_s: float) -> list[tuple[TopicPartition, list[Any]]]:
    """Records of ``topic`` from ``since_ms`` up to ``until`` (partition → end offset; None: the end
    offsets now), as (partition, records) chunks."""
    parts = partitions_of(consumer, topic, timeout_s)
    tps = [TopicPartition(topic, p) for p in parts]
    ends = consumer.end_offsets(tps)
    if until is not None:
        ends = {tp: min(end, int(until.get(tp.partition, 0))) for tp, end in ends.items()}
    starts = {tp: (found.offset if found is not None else ends[tp])
              for tp, found in consumer.offsets_for_times({tp: since_ms for tp in tps}).items()}
    todo = [tp for tp in tps if starts[tp] < ends[tp]]
    chunks: list[tuple[TopicPartition, list[Any]]] = []
    if not todo:
        return chunks
    consumer.assign(todo)
    for tp in todo:
        consumer.seek(tp, starts[tp])
    remaining = set(todo)
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {topic} up to its decided offsets within {timeout_s:.0f}s")
        for tp, records in consumer.poll(timeout_ms=200).items():
            if tp not in remaining:
                continue
            kept = [r for r in records if r.offset < ends[tp]]
            if kept:
                chunks.append((tp, kept))
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
    consumer.unsubscribe()
    return chunks


def read_shadow(settings: Settings, version: str, since_ms: int, timeout_s: float = 120.0,
                ) -> tuple[list[dict[str, Any]], list[Label]]:
    """The shadow records of challenger ``version`` on ``SD_SHADOW_TOPIC`` since ``since_ms``
    (record time; the start of its period) and every valid label on the feedback topic since then:
    what ``gate.shadow_outcomes`` judges; a topic that does not exist reads as empty. Raises
    ``TimeoutError`` past ``timeout_s``."""
    import orjson

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             isolation_level="read_committed", client_id="stream-detector-retrainer-shadow",
                             max_poll_records=10_000, **settings.kafka_security())
    records: list[dict[str, Any]] = []
    labels: list[Label] = []
    try:
        existing = consumer.topics()  # a topic nobody created yet holds nothing (no waiting for its metadata)
        for _tp, chunk in (_read(consumer, settings.shadow_topic, since_ms, None, timeout_s)
                           if settings.shadow_topic in existing else []):
            for r in chunk:
                try:
                    record = orjson.loads(r.value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("challenger", {}).get("model_version") == version:
                    records.append(record)
        for _tp, chunk in (_read(consumer, settings.feedback_topic, since_ms, None, timeout_s)
                           if settings.feedback_topic in existing else []):
            labels.extend(x for x in (decode_label(r.value, r.timestamp) for r in chunk) if isinstance(x, Label))
    finally:
        consumer.close(autocommit=False)
    return records, labels
