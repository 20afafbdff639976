"""Label-derived entity features (``entity/labels.py``): point in time, no look-ahead, the spec."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.feedback import Label, prefer

H = 3_600_000.0
T0 = 1_764_000_000_000.0
SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400), distinct_fields=(),
                  label_keys=("terminal_id",))


def _stream(rng: random.Random, n: int, terminals: int = 3) -> list[dict[str, Any]]:
    t, out = T0, []
    for i in range(n):
        t += rng.choice([0.0, 1.0, rng.uniform(0, 3 * H)])  # ties in time too
        out.append({"event_id": f"e{i}", "account_id": f"a{rng.randrange(4)}", "timestamp": t,
                    "terminal_id": f"t{rng.randrange(terminals)}", "amount": round(rng.uniform(1, 99), 2)})
    return out


def _labels(rng: random.Random, events: list[dict[str, Any]], share: float = 0.4) -> list[Label]:
    out = []
    for e in events:
        for _ in range(rng.choice([0, 0, 1, 2]) if rng.random() < share else 0):
            out.append(Label(e["event_id"], rng.random() < 0.7, rng.choice(["analyst", "chargeback", "x"]),
                             e["timestamp"] + rng.choice([0.0, 1.0, rng.uniform(0, 10 * H)])))
    return out


def _reference(spec: EntitySpec, events: list[dict[str, Any]], labels: list[Label]) -> list[dict[str, float]]:
    """Straight from the definition (entity_spec.py), one event against every other event."""
    by_event: dict[str, list[Label]] = {}
    for label in labels:
        by_event.setdefault(label.event_id, []).append(label)
    enriched = enrich_history(EntitySpec(keys=spec.keys, windows=spec.windows, distinct_fields=()), events)
    out = []
    for i, e in enumerate(events):
        row: dict[str, float] = {}
        as_of = e["timestamp"] - spec.label_delay_s * 1000.0
        for key in spec.label_keys:
            for w in spec.windows:
                name = f"{w // 3600}h" if w < 86_400 else f"{w // 86_400}d"
                parts = []
                for j, other in enumerate(events):
                    age = e["timestamp"] - other["timestamp"]
                    if j == i or other[key] != e[key] or not 0 < age < spec.horizon_ms:
                        continue
                    best = None
                    for label in by_event.get(other["event_id"], []):
                        if label.labelled_at <= as_of and label.labelled_at - other["timestamp"] <= spec.label_within_s * 1000:
                            best = prefer(best, label)
                    if best is not None and best.fraud:
                        parts.append(math.exp(-age / (w * 1000.0)))
                fraud = math.fsum(parts)
                count = enriched[i][f"{key}__count_{name}"]
                row[f"{key}__fraud_{name}"] = fraud
                row[f"{key}__fraud_share_{name}"] = fraud / count if count > 1e-9 else 0.0
        out.append(row)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.sampled_from([0, 3600]), st.sampled_from([3 * 3600, 30 * 86_400]))
def test_label_features_follow_their_definition(seed: int, n: int, delay: int, within: int) -> None:
    rng = random.Random(seed)
    spec = EntitySpec(keys=SPEC.keys, windows=SPEC.windows, distinct_fields=(), label_keys=SPEC.label_keys,
                      label_delay_s=delay, label_within_s=within)
    events = _stream(rng, n)
    labels = _labels(rng, events)
    got = enrich_history(spec, events, labels=labels)
    assert [{f: row[f] for f in spec.label_fields} for row in got] == _reference(spec, events, labels)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 60))
def test_a_label_known_after_an_event_never_changes_its_features(seed: int, n: int) -> None:
    """No look-ahead: labels that became known after event ``cut``'s time (later verdicts,
    reversals, labels on later events) leave the features of every event up to ``cut`` as they were."""
    rng = random.Random(seed)
    events = _stream(rng, n)
    labels = _labels(rng, events)
    cut = rng.randrange(n)
    then = events[cut]["timestamp"]
    known_then = [label for label in labels if label.labelled_at <= then]
    later = [Label(e["event_id"], rng.random() < 0.5, rng.choice(["analyst", "chargeback"]), then + rng.uniform(1, 5 * H))
             for e in rng.sample(events, min(len(events), 10))]
    before = enrich_history(SPEC, events, labels=known_then)
    after = enrich_history(SPEC, events, labels=known_then + [lab for lab in labels if lab.labelled_at > then] + later)
    for i in range(cut + 1):
        if events[i]["timestamp"] <= then:
            assert {f: before[i][f] for f in SPEC.label_fields} == {f: after[i][f] for f in SPEC.label_fields}


def test_a_compromised_terminal_raises_the_risk_of_its_next_transactions_once_its_frauds_are_known() -> None:
    events = [{"event_id": f"e{i}", "account_id": f"a{i}", "terminal_id": "T", "amount": 10.0,
               "timestamp": T0 + i * H} for i in range(6)]
    labels = [Label("e0", True, "chargeback", T0 + 2.5 * H), Label("e1", True, "analyst", T0 + 2.5 * H),
              Label("e1", False, "chargeback", T0 + 4.5 * H)]  # e1 reversed by a chargeback later
    spec = EntitySpec(keys=("terminal_id",), windows=(3600,), distinct_fields=(), label_keys=("terminal_id",),
                      horizon_factor=10.0)  # 10 h: every event here is within it
    rows = enrich_history(spec, events, labels=labels)
    fraud = [r["terminal_id__fraud_1h"] for r in rows]
    assert fraud[:3] == [0.0, 0.0, 0.0]  # nothing known before 2.5 h
    assert fraud[3] == pytest.approx(math.exp(-3) + math.exp(-2))  # e0 and e1 known fraud at 3 h
    assert fraud[4] == pytest.approx(math.exp(-4) + math.exp(-3))
    assert fraud[5] == pytest.approx(math.exp(-5))  # e1's chargeback says legit from 4.5 h
    share = rows[3]["terminal_id__fraud_share_1h"]
    assert share == pytest.approx(fraud[3] / rows[3]["terminal_id__count_1h"])
    delayed = EntitySpec(keys=("terminal_id",), windows=(3600,), distinct_fields=(), label_keys=("terminal_id",),
                         label_delay_s=3600, horizon_factor=10.0)
    assert [r["terminal_id__fraud_1h"] for r in enrich_history(delayed, events, labels=labels)][:4] == [0.0] * 4


def test_the_spec_without_label_keys_keeps_its_json_and_fingerprint() -> None:
    plain = EntitySpec(keys=("account_id", "terminal_id"))
    assert "label_keys" not in plain.to_dict() and plain.label_fields == [] and plain.all_fields == plain.output_fields
    labelled = EntitySpec(keys=("account_id", "terminal_id"), label_keys=("terminal_id",), label_delay_s=60)
    assert EntitySpec.from_json(labelled.to_json()) == labelled and labelled.fingerprint != plain.fingerprint
    assert EntitySpec.from_json(plain.to_json()).fingerprint == plain.fingerprint
    assert labelled.label_fields[:2] == ["terminal_id__fraud_1h", "terminal_id__fraud_share_1h"]
    with pytest.raises(ValueError, match="label keys"):
        EntitySpec(keys=("account_id",), label_keys=("terminal_id",))
