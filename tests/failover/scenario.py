"""One failover scenario, start to finish: a known stream fed at a steady rate while two workers
consume it, a fault injected once they are under way, healing, and the chaos tier's counts
(``tests.chaos.harness.verify``) with the row tagged ``tier=failover`` for docs/RELIABILITY.md.

A fault is a callable ``fault(ctx)``; it returns once the fault has been applied (and, for faults
that must stall the pipeline, once the stall has been observed and healed). Waiting is always on a
condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer

from stream_detector.model.bundle import Bundle
from stream_detector.settings import Settings
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from tests.chaos.harness import (
    ROUNDS,
    LiveReader,
    Stream,
    base_settings,
    committed_total,
    drained,
    verify,
    with_poison,
)
from tests.failover.conftest import Cluster
from tests.helpers import wait_until


@dataclass
class Feeder:
    """Produces the stream's records at ``rate`` per second with ``acks=all`` and idempotence; a
    broker outage stalls it (the producer retries for up to 10 minutes) instead of losing records."""

    settings: Settings
    stream: Stream
    rate: float
    errors: list[BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=5,
                                     delivery_timeout_ms=600_000, request_timeout_ms=10_000)
            futures = []
            started = time.monotonic()
            for i, (key, value) in enumerate(self.stream.records):
                ahead = i / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing, not waiting for a condition
                futures.append(producer.send(self.settings.input_topic, key=key, value=value))
            producer.flush(timeout=600)
            producer.close()
            failed = [f.exception for f in futures if not f.succeeded()]
            if failed:
                raise AssertionError(f"{len(failed)} input records not written: {failed[0]!r}")
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.done.set()

    def join(self, timeout_s: float) -> None:
        assert self.done.wait(timeout_s), "the feeder did not finish"
        assert not self.errors, self.errors


@dataclass
class Context:
    cluster: Cluster
    settings: Settings
    workers: list[Any]  # tests.fixtures.RunningWorker
    notes: dict[str, Any] = field(default_factory=dict)

    def await_progress(self, what: str, events: int = 500) -> None:
        """Wait until the workers have handled ``events`` more events (the stream goes on)."""
        before = sum(w.worker.stats.events for w in self.workers)
        wait_until(lambda: sum(w.worker.stats.events for w in self.workers) > before + events, timeout_s=120,
                   interval_s=0.3, message=what)

    def pressure(self) -> int:
        """Batches held or deliveries failed so far, summed over the workers (a stall shows here)."""
        return sum(w.worker.stats.held_batches + w.worker.stats.delivery_failures for w in self.workers)


def failover_settings(cluster: Cluster, delivery: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(delivery=delivery, redis_sentinels=cluster.sentinels,
                                  redis_sentinel_master=cluster.env["SD_REDIS_SENTINEL_MASTER"],
                                  delivery_timeout_s=10.0, transaction_timeout_s=20.0, batch_size=128)
    values.update(overrides)
    return base_settings(cluster, **values)


def publish(settings: Settings, bundle: Bundle) -> None:
    ControlPlane.from_settings(settings).publish(bundle, set_by="failover")
    ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic])


def leader_of(settings: Settings, topic: str, partition: int = 0) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        parts = admin.describe_topics([topic])[0]["partitions"]
        return int(next(p["leader_id"] for p in parts if p["partition_index"] == partition))
    finally:
        admin.close()


def run_scenario(name: str, cluster: Cluster, bundle: Bundle, start_worker: Callable[[Settings], Any],
                 settings: Settings, stream: Stream, fault: Callable[[Context], None],
                 rate: float = 1_500.0) -> dict[str, Any]:
    publish(settings, bundle)
    live = LiveReader(settings)
    feeder = Feeder(settings, stream, rate)
    feeder.start()
    workers = [start_worker(settings.model_copy(update={"worker_id": f"slot-{i}"})) for i in range(2)]
    ctx = Context(cluster, settings, workers)
    started = time.monotonic()
    try:
        wait_until(lambda: committed_total(settings) > len(stream.records) // 6, timeout_s=180, interval_s=0.3,
                   message="workers under way before the fault")
        fault(ctx)
        feeder.join(timeout_s=600)
        wait_until(lambda: drained(settings), timeout_s=300, interval_s=0.5, message="drained after the fault")
    finally:
        for running in workers:
            if running.thread.is_alive():
                running.stop()
    outcome = verify(name, settings, stream, live.close())
    outcome.figures.update(tier="failover", seconds=round(time.monotonic() - started, 1), **ctx.notes)
    for running in workers:
        assert running.error is None, running.trace
    return outcome.figures


def scaled(n: int) -> int:
    return n * ROUNDS


def make_entity_stream(n: int, k: int, poison_rate: float, seed: int) -> Stream:
    """Raw events (the entity path computes each account's history) with ``k`` anomalies and poison."""
    import random
    import uuid

    from stream_detector.simulate import Simulator

    rng = random.Random(seed)
    run = f"e{seed}-{uuid.uuid4().hex[:6]}"
    events, _ = Simulator(seed=seed, accounts=60, run_id=run, raw=True).batch(
        n, 0.0, now_ms=1_790_000_000_000, span_ms=86_400_000)
    bad = [dict(events[rng.randrange(len(events))], event_id=f"{run}-anom-{i}", amount=250_000.0,
                merchant_category="crypto_exchange", country="XX", channel="online", card_present=False,
                device_new=True, distance_from_home_km=15_000.0) for i in range(k)]
    for event in bad:
        events.insert(rng.randrange(len(events) + 1), event)
    records, poison = with_poison(events, poison_rate, rng)
    return Stream(records, {str(e["event_id"]) for e in bad}, {str(e["event_id"]) for e in events}, poison)
