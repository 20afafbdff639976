"""Event-time alignment (``pipeline/align.py``) on the in-memory transport: a backlog fetched
partition by partition is released in event-time order, every record once, each partition as
contiguous prefixes; caught-up partitions hold nothing back; a rewind or a rebalance re-reads the
buffer instead of losing it."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.fieldschema import EventTime, FieldRule, FieldSchema, FieldType
from stream_detector.pipeline.align import AlignedSource, event_time_ms
from stream_detector.transport.base import Batch
from stream_detector.transport.memory import MemoryBroker, MemorySource

TOPIC, GROUP = "tx", "g"


def _broker(per_partition: dict[int, list[float]]) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic(TOPIC, partitions=4)
    for p, times in per_partition.items():
        broker.produce(TOPIC, [orjson.dumps({"event_id": f"{p}-{i}", "timestamp": t}) for i, t in enumerate(times)],
                       partition=p)
    return broker


def _aligned(broker: MemoryBroker, batch: int = 10, jump: float = 3_600_000.0) -> AlignedSource:
    source = AlignedSource(MemorySource(broker, TOPIC, GROUP, batch_size=batch), batch_size=batch, idle_ms=50,
                           max_buffered=10_000, max_jump_ms=jump)  # this source drains partition 0 before it reads 1
    source.enabled = True
    source.start()
    return source


def _drain(source: AlignedSource, commit: bool = True) -> list[Batch]:
    out = []
    for _ in range(1000):
        batch = source.poll_batch()
        if not len(batch):
            return out
        if not source.still_member(batch):  # what the worker does with a batch of a past generation
            source.rewind_to_committed(batch)
            continue
        out.append(batch)
        if commit:
            source.commit(batch.next_offsets())
    raise AssertionError("did not drain")


def _times(batches: list[Batch]) -> list[float]:
    return [float(orjson.loads(v)["timestamp"]) for b in batches for v in b.values if v is not None]


def test_a_backlog_is_released_in_event_time_order_each_record_once() -> None:
    rng = random.Random(4)
    times = sorted(rng.uniform(0, 1e8) for _ in range(400))  # 28 h: a partition's gaps mostly under max_jump_ms
    per_partition: dict[int, list[float]] = {p: [] for p in range(4)}
    for t in times:
        per_partition[rng.randrange(4)].append(t)
    broker = _broker(per_partition)
    plain = MemorySource(broker, TOPIC, "plain", batch_size=10)
    plain.start()
    assert _times([plain.poll_batch()]) != times[:10]  # fetched partition by partition: out of order
    batches = _drain(_aligned(broker))
    assert _times(batches) == times  # one global event-time order, nothing lost or repeated
    seen: dict[int, int] = {}
    for b in batches:  # each batch continues each partition where the last one stopped
        for p, o in zip(b.partitions, b.offsets, strict=True):
            assert o == seen.get(p, -1) + 1
            seen[p] = o
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_late_events_keep_their_partitions_order_and_untimed_ones_pass() -> None:
    broker = _broker({0: [10.0, 30.0, 20.0, 40.0], 1: [15.0, 35.0]})  # 20 is late in partition 0
    broker.produce(TOPIC, [b"not json", None], partition=1)
    batches = _drain(_aligned(broker, batch=3))
    got = [(p, o) for b in batches for p, o in zip(b.partitions, b.offsets, strict=True)]
    assert sorted(got) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert got == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (0, 3)]  # 20 stays after 30
    assert event_time_ms(b"not json") is None and event_time_ms(None) is None


OBJECTS = [b'{"timestamp": 1790000000000}', b'{"timestamp": 1.5e12, "a": 1}', b'{"timestamp": "2026-11-30T10:00:00Z"}',
           b'{"timestamp": 1, "timestamp": 1790000000000}', b'{"\\u0074imestamp": 1790000000001}',
           b'{"a": {"timestamp": 5}}', b'{"a": 123456789012345678901234567890, "timestamp": 7}',
           b'{"timestamp": 123456789012345678901234567890}', b'{"timestamp": null}', b'{"timestamp": true}',
           b' {"timestamp": -3} ', b'{}']


@pytest.mark.parametrize("reader", [None, EventTime(FieldRule("timestamp", FieldType.TIMESTAMP, unit="auto"))])
def test_event_times_read_the_timestamp_as_a_whole_parse_does(reader: EventTime | None) -> None:
    """The timestamp alone (msgspec, other fields skipped) equals the whole parse's (orjson) on
    every JSON object: a repeated key, an escaped key, a nested one, a 30-digit number; a batch
    holding a value that is not a JSON object goes value by value."""
    from stream_detector.pipeline.align import event_times

    def whole(values: list[Any]) -> np.ndarray:
        raw = []
        for v in values:
            try:
                e = orjson.loads(v)
            except (orjson.JSONDecodeError, TypeError):
                e = None
            raw.append(e.get("timestamp") if type(e) is dict else None)
        return (reader or EventTime()).batch(raw)

    # nested 1,000 and 5,000 deep in another field: msgspec recurses to skip it (a new-user trial: an
    # aligned worker stopped on RecursionError at every restart); orjson reads the first, refuses the second
    deep = [b'{"timestamp": 1.79e12, "x": ' + b"[" * n + b"]" * n + b"}" for n in (1000, 5000)] + \
        [b'{"x": ' + b'{"a": ' * n + b"1" + b"}" * n + b', "timestamp": 1.79e12}' for n in (1000, 5000)]
    for values in (OBJECTS, [*OBJECTS, b"[1, 2]", b"not json", None, b'{"timestamp": NaN}', b'"x"'], [*OBJECTS, *deep]):
        np.testing.assert_array_equal(event_times(values, reader), whole(values))
    assert np.isnan(event_times(deep)).tolist() == [False, True, False, True]
    assert event_times(OBJECTS)[0] == 1.79e12 and event_times(OBJECTS)[3] == 1.79e12  # the last of a repeated key


def test_partitions_at_their_end_hold_nothing_back() -> None:
    broker = _broker({0: [5.0, 6.0, 7.0]})  # partitions 1-3 empty: caught up
    source = _aligned(broker)
    assert _times([source.poll_batch()]) == [5.0, 6.0, 7.0]  # in one poll, no waiting


@pytest.mark.parametrize("how", ["rewind", "rebalance"])
def test_buffered_records_are_read_again_after_a_rewind_or_a_rebalance(how: str) -> None:
    per_partition = {p: [float(10 * i + p) for i in range(30)] for p in range(4)}
    broker = _broker(per_partition)
    source = _aligned(broker)
    first = source.poll_batch()
    assert len(first) and source.held_back > 0  # more fetched than released
    if how == "rewind":
        source.rewind_to_committed(first)  # the batch was abandoned: nothing of it committed
    else:
        broker.evict(GROUP)  # a rebalance: the buffer's membership is gone
    batches = _drain(source)
    everything = sorted(t for ts in per_partition.values() for t in ts)
    got = _times(batches) if how == "rewind" else _times([first, *batches])
    if how == "rebalance":  # the first batch was never committed: read again too
        assert _times(batches) == everything
    else:
        assert got == everything
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


class _OnePartition:
    """A worker's source owning one partition of a backlog (the scripted part of a consumer group):
    hands out up to ``fetch`` records per poll; commits are recorded."""

    def __init__(self, partition: int, times: list[float], fetch: int) -> None:
        from stream_detector.transport.base import TopicPartition

        self.p, self.fetch, self.pos = partition, fetch, 0
        self.tp = TopicPartition(TOPIC, partition)
        self.values = [orjson.dumps({"event_id": f"{partition}-{i}", "timestamp": t}) for i, t in enumerate(times)]

    def start(self) -> None: ...

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        n = min(self.fetch, len(self.values) - self.pos)
        out = Batch(topic=TOPIC, partitions=[self.p] * n, offsets=list(range(self.pos, self.pos + n)),
                    keys=[None] * n, values=self.values[self.pos:self.pos + n], timestamps=[0] * n, headers=[()] * n)
        self.pos += n
        return out

    def commit(self, offsets: object) -> None: ...

    def still_member(self, batch: Batch) -> bool:
        return True

    def assignment(self) -> set[object]:
        return {self.tp}

    def highwaters(self) -> dict[int, int | None]:
        return {self.p: len(self.values)}

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        return {self.p: len(self.values) - self.pos}

    def end_offsets(self, partitions: Any) -> dict[int, int]:
        return {p: len(self.values) for p in partitions if p == self.p}


@pytest.mark.parametrize("grace", [0.0, 5_000.0])
def test_several_workers_apply_a_shared_entitys_events_in_event_time_order(grace: float) -> None:
    """Four workers, one partition each, sharing heads through ``MemoryWatermarks``: whatever order
    the workers take turns in, every record is released once, and a record is applied (released
    and committed) only when no other partition still has one more than ``grace`` older — with a
    grace of 0, one global event-time order, as one worker over all four partitions gives."""
    from stream_detector.store.watermarks import MemoryWatermarks

    rng = random.Random(11)
    times = sorted(rng.uniform(0, 1e6) for _ in range(600))  # 600 events over ~17 minutes
    per: dict[int, list[float]] = {p: [] for p in range(4)}
    for t in times:
        per[rng.randrange(4)].append(t)
    peers = MemoryWatermarks(grace_ms=int(grace), stale_ms=60_000, partitions=4)
    workers = []
    for p in range(4):
        source = AlignedSource(_OnePartition(p, per[p], fetch=rng.randint(20, 200)),  # type: ignore[arg-type]
                               batch_size=25, idle_ms=0, peers=peers)
        source.enabled = True
        workers.append(source)
    applied: list[float] = []
    for _ in range(20_000):
        if len(applied) == len(times):
            break
        source = rng.choice(workers)  # workers take turns in any order
        batch = source.poll_batch()
        applied += _times([batch])
        source.settled(batch.next_offsets())
    assert sorted(applied) == times  # every record once, and no stall
    worst = max(max(applied[:i + 1]) - t for i, t in enumerate(applied))
    assert worst <= grace  # how far a record came after a later one
    if grace:
        assert worst > 0  # the grace let the workers overlap (bigger steps)


class _PartitionAfterPartition:
    """A worker's source as kafka-python behaves on a backlog: it hands out one partition's records
    after another (``order``; ``first``: one fetch of that partition before), ``fetch`` per poll, and
    caches a partition's high watermark only once it hands that partition out (``forget``: a
    rebalance gave the partitions back with fresh client state); the broker knows every end
    (``backlog(ask=True)``)."""

    def __init__(self, per: dict[int, list[float]], order: list[int], fetch: int, first: int | None = None) -> None:
        from stream_detector.transport.base import TopicPartition

        self.order, self.fetch, self.first = order, fetch, first
        self.pos = dict.fromkeys(per, 0)
        self.cached: set[int] = set()
        self.tps = {TopicPartition(TOPIC, p) for p in per}
        self.values = {p: [orjson.dumps({"event_id": f"{p}-{i}", "timestamp": t}) for i, t in enumerate(times)]
                       for p, times in per.items()}

    def forget(self) -> None:
        self.cached.clear()

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        p = next((p for p in self.order if self.pos[p] < len(self.values[p])), self.order[-1])
        if self.first is not None:
            p, self.first = self.first, None
        self.cached.add(p)
        start, n = self.pos[p], min(self.fetch, len(self.values[p]) - self.pos[p])
        self.pos[p] += n
        return Batch(topic=TOPIC, partitions=[p] * n, offsets=list(range(start, start + n)), keys=[None] * n,
                     values=self.values[p][start:start + n], timestamps=[0] * n, headers=[()] * n)

    def commit(self, offsets: object) -> None: ...

    def still_member(self, batch: Batch) -> bool:
        return True

    def assignment(self) -> set[object]:
        return set(self.tps)

    def highwaters(self) -> dict[int, int | None]:
        return {p: len(v) if p in self.cached else None for p, v in self.values.items()}

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        return {p: len(v) - self.pos[p] if ask or p in self.cached else None for p, v in self.values.items()}

    def end_offsets(self, partitions: Any) -> dict[int, int]:
        return {p: len(self.values[p]) for p in partitions if p in self.values}


def test_a_partition_whose_client_has_not_handed_it_out_yet_holds_the_others() -> None:
    """The helper's trial, scripted: two workers on a backlog. After a rebalance, the one owning
    partitions 0 and 1 had applied some of 0; its client (kafka-python) then handed out all of 1
    before the rest of 0 and knew 0's high watermark only then. Waiting for its peer, a worker
    polls its client only every ``idle_ms``, so partition 0 gave nothing for longer than that. It
    was published idle with 10k records left, the other partitions ran 36 hours of event time
    ahead, and 2.4x offline's alerts came out. A partition with records left must hold, however
    long its client takes: every record is applied in event-time order (grace 0)."""
    from stream_detector.store.watermarks import MemoryWatermarks

    rng = random.Random(5)
    times = sorted(rng.uniform(0, 1e7) for _ in range(1200))
    per: dict[int, list[float]] = {p: [] for p in range(4)}
    for t in times:
        per[rng.randrange(4)].append(t)
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # every look at the clock is a millisecond later
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    peers = MemoryWatermarks(grace_ms=0, stale_ms=600_000, partitions=4, clock=lambda: now[0])
    workers = []
    for owned, order, first in (([0, 1], [1, 0], 0), ([2, 3], [2, 3], None)):
        inner = _PartitionAfterPartition({p: per[p] for p in owned}, order, fetch=15, first=first)
        source = AlignedSource(inner, batch_size=25, idle_ms=50, clock=clock, sleep=sleep,  # type: ignore[arg-type]
                               peers=peers)
        source.enabled = True
        source.topic = TOPIC
        workers.append(source)
    applied: list[float] = []
    for turn in range(20_000):
        if len(applied) == len(times):
            break
        source = workers[turn % 2]
        batch = source.poll_batch()
        applied += _times([batch])
        source.settled(batch.next_offsets())
        if turn == 0:
            source.inner.forget()  # type: ignore[attr-defined]  # partition 0 applied in part, then a rebalance
    assert sorted(applied) == times  # every record once, and no stall
    assert max(max(applied[:i + 1]) - t for i, t in enumerate(applied)) == 0  # in event-time order


def test_a_backlog_still_being_written_is_released_in_event_time_order() -> None:
    """A partition at its end is not done: the producer may still be writing a backlog into it.
    It holds the others at its newest event time until it has been quiet for ``idle_ms`` (the
    helper's trial: a replay produced while workers ran raised 7x offline's alerts when a partition
    at its end held nothing back)."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, partitions=2)
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # every look at the clock is a millisecond later
        return now[0]

    def send(p: int, times: list[float]) -> None:
        broker.produce(TOPIC, [orjson.dumps({"event_id": f"{p}-{t}", "timestamp": t}) for t in times], partition=p)

    source = AlignedSource(MemorySource(broker, TOPIC, GROUP, batch_size=10), batch_size=10, idle_ms=1000,
                           clock=clock)
    source.enabled = True
    source.start()
    send(0, [10.0, 20.0, 30.0])
    send(1, [15.0])
    first = source.poll_batch()
    assert _times([first]) == [10.0, 15.0]  # partition 1 is at its end, but its next record may be older than 20
    source.commit(first.next_offsets())
    send(1, [25.0, 35.0])  # the producer goes on
    second = source.poll_batch()
    assert _times([second]) == [20.0, 25.0, 30.0]
    source.commit(second.next_offsets())
    now[0] += 2.0  # partition 0 quiet for longer than idle_ms: idle, it no longer holds 35 back
    assert _times([source.poll_batch()]) == [35.0]


def test_a_jump_before_a_quiet_spell_is_decided_by_its_partitions_next_record() -> None:
    """Live traffic: a partition's last record jumps ahead (a wrong device clock) and the partition
    goes quiet. Idle, the jump is released by its own time; when the partition's next record shows
    it was a lone jump, the clock goes back, so that record is not held until the others reach the
    jump. A sparse partition (every record a jump, each confirmed by the next) keeps its order."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, partitions=2)
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    def send(p: int, times: list[float]) -> None:
        broker.produce(TOPIC, [orjson.dumps({"event_id": f"{p}-{t}", "timestamp": t}) for t in times], partition=p)

    def poll() -> list[float]:
        batch = source.poll_batch()
        source.commit(batch.next_offsets())
        return _times([batch])

    source = AlignedSource(MemorySource(broker, TOPIC, GROUP, batch_size=10), batch_size=10, idle_ms=1000,
                           clock=clock, max_jump_ms=1000)
    source.enabled = True
    source.start()
    send(0, [10.0, 20.0, 5000.0])
    send(1, [15.0, 30.0])
    assert poll() == [10.0, 15.0, 20.0]  # 5000 waits for partition 0's next record; 30 for partition 0
    now[0] += 2.0  # both quiet: idle; the jump is keyed by its own time
    assert poll() == [30.0, 5000.0]
    send(0, [40.0])  # partition 0 goes on near its old clock: 5000 was a lone jump
    send(1, [35.0, 50.0])
    assert poll() == [35.0, 40.0]  # 40 is not held back until partition 1 reaches 5000
    assert source.held_back == 1  # 50: partition 0 is not idle yet
    send(0, [3000.0])
    now[0] += 2.0
    assert poll() == [50.0, 3000.0]  # a jump too: idle, released by its own time
    send(1, [3500.0])
    send(0, [6000.0, 9000.0])  # 6000 confirms 3000, 9000 confirms 6000: a sparse partition keeps its order
    now[0] += 2.0
    assert poll() == [3500.0, 6000.0, 9000.0]


def test_a_worker_with_nothing_to_read_publishes_its_partition_idle() -> None:
    """An idle worker's empty partition must not hold the group back for the stale time (the
    helper's trial: nothing was published, the others waited 30 s): it is published as holding
    at first, then idle once its high watermark has been known for ``idle_ms``."""
    from stream_detector.store.watermarks import MemoryWatermarks

    now = [0.0]
    peers = MemoryWatermarks(grace_ms=0, stale_ms=60_000, partitions=2, clock=lambda: now[0])
    source = AlignedSource(_OnePartition(1, [], fetch=10), batch_size=10,  # type: ignore[arg-type]
                           idle_ms=1000, clock=lambda: now[0], peers=peers)
    source.enabled = True
    source.topic = TOPIC
    assert not len(source.poll_batch())
    assert peers.entries[1][:2] == (float("-inf"), False)  # known empty, not yet quiet for idle_ms
    assert peers.bound({0}) == float("-inf")  # partition 0's worker waits for it
    now[0] += 1.5
    source.poll_batch()
    assert peers.entries[1][1] is True and peers.bound({0}) == float("inf")  # idle: holds nothing back


_time_or_junk = st.one_of(st.floats(0, 1e6, allow_nan=False), st.integers(0, 10**6), st.integers(0, 9),  # ties
                         st.sampled_from([None, "junk"]))


def _backlog(streams: list[list[Any]]) -> MemoryBroker:
    """A 4-partition topic holding ``streams[p]`` in partition p: an event per timestamp, or an
    unparsable record for "junk"."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, partitions=4)
    for p, stream in enumerate(streams):
        broker.produce(TOPIC, [b"{not json" if t == "junk" else orjson.dumps({"event_id": f"{p}-{i}", "timestamp": t})
                               for i, t in enumerate(stream)], partition=p)
    return broker


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(st.lists(st.lists(_time_or_junk, max_size=40), min_size=1, max_size=4), st.integers(1, 17), st.integers(1, 23),
       st.sampled_from([None, 5, 30]))
def test_any_backlog_is_released_in_key_partition_offset_order(streams: list[list[Any]], fetch: int, batch: int,
                                                               cap: int | None) -> None:
    """Any backlog (late, tied, untimed and unparsable records; any fetch and batch size): every
    record once, each partition as contiguous prefixes, and, under the buffer cap, exactly the
    order of (running-max event time of its partition, partition, offset): every time here is
    within ``max_jump_ms`` of its partition's clock, so the clock is the running maximum."""
    broker = _backlog(streams)
    expected = []
    for p, stream in enumerate(streams):
        newest = float("-inf")
        for offset, t in enumerate(stream):
            if isinstance(t, (int, float)) and t > newest:
                newest = float(t)
            expected.append((newest, p, offset))
    source = AlignedSource(MemorySource(broker, TOPIC, GROUP, batch_size=fetch), batch_size=batch, idle_ms=50,
                           max_buffered=cap or 10_000)
    source.enabled = True
    source.start()
    got = [(p, o) for b in _drain(source) for p, o in zip(b.partitions, b.offsets, strict=True)]
    assert sorted(got) == sorted((p, o) for _, p, o in expected)  # every record once
    for p in range(len(streams)):
        assert [o for q, o in got if q == p] == list(range(len(streams[p])))  # contiguous, in order
    if cap is None:
        assert got == [(p, o) for _, p, o in sorted(expected)]
    committed = broker.committed(GROUP)
    assert all(committed.get(tp, 0) == end for tp, end in broker.end_offsets(TOPIC).items())


def _robust_keys(stream: list[Any], jump: float) -> list[float]:
    """The alignment's sort keys of one partition, record by record (the rule of
    ``align._clock_keys``, written plainly): a time more than ``jump`` past the clock moves it only
    when the next timed record is that far ahead too (then to the smaller of the two); a lone one
    takes the clock; one with no timed record after it (its partition idle at the end of the
    backlog) moves the clock to its time."""
    times = [float(t) if isinstance(t, (int, float)) else math.nan for t in stream]
    clock, keys = float("-inf"), []
    for i, x in enumerate(times):
        if not math.isnan(x):
            after = [y for y in times[i + 1:] if not math.isnan(y)]
            if clock == float("-inf") or x <= clock + jump or not after:
                clock = max(clock, x)
            elif after[0] > clock + jump:
                clock = min(x, after[0])
        keys.append(clock)
    return keys


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(st.lists(st.lists(_time_or_junk, max_size=40), min_size=1, max_size=4), st.integers(1, 17), st.integers(1, 23),
       st.sampled_from([0, 3, 5000, 300_000]))
def test_a_lone_jump_takes_its_partitions_clock(streams: list[list[Any]], fetch: int, batch: int, jump: int) -> None:
    """With ``max_jump_ms`` (small here, so that most streams have jumps): any backlog is released
    in the order of (robust clock of its partition, partition, offset), every record once; a time
    more than ``max_jump_ms`` past its partition's clock moves the clock only when the next timed
    record confirms it (a trial: one event 1.5 days ahead held the rest of its partition back and
    raised 79 alerts where offline scoring raises 55)."""
    broker = _backlog(streams)
    expected = []
    for p, stream in enumerate(streams):
        expected += [(key, p, offset) for offset, key in enumerate(_robust_keys(stream, jump))]
    source = AlignedSource(MemorySource(broker, TOPIC, GROUP, batch_size=fetch), batch_size=batch, idle_ms=50,
                           max_buffered=10_000, max_jump_ms=jump)
    source.enabled = True
    source.start()
    got = [(p, o) for b in _drain(source) for p, o in zip(b.partitions, b.offsets, strict=True)]
    assert got == [(p, o) for _, p, o in sorted(expected)]


def test_a_future_timestamp_inside_the_plausible_range_does_not_hold_its_partition_back() -> None:
    """The trial's case in small: partition 0 has one event 1.5 days ahead. It is released where
    its neighbours' times put it, and the rest of partition 0 keeps interleaving with partition 1
    by event time (before: everything after it waited for partition 1 to catch up)."""
    day = 86_400_000.0
    zero = [1000.0 * i for i in range(0, 40, 2)]
    one = [1000.0 * i for i in range(1, 40, 2)]
    spiked = [*zero[:5], zero[4] + 1.5 * day, *zero[5:]]
    batches = _drain(_aligned(_broker({0: spiked, 1: one})))
    got = _times(batches)
    assert got == [*sorted(zero[:5] + one[:4]), zero[4] + 1.5 * day, *sorted(zero[5:] + one[4:])]  # at 8 s
    legacy = _drain(_aligned(_broker({0: spiked, 1: one}), jump=math.inf))  # no jump rule: a running maximum
    assert _times(legacy)[-len(zero[5:]) - 1:] == [zero[4] + 1.5 * day, *zero[5:]]  # the old clock: last


_T = 1_795_554_061_109  # epoch ms, 2026
_raw_times = st.one_of(st.sampled_from([_T, _T / 1000, _T * 1000, _T * 1_000_000, _T + 50 * 31_557_600_000, 0, -5,
                                        float("inf"), float("nan"), 10**400, True, None, "2026-11-24T08:01:01Z",
                                        "1795554061109", "junk"]),
                       st.integers(-10**20, 10**20), st.floats())


@settings(derandomize=True, max_examples=80, deadline=None, database=None)
@given(st.lists(st.one_of(st.integers(0, 10**18), st.floats(0, 1e18)), max_size=20), st.lists(_raw_times, max_size=20))
def test_the_alignment_reads_timestamps_as_the_models_schema_does(numeric: list[Any], mixed: list[Any]) -> None:
    """``EventTime`` (the alignment's reader) gives, in one batch or value by value, the epoch ms
    the schema's converter gives (unit by magnitude, the plausible range), NaN where the converter
    rejects the value; seconds, ms and µs of one instant sort together (a trial found µs values
    read as ms held their partition back for decades of event time)."""
    schema = FieldSchema((FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("timestamp", FieldType.TIMESTAMP)),
                         time_range_ms=(float(_T - 86_400_000), float(_T)))
    reader = EventTime.of(schema)
    for raw in (numeric, mixed):
        want = []
        for v in raw:
            try:
                typed, problems = schema.convert([{"event_id": "e", "timestamp": v}])
            except Exception:  # noqa: BLE001 - whatever the converter refuses
                problems = {0: None}
            want.append(math.nan if problems or v is None else typed[0]["timestamp"])
        assert np.array_equal(reader.batch(list(raw)), np.array(want, dtype=np.float64), equal_nan=True)
        assert np.array_equal(np.array([reader(v) for v in raw], dtype=np.float64), np.array(want), equal_nan=True)
    assert reader(_T) == reader(_T / 1000) == reader(_T * 1000) == float(_T)
    assert math.isnan(reader(_T + 50 * 31_557_600_000))  # implausible: dead-lettered, moves no clock


def test_while_holding_records_back_the_client_is_polled_without_waiting_to_fill_a_batch() -> None:
    """Records wait for the other partitions' next ones: the client is asked for what it has now
    (``poll_batch(fill=False)``), not to wait ``batch_max_wait_ms`` for a full batch; with nothing
    held, a poll may fill."""
    class Recording:
        def __init__(self, inner: MemorySource) -> None:
            self.inner, self.polls, self.owner = inner, [], None

        def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
            assert self.owner is not None
            self.polls.append((self.owner.held_back, fill))
            return self.inner.poll_batch(fill, wait_ms)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    broker = _broker({0: [1.0, 2.0, 3.0, 4.0], 1: [1.5, 2.5]})
    inner = Recording(MemorySource(broker, TOPIC, GROUP, batch_size=2))  # partition 0 first, two at a time
    source = AlignedSource(inner, batch_size=10, idle_ms=50, max_buffered=10_000)  # type: ignore[arg-type]
    inner.owner = source
    source.enabled = True
    source.start()
    assert _times(_drain(source)) == [1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
    held = [fill for n, fill in inner.polls if n]
    assert held and not any(held)  # partition 1 not read yet: polled for what is there, never to fill
    assert all(fill for n, fill in inner.polls if not n)


def test_the_time_a_worker_waits_for_another_workers_partition_is_counted() -> None:
    """``peer_wait_s`` (the worker's metric and progress warning): a worker whose next record is
    past another worker's head waits for it in steps of ``PEER_WAIT_S`` until its poll's deadline,
    and that wait is counted; a worker nothing holds back counts none."""
    from stream_detector.pipeline.align import PEER_WAIT_S
    from stream_detector.store.watermarks import MemoryWatermarks

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    peers = MemoryWatermarks(grace_ms=0, stale_ms=60_000, partitions=2, clock=lambda: now[0])
    peers.publish({0: (1000.0, False)})  # the other worker's partition 0 is at event time 1000, not idle
    source = AlignedSource(_OnePartition(1, [5000.0, 6000.0], fetch=10), batch_size=10,  # type: ignore[arg-type]
                           idle_ms=100, clock=lambda: now[0], peers=peers, sleep=sleep)
    source.enabled = True
    source.topic = TOPIC
    assert not len(source.poll_batch())  # held back by partition 0 until the poll's deadline
    assert slept and all(s == PEER_WAIT_S for s in slept)
    assert source.peer_wait_s == pytest.approx(sum(slept)) and source.peer_wait_s >= 0.09
    peers.publish({0: (7000.0, False)})  # partition 0 moved past both records: released, no more waiting
    before = source.peer_wait_s
    assert _times([source.poll_batch()]) == [5000.0, 6000.0] and source.peer_wait_s == before
    assert source.peer_cut_batches == 0  # nothing released was stopped by the peers


def test_a_batch_stopped_at_another_workers_head_is_counted() -> None:
    """``peer_cut_batches`` (the progress warning on tiny turns): a release that stops at another
    worker's head counts once; one that stops at the end of this worker's records does not."""
    from stream_detector.store.watermarks import MemoryWatermarks

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    peers = MemoryWatermarks(grace_ms=0, stale_ms=60_000, partitions=2, clock=lambda: now[0])
    peers.publish({0: (5500.0, False)})
    source = AlignedSource(_OnePartition(1, [5000.0, 6000.0, 7000.0], fetch=10), batch_size=10,  # type: ignore[arg-type]
                           idle_ms=100, clock=lambda: now[0], peers=peers, sleep=sleep)
    source.enabled = True
    source.topic = TOPIC
    assert _times([source.poll_batch()]) == [5000.0] and source.peer_cut_batches == 1
    peers.publish({0: (9000.0, False)})
    assert _times([source.poll_batch()]) == [6000.0, 7000.0] and source.peer_cut_batches == 1


class _BlockingClient(_OnePartition):
    """``_OnePartition`` whose poll, when it has nothing to hand out, blocks as a Kafka client does:
    for ``idle_poll_ms`` (500 ms), or ``wait_ms`` when less (the fake clock moves on)."""

    def __init__(self, partition: int, times: list[float], fetch: int, now: list[float]) -> None:
        super().__init__(partition, times, fetch)
        self.now = now
        self.waits: list[int | None] = []

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        out = super().poll_batch(fill, wait_ms)
        self.waits.append(wait_ms)
        if not len(out):
            self.now[0] += min(500, 500 if wait_ms is None else wait_ms) / 1000.0
        return out


def test_a_worker_holding_records_back_never_blocks_in_its_client_past_its_deadline() -> None:
    """A worker whose records wait for another worker's partition polls its own client every
    ``idle_ms`` for what it fetched, without waiting (a client poll blocks ``idle_poll_ms``, 500 ms,
    when nothing is there: found in a trial at ``SD_ALIGN_IDLE_MS=100``, where two workers taking
    turns spent most of each turn blocked there and a 10k-event backlog did not drain in 240 s).
    Each call returns by its deadline (``idle_ms``) to look at the heads again, and releases once
    the peers move."""
    from stream_detector.store.watermarks import MemoryWatermarks

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    peers = MemoryWatermarks(grace_ms=0, stale_ms=60_000, partitions=2, clock=lambda: now[0])
    peers.publish({0: (1000.0, False)})  # the other worker's partition 0 is at event time 1000
    inner = _BlockingClient(1, [5000.0, 6000.0], fetch=10, now=now)
    source = AlignedSource(inner, batch_size=10, idle_ms=100, clock=lambda: now[0],  # type: ignore[arg-type]
                           peers=peers, sleep=sleep)
    source.enabled = True
    source.topic = TOPIC
    for _ in range(5):
        start = now[0]
        assert not len(source.poll_batch())  # held back: nothing released
        assert now[0] - start <= 0.1 + 0.006  # back by its deadline (idle_ms, plus one 5 ms look at the heads)
    assert len(inner.waits) > 2 and inner.waits[1:] == [0] * (len(inner.waits) - 1)  # the client polled, never waiting
    peers.publish({0: (7000.0, False)})
    assert _times([source.poll_batch()]) == [5000.0, 6000.0]


def test_a_worker_held_back_by_its_own_partition_waits_in_its_client_no_longer_than_idle_ms() -> None:
    """Held back by a partition of its own whose records the client has not fetched yet, the
    worker waits for them no longer than its call's deadline (``idle_ms``), not the client's
    ``idle_poll_ms``, before releasing what it holds (best effort past ``idle_ms``)."""
    from stream_detector.transport.base import TopicPartition

    now = [0.0]
    inner = _BlockingClient(1, [5000.0, 6000.0], fetch=10, now=now)
    inner.assignment = lambda: {inner.tp, TopicPartition(TOPIC, 2)}  # type: ignore[method-assign]
    inner.backlog = lambda ask=False: {1: 0, 2: 5}  # type: ignore[method-assign]  # partition 2: not fetched yet
    source = AlignedSource(inner, batch_size=10, idle_ms=100, clock=lambda: now[0])  # type: ignore[arg-type]
    source.enabled = True
    source.topic = TOPIC
    assert _times([source.poll_batch()]) == [5000.0, 6000.0]
    assert now[0] <= 0.1 + 0.001  # 0.5 s before: the client's idle_poll_ms, whatever idle_ms said
    assert all(w is not None and w <= 100 for w in inner.waits[1:])


class _SharedLog:
    """The input topic's partitions as the broker holds them, for scripted workers that each own
    one (``_Owner``): records can be appended while they run (live traffic after a quiet spell)."""

    def __init__(self) -> None:
        self.values: dict[int, list[bytes]] = {}

    def append(self, partition: int, times: list[float]) -> None:
        log = self.values.setdefault(partition, [])
        log += [orjson.dumps({"event_id": f"{partition}-{len(log) + i}", "timestamp": t}) for i, t in enumerate(times)]


class _Owner(_OnePartition):
    """One worker's client on partition ``partition`` of a ``_SharedLog``: it sees what was
    appended (its high watermark as of its last poll) and can ask the end of any partition."""

    def __init__(self, partition: int, log: _SharedLog) -> None:
        super().__init__(partition, [], fetch=1000)
        self.log, self.seen_end = log, 0

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        self.values = self.log.values.get(self.p, [])
        self.seen_end = len(self.values)
        return super().poll_batch(fill, wait_ms)

    def highwaters(self) -> dict[int, int | None]:
        return {self.p: self.seen_end}

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        return {self.p: self.seen_end - self.pos}

    def end_offsets(self, partitions: Any) -> dict[int, int]:
        return {p: len(self.log.values.get(p, [])) for p in partitions}


def _scripted_time() -> tuple[list[float], Any, Any]:
    """Scripted workers' time: ``now[0]``, a clock that moves 1 ms per look, and a sleep that moves it."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
    return now, clock, sleep


def _quiet_after(first: list[float], second: list[float]) -> _SharedLog:
    """Partitions 0 and 1 holding ``first`` and ``second`` (event times), to drain before a quiet spell."""
    log = _SharedLog()
    log.append(0, first)
    log.append(1, second)
    return log


def test_a_burst_after_a_quiet_spell_is_applied_in_event_time_order_by_several_workers() -> None:
    """Two workers at grace 0, each owning one partition, drain what there is and go quiet, so
    each publishes its partition idle; then a burst reaches both partitions. Whichever worker polls
    first must not release its burst before the other has published its own burst's heads: an idle
    claim is checked against the broker's end offset (``store/watermarks.py``). Before, the first
    to poll released its whole burst past the other's (a new-user trial: 312 alerts where offline
    scoring raises 163, one run of five)."""
    from stream_detector.store.watermarks import MemoryWatermarks

    now, clock, sleep = _scripted_time()
    log = _quiet_after([1000.0, 3000.0], [2000.0, 4000.0])
    peers = MemoryWatermarks(grace_ms=0, stale_ms=600_000, partitions=2, clock=lambda: now[0])
    workers = []
    for p in range(2):
        source = AlignedSource(_Owner(p, log), batch_size=25, idle_ms=100, clock=clock, sleep=sleep,  # type: ignore[arg-type]
                               peers=peers)
        source.enabled, source.topic = True, TOPIC
        workers.append(source)
    applied: list[float] = []

    def turn(source: AlignedSource) -> None:
        batch = source.poll_batch()
        applied.extend(_times([batch]))
        source.settled(batch.next_offsets())

    for _ in range(20):  # drain, then stay quiet well past idle_ms: both partitions published idle
        for source in workers:
            turn(source)
    assert applied == [1000.0, 2000.0, 3000.0, 4000.0]
    assert all(entry[1] for entry in peers.entries.values())  # both idle, each with its end offset
    log.append(0, [5000.0, 7000.0])
    log.append(1, [6000.0, 8000.0])
    for _ in range(20):
        for source in reversed(workers):  # the worker on partition 1 polls first
            turn(source)
    assert applied[4:] == [5000.0, 6000.0, 7000.0, 8000.0]


class _FetchesInTurn(_OnePartition):
    """One worker's client on partitions 0 and 1 of a ``_SharedLog``, as kafka-python hands out a
    fetch: each poll gives what one partition has (the partitions taking turns), and a partition's
    high watermark is known as of the last poll that handed that partition out."""

    def __init__(self, log: _SharedLog) -> None:
        super().__init__(0, [], fetch=1000)
        from stream_detector.transport.base import TopicPartition

        self.log, self.turn = log, 0
        self.at, self.seen_end = {0: 0, 1: 0}, {0: 0, 1: 0}
        self.tps = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        for p in (self.turn, 1 - self.turn):
            values = self.log.values.get(p, [])
            if self.at[p] < len(values):
                self.turn = 1 - p
                got = values[self.at[p]:]
                out = Batch(topic=TOPIC, partitions=[p] * len(got), offsets=list(range(self.at[p], len(values))),
                            keys=[None] * len(got), values=got, timestamps=[0] * len(got), headers=[()] * len(got))
                self.at[p] = self.seen_end[p] = len(values)
                return out
        return Batch(topic=TOPIC)

    def assignment(self) -> set[object]:
        return set(self.tps)

    def highwaters(self) -> dict[int, int | None]:
        return dict(self.seen_end)

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        return {p: self.seen_end[p] - self.at[p] for p in (0, 1)}

    def end_offsets(self, partitions: Any) -> dict[int, int]:
        return {p: len(self.log.values.get(p, [])) for p in partitions}


def test_a_burst_after_a_quiet_spell_is_applied_in_event_time_order_by_one_worker() -> None:
    """One worker on two partitions drains what there is and goes quiet past ``idle_ms``, so both
    count as idle; then a burst reaches both, and the client hands out partition 0's part first
    while partition 1's high watermark is still the old one. Partition 1 must hold the release at
    its newest record until its part arrives: an idle partition is checked against the broker's
    end (``AlignedSource._unseen``). Before, partition 0's whole burst went first (an integration
    test's second burst of 2,500 events: 2,242-2,483 with other merchant features than offline)."""
    now, clock, sleep = _scripted_time()
    log = _quiet_after([1000.0, 3000.0], [2000.0, 4000.0])
    client = _FetchesInTurn(log)
    source = AlignedSource(client, batch_size=25, idle_ms=100, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    source.enabled, source.topic = True, TOPIC
    applied: list[float] = []

    def turn() -> None:
        batch = source.poll_batch()
        applied.extend(_times([batch]))
        source.settled(batch.next_offsets())

    for _ in range(20):  # drain, then stay quiet well past idle_ms
        turn()
    assert applied == [1000.0, 2000.0, 3000.0, 4000.0]
    log.append(0, [5000.0, 7000.0])
    log.append(1, [6000.0, 8000.0])
    client.turn = 0  # partition 0's part is handed out first
    for _ in range(20):
        turn()
    assert applied[4:] == [5000.0, 6000.0, 7000.0, 8000.0]


def test_records_the_client_cannot_fetch_hold_an_idle_partition_no_longer_than_idle_ms() -> None:
    """The other side of ``_unseen``: the broker's end of partition 1 stays past what its client can
    hand out (an open transaction under read_committed). Partition 0's new records wait for
    ``idle_ms`` at most, then go as the idle rule lets them; the hold is counted from when the
    broker was first found ahead, not from each poll."""
    now, clock, _ = _scripted_time()
    log = _quiet_after([1000.0], [2000.0])
    client = _FetchesInTurn(log)
    ahead = {1: 0}
    ends = client.end_offsets
    client.end_offsets = lambda partitions: {p: e + ahead.get(p, 0) for p, e in ends(partitions).items()}  # type: ignore[method-assign]
    source = AlignedSource(client, batch_size=25, idle_ms=100, clock=clock, sleep=lambda s: None)  # type: ignore[arg-type]
    source.enabled, source.topic = True, TOPIC
    applied: list[tuple[float, float]] = []
    for _ in range(300):  # drain, then stay quiet past idle_ms
        batch = source.poll_batch()
        applied += [(t, now[0]) for t in _times([batch])]
    assert [t for t, _ in applied] == [1000.0, 2000.0]
    ahead[1] = 1
    log.append(0, [3000.0])
    asked = now[0]
    for _ in range(300):
        batch = source.poll_batch()
        applied += [(t, now[0]) for t in _times([batch])]
    assert [t for t, _ in applied] == [1000.0, 2000.0, 3000.0]
    assert 0.1 <= applied[-1][1] - asked < 0.3  # held for about idle_ms
    log.append(0, [4000.0])
    asked = now[0]
    batch = source.poll_batch()
    applied += [(t, now[0]) for t in _times([batch])]
    assert [t for t, _ in applied][3:] == [4000.0] and applied[-1][1] - asked < 0.05  # not again on every poll


def test_an_idle_claim_holds_again_once_the_broker_has_records_past_its_end() -> None:
    """``peer_bound``: an idle entry with a known end offset counts as idle only while the
    broker's end is still that; past it, it holds at its head. Unknown ends (-1, entries written
    before the check existed) and a broker that does not answer trust the claim, as before."""
    from stream_detector.store.watermarks import peer_bound

    asked: list[set[int]] = []

    def ends(now: dict[int, int]) -> Any:
        def ask(parts: set[int]) -> dict[int, int]:
            asked.append(set(parts))
            return {p: now[p] for p in parts}
        return ask

    def down(parts: set[int]) -> dict[int, int]:
        raise OSError("broker down")

    entries = {0: (1000.0, True, 0.0, 10), 1: (2000.0, False, 0.0, -1), 2: (500.0, True, 0.0, -1)}
    assert peer_bound(entries, {3}, 0, 60_000, 1.0, ends=ends({0: 10})) == 2000.0  # idle as claimed
    assert asked == [{0}]  # only the claims with a known end are checked
    assert peer_bound(entries, {3}, 0, 60_000, 1.0, ends=ends({0: 12})) == 1000.0  # appended since: holds
    assert peer_bound(entries, {3}, 0, 60_000, 1.0, ends=down) == 2000.0
    assert peer_bound(entries, {3}, 0, 60_000, 1.0) == 2000.0
    assert peer_bound(entries, {0, 3}, 0, 60_000, 1.0, ends=ends({})) == 2000.0  # its own: never asked


@pytest.mark.parametrize("topic_partitions", [4, 5])
def test_a_worker_owning_every_partition_publishes_its_heads_at_the_heartbeat_only(topic_partitions: int) -> None:
    """With every partition of the topic, no peer holds one and none waits on this worker's heads:
    they are published at the heartbeat, not on every take and commit (measured by hand: 2
    publishes and 1.2 ms of the worker's thread per 280-event batch at 20,000/s). Owning some of
    them (a fifth partition is someone else's), every head that moves is published at once. The
    release order is the same either way."""
    from stream_detector.store.watermarks import MemoryWatermarks

    class Counting(MemoryWatermarks):
        publishes = 0

        def publish(self, heads: dict[int, tuple[float, bool]], ends: dict[int, int] | None = None) -> None:
            Counting.publishes += 1
            super().publish(heads, ends)

    rng = random.Random(5)
    per = {p: sorted(rng.uniform(0, 1e6) for _ in range(50)) for p in range(4)}
    now = [0.0]

    def clock() -> float:  # 1 ms per look: the source's deadlines pass, heartbeats come every 500 looks
        now[0] += 0.001
        return now[0]

    peers = Counting(grace_ms=0, stale_ms=600_000, partitions=topic_partitions, clock=clock)
    peers.entries[4] = (float("inf"), True, 0.0, -1)  # the fifth partition, when there is one: idle elsewhere
    source = AlignedSource(MemorySource(_broker(per), TOPIC, GROUP, batch_size=20), batch_size=20, idle_ms=50,
                           max_buffered=10_000, clock=clock, peers=peers, heartbeat_s=0.5, sleep=lambda s: None)
    source.enabled = True
    source.start()
    applied: list[float] = []
    for _ in range(100):
        batch = source.poll_batch()
        if not len(batch):
            now[0] += 0.06  # past idle_ms: the backlog's last records go
            continue
        applied += _times([batch])
        source.commit(batch.next_offsets())
        source.settled(batch.next_offsets())
    assert applied == sorted(t for times in per.values() for t in times)  # one event-time order
    if topic_partitions == 4:
        assert Counting.publishes <= 1 + now[0] / 0.5 + 1  # the first look, then heartbeats only
        before = Counting.publishes
        now[0] += 0.5
        source.poll_batch()
        assert Counting.publishes == before + 1 and set(peers.entries) >= {0, 1, 2, 3}  # the heartbeat
    else:
        assert Counting.publishes > 10  # each batch's take and commit


class _StaleEnds(_PartitionAfterPartition):
    """kafka-python on a second backlog: both partitions were drained once (their ends cached), then
    a backlog came into both; the client hands out one partition's records after the other's and
    keeps the other's old end until it hands that one out (``backlog()``); asked, the broker knows
    every end (``backlog(ask=True)``, the transports since 2026-12-07); ``highwaters`` is the cached
    end, raised by an ask, as the transports keep it."""

    def __init__(self, per: dict[int, list[float]], order: list[int], fetch: int, done: int) -> None:
        super().__init__(per, order, fetch)
        self.pos = dict.fromkeys(per, done)  # the first ``done`` records of each were handed out before
        self.ends = dict.fromkeys(per, done)  # and their ends cached then
        self.asks = 0

    def poll_batch(self, fill: bool = True, wait_ms: int | None = None) -> Batch:
        batch = super().poll_batch(fill, wait_ms)
        for p in set(batch.partitions):
            self.ends[p] = len(self.values[p])
        return batch

    def highwaters(self) -> dict[int, int | None]:
        return dict(self.ends)

    def backlog(self, ask: bool = False) -> dict[int, int | None]:
        if ask:
            self.asks += 1
            self.ends = {p: len(v) for p, v in self.values.items()}
        return {p: self.ends[p] - self.pos[p] for p in self.values}


def test_one_worker_holds_a_partition_whose_cached_end_is_old_for_however_long_its_client_takes() -> None:
    """Trial Q's kind, on one aligned worker: partition 1 had been drained (its end cached), then a
    backlog came into both partitions, and the client handed out partition 0's part for longer than
    ``idle_ms`` before any of partition 1's. By its cached end partition 1 had nothing left and was
    quiet: ``_unseen``'s check at the claim held it for ``idle_ms`` only, after which its records
    came behind partition 0's later ones. The broker is now asked for every end while a partition
    is at its (cached) end, so partition 1 holds as a partition with records left does."""
    rng = random.Random(7)
    times = sorted(rng.uniform(0, 1e7) for _ in range(1000))
    per: dict[int, list[float]] = {0: [], 1: []}
    for t in times:
        per[rng.randrange(2)].append(t)
    done = 5  # each partition's first five were applied before the backlog came
    now = [0.0]

    def clock() -> float:
        now[0] += 0.01  # every look at the clock is 10 ms later: partition 0's drain outlasts idle_ms
        return now[0]

    inner = _StaleEnds(per, order=[0, 1], fetch=10, done=done)
    source = AlignedSource(inner, batch_size=10, idle_ms=50, clock=clock)  # type: ignore[arg-type]
    source.enabled = True
    source.topic = TOPIC
    applied: list[float] = []
    expected = sorted(per[0][done:] + per[1][done:])
    for _ in range(20_000):
        if len(applied) == len(expected):
            break
        batch = source.poll_batch()
        applied += _times([batch])
        source.settled(batch.next_offsets())
    assert sorted(applied) == expected  # every record once, and no stall
    assert max(max(applied[:i + 1]) - t for i, t in enumerate(applied)) == 0  # in event-time order
    assert inner.asks > 0
