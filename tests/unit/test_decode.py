"""Decode step: every record lands in exactly one of events / rejected, with the right reason."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from stream_detector.pipeline.decode import decode_batch
from stream_detector.schema import Event, RejectReason, validate_event

CASES: list[tuple[bytes | None, RejectReason | None]] = [
    (b'{"event_id": "a", "amount": 1.5, "country": "US"}', None),
    (b'{"event_id": "b", "account_id": 17, "timestamp": "2026-01-02T03:04:05Z"}', None),
    (b'{"event_id": "c", "timestamp": 1790000000000, "flag": true, "note": null}', None),
    (b'{"event_id": "d", "schema_version": 1}', None),
    (b"not json", RejectReason.INVALID_JSON),
    (b"\xff\xfe{}", RejectReason.INVALID_JSON),
    (None, RejectReason.TOMBSTONE),
    (b"[1]", RejectReason.NOT_AN_OBJECT),
    (b'"text"', RejectReason.NOT_AN_OBJECT),
    (b'{"amount": 1}', RejectReason.MISSING_EVENT_ID),
    (b'{"event_id": ""}', RejectReason.MISSING_EVENT_ID),
    (b'{"event_id": 5}', RejectReason.WRONG_TYPE),
    (b'{"event_id": "e", "nested": {"a": 1}}', RejectReason.WRONG_TYPE),
    (b'{"event_id": "e", "list": [1, 2]}', RejectReason.WRONG_TYPE),
    (b'{"event_id": "e", "account_id": 1.5}', RejectReason.WRONG_TYPE),
    (b'{"event_id": "e", "amount": NaN}', RejectReason.NON_FINITE_NUMBER),
    (b'{"event_id": "e", "amount": Infinity}', RejectReason.NON_FINITE_NUMBER),
    (b'{"event_id": "e", "amount": 1e400}', RejectReason.NON_FINITE_NUMBER),
    (b'{"event_id": "e", "schema_version": 2}', RejectReason.UNKNOWN_SCHEMA),
    (b'{"event_id": "e", "timestamp": "soon"}', RejectReason.INVALID_TIMESTAMP),
    (b'{"event_id": "e", "timestamp": true}', RejectReason.INVALID_TIMESTAMP),
    (b'{"event_id": "e", "amount": 1, "amount": 9000}', RejectReason.DUPLICATE_KEY),
    (b'{"event_id": "e", "amount" : 1, "amount" : 9000}', RejectReason.DUPLICATE_KEY),
    (b'{"event_id": "f", "note": "a\\":b", "x": 1}', None),
]


@pytest.mark.parametrize(("raw", "reason"), CASES)
def test_each_record_gets_the_documented_verdict(raw, reason):
    decoded = decode_batch([raw], max_bytes=10_000)
    if reason is None:
        assert decoded.indices == [0] and not decoded.rejected
        assert decoded.events[0] == orjson.loads(raw)
    else:
        assert decoded.events == [] and len(decoded.rejected) == 1
        assert decoded.rejected[0].reason == reason and decoded.rejected[0].message


def test_oversize_is_rejected_before_parsing():
    big = b'{"event_id": "x", "blob": "' + b"a" * 200 + b'"}'
    decoded = decode_batch([big], max_bytes=100)
    assert decoded.rejected[0].reason == RejectReason.OVERSIZE


def test_a_batch_keeps_order_and_partitions_indices_exactly():
    raws = [raw for raw, _ in CASES]
    decoded = decode_batch(raws, max_bytes=10_000)
    rejected = [r.index for r in decoded.rejected]
    assert sorted(decoded.indices + rejected) == list(range(len(raws)))
    assert decoded.indices == sorted(decoded.indices)
    assert [str(e["event_id"]) for e in decoded.events] == ["a", "b", "c", "d", "f"]


@pytest.mark.parametrize(("raw", "reason"), [c for c in CASES if c[0] is not None and c[1] not in {
    RejectReason.INVALID_JSON, RejectReason.NON_FINITE_NUMBER, RejectReason.NOT_AN_OBJECT,
    RejectReason.DUPLICATE_KEY}])
def test_fast_checks_agree_with_the_pydantic_contract(raw, reason):
    obj = orjson.loads(raw)
    fast_ok = validate_event(obj) is None
    try:
        Event.model_validate(obj)
        model_ok = True
    except (ValidationError, ValueError):
        model_ok = False
    assert fast_ok == model_ok == (reason is None)


def test_fuzzed_payloads_never_raise_and_every_index_has_one_verdict():
    from tests.fuzz_payloads import adversarial

    raws = adversarial(seed=1, n_random=2000)
    decoded = decode_batch(raws, max_bytes=65536)
    rejected = [r.index for r in decoded.rejected]
    assert sorted(decoded.indices + rejected) == list(range(len(raws)))
    assert all(isinstance(r.reason, RejectReason) and r.message for r in decoded.rejected)
    by_index = {r.index: r.reason for r in decoded.rejected}
    assert by_index[raws.index(b"[" * 5000 + b"]" * 5000)] in {RejectReason.INVALID_JSON, RejectReason.NOT_AN_OBJECT}
    assert by_index[next(i for i, r in enumerate(raws) if r.startswith(b'{"event_id": "blob"'))] == RejectReason.OVERSIZE
    assert by_index[raws.index(b'{"event_id": "d", "amount": 1, "amount": 100000}')] == RejectReason.DUPLICATE_KEY
    for event in decoded.events:
        assert validate_event(event) is None


def _exact(value: object) -> tuple[str, object]:
    """A value with its type (``1 == 1.0`` in Python; the reading must keep ints ints)."""
    if isinstance(value, dict):
        return "dict", tuple(sorted((k, _exact(v)) for k, v in value.items()))
    if isinstance(value, list):
        return "list", tuple(_exact(v) for v in value)
    return type(value).__name__, value


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_numbers = st.one_of(st.integers(-(2**70), 2**70), st.integers(-(10**30), 10**30),
                     st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, 10**20]),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.sampled_from([9.3e18, -9.3e18, 1e19, 2.0**63, -(2.0**63), 1.5e300]))
_values = st.one_of(_numbers, st.text(max_size=5), st.booleans(), st.none(),
                    st.lists(_numbers, max_size=3), st.dictionaries(st.text(max_size=3), _numbers, max_size=2))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.text(max_size=6), _values, max_size=6))
def test_every_integer_is_read_exactly_whatever_its_size(obj: dict) -> None:
    """orjson reads integers beyond 64 bits as floats; ``parse_record`` re-reads those records with
    the stdlib, so each value is the one the text says: ints stay exact ints, floats stay floats."""
    import json

    from stream_detector.pipeline.decode import parse_record

    raw = json.dumps(obj).encode()
    parsed, problem = parse_record(raw)
    assert problem is None
    assert _exact(parsed) == _exact(json.loads(raw))


def test_invalid_json_and_invalid_utf8_say_what_they_are() -> None:
    """Found by a new-user trial: `this is not json` was dead-lettered with orjson's bare
    "invalid literal, expected 'true'", and bytes that are not UTF-8 with "str is not valid
    UTF-8: surrogates not allowed". The message now says what the record is not."""
    from stream_detector.feedback import decode_label
    from stream_detector.pipeline.decode import decode_batch

    values = [b"this is not json", b'{"event_id": "b\xff\xfe"}', b"\xef\xbb\xbf{}"]
    decoded = decode_batch(values, 65536)
    messages = [r.message for r in decoded.rejected]
    assert messages[0].startswith("not valid JSON: ")
    assert messages[1] == "not UTF-8 text: byte 0xff at byte 15 (counting from 0)"  # where it is, not "surrogates"
    assert messages[2].startswith("not valid JSON: it starts with a UTF-8 byte order mark (BOM)")
    assert [r.reason for r in decoded.rejected] == [RejectReason.INVALID_JSON] * 3
    assert [decode_label(v) for v in values] == [(RejectReason.INVALID_JSON, m) for m in messages]  # feedback alike


def test_an_event_whose_id_has_another_name_is_dead_lettered_with_that_name_and_what_to_do() -> None:
    """A worker's dead letter `missing_event_id: event_id is required` for every event of a producer
    that names its id `transaction_id` said nothing of it. The field's name (never a value) is said,
    and `produce --id-column`; an event with no such field keeps the short message."""
    for name in ("transaction_id", "TxnID", "Event_ID", "id"):
        problem = validate_event({name: "t-1", "amount": 3.5})
        assert problem is not None and problem[0] is RejectReason.MISSING_EVENT_ID
        assert f"the event has {name!r}: its id under another name?" in problem[1] and "t-1" not in problem[1]
        assert f"produce --id-column {name} renames it" in problem[1]
    assert validate_event({"account_id": "a1", "terminal_id": "t9"}) == (RejectReason.MISSING_EVENT_ID,
                                                                         "event_id is required")
    # trial J: an empty event_id was told to rename event_id to itself; a null one has no other name either
    assert validate_event({"event_id": "", "amount": 1.0}) == (RejectReason.MISSING_EVENT_ID,
                                                               "event_id is required: it is empty")
    assert validate_event({"event_id": None, "id": "x"}) == (RejectReason.MISSING_EVENT_ID, "event_id is required")


def test_messages_name_json_types_not_python_ones() -> None:
    """Trial J: a JSON ``null`` event was dead-lettered ``expected a JSON object, got NoneType``."""
    assert validate_event(None) == (RejectReason.NOT_AN_OBJECT, "expected a JSON object, got null")
    assert validate_event([1]) == (RejectReason.NOT_AN_OBJECT, "expected a JSON object, got array")
    assert validate_event({"event_id": 42}) == (RejectReason.WRONG_TYPE, "event_id must be a string, got integer")
    assert validate_event({"event_id": "e", "account_id": 1.5}) == (
        RejectReason.WRONG_TYPE, "account_id must be a string or integer, got number")
    assert validate_event({"event_id": "e", "account_id": True})[1].endswith("got boolean")  # type: ignore[index]
