"""Putting events on the input topic: file replay and live simulation, paced, with progress.

Events are keyed by ``SD_ENTITY_PARTITION_KEY``'s field, ``account_id`` by default (so one
partition, hence one worker, owns an account; the workers' write-behind assumes that key), and
labels, when known, travel in the ``sd.label`` header — never in the event, so they cannot
leak into features; an event without a label (``""``) has no such header.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaProducer

from .errors import ConfigError, DeliveryError
from .settings import Settings
from .simulate import HandbookSimulator, LabelDelays, Simulator, label_record
from .topics import ensure_topics, topic_exists
from .transport.factory import transport_config
from .transport.kafka_python_out import producer_config

Progress = Callable[[str], None]


class EventProducer:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        # the field events are keyed by: the one the workers take the topic to be keyed by (a trial: with
        # SD_ENTITY_PARTITION_KEY=CUSTOMER_ID, events keyed by a missing account_id spread a customer over
        # every partition, and the worker's customer history, computed out of time order, alerted 100x)
        self.key_field = settings.entity_partition_key or "account_id"
        self.unkeyed = 0  # events sent without a key (no value in key_field): any partition
        self.producer: KafkaProducer | None = None
        self.futures: list[Any] = []
        self.created: list[str] = []  # topics this producer created (the CLI says so: a misspelt one is new)
        self._checked: set[str] = set()  # topics _ready found or created
        self.sent_events = 0  # handed to the client by ``send`` (an interrupted run says how many)
        self.sent_labels = 0  # label records handed to the client by the simulate runs
        self.acknowledged = 0  # records Kafka acknowledged (an interrupted run says how many got there)
        # the first records in send order all acknowledged: an interrupted produce goes on after them (--skip)
        self.acknowledged_in_order = 0

    def _ready(self, topic: str) -> None:
        """``topic`` exists: created with ``SD_CREATE_TOPICS`` (and remembered in ``created``), else
        ``ConfigError`` when missing (a trial: kafka-python logged "not found in cluster metadata"
        ten times a second for a minute, then failed with its timeout). Asked once per topic (an
        admin round trip: asked per chunk, it halved a paced live run's rate)."""
        if topic in self._checked:
            return
        if self.settings.create_topics:
            self.created += ensure_topics(self.settings, [topic])
        elif not topic_exists(self.settings, topic):
            made = {self.settings.input_topic, self.settings.feedback_topic}
            how = ("`stream-detector topics` creates it" if topic in made else
                   "create it with Kafka's tools, or let produce create it with SD_CREATE_TOPICS=true")
            raise ConfigError(f"no topic {topic} on {self.settings.bootstrap_servers} (SD_CREATE_TOPICS=false: "
                              f"check its name; {how})")
        self._checked.add(topic)

    def __enter__(self) -> EventProducer:
        self._ready(self.topic)
        self.producer = KafkaProducer(**producer_config(transport_config(self.settings), linger_ms=5,
                                                        client_id="stream-detector-producer"))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.producer is not None:
            if exc_type is None:
                self.confirm()
            else:  # interrupted: what was handed over is flushed (briefly) and counted, not checked
                self.producer.flush(timeout=min(5.0, self.settings.delivery_timeout_s))
                done = [f.is_done and not f.failed() for f in self.futures]
                self.acknowledged_in_order = self.acknowledged + next(
                    (i for i, ok in enumerate(done) if not ok), len(done))
                self.acknowledged += sum(done)
                self.futures.clear()
            self.producer.close(timeout=self.settings.delivery_timeout_s)
            self.producer = None

    def send(self, events: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> None:
        assert self.producer is not None, "use EventProducer as a context manager"
        self.sent_events += len(events)
        field = self.key_field
        for i, event in enumerate(events):
            account = event.get(field)
            if account is None or account == "":
                self.unkeyed += 1
            headers = [("sd.label", labels[i].encode())] if labels is not None and labels[i] else None
            self.futures.append(self.producer.send(
                self.topic, value=orjson.dumps(event),
                key=None if account is None or account == "" else str(account).encode(), headers=headers))

    def send_records(self, topic: str, records: Sequence[dict[str, Any]], key_field: str = "event_id") -> None:
        """Send JSON ``records`` to ``topic`` keyed by their ``key_field`` (e.g. feedback records by
        event id); checked by ``confirm`` like ``send``."""
        assert self.producer is not None, "use EventProducer as a context manager"
        if topic != self.topic:
            self._ready(topic)
        for record in records:
            key = record.get(key_field)
            self.futures.append(self.producer.send(topic, value=orjson.dumps(record),
                                                   key=None if key is None else str(key).encode()))

    def confirm(self) -> None:
        """Flush and check every send (``flush()`` alone does not report failures)."""
        assert self.producer is not None
        self.producer.flush(timeout=self.settings.delivery_timeout_s)
        failed = [f for f in self.futures if not f.is_done or f.failed()]
        self.acknowledged += len(self.futures) - len(failed)
        if not failed:
            self.acknowledged_in_order = self.acknowledged
        self.futures.clear()
        if failed:
            raise DeliveryError(f"{len(failed)} events were not acknowledged by Kafka")

    def send_paced(self, events: Sequence[dict[str, Any]], labels: Sequence[str] | None, rate: float,
                   progress: Progress | None = None, stop: Callable[[], bool] = lambda: False) -> int:
        """Send ``events`` (with their ``labels`` as the ``sd.label`` header) at ``rate`` per second
        (0: as fast as possible), in chunks of about 50 ms of it, every 20 chunks confirmed.
        ``stop()`` is asked before each chunk: true, it raises ``KeyboardInterrupt`` there, between
        two calls of the Kafka client (a signal handler that sets a flag, not one that raises inside
        the client: ``kafka_util.tail``). Returns how many were sent."""
        def chunk(start: int, n: int) -> None:
            self.send(events[start:start + n], None if labels is None else labels[start:start + n])
        return _paced(len(events), rate, chunk, self.confirm, progress, stop)

    def simulate(self, sim: Simulator, total: int, rate: float, fraud_rate: float,
                 progress: Progress | None = None, labels_out: dict[str, str] | None = None,
                 stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
        """Produce ``total`` simulated events at ``rate``; ``labels_out`` collects event_id → label;
        ``stop`` as ``send_paced``'s."""
        frauds = 0

        def chunk(_start: int, n: int) -> None:
            nonlocal frauds
            events, labels = sim.batch(n, fraud_rate)
            frauds += sum(1 for lab in labels if lab != "legit")
            if labels_out is not None:
                labels_out.update((str(e["event_id"]), lab) for e, lab in zip(events, labels, strict=True))
            self.send(events, labels)
        return _paced(total, rate, chunk, self.confirm, progress, stop), frauds

    def simulate_handbook(self, sim: HandbookSimulator, total: int, rate: float, delays: LabelDelays,
                          feedback_topic: str, progress: Progress | None = None,
                          stop: Callable[[], bool] = lambda: False) -> tuple[int, int, int, int]:
        """Produce ``total`` raw events (no label header) at ``rate``, stamped with the wall clock;
        their delayed label records go to ``feedback_topic`` (keyed by event id) as they come due
        (``labelled_at`` <= now) while the run lasts. Returns (events, frauds, labels published,
        labels not yet due at the end, hence not published)."""
        assert self.producer is not None, "use EventProducer as a context manager"
        self._ready(feedback_topic)
        pending: list[tuple[int, int, bytes, bytes]] = []  # heap of (labelled_at, order, key, record)
        counts = {"frauds": 0, "labels": 0, "order": 0}

        def release() -> None:
            assert self.producer is not None
            now_ms = int(time.time() * 1000)
            while pending and pending[0][0] <= now_ms:
                _, _, key, value = heapq.heappop(pending)
                self.futures.append(self.producer.send(feedback_topic, value=value, key=key))
                counts["labels"] += 1
                self.sent_labels += 1

        def chunk(_start: int, n: int) -> None:
            batch = sim.generate(n)
            counts["frauds"] += int(batch.fraud.sum())
            self.send(batch.events())
            ids = batch.event_ids()
            rows, fraud, chargeback, at = (c.tolist() for c in batch.label_columns(delays))
            for row, is_fraud, is_chargeback, labelled_at in zip(rows, fraud, chargeback, at, strict=True):
                record = label_record(ids[row], is_fraud, is_chargeback, labelled_at)
                heapq.heappush(pending, (labelled_at, counts["order"], ids[row].encode(), orjson.dumps(record)))
                counts["order"] += 1
            release()

        sent = _paced(total, rate, chunk, self.confirm, progress, stop)
        release()
        self.confirm()
        return sent, counts["frauds"], counts["labels"], len(pending)

    def simulate_world(self, sim: HandbookSimulator, total: int, rate: float, delays: LabelDelays,
                       feedback_topic: str, end_ms: int, progress: Progress | None = None,
                       stop: Callable[[], bool] = lambda: False) -> tuple[int, int, int, int]:
        """Produce ``total`` raw events (no label header) at ``rate`` per second (0: as fast as
        possible), stamped on the simulated world's clock (``history_files.WorldClockStream``: the
        span ``sim.world_span_ms(total)`` ending at ``end_ms``), none sent before its timestamp (the
        run waits where the world's clock is ahead of the pacing); each delayed label goes to
        ``feedback_topic`` (keyed by event id) once the events sent have passed its ``labelled_at``.
        Returns (events, frauds, labels published, labels not yet due at the end, not published)."""
        from .history_files import WorldClockStream

        assert self.producer is not None, "use EventProducer as a context manager"
        self._ready(feedback_topic)
        world = WorldClockStream(sim, total, end_ms, _chunk_size(rate), delays)
        stream = iter(world)
        frauds = 0

        def chunk(_start: int, n: int) -> None:
            nonlocal frauds
            batch, due = next(stream)
            assert len(batch) == n, (len(batch), n)  # the stream is cut as _paced cuts the run
            # no event before its time: where --rate is below the world's pace, or the daily profile
            # crowds the span's end (noon), the stamps can run ahead of the pacing (a review: +2,292 s)
            _wait_until(int(batch.timestamp[-1]) / 1000, time.time, stop)
            frauds += int(batch.fraud.sum())
            self.send(batch.events())
            rows = [dict(zip(due, row, strict=True)) for row in zip(*due.values(), strict=True)]  # the contract's
            self.send_records(feedback_topic, rows)
            self.sent_labels += len(rows)

        labels_before = self.sent_labels
        sent = _paced(total, rate, chunk, self.confirm, progress, stop)  # its last step confirms every send
        return sent, frauds, self.sent_labels - labels_before, world.pending()


def _chunk_size(rate: float) -> int:
    """Events per chunk of a paced run: ~50 ms of ``rate`` (0, unpaced: 5,000)."""
    return max(1, int(rate / 20)) if rate > 0 else 5000


def _paced(total: int, rate: float, send_chunk: Callable[[int, int], None], confirm: Callable[[], None],
           progress: Progress | None, stop: Callable[[], bool] = lambda: False) -> int:
    """Send ``total`` items in chunks of ``_chunk_size(rate)``, sleeping to hold ``rate`` (0 = unpaced).
    ``stop()`` is asked before each chunk: true, it raises ``KeyboardInterrupt`` there, between two
    calls of the Kafka client (``stopping.Stopping``)."""
    step = _chunk_size(rate)
    started = time.monotonic()
    last_report = started
    sent = 0
    while sent < total:
        if stop():
            raise KeyboardInterrupt
        n = min(step, total - sent)
        send_chunk(sent, n)
        sent += n
        if sent % (step * 20) < step:
            confirm()
        now = time.monotonic()
        if rate > 0:
            _wait_until(started + sent / rate, time.monotonic, stop)
        if progress is not None and now - last_report >= 5:
            last_report = now
            progress(f"sent {sent}/{total} ({sent / max(now - started, 1e-9):.0f}/s)")
    confirm()
    return sent


def _wait_until(deadline_s: float, clock: Callable[[], float], stop: Callable[[], bool]) -> None:
    """Sleep until ``clock()`` (seconds) reaches ``deadline_s``, in slices of at most 0.2 s, so that
    ``stop()`` (a Ctrl-C's flag) is not kept waiting at a slow rate."""
    while (left := deadline_s - clock()) > 0 and not stop():
        time.sleep(min(left, 0.2))
