"""``WriteBehind.own_all``: a worker holding every partition keeps the shared keys' records (a
terminal's) in its window too, and their replay-log entries with it, written by the flush before
the records. Pure logic on ``InMemoryState`` and ``InMemoryFeatureLog``; the worker on real Kafka
and Redis is in ``tests/integration/test_entity.py``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stream_detector.entity import Enricher, EntitySpec, InMemoryState
from stream_detector.entity.behind import SHARED, WriteBehind
from stream_detector.entity.replay_log import InMemoryFeatureLog
from stream_detector.errors import EntityStateUnavailable
from tests.unit.test_entity_behind import SPEC, _Counting, _cuts, _events, _positions


def _sole(inner: InMemoryState, log: InMemoryFeatureLog) -> tuple[WriteBehind, Enricher]:
    behind = WriteBehind(inner, "account_id")
    enricher = Enricher(behind)
    enricher.keep_replay_log(log, "account_id", write=True)
    behind.own_all(True, log.append)
    return behind, enricher


def _batches(enricher: Enricher, behind: WriteBehind, events: list[dict[str, Any]], pos: list[tuple[int, int]],
             cuts: list[int], flush_every: int, commit: bool = True) -> np.ndarray:
    out = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        out.append(enricher.features(SPEC, events[a:b], pos[a:b]))
        behind.accept()
        if (i + 1) % flush_every == 0:
            behind.flush()
            if commit:
                behind.committed({p for p, _ in pos})
    return np.vstack(out)


@pytest.mark.parametrize("seed", range(5))
def test_a_sole_owner_gives_the_per_batch_features_and_records_with_fewer_round_trips(seed: int) -> None:
    """Random batch cuts and flush periods: every event's features and, after the last flush, every
    stored record's state are those of the store written on every batch; the terminals are read
    once (first touch) and written once per window, not once per batch."""
    rng = np.random.default_rng(seed)
    events = _events(600, seed)
    pos = _positions(events)
    cuts = _cuts(len(events), rng)
    plain = _Counting()
    expected = np.vstack([Enricher(plain).features(SPEC, events[a:b], pos[a:b])
                          for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    inner, log = _Counting(), InMemoryFeatureLog()
    behind, enricher = _sole(inner, log)
    flush_every = int(rng.integers(2, 5))
    got = _batches(enricher, behind, events, pos, cuts, flush_every)
    behind.flush()
    assert np.array_equal(got, expected, equal_nan=True)
    terminals = {e["terminal_id"] for e in events}
    accounts = {e["account_id"] for e in events}
    assert inner.read == len(terminals) + len(accounts)  # each record read once, at its first touch
    windows = -(-(len(cuts) - 1) // flush_every)
    assert inner.written <= windows * (len(terminals) + len(accounts)) < plain.written
    assert {k: (r["c"], r["a"]) for k, r in inner.records.items()} == \
           {k: (r["c"], r["a"]) for k, r in plain.records.items()}
    assert log.appends == windows  # one entry per window (its batches joined), not one per batch


@pytest.mark.parametrize("seed", range(4))
def test_a_sole_owners_window_flushed_but_not_committed_replays_exactly(seed: int) -> None:
    """The sole owner flushes a window (records and log) and dies before its commit: a successor
    reads everything again from the start in other batch cuts, as the sole owner or as a worker
    writing every batch. Every event gets the features it got the first time, bit for bit (the
    accounts' from the window's undo, the terminals' from the log), none from the current state,
    and the final records equal a single pass's."""
    rng = np.random.default_rng(seed)
    events = _events(500, seed + 10)
    pos = _positions(events)
    inner, log = InMemoryState(), InMemoryFeatureLog()
    behind, enricher = _sole(inner, log)
    first = _batches(enricher, behind, events, pos, _cuts(len(events), rng), flush_every=10_000, commit=False)
    behind.flush()  # written, never committed
    again_behind = WriteBehind(inner, "account_id")
    again = Enricher(again_behind)
    again.keep_replay_log(log, "account_id", write=True)
    if seed % 2:
        again_behind.own_all(True, log.append)
    second = _batches(again, again_behind, events, pos, _cuts(len(events), rng), flush_every=3)
    again_behind.flush()
    assert np.array_equal(first, second, equal_nan=True)
    assert again.log_hits > 0 and again.log_misses == 0
    single = InMemoryState()
    Enricher(single).features(SPEC, events, pos)
    assert {k: (r["c"], r["a"]) for k, r in inner.records.items()} == \
           {k: (r["c"], r["a"]) for k, r in single.records.items()}


class _LogFirst(InMemoryState):
    """Fails every write of records, after checking that the log held the window's entries first."""

    def __init__(self, log: InMemoryFeatureLog) -> None:
        super().__init__()
        self.log = log
        self.appends_seen: list[int] = []

    def save_raw(self, spec: EntitySpec, records: Any, expected: Any = None) -> Any:
        self.appends_seen.append(self.log.appends)
        raise EntityStateUnavailable("down")


def test_the_window_log_is_written_before_its_records_and_kept_when_they_fail() -> None:
    """The flush sends the window's log entries, then the records; a write of the records that
    fails keeps them pending, and the next flush sends them alone (the entries are in the log)."""
    events = _events(200, seed=3)
    pos = _positions(events)
    log = InMemoryFeatureLog()
    inner = _LogFirst(log)
    behind, enricher = _sole(inner, log)
    _batches(enricher, behind, events, pos, [0, 70, 140, 200], flush_every=10_000)
    assert behind.shared_pending and log.appends == 0  # nothing written before the flush
    with pytest.raises(EntityStateUnavailable):
        behind.flush()
    assert inner.appends_seen == [1]  # the log's entry was in before the records were tried
    assert behind.shared_pending and not behind.window_log
    with pytest.raises(EntityStateUnavailable):
        behind.flush()
    assert inner.appends_seen == [1, 1]  # the records tried again, the log's entry not sent twice


def test_a_batch_not_accepted_leaves_no_log_entry_and_a_revoked_partition_drops_the_shared_records() -> None:
    events = _events(300, seed=5)
    pos = _positions(events)
    inner, log = InMemoryState(), InMemoryFeatureLog()
    behind, enricher = _sole(inner, log)
    enricher.features(SPEC, events[:100], pos[:100])  # held: never accepted
    enricher.features(SPEC, events[:100], pos[:100])  # the same batch again
    behind.accept()
    assert len(behind.window_log) == 1
    assert any(d.partition == SHARED for d in behind.dirty.values())
    with pytest.raises(RuntimeError):
        behind.own_all(False)  # unwritten shared records: the window must be written or abandoned first
    behind.flush()
    assert not behind.shared_pending and log.appends == 1
    assert any(p == SHARED for _raw, p in behind.clean.values())
    behind.drop_partitions({1})
    assert not any(p == SHARED for _raw, p in behind.clean.values())  # another worker writes them from now on
    behind.own_all(False)
    assert behind.log_sink() is None and not behind.sole
    with pytest.raises(ValueError):
        behind.own_all(True)  # no log: a crash could not replay the shared features


def test_a_shared_record_changed_by_another_writer_is_named_by_its_key_in_the_conflict() -> None:
    """A sole owner's window holds terminal records too: a conflict on one names terminal_id (the
    message said account_id whatever the key, a review of 2026-12-07)."""
    from stream_detector.entity.behind import WriteBehindConflict

    events = _events(120, seed=4)
    pos = _positions(events)
    inner = InMemoryState()
    behind, enricher = _sole(inner, InMemoryFeatureLog())
    enricher.features(SPEC, events[:60], pos[:60])
    behind.accept()
    behind.flush()
    enricher.features(SPEC, events[60:], pos[60:])
    behind.accept()
    held = {name[1] for name, d in behind.dirty.items() if d.partition == SHARED}
    victim = next(k for k in inner.raw if k[1] in held)
    inner.raw[victim] = bytes(inner.raw[victim][:-1]) + bytes([inner.raw[victim][-1] ^ 1])
    with pytest.raises(WriteBehindConflict, match="records of terminal_id were changed") as caught:
        behind.flush()
    assert "account_id" not in str(caught.value).split(" were ")[0]
