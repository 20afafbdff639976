"""The field schema (``fieldschema.py``): inference rules, conversion rules, and the parity suite —
the same events written as CSV (with and without a byte-order mark, ``,`` and ``;`` with decimal
commas, any boolean spelling, thousands groups, RFC 3339 or epoch times), JSON Lines and Kafka
record values give one schema, one feature matrix and the same scores."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.errors import InputError
from stream_detector.features import fit_spec
from stream_detector.fieldschema import (
    COUNTER_MIN_ROWS,
    EPOCH_MIN_ROWS,
    JSON_TEXT,
    FieldRule,
    FieldSchema,
    FieldType,
    InferenceOptions,
    TextFormat,
    epoch_to_ms,
    infer_schema,
    parse_overrides,
)
from stream_detector.inputs import load_events
from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.pipeline.decode import decode_batch
from stream_detector.schema import RejectReason
from stream_detector.simulate import Simulator

T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z, epoch ms


def _types(schema: FieldSchema) -> dict[str, str]:
    return {rule.name: rule.type.value for rule in schema.fields}


# ---- inference --------------------------------------------------------------------------------------


def test_inference_rules_in_order() -> None:
    rows = [{"event_id": f"e{i}", "account_id": i, "timestamp": T0 + i, "schema_version": 1,
             "amount": f"{i}.5", "flag": ["True", "false"][i % 2], "flag_json": i % 2 == 0,
             "terminal_id": f"t{i % 3}", "code": f"{i:05d}", "card": str(4_000_000_000_000_000 + i),
             "country": ["US", "GB"][i % 2], "note": f"free text {i}", "seen_at": "2026-11-18T11:06:40.010Z",
             "empty": None, "label": "legit"} for i in range(60)]
    inferred = infer_schema(rows, InferenceOptions(ignored=frozenset({"label"})))
    assert _types(inferred.schema) == {
        "event_id": "identifier", "account_id": "identifier", "timestamp": "timestamp",
        "schema_version": "ignored", "amount": "number", "flag": "boolean", "flag_json": "boolean",
        "terminal_id": "identifier", "code": "identifier", "card": "identifier", "country": "category",
        "note": "identifier", "seen_at": "timestamp", "empty": "ignored", "label": "ignored"}
    assert inferred.schema.time_range_ms == (T0, T0 + 59)
    assert [r.name for r in inferred.schema.feature_fields] == ["amount", "flag", "flag_json", "country"]
    assert not inferred.warnings


def test_a_mostly_numeric_field_is_a_number_and_the_rest_is_reported() -> None:
    rows = [{"amount": str(i)} for i in range(99)] + [{"amount": "n/a"}]
    inferred = infer_schema(rows)
    assert inferred.schema["amount"].type is FieldType.NUMBER
    assert len(inferred.warnings) == 1 and "'n/a'" in inferred.warnings[0] and "1 of 100" in inferred.warnings[0]
    # the same words for train, score and produce (produce once said "left out of training")
    assert "rejected as a worker rejects such an event: not trained on, not scored, not produced" in inferred.warnings[0]
    typed, problems = inferred.schema.convert(rows, JSON_TEXT)
    assert list(problems) == [99] and problems[99].reason is RejectReason.WRONG_TYPE
    assert typed[5]["amount"] == 5.0


def test_a_mostly_boolean_field_is_a_boolean_and_the_rest_is_reported() -> None:
    """One 'maybe' among 3,000 true/false made the column text and `produce` sent every row's
    flag as "true" (a string), with no warning (a new-user trial). Rule 5's share, for booleans;
    below it the column stays text (category), as before."""
    rows = [{"flag": ("true", "false", "1")[i % 3]} for i in range(99)] + [{"flag": "maybe"}]
    inferred = infer_schema(rows)
    assert inferred.schema["flag"].type is FieldType.BOOLEAN
    assert len(inferred.warnings) == 1 and "'maybe'" in inferred.warnings[0] and "1 of 100" in inferred.warnings[0]
    typed, problems = inferred.schema.convert(rows, JSON_TEXT)
    assert list(problems) == [99] and problems[99].reason is RejectReason.WRONG_TYPE
    assert typed[0]["flag"] is True and typed[1]["flag"] is False and typed[2]["flag"] is True
    few = [{"flag": "true"}, {"flag": "false"}, {"flag": "maybe"}]  # a third is not true/false: text
    assert infer_schema(few).schema["flag"].type is FieldType.CATEGORY


def test_nested_values_do_not_vote_on_a_fields_type() -> None:
    """A JSON Lines row with a nested amount is rejected whatever the type; it turned the other
    rows' JSON numbers into text ("12.5") on the input topic (a new-user trial)."""
    rows: list[dict[str, Any]] = [{"amount": 12.5}, {"amount": {"v": 1}}, {"amount": 3}, {"amount": [1]}]
    inferred = infer_schema(rows)
    assert inferred.schema["amount"].type is FieldType.NUMBER and not inferred.warnings
    typed, problems = inferred.schema.convert(rows, JSON_TEXT)
    assert typed[0]["amount"] == 12.5 and sorted(problems) == [1, 3]


def test_overrides_win_and_bad_ones_are_named() -> None:
    rows = [{"zip": "01234", "ts": 1_795_000_000} for _ in range(5)]
    schema = infer_schema(rows, InferenceOptions(overrides=parse_overrides(["zip=category", "ts=timestamp:s"]))).schema
    assert schema["zip"].type is FieldType.CATEGORY and schema["ts"].unit == "s"
    with pytest.raises(ValueError, match="type must be one of"):
        parse_overrides(["zip=text"])
    with pytest.raises(ValueError, match="unit"):
        parse_overrides(["ts=timestamp:days"])


# ---- conversion -------------------------------------------------------------------------------------


def _schema(*rules: tuple[str, FieldType], time_range: tuple[float, float] | None = (T0, T0 + 1)) -> FieldSchema:
    return FieldSchema(tuple(FieldRule(n, t) for n, t in rules), time_range)


@pytest.mark.parametrize(("kind", "value", "expected"), [
    (FieldType.NUMBER, 12, 12), (FieldType.NUMBER, "12.5", 12.5), (FieldType.NUMBER, " 1,234.56 ", 1234.56),
    (FieldType.NUMBER, "-.5", -0.5), (FieldType.NUMBER, "1e3", 1000.0),
    (FieldType.BOOLEAN, True, True), (FieldType.BOOLEAN, "TRUE", True), (FieldType.BOOLEAN, 0, False),
    (FieldType.BOOLEAN, "1", True), (FieldType.CATEGORY, 5, "5"), (FieldType.CATEGORY, False, "false"),
    (FieldType.CATEGORY, 2.5, "2.5"), (FieldType.IDENTIFIER, 7_340_000_000_000_000_001, "7340000000000000001"),
    (FieldType.IDENTIFIER, "007", "007"), (FieldType.TIMESTAMP, T0 // 1000, float(T0)),
    (FieldType.TIMESTAMP, T0, T0), (FieldType.TIMESTAMP, T0 * 1000, float(T0)),  # ms already: untouched
    (FieldType.TIMESTAMP, str(T0), float(T0)), (FieldType.TIMESTAMP, "2026-11-18T11:06:40Z", float(T0)),
    (FieldType.TIMESTAMP, "2026-11-18T11:06:40", float(T0)), (FieldType.TIMESTAMP, "2026-11-18T12:06:40+01:00", float(T0)),
])
def test_values_convert_by_their_field_type(kind: FieldType, value: Any, expected: Any) -> None:
    typed, problems = _schema(("f", kind)).convert([{"f": value}])
    assert not problems and typed[0]["f"] == expected and type(typed[0]["f"]) is type(expected)


@pytest.mark.parametrize(("kind", "value", "reason"), [
    (FieldType.NUMBER, True, RejectReason.WRONG_TYPE), (FieldType.NUMBER, "1,5", RejectReason.WRONG_TYPE),
    (FieldType.NUMBER, "12abc", RejectReason.WRONG_TYPE), (FieldType.NUMBER, "", RejectReason.WRONG_TYPE),
    (FieldType.NUMBER, "1e400", RejectReason.NON_FINITE_NUMBER), (FieldType.BOOLEAN, 2, RejectReason.WRONG_TYPE),
    (FieldType.BOOLEAN, "yes", RejectReason.WRONG_TYPE), (FieldType.IDENTIFIER, 1.5, RejectReason.WRONG_TYPE),
    (FieldType.IDENTIFIER, True, RejectReason.WRONG_TYPE), (FieldType.TIMESTAMP, "soon", RejectReason.INVALID_TIMESTAMP),
    (FieldType.TIMESTAMP, True, RejectReason.INVALID_TIMESTAMP),
    (FieldType.TIMESTAMP, 86_400_000, RejectReason.IMPLAUSIBLE_TIMESTAMP),  # 1970 read as seconds... is 1972
    (FieldType.TIMESTAMP, "1970-01-02T00:00:00Z", RejectReason.IMPLAUSIBLE_TIMESTAMP),
    (FieldType.TIMESTAMP, -6.2135596800001e16, RejectReason.IMPLAUSIBLE_TIMESTAMP),  # µs before year 1: no calendar date
])
def test_values_that_do_not_fit_are_rejected_with_a_reason(kind: FieldType, value: Any, reason: RejectReason) -> None:
    events = [{"f": value, "n": 1}, {"f": None, "n": 2}]  # n: an input field with a value (else no_features)
    typed, problems = _schema(("f", kind), ("n", FieldType.NUMBER)).convert(events)
    assert list(problems) == [0] and problems[0].reason is reason and str(problems[0])
    assert typed[0] is events[0] and typed[1] is events[1]  # a refused row is returned untouched


def test_a_fixed_unit_and_the_plausible_range() -> None:
    schema = FieldSchema((FieldRule("timestamp", FieldType.TIMESTAMP, unit="ms"),), (T0, T0))
    _, problems = schema.convert([{"timestamp": T0 // 1000}])  # seconds where ms are promised: 1970
    assert problems[0].reason is RejectReason.IMPLAUSIBLE_TIMESTAMP and "a time in 1970 (from a number)" in str(problems[0])
    year = datetime.fromtimestamp(T0 / 1000, timezone.utc).year  # a trial: the message gave neither range nor way out
    assert re.search(rf"of this model \({year - 10} to \d{{4}}: 10 years around its training rows' times; a model for "
                     "another period is trained on rows of it", str(problems[0]))  # the end: at most a day from now
    assert FieldSchema((FieldRule("t", FieldType.TIMESTAMP),)).plausible_ms[0] == 631_152_000_000.0
    assert epoch_to_ms(1.5e9, "auto") == 1.5e12 and epoch_to_ms(1.5e18, "auto") == 1.5e12


def test_an_event_time_more_than_a_day_ahead_of_the_clock_is_implausible(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the 10 years around training, one event three years ahead was scored and moved its
    account's history clock (the late-event rule then clamped every later event of the account).
    More than ``FUTURE_MS`` ahead of the machine's clock is ``implausible_timestamp`` on every input
    path, by number or RFC 3339 text, and the alignment's reader (built once per model load) applies
    the limit of the moment it reads, not of the moment it was built."""
    import time as clock

    from stream_detector.fieldschema import FUTURE_MS, EventTime

    now = clock.time() * 1000.0
    schema = FieldSchema((FieldRule("timestamp", FieldType.TIMESTAMP, unit="auto"),), (now - 86_400_000, now))
    assert schema.range_ms[1] > now + 9 * 365 * 86_400_000  # the training range alone would take years ahead
    ahead = [{"timestamp": int(now + 1000.3 * 86_400_000)}, {"timestamp": int(now + FUTURE_MS + 600_000)},
             {"timestamp": "2031-01-01T00:00:00Z"}, {"timestamp": int(now + 3_600_000)}, {"timestamp": int(now)}]
    typed, problems = schema.convert(ahead)
    assert sorted(problems) == [0, 1, 2]
    assert all(p.reason is RejectReason.IMPLAUSIBLE_TIMESTAMP for p in problems.values())
    assert "1,000.3 days ahead of this machine's clock (from a number)" in str(problems[0]), str(problems[0])
    assert "more than 1 day ahead is not plausible" in str(problems[1])
    assert typed[3]["timestamp"] == ahead[3]["timestamp"] and typed[4]["timestamp"] == ahead[4]["timestamp"]
    reader = EventTime.of(schema)
    values = [e["timestamp"] for e in ahead]
    assert np.isnan(reader.batch(values)[:3]).all() and not np.isnan(reader.batch(values)[3:]).any()
    later = clock.time() + 2 * 86_400  # the same reader two days on: yesterday's "ahead" is now
    monkeypatch.setattr(clock, "time", lambda: later)
    assert not np.isnan(reader(ahead[1]["timestamp"])) and not np.isnan(reader.batch(values)[1])
    assert schema.convert([ahead[1]])[1] == {}


def test_native_columns_are_not_copied() -> None:
    events = [{"a": 1.5, "b": True, "c": "x", "t": T0, "id": "u"}, {"a": None, "b": None, "c": "y", "t": None},
              {"a": 2.5, "b": None, "c": None, "t": None}]  # a null in every column; an input value in every row
    schema = _schema(("a", FieldType.NUMBER), ("b", FieldType.BOOLEAN), ("c", FieldType.CATEGORY),
                     ("t", FieldType.TIMESTAMP), ("id", FieldType.IDENTIFIER))
    typed, problems = schema.convert(events)
    assert not problems and all(t is e for t, e in zip(typed, events, strict=True))


def test_decimal_comma_text_format() -> None:
    text = TextFormat(",", ".")
    assert text.parse("1.234,5") == 1234.5 and text.parse("20,83") == 20.83 and text.parse("1.5") is None
    with pytest.raises(ValueError, match="thousands"):
        TextFormat(",", ",")


def test_schema_round_trips_through_json() -> None:
    schema = infer_schema([{"event_id": "a", "amount": 1, "ts": "2026-01-01T00:00:00Z"}]).schema
    again = FieldSchema.from_json(schema.to_json())
    assert again == schema and again.fingerprint == schema.fingerprint


# ---- parity: CSV, JSON Lines and Kafka give one event -------------------------------------------------

_CATEGORIES = ["alpha", "beta", "gamma", "delta"]
_TRUE = ["true", "True", "TRUE", "1"]
_FALSE = ["false", "False", "FALSE", "0"]

event_rows = st.lists(st.fixed_dictionaries({
    "account_id": st.sampled_from(["001", "002", "017", "4711"]),
    "timestamp": st.integers(T0 - 30 * 86_400_000, T0),  # in the past: more than a day ahead of the clock is implausible
    "amount": st.one_of(st.none(), st.floats(0.01, 250_000, allow_nan=False).map(lambda v: round(v, 2))),
    "count": st.one_of(st.none(), st.integers(0, 10_000)),
    "online": st.one_of(st.none(), st.booleans()),
    "merchant": st.one_of(st.none(), st.sampled_from(_CATEGORIES)),
}), min_size=8, max_size=40)


def _csv_text(rows: list[dict[str, Any]], delimiter: str, decimal: str, draw: st.DataObject,
              spelled: set[str] | None = None) -> str:
    """The rows as CSV text; ``spelled`` collects boolean columns with a true/false word in them
    (a column written only as 0/1 is rightly inferred as a number from the CSV alone)."""
    thousands = "." if decimal == "," else ","
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerow(["event_id", *rows[0]])
    for i, row in enumerate(rows):
        cells = [f"e{i}"]
        for name in rows[0]:
            value = row[name]
            if value is None:
                cells.append(draw.draw(st.sampled_from(["", "NA", "null"])))
            elif isinstance(value, bool):
                cells.append(draw.draw(st.sampled_from(_TRUE if value else _FALSE)))
                if spelled is not None and cells[-1] not in ("0", "1"):
                    spelled.add(name)
            elif name == "timestamp" and draw.draw(st.booleans()):
                cells.append(datetime.fromtimestamp(value / 1000, timezone.utc).isoformat(timespec="milliseconds"))
            elif isinstance(value, float):
                whole, frac = f"{value:.2f}".split(".")
                grouped = f"{int(whole):,}".replace(",", thousands) if draw.draw(st.booleans()) else whole
                cells.append(f"{grouped}{decimal}{frac}")
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buf.getvalue()


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=event_rows, dialect=st.sampled_from([(",", ".", ""), (",", ".", "\ufeff"), (";", ",", ""),
                                                 (";", ",", "\ufeff"), ("\t", ".", "")]),
       data=st.data())
def test_csv_json_lines_and_kafka_records_are_one_event(tmp_path: Path, rows: list[dict[str, Any]],
                                                       dialect: tuple[str, str, str], data: st.DataObject) -> None:
    delimiter, decimal, bom = dialect
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example (tmp_path is per test)
    csv_path, json_path = folder / "events.csv", folder / "events.jsonl"
    spelled: set[str] = set()
    csv_path.write_text(bom + _csv_text(rows, delimiter, decimal, data, spelled), encoding="utf-8")
    records = [orjson.dumps({"event_id": f"e{i}", **row}) for i, row in enumerate(rows)]
    json_path.write_bytes(b"\n".join(records) + b"\n")
    from_json = load_events(json_path)
    from_csv = load_events(csv_path, schema=from_json.schema)
    # a row whose feature fields are all null is no_features from every input alike, with one message
    # (a column null in every row is no field of the schema: then no row is, and none is rejected)
    inputs = from_json.schema.input_fields
    empty = [i for i, row in enumerate(rows) if inputs and all(row[n] is None for n in inputs)]
    assert [(r.index, r.reason, r.message) for r in from_csv.rejected] == \
        [(r.index, r.reason, r.message) for r in from_json.rejected]
    assert [r.index for r in from_json.rejected] == empty
    assert all(r.reason is RejectReason.NO_FEATURES for r in from_json.rejected)
    assert from_csv.events == from_json.events and from_csv.rows == from_json.rows
    inferred = {r.name: r.type for r in load_events(csv_path).schema.feature_fields}
    expected = {r.name: r.type for r in from_json.schema.feature_fields}
    expected.update({n: FieldType.NUMBER for n, t in expected.items() if t is FieldType.BOOLEAN and n not in spelled})
    assert inferred == expected  # the CSV alone infers the same types (0/1-only columns are numbers)
    from_kafka = decode_batch(records, 1 << 20, schema=from_json.schema)
    assert from_kafka.events == from_json.events and from_kafka.indices == from_json.rows
    assert [(r.index, r.reason, r.message) for r in from_kafka.rejected] == \
        [(r.index, r.reason, r.message) for r in from_json.rejected]
    if not from_json.events:  # every row empty: nothing to fit features on
        return
    spec = fit_spec(from_json.events, schema=from_json.schema, min_category_count=1)
    x_json, bad_json = spec.transform(from_json.events)
    x_csv, bad_csv = spec.transform(from_csv.events)
    assert not bad_json and not bad_csv and np.array_equal(x_json, x_csv)


@pytest.mark.parametrize(("delimiter", "decimal", "bom"), [(",", ".", ""), (",", ".", "\ufeff"), (";", ",", "")])
def test_the_same_events_score_the_same_from_every_input(tmp_path: Path, bundle: Bundle, delimiter: str,
                                                         decimal: str, bom: str) -> None:
    events, _ = Simulator(seed=31, accounts=40, run_id="parity").batch(300, 0.05, span_ms=86_400_000)
    records = [orjson.dumps(e) for e in events]
    (tmp_path / "e.jsonl").write_bytes(b"\n".join(records))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerow(list(events[0]))
    for e in events:
        writer.writerow([("True" if v else "False") if isinstance(v, bool) else
                         str(v).replace(".", decimal) if isinstance(v, float) else v for v in e.values()])
    (tmp_path / "e.csv").write_text(bom + buf.getvalue(), encoding="utf-8")
    assert bundle.schema is not None
    scores = {}
    for name in ("e.jsonl", "e.csv"):
        data = load_events(tmp_path / name, schema=bundle.schema)
        assert not data.rejected
        scores[name] = score_events(bundle, data.events).scores
    kafka = decode_batch(records, 1 << 20, schema=bundle.schema)
    x, _ = bundle.spec.transform(kafka.events)
    from stream_detector.pipeline.score import Scorer, scores_of

    scores["kafka"] = scores_of(Scorer(bundle).errors(x))
    assert np.array_equal(scores["e.jsonl"], scores["e.csv"]) and np.array_equal(scores["e.jsonl"], scores["kafka"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(spaces=st.lists(st.sampled_from(["", " ", "  ", "\t", "\n", "\r\n", " \t "]), min_size=4, max_size=4))
def test_a_repeated_key_is_caught_whatever_the_whitespace(spaces: list[str]) -> None:
    a, b, c, d = spaces
    raw = f'{{"event_id":"x",{a}"amount"{b}:{c}1.0,{d}"amount"{a}:{b}9800.0}}'.encode()
    decoded = decode_batch([raw], 10_000)
    assert [r.reason for r in decoded.rejected] == [RejectReason.DUPLICATE_KEY]
    fine = f'{{"event_id":"x",{a}"note"{b}:{c}"a \\": b",{d}"amount"{a}:{b}1}}'.encode()
    assert decode_batch([fine], 10_000).indices == [0]  # '": ' inside a string is no key


def test_quoted_newlines_compressed_files_and_parquet_are_the_same_events(tmp_path: Path) -> None:
    import bz2
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    text = ('event_id;amount;note;seen;when\r\n'
            'a;"1.234,50";"two\r\nlines; one cell";WAHR;2026-11-18T11:06:40Z\r\n'
            'b;7,25;plain;FALSCH;2026-11-18T11:06:41Z\r\n')
    (tmp_path / "x.csv").write_text(text, encoding="utf-8", newline="")
    (tmp_path / "x.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "x.csv.bz2").write_bytes(bz2.compress(text.encode()))
    plain = load_events(tmp_path / "x.csv", inference=InferenceOptions(
        overrides=parse_overrides(["seen=category"])))
    assert plain.raw.text.decimal == "," and plain.events[0]["amount"] == 1234.5
    assert plain.events[0]["note"] == "two\r\nlines; one cell" and plain.events[1]["when"] == T0 + 1000
    for name in ("x.csv.gz", "x.csv.bz2"):
        assert load_events(tmp_path / name, schema=plain.schema).events == plain.events
    table = pa.table({"event_id": ["a", "b"], "amount": pa.array([1234.5, 7.25]),
                      "note": ["two\r\nlines; one cell", "plain"], "seen": ["WAHR", "FALSCH"],
                      "when": pa.array([T0, T0 + 1000], pa.timestamp("ms", tz="UTC"))})
    pq.write_table(table, tmp_path / "x.parquet")
    assert load_events(tmp_path / "x.parquet", schema=plain.schema).events == plain.events
    with pytest.raises(InputError, match="more than once"):
        (tmp_path / "d.csv").write_text("a,a\n1,2\n")
        load_events(tmp_path / "d.csv")


def test_the_field_table_quotes_a_name_that_would_not_read_as_itself() -> None:
    """A new-user trial: ``train`` listed a field ``"event_id "`` (a trailing space) as
    ``event_id``, the same as the real id column."""
    from stream_detector.fieldschema import FieldRule, FieldSchema, FieldType

    schema = FieldSchema((FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("event_id ", FieldType.CATEGORY),
                          FieldRule("", FieldType.NUMBER), FieldRule("tab\there", FieldType.NUMBER),
                          FieldRule("montant_€", FieldType.NUMBER)))
    lines = schema.describe()
    assert [line.split("  ")[1].strip() for line in lines[:1]] == ["event_id"]
    assert "'event_id '" in lines[1] and "''" in lines[2] and "'tab\\there'" in lines[3]
    assert lines[4].lstrip().startswith("montant_€ ")


def test_the_field_table_names_the_id_column_and_the_label_column() -> None:
    """A trial: with --id-column transaction_id the table listed `event_id` (a field the file does
    not have) and never the --label-column."""
    from stream_detector.fieldschema import FieldRule, FieldSchema, FieldType

    schema = FieldSchema((FieldRule("amount", FieldType.NUMBER), FieldRule("event_id", FieldType.IDENTIFIER)))
    lines = schema.describe("transaction_id", "is_fraud")
    assert len(lines) == 3
    assert lines[1].split()[:4] == ["transaction_id", "(as", "event_id)", "identifier"] and "--id-column" in lines[1]
    assert lines[2].split()[:2] == ["is_fraud", "label"] and "--label-column" in lines[2]
    assert schema.describe("event_id") == schema.describe() and len(schema.describe()) == 2
    assert lines[0].index("number") == lines[1].index("identifier") == lines[2].index("label ")  # one column width


@pytest.mark.parametrize(("name", "expected"), [
    ("TransactionID", FieldType.IDENTIFIER), ("customerId", FieldType.IDENTIFIER), ("card-id", FieldType.IDENTIFIER),
    ("Order ID", FieldType.IDENTIFIER), ("ID", FieldType.IDENTIFIER), ("payer_id", FieldType.IDENTIFIER),
    ("paid", FieldType.NUMBER), ("valid", FieldType.NUMBER), ("PAID", FieldType.NUMBER), ("Android", FieldType.NUMBER)])
def test_id_names_in_any_common_spelling_are_identifiers(name: str, expected: FieldType) -> None:
    """A trial: IEEE-CIS's `TransactionID` (numbers) became a number feature, and next month's ids
    flagged every event; `*_id` alone was caught."""
    rows = [{name: float(v % 7)} for v in range(50)]  # a number column that no value rule takes
    assert infer_schema(rows).schema[name].type is expected


def test_epoch_times_under_a_time_name_are_no_number_features_and_counters_are_said() -> None:
    """A trial's `txn_time` (epoch seconds) was a number feature: next month's events all lay outside
    training. The same values under another name, a time word inside a name (`amount_at_risk`, a
    trial: amounts in cents dropped), and times outside 2001-2099 stay numbers. Increasing integer
    runs are warned of and kept (two trials: typed as identifiers, real features were dropped); a
    pandas index written out is an identifier by its name."""
    n = 200
    rows = [{"txn_time": 1_700_000_000 + 600 * i, "created_at_utc": 1_700_000_000_000 + i,
             "amount_at_risk": 1_700_000_000 + (i * 37) % n, "ts_count": 1_500_000_000 + (i * 11) % n,
             "uptime": 5.0 + i, "Unnamed: 0": i, "balance": float(i // 2)} for i in range(n)]
    inferred = infer_schema(rows)
    rules = {r.name: r for r in inferred.schema.fields}
    assert rules["txn_time"].type is FieldType.IGNORED and "epoch seconds" in rules["txn_time"].note
    assert rules["created_at_utc"].type is FieldType.IGNORED and "epoch milliseconds" in rules["created_at_utc"].note
    assert any(w.startswith("field 'txn_time': epoch seconds under a time-like name") for w in inferred.warnings)
    assert rules["amount_at_risk"].type is FieldType.NUMBER and rules["ts_count"].type is FieldType.NUMBER
    assert rules["uptime"].type is FieldType.NUMBER  # a counter, or sorted by it: said, not decided
    assert any(w.startswith("field 'uptime': its 200 values are distinct integers") for w in inferred.warnings)
    assert rules["Unnamed: 0"].type is FieldType.IDENTIFIER and "pandas index" in rules["Unnamed: 0"].note
    assert rules["balance"].type is FieldType.NUMBER  # increasing, with repeats: nothing said
    assert not any(w.startswith("field 'balance'") for w in inferred.warnings)
    shuffled = [{"amount": 1_700_000_000 + (i * 37) % n, "txn_time": 5.0 + (i * 37) % n} for i in range(n)]
    kept = infer_schema(shuffled).schema
    assert (kept["amount"].type, kept["txn_time"].type) == (FieldType.NUMBER, FieldType.NUMBER)  # not epoch: numbers
    newest_first = infer_schema([{"seq": 10_000 - 3 * i} for i in range(COUNTER_MIN_ROWS)])  # a trial: said nothing
    assert newest_first.schema["seq"].type is FieldType.NUMBER
    assert any(w.startswith(f"field 'seq': its {COUNTER_MIN_ROWS} values are distinct integers, decreasing row after")
               for w in newest_first.warnings), newest_first.warnings
    short = infer_schema([{"seq": i} for i in range(COUNTER_MIN_ROWS - 1)])
    assert short.schema["seq"].type is FieldType.NUMBER and not short.warnings  # too few rows to say


def test_a_time_named_column_that_never_decreases_is_a_clock_not_a_feature() -> None:
    """Trial M: the Fraud Detection Handbook's ``TX_TIME_SECONDS`` and ``TX_TIME_DAYS`` (time since
    the simulation's start, repeats included) were number features, and a model trained on two
    weeks flagged 17.5 % of the third. Named like a time and never decreasing over the file, such a
    column is left out, said, and ``--field X=number`` keeps it; a time-named feature that goes up
    and down (seconds since the last event), a non-time name over the same values, and a clock of
    fewer than 3 values stay numbers."""
    from stream_detector.fieldschema import InferenceOptions

    n = 400
    rows = [{"TX_TIME_SECONDS": 3600 * (i // 2), "TX_TIME_DAYS": i // 100, "seconds_since_last": float((i * 37) % 91),
             "last_time": float((i * 13) % 50), "ordered_total": i // 2, "one_day_days": i // 300} for i in range(n)]
    inferred = infer_schema(rows)
    rules = {r.name: r for r in inferred.schema.fields}
    assert rules["TX_TIME_SECONDS"].type is FieldType.IGNORED and "a clock" in rules["TX_TIME_SECONDS"].note
    assert rules["TX_TIME_DAYS"].type is FieldType.IGNORED
    assert any(w.startswith("field 'TX_TIME_SECONDS': named like a time, its values never decrease over the file "
                            "(0 .. 716,400)") and "--field TX_TIME_SECONDS=number" in w for w in inferred.warnings)
    for name in ("seconds_since_last", "last_time", "ordered_total", "one_day_days"):
        assert rules[name].type is FieldType.NUMBER, name
    kept = infer_schema(rows, InferenceOptions(overrides={"TX_TIME_DAYS": FieldRule("TX_TIME_DAYS", FieldType.NUMBER)}))
    assert kept.schema["TX_TIME_DAYS"].type is FieldType.NUMBER


def test_epoch_values_under_another_name_stay_numbers_and_are_said() -> None:
    """A trial: an epoch-seconds column named `t` (or `col3`) stayed a number feature and nothing was
    said; a week later every event lay beyond training. Kept (the name does not say time), warned
    of with the dates the values read as; a handful of repeated codes in that range is not."""
    rows = [{"t": 1_733_000_000 + 97 * ((i * 37) % 300), "ms": 1_733_000_000_000 + 1000 * i,
             "code": 1_000_000_000 + (i % 3)} for i in range(300)]
    inferred = infer_schema(rows)
    assert inferred.schema["t"].type is FieldType.NUMBER and inferred.schema["ms"].type is FieldType.NUMBER
    assert ("field 't': every value lies in the epoch-s range (read as times: 2024-11-30 .. 2024-12-01); if it "
            "is a time, absolute time as a feature puts every later event outside training: --field t=timestamp:s"
            in " ".join(inferred.warnings)), inferred.warnings
    assert any(w.startswith("field 'ms': every value lies in the epoch-ms range") for w in inferred.warnings)
    assert not any(w.startswith("field 'code'") for w in inferred.warnings)
    few = infer_schema([{"t": 1_733_000_000 + i} for i in range(EPOCH_MIN_ROWS - 1)])
    assert not any("epoch" in w for w in few.warnings)


def test_a_file_sorted_by_a_whole_number_feature_keeps_it_and_says_so() -> None:
    """A trial (on the rule above): a file sorted by balance_cents, every value distinct, lost the
    feature as a "row counter" (AUC 0.90 -> 0.35). A counter steps regularly; a sorted feature does
    not, and stays a number with a warning."""
    cents = sorted({int(v) for v in np.random.default_rng(0).lognormal(13, 1.5, 400)})
    inferred = infer_schema([{"balance_cents": c, "createdAt": 1_700_000_000 + (7 * i) % 400}
                             for i, c in enumerate(cents)])
    assert inferred.schema["balance_cents"].type is FieldType.NUMBER
    assert any(w.startswith("field 'balance_cents': its ") and "--field balance_cents=identifier" in w
               for w in inferred.warnings), inferred.warnings
    assert inferred.schema["createdAt"].type is FieldType.IGNORED  # camel case: created + at
    named = infer_schema([{"mandate_amount": 1_500_000_000 + 977 * i % 5000, "uptime_ms": 2_000_000_000 + i % 7,
                           "has_valid_id": i % 3 == 0, "photo_matches_id": "true" if i % 2 else "false",
                           "has_id": i % 2} for i in range(200)]).schema
    assert named["mandate_amount"].type is FieldType.NUMBER and named["uptime_ms"].type is FieldType.NUMBER
    assert named["has_valid_id"].type is FieldType.BOOLEAN and named["photo_matches_id"].type is FieldType.BOOLEAN
    assert named["has_id"].type is FieldType.NUMBER  # a 0/1 flag named like an id: rule 3's number, not an id


@pytest.mark.parametrize(("cells", "said"), [
    (["1234,56", "12,5", "1.234,50"], "numbers with a decimal comma (e.g. '1234,56')"),
    (["$1,234.56", "$12.50", "€ 3.10"], "numbers with a currency or percent sign or in parentheses (e.g. '$1,234.56')"),
    (["12,50 €", "3 €", "7,1 €"], "numbers with a currency or percent sign or in parentheses (e.g. '12,50 €')"),
    (["12.5%", "3%", "80%"], "numbers with a currency or percent sign or in parentheses (e.g. '12.5%')"),
    (["USD 45.68", "₹45.68", "(45.68)"], "numbers with a currency or percent sign or in parentheses (e.g. 'USD 45.68')"),
    (["45 680.00", "1 234", "12 000.5"], "numbers with spaces between thousands (e.g. '45 680.00')")])
def test_numbers_written_in_another_export_s_format_are_said(cells: list[str], said: str) -> None:
    """A trial: quoted "1234,56" in a comma-separated file and "$1,234.56" each made `amount` an
    identifier without a word (AUC 0.80 → 0.47)."""
    rows = [{"amount": cells[i % len(cells)]} for i in range(60)]
    inferred = infer_schema(rows)
    assert inferred.schema["amount"].type is not FieldType.NUMBER
    assert any(w.startswith("field 'amount': 60 of 60 values are " + said.split(" (e.g.")[0]) and said in w
               for w in inferred.warnings), inferred.warnings
    plain = infer_schema([{"merchant": m} for m in ("grocery", "fuel 24/7", "A-12", "café") * 15])
    assert not plain.warnings  # text that is not a number: nothing said
