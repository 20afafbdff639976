"""``entity.behind.WriteBehind``: the partition key's records kept in memory and written once per
window, against the per-batch store (``InMemoryState``: pure logic; the worker on real Kafka and
Redis is in ``tests/integration/test_entity.py``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from stream_detector.entity import Enricher, EntitySpec, InMemoryState
from stream_detector.entity.behind import WriteBehind, WriteBehindConflict
from stream_detector.simulate import Simulator

SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400), max_distinct=4)
T0 = 1_790_000_000_000


def _events(n: int, seed: int, accounts: int = 30) -> list[dict[str, Any]]:
    events, _ = Simulator(seed=seed, accounts=accounts, run_id=f"wb{seed}", raw=True).batch(
        n, 0.03, now_ms=T0, span_ms=86_400_000)
    rng = np.random.default_rng(seed)
    for e in events:
        e["terminal_id"] = f"T{int(rng.integers(0, 12))}"  # shared by every partition
    return events


class _Counting(InMemoryState):
    """``InMemoryState`` that counts the records read and written (what a Redis store sends)."""

    def __init__(self) -> None:
        super().__init__()
        self.read = self.written = 0

    def load_raw(self, spec: EntitySpec, keys: Any) -> list[bytes | None]:
        self.read += len(keys)
        return super().load_raw(spec, keys)

    def save_raw(self, spec: EntitySpec, records: Any, expected: Any = None) -> Any:
        self.written += len(records)
        return super().save_raw(spec, records, expected)


def _positions(events: list[dict[str, Any]], partitions: int = 3) -> list[tuple[int, int]]:
    """Keyed by account: each account's events on one partition, offsets in arrival order."""
    nxt = [0] * partitions
    out = []
    for e in events:
        p = sum(map(ord, str(e["account_id"]))) % partitions
        out.append((p, nxt[p]))
        nxt[p] += 1
    return out


def _run(enricher: Enricher, events: list[dict[str, Any]], pos: list[tuple[int, int]], cuts: list[int],
         behind: WriteBehind | None = None, flush_every: int = 1) -> np.ndarray:
    """Batches ``events[cuts[i]:cuts[i+1]]``; with ``behind``: accept each, flush every ``flush_every``
    and commit (``committed``), as the worker does."""
    out = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        out.append(enricher.features(SPEC, events[a:b], pos[a:b]))
        if behind is not None:
            behind.accept()
            if (i + 1) % flush_every == 0:
                behind.flush()
                behind.committed({p for p, _ in pos})
    return np.vstack(out)


def _cuts(n: int, rng: np.random.Generator) -> list[int]:
    inner = sorted(set(rng.integers(1, n, size=int(rng.integers(3, 12))).tolist()))
    return [0, *inner, n]


@pytest.mark.parametrize("seed", range(6))
def test_write_behind_gives_the_per_batch_features_and_records(seed: int) -> None:
    """Random batch cuts and flush periods: the features of every event and, after the last flush,
    every stored record are those of the store written on every batch."""
    rng = np.random.default_rng(seed)
    events = _events(600, seed)
    pos = _positions(events)
    cuts = _cuts(len(events), rng)
    plain = _Counting()
    expected = _run(Enricher(plain), events, pos, cuts)
    inner = _Counting()
    behind = WriteBehind(inner, "account_id", max_records=int(rng.integers(1, 50)))
    got = _run(Enricher(behind), events, pos, cuts, behind, flush_every=int(rng.integers(1, 5)))
    behind.flush()
    assert np.array_equal(got, expected, equal_nan=True)
    assert inner.written < plain.written and inner.read < plain.read  # the accounts' were saved
    assert set(inner.raw) == set(plain.raw)
    # the records hold the same state and applied offsets (the undo snapshots differ: a window's)
    assert {k: (r["c"], r["a"]) for k, r in inner.records.items()} == \
           {k: (r["c"], r["a"]) for k, r in plain.records.items()}


def test_a_window_flushed_but_not_committed_is_replayed_exactly() -> None:
    """The worker flushes, then dies before its commit: the next owner reads the window again from
    the committed offsets (here: the start), in other batch cuts. The partition key's features are
    the same, bit for bit (the window's undo snapshot), and every event is counted once in the final
    state. A shared key's records were written batch by batch: their undo is the last batch's, so
    the events of the window's earlier batches get features from the state that already holds them
    (the documented approximation of a re-delivery, never counted twice)."""
    events = _events(500, seed=7)
    pos = _positions(events)
    inner = InMemoryState()
    behind = WriteBehind(inner, "account_id")
    first = _run(Enricher(behind), events, pos, [0, 120, 260, 400, 500], behind, flush_every=99)
    behind.flush()  # one window of four batches written, never committed
    replay = _run(Enricher(inner), events, pos, [0, 90, 330, 500])  # a new worker, per-batch writes
    fresh = InMemoryState()
    expected = Enricher(fresh).features(SPEC, events, pos)
    assert np.array_equal(first, expected, equal_nan=True)
    account = [i for i, f in enumerate(SPEC.output_fields) if f.startswith("account_id__")]
    assert np.array_equal(replay[:, account], expected[:, account], equal_nan=True)
    assert not np.array_equal(replay, expected, equal_nan=True)  # the terminals' approximation, as documented
    assert {k: r["c"] for k, r in inner.records.items()} == {k: r["c"] for k, r in fresh.records.items()}


def test_a_window_written_whose_commit_failed_keeps_its_undo_until_a_commit() -> None:
    """A CI run (2026-12-04): a window was written, its offset commit refused (a rebalance), the next
    window written with an undo snapshot of its own; read again from the older commit, 8 events of
    one partition got approximate account features. The undo snapshot now stays the first
    uncommitted window's until ``committed``: read again from the last commit, in one-event batches
    (event-time alignment's turns), with the records held (a refused commit) or read from the store
    (a rebalance: ``forget``), every account feature equals the per-batch store's. After a commit
    the next window starts an undo snapshot of its own."""
    events = _events(300, seed=7)
    pos = _positions(events, partitions=1)
    fresh = InMemoryState()
    expected = Enricher(fresh).features(SPEC, events, pos)
    account = [i for i, f in enumerate(SPEC.output_fields) if f.startswith("account_id__")]
    for held in (True, False):
        inner = InMemoryState()
        behind = WriteBehind(inner, "account_id")
        enricher = Enricher(behind)
        _run(enricher, events, pos, [0, 50, 100], behind, flush_every=99)
        behind.flush()
        behind.committed({0})  # offsets up to 100 committed
        assert not behind.pinned
        _run(enricher, events, pos, [100, 140, 180], behind, flush_every=99)
        behind.flush()  # its commit fails: nothing committed past 100
        pinned = dict(behind.pinned)
        assert pinned
        _run(enricher, events, pos, [180, 220, 260], behind, flush_every=99)
        behind.flush()
        assert all(behind.pinned[name] == pin for name, pin in pinned.items())  # the first window's undo stays
        if not held:
            behind.forget()
            assert not behind.pinned
        replay = _run(enricher, events, pos, list(range(100, 301)), behind, flush_every=7)
        assert np.array_equal(replay[:, account], expected[100:, account], equal_nan=True), held
        behind.flush()
        behind.committed({0})
        assert not behind.pinned


class _AnotherWriter(InMemoryState):
    """A store where, at the batch's compare-and-set, another worker has just written one shared
    (terminal) record: it applied an event of partition 7 to it. The batch loses that record."""

    def __init__(self, spec: EntitySpec, event: dict[str, Any]) -> None:
        super().__init__()
        self.spec, self.event, self.interfered = spec, event, False

    def save_raw(self, spec: EntitySpec, records: Any, expected: Any = None) -> Any:
        if expected is not None and not self.interfered and any(k[0] == "terminal_id" for k in records):
            self.interfered = True
            terminal = next(k[1] for k in records if k[0] == "terminal_id")
            Enricher(InMemoryStateView(self)).features(self.spec, [dict(self.event, terminal_id=terminal)],
                                                       [(7, 0)])
        return super().save_raw(spec, records, expected)


class InMemoryStateView(InMemoryState):
    """Another writer's handle on the same records (``_AnotherWriter``'s), bypassing its hook."""

    def __init__(self, of: InMemoryState) -> None:
        super().__init__()
        self.raw, self._specs = of.raw, of._specs


def test_a_shared_record_lost_to_another_writer_keeps_the_batchs_account_records() -> None:
    """A CI run (2026-12-04): a batch's compare-and-set lost a merchant record to another worker, and
    the redo read it again through ``load_raw``, which drops what the batch staged: the batch's
    account updates vanished from the window (later events of those accounts got features without
    them). The redo now reads with ``reload_raw``: the account features and records equal those of
    a run without the other writer, whose event only touches its terminal."""
    events = _events(300, seed=12)
    pos = _positions(events)
    other = dict(events[0], account_id="acct-elsewhere", event_id="other")
    account = [i for i, f in enumerate(SPEC.output_fields) if f.startswith("account_id__")]
    runs = []
    for interfering in (False, True):
        inner = _AnotherWriter(SPEC, other) if interfering else InMemoryState()
        inner.interfered = not interfering  # the plain run never interferes
        behind = WriteBehind(inner, "account_id")
        enricher = Enricher(behind)
        out = _run(enricher, events, pos, [0, 100, 200, 300], behind, flush_every=99)
        behind.flush()
        accounts = {k: v for k, v in inner.raw.items() if k[1][0] == "account_id" and k[1][1] != "acct-elsewhere"}
        runs.append((out, accounts, enricher.conflicts))
    (plain, plain_accounts, _), (out, accounts, conflicts) = runs
    assert conflicts >= 1  # the other writer's record was lost and the batch redone
    assert np.array_equal(out[:, account], plain[:, account], equal_nan=True)
    assert accounts == plain_accounts


def test_a_batch_never_accepted_is_not_kept() -> None:
    """A held batch (its delivery failed) is enriched again: what its first attempt staged is dropped,
    so the retry computes the same features and nothing is counted twice."""
    events = _events(300, seed=8)
    pos = _positions(events)
    inner = InMemoryState()
    behind = WriteBehind(inner, "account_id")
    enricher = Enricher(behind)
    head = enricher.features(SPEC, events[:100], pos[:100])
    behind.accept()
    held = enricher.features(SPEC, events[100:200], pos[100:200])  # not accepted: delivery failed
    retried = enricher.features(SPEC, events[100:200], pos[100:200])
    behind.accept()
    tail = enricher.features(SPEC, events[200:], pos[200:])
    behind.accept()
    behind.flush()
    assert np.array_equal(held, retried, equal_nan=True)
    fresh = InMemoryState()
    expected = Enricher(fresh).features(SPEC, events, pos)
    assert np.array_equal(np.vstack([head, retried, tail]), expected, equal_nan=True)
    assert {k: r["c"] for k, r in inner.records.items()} == {k: r["c"] for k, r in fresh.records.items()}


def test_a_record_changed_by_another_writer_fails_the_flush_and_everything_held_is_forgotten() -> None:
    events = _events(200, seed=9)
    pos = _positions(events)
    inner = InMemoryState()
    behind = WriteBehind(inner, "account_id")
    enricher = Enricher(behind)
    enricher.features(SPEC, events[:100], pos[:100])
    behind.accept()
    behind.flush()
    enricher.features(SPEC, events[100:], pos[100:])
    behind.accept()
    held = {name[1] for name in behind.dirty}
    victim = next(k for k in inner.raw if k[1] in held)
    inner.raw[victim] = bytes(inner.raw[victim][:-1]) + bytes([inner.raw[victim][-1] ^ 1])
    with pytest.raises(WriteBehindConflict, match="records of account_id were changed by another writer"):
        behind.flush()
    assert not behind.dirty and not behind.clean


def test_a_topic_not_keyed_by_the_field_turns_write_behind_off(caplog: pytest.LogCaptureFixture) -> None:
    """Accounts spread over partitions (a topic keyed by event id): the first such record asks for a
    flush and logs an ERROR; after the flush every record is written on every batch, and the features
    stay those of the per-batch store."""
    events, pos, inner, behind, enricher = _round_robin()
    out = [enricher.features(SPEC, events[:150], pos[:150])]
    with caplog.at_level(logging.ERROR, logger="stream_detector.entity"):
        assert behind.accept() is True
    assert "not keyed by account_id" in caplog.text and not behind.disabled
    assert not any(str(e["account_id"]) in caplog.text for e in events)  # no raw value (a card number?) logged
    behind.flush()
    assert behind.disabled and not behind.dirty
    _written_through(enricher, behind, inner, events, pos, out, 150)


def _round_robin() -> tuple[list[dict[str, Any]], list[tuple[int, int]], InMemoryState, WriteBehind, Enricher]:
    """Events of accounts spread over three partitions round robin (a topic not keyed by account),
    and a write-behind enricher over an in-memory store."""
    events = _events(400, seed=10)
    pos = [(i % 3, i // 3) for i in range(len(events))]  # an account on every partition
    inner = InMemoryState()
    behind = WriteBehind(inner, "account_id")
    return events, pos, inner, behind, Enricher(behind)


def _written_through(enricher: Enricher, behind: WriteBehind, inner: InMemoryState, events: list[dict[str, Any]],
                     pos: list[tuple[int, int]], out: list[np.ndarray], start: int) -> None:
    """Write-behind turned off: the events from ``start`` are written through, and every feature
    (``out`` and theirs) and stored record are the per-batch store's."""
    out.append(enricher.features(SPEC, events[start:], pos[start:]))
    assert behind.accept() is False and not behind.dirty  # written through
    fresh = InMemoryState()
    assert np.array_equal(np.vstack(out), Enricher(fresh).features(SPEC, events, pos), equal_nan=True)
    assert {k: r["c"] for k, r in inner.records.items()} == {k: r["c"] for k, r in fresh.records.items()}


def test_records_of_revoked_partitions_are_dropped_unwritten() -> None:
    events = _events(300, seed=11)
    pos = _positions(events)
    inner = InMemoryState()
    behind = WriteBehind(inner, "account_id")
    Enricher(behind).features(SPEC, events, pos)
    behind.accept()
    held = {d.partition for d in behind.dirty.values()}
    assert held == {p for p, _ in pos}
    dropped = behind.drop_partitions({0})
    assert dropped > 0 and {d.partition for d in behind.dirty.values()} == held - {0}
    behind.flush()
    accounts = {k[1][1] for k in inner.raw if k[1][0] == "account_id"}
    on_zero = {e["account_id"] for e, (p, _) in zip(events, pos, strict=True) if p == 0}
    assert accounts and not accounts & on_zero


def test_the_window_undo_splice_equals_decoding_and_assembling() -> None:
    """``binary.with_undo`` slices bytes; it gives what parsing both records and assembling gives."""
    from stream_detector.entity import binary

    events = _events(200, seed=12)
    pos = _positions(events)
    inner = InMemoryState()
    enricher = Enricher(inner)
    snapshots = []
    for a in range(0, 200, 50):
        enricher.features(SPEC, events[a:a + 50], pos[a:a + 50])
        snapshots.append(dict(inner.raw))
    spliced = 0
    for (ns, (key, value)), last in snapshots[-1].items():
        first = snapshots[0].get((ns, (key, value)))
        if first is None:
            continue
        w, f = len(SPEC.windows), len(SPEC.distinct_for(key))
        got = binary.with_undo(last, first, w, f)
        want = binary.assemble(binary.parse(SPEC, key, last).applied, binary.parse(SPEC, key, last).core,
                               binary.parse(SPEC, key, first).undo)
        assert got == want
        assert binary.decode(SPEC, key, got)["u"] == binary.decode(SPEC, key, first)["u"]
        spliced += 1
    assert spliced > 10


def test_passing_through_reads_and_writes_every_record_with_the_batch() -> None:
    """``pass_through`` (a model with a key shared across partitions): a batch's account records are
    read from and written to the store with the batch, as without write-behind; switching needs the
    window flushed, and forgets the records held (the batches change them in the store); off again,
    write-behind resumes from the store. Features equal the per-batch enricher's throughout."""
    events = _events(300, seed=4)
    pos = _positions(events)
    inner, plain = InMemoryState(), Enricher(InMemoryState())
    behind = WriteBehind(inner, "account_id")
    enricher = Enricher(behind)
    cuts = [0, 60, 120, 180, 240, 300]
    want = _run(plain, events, pos, cuts)
    got = [_run(enricher, events, pos, cuts[:3], behind, flush_every=10)]  # a window of two batches, open
    assert behind.pending > 0
    with pytest.raises(RuntimeError, match="flush the open window"):
        behind.pass_through(True)
    behind.flush()
    behind.pass_through(True)
    assert not behind.clean and behind.passing
    before = dict(inner.raw)
    got.append(enricher.features(SPEC, events[120:180], pos[120:180]))
    changed = {k for k, v in inner.raw.items() if before.get(k) != v}
    assert any(k[1][0] == "account_id" for k in changed) and behind.pending == 0  # written with the batch
    behind.pass_through(False)
    got.append(_run(enricher, events[180:], pos[180:], [0, 60, 120], behind, flush_every=1))
    np.testing.assert_array_equal(np.vstack(got), want)
    assert inner.raw == plain.store.raw  # type: ignore[attr-defined]  # the same records, bit for bit


def test_write_tokens_are_kept_only_while_records_are_held_across_batches() -> None:
    """A store that remembers write tokens (``RedisState.keep_heads``) is asked to remember the
    partition key's while write-behind holds its records, and none while they pass through (each
    batch's write uses its own read's tokens; the bookkeeping cost ~4 % of the worker's thread)."""
    calls: list[tuple[str | None, int]] = []

    class Remembering(InMemoryState):
        def keep_heads(self, field: str | None, size: int) -> None:
            calls.append((field, size))

    behind = WriteBehind(Remembering(), "account_id", max_records=10)
    behind.pass_through(True)
    behind.pass_through(True)  # no change: not asked again
    behind.pass_through(False)
    assert [field for field, _ in calls] == ["account_id", None, "account_id"]
    assert all(size >= 10 for _, size in calls)


def _async_run(enricher: Enricher, behind: WriteBehind, events: list[dict[str, Any]], pos: list[tuple[int, int]],
               cuts: list[int], flush_every: int, lag: int) -> tuple[np.ndarray, list[int]]:
    """``_run`` as the worker runs it with SD_ENTITY_FLUSH_ASYNC: every ``flush_every`` batches the
    window goes in flight (``start_flush``); ``lag`` more batches are read and accepted before its
    write runs (``Flush.send``, the writer thread's part) and lands (``finish_flush``); then its
    offsets are committed (``committed``); the last one in flight lands uncommitted. Returns the
    features and each committed window's end (the index of the first event after it: where a crash
    then reads again from)."""
    out, ends = [], []
    flight: tuple[Any, int, int] | None = None  # (flush, its window's end, batches accepted since)
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        out.append(enricher.features(SPEC, events[a:b], pos[a:b]))
        behind.accept()
        if flight is not None:
            flush, end, since = flight
            flight = (flush, end, since + 1)
            if since + 1 >= lag:
                flush.send()
                behind.finish_flush(flush)
                behind.committed({p for p, _ in pos[:end]})
                ends.append(end)
                flight = None
        if flight is None and (i + 1) % flush_every == 0:
            flush = behind.start_flush()
            if flush is not None:
                flight = (flush, b, 0)
    if flight is not None:  # the last window in flight lands (its commit never comes)
        flight[0].send()
        behind.finish_flush(flight[0])
    return np.vstack(out), ends


@pytest.mark.parametrize("seed", range(4))
def test_a_window_written_while_the_next_batches_are_read_gives_the_per_batch_features(seed: int) -> None:
    """SD_ENTITY_FLUSH_ASYNC: the next batches read the records of a window still in flight from
    memory and start a window of their own; the features of every event and, after the last
    write, every stored record are those of the store written on every batch. Then a crash after
    the next window's write, before its commit: read again from the last commit (a landed window's
    end) by a new worker, every account feature is the per-batch store's — the next window's
    records got an undo snapshot of their own when the one in flight committed (``committed``: a
    record keeping the older window's undo would be replayed from the state before it, without its
    events: approximate features)."""
    rng = np.random.default_rng(100 + seed)
    events = _events(600, seed)
    pos = _positions(events)
    cuts = _cuts(len(events), rng)
    cuts = sorted(set(cuts) | set(range(0, len(events), 25)))  # enough batches for windows in flight
    plain = InMemoryState()
    expected = _run(Enricher(plain), events, pos, cuts)
    inner = InMemoryState()
    behind = WriteBehind(inner, "account_id")
    got, ends = _async_run(Enricher(behind), behind, events, pos, cuts, flush_every=int(rng.integers(1, 4)),
                           lag=int(rng.integers(1, 3)))
    assert len(ends) >= 2
    assert np.array_equal(got, expected, equal_nan=True)
    behind.flush()  # the window open at the end: written, never committed
    assert {k: (r["c"], r["a"]) for k, r in inner.records.items()} == \
           {k: (r["c"], r["a"]) for k, r in plain.records.items()}
    start = ends[-1]  # the last commit
    replay = _run(Enricher(inner), events, pos, [start, *[c for c in cuts if c > start]])
    account = [i for i, f in enumerate(SPEC.output_fields) if f.startswith("account_id__")]
    assert np.array_equal(replay[:, account], expected[start:, account], equal_nan=True)


class _Failing(InMemoryState):
    """A store whose next compare-and-set sent from ``Flush.send`` fails (Redis went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def send_save(self, write: Any) -> list[int]:
        if self.fail:
            from stream_detector.errors import EntityStateUnavailable
            raise EntityStateUnavailable("injected: connection refused")
        return super().send_save(write)


def test_a_window_in_flight_whose_write_fails_forgets_every_record_held() -> None:
    """The write of a window in flight fails: ``finish_flush`` raises it and forgets every record
    held — those of the window and those of the batches read since from them — so that everything
    since the last commit is read again against the store (the worker rewinds)."""
    from stream_detector.errors import EntityStateUnavailable
    events = _events(200, seed=3)
    pos = _positions(events)
    inner = _Failing()
    behind = WriteBehind(inner, "account_id")
    enricher = Enricher(behind)
    _run(enricher, events, pos, [0, 60, 120], behind, flush_every=99)
    flush = behind.start_flush()
    assert flush is not None and flush.count > 0 and behind.pending == 0 and behind.pinned
    _run(enricher, events, pos, [120, 200], behind, flush_every=99)  # read from the window in flight
    assert behind.pending > 0
    inner.fail = True
    flush.send()
    with pytest.raises(EntityStateUnavailable, match="injected"):
        behind.finish_flush(flush)
    assert behind.pending == 0 and not behind.clean and not behind.pinned
    assert not any(k[1][0] == "account_id" for k in inner.raw)  # nothing of the accounts was written


def test_a_topic_found_not_keyed_while_a_window_is_in_flight_stays_deferred_until_nothing_is_held() -> None:
    """A review of the asynchronous write (2026-12-06): the window in flight lands while the next
    window's records are still open; write-behind turns off only once those are written too (off
    with records held, the next batches would read and write past them in the store)."""
    events, pos, inner, behind, enricher = _round_robin()
    out = [enricher.features(SPEC, events[:150], pos[:150])]
    assert behind.accept() is True  # found: a flush is asked for
    flush = behind.start_flush()
    assert flush is not None
    out.append(enricher.features(SPEC, events[150:250], pos[150:250]))  # read while the write is in flight
    behind.accept()
    flush.send()
    behind.finish_flush(flush)
    assert behind.dirty and not behind.disabled  # the open window's records are not written yet
    behind.flush()
    assert behind.disabled and not behind.dirty
    _written_through(enricher, behind, inner, events, pos, out, 250)
