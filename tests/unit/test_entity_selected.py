"""``entity.history.enrich_selected`` (the retrainer's enrichment of a history it never holds whole)
against ``enrich_history`` on the whole list: random streams with awkward keys, times, amounts and
distinct labels (the kernel test's strategy), invalid rows, repeated event ids, labels on some
events, any chunking of the input and any subset kept. Equality is exact, row for row."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.entity.history import enrich_selected
from stream_detector.feedback import Label
from tests.unit.test_entity_kernel import streams

SPECS = [
    EntitySpec(keys=("account_id", "terminal_id"), windows=(60, 3600), max_distinct=2, horizon_factor=1.0,
               label_keys=("terminal_id", "account_id")),
    EntitySpec(keys=("account_id",), windows=(600,), distinct_fields=("merchant_category", "country"),
               max_distinct=3),
    EntitySpec(keys=("terminal_id", "merchant_category"), windows=(60, 3600, 86_400), distinct_fields=(),
               amount_field="value", label_keys=("terminal_id",)),
]
CHECK = settings(derandomize=True, max_examples=80, deadline=None, database=None)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@CHECK
@given(st.sampled_from(range(len(SPECS))), streams(), st.data())
def test_selected_rows_equal_the_whole_history_enriched(which: int, events: list[dict[str, Any]], data: Any) -> None:
    spec = SPECS[which]
    n = len(events)
    for i in data.draw(st.lists(st.integers(0, max(0, n - 1)), max_size=5)) if n else []:
        events[i] = {**events[i], "event_id": events[max(0, i - 1)]["event_id"]}  # a repeated id
    labels = [Label(str(e["event_id"]), data.draw(st.booleans()), data.draw(st.sampled_from(["analyst", "x"])),
                    data.draw(st.floats(1.7e12, 1.8e12)))
              for e in events if data.draw(st.booleans())]
    keep = set(data.draw(st.lists(st.integers(0, max(0, n - 1)), max_size=n))) if n else set()
    cut = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=4))))
    chunks = [events[a:b] for a, b in zip([0, *cut], [*cut, n], strict=True)]
    whole = enrich_history(spec, events, labels=labels)
    got = enrich_selected(spec, chunks, lambda i, _e: i in keep, labels)
    assert got.positions.tolist() == sorted(keep)
    assert len(got.rows) == len(keep)
    for row, at in zip(got.rows, got.positions.tolist(), strict=True):
        want = whole[at]
        assert list(row) == list(want)  # the same fields in the same order (the training spec infers from it)
        assert all(_same(row[k], want[k]) for k in want), (at, row, want)
    values = np.array([[whole[i][f] for f in spec.all_fields] for i in sorted(keep)]).reshape(len(keep), len(spec.all_fields))
    assert np.array_equal(got.values, values, equal_nan=True)


def test_every_row_kept_is_enrich_history_itself() -> None:
    spec = SPECS[0]
    t0 = 1_790_000_000_000.0
    events = [{"event_id": f"e{i}", "account_id": f"a{i % 3}", "terminal_id": f"t{i % 2}", "amount": float(i),
               "timestamp": t0 + 60_000.0 * i} for i in range(40)]
    labels = [Label(f"e{i}", True, "analyst", t0 + 60_000.0 * i + 1.0) for i in range(0, 40, 4)]
    got = enrich_selected(spec, [events[:7], events[7:]], lambda _i, _e: True, labels)
    assert got.rows == enrich_history(spec, events, labels=labels)
    assert got.values[:, -len(spec.label_fields):].any()  # the labels reached the later rows


@CHECK
@given(st.sampled_from(range(len(SPECS))), streams(), st.data())
def test_carried_state_over_parts_equals_the_whole_history_in_one_go(which: int, events: list[dict[str, Any]],
                                                                     data: Any) -> None:
    """``CarriedState`` (offline scoring in parts): the state crosses part boundaries exactly, new
    entities and new distinct labels (recoded in label order) included."""
    from stream_detector.entity.history import CarriedState, enrich_columns

    spec = SPECS[which]
    n = len(events)
    cut = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=6))))
    state = CarriedState(spec)
    parts = [state.features(events[a:b]) for a, b in zip([0, *cut], [*cut, n], strict=True)]
    got = np.concatenate(parts) if parts else np.zeros((0, len(spec.output_fields)))
    assert np.array_equal(got, enrich_columns(spec, events), equal_nan=True)
