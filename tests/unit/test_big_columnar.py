"""The columnar typing of ``train --streamed`` (big/columnar.py) equals the row-wise reference.

Generated tables — CSV-like text cells and Parquet-like typed columns, with the awkward values a
real export has (spaces, grouped and decimal-comma numbers, Unicode digits, overflow, NaN, empty ids,
implausible and RFC 3339 times, booleans as text, nested values, ``schema_version``) — go through
``derive_table`` and through the reference (``prepare_chunk`` → ``type_events`` → ``derive_events``);
every derived value and every rejection (row, reason, message) must be equal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.big import columnar
from stream_detector.big.columnar import Derived, Layout, derive_table
from stream_detector.big.source import RawChunk
from stream_detector.entity_spec import EntitySpec
from stream_detector.errors import InputError
from stream_detector.fieldschema import JSON_TEXT, FieldRule, FieldSchema, FieldType, TextFormat

T0 = 1_700_000_000_000
SCHEMA = FieldSchema((
    FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("account_id", FieldType.IDENTIFIER),
    FieldRule("terminal_id", FieldType.IDENTIFIER), FieldRule("timestamp", FieldType.TIMESTAMP),
    FieldRule("settled", FieldType.TIMESTAMP, unit="s"), FieldRule("amount", FieldType.NUMBER),
    FieldRule("channel", FieldType.CATEGORY), FieldRule("card_present", FieldType.BOOLEAN),
    FieldRule("note", FieldType.IGNORED)), time_range_ms=(T0 - 86_400_000, T0 + 86_400_000), plausible_years=1.0)
ENTITY = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600,), distinct_fields=("channel",))
LAYOUT = Layout(["amount", "card_present"], ["channel"], ENTITY, ["timestamp", "settled"])



def _mix(clean: list[Any], odd: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly clean values (the columnar path), some odd ones (the reference's verdicts)."""
    return st.sampled_from(clean * 6 + odd)


TEXT_NUMBERS = _mix(["12.5", "1,234.5", "-0.5", "0", "1", "1e3", ".5", "5."],
                    ["1.234,5", " 3", "7 ", "abc", "", "1e400", "١٢", "+4", "12,5", "1,23", "NaN", "inf"])
TEXT_TIMES = _mix([str(T0), str(T0 + 1234), f"{T0}.5", "2023-11-14T22:13:20Z", "2023-11-14 22:13:20"],
                  [str(T0 // 1000), "2023-11-14T23:13:20+01:00", "yesterday", "", " " + str(T0), "1", str(T0 * 1000),
                   "1,700,000,000,000"])
TEXT_BOOLS = _mix(["true", "false", "TRUE", "0", "1"], [" 1", "yes", "", "1.0"])


def _cell(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, strategy, strategy, st.none())


def _labels(strategy: st.SearchStrategy[Any], draw: st.DrawFn) -> st.SearchStrategy[Any]:
    """Label cells: a whole column of labels in most tables (both paths derive it), some missing
    in a few (both refuse the chunk alike)."""
    return _cell(strategy) if draw(st.integers(0, 4)) == 0 else strategy


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[pa.Table, TextFormat]:
    n = draw(st.integers(1, 30))
    ids = st.one_of(st.sampled_from(["", "x" * 513]), st.text("abc", min_size=1, max_size=3))
    table = pa.table({
        "event_id": draw(st.lists(_cell(ids), min_size=n, max_size=n)),
        "account_id": draw(st.lists(_cell(st.sampled_from(["a", "b", "", "7"])), min_size=n, max_size=n)),
        "terminal_id": draw(st.lists(_cell(st.sampled_from(["t1", "t2", ""])), min_size=n, max_size=n)),
        "timestamp": draw(st.lists(_cell(TEXT_TIMES), min_size=n, max_size=n)),
        "settled": draw(st.lists(_cell(TEXT_TIMES), min_size=n, max_size=n)),
        "amount": draw(st.lists(_cell(TEXT_NUMBERS), min_size=n, max_size=n)),
        "channel": draw(st.lists(_cell(st.sampled_from(["pos", "web", ""])), min_size=n, max_size=n)),
        "card_present": draw(st.lists(_cell(TEXT_BOOLS), min_size=n, max_size=n)),
        "note": draw(st.lists(_cell(st.sampled_from(["x", "1"])), min_size=n, max_size=n)),
        "label": draw(st.lists(_labels(st.sampled_from(["legit", "fraud", "1", "1.0", " 0 "]), draw), min_size=n,
                               max_size=n)),
        **({"schema_version": draw(st.lists(_cell(st.just("1")), min_size=n, max_size=n))}
           if draw(st.booleans()) else {}),
    }, schema=None)
    text = draw(st.sampled_from([TextFormat(".", ","), TextFormat(",", "."), TextFormat(".", None)]))
    return table, text


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(1, 30))
    clean = st.sampled_from([0.0, 1.0, 12.5, -3.25])
    floats = st.one_of(clean, clean, clean, st.floats(allow_nan=True, allow_infinity=True, width=64))
    times = st.one_of(st.sampled_from([T0, T0 // 1000, T0 * 1000, 5, T0 + 3 * 365 * 86_400_000]),
                      st.integers(T0 - 10**9, T0 + 10**9))
    columns: dict[str, Any] = {
        "event_id": pa.array(draw(st.lists(_cell(st.sampled_from(["e1", "e2", "", "x" * 600])), min_size=n,
                                           max_size=n)), pa.string())
        if draw(st.booleans()) else pa.array(draw(st.lists(_cell(st.integers(0, 10**6)), min_size=n, max_size=n)),
                                             pa.int64()),
        "account_id": pa.array(draw(st.lists(_cell(st.integers(-3, 3)), min_size=n, max_size=n)), pa.int64())
        if draw(st.booleans()) else pa.array(draw(st.lists(_cell(floats), min_size=n, max_size=n)), pa.float64()),
        "terminal_id": pa.array(draw(st.lists(_cell(st.sampled_from([1.0, 2.5, 2.0**60, 7.0])), min_size=n,
                                              max_size=n)), pa.float64()),
        "timestamp": pa.array(draw(st.lists(_cell(times), min_size=n, max_size=n)), pa.int64())
        if draw(st.booleans()) else pa.array(draw(st.lists(_cell(floats), min_size=n, max_size=n)), pa.float64()),
        "settled": pa.array(draw(st.lists(_cell(st.sampled_from([T0 // 1000, T0, 1.5e9])), min_size=n, max_size=n)),
                            pa.float64()),
        "amount": pa.array(draw(st.lists(_cell(floats), min_size=n, max_size=n)), pa.float64())
        if draw(st.booleans()) else pa.array(draw(st.lists(_cell(st.integers(-5, 5)), min_size=n, max_size=n)),
                                             pa.int64()),
        "channel": pa.array(draw(st.lists(_cell(st.sampled_from([True, False])), min_size=n, max_size=n)), pa.bool_())
        if draw(st.booleans()) else pa.array(draw(st.lists(_cell(floats), min_size=n, max_size=n)), pa.float64()),
        "card_present": pa.array(draw(st.lists(_cell(st.integers(0, 2)), min_size=n, max_size=n)), pa.int64())
        if draw(st.booleans()) else pa.array(draw(st.lists(_cell(st.booleans()), min_size=n, max_size=n)), pa.bool_()),
        "label": pa.array(draw(st.lists(_labels(st.integers(0, 1), draw), min_size=n, max_size=n)), pa.int64()),
    }
    if draw(st.booleans()):
        columns["tags"] = pa.array(draw(st.lists(_cell(st.lists(st.integers(0, 3), max_size=2)), min_size=n,
                                                 max_size=n)), pa.list_(pa.int64()))
    return pa.table(columns)


def _chunk(table: pa.Table, text: TextFormat, kind: str, gaps: list[int]) -> RawChunk:
    """Rows of ``table`` at chunk positions with ``gaps`` (ragged rows: rejections, not table rows)."""
    from stream_detector.events_io import RowRejection
    from stream_detector.schema import RejectReason

    n = table.num_rows + len(gaps)
    present = np.asarray([i for i in range(n) if i not in set(gaps)], dtype=np.int64)
    rejected = [RowRejection(100 + g, RejectReason.WRONG_TYPE, "ragged") for g in gaps]
    return RawChunk(Path("part-1.csv"), 100, 40, n, rejected, text, kind, table, present, stem="part-1")


def _equal(a: Derived, b: Derived) -> None:
    np.testing.assert_array_equal(a.rows, b.rows)
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None and b.labels is not None:
        assert a.labels.to_pylist() == b.labels.to_pylist()
    for k in a.numeric:
        np.testing.assert_array_equal(a.numeric[k], b.numeric[k], err_msg=k)
    for k in a.times:
        np.testing.assert_array_equal(a.times[k], b.times[k], err_msg=k)
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.amount, b.amount)
    for group in ("categorical", "entity", "distinct"):
        x, y = getattr(a, group), getattr(b, group)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].to_pylist() == y[k].to_pylist(), (group, k)
    assert [(r.index, r.reason, r.message) for r in a.rejected] == [(r.index, r.reason, r.message) for r in b.rejected]
    assert a.total == b.total


def _both(chunk: RawChunk, generate: bool, label: str | None) -> tuple[Derived | str, Derived | str]:
    """Both paths' results, or the message of the InputError each raised (rows without a label)."""
    def run(path: Callable[[], Derived]) -> Derived | str:
        try:
            return path()
        except InputError as exc:
            return str(exc)

    fast = run(lambda: derive_table(chunk, SCHEMA, LAYOUT, id_column=None, label_column=label,
                                    generate_ids=generate))
    ref = run(lambda: columnar._reference(chunk, np.arange(chunk.n)[np.isin(np.arange(chunk.n), chunk.present)],
                                          SCHEMA, LAYOUT, id_column=None, label_column=label, generate_ids=generate,
                                          with_rejected=True))
    return fast, ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_tables(), st.booleans(), st.lists(st.integers(0, 5), max_size=2, unique=True))
def test_csv_chunks_equal_the_reference(data: tuple[pa.Table, TextFormat], generate: bool, gaps: list[int]) -> None:
    table, text = data
    gaps = [g for g in gaps if g < table.num_rows]
    fast, ref = _both(_chunk(table, text, "csv", gaps), generate, "label")
    _equal_or_refused(fast, ref)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parquet_tables(), st.booleans())
def test_parquet_chunks_equal_the_reference(table: pa.Table, generate: bool) -> None:
    fast, ref = _both(_chunk(table, JSON_TEXT, "parquet", []), generate, "label")
    _equal_or_refused(fast, ref)


def _equal_or_refused(fast: Derived | str, ref: Derived | str) -> None:
    """The same Derived, or both refused with the same message (rows without a label)."""
    if isinstance(fast, str) or isinstance(ref, str):
        assert fast == ref
        assert "have no label in column 'label'" in fast  # type: ignore[operator]
        return
    _equal(fast, ref)


def test_clean_rows_take_the_columnar_path_and_odd_ones_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference runs only on the rows the columns cannot prove (here the one bad amount)."""
    n = 1000
    table = pa.table({"event_id": [f"e{i}" for i in range(n)], "account_id": ["a", "b"] * (n // 2),
                      "terminal_id": ["t"] * n, "timestamp": [str(T0 + i) for i in range(n)],
                      "settled": [None] * n, "amount": ["12.5"] * (n - 1) + ["twelve"],
                      "channel": ["pos"] * n, "card_present": ["true"] * n, "label": ["legit"] * n})
    seen: list[int] = []
    real = columnar._reference

    def spy(chunk: RawChunk, positions: np.ndarray, *args: Any, **kwargs: Any) -> Derived:
        seen.append(len(positions))
        return real(chunk, positions, *args, **kwargs)

    monkeypatch.setattr(columnar, "_reference", spy)
    got = derive_table(_chunk(table, TextFormat(".", ","), "csv", []), SCHEMA, LAYOUT, id_column=None,
                       label_column="label", generate_ids=False)
    assert seen == [1]
    assert len(got) == n - 1 and [r.index for r in got.rejected] == [100 + n - 1]
    assert got.rejected[0].message == "field 'amount' must be a number, got text of 6 characters"


def test_a_chunk_without_the_label_column_is_an_error() -> None:
    table = pa.table({"event_id": ["a"], "amount": ["1"]})
    with pytest.raises(InputError, match=r"at least 1 row\(s\) have no label in column 'label' \(data rows 41\)"):
        derive_table(_chunk(table, JSON_TEXT, "parquet", []), SCHEMA, LAYOUT, id_column=None,
                     label_column="label", generate_ids=False)


@pytest.mark.parametrize("kind", [pa.list_(pa.int64()), pa.struct([("a", pa.int64())]), pa.map_(pa.string(), pa.int64())])
def test_a_nested_column_typed_by_the_schema_is_each_rows_rejection(kind: pa.DataType) -> None:
    """Inference types a mostly-null nested column as a category: its values are rejections, not a crash."""
    values = {"list": [[1, 2]], "struct": [{"a": 1}], "map": [[("k", 1)]]}[str(kind).split("<")[0]]
    table = pa.table({"event_id": ["a", "b", "c"], "amount": [1.0, 2.0, 3.0],
                      "channel": pa.array([None, values[0], None], kind)})
    chunk = _chunk(table, JSON_TEXT, "parquet", [])
    fast, ref = _both(chunk, False, None)
    _equal(fast, ref)
    assert [(r.index, r.reason.value) for r in fast.rejected] == [(101, "wrong_type")]


def test_minus_zero_in_a_boolean_field_is_false_as_in_the_reference() -> None:
    table = pa.table({"event_id": ["a", "b", "c"], "card_present": pa.array([-0.0, 1.0, 0.0], pa.float64())})
    fast, ref = _both(_chunk(table, JSON_TEXT, "parquet", []), False, None)
    _equal(fast, ref)
    assert str(fast.numeric["card_present"].tolist()) == "[0.0, 1.0, 0.0]"  # no -0.0
