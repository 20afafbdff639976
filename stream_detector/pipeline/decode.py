"""Step 2, decode: raw record values → typed event dicts, or rejections with a reason.

Guarantees: never raises on data; every input index ends up either in ``events`` or in
``rejected`` (exactly once); the rules are those of ``schema.Event`` (a unit test checks it), and
with the bundle's field schema every value is converted by its field's type
(``fieldschema.py``) — the same code types the rows of CSV, JSON Lines and Parquet files offline
(``inputs.py``), so a record scores the same from every input.

Record-level rules (``parse_record``): a null value (a tombstone) is ``tombstone``; larger than
``max_bytes`` is ``oversize``; a repeated key is ``duplicate_key`` whatever the whitespace around
it (a sound pre-check — every key ends in a quote, optional JSON whitespace and a colon, so a
record with no more such matches than keys cannot repeat one — then the stdlib parser's
``object_pairs_hook`` decides); NaN, Infinity and out-of-range numbers are ``non_finite_number``;
an integer beyond 64 bits is read exactly (stdlib parser), so a long numeric id keeps its digits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..fieldschema import JSON_TEXT, FieldSchema, TextFormat
from ..schema import Problem, RejectReason, validate_event
from ..transport.base import Unreadable as Unreadable  # a client's stand-in for a record it could not read

_KEY_END = re.compile(rb'"[ \t\n\r]*:')
_TWO_63 = 2.0 ** 63
_DIGITS_TO_NINE = bytes.maketrans(b"012345678", b"999999999")
_NINETEEN = b"9" * 19


@dataclass(frozen=True, slots=True)
class Rejected:
    """One record that cannot be scored: its index in the batch, the reason and a human message."""

    index: int
    reason: RejectReason
    message: str


@dataclass(slots=True)
class Decoded:
    """Valid events (in input order) with their batch indices, plus the rejections. ``events`` are
    typed by the schema (when one is given); ``received`` are the same events as they arrived
    (the same dict objects where nothing was converted): alerts carry those."""

    events: list[dict[str, Any]]
    indices: list[int]
    rejected: list[Rejected]
    received: list[dict[str, Any]]


def decode_batch(values: Sequence[bytes | None], max_bytes: int, first_index: int = 0,
                 schema: FieldSchema | None = None) -> Decoded:
    """Decode, validate and type a batch of Kafka record values; indices count from ``first_index``
    (the position of ``values[0]`` in its batch, when a chunk of one is decoded)."""
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


def parse_record(raw: bytes | None, max_bytes: int | None = None) -> tuple[Any, Problem | None]:
    """One record value → (parsed JSON value, None) or (None, (reason, message)); never raises."""
    if raw is None:
        return None, (RejectReason.TOMBSTONE, "null record value (a tombstone); the record key is kept")
    if type(raw) is Unreadable:
        return None, (RejectReason.UNREADABLE, raw.message)
    if max_bytes is not None and len(raw) > max_bytes:
        return None, (RejectReason.OVERSIZE, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, _classify_parse_error(raw, exc)
    if isinstance(obj, dict):
        if _may_repeat_keys(raw, obj):
            problem = _duplicate_key(raw)
            if problem is not None:
                return None, problem
        if _may_hold_big_int(raw, obj):  # orjson reads integers beyond 64 bits as floats: re-read them exactly
            obj = json.loads(raw)
    return obj, None


def _may_hold_big_int(raw: bytes, obj: dict[str, Any]) -> bool:
    """Whether ``raw`` may hold an integer orjson could not read exactly. orjson reads integers in
    [-2**63, 2**64) exactly and any other as a float of magnitude at least 2**63. Such an integer
    has 19 or more digits in a row: one C-level pass over the text (every digit made a 9, then a
    substring search) rules out almost every record; where it does not (a 19-digit id written as
    text, say), the values are walked for such a float (a float literal that large is given back
    unchanged by the stdlib's re-read). This replaced a regex that cost about 6 µs of an 11 µs
    decode per 700-byte record (measured by hand, benchmarks/RESULTS.md, *the decode step's
    big-integer check*) and missed negative 19-digit integers below -2**63."""
    return _NINETEEN in raw.translate(_DIGITS_TO_NINE) and _big_float(obj.values())


def _big_float(values: Any) -> bool:
    for value in values:
        kind = type(value)
        if kind is float:
            if not -_TWO_63 < value < _TWO_63:
                return True
        elif kind is dict:
            if _big_float(value.values()):
                return True
        elif kind is list and _big_float(value):
            return True
    return False


def type_events(objs: Sequence[Any], indices: Sequence[int], schema: FieldSchema | None, text: TextFormat,
                rejected: list[Rejected], from_json: bool = False) -> Decoded:
    """Validate parsed objects against the event contract, then convert them with ``schema``
    (``text``: the number format of text values). Rejections are appended to ``rejected``.
    ``from_json``: the objects come from ``parse_record`` (no non-finite floats in them)."""
    valid: list[dict[str, Any]] = []
    valid_indices: list[int] = []
    check_timestamp = schema is None or "timestamp" not in schema  # else the schema's converter checks it
    for i, obj in zip(indices, objs, strict=True):
        problem = validate_event(obj, from_json, check_timestamp)
        if problem is None:
            valid.append(obj)
            valid_indices.append(i)
        else:
            rejected.append(Rejected(i, problem[0], problem[1]))
    if schema is None:
        return Decoded(valid, valid_indices, rejected, valid)
    typed, problems = schema.convert(valid, text)
    if not problems:
        return Decoded(typed, valid_indices, rejected, valid)
    keep = [j for j in range(len(valid)) if j not in problems]
    for j, exc in problems.items():
        rejected.append(Rejected(valid_indices[j], exc.reason, str(exc)))
    return Decoded([typed[j] for j in keep], [valid_indices[j] for j in keep], rejected, [valid[j] for j in keep])


def _may_repeat_keys(raw: bytes, obj: dict[str, Any]) -> bool:
    """Sound pre-check for a repeated key: every key in the text ends in ``"``, optional JSON
    whitespace (space, tab, newline, carriage return) and ``:``. With no more such matches than
    keys parsed, no key can repeat; with more, it may (or a string value contains ``":``) and the
    stdlib parser decides. The first test is one C-level scan: too few colons for any repeat."""
    keys = len(obj)
    if raw.count(b":") <= keys:
        return False
    return len(_KEY_END.findall(raw)) > keys


def _duplicate_key(raw: bytes) -> Problem | None:
    seen: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        if len(set(names)) != len(names):
            seen.extend(sorted({k for k in names if names.count(k) > 1}))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    if seen:
        return RejectReason.DUPLICATE_KEY, f"repeated key(s): {', '.join(repr(k) for k in seen[:5])}"
    return None


def _classify_parse_error(raw: bytes, exc: Exception) -> Problem:
    """Tell non-finite numbers (NaN, Infinity, 1e400) apart from other invalid JSON."""
    message = str(exc)
    if "infinity" in message.lower():
        return RejectReason.NON_FINITE_NUMBER, message[:200]
    if b"NaN" in raw or b"Infinity" in raw:
        try:  # the stdlib accepts these non-standard literals; if it parses, that was the only problem
            json.loads(raw)
            return RejectReason.NON_FINITE_NUMBER, "NaN or Infinity is not a valid number"
        except (ValueError, RecursionError):
            pass
    return RejectReason.INVALID_JSON, message[:200]
