"""benchmarks/align_rounds.py: the round counts behind issue 16's choice between event-time alignment
across workers and re-keying by terminal (benchmarks/RESULTS.md, *align-rounds*)."""

from __future__ import annotations

import itertools
import random

import pytest

from benchmarks.align_rounds import RULES, min_rounds, replay

GLOBAL, IN_ORDER, ANY_ORDER = RULES


def test_one_terminal_handed_between_two_partitions_takes_a_round_per_hand_off_under_every_rule() -> None:
    parts = [[(1.0, "A"), (3.0, "A")], [(2.0, "A"), (4.0, "A")]]
    assert min_rounds(parts) == 4  # A goes 0 → 1 → 0 → 1
    assert [replay(parts, rule, 8) for rule in RULES] == [4, 4, 4]


def test_terminals_on_one_partition_each_need_no_round_trip_per_terminal_but_the_global_watermark_takes_turns() -> None:
    parts = [[(1.0, "A"), (3.0, "A")], [(2.0, "B"), (4.0, "B")]]
    assert min_rounds(parts) == 1
    assert replay(parts, GLOBAL, 8) == 4  # one record a turn, in global time order
    assert replay(parts, IN_ORDER, 8) == 1
    assert replay(parts, ANY_ORDER, 8) == 1
    # a lookahead of one record: a partition's next record may be earlier than nothing it has shown
    assert replay(parts, IN_ORDER, 1) == 3


@pytest.mark.parametrize("rule", RULES)
def test_records_tied_at_every_horizon_do_not_deadlock(rule: str) -> None:
    """Found by review: with a strict ``t < horizon`` two partitions whose next records all share the
    earliest time held each other back forever (a lookahead of one record)."""
    parts = [[(1.0, "A"), (2.0, "A")], [(1.0, "B"), (2.0, "B")]]
    assert replay(parts, rule, 1) >= min_rounds(parts)


@pytest.mark.parametrize("seed", range(40))
def test_every_rule_applies_each_terminals_events_in_event_time_order_and_none_beats_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    parts: list[list[tuple[float, str]]] = [[] for _ in range(3)]
    t = 0.0
    for _ in range(300):  # each partition in event-time order, with ties within and across partitions
        t += rng.choice([0.0, 0.0, 1.0])
        parts[rng.randrange(3)].append((t, f"T{rng.randrange(12)}"))
    bound = min_rounds(parts)
    for rule in RULES:
        log: list[tuple[int, float, str, int]] = []
        rounds = replay(parts, rule, rng.choice([1, 2, 4, 16, 1000]), log)
        assert rounds >= bound
        assert sorted((t, term, p) for _r, t, term, p in log) == sorted(
            (t, term, p) for p, records in enumerate(parts) for t, term in records)  # each applied once
        by_terminal: dict[str, list[tuple[float, int, int]]] = {}
        for r, t, term, p in log:
            by_terminal.setdefault(term, []).append((t, p, r))
        for events in by_terminal.values():
            events.sort()  # event-time order, ties by partition: the order offline enrichment applies
            for (_t0, p0, r0), (_t1, p1, r1) in itertools.pairwise(events):
                assert r1 > r0 if p1 != p0 else r1 >= r0  # another worker's update seen a round later
