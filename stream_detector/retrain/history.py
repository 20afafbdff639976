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
(``retention.ms``; 30-day windows need ≥ 30 days plus ``SD_RETRAIN_WINDOW_SECONDS``).

**Cost: disk, not memory.** The events are not held: each accepted record's value is appended to a
spool file (``SD_RETRAIN_SPOOL_DIR``, the system temp folder by default; deleted when the run ends)
and only its sort key stays in memory (event time, partition, offset, place in the file: 40 bytes
per event). ``History.chunks`` then decodes the spool in event-time order, a chunk at a time, and
``job.py`` enriches it with ``entity.history.enrich_selected`` keeping only the rows it needs: 10M
Handbook events are about 1.9 GB of spool; the whole run peaked at 4.1 GB resident
(``benchmarks/RESULTS.md``, retrain-scale). The labels (a few per hundred events) are held in
memory. A run killed before its cleanup leaves its spool behind; the next run removes every spool
whose process is gone (each holds its ``owner.pid``).
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from ..errors import ConfigError
from ..feedback import Label
from ..fieldschema import FieldSchema
from ..kafka_util import partitions_of
from ..label_ingest import read_label
from ..pipeline.decode import decode_batch, parse_record
from ..settings import Settings
from ..transport.kafka_python import poll_readable

log = logging.getLogger("stream_detector.retrain")

SPOOL_PREFIX = "sd-history-"
OWNER = "owner.pid"


def remove_stale_spools(parent: Path) -> list[Path]:
    """Delete the history spools in ``parent`` whose process is gone (a retraining killed before its
    cleanup: SIGKILL, a crash, the machine stopped), so that they do not pile up run after run; a
    spool of a live process (another retrainer on this host) is left alone. Returns those removed."""
    removed: list[Path] = []
    try:
        found = [p for p in parent.iterdir() if p.name.startswith(SPOOL_PREFIX) and p.is_dir()]
    except OSError:
        return removed
    for spool in found:
        try:
            pid = int((spool / OWNER).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created: leave it
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(spool, ignore_errors=True)
        removed.append(spool)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class History:
    """Decoded input events in event-time order (then partition, offset), spooled on disk; every
    valid feedback record read (``labels``); ``counts``: records read and left out, per topic.

    Fill with ``add`` (record values that decoded, their times, partitions and offsets), then
    ``seal``; read with ``chunks``. ``close`` (or ``with``) deletes the spool."""

    def __init__(self, directory: str | Path | None = None) -> None:
        parent = Path(directory) if directory else Path(tempfile.gettempdir())
        removed = remove_stale_spools(parent)
        if removed:
            log.warning("removed %d history spool(s) left in %s by retraining runs that did not finish: %s",
                        len(removed), parent, ", ".join(p.name for p in removed))
        try:
            self._dir = tempfile.TemporaryDirectory(prefix=SPOOL_PREFIX, dir=parent)
            (Path(self._dir.name) / OWNER).write_text(str(os.getpid()))
            self._file: BinaryIO | None = open(Path(self._dir.name) / "events.spool", "wb")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot spool the retraining history in {parent} (SD_RETRAIN_SPOOL_DIR): "
                              f"{exc.strerror or exc}") from exc
        self._keys: list[np.ndarray] = []
        self._size = 0
        self._order: np.ndarray | None = None
        self._spans: np.ndarray = np.zeros((0, 2), dtype=np.int64)
        self.labels: list[Label] = []
        self.counts: dict[str, int] = {}

    @classmethod
    def of(cls, events: Sequence[dict[str, Any]], labels: Sequence[Label] = (),
           directory: str | Path | None = None) -> History:
        """A history of ``events`` in the given order (tests, and hand use)."""
        import orjson

        out = cls(directory)
        out.add([orjson.dumps(e) for e in events], np.arange(len(events), dtype=np.float64),
                np.zeros(len(events), dtype=np.int64), np.arange(len(events), dtype=np.int64))
        out.labels = list(labels)
        return out.seal()

    def add(self, values: Sequence[bytes], times: np.ndarray, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """Spool record ``values`` (each one that ``decode_batch`` accepts) with their sort keys:
        ``times`` float64 (event time, ms), ``partitions`` and ``offsets`` int64."""
        if self._file is None:
            raise RuntimeError("history sealed")
        lengths = np.fromiter(map(len, values), np.int64, len(values))
        starts = self._size + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        try:
            self._file.write(b"".join(values))
        except OSError as exc:  # a full disk, typically: say where, and which setting moves it
            raise ConfigError(f"cannot spool the retraining history in {Path(self._dir.name).parent} "
                              f"(SD_RETRAIN_SPOOL_DIR): {exc.strerror or exc} after {self._size / 2**20:,.0f} MiB; "
                              f"the spool needs about the records' bytes of the history read") from exc
        self._size += int(lengths.sum())
        keys = np.empty((len(values), 5), dtype=np.float64)  # time, partition, offset, start, length
        keys[:, 0], keys[:, 1], keys[:, 2], keys[:, 3], keys[:, 4] = times, partitions, offsets, starts, lengths
        self._keys.append(keys)

    def seal(self) -> History:
        """Close the spool and sort: the events' order is fixed from here on."""
        if self._file is not None:
            self._file.close()
            self._file = None
        keys = np.concatenate(self._keys) if self._keys else np.zeros((0, 5))
        self._keys = []
        order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
        self._spans = keys[order][:, 3:5].astype(np.int64)
        self._order = order
        return self

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def spool_bytes(self) -> int:
        return self._size

    def chunks(self, size: int = 65_536) -> Iterator[list[dict[str, Any]]]:
        """The events in order, ``size`` at a time (each a JSON object, as ``decode_batch`` gave it)."""
        if self._order is None:
            raise RuntimeError("history not sealed")
        if not len(self):
            return
        with open(Path(self._dir.name) / "events.spool", "rb") as f, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as spool:
            for at in range(0, len(self), size):
                spans = self._spans[at:at + size].tolist()
                yield [parse_record(spool[a:a + n])[0] for a, n in spans]

    def events(self) -> list[dict[str, Any]]:
        """Every event at once (small histories, tests): memory grows with the history."""
        return [e for chunk in self.chunks() for e in chunk]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._dir.cleanup()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_history(settings: Settings, since_ms: int, decided: Mapping[int, int], timeout_s: float = 300.0,
                 progress: Callable[[str], None] | None = None, schema: FieldSchema | None = None,
                 stop: Callable[[], None] = lambda: None) -> History:
    """Read the input topic from ``since_ms`` (epoch ms, record time) up to ``decided`` (partition →
    first offset not yet committed by the workers; a partition absent reads nothing) into a spooled
    ``History``, and the feedback topic from ``since_ms`` to its end. Records are decoded as a
    worker decodes them (``schema``: the active model's field schema), so what a worker
    dead-letters is left out. Raises ``TimeoutError`` when the topics cannot be read within
    ``timeout_s`` (the spool is deleted then). ``stop()`` is called before each poll (it may raise:
    ``Stopping.check``, the spool deleted then too)."""
    say = progress or (lambda _m: None)
    out = History(settings.retrain_spool_dir or None)
    out.counts = {"input_records": 0, "input_rejected": 0, "feedback_records": 0, "feedback_rejected": 0}
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             isolation_level="read_committed", client_id="stream-detector-retrainer-history",
                             max_poll_records=10_000, **settings.kafka_security())
    started, reported = time.monotonic(), time.monotonic()
    try:
        for tp, records in _read(consumer, settings.input_topic, since_ms, decided, timeout_s, stop):
            out.counts["input_records"] += len(records)
            decoded = decode_batch([r.value for r in records], settings.max_event_bytes, schema=schema)
            out.counts["input_rejected"] += len(decoded.rejected)
            kept = [records[i] for i in decoded.indices]
            out.add([r.value for r in kept],
                    np.fromiter((_event_time(e, r.timestamp) for e, r in zip(decoded.events, kept, strict=True)),
                                np.float64, len(kept)),
                    np.full(len(kept), tp.partition, dtype=np.int64),
                    np.fromiter((r.offset for r in kept), np.int64, len(kept)))
            if time.monotonic() - reported > 30:
                reported = time.monotonic()
                say(f"reading the history from Kafka: {out.counts['input_records']:,} records "
                    f"({out.counts['input_records'] / (reported - started):,.0f}/s)")
        out.seal()
        for _tp, records in _read(consumer, settings.feedback_topic, since_ms, None, timeout_s, stop):
            out.counts["feedback_records"] += len(records)
            for r in records:
                label = read_label(r.value, r.timestamp)
                if isinstance(label, Label):
                    out.labels.append(label)
                else:
                    out.counts["feedback_rejected"] += 1
    except BaseException:
        out.close()
        raise
    finally:
        consumer.close(autocommit=False)
    since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since_ms / 1000))
    say(f"history from Kafka: {len(out):,} events read from Kafka record time {since} UTC on (the window's oldest "
        f"record less the features' horizon; {out.counts['input_rejected']} left out as the workers dead-letter "
        f"them; {out.spool_bytes / 2**20:,.0f} MiB spooled), {len(out.labels):,} labels")
    return out


def _event_time(event: Mapping[str, Any], record_ms: int) -> float:
    """The event's own timestamp when it is a number (epoch ms, as the simulators write), else the
    record's: only the order matters here, the features read the field itself."""
    value = event.get("timestamp")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(record_ms)


def _read(consumer: KafkaConsumer, topic: str, since_ms: int, until: Mapping[int, int] | None,
          timeout_s: float, stop: Callable[[], None] = lambda: None) -> Iterator[tuple[TopicPartition, list[Any]]]:
    """Records of ``topic`` from ``since_ms`` up to ``until`` (partition → end offset; None: the end
    offsets now), as (partition, records) chunks, one poll at a time (nothing accumulates here).
    ``timeout_s`` bounds the time without progress; ``stop()`` is called before each poll."""
    parts = partitions_of(consumer, topic, timeout_s)
    tps = [TopicPartition(topic, p) for p in parts]
    ends = consumer.end_offsets(tps)
    if until is not None:
        ends = {tp: min(end, int(until.get(tp.partition, 0))) for tp, end in ends.items()}
    starts = {tp: (found.offset if found is not None else ends[tp])
              for tp, found in consumer.offsets_for_times({tp: since_ms for tp in tps}).items()}
    todo = [tp for tp in tps if starts[tp] < ends[tp]]
    if not todo:
        return
    consumer.assign(todo)
    for tp in todo:
        consumer.seek(tp, starts[tp])
    remaining = set(todo)
    deadline = time.monotonic() + timeout_s
    while remaining:
        stop()
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {topic} up to its decided offsets: no progress for {timeout_s:.0f}s")
        for tp, records in poll_readable(consumer, 200).items():
            if tp not in remaining:
                continue
            deadline = time.monotonic() + timeout_s
            kept = [r for r in records if r.offset < ends[tp]]
            if kept:
                yield tp, kept
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
    consumer.unsubscribe()


def read_shadow(settings: Settings, version: str, since_ms: int, timeout_s: float = 120.0,
                stop: Callable[[], None] = lambda: None) -> tuple[list[dict[str, Any]], list[Label]]:
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
        for _tp, chunk in (_read(consumer, settings.shadow_topic, since_ms, None, timeout_s, stop)
                           if settings.shadow_topic in existing else []):
            for r in chunk:
                try:
                    record = orjson.loads(r.value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("challenger", {}).get("model_version") == version:
                    records.append(record)
        for _tp, chunk in (_read(consumer, settings.feedback_topic, since_ms, None, timeout_s, stop)
                           if settings.feedback_topic in existing else []):
            labels.extend(x for x in (read_label(r.value, r.timestamp) for r in chunk) if isinstance(x, Label))
    finally:
        consumer.close(autocommit=False)
    return records, labels
