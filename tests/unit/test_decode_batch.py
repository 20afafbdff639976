"""``decode_batch``'s batch path gives what the per-record loop gives, for every input: the same
events (values and types), indices, rejections (reason, message, order) and events as received."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.fieldschema import JSON_TEXT, FieldRule, FieldSchema, FieldType
from stream_detector.pipeline import decode
from stream_detector.pipeline.decode import Decoded, Rejected, decode_batch, parse_record, type_events
from stream_detector.schema import RejectReason
from stream_detector.transport.base import Unreadable

T0 = 1_790_000_000_000
GROUPS = (decode._GROUP, 1, 3)  # the batch is scanned a group of texts at a time: groups' seams too


def decode_batch_reference(values: list[Any], max_bytes: int, first_index: int = 0,
                           schema: FieldSchema | None = None) -> Decoded:
    """``decode_batch`` as it was: ``parse_record`` per record, then ``type_events``."""
    objs: list[Any] = []
    indices: list[int] = []
    rejected: list[Rejected] = []
    for i, raw in enumerate(values, first_index):
        obj, problem = parse_record(raw, max_bytes)
        if problem is not None:
            rejected.append(Rejected(i, problem[0], problem[1]))
            continue
        objs.append(obj)
        indices.append(i)
    return type_events(objs, indices, schema, JSON_TEXT, rejected, from_json=True)


def _exact(value: object) -> object:
    """A value with its type, recursively (``1 == 1.0 == True`` in Python; the reading must not mix them)."""
    if isinstance(value, dict):
        return "dict", [(k, _exact(v)) for k, v in value.items()]
    if isinstance(value, list):
        return "list", [_exact(v) for v in value]
    if isinstance(value, float) and value != value:
        return "float", "nan"
    return type(value).__name__, value


def assert_same(got: Decoded, want: Decoded) -> None:
    assert got.indices == want.indices
    assert [(r.index, r.reason, r.message) for r in got.rejected] == \
        [(r.index, r.reason, r.message) for r in want.rejected]
    assert [_exact(e) for e in got.events] == [_exact(e) for e in want.events]
    assert [_exact(e) for e in got.received] == [_exact(e) for e in want.received]
    assert (got.events is got.received) == (want.events is want.received)
    assert [a is b for a, b in zip(got.events, got.received, strict=True)] == \
        [a is b for a, b in zip(want.events, want.received, strict=True)]
    for decoded in (got, want):  # the fields read out for enrich and features are the events' own values
        for name, column in decoded.columns.items():
            assert [_exact(v) for v in column] == [_exact(e.get(name)) for e in decoded.events], name


SCHEMA = FieldSchema((
    FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("account_id", FieldType.IDENTIFIER),
    FieldRule("timestamp", FieldType.TIMESTAMP), FieldRule("amount", FieldType.NUMBER),
    FieldRule("country", FieldType.CATEGORY), FieldRule("flag", FieldType.BOOLEAN),
    FieldRule("note", FieldType.IGNORED)), time_range_ms=(T0 - 86_400_000, T0 + 86_400_000))
SCHEMA_NO_TIME = FieldSchema((FieldRule("amount", FieldType.NUMBER), FieldRule("country", FieldType.CATEGORY)))

# ---- JSON texts, written token by token (so the whitespace, repeats and literals are ours) -------------

_big_ints = st.one_of(st.integers(10**17, 10**30), st.integers(-(10**30), -(10**17)),
                      st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, 10**400]))
_scalars = st.one_of(
    st.integers(-1000, 1000).map(str), st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=6).map(json.dumps), st.sampled_from(["true", "false", "null"]),
    _big_ints.map(str),  # integers of 18 to 400 digits, any sign
    _big_ints.map(lambda n: json.dumps(str(n))),  # ... and as text
    st.sampled_from(["1e20", "-1e20", "1.5e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity",
                     "9223372036854775808.0", "1E19", "0.1234567890123456789012"]),
    st.sampled_from(['"a\\":b"', '"x\\": 1"', '"\\":"', '"{"', '"["', '"12:30"', '"2026-01-02T03:04:05Z"',
                     '"\\u00e9"', '"é"']),
)
_ws = st.sampled_from(["", " ", "\t", "\n", "\r\n ", "  "])
_keys = st.sampled_from(["event_id", "account_id", "timestamp", "schema_version", "amount", "country",
                         "flag", "note", "a", "b", "é", 'k"q', ""])


def _object(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(_keys, _ws, _ws, values).map(lambda p: f"{json.dumps(p[0])}{p[1]}:{p[2]}{p[3]}")
    return st.tuples(st.lists(pair, max_size=5), _ws).map(lambda p: "{" + p[1] + ",".join(p[0]) + "}")


_values = st.recursive(_scalars, lambda inner: st.one_of(
    _object(inner), st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")), max_leaves=6)

_event_values: dict[str, st.SearchStrategy[str]] = {
    "event_id": st.one_of(st.text(min_size=1, max_size=8).map(json.dumps),
                          st.sampled_from(['""', "5", "null", '"' + "x" * 512 + '"', '"' + "x" * 513 + '"'])),
    "account_id": st.one_of(st.sampled_from(['"acct-1"', "17", "1.5", "true", "null", "[1]", '{"id": 1}',
                                             '"12345678901234567890"']), _big_ints.map(str)),
    "timestamp": st.one_of(st.integers(T0 - 10**8, T0 + 10**8).map(str),
                           st.sampled_from(['"2026-01-02T03:04:05Z"', '"soon"', "true", "1.79e12", "null",
                                            "1" + "0" * 400, "-1" + "0" * 400, "1e300", "17900000000000000000",
                                            "1790000000", '"1790000000000"', "[1]"])),
    "schema_version": st.sampled_from(["1", "2", "true", "1.0", "null", '"1"', "12345678901234567890", "0"]),
    "amount": st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
                        st.sampled_from(['"12.5"', '"1,234.5"', '"abc"', "true", "1e400", "NaN", "1e20"])),
    "country": st.sampled_from(['"US"', '"CA"', "5", "true", "null", "2.5"]),
    "flag": st.sampled_from(["true", "false", "1", "0", '"yes"', '"true"', "2"]),
}


@st.composite
def _events(draw: st.DrawFn) -> str:
    """Mostly well-formed events (unique keys), each field often valid, sometimes not."""
    names = ["event_id", *draw(st.lists(st.sampled_from(list(_event_values)[1:]), unique=True))]
    pairs = [(name, draw(_event_values[name])) for name in names]
    pairs += [(f"ctx_{j}", draw(_scalars)) for j in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 9)) == 0:  # now and then a nested value or a repeated key
        pairs.append((draw(_keys), draw(_values)))
    order = draw(st.permutations(range(len(pairs))))
    sep, colon = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " : "), (" ,\n", "\t:\r\n")]))
    return "{" + sep.join(f"{json.dumps(pairs[j][0])}{colon}{pairs[j][1]}" for j in order) + "}"


def _mostly(common: st.SearchStrategy[str], rare: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``rare`` about one time in 30, else ``common``."""
    return st.integers(0, 29).flatmap(lambda r: rare if r == 0 else common)


_valid_values: dict[str, st.SearchStrategy[str]] = {
    "account_id": _mostly(st.one_of(st.sampled_from(['"acct-1"', "17", "null", "-5"]), _big_ints.map(str)),
                          st.sampled_from(["true", "1.5", "1e20"])),
    "timestamp": _mostly(st.one_of(st.integers(T0 - 10**8, T0 + 10**8).map(str), st.sampled_from(
                             ["1.79e12", "null", "17900000000000000000", '"2026-01-02T03:04:05Z"'])),
                         st.sampled_from(['"soon"', "true", str(2**1024 - 2**970 - 1)])),
    "schema_version": _mostly(st.sampled_from(["1", "null"]), st.sampled_from(["2", "true", "1.0", '"1"'])),
    "amount": st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(json.dumps), _big_ints.map(str),
                        st.sampled_from(['"12.5"', "1e20", "-0.0"])),
    "country": st.sampled_from(['"US"', '"CA"', '"a\\":b"', '"12:30"', "null"]),
    "flag": st.sampled_from(["true", "false", "1", "0", "null"]),
}
_plain_scalars = st.one_of(
    st.integers(-1000, 1000).map(str), st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(st.characters(exclude_characters="{["), max_size=6).map(json.dumps),
    st.sampled_from(["true", "false", "null"]), _big_ints.map(str))


@st.composite
def _valid_events(draw: st.DrawFn) -> str:
    """Events that are valid, or nearly so (a text timestamp without a schema, a long id ...)."""
    pairs = [("event_id", draw(_mostly(st.one_of(st.text(min_size=1, max_size=8).map(json.dumps),
                                                 st.just('"' + "x" * 512 + '"')), st.just('"' + "x" * 513 + '"'))))]
    pairs += [(name, draw(_valid_values[name])) for name in draw(st.lists(st.sampled_from(list(_valid_values)),
                                                                           unique=True))]
    pairs += [(f"ctx_{j}", draw(_plain_scalars)) for j in range(draw(st.integers(0, 2)))]
    order = draw(st.permutations(range(len(pairs))))
    sep, colon = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " : ")]))
    return "{" + sep.join(f"{json.dumps(pairs[j][0])}{colon}{pairs[j][1]}" for j in order) + "}"


_records = st.one_of(
    _events().map(str.encode), _events().map(str.encode), _valid_events().map(str.encode),
    _object(_values).map(str.encode),  # any object: repeats, nesting, literals
    _values.map(str.encode),  # any JSON value (a list, a number, a string ...)
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"{", b'{"event_id": "x"', b"not json", b"\xff\xfe{}",
                     b'{"event_id": "e", "amount": 1, "amount": 2}', b'{"event_id": "e", "a" : 1, "a" : 2}',
                     b'{"event_id": "e", "n": {"a": 1, "a": 2}}', b'{"event_id": "e", "note": "a\\":b", "x": 1}',
                     b'{"event_id": "\xed\xa0\x80"}', b'{"event_id": "e", "n": [{"a": 1}, {"a": 1}]}']),
    st.binary(max_size=40),
    st.just(None),  # a tombstone
    st.text(max_size=10).map(Unreadable),  # a record the client could not read
    _events().map(lambda text: bytearray(text.encode())),  # another bytes-like type
    _events().map(lambda text: (" " * 300 + text).encode()),  # oversize (max_bytes below is 300)
)


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(_records, max_size=12), first_index=st.sampled_from([0, 7, 1000]),
       schema=st.sampled_from([None, SCHEMA, SCHEMA_NO_TIME]))
def test_the_batch_path_matches_the_per_record_loop(values: list[Any], first_index: int,
                                                     schema: FieldSchema | None) -> None:
    """Any mix: events, repeated keys (any whitespace; strings holding ``":``), nesting, long
    integers (also as text), 1e20 / 1e400 / NaN, invalid JSON, other JSON values, tombstones,
    Unreadable, bytearray and oversize values, with a schema or none, from any first index."""
    want = decode_batch_reference(values, 300, first_index, schema)
    for group in GROUPS:
        with patch.object(decode, "_GROUP", group):
            assert_same(decode_batch(values, 300, first_index, schema), want)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_valid_events().map(str.encode), min_size=1, max_size=12),
       odd=st.one_of(st.none(), st.tuples(st.integers(0, 12), st.one_of(
           _events().map(str.encode), _object(_values).map(str.encode), st.sampled_from([
           b"[1]", b"7", b"bad", b'{"event_id": "n", "a": [1, 2]}', b'{"event_id": "n", "a": []}',
           b'{"event_id": "n", "a": {}}', b'{"event_id": "n", "a": {"b": 1}}', b'{"event_id": "n", "a": "[{"}'])))),
       schema=st.sampled_from([None, SCHEMA]))
def test_batches_of_events_match_the_per_record_loop(values: list[bytes], odd: tuple[int, bytes] | None,
                                                     schema: FieldSchema | None) -> None:
    """Batches of (nearly) valid events, with one other value or none: where the batch pre-checks
    and the column checks decide most."""
    if odd is not None:
        values.insert(odd[0], odd[1])
    want = decode_batch_reference(values, 10_000, 3, schema)
    for group in GROUPS:
        with patch.object(decode, "_GROUP", group):
            assert_same(decode_batch(values, 10_000, 3, schema), want)


@pytest.mark.parametrize("digits", range(14, 24))
@pytest.mark.parametrize("offset", range(8))
def test_every_long_integer_is_found_wherever_it_lies(digits: int, offset: int) -> None:
    """Integers of 14 to 23 digits at each alignment (the batch finds 19 digits in a row by 4-byte blocks)."""
    pad = "e" + "x" * offset
    values = [f'{{"event_id": "{pad}", "n": {sign}{"9" * digits}}}'.encode() for sign in ("", "-")]
    values += [f'{{"event_id": "{pad}", "t": "{"1" * digits}"}}'.encode()]
    for i in range(len(values)):
        batch = values[i:] + values[:i]
        got, want = decode_batch(batch, 10_000), decode_batch_reference(batch, 10_000)
        assert_same(got, want)
    assert type(decode_batch(values[:1], 10_000).events[0]["n"]) is int


def test_the_fuzzed_payloads_match_the_per_record_loop() -> None:
    from tests.fuzz_payloads import adversarial

    raws = adversarial(seed=3, n_random=1500)
    for schema in (None, SCHEMA):
        assert_same(decode_batch(raws, 65536, 11, schema), decode_batch_reference(raws, 65536, 11, schema))
    for k in range(len(raws)):  # each alone, read flat where the flat reading takes it
        assert_same_lazy(raws[k:k + 1], 65536, 11, SCHEMA)


def test_a_typical_batch_matches_and_reads_long_ids_exactly() -> None:
    from benchmarks.workload import encode, make_events

    events, _ = make_events(300, 1)
    events[5]["account_id"] = 123456789012345678901234
    events[9]["amount"] = 2**64
    events[12]["account_id"] = -(2**63) - 1
    raws: list[bytes | None] = [*encode(events[:5]), *(json.dumps(e).encode() for e in events[5:13]),
                                *encode(events[13:])]
    raws[40] = orjson.dumps(events[40])[:-1] + b',"amount":1}'  # a repeated key
    raws[41] = None
    for schema in (None, SCHEMA):
        got = decode_batch(raws, 65536, 0, schema)
        assert_same(got, decode_batch_reference(raws, 65536, 0, schema))
    got = decode_batch(raws, 65536)
    assert got.events[5]["account_id"] == 123456789012345678901234
    assert got.events[9]["amount"] == 2**64 and type(got.events[9]["amount"]) is int
    assert [r.index for r in got.rejected] == [40, 41]


def test_long_batches_find_each_verdict_in_its_own_record() -> None:
    """Verdicts at the end of a long batch are found in the right record (the batch is scanned as one text)."""
    tail = [b'{"b":1,"b":2}', b'{"event_id":"x","n":12345678901234567890123}', b'{"event_id":"y","n":[1]}',
            b'{"event_id":"z","n":-12345678901234567890123}', b'{"event_id":"w" , "w" :1,"w"\t: 2}']
    for head in (0, 1, 5, 50, 500, 509, 1100):
        for schema in (None, SCHEMA):
            values = [b'{"event_id":"e","n":1}'] * head + tail
            assert_same(decode_batch(values, 1000, 0, schema), decode_batch_reference(values, 1000, 0, schema))


_ODD_FIELDS = [("event_id", v) for v in ['""', "5", "null", "true", "1.5", "[1]", '{"a": 1}', '"' + "x" * 513 + '"']] + \
    [("account_id", v) for v in ["true", "false", "1.5", "1e20", "[1]", "{}", '"x"', "12345678901234567890123", "null"]] + \
    [("schema_version", v) for v in ["true", "false", "1.0", "2", '"1"', "0", "12345678901234567890123", "null", "1"]] + \
    [("timestamp", v) for v in ['"soon"', "true", '"2026-01-02T03:04:05Z"', "1e400", str(2**1024 - 2**970 - 1),
                                "17900000000000000000", "[1]", "{}", "null", "1.5"]] + \
    [("x", v) for v in ["[]", "{}", "[1]", '{"a": 1}', '"[{"', "NaN", "123456789012345678901234567890"]]


@pytest.mark.parametrize(("name", "value"), _ODD_FIELDS)
def test_one_odd_field_in_a_batch_of_valid_events(name: str, value: str) -> None:
    """Each value the column checks must refuse (or accept), alone in a batch of valid events."""
    valid = [f'{{"event_id": "e{i}", "account_id": "a", "timestamp": {T0}, "amount": 1.5}}'.encode() for i in range(5)]
    fields = {"event_id": '"odd"', "account_id": '"a"', "timestamp": str(T0), "amount": "2.5", name: value}
    odd = ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
    for at in (0, 2, 5):
        values = [*valid[:at], odd, *valid[at:]]
        for schema in (None, SCHEMA, SCHEMA_NO_TIME):
            assert_same(decode_batch(values, 10_000, 4, schema), decode_batch_reference(values, 10_000, 4, schema))


def test_a_record_nested_past_the_recursion_limit_with_a_big_integer_is_rejected_not_raised() -> None:
    """A new-user style fuzz case found by review: orjson reads nesting ~1,000 deep, but the
    big-integer walk and the stdlib's exact re-read recursed once per level and raised
    ``RecursionError`` out of ``decode_batch`` ("never raises on data"). The record is now a dead
    letter (``invalid_json``) and the rest of the batch is decoded."""
    depth = 1000
    deep = b'{"event_id": "deep", "x": ' + b"[" * depth + b"12345678901234567890123" + b"]" * depth + b"}"
    good = b'{"event_id": "ok", "account_id": "a", "amount": 1.5}'
    decoded = decode_batch([good, deep, good], 1 << 20)
    assert decoded.indices == [0, 2]
    assert [(r.index, r.reason) for r in decoded.rejected] == [(1, RejectReason.INVALID_JSON)]
    _, problem = parse_record(deep, 1 << 20)
    assert problem is not None and problem[0] is RejectReason.INVALID_JSON


def test_the_fields_read_out_cover_the_fields_left_as_they_were() -> None:
    """``Decoded.columns``: with a schema, each field whose values already had their type is read
    out once (for enrich and features), aligned with the kept events also when the schema refuses
    a record in between; a field with a value converted is not."""
    rows = [{"event_id": f"e{i}", "account_id": "a", "timestamp": T0 + i, "amount": 1.5 + i, "country": "NL"}
            for i in range(6)]
    rows[2]["timestamp"] = "not a time"  # refused by the schema: the other rows stay aligned
    rows[4]["amount"] = "7.25"  # text in a number field: converted, so "amount" is not read out
    got = decode_batch([orjson.dumps(r) for r in rows], 10_000, 0, SCHEMA)
    assert got.indices == [0, 1, 3, 4, 5] and [r.index for r in got.rejected] == [2]
    assert set(got.columns) == {"event_id", "account_id", "country", "flag"}  # "timestamp": the refused text
    assert list(got.columns["event_id"]) == ["e0", "e1", "e3", "e4", "e5"]
    assert list(got.columns["flag"]) == [None] * 5  # a field no event has reads None, as ``.get`` does
    assert decode_batch([orjson.dumps(r) for r in rows], 10_000).columns == {}  # no schema: none read out


# ---- the flat reading (decode_batch(lazy=True)): the same result, without one dict per event -----------

def assert_same_lazy(values: list[Any], max_bytes: int, first_index: int, schema: FieldSchema) -> Decoded:
    """``decode_batch(lazy=True)`` against the per-record loop: the same as ``assert_same``, the
    events parsed as they are read (``LazyEvents``) where the flat reading took the batch; then
    the same fields read out as the usual path's. The reader's memory of misses is cleared first,
    so every call tries the flat reading."""
    decode._READERS.clear()
    got = decode_batch(values, max_bytes, first_index, schema, lazy=True)
    want = decode_batch_reference(values, max_bytes, first_index, schema)
    assert got.indices == want.indices
    assert [(r.index, r.reason, r.message) for r in got.rejected] == \
        [(r.index, r.reason, r.message) for r in want.rejected]
    assert [_exact(e) for e in got.events] == [_exact(e) for e in want.events]
    assert [_exact(e) for e in got.received] == [_exact(e) for e in want.received]
    if isinstance(got.events, decode.LazyEvents):
        assert got.events is got.received and all(a is b for a, b in zip(got.events, got.received, strict=True))
        assert [list(e) for e in got.events] == [list(e) for e in want.events]  # keys in the text's order
        usual = decode_batch(values, max_bytes, first_index, schema)
        assert list(got.columns) == list(usual.columns)
    for name, column in got.columns.items():
        assert [_exact(v) for v in column] == [_exact(e.get(name)) for e in got.events], name
    return got


_no_brackets = st.characters(exclude_characters="{[")  # a bracket in a text sends the batch to the usual path too
_flat_plain: dict[str, st.SearchStrategy[str]] = {  # SCHEMA's fields, as the flat reading keeps them
    "event_id": st.text(_no_brackets, min_size=1, max_size=8).map(json.dumps),
    "account_id": st.one_of(st.text(_no_brackets, max_size=5).map(json.dumps), st.just("null")),
    "timestamp": st.one_of(st.integers(T0 - 10**7, T0 + 10**7).map(str), st.just("null")),
    "amount": st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
                        st.integers(-(2**63), 2**64 - 1).map(str), st.just("null")),
    "country": st.one_of(st.text(_no_brackets, max_size=4).map(json.dumps),
                         st.sampled_from(['"a\\":b"', '"12:30"', "null", '"{"'])),
    "flag": st.sampled_from(["true", "false", "null"]),
}
_flat_odd: dict[str, st.SearchStrategy[str]] = {  # ... and as it must hand them to the usual path
    "event_id": st.sampled_from(['""', "5", "null", '"' + "x" * 513 + '"', '"' + "x" * 512 + '"']),
    "account_id": st.sampled_from(["17", "true", "1.5", "12345678901234567890123"]),
    "timestamp": st.sampled_from(['"2026-01-02T03:04:05Z"', "1.79e12", "true", "1e400", str(T0 + 10**12),
                                  "17900000000000000000"]),
    "amount": st.one_of(_big_ints.map(str), st.sampled_from(['"12.5"', "true", "1e400", "NaN", "[1]"])),
    "country": st.sampled_from(["5", "true", "{}"]),
    "flag": st.sampled_from(["1", '"yes"']),
}


@st.composite
def _flat_events(draw: st.DrawFn, plain: bool) -> str:
    """An event with every field of ``SCHEMA``, ``note`` (ignored) and ``schema_version`` or not;
    unless ``plain``, now and then a field missing, a value to convert or refuse, a key the
    schema does not name, a repeated key or a nested value; keys in any order, any whitespace."""
    pairs = [(name, draw(_mostly(strategy, _flat_odd[name]) if not plain else strategy))
             for name, strategy in _flat_plain.items()]
    if not plain and draw(st.integers(0, 29)) == 0:
        del pairs[draw(st.integers(0, len(pairs) - 1))]
    for name, strategy in (("note", _plain_scalars), ("schema_version", st.sampled_from(["1", "null"]))):
        if draw(st.booleans()):
            pairs.append((name, draw(strategy)))
    rare = draw(st.integers(0, 39)) if not plain else -1
    if rare == 0:
        pairs.append(("other", draw(_plain_scalars)))
    elif rare == 1:
        pairs.append(draw(st.sampled_from(pairs)))  # a repeated key
    elif rare == 2:
        pairs.append(("note", draw(_values)))  # any value, nested ones too, in the ignored field
    order = draw(st.permutations(range(len(pairs))))
    sep, colon = draw(st.sampled_from([(",", ":"), (",", ":"), (", ", ": "), (",", " : ")]))
    return "{" + sep.join(f"{json.dumps(pairs[j][0])}{colon}{pairs[j][1]}" for j in order) + "}"


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.booleans().flatmap(lambda plain: st.lists(_flat_events(plain).map(str.encode), min_size=1,
                                                            max_size=12)),
       odd=st.one_of(st.none(), st.none(), st.tuples(st.integers(0, 12), _records)),
       first_index=st.sampled_from([0, 7]))
def test_the_flat_reading_matches_the_per_record_loop(values: list[Any], odd: tuple[int, Any] | None,
                                                      first_index: int) -> None:
    """Events of ``SCHEMA``'s fields, mostly as they are kept, with any of the odd things the flat
    reading must hand to the usual path (a value to convert or refuse, a missing field, a key the
    schema does not name, a repeated key, nesting, integers beyond 64 bits, out-of-range numbers),
    and now and then any other record: the same result as the per-record loop."""
    if odd is not None:
        values.insert(odd[0], odd[1])
    assert_same_lazy(values, 300 if odd is not None else 10_000, first_index, SCHEMA)


def test_the_flat_reading_takes_a_batch_of_plain_events_and_parses_only_what_is_read() -> None:
    """A batch of the benchmark's events (every field of its model's schema, native values) is
    read flat: no event dict is made until one is read, and one read is parsed once."""
    from benchmarks.workload import encode, make_events
    from stream_detector.fieldschema import infer_schema

    events, _ = make_events(300, 1)
    schema = infer_schema(events).schema
    raws: list[Any] = encode(events)
    assert isinstance(assert_same_lazy(raws, 65536, 0, schema).events, decode.LazyEvents)
    got = decode_batch(raws, 65536, 0, schema, lazy=True)
    assert isinstance(got.events, decode.LazyEvents)
    assert got.events._parsed == {}  # noqa: SLF001 - nothing parsed until read
    first = got.events[7]
    assert got.events[7] is first and list(got.events._parsed) == [7]  # noqa: SLF001
    assert [e["event_id"] for e in got.events[5:8]] == [e["event_id"] for e in events[5:8]]
    assert got.events.take([9, 2])[1]["event_id"] == events[2]["event_id"]


@pytest.mark.parametrize("odd", [
    b'{"event_id": "o", "account_id": "a", "timestamp": 1790000000000, "amount": "1.5", "country": "NL",'
    b' "flag": true}',  # a value to convert
    b'{"event_id": "o", "account_id": "a", "timestamp": 1790000000000, "amount": 18446744073709551616,'
    b' "country": "NL", "flag": true}',  # an integer beyond 64 bits
    b'{"event_id": "o", "account_id": "a", "timestamp": 1790000000000, "amount": 1, "amount": 2, "country": "NL",'
    b' "flag": true}',  # a repeated key
    b'{"event_id": "o", "account_id": "a", "timestamp": 1790000000000, "amount": 1, "country": "NL", "flag": true,'
    b' "note": {"x": 1}}',  # a nested value
    b'{"event_id": "o", "account_id": "a", "timestamp": 1790000000000, "amount": 1e400, "country": "NL",'
    b' "flag": true}',  # out of range
    b'{"event_id": "o", "account_id": "a", "timestamp": 1790000000000, "amount": 1, "country": "NL", "flag": true,'
    b' "a\\"b": 1}',  # a key the schema does not name, which msgspec cannot name either
    b'{"event_id": "o", "account_id": "a", "amount": 1, "country": "NL", "flag": true,'
    b' "extra": {"x": 1}}',  # a key the schema does not name, holding a nested value
])
def test_the_flat_reading_hands_a_batch_with_an_odd_record_to_the_usual_path(odd: bytes) -> None:
    """Each kind of record the flat reading cannot take, in a batch of plain ones: the batch is
    decoded the usual way (events as dicts), with the same result as the per-record loop; after
    a miss the reader skips the flat reading for a while, then tries it again."""
    plain = [f'{{"event_id": "e{i}", "account_id": "a", "timestamp": {T0 + i}, "amount": {i}.5, "country": "NL",'
             f' "flag": false}}'.encode() for i in range(6)]
    assert isinstance(assert_same_lazy(plain, 10_000, 0, SCHEMA).events, decode.LazyEvents)
    got = assert_same_lazy([*plain[:3], odd, *plain[3:]], 10_000, 0, SCHEMA)
    assert isinstance(got.events, list)
    reader = decode._reader(SCHEMA)
    assert reader.skip == 1  # one miss: the next batch is decoded the usual way, the one after tries again
    assert isinstance(decode_batch(plain, 10_000, 0, SCHEMA, lazy=True).events, list)
    assert isinstance(decode_batch(plain, 10_000, 0, SCHEMA, lazy=True).events, decode.LazyEvents)


def _plain(i: int, **fields: Any) -> bytes:
    event = {"event_id": f"e{i}", "account_id": "a", "timestamp": T0 + i, "amount": i + 0.5, "country": "NL",
             "flag": i % 2 == 0, **fields}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


@pytest.mark.parametrize(("odd", "extra", "lenient"), [
    ({"merchant_name": "shop"}, ("merchant_name",), frozenset()),  # a producer's field the model does not use
    ({"flag": ...}, (), frozenset({"flag"})),  # a producer that leaves out a null field
    ({"amount": ..., "merchant_name": None, "channel": 3}, ("merchant_name", "channel"), frozenset({"amount"})),
    ({"timestamp": ...}, (), frozenset({"timestamp"})),  # the event time: a feature of the schema, left out
])
def test_the_flat_reading_learns_the_keys_a_stream_adds_and_the_fields_it_leaves_out(
        odd: dict[str, Any], extra: tuple[str, ...], lenient: frozenset[str]) -> None:
    """A key the schema does not name, or a field of it left out (read as null, as the usual
    decode's ``event.get``): the batch is still read flat, with the same result as the per-record
    loop; the reader keeps what it learned, so the next batches take no extra msgspec pass, and a
    batch without those keys is read flat as before. (Before: every such batch went to the usual
    decode, 52 ms instead of 32 ms per 8,192 of the benchmark's events.)"""
    batch = [_plain(i, **(odd if i % 3 == 1 else {})) for i in range(9)]
    got = assert_same_lazy(batch, 10_000, 0, SCHEMA)
    assert isinstance(got.events, decode.LazyEvents)
    reader = decode._reader(SCHEMA)
    assert reader.extra == extra and reader.lenient == lenient and reader.misses == 0
    for later in (batch, [_plain(i) for i in range(4)]):  # what it learned stays; the plain stream reads as ever
        again = decode_batch(later, 10_000, 0, SCHEMA, lazy=True)
        assert isinstance(again.events, decode.LazyEvents)
        assert decode._reader(SCHEMA) is reader
        want = decode_batch_reference(later, 10_000, 0, SCHEMA)
        assert [_exact(e) for e in again.events] == [_exact(e) for e in want.events]
        assert {k: [_exact(v) for v in c] for k, c in again.columns.items()} == \
            {k: [_exact(e.get(k)) for e in want.events] for k in again.columns}


def test_the_flat_reading_learns_a_bounded_number_of_keys() -> None:
    """A stream whose events each bring new keys (``_MAX_LEARNED`` of them learned at most, and
    ``_RELEARN`` retries per batch): past those the batch goes to the usual decode, with the
    same result, and the reader counts a miss."""
    decode._READERS.clear()
    many = [_plain(i, **{f"k{i}_{j}": j for j in range(decode._RELEARN + 1)}) for i in range(2)]
    got = decode_batch(many, 10_000, 0, SCHEMA, lazy=True)
    assert isinstance(got.events, list) and decode._reader(SCHEMA).misses == 1
    assert len(decode._reader(SCHEMA).extra) == decode._RELEARN
    decode._READERS.clear()
    for start in range(0, 2 * decode._MAX_LEARNED, 4):
        decode._reader(SCHEMA).skip = 0
        decode_batch([_plain(start, **{f"n{start + j}": 1 for j in range(4)})], 10_000, 0, SCHEMA, lazy=True)
    reader = decode._reader(SCHEMA)
    assert len(reader.extra) == decode._MAX_LEARNED and reader.misses > 0
    assert_same_lazy([_plain(1, n999=1)], 10_000, 0, SCHEMA)


@pytest.mark.parametrize("schema", [
    FieldSchema((FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("note", FieldType.IGNORED),
                 FieldRule("amount", FieldType.NUMBER), FieldRule("pattern", FieldType.IGNORED),
                 FieldRule("country", FieldType.CATEGORY))),  # an ignored field before a feature field
    FieldSchema((FieldRule("event_id", FieldType.IDENTIFIER), FieldRule('size "XL"', FieldType.CATEGORY),
                 FieldRule("a\\b", FieldType.NUMBER), FieldRule("tab\there", FieldType.NUMBER))),
    FieldSchema((FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("", FieldType.NUMBER),
                 FieldRule("é \u2028", FieldType.CATEGORY))),
], ids=["ignored-before-a-feature", "quote-backslash-control", "empty-and-unicode"])
def test_the_flat_reading_takes_any_schema_or_leaves_it_to_the_usual_path(schema: FieldSchema) -> None:
    """A new-user trial: a model trained with ``--exclude`` of a middle column (an optional
    field before a required one in the struct) and one with a field named ``size "XL"`` (msgspec
    cannot rename to it) crashed every worker on its first batch. Any schema now decodes, as the
    per-record loop does: flat where msgspec can name the fields, the usual way where not."""
    names = [rule.name for rule in schema.fields if rule.name != "event_id"]
    rows = [{"event_id": f"e{i}", **{name: (f"v{i}" if name in ("country", 'size "XL"', "é \u2028", "note",
                                                                "pattern") else i + 0.5) for name in names}}
            for i in range(5)]
    values: list[Any] = [orjson.dumps(row) for row in rows]
    got = assert_same_lazy(values, 10_000, 0, schema)
    flat = not any(c in name for name in names for c in '"\\\t')
    assert isinstance(got.events, decode.LazyEvents) == flat


def test_lazy_events_index_like_a_list() -> None:
    """A new-user trial: ``events[-6]`` of five events gave the last one, not ``IndexError``."""
    events = decode.LazyEvents([orjson.dumps({"event_id": f"e{i}"}) for i in range(5)])
    assert [events[i]["event_id"] for i in (-1, -5, 0, 4)] == ["e4", "e0", "e0", "e4"]
    for i in (-6, 5):
        with pytest.raises(IndexError):
            events[i]
    assert [e["event_id"] for e in events[-2:]] == ["e3", "e4"] and len(events[7:]) == 0
