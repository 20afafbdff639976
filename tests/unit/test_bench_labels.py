"""The labels benchmark's card precision@k (the Fraud Detection Handbook's ch. 4.2 metric)."""

from __future__ import annotations

import numpy as np

from benchmarks.labels import DAY, card_precision_at_k, known_compromised
from stream_detector.feedback import Label, Verdicts


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
    earlier = [{"event_id": "old", "account_id": "a", "timestamp": (day - 1) * DAY}]
    verdicts = Verdicts([Label("old", True, "chargeback", day * DAY - 5)])
    assert known_compromised(earlier + events, verdicts, [day]) == {day: {"a"}}
    late = Verdicts([Label("old", True, "chargeback", day * DAY + 5)])  # known only after the day began
    assert known_compromised(earlier + events, late, [day]) == {day: set()}
