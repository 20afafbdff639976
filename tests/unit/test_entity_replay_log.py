"""``entity.replay_log``: a shared key's features logged with every batch, so that a write-behind
window read again after a crash gets the features it got the first time (pure logic on
``InMemoryState``; the worker on real Kafka and Redis is in ``tests/integration/test_entity.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.entity import Enricher, EntitySpec, InMemoryState
from stream_detector.entity.behind import WriteBehind
from stream_detector.entity.replay_log import InMemoryFeatureLog, decode, encode, lookup
from tests.unit.test_entity_behind import SPEC, _events, _positions  # the same workload: terminals on every partition

OTHER = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600,), max_distinct=4)


class _Worker:
    """One worker's enricher: write-behind for the account (a window flushed on ``flush``), the
    terminal written every batch, and (``log``) the replay log."""

    def __init__(self, inner: InMemoryState, log: InMemoryFeatureLog | None, write: bool = True) -> None:
        self.behind = WriteBehind(inner, "account_id")
        self.enricher = Enricher(self.behind)
        if log is not None:
            self.enricher.keep_replay_log(log, "account_id", write=write)

    def batch(self, events: list[dict[str, Any]], pos: list[tuple[int, int]]) -> np.ndarray:
        out = self.enricher.features(SPEC, events, pos)
        self.behind.accept()
        return out


def _scenario(log: InMemoryFeatureLog | None, seed: int, cuts_a: list[int], cuts_again: list[int],
              again_writes: bool = True) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], _Worker]:
    """Worker A owns partitions 0 and 1, worker B partition 2; both write the shared terminals in
    turn. A writes its window (flush) and dies before committing; B goes on; A's successor reads
    A's window again from the start in other batch cuts. Returns A's features and the successor's,
    by event index."""
    events = _events(600, seed)
    pos = _positions(events)
    mine = [i for i, (p, _o) in enumerate(pos) if p in (0, 1)]
    theirs = [i for i, (p, _o) in enumerate(pos) if p == 2]
    inner = InMemoryState()
    a, b = _Worker(inner, log), _Worker(inner, log)
    first: dict[int, np.ndarray] = {}
    half = len(theirs) // 2
    b_cuts = np.linspace(0, half, len(cuts_a), dtype=int).tolist()
    pairs_a = list(zip(cuts_a[:-1], cuts_a[1:], strict=True))
    pairs_b = list(zip(b_cuts[:-1], b_cuts[1:], strict=True))
    for (lo, hi), (blo, bhi) in zip(pairs_a, pairs_b, strict=True):
        rows = mine[lo:hi]
        for i, row in zip(rows, a.batch([events[i] for i in rows], [pos[i] for i in rows]), strict=True):
            first[i] = row
        rows_b = theirs[blo:bhi]  # B's batch between two of A's: the terminals interleave
        b.batch([events[i] for i in rows_b], [pos[i] for i in rows_b])
        b.behind.flush()
    a.behind.flush()  # A's window written, never committed
    rest = theirs[half:]
    b.batch([events[i] for i in rest], [pos[i] for i in rest])  # B goes on meanwhile
    b.behind.flush()
    again = _Worker(inner, log, write=again_writes)
    second: dict[int, np.ndarray] = {}
    for lo, hi in zip(cuts_again[:-1], cuts_again[1:], strict=True):
        rows = mine[lo:hi]
        for i, row in zip(rows, again.batch([events[i] for i in rows], [pos[i] for i in rows]), strict=True):
            second[i] = row
    return first, second, again


@pytest.mark.parametrize(("seed", "again_writes"), [(0, True), (1, True), (2, False), (3, True), (4, False)])
def test_a_window_read_again_after_a_crash_gets_its_shared_features_from_the_log(seed: int,
                                                                                 again_writes: bool) -> None:
    """With the replay log, every event of the window read again gets the features A computed,
    bit for bit (the account's from the window's undo snapshot, the terminal's from the log),
    also when the successor does not write the log itself (``again_writes`` False: restarted with
    ``SD_ENTITY_REPLAY_LOG=false``, a trial found it computing them anew); without the log the
    terminal's come from a state ahead in time (the approximation the log removes: this test can
    fail)."""
    rng = np.random.default_rng(seed)
    n = len([p for p, _o in _positions(_events(600, seed)) if p in (0, 1)])
    cuts_a = [0, *sorted(set(rng.integers(1, n, size=4).tolist())), n]
    cuts_again = [0, *sorted(set(rng.integers(1, n, size=3).tolist())), n]
    log = InMemoryFeatureLog()
    first, second, again = _scenario(log, seed, cuts_a, cuts_again, again_writes)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[i], second[i], equal_nan=True) for i in first)
    assert again.enricher.log_hits > 0 and again.enricher.log_misses == 0
    first, second, _ = _scenario(None, seed, cuts_a, cuts_again)
    assert not all(np.array_equal(first[i], second[i], equal_nan=True) for i in first)


def test_entries_are_kept_per_partition_until_their_offsets_are_committed() -> None:
    """A found during a trial run of the integration test: a successor's first commit deleted the
    whole log, and the rest of the window it was reading again found nothing. ``drop`` takes the
    committed offsets and drops only the head entries wholly below them."""
    log = InMemoryFeatureLog()
    values = np.arange(8, dtype=np.float64).reshape(4, 2)
    log.append(SPEC, "terminal_id", np.array([0, 1, 0, 1]), np.array([5, 5, 6, 7]), values)
    log.append(SPEC, "terminal_id", np.array([0, 0]), np.array([7, 8]), values[:2] + 10)
    found, got = log.find(SPEC, "terminal_id", np.array([1, 0, 0, 1]), np.array([7, 6, 9, 5]), 2)
    assert found.tolist() == [True, True, False, True]
    assert got[found].tolist() == [[6.0, 7.0], [4.0, 5.0], [2.0, 3.0]]
    log.drop({0: 7})  # the first entry of partition 0 holds 5 and 6: dropped; 7 and 8 stay
    found, got = log.find(SPEC, "terminal_id", np.array([0, 0, 0, 1]), np.array([5, 7, 8, 5]), 2)
    assert found.tolist() == [False, True, True, True]
    log.drop({0: 9, 1: 7})  # partition 1's entry holds 7: it stays
    found, _ = log.find(SPEC, "terminal_id", np.array([0, 1]), np.array([8, 7]), 2)
    assert found.tolist() == [False, True]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 40), st.floats(allow_nan=True)), max_size=12), max_size=5))
def test_lookup_takes_the_last_entry_holding_an_offset(entries: list[list[tuple[int, float]]]) -> None:
    """Entries in write order (an event logged again by a batch read again): each offset's value is
    the last entry's that holds it, bit for bit; entries of another spec or key are ignored."""
    packed, expected = [], {}
    for entry in entries:
        last = {o: v for o, v in entry}  # one entry holds an offset once
        offsets = np.array(list(last), dtype=np.int64)
        values = np.array(list(last.values()), dtype=np.float64).reshape(-1, 1)
        packed.append(encode(SPEC, "terminal_id", offsets, values))
        packed.append(encode(OTHER, "terminal_id", offsets, values + 1))  # another spec: ignored
        packed.append(encode(SPEC, "merchant_id", offsets, values + 2))  # another key: ignored
        expected.update(last)
    asked = np.arange(0, 41, dtype=np.int64)
    found, got = lookup(packed, SPEC, "terminal_id", asked, 1)
    assert {int(o) for o in asked[found]} == set(expected)
    for o in expected:
        assert np.array_equal(got[o, 0], expected[o], equal_nan=True)


def test_an_entry_round_trips_and_other_bytes_are_not_one() -> None:
    offsets, values = np.array([3, 1], dtype=np.int64), np.array([[0.1, np.nan], [-0.0, 1e300]])
    fingerprint, key, o, v = decode(encode(SPEC, "terminal_id", offsets, values)) or ("", "", None, None)
    assert (fingerprint, key) == (SPEC.fingerprint[:12], "terminal_id")
    assert np.array_equal(o, offsets) and np.array_equal(v, values, equal_nan=True)
    assert decode(b"not an entry") is None and decode(b"") is None
