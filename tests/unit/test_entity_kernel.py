"""The compiled enricher against the per-event reference (``entity.reference``) on random event
streams: random keys (missing and odd-typed ones included), timestamps (late, missing, RFC 3339,
beyond the horizon), amounts, distinct values (ties at the cap), invalid rows, and random batch
retries. Equality is exact: every feature float and every state float, bit for bit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.entity import Enricher, EntitySpec, InMemoryState, enrich_history, records
from stream_detector.entity.columns import entity_codes, entity_value, numbers, timestamp_value
from stream_detector.entity.compute import amount_value
from stream_detector.entity.reference import ReferenceEnricher, reference_enrich_history

H = 3_600_000
SPECS = [
    EntitySpec(keys=("account_id", "terminal_id"), windows=(60, 3600), max_distinct=2, horizon_factor=1.0),
    EntitySpec(keys=("account_id",), windows=(600,), distinct_fields=("merchant_category",), max_distinct=3),
    EntitySpec(keys=("terminal_id", "merchant_category"), windows=(60, 3600, 86_400), distinct_fields=(),
               amount_field="value"),
]
CHECK = settings(derandomize=True, max_examples=60, deadline=None, database=None)

keys = st.sampled_from(["a", "b", "c", 7, "", None, True, 2.5, "missing"])
times = st.one_of(
    st.integers(-3 * H, 30 * H).map(float),   # offsets from the previous event: late ones included
    st.sampled_from([float(H), 1_800_000.0, 0.0]),  # exactly a horizon (1 h, 30 min) and ties
    st.just(None), st.just("rfc"), st.just(math.nan), st.just(True), st.just(10**400),
)
amounts = st.one_of(st.floats(-1e3, 1e6, allow_nan=False), st.integers(-5, 10**6), st.just(None), st.just("12"),
                    st.just(False), st.just(math.inf))
labels = st.one_of(st.sampled_from(["x", "y", "z", "w", "v"]), st.integers(0, 3), st.just(None), st.just([1]))


@st.composite
def streams(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 60))
    events: list[dict[str, Any]] = []
    clock = 1_790_000_000_000.0
    for i in range(n):
        event: dict[str, Any] = {"event_id": f"e{i}"}
        for name, strategy in (("account_id", keys), ("terminal_id", keys), ("merchant_category", labels),
                               ("country", labels), ("amount", amounts), ("value", amounts)):
            value = draw(strategy)
            if value != "missing":
                event[name] = value
        when = draw(times)
        if isinstance(when, float) and math.isfinite(when):
            clock = max(clock + when, clock)  # the stream's clock moves on; late events reach back from it
            event["timestamp"] = clock + min(when, 0.0)
        elif when == "rfc":
            event["timestamp"] = "2026-09-22T10:00:00Z"
        elif when is not None:
            event["timestamp"] = when
        events.append(event)
    return events


def _same(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every NaN as one marker, so that two lists of enriched events compare equal
    where both hold NaN (an event without an amount: its ratio and z-score are missing)."""
    return [{k: "NaN" if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]


def _same_records(value: Any) -> Any:
    """``value`` (records: nested dicts and lists of floats) with every NaN as one marker (the sums
    of an entity with events but no amount yet are NaN)."""
    if isinstance(value, dict):
        return {k: _same_records(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_same_records(v) for v in value]
    return "NaN" if isinstance(value, float) and value != value else value


@CHECK
@given(streams(), st.sampled_from(SPECS), st.integers(1, 25))
def test_offline_enrichment_equals_the_reference(events: list[dict[str, Any]], spec: EntitySpec, chunk: int) -> None:
    expected = _same(reference_enrich_history(spec, events, chunk=chunk))
    assert _same(enrich_history(spec, events, chunk=chunk)) == expected  # array state, whole run
    store, reference_store = InMemoryState(), InMemoryState()
    assert _same(enrich_history(spec, events, chunk=chunk, store=store)) == expected  # records, chunk by chunk
    reference_enrich_history(spec, events, chunk=chunk, store=reference_store)
    assert _same_records(store.records) == _same_records(reference_store.records)  # state, undo, offsets alike


Delivery = list[list[tuple[dict[str, Any], tuple[int, int]]]]


@st.composite
def deliveries(draw: Any) -> Delivery:
    """A stream over two partitions, delivered in batches (events with their positions) with
    retries of the last batch (maybe shorter) and stale redeliveries of older batches."""
    events = draw(streams())
    next_offset = [0, 0]
    positioned = []
    for event in events:
        part = draw(st.integers(0, 1))
        positioned.append((event, (part, next_offset[part])))
        next_offset[part] += 1
    batches: Delivery = []
    start = 0
    while start < len(positioned):
        size = draw(st.integers(1, 12))
        batches.append(positioned[start:start + size])
        start += size
        if draw(st.integers(0, 3)) == 0:
            batches.append(batches[-1][:draw(st.integers(1, len(batches[-1])))])
        if len(batches) > 2 and draw(st.integers(0, 7)) == 0:
            batches.append(batches[draw(st.integers(0, len(batches) - 2))])
    return batches


@CHECK
@given(deliveries(), st.sampled_from(SPECS))
def test_batches_with_retries_equal_the_reference(batches: Delivery, spec: EntitySpec) -> None:
    fast_store, reference_store = InMemoryState(), InMemoryState()
    fast, reference = Enricher(fast_store), ReferenceEnricher(reference_store)
    for batch in batches:
        events, positions = [e for e, _ in batch], [p for _, p in batch]
        assert _same(fast.enrich(spec, events, positions)) == _same(reference.enrich(spec, events, positions))
        assert _same_records(fast_store.records) == _same_records(reference_store.records)


def test_boundaries_equal_the_reference() -> None:
    """Exactly at the horizon, at the longest window and at equal times (eviction tie-break)."""
    spec = SPECS[0]
    t0 = 1_790_000_000_000.0
    rows = [(0.0, "x"), (0.0, "y"), (0.0, "z"), (float(spec.horizon_ms), "x"), (float(spec.horizon_ms), "w"),
            (spec.horizon_ms + spec.longest_ms, "w"), (spec.horizon_ms + spec.longest_ms - 1.0, "v")]
    events = [{"event_id": f"e{i}", "account_id": "a", "terminal_id": "t", "timestamp": t0 + dt,
               "merchant_category": cat, "amount": 5.0 + i} for i, (dt, cat) in enumerate(rows)]
    got = enrich_history(spec, events)
    assert _same(got) == _same(reference_enrich_history(spec, events))
    assert got[3]["account_id__count_1h"] == 0.0 and got[3]["account_id__seconds_since_last"] == 3600.0
    assert got[5]["account_id__new_merchant_category"] == 1.0  # last used exactly one longest window ago


def test_the_kernel_is_compiled_before_the_first_batch() -> None:
    """``Enricher()`` compiles (or loads) the kernel for exactly the dtypes batches use, so no batch
    pays a compile: enriching adds no new specialisation."""
    from stream_detector.entity import block, kernel, records

    enricher = Enricher(InMemoryState())
    compiled = list(kernel.run.signatures)
    assert len(compiled) == 1
    # the record kernels too: numba compiles one specialisation per writability of an array, and the
    # enricher's buffers are read-only (np.frombuffer of bytes); a warm-up with writable ones left
    # the first batch of a fresh machine compiling (found 2026-12-05)
    others = (block._read_cores, block._write_cores, records._parse, records._fill)
    warmed = [set(f.signatures) for f in others]
    events = [{"event_id": f"e{i}", "account_id": f"a{i % 2}", "terminal_id": "t", "timestamp": 1.0 + i,
               "amount": 2.0, "merchant_category": "x", "country": "y"} for i in range(3)]
    for spec in SPECS:
        enricher.enrich(spec, events[:1], [(0, 0)])
        enricher.enrich(spec, events[1:], [(0, 1), (0, 2)])  # records read back: the read-only path
        enrich_history(spec, events)
    assert list(kernel.run.signatures) == compiled
    assert [set(f.signatures) for f in others] == warmed


def test_the_kernel_compiles_without_a_writable_cache() -> None:
    """A function numba cannot cache (no source file here: as with a read-only install) still compiles."""
    from stream_detector.compiled import jit

    scope: dict[str, Any] = {}
    exec("def twice(x):\n    return 2 * x\n", scope)  # no source file: numba has no cache locator for it
    assert jit(scope["twice"])(21) == 42


@CHECK
@given(st.one_of(st.lists(st.one_of(st.text(max_size=2), st.integers(-3, 3)), max_size=40),
                 st.lists(keys, max_size=40)),
       st.lists(st.booleans(), min_size=40, max_size=40) | st.none())
def test_entity_codes_equal_entity_value_per_event(values: list[Any], keyed: list[bool] | None) -> None:
    """The batch grouping (dict and ``map`` for str/int batches, per event otherwise) names each
    event's entity exactly as ``entity_value`` does, each entity once, unkeyed rows as -1."""
    events = [{} if v == "missing" else {"account_id": v} for v in values]
    mask = None if keyed is None else keyed[:len(events)]
    names, codes = entity_codes(events, "account_id", mask)
    assert codes.dtype == np.int64 and codes.shape == (len(events),)
    assert len(set(names)) == len(names) and set(codes[codes >= 0].tolist()) == set(range(len(names)))
    for row, event in enumerate(events):
        want = entity_value(event.get("account_id")) if mask is None or mask[row] else None
        assert (names[codes[row]] if codes[row] >= 0 else None) == want


finite_or_not = st.one_of(st.floats(), st.integers(-2**70, 2**70), st.just(10**400), st.just(-(10**400)))


@CHECK
@given(st.lists(finite_or_not, max_size=30), st.lists(st.one_of(finite_or_not, st.none(), st.just("12"),
                                                                 st.booleans()), max_size=30))
def test_batch_numbers_equal_the_per_event_rules(numeric: list[Any], mixed: list[Any]) -> None:
    """``Columns``' batch conversion of timestamps and amounts (one ``fromiter`` when every value
    is an int or a float) gives exactly the per-event rules' floats, NaN where they give NaN."""
    for raw in (numeric, mixed):
        for one, bad in ((timestamp_value, math.nan), (amount_value, math.nan)):
            want = np.array([one(v) for v in raw], dtype=np.float64)
            assert np.array_equal(numbers(list(raw), one, bad), want, equal_nan=True)


@CHECK
@given(deliveries(), st.sampled_from(SPECS))
def test_compiled_records_equal_the_per_entity_path_byte_for_byte(batches: Delivery, spec: EntitySpec) -> None:
    """``entity/records.py`` (parse, decide and assemble every normal entity of a batch in one
    call) writes exactly the bytes the per-entity path (``plan_bytes`` + ``binary.assemble``,
    forced here for every entity) writes: same pairs in the same order, cores and undo sections."""
    compiled, per_entity = InMemoryState(), InMemoryState()
    fast, slow = Enricher(compiled), Enricher(per_entity)
    original = records.normal

    def nothing_normal(parsed: records.Parsed, spans: records.Spans) -> records.Plan:
        plan = original(parsed, spans)
        plan.normal[:] = False
        keep = np.zeros(plan.pair_entity.size, dtype=np.bool_)
        return records.Plan(plan.normal, plan.pair_entity[keep], plan.pair_partition[keep], plan.pair_offset[keep])

    for batch in batches:
        events, positions = [e for e, _ in batch], [p for _, p in batch]
        got = fast.enrich(spec, events, positions)
        records.normal = nothing_normal
        try:
            want = slow.enrich(spec, events, positions)
        finally:
            records.normal = original
        assert _same(got) == _same(want)
        assert compiled.raw == per_entity.raw


@pytest.mark.parametrize("absent", [{"amount": None}, {}, {"amount": "n/a"}, {"amount": True}], ids=["null", "absent",
                                                                                                     "text", "bool"])
def test_an_event_without_an_amount_counts_at_the_mean_and_leaves_it(absent: dict[str, Any]) -> None:
    """A new-user trial left ``amount`` out of one event in 20: it counted as a payment of 0, and
    the lowered means of its card and terminal sent 640 unchanged later events over the threshold.
    Now it counts (``count`` grows), at the entity's mean in each window, so the means after it
    are the means before it; its own ratio and z-score are missing (NaN: the feature step imputes
    them); without amount history it is not counted. The kernel, the records path and the
    reference agree."""
    spec = SPECS[0]
    t0 = 1_790_000_000_000.0
    events = [{"event_id": f"e{i}", "account_id": "a", "terminal_id": "t", "timestamp": t0 + 1000.0 * i,
               "amount": amount} for i, amount in enumerate([10.0, 20.0, 0.0, 30.0])]
    events[2] = {k: v for k, v in events[2].items() if k != "amount"} | absent
    got = enrich_history(spec, events)
    assert _same(got) == _same(reference_enrich_history(spec, events))
    assert _same(enrich_history(spec, events, store=InMemoryState())) == _same(got)
    for w in ("1m", "1h"):
        assert math.isnan(got[2][f"account_id__amount_ratio_{w}"]) and math.isnan(got[2][f"account_id__amount_z_{w}"])
        assert got[3][f"account_id__count_{w}"] > got[2][f"account_id__count_{w}"]  # it counted
        assert got[3][f"account_id__mean_{w}"] == pytest.approx(got[2][f"account_id__mean_{w}"], rel=1e-12)
    zero = enrich_history(spec, [dict(e, amount=0.0) if i == 2 else e for i, e in enumerate(events)])
    assert zero[3]["account_id__mean_1h"] < got[3]["account_id__mean_1h"] - 1.0  # what a payment of 0 did
    # without amount history there is no amount to count it at: not counted (the stated blind spot:
    # a burst of events without amounts is not seen by count); the next event with an amount sees
    # no history, not a mean of 0 (whose z-score was amount / 0.01)
    burst = [{k: v for k, v in events[0].items() if k != "amount"} | {"event_id": f"b{i}", "timestamp": t0 + 1000.0 * i}
             for i in range(6)] + [dict(events[0], event_id="b6", timestamp=t0 + 6000.0, amount=10.0),
                                   dict(events[0], event_id="b7", timestamp=t0 + 7000.0, amount=20.0)]
    got = enrich_history(spec, burst)
    assert _same(got) == _same(reference_enrich_history(spec, burst))
    assert _same(enrich_history(spec, burst, store=InMemoryState())) == _same(got)
    assert [row["account_id__count_1h"] for row in got[:7]] == [0.0] * 7
    assert got[6]["account_id__amount_z_1h"] == 0.0 and got[6]["account_id__amount_ratio_1h"] == 1.0
    assert got[7]["account_id__mean_1h"] == pytest.approx(10.0, rel=1e-12)


def test_an_empty_distinct_value_is_missing_as_null() -> None:
    """A second trial: ``merchant_category: ""`` counted as a value of its own in the history (a
    "new" category, one more distinct) while null was skipped; empty is missing, as everywhere
    else. The kernel (a batch of strings only, and a mixed one), the records path and the
    reference agree."""
    spec = SPECS[0]
    t0 = 1_790_000_000_000.0
    base = [{"event_id": f"e{i}", "account_id": "a", "terminal_id": "t", "timestamp": t0 + 1000.0 * i,
             "amount": 5.0, "merchant_category": "grocery", "country": "NL"} for i in range(8)]
    fields = [f for f in spec.output_fields if "merchant_category" in f]
    for missing in ("", None):
        events = [dict(e, merchant_category=missing) if i in (3, 5) else e for i, e in enumerate(base)]
        got = enrich_history(spec, events)
        assert _same(got) == _same(reference_enrich_history(spec, events))
        assert _same(enrich_history(spec, events, store=InMemoryState())) == _same(got)
        assert [[row[f] for f in fields] for row in got] == \
            [[row[f] for f in fields] for row in enrich_history(spec, [dict(e, merchant_category=None) if i in (3, 5)
                                                                       else e for i, e in enumerate(base)])]
        assert got[3]["account_id__new_merchant_category"] == 0.0
        assert got[4]["account_id__distinct_merchant_category_1h"] == 1.0
