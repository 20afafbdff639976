"""I/O side of the throughput benchmark: services, loaders, worker processes, a consume-only client.

Every process that measures something is a separate OS process (``spawn``), as in production:
the worker never shares a GIL with the producer that feeds it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_detector.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# (Redis URL, key prefix) of every run started in this process: ``python -m benchmarks`` deletes
# their keys when the suite ends (``drop_run_keys``). Each run uses a fresh prefix, so on running
# services (``--kafka``/``--redis``, a developer's own Redis) nothing deleted them before: a day of
# benchmark runs left 248,000 keys, 1.3 GB, in one dev Redis (2026-12-06), and Redis holds it all
# in memory.
_RUN_PREFIXES: set[tuple[str, str]] = set()

# The load producer (pre-produced events, paced latency load). Set explicitly: kafka-python 3.x
# defaults to acks=all + idempotence; a loader only needs the leader's ack.
LOADER_CONFIG: dict[str, Any] = {"acks": 1, "enable_idempotence": False, "linger_ms": 10,
                                 "batch_size": 1024 * 1024, "compression_type": None,
                                 "max_in_flight_requests_per_connection": 5, "max_request_size": 16 * 1024 * 1024}
PACED_CONFIG: dict[str, Any] = {**LOADER_CONFIG, "linger_ms": 1, "batch_size": 256 * 1024}
# The same loads through librdkafka when confluent-kafka is installed: the load generator is not the
# system under test, and at 20k events/s kafka-python's producer alone takes most of a core of this
# 2-core machine from the worker it feeds. Same acks, no idempotence, same batching.
RD_LOADER_CONFIG: dict[str, Any] = {"acks": 1, "enable.idempotence": False, "linger.ms": 10,
                                    "batch.size": 1024 * 1024, "compression.type": "none",
                                    "max.in.flight.requests.per.connection": 5, "message.max.bytes": 16 * 1024 * 1024,
                                    "queue.buffering.max.messages": 1_000_000,
                                    "queue.buffering.max.kbytes": 2 * 1024 * 1024}
RD_PACED_CONFIG: dict[str, Any] = {**RD_LOADER_CONFIG, "linger.ms": 1, "batch.size": 256 * 1024}


def has_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def load_client() -> str:
    """Which client the load generator uses: librdkafka when installed, else kafka-python."""
    return "confluent-kafka" if has_confluent() else "kafka-python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_prefix(redis_url: str, prefix: str) -> str:
    """``prefix`` (a run's Redis key prefix), noted for ``drop_run_keys``; returned as given."""
    _RUN_PREFIXES.add((redis_url, prefix))
    return prefix


def drop_run_keys(log: Any = print) -> int:
    """Delete every key of the runs noted by ``run_prefix`` (``SCAN`` ``MATCH prefix:*`` and
    ``{prefix:*``, the replay log's hash-tagged lists, then ``UNLINK`` in batches of 1,000); returns how
    many. A Redis that is no longer there (the suite's own, already stopped) is skipped: its keys went
    with it. Only keys under the noted prefixes are touched, never a whole database."""
    import redis

    dropped = 0
    for url in sorted({u for u, _p in _RUN_PREFIXES}):
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
        except redis.RedisError:
            continue
        for prefix in sorted(p for u, p in _RUN_PREFIXES if u == url):
            escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix)
            for pattern in (f"{escaped}:*", "{" + escaped + ":*"):
                batch: list[bytes] = []
                for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) == 1000:
                        dropped += int(client.unlink(*batch))
                        batch = []
                if batch:
                    dropped += int(client.unlink(*batch))
        client.close()
    if dropped:
        log(f"deleted the runs' {dropped:,} Redis keys ({len(_RUN_PREFIXES)} prefixes)")
    _RUN_PREFIXES.clear()
    return dropped


@dataclass(frozen=True)
class Services:
    kafka: str
    redis: str



def on_services(kafka: str | None, redis: str | None, run: Callable[[str, str], Any], log: Any = print,
                shared_with: str = "the broker and Redis") -> tuple[Any, str]:
    """``run(kafka, redis)`` on the running services named (both given) or on ones started for it
    (``services``); returns its result and a line with the load average before and after, the
    cores and the run's wall time (for the RESULTS section)."""
    started, before = time.monotonic(), os.getloadavg()
    if kafka and redis:
        out = run(kafka, redis)
    else:
        with services(log) as svc:
            out = run(svc.kafka, svc.redis)
    after = os.getloadavg()
    return out, (f"Load average (1/5/15 min) before: {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f}, after: "
                 f"{after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f}; {os.cpu_count()} cores shared with {shared_with}. "
                 f"Run in {time.monotonic() - started:.0f}s.")


@contextmanager
def services(log: Any = print) -> Iterator[Services]:
    """Kafka + Redis from ``deploy/services.sh`` on free ports and a temporary state folder."""
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as state:
        env = dict(os.environ, SD_KAFKA_PORT=str(free_port()), SD_KAFKA_CONTROLLER_PORT=str(free_port()),
                   SD_REDIS_PORT=str(free_port()), SD_SERVICES_DIR=state)
        script = str(ROOT / "deploy" / "services.sh")
        started = time.monotonic()
        up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=600, check=False)
        if up.returncode != 0:
            subprocess.run([script, "down"], env=env, capture_output=True, timeout=120, check=False)
            raise RuntimeError(f"could not start Kafka/Redis:\n{up.stderr[-3000:]}")
        log(f"services up in {time.monotonic() - started:.0f}s (kafka :{env['SD_KAFKA_PORT']})")
        try:
            yield Services(f"127.0.0.1:{env['SD_KAFKA_PORT']}", f"redis://127.0.0.1:{env['SD_REDIS_PORT']}/0")
        finally:
            subprocess.run([script, "down"], env=env, capture_output=True, timeout=120, check=False)


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None]) -> float:
    """Send all records as fast as the client goes, confirm every one; returns records/s."""
    if has_confluent():
        return _rd_produce(bootstrap, topic, values, keys)
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap], client_id="bench-loader", **LOADER_CONFIG)
    started = time.perf_counter()
    futures = [producer.send(topic, value=v, key=k) for v, k in zip(values, keys, strict=True)]
    producer.flush(timeout=300)
    elapsed = time.perf_counter() - started
    failed = sum(1 for f in futures if not f.is_done or f.failed())
    producer.close()
    if failed:
        raise RuntimeError(f"{failed} loader records not acknowledged")
    return len(values) / elapsed


class _RdDelivery:
    """Counts librdkafka delivery reports (acked / failed)."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0

    def __call__(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed += 1


def _rd_send(producer: Any, topic: str, value: bytes, key: bytes | None, report: _RdDelivery) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=report)
            return
        except BufferError:  # local queue full: serve delivery reports, then retry
            producer.poll(0.01)


def _rd_produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None]) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "bench-loader", **RD_LOADER_CONFIG})
    report = _RdDelivery()
    started = time.perf_counter()
    for i, (v, k) in enumerate(zip(values, keys, strict=True)):
        _rd_send(producer, topic, v, k, report)
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    elapsed = time.perf_counter() - started
    if left or report.failed or report.acked != len(values):
        raise RuntimeError(f"loader: {report.acked} of {len(values)} acknowledged, {report.failed} failed, "
                           f"{left} still queued")
    return len(values) / elapsed


def _pace(send: Any, tick: Any, n: int, rate: float, seconds: float, stamps: list[list[float]] | None = None) -> int:
    """Call ``send(i % n)`` ``rate`` times a second for ``seconds`` (0 rate = as fast as possible, in
    slices of 500), ``tick()`` after each 2 ms slice; returns how many were sent. ``stamps[i]``:
    the epoch ms of every ``send(i)``, one per lap over the values (the time CreateTime would carry)."""
    sent = 0
    started = time.perf_counter()
    end = started + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            return sent
        due = int((now - started) * rate) if rate > 0 else sent + 500
        while sent < due:
            i = sent % n
            if stamps is not None:
                stamps[i].append(time.time() * 1000.0)
            send(i)
            sent += 1
        tick()
        if rate > 0:
            time.sleep(0.002)


def paced_producer(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None], rate: float,
                   seconds: float, result: Any) -> None:
    """Child process: send ``rate`` records/s for ``seconds`` (0 rate = unpaced), in 2 ms slices.

    The record timestamp (CreateTime) is taken at ``send()``/``produce()``, so event→alert latency
    includes the producer's own batching. Puts (sent, achieved rate, the wall times in epoch ms at
    which each of ``values`` was handed to the client, one per lap: none for one never sent) on
    ``result``: with a LogAppendTime topic the records carry the broker's time instead, and these
    are the produce times.
    """
    stamps: list[list[float]] = [[] for _ in values]
    if has_confluent():
        _rd_paced(bootstrap, topic, values, keys, rate, seconds, result, stamps)
        return
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap], client_id="bench-paced", **PACED_CONFIG)
    started = time.perf_counter()
    sent = _pace(lambda i: producer.send(topic, value=values[i], key=keys[i]), lambda: None, len(values), rate,
                 seconds, stamps)
    producer.flush(timeout=120)
    elapsed = time.perf_counter() - started
    producer.close()
    result.put((sent, sent / elapsed, stamps))


def _rd_paced(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None], rate: float,
              seconds: float, result: Any, stamps: list[list[float]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "bench-paced", **RD_PACED_CONFIG})
    report = _RdDelivery()
    started = time.perf_counter()
    sent = _pace(lambda i: _rd_send(producer, topic, values[i], keys[i], report), lambda: producer.poll(0),
                 len(values), rate, seconds, stamps)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    if left or report.failed:
        raise RuntimeError(f"paced loader: {report.failed} failed, {left} still queued")
    result.put((sent, sent / elapsed, stamps))


# ---- the worker under test, in its own process ---------------------------------------------


@dataclass
class WorkerReport:
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (wall time after batch, cumulative events)
    stage_s: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    events: int = 0
    alerts: int = 0
    rss_start_mb: float = 0.0
    rss_max_mb: float = 0.0
    error: str = ""


def _instrument(worker: Any, stage_s: dict[str, float]) -> None:
    """Accumulate each step's wall time from the worker's step-time hook (``Worker.steps``, the same
    figures Prometheus gets as ``stream_detector_step_seconds_total``; no monkeypatching). Scoring runs on
    the worker's scoring thread, overlapped with decode/features of the next chunk: its own time is
    kept as ``scoring thread``; ``compute`` is the whole of steps 2-4 on the worker's thread, so
    ``compute − decode − features`` is the time that thread waited for (or ran) scoring."""
    def add(step: str, seconds: float) -> None:
        stage_s[step] = stage_s.get(step, 0.0) + seconds

    worker.steps.listeners.append(add)  # the worker's own step-time hook (what Prometheus gets)


def step_table(stage_s: dict[str, float]) -> tuple[dict[str, float], float]:
    """Worker-thread wall time per step (they add up to its busy time) and the scoring thread's own time."""
    s = dict(stage_s)
    busy = s.pop("busy", 0.0)
    scoring = s.pop("scoring thread", 0.0)
    compute = s.pop("compute", 0.0)
    steps = {name: s.get(name, 0.0) for name in ("source", "decode", "enrich", "features")}
    steps["score (waited for)"] = max(0.0, compute - steps["decode"] - steps["enrich"] - steps["features"])
    steps["publish"] = s.get("publish", 0.0)
    steps["commit"] = s.get("commit", 0.0)
    steps["other (decide, build alerts, loop)"] = max(0.0, busy - sum(steps.values()))
    return steps, scoring


def worker_process(settings: Settings, target: Any, ready: Any, go: Any, done: Any, result: Any,
                   idle_stop_s: float, deadline_s: float, gate: bool = False) -> None:
    """Child process: start a Worker, say ready once it owns partitions, loop until the shared
    ``target`` event count is reached (or idle / deadline), then report. ``gate``: hold every
    partition paused (polling, so the group forms) until ``go``, so that on a pre-produced backlog
    the first worker to join does not drain it alone before the others have their partitions."""
    import psutil

    from stream_detector.worker import Worker

    me = psutil.Process()
    report = WorkerReport()
    profile_to = os.environ.get("SD_BENCH_PROFILE")  # a folder: this process's cProfile goes there
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        if settings.delivery == "exactly_once":  # one transactional id per process, as one per pod
            settings = settings.model_copy(update={"worker_id": f"{settings.worker_id}-{os.getpid()}"})
        worker = Worker(settings)
        worker.start()
        announced = False
        if gate:
            source, gate_until = worker.source, time.monotonic() + deadline_s
            source.pause_all()
            while not go.is_set() and time.monotonic() < gate_until:
                source.poll_while_paused(100)  # a rebalance's new partitions come back paused, rewound
                if not announced and source.assignment():
                    ready.release()
                    announced = True
            source.resume_all()
        _instrument(worker, report.stage_s)
        report.rss_start_mb = me.memory_info().rss / 2**20
        report.rss_max_mb = report.rss_start_mb
        idle_since = time.monotonic()
        stop_at = time.monotonic() + deadline_s
        while not done.is_set() and time.monotonic() < stop_at:
            before = dict(report.stage_s)
            t = time.perf_counter()
            n = worker.run_once()
            busy = time.perf_counter() - t
            now = time.monotonic()
            if not announced and worker.source.assignment():
                ready.release()
                announced = True
            if n:
                report.stage_s["busy"] = report.stage_s.get("busy", 0.0) + busy
                idle_since = now
                report.timeline.append((time.time(), worker.stats.events))
                with target.get_lock():
                    target.value -= n
                    if target.value <= 0:
                        done.set()
                if worker.stats.batches % 20 == 0:
                    report.rss_max_mb = max(report.rss_max_mb, me.memory_info().rss / 2**20)
            else:  # an empty poll is waiting, not work: keep it out of the step times
                report.stage_s.clear()
                report.stage_s.update(before)
                if go.is_set() and now - idle_since > idle_stop_s:
                    break
        report.rss_max_mb = max(report.rss_max_mb, me.memory_info().rss / 2**20)
        report.batches, report.events, report.alerts = worker.stats.batches, worker.stats.events, worker.stats.alerts
        worker.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report.error = repr(exc)
        if not report.timeline:
            ready.release()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(str(profile_to), f"worker-{os.getpid()}.prof"))
    result.put(report)


class WorkerPool:
    """``k`` worker processes in one consumer group; ``target`` events in total end the run."""

    def __init__(self, settings: Settings, k: int, target: int, idle_stop_s: float = 3.0,
                 deadline_s: float = 300.0, gate: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self.target = ctx.Value("q", target)
        self.ready = ctx.Semaphore(0)
        self.go, self.done = ctx.Event(), ctx.Event()
        self.results: Any = ctx.Queue()
        self.procs = [ctx.Process(target=worker_process, daemon=True,
                                  args=(settings, self.target, self.ready, self.go, self.done, self.results,
                                        idle_stop_s, deadline_s, gate)) for _ in range(k)]

    def start(self, timeout_s: float = 120.0) -> None:
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        for _ in self.procs:
            if not self.ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise RuntimeError("worker processes did not get partitions in time")

    def finish(self, timeout_s: float = 600.0) -> list[WorkerReport]:
        self.go.set()
        reports = [self.results.get(timeout=timeout_s) for _ in self.procs]
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        errors = [r.error for r in reports if r.error]
        if errors:
            raise RuntimeError(f"worker failed: {errors[0]}")
        return reports


def settled(settings: Any, group: str, topic: str) -> bool:
    """Every record of ``topic`` (written in transactions: each partition ends with a commit marker,
    which the last record's offset + 1 does not pass) committed by ``group``."""
    from stream_detector.kafka_util import committed_offsets, end_offsets

    ends, done = end_offsets(settings, topic), committed_offsets(settings, group, topic)
    return all(done.get(tp, 0) >= end - 1 for tp, end in ends.items())


def consume_only_rd(bootstrap: str, topic: str, group: str, total: int, batch: int, wait_ms: int) -> float:
    """librdkafka's ceiling: plain confluent-kafka ``consume(num_messages=batch)`` loop, values touched."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": wait_ms,
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    seen = 0
    first = 0.0
    size = 0
    deadline = time.monotonic() + 300
    while seen < total and time.monotonic() < deadline:
        msgs = consumer.consume(num_messages=batch, timeout=0.5)
        if msgs and not first:
            first = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                seen += 1
                size += len(m.value() or b"")
    elapsed = time.perf_counter() - first
    consumer.close()
    return seen / elapsed if elapsed > 0 else float("nan")


def consume_only(bootstrap: str, topic: str, group: str, total: int, overrides: dict[str, Any]) -> float:
    """The client's ceiling: plain KafkaConsumer poll loop, values only touched, no processing."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", **overrides)
    seen = 0
    first = 0.0
    size = 0
    deadline = time.monotonic() + 300
    while seen < total and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            if not first:
                first = time.perf_counter()
            seen += len(records)
            size += sum(len(r.value) for r in records)
    elapsed = time.perf_counter() - first
    consumer.close(autocommit=False)
    return seen / elapsed if elapsed > 0 else float("nan")
