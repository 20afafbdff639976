"""Known streams, worker processes to kill, and the outcome counts that chaos scenarios assert.

A scenario produces N events with K anomalies and P poison records (unique ids), breaks things,
then counts outcomes with a ``read_committed`` reader that ran during the chaos and a verifier
that reads everything afterwards. ``FIGURES`` collects one row per scenario; the chaos conftest
writes them to ``SD_RELIABILITY_REPORT`` (docs/RELIABILITY.md) when that variable is set.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from stream_detector.kafka_util import committed_offsets, end_offsets, lag, read_all
from stream_detector.model.bundle import Bundle
from stream_detector.schema import DeadLetterHeaders
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from tests.helpers import anomaly

ROUNDS = max(1, int(os.environ.get("SD_CHAOS_ROUNDS", "1")))
# The long form (make reliability) sizes every storm to at least this many events and anomalies.
MIN_EVENTS = int(os.environ.get("SD_CHAOS_MIN_EVENTS", "0"))
MIN_ANOMALIES = int(os.environ.get("SD_CHAOS_MIN_ANOMALIES", "0"))


def sized(events: int, anomalies: int) -> tuple[int, int, float]:
    """(events, anomalies, deadline factor) of a storm: its own counts × ``ROUNDS``, raised to the
    long form's minimums; deadlines of waits that scale with the stream grow by the same factor."""
    n, k = max(events * ROUNDS, MIN_EVENTS), max(anomalies * ROUNDS, MIN_ANOMALIES)
    return n, k, n / (events * ROUNDS)
FIGURES: list[dict[str, Any]] = []
CLI = [sys.executable, "-m", "stream_detector.cli"]


def base_settings(services: Any, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        kafka_bootstrap=services.kafka, redis_url=services.redis, redis_prefix=f"chaos-{tag}",
        input_topic=f"tx-{tag}", alerts_topic=f"alerts-{tag}", dlq_topic=f"dlq-{tag}", group_id=f"group-{tag}",
        batch_max_wait_ms=20, threshold_refresh_s=0.2, topic_partitions=4, batch_size=256)
    values.update(overrides)
    return Settings(**values)


def group_members(settings: Settings) -> int:
    """Members of the worker group; -1 while the coordinator cannot say (retriable errors)."""
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        group = admin.describe_groups([settings.group_id]).get(settings.group_id) or {}
        return len(group.get("members") or [])
    except KafkaError as exc:
        if getattr(exc, "retriable", False):
            return -1
        raise
    finally:
        admin.close()


def publish(settings: Settings, bundle: Bundle) -> None:
    ControlPlane.from_url(settings.redis_url, settings.redis_prefix).publish(bundle, set_by="chaos")
    ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic])


@dataclass
class Stream:
    records: list[tuple[bytes | None, bytes]]  # (key, value) in produce order
    anomalies: set[str]
    good: set[str]
    poison: int


def make_stream(n: int, k: int, poison_rate: float, seed: int) -> Stream:
    rng = random.Random(seed)
    events, _ = Simulator(seed=seed, accounts=300, run_id=f"c{seed}-{uuid.uuid4().hex[:6]}").batch(n, 0.0)
    bad = [anomaly(f"anom-{seed}-{i}-{uuid.uuid4().hex[:6]}", f"acct-{i:05d}") for i in range(k)]
    for event in bad:
        events.insert(rng.randrange(len(events) + 1), event)
    records, poison = with_poison(events, poison_rate, rng)
    return Stream(records, {str(e["event_id"]) for e in bad}, {str(e["event_id"]) for e in events}, poison)


def with_poison(events: list[dict[str, Any]], poison_rate: float,
                rng: random.Random) -> tuple[list[tuple[bytes | None, bytes]], int]:
    """(key, value) records of ``events`` in order, a poison record after each with ``poison_rate``."""
    records: list[tuple[bytes | None, bytes]] = []
    poison = 0
    for event in events:
        records.append((str(event["account_id"]).encode(), orjson.dumps(event)))
        if rng.random() < poison_rate:
            poison += 1
            records.append((None, rng.choice([b"{oops", b'{"amount": 1}', b'{"event_id": 5}', rng.randbytes(20)])))
    return records, poison


def produce(settings: Settings, stream: Stream) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    futures = [producer.send(settings.input_topic, key=k, value=v) for k, v in stream.records]
    producer.flush(timeout=max(60.0, len(stream.records) / 2_000))
    producer.close()
    assert all(f.succeeded() for f in futures), "the scenario's input was not fully written"


class LiveReader:
    """Counts alerts with ``read_committed`` while the chaos happens.

    ``close()`` first lets it catch up to the topic's last stable offset (read in its own thread:
    consumers are not thread-safe), so its counts can be compared with the verifier's.
    """

    def __init__(self, settings: Settings) -> None:
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.caught_up = False
        self.consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, isolation_level="read_committed",
                                      enable_auto_commit=False, auto_offset_reset="earliest")
        parts = self.consumer.partitions_for_topic(settings.alerts_topic) or set()
        self.tps = [TopicPartition(settings.alerts_topic, p) for p in parts]
        self.consumer.assign(self.tps)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        for records in self.consumer.poll(timeout_ms=200).values():
            self.counts.update(orjson.loads(r.value)["event_id"] for r in records)

    def _run(self) -> None:
        import time

        while not self.stop.is_set():
            self._poll()
        ends = self.consumer.end_offsets(self.tps)  # the last stable offsets, for read_committed
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(self.consumer.position(tp) >= end for tp, end in ends.items()):
                self.caught_up = True
                return
            self._poll()

    def close(self) -> Counter[str]:
        self.stop.set()
        self.thread.join(timeout=90)
        self.consumer.close()
        assert self.caught_up, "the live read_committed reader could not reach the end of the alerts topic"
        return self.counts


class WorkerProcs:
    """``stream-detector worker`` processes, one per slot, that can be killed and restarted."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.kills = 0
        self.restarts = 0

    def start(self, slot: int) -> None:
        env = dict(self.env, SD_WORKER_ID=f"slot-{slot}")
        with open(self.log_dir / f"worker-{slot}.log", "ab") as log:
            self.procs[slot] = subprocess.Popen(CLI + ["worker"], env=env, stdout=subprocess.DEVNULL, stderr=log)

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        proc.kill()
        proc.wait(timeout=30)
        self.kills += 1

    def restart(self, slot: int) -> None:
        self.start(slot)
        self.restarts += 1

    def signal(self, slot: int, sig: signal.Signals) -> None:
        self.procs[slot].send_signal(sig)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def committed_total(settings: Settings) -> int:
    return sum(max(0, o) for o in committed_offsets(settings, settings.group_id, settings.input_topic).values())


def drained(settings: Settings) -> bool:
    return lag(settings, settings.group_id, settings.input_topic) == 0


@dataclass
class Outcome:
    figures: dict[str, Any]
    alerts: Counter[str] = field(default_factory=Counter)


def _eventually(check: Any, timeout_s: float = 30.0) -> bool:
    """True once ``check()`` holds (offsets can be briefly unreadable while a group rebalances)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def verify(scenario: str, settings: Settings, stream: Stream, live: Counter[str] | None = None,
           kills: int = 0, restarts: int = 0) -> Outcome:
    """Count outcomes after the chaos and record them; the caller asserts what must hold."""
    exactly_once = settings.delivery == "exactly_once"
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    alerts = Counter(orjson.loads(r.value)["event_id"] for r in read_all(settings, settings.alerts_topic,
                                                                        isolation_level=isolation))
    dead = read_all(settings, settings.dlq_topic, isolation_level=isolation)
    dead_positions = {(dict(r.headers)[DeadLetterHeaders.PARTITION], dict(r.headers)[DeadLetterHeaders.OFFSET])
                      for r in dead}
    ends = end_offsets(settings, settings.input_topic)
    figures = {
        "scenario": scenario, "delivery": settings.delivery, "events": len(stream.records),
        "anomalies": len(stream.anomalies), "poison": stream.poison, "kills": kills, "restarts": restarts,
        "distinct_alerts": len(set(alerts) & stream.anomalies),
        "lost_alerts": len(stream.anomalies - set(alerts)),
        "duplicate_alerts": sum(c - 1 for c in alerts.values() if c > 1),
        "dead_letters": len(dead), "poison_not_dead_lettered": stream.poison - len(dead_positions),
        "duplicate_dead_letters": len(dead) - len(dead_positions),
        "all_committed": _eventually(lambda: committed_offsets(settings, settings.group_id,
                                                               settings.input_topic) == ends),
        "live_reader_agrees": None if live is None else (live == alerts),
    }
    FIGURES.append(figures)
    return Outcome(figures, alerts)
