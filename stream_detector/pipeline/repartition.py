"""Two stages through a repartition topic: exact history for a key the input topic is not keyed by.

A model with account *and* terminal history cannot be split across workers by the input topic's
partitions alone: an account's events sit in one partition, a terminal's in all of them, and the
terminal's features depend on how the partitions interleave (``pipeline/align.py``). Kafka Streams'
answer is to re-key the stream through an internal topic; this module holds the pure parts of
ours (``SD_STAGE``, docs/entity-features.md, *Scaling out: the repartition topic*):

* **Stage 1** (``repartition``, consumer group ``SD_GROUP_ID.repartition``) reads the input topic
  (keyed by ``SD_ENTITY_PARTITION_KEY``, the account), computes that key's history only
  (``carried_spec``: exact, the account being the partition key) and forwards every valid event,
  bytes unchanged, with those features in a header (``CARRIED``, float64 little-endian, the
  columns of ``carried_spec(...).output_fields``) to the repartition topic, in one Kafka
  transaction per batch with its offsets (exactly once: the repartition topic holds each event
  once, read with ``read_committed``).
* The repartition topic has ``buckets × U`` partitions (U: the input topic's): an event of
  upstream partition ``u`` whose ``SD_REPARTITION_KEY`` value falls in bucket ``b``
  (``bucket_of``: CRC-32 of the entity id) goes to partition ``b·U + u``. Each partition thus has
  one upstream partition as its only source, in that partition's order (the transactions of
  successive owners never interleave), so it is in event-time order when the upstream is.
* **Stage 2** (``repartitioned``, ``SD_GROUP_ID``) reads the repartition topic with the range
  assignor, which hands each member contiguous partitions: with a member count that divides
  ``buckets``, whole buckets (all U partitions of each). Every terminal's events then reach one
  worker, which merges its partitions in event time as one worker merges the input topic's
  (``pipeline/align.py``, no peers), computes the terminal history (``rest_spec``), takes the
  account features from the header (``read_carried``), scores and alerts. A bucket split between
  members (a member count that does not divide ``buckets``) is not exact: ``split_buckets`` names
  them and the worker warns.
* **Marks** (Flink's watermarks and idleness, in band): stage 2 may release a record only once
  every partition of its buckets has shown that nothing older is coming. A bucket that gets no
  event of upstream partition ``u`` for a while would say nothing, and stage 2 could not tell a
  quiet partition from a stage-1 worker that is behind (a rebalance, a slow host: measured, 91 to
  395 of 400 events with other features than offline). So with each batch stage 1 writes, in the
  same transaction, a **time mark** to every bucket of ``u`` but the one its last forwarded event
  went to (``time_marks``: the timestamp of that event, read by stage 2 as an event's); and while
  ``u`` is at its end and quiet for ``SD_ALIGN_IDLE_MS``, an **idle mark** to every bucket of ``u``,
  and again every five times that (``idle_marks``, ``IdleMarks``: a stage-2 worker that reads the
  partition again after a rebalance learns it within that time). Stage 2 aligns on the marks as on events, takes
  a partition for idle only while the last thing read from it is an idle mark, and handles events
  only (``marked_rows``; the marks' offsets are committed with them).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import numpy as np

from ..entity.columns import entity_value
from ..entity_spec import EntitySpec
from ..settings import Settings
from ..transport.base import Batch, OutMessage

CARRIED = "sd.carried"  # header: stage 1's features of the input topic's key, float64 little-endian
CARRIED_SPEC = "sd.carried.spec"  # header: the fingerprint of the spec they were computed with
SOURCE = "sd.source"  # header: "topic/partition/offset/timestamp ms" of the event in the input topic
SOURCE_KEY = "sd.source.key"  # header: the event's key in the input topic (absent: it had none)
MARK = "sd.mark"  # header, a mark's first: b"time" (nothing older follows from its upstream) or b"idle"
TIME_MARK, IDLE_MARK = (MARK, b"time"), (MARK, b"idle")
_IDLE_VALUE = b'{"timestamp":null}'

__all__ = ["CARRIED", "CARRIED_SPEC", "IDLE_MARK", "MARK", "SOURCE", "SOURCE_KEY", "TIME_MARK", "IdleMarks",
           "bucket_of", "carried_spec", "forwards", "idle_marks", "is_idle_mark", "marked_rows", "origin",
           "read_carried", "time_marks",
           "rest_spec", "split_buckets", "stage_settings", "stage_problem"]


def stage_settings(settings: Settings) -> Settings:
    """The settings a worker of ``settings.stage`` runs with: stage 1 as consumer group
    ``SD_GROUP_ID.repartition`` without event-time alignment (it computes the topic's key only);
    stage 2 reading the repartition topic with the eager range assignor (whole buckets per member),
    alignment on (``auto`` → ``on``) and its records written every batch (no write-behind, whose
    records hold one partition's offsets: a terminal's events come from U partitions here);
    ``whole``: unchanged."""
    if settings.stage == "repartition":
        return settings.model_copy(update={
            "group_id": settings.stage_1_group,
            "repartition_topic": settings.repartition_topic_name,  # named after the deployment's group, not stage 1's
            "align_event_time": "off" if settings.align_event_time == "auto" else settings.align_event_time})
    if settings.stage == "repartitioned":
        return settings.model_copy(update={
            # no write-behind: a terminal's events come from U partitions of the repartition topic,
            # and a write-behind record keeps one partition's offsets (entity/behind.py)
            "input_topic": settings.repartition_topic_name, "entity_partition_key": "", "assignment": "eager",
            "repartition_topic": settings.repartition_topic_name,  # not derived again from the new input topic
            "align_event_time": "on" if settings.align_event_time == "auto" else settings.align_event_time})
    return settings


def stage_problem(spec: EntitySpec | None, carried: str, rekeyed: str) -> str | None:
    """Why a model cannot run in two stages carrying key ``carried`` and re-keyed by ``rekeyed``
    (None: it can): both must be entity keys of ``spec``."""
    if spec is None:
        return "the model has no entity features: run it with SD_STAGE=whole"
    if carried not in spec.keys or rekeyed not in spec.keys:
        return (f"the model's entity keys are {', '.join(spec.keys)}; two stages need SD_ENTITY_PARTITION_KEY "
                f"({carried}) and SD_REPARTITION_KEY ({rekeyed}) among them")
    return None


def carried_spec(spec: EntitySpec, key: str) -> EntitySpec:
    """The part of ``spec`` stage 1 computes: ``key`` alone, with its label features when it is a
    label key (the same columns, ``spec.fields_for(key)`` and its ``label_fields``, computed the same
    way: an entity's features depend on its own events and their labels only)."""
    return dataclasses.replace(spec, keys=(key,), label_keys=tuple(k for k in spec.label_keys if k == key))


def rest_spec(spec: EntitySpec, key: str) -> EntitySpec:
    """The part of ``spec`` stage 2 computes: every key but the carried ``key``, and their label
    features."""
    return dataclasses.replace(spec, keys=tuple(k for k in spec.keys if k != key),
                               label_keys=tuple(k for k in spec.label_keys if k != key))


def bucket_of(values: Iterable[Any], buckets: int) -> np.ndarray:
    """int64[n]: each key value's bucket, CRC-32 of its entity id (``entity_value``: ``5`` and ``"5"``
    are one entity) modulo ``buckets``; a value without a usable id (no history) goes to bucket 0.
    Stable across processes and releases (unlike ``hash``)."""
    out = [zlib.crc32(v.encode()) % buckets if v is not None else 0 for v in map(entity_value, values)]
    return np.asarray(out, dtype=np.int64)


def forwards(batch: Batch, indices: Sequence[int], keys: Sequence[Any], carried: np.ndarray, fingerprint: str,
             topic: str, upstream: int, buckets: int) -> list[OutMessage]:
    """Stage 1's records for the repartition ``topic``: per valid event (``indices`` into ``batch``,
    ``keys`` their ``SD_REPARTITION_KEY`` values, ``carried`` float64[n, k] their carried features),
    its bytes unchanged at partition ``bucket·upstream + partition``, keyed by the key's entity id,
    with headers ``CARRIED`` (the row), ``CARRIED_SPEC`` (``fingerprint``), ``SOURCE`` and, when
    the record had a key, ``SOURCE_KEY``.
    Raises ``ValueError`` when the batch holds a partition ``≥ upstream``."""
    rows = np.ascontiguousarray(carried, dtype="<f8")
    spec_header = fingerprint.encode()
    out: list[OutMessage] = []
    for j, (i, b) in enumerate(zip(indices, bucket_of(keys, buckets).tolist(), strict=True)):
        p = batch.partitions[i]
        if p >= upstream:
            raise ValueError(f"partition {p} of {batch.topic} beyond the {upstream} the repartition topic was made for")
        key = entity_value(keys[j])
        headers = [(CARRIED, rows[j].tobytes()), (CARRIED_SPEC, spec_header),
                   (SOURCE, f"{batch.topic}/{p}/{batch.offsets[i]}/{batch.timestamps[i]}".encode())]
        if batch.keys[i] is not None:
            headers.append((SOURCE_KEY, batch.keys[i]))
        out.append(OutMessage(topic, key.encode() if key is not None else None, batch.values[i], headers,
                              partition=b * upstream + p))
    return out


def time_marks(forwarded: Sequence[OutMessage], topic: str, upstream: int, buckets: int) -> list[OutMessage]:
    """Stage 1's time marks for one batch's ``forwarded`` records (``forwards``, in offset order):
    per upstream partition ``u`` among them, a record at every partition ``b·upstream + u`` but the
    one its last forwarded record went to, whose value is ``{"timestamp": …}`` with that record's
    timestamp as it was (stage 2 reads it with the model's rule, as the event's), headers
    ``TIME_MARK`` first, then the event's ``SOURCE``. Each partition of the repartition topic thus
    ends every batch at its upstream's newest time: stage 2 knows that nothing older is coming."""
    last: dict[int, OutMessage] = {}
    for message in forwarded:
        assert message.partition is not None
        last[message.partition % upstream] = message
    out: list[OutMessage] = []
    for u, message in last.items():
        value = b'{"timestamp":' + _raw_timestamp(message.value) + b"}"
        headers = [TIME_MARK, *(h for h in message.headers if h[0] == SOURCE)]
        out += [OutMessage(topic, None, value, headers, partition=b * upstream + u)
                for b in range(buckets) if b * upstream + u != message.partition]
    return out


def idle_marks(partitions: Iterable[int], topic: str, upstream: int, buckets: int) -> list[OutMessage]:
    """Stage 1's idle marks: for each upstream partition in ``partitions`` (at its end and quiet,
    ``IdleMarks``), a record at every one of its partitions of the repartition ``topic``, value
    ``{"timestamp":null}`` (no time: it takes the partition's clock), header ``IDLE_MARK``."""
    return [OutMessage(topic, None, _IDLE_VALUE, [IDLE_MARK], partition=b * upstream + u)
            for u in sorted(partitions) for b in range(buckets)]


def is_idle_mark(headers: Any) -> bool:
    """Whether a record with ``headers`` is an idle mark (``idle_marks``)."""
    return bool(headers) and tuple(headers[0]) == IDLE_MARK


def marked_rows(headers: Sequence[Any]) -> list[int]:
    """Stage 2: the rows of a batch (``headers``, one sequence per record) that are marks, not events
    (their first header is ``MARK``; an event's is ``CARRIED``)."""
    return [i for i, hs in enumerate(headers) if hs and hs[0][0] == MARK]


class IdleMarks:
    """When stage 1 owes stage 2 an idle mark for an upstream partition (``idle_marks``): its client
    has nothing left of it (``Source.backlog`` 0) and nothing came from it for ``idle_s`` (since its
    last record, or since it was assigned), and no idle mark went out for it in the last
    ``every_s`` (default five times ``idle_s``: a heartbeat, so that the stage-2 worker that reads
    its partitions again after a rebalance learns it within that time; 12 buckets and 4 idle
    partitions at the default 2 s are about 5 small records a second). ``seen`` records the
    partitions of a polled batch (each record ends its partition's idleness); ``due`` answers,
    ``sent`` records the marks as written (committed)."""

    def __init__(self, idle_s: float, every_s: float | None = None) -> None:
        self.idle_s = idle_s
        self.every_s = 5 * idle_s if every_s is None else every_s
        self._last: dict[int, float] = {}  # partition → when its last record came (or it was assigned)
        self._marked: dict[int, float] = {}  # partition → when its last idle mark went out

    def seen(self, partitions: Iterable[int], now: float) -> None:
        for p in partitions:
            self._last[p] = now
            self._marked.pop(p, None)

    def due(self, assigned: Iterable[int], backlog: Callable[[], dict[int, int | None]], now: float) -> list[int]:
        """The partitions of ``assigned`` owed an idle mark now (a partition first seen here counts
        as quiet from now; one revoked is forgotten). ``backlog`` (``Source.backlog``) is called only
        when some partition is quiet and unmarked for ``idle_s``."""
        assigned = set(assigned)
        for p in [p for p in self._last if p not in assigned]:
            del self._last[p]
            self._marked.pop(p, None)
        quiet = [p for p in sorted(assigned) if now - self._last.setdefault(p, now) >= self.idle_s
                 and now - self._marked.get(p, float("-inf")) >= self.every_s]
        if not quiet:
            return []
        left = backlog()
        return [p for p in quiet if left.get(p) == 0]

    def sent(self, partitions: Iterable[int], now: float) -> None:
        for p in partitions:
            self._marked[p] = now


def _raw_timestamp(value: bytes | None) -> bytes:
    """The ``timestamp`` member of a JSON event as JSON text, as it was (``null`` when absent)."""
    try:
        raw = _PEEK(value) if value is not None else None
    except (msgspec.DecodeError, RecursionError):  # RecursionError: a deeply nested field (align.event_times)
        raw = None
    return bytes(raw.timestamp) if raw is not None and raw.timestamp else b"null"


class _Peek(msgspec.Struct):
    timestamp: msgspec.Raw = msgspec.Raw(b"")


_PEEK = msgspec.json.Decoder(_Peek).decode


def read_carried(headers: Sequence[Any], width: int, fingerprint: str) -> tuple[np.ndarray, dict[int, str]]:
    """Stage 2: the carried features of each record (``headers``: one sequence of ``(name, bytes)``
    per record) as float64[n, width], and {row: why} for the records without a usable block (no
    ``CARRIED`` header, another width, or computed with another spec than ``fingerprint``: a
    model swapped in one stage and not yet in the other); those rows are NaN."""
    out = np.full((len(headers), width), np.nan)
    bad: dict[int, str] = {}
    want = fingerprint.encode()
    for i, hs in enumerate(headers):
        found = dict(hs or ())
        block, spec = found.get(CARRIED), found.get(CARRIED_SPEC)
        if block is None:
            bad[i] = f"no {CARRIED} header: not written by a stage-1 worker (SD_STAGE=repartition)"
        elif spec != want:
            bad[i] = (f"carried features computed with entity spec {(spec or b'?').decode(errors='replace')}, "
                      f"this model's is {fingerprint}: stage 1 runs another model")
        elif len(block) != 8 * width:
            bad[i] = f"{CARRIED} holds {len(block) // 8} values, this model carries {width}"
        else:
            out[i] = np.frombuffer(block, dtype="<f8")
    return out, bad


def origin(batch: Batch) -> Batch:
    """Stage 2: ``batch`` as its events were in the input topic, for their alerts and shadow records
    (an alert names the event's topic, partition, offset and Kafka timestamp, and is keyed as the
    event was): from each record's ``SOURCE`` and ``SOURCE_KEY`` headers. A record without them
    (dead-lettered, never alerted) keeps its own position."""
    out = Batch(topic=batch.topic, partitions=list(batch.partitions), offsets=list(batch.offsets),
                keys=list(batch.keys), values=batch.values, timestamps=list(batch.timestamps),
                headers=batch.headers, polled_at=batch.polled_at, group=batch.group)
    for i, hs in enumerate(batch.headers):
        found = dict(hs or ())
        source = found.get(SOURCE)
        if source is None:
            continue
        topic, partition, offset, timestamp = source.decode().rsplit("/", 3)
        out.topic, out.partitions[i], out.offsets[i], out.timestamps[i] = topic, int(partition), int(offset), \
            int(timestamp)
        out.keys[i] = found.get(SOURCE_KEY)
    return out


def split_buckets(partitions: Iterable[int], upstream: int) -> list[int]:
    """The buckets of which a stage-2 worker holds some but not all ``upstream`` partitions (their
    entities' events are merged by two workers: not exact)."""
    held: dict[int, int] = {}
    for p in partitions:
        held[p // upstream] = held.get(p // upstream, 0) + 1
    return sorted(b for b, n in held.items() if n != upstream)
