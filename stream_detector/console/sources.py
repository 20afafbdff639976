"""Where the console's data comes from: the recent-scores stream in Redis, and topic tails in Kafka.

Everything here only reads. Kafka topics are read by ``TopicTail``: one consumer with no group
(nothing is committed, no worker's group is disturbed), assigned all partitions, reading on each
call what arrived since the previous call, up to the end offsets of that moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, TopicPartition

from ..settings import Settings
from ..store import ControlPlane
from .whatif import Sample


@dataclass(frozen=True)
class FeedEntry:
    worker: str
    model_version: str
    threshold_version: int
    threshold: float
    since: float
    at: float
    n: int
    alerts: int
    ids: list[str]
    scores: np.ndarray
    weights: np.ndarray
    probs: np.ndarray | None = None  # the supervised head's probabilities (same order as scores), if any

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> FeedEntry:
        f = {k.decode(): v for k, v in fields.items()}
        samples = orjson.loads(f["samples"])
        scores = np.asarray(samples["scores"], dtype=np.float64)
        probs = samples.get("probs")  # absent: a model without a head, or a worker of an older release
        return cls(f["worker"].decode(), f["model_version"].decode(), int(f["threshold_version"]),
                   float(f["threshold"]), float(f["since"]), float(f["at"]), int(f["n"]), int(f["alerts"]),
                   [str(i) for i in samples["ids"]], scores, np.asarray(samples["weights"], dtype=np.float64),
                   None if probs is None else np.asarray(probs, dtype=np.float64).reshape(scores.shape))


def read_feed(control: ControlPlane, limit: int) -> list[FeedEntry]:
    """The newest ``limit`` entries of ``{p}:recent-scores``, oldest first (unreadable ones skipped)."""
    out: list[FeedEntry] = []
    for fields in control.telemetry.feed(limit):
        try:
            out.append(FeedEntry.parse(fields))
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            continue
    return out


def sample_of(entries: list[FeedEntry], model_version: str | None) -> Sample:
    """The weighted sample of one model version; its span runs from the first entry's start to the last's end.

    The sample's ``probs`` are there when some entry of that version carries the head's
    probabilities; the samples of entries without them (a worker of an older release) get NaN,
    which no head threshold is below.
    """
    mine = [e for e in entries if e.model_version == model_version]
    if not mine:
        return Sample.empty()
    span = max(e.at for e in mine) - min(e.since for e in mine)
    probs = None
    if any(e.probs is not None for e in mine):
        probs = np.concatenate([e.probs if e.probs is not None else np.full(e.scores.size, np.nan) for e in mine])
    return Sample(np.concatenate([e.scores for e in mine]), np.concatenate([e.weights for e in mine]),
                  [i for e in mine for i in e.ids], max(span, 0.0), probs)


def read_summaries(control: ControlPlane, limit: int = 2000) -> list[dict[str, str]]:
    """Workers' drift score summaries (``{p}:score-summaries``) when the retrainer's link exists."""
    return control.telemetry.latest_summaries(limit)


class TopicTail:
    """Incremental reader of one topic, keeping at most ``keep`` decoded records in memory.

    On the first read each partition starts ``start_back`` records before its end (``None``: from
    the beginning). A read waits at most ``deadline_s`` for the records up to the end offsets.
    """

    def __init__(self, settings: Settings, topic: str, keep: int, start_back: int | None,
                 decode: Callable[[bytes], Any] = orjson.loads,
                 decode_record: Callable[[bytes, float], Any] | None = None) -> None:
        self.settings = settings
        self.decode_record = decode_record  # given: called with the value and the record's timestamp (ms)
        self.topic = topic
        self.keep = keep
        self.start_back = start_back
        self.decode = decode
        self.records: list[Any] = []
        self._consumer: KafkaConsumer | None = None
        self._assigned: set[TopicPartition] = set()
        self._lock = threading.Lock()

    def read(self, deadline_s: float = 3.0) -> list[Any]:
        with self._lock:
            consumer = self._open()
            parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                return list(self.records)
            tps = {TopicPartition(self.topic, p) for p in parts}
            if tps != self._assigned:
                self._assign(consumer, tps)
            ends = consumer.end_offsets(list(tps))
            deadline = time.monotonic() + deadline_s
            while any(consumer.position(tp) < end for tp, end in ends.items()) and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=100).values():
                    for record in batch:
                        self._add(record.value, record.timestamp)
            return list(self.records)

    def _add(self, value: bytes | None, timestamp_ms: float = 0.0) -> None:
        if value is None:
            return
        try:
            self.records.append(self.decode(value) if self.decode_record is None
                                else self.decode_record(value, timestamp_ms))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return
        if len(self.records) > self.keep * 2:
            del self.records[:-self.keep]

    def _open(self) -> KafkaConsumer:
        if self._consumer is None:
            committed = self.settings.delivery == "exactly_once"  # skip alerts of aborted transactions
            self._consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                           enable_auto_commit=False, auto_offset_reset="earliest",
                                           isolation_level="read_committed" if committed else "read_uncommitted",
                                           **self.settings.kafka_security())
        return self._consumer

    def _assign(self, consumer: KafkaConsumer, tps: set[TopicPartition]) -> None:
        new = tps - self._assigned
        consumer.assign(sorted(tps, key=lambda tp: tp.partition))
        begins = consumer.beginning_offsets(list(new))
        ends = consumer.end_offsets(list(new))
        for tp in new:
            back = ends[tp] - self.start_back if self.start_back is not None else begins[tp]
            consumer.seek(tp, max(begins[tp], back))
        self._assigned = tps

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
