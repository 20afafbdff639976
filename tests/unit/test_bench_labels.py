"""The labels benchmark's card precision@k (the Fraud Detection Handbook's ch. 4.2 metric)."""

from __future__ import annotations

import numpy as np

from benchmarks.labels import DAY, card_precision_at_k, known_compromised


def test_card_precision_at_k_ranks_cards_by_their_best_transaction_and_leaves_out_known_ones() -> None:
    day = 20_000
    events = [{"event_id": f"e{i}", "account_id": card, "timestamp": day * DAY + i}
              for i, card in enumerate(["a", "a", "b", "c", "d", "d"])]
    scores = np.array([0.1, 0.9, 0.8, 0.7, 0.2, 0.3])
    fraud = np.array([False, True, False, True, False, False])
    # top 2 cards by their best score: a (0.9, fraud), b (0.8): 1 of 2
    assert card_precision_at_k(events, scores, fraud, {}, 2) == [0.5]
    # a is known compromised before the day: the top 2 become b and c (0.7, fraud)
    assert card_precision_at_k(events, scores, fraud, {day: {"a"}}, 2) == [0.5]
    assert card_precision_at_k(events, scores, fraud, {day: {"a", "b"}}, 2) == [0.5]  # c, d
    assert card_precision_at_k(events, scores, fraud, {day: {"b"}}, 2) == [1.0]  # a, c


def test_known_compromised_follows_the_handbooks_rule() -> None:
    """Cards with a fraud from the training week's first day up to 7 days before the test day."""
    first = 20_000
    events = [{"event_id": f"e{i}", "account_id": card, "timestamp": (first + d) * DAY + 5}
              for i, (card, d) in enumerate([("old", -1), ("a", 0), ("b", 7), ("c", 8), ("d", 13)])]
    fraud = np.ones(len(events), dtype=bool)
    known = known_compromised(events, fraud, first, [first + 14, first + 15, first + 16])
    assert known == {first + 14: {"a"}, first + 15: {"a", "b"}, first + 16: {"a", "b", "c"}}
    assert known_compromised(events, np.zeros(len(events), dtype=bool), first, [first + 20]) == {first + 20: set()}
