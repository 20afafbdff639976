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

Batch path (``decode_batch``): the same verdicts, messages, values and order as ``parse_record``
then ``type_events`` record by record (a property test compares the two), with less work per
record. Plain bytes within the limit are parsed inline (anything else goes to ``parse_record``);
the text pre-checks run as a few vectorised passes over the texts joined by a newline
(``_batch_checks``: colons against keys, then the byte before each colon; 16 digits in a row
found by 4-byte blocks), and only the texts they cannot rule out get the per-record check; the
event contract is checked a column at a time (``_all_valid``), and a batch it cannot clear is
validated record by record. Each shortcut's argument is in its docstring.

Flat reading (``decode_batch(lazy=True)``, the stateless worker's chunks): a batch whose events
carry just the schema's fields (and the contract's), unconverted, is read by a msgspec struct
per schema into columns, without one dict per event; ``events`` is a ``LazyEvents`` whose dicts
are parsed when read. Any other batch falls back to the batch path above (``_decode_flat``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from itertools import chain, repeat
from operator import attrgetter, itemgetter, or_
from typing import Any, overload

import msgspec
import numpy as np
import orjson

from ..fieldschema import JSON_TEXT, NATIVE_TYPES, FieldSchema, FieldType, TextFormat
from ..schema import SUPPORTED_SCHEMA_VERSIONS, Problem, RejectReason, not_json_message, validate_event
from ..transport.base import Unreadable as Unreadable  # a client's stand-in for a record it could not read

log = logging.getLogger(__name__)
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
_TWO_63 = 2.0 ** 63
_DIGITS_TO_NINE = bytes.maketrans(b"012345678", b"999999999")
_NINETEEN = b"9" * 19
_COLON, _OPEN_BRACE, _ZERO, _QUOTE, _SPACE = b':{0" '
_FOUR_DIGITS = 0x01010101  # four bytes of True
_GROUP = 512  # texts scanned at once: the buffers stay in cache (8,192 at once: about 2.5x the time per text)
_INDEX = attrgetter("index")
_DICT = frozenset({dict})
_TEXT = frozenset({str})
_ACCOUNT_TYPES = frozenset({str, int, type(None)})
_VERSION_TYPES = frozenset({int, type(None)})
_VERSIONS = SUPPORTED_SCHEMA_VERSIONS | {None}
_NUMBER_TYPES = frozenset({int, float, type(None)})
_CONTRACT_FIELDS = ("event_id", "account_id", "schema_version", "timestamp")  # read by the event contract


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
    (the same dict objects where nothing was converted): alerts carry those. ``columns``: fields
    the schema's converter read and left as they were, {field: one value per event of ``events``,
    as ``event.get(field)`` reads it} (``FieldSchema.convert_columns``), for the enrich and
    feature steps to read instead of the dicts; empty without a schema or when a record was
    refused by it."""

    events: Sequence[dict[str, Any]]  # a list, or with ``lazy`` a ``LazyEvents``
    indices: list[int]
    rejected: list[Rejected]
    received: Sequence[dict[str, Any]]
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)


def decode_batch(values: Sequence[bytes | None], max_bytes: int, first_index: int = 0,
                 schema: FieldSchema | None = None, lazy: bool = False) -> Decoded:
    """Decode, validate and type a batch of Kafka record values; indices count from ``first_index``
    (the position of ``values[0]`` in its batch, when a chunk of one is decoded).

    The same verdicts, messages, values and order as ``parse_record`` then ``type_events`` record
    by record, with less work per record: plain bytes within the limit are parsed inline, the text
    pre-checks run as vectorised passes over the batch's texts (``_batch_checks``), and the event
    contract is checked column by column (``_all_valid``); anything else goes to the per-record
    functions.

    ``lazy`` (with ``schema``): first try the flat reading (``_decode_flat``): a batch of valid
    events whose fields are all the schema's and need no conversion is read into ``columns``
    without one dict per event, and ``events`` (= ``received``) is a ``LazyEvents`` that parses
    an event's dict when it is read. Any other batch is decoded as above; the result is the same
    either way (a property test compares them)."""
    if lazy and schema is not None:
        flat = _decode_flat(values, max_bytes, first_index, schema)
        if flat is not None:
            return flat
    loads = orjson.loads
    objs: list[Any] = []
    indices: list[int] = []
    rejected: list[Rejected] = []
    texts: list[bytes | None] = []  # each parsed value's text; None where parse_record decided it all
    decided = 0
    for i, raw in enumerate(values, first_index):
        if type(raw) is bytes and len(raw) <= max_bytes:
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError as exc:
                rejected.append(Rejected(i, *_classify_parse_error(raw, exc)))
                continue
            texts.append(raw)
        else:  # a tombstone, an Unreadable, an oversize value or another type: the per-record rules
            obj, problem = parse_record(raw, max_bytes)
            if problem is not None:
                rejected.append(Rejected(i, problem[0], problem[1]))
                continue
            texts.append(None)
            decided += 1
        objs.append(obj)
        indices.append(i)
    whole = decided == 0 and _DICT.issuperset(map(type, objs))  # every object parsed here, from plain bytes
    if whole:
        at: Sequence[int] = range(len(objs))
        checks = _batch_checks(texts, objs)  # type: ignore[arg-type]  # no None in texts
    else:  # parse_record's pre-checks apply to objects only, and it has run them on what it decided
        at = [j for j, obj in enumerate(objs) if texts[j] is not None and isinstance(obj, dict)]
        checks = _batch_checks([texts[j] for j in at], [objs[j] for j in at])  # type: ignore[misc]
    for k, obj in checks.reread.items():
        objs[at[k]] = obj
    if checks.refused:
        drop = {at[k] for k, _ in checks.refused}
        rejected.extend(Rejected(indices[at[k]], reason, message) for k, (reason, message) in checks.refused)
        rejected.sort(key=_INDEX)  # as the per-record loop: the parse verdicts in input order
        objs = [obj for j, obj in enumerate(objs) if j not in drop]
        indices = [i for j, i in enumerate(indices) if j not in drop]
    check_timestamp = schema is None or "timestamp" not in schema  # else the schema's converter checks it
    if whole and checks.flat and _all_valid(objs, checks.reread.values(), check_timestamp):
        return _typed(objs, indices, schema, JSON_TEXT, rejected)
    return type_events(objs, indices, schema, JSON_TEXT, rejected, from_json=True)


@dataclass(slots=True)
class _Checks:
    """``parse_record``'s text pre-checks over a batch of JSON object texts (by position)."""

    refused: list[tuple[int, Problem]]  # refused after the parse: a repeated key, or too deep to re-read exactly
    reread: dict[int, dict[str, Any]]  # texts with an integer beyond 64 bits: the stdlib's exact reading
    flat: bool  # one "{" or "[" per text: no object has a nested value
    digits: list[int] = field(default_factory=list)  # without objects: the texts with 16 digits in a row


def _batch_checks(texts: Sequence[bytes], objs: Sequence[dict[str, Any]] | None,
                  keys: np.ndarray | None = None) -> _Checks:
    """``parse_record``'s checks after orjson, for each (text, its parsed object): a few vectorised
    passes over ``_GROUP`` texts at a time joined by a newline (neither a colon nor a digit nor a
    bracket, so no match spans two texts), in place of one or two C-level passes per text.
    Without ``objs`` (the flat reading, ``_decode_flat``): ``keys`` gives each text's number of
    distinct keys, and integers beyond 64 bits are not looked for (msgspec reads them exactly).

    Repeated keys: ``_may_repeat_keys`` is false for a text with no more colons than its object's
    keys. Every key in a JSON text is followed by its own colon, so a text has at least as many
    colons as key occurrences, which are at least its object's (distinct) keys: each text's excess
    of colons is zero or more. When a group's colons are no more than its objects' keys, every
    excess is zero and no text needs the check. Otherwise the colons are counted per text, by the
    byte before them: ``_may_repeat_keys``'s matches are quotes followed by JSON whitespace and a
    colon, so in a text with no colon right after whitespace (any byte up to 0x20) they are the
    colons right after a quote, and with no more of those than keys it is false. It (then
    ``_duplicate_key``) runs for each other text: more colons after a quote than keys (a repeat,
    or a string holding ``":``), or whitespace before a colon.

    Integers beyond 64 bits: ``_may_hold_big_int`` needs 19 digits in a row in the text. Such a
    run holds four whole 4-byte blocks aligned to a multiple of 4 (the first such block starts
    within its first 4 bytes, the fourth ends within its first 19), so only the texts holding 16
    digits from a multiple of 4 (found in one pass over 4-byte blocks) are checked, by
    ``_may_hold_big_int`` itself.

    ``flat``: each group holds one "{" or "[" per text. Every text is an object (its own "{"); a
    nested object or array adds a "{" or "[" of its own (brackets inside strings only add to the
    count), so with one per text every object's values are scalars."""
    checks = _Checks([], {}, True)
    for start in range(0, len(texts), _GROUP):
        end = start + _GROUP
        _scan(texts[start:end], objs[start:end] if objs is not None else None,
              keys[start:end] if keys is not None else None, start, checks)
    return checks


def _scan(texts: Sequence[bytes], objs: Sequence[dict[str, Any]] | None, keys: np.ndarray | None, first: int,
          checks: _Checks) -> None:
    """``_batch_checks`` on one group of texts, the first at position ``first``: adds to ``checks``."""
    data = np.frombuffer(b"\n".join(texts), np.uint8)
    ends = np.cumsum(np.fromiter(map(len, texts), np.intp, len(texts)) + 1)  # text k ends before ends[k] - 1
    work = np.empty(data.size, np.uint8)  # one scratch buffer for every pass (each fresh one costs page faults)
    flags = work.view(np.bool_)
    refused = checks.refused
    total = int(keys.sum()) if keys is not None else sum(map(len, objs or ()))
    if np.count_nonzero(np.equal(data, _COLON, out=flags)) > total:
        colons = np.flatnonzero(flags)
        before = data[colons - 1]  # no text starts with a colon
        if keys is None:
            keys = np.fromiter(map(len, objs or ()), np.intp, len(texts))
        quoted = np.diff(np.searchsorted(colons[before == _QUOTE], ends), prepend=0)
        spaced = np.diff(np.searchsorted(colons[before <= _SPACE], ends), prepend=0)
        for k in np.flatnonzero((quoted > keys) | (spaced > 0)).tolist():
            if _may_repeat_keys(texts[k], int(keys[k])):
                problem = _duplicate_key(texts[k])
                if problem is not None:
                    refused.append((first + k, problem))
    np.bitwise_or(data, 0x20, out=work)  # "[" (0x5b) becomes "{" (0x7b); no other byte does
    checks.flat = checks.flat and np.count_nonzero(np.equal(work, _OPEN_BRACE, out=flags)) == len(texts)
    np.less(np.subtract(data, _ZERO, out=work), 10, out=flags)  # the digits
    quads = flags[: data.size & ~3].view(np.uint32) == _FOUR_DIGITS  # 4 digits from 4q
    spans = quads[:-1] & quads[1:]
    spans = spans[:-2] & spans[2:]  # 16 digits from 4q
    if spans.any():
        found = np.unique(np.searchsorted(ends, np.flatnonzero(spans) * 4, side="right")).tolist()
        if objs is None:  # the flat reading looks at these texts' values itself
            checks.digits.extend(first + k for k in found)
            return
        skip = {k for k, _ in refused}
        for k in found:
            if first + k not in skip and _may_hold_big_int(texts[k], objs[k]):
                exact, problem = _read_exactly(texts[k])
                if problem is None:
                    checks.reread[first + k] = exact
                else:
                    refused.append((first + k, problem))


def _all_valid(objs: Sequence[Any], reread: Iterable[dict[str, Any]], check_timestamp: bool) -> bool:
    """Whether ``validate_event(obj, True, check_timestamp)`` is None for every object, for objects
    that orjson read from texts with no nested value (``_Checks.flat``) — except ``reread``, those
    among them the stdlib re-read, each checked with ``validate_event``. The rules a column at a
    time (``_valid_columns``; orjson's numbers are finite and within 64 bits)."""
    if not objs:
        return True
    if not _DICT.issuperset(map(type, objs)):
        return False
    get = dict.get
    names = _CONTRACT_FIELDS if check_timestamp else _CONTRACT_FIELDS[:3]  # timestamp: the contract's last field
    read = {name: list(map(get, objs, repeat(name))) for name in names}
    kinds = {name: set(map(type, column)) for name, column in read.items()}
    if not _valid_columns(read, kinds, check_timestamp):
        return False
    return all(validate_event(obj, True, check_timestamp) is None for obj in reread)


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
        if _may_repeat_keys(raw, len(obj)):
            problem = _duplicate_key(raw)
            if problem is not None:
                return None, problem
        if _may_hold_big_int(raw, obj):  # orjson reads integers beyond 64 bits as floats: re-read them exactly
            return _read_exactly(raw)
    return obj, None


def _read_exactly(raw: bytes) -> tuple[Any, Problem | None]:
    """The stdlib's reading of ``raw`` (integers of any size exact). It recurses once per level of
    nesting: a text orjson read but nested too deeply for it is rejected, not raised."""
    try:
        return json.loads(raw), None
    except RecursionError:
        return None, (RejectReason.INVALID_JSON, "nested too deeply to read its integers beyond 64 bits exactly")


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
    """Whether a float of magnitude at least 2**63 is among ``values`` or nested in them; a stack
    of iterators, not recursion (orjson accepts nesting deeper than Python's recursion limit)."""
    stack = [iter(values)]
    while stack:
        for value in stack[-1]:
            kind = type(value)
            if kind is float:
                if not -_TWO_63 < value < _TWO_63:
                    return True
            elif kind is dict:
                stack.append(iter(value.values()))
                break
            elif kind is list:
                stack.append(iter(value))
                break
        else:
            stack.pop()
    return False


def type_events(objs: Sequence[Any], indices: Sequence[int], schema: FieldSchema | None, text: TextFormat,
                rejected: list[Rejected], from_json: bool = False, check_timestamp: bool | None = None) -> Decoded:
    """Validate parsed objects against the event contract, then convert them with ``schema``
    (``text``: the number format of text values). Rejections are appended to ``rejected``.
    ``from_json``: the objects come from ``parse_record`` (no non-finite floats in them).
    ``check_timestamp``: check ``timestamp`` by the contract's rule (default: when ``schema``
    does not type it; False: leave it to the consumer's schema)."""
    valid: list[dict[str, Any]] = []
    valid_indices: list[int] = []
    if check_timestamp is None:
        check_timestamp = schema is None or "timestamp" not in schema  # else the schema's converter checks it
    for i, obj in zip(indices, objs, strict=True):
        problem = validate_event(obj, from_json, check_timestamp)
        if problem is None:
            valid.append(obj)
            valid_indices.append(i)
        else:
            rejected.append(Rejected(i, problem[0], problem[1]))
    return _typed(valid, valid_indices, schema, text, rejected)


def _typed(valid: list[dict[str, Any]], valid_indices: list[int], schema: FieldSchema | None, text: TextFormat,
           rejected: list[Rejected]) -> Decoded:
    """Valid events (and their indices) converted with ``schema``; its rejections appended."""
    if schema is None:
        return Decoded(valid, valid_indices, rejected, valid)
    typed, problems, columns = schema.convert_columns(valid, text)
    if not problems:
        return Decoded(typed, valid_indices, rejected, valid, columns)
    keep = [j for j in range(len(valid)) if j not in problems]
    for j, exc in problems.items():
        rejected.append(Rejected(valid_indices[j], exc.reason, str(exc)))
    return Decoded([typed[j] for j in keep], [valid_indices[j] for j in keep], rejected, [valid[j] for j in keep],
                   _rows(columns, keep))


def _rows(columns: dict[str, Sequence[Any]], keep: list[int]) -> dict[str, Sequence[Any]]:
    """``columns`` at the rows ``keep`` only (one C-level ``itemgetter`` per column)."""
    if len(keep) < 2:
        return {name: [column[j] for j in keep] for name, column in columns.items()}
    pick = itemgetter(*keep)
    return {name: pick(column) for name, column in columns.items()}


def _may_repeat_keys(raw: bytes, keys: int) -> bool:
    """Sound pre-check for a repeated key, given the number of distinct ``keys`` parsed from
    ``raw``: every key in the text ends in ``"``, optional JSON whitespace (space, tab, newline,
    carriage return) and ``:``. With no more such matches than keys parsed, no key can repeat;
    with more, it may (or a string value contains ``":``) and the stdlib parser decides. The first
    test is one C-level scan: too few colons for any repeat."""
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
    return RejectReason.INVALID_JSON, not_json_message(raw, message)


# ---- the flat reading: a batch's fields as columns, without one dict per event ----------------------

_UNSET_TYPE = type(msgspec.UNSET)
_INT64_MIN, _UINT64_END = -(2 ** 63), 2 ** 64  # the integers orjson reads exactly
_BYTES = frozenset({bytes})
_NATIVE_ORDER = [int, float, bool, str, type(None)]  # a union's members in a fixed order
_MAX_SKIP = 64  # batches decoded the usual way after repeated misses, at most, before the flat reading is tried again
_MAX_LEARNED = 64  # keys a schema's flat reader learns from the stream (extra ones, fields left out), at most
_RELEARN = 8  # times one batch's msgspec pass is tried again with what its error showed, at most


class _FlatReader:
    """One field schema's flat reading (``_decode_flat``): a msgspec struct of every field the
    schema names plus the event contract's. A field of the schema is required and typed as the
    values it keeps unconverted (``fieldschema.NATIVE_TYPES``: a number ``int | float | None``, a
    category or identifier ``str | None``, a boolean ``bool | None``, a timestamp a number),
    checked by msgspec in C (strict: no coercion); an ignored field and a contract field the
    schema does not name are optional JSON values (``UNSET`` when missing); any other key is an
    error (``forbid_unknown_fields``). So a struct holds every key of its text, and the number of
    fields set is its number of distinct keys.

    What the stream showed it learns (``learned``, ``_decode_flat``): ``extra`` are keys the schema
    does not name that its events carry (a producer's field the model does not use: optional JSON
    values, like an ignored field), ``lenient`` are fields of the schema its events may leave out
    (a producer that omits nulls: optional, read as None, as the usual decode's ``event.get``). So
    such a stream is read flat too; before 2026-12-05 one extra field sent every batch to the usual
    decode (measured: 52 ms instead of 32 ms per 8,192 of the benchmark's events).

    ``skip``: batches left to decode the usual way. A batch the flat reading cannot take (a bad
    record, a value to convert, a field it has not learned or may not learn) costs its
    msgspec pass on top of the usual decode; after ``k`` such batches in a row the next
    ``2**k - 1`` (at most ``_MAX_SKIP``) skip it, so a stream it never fits pays that pass on about
    one batch in 65."""

    def __init__(self, schema: FieldSchema, extra: tuple[str, ...] = (), lenient: frozenset[str] = frozenset()) -> None:
        self.schema, self.extra, self.lenient = schema, extra, lenient
        fields: list[tuple[str, Any, Any]] = []
        self.declared: dict[str, frozenset[type]] = {}  # a required field's value types, as msgspec checks them
        for rule in schema.fields:
            number = NATIVE_TYPES[FieldType.NUMBER]
            native = NATIVE_TYPES.get(rule.type, number if rule.type is FieldType.TIMESTAMP else None)
            if native is None:  # ignored: any JSON value, or none
                fields.append((rule.name, object, msgspec.UNSET))
            elif rule.name in lenient:  # typed as ever, may be left out: its value types read per batch
                kind = reduce(or_, sorted(native, key=_NATIVE_ORDER.index))
                fields.append((rule.name, kind | msgspec.UnsetType, msgspec.UNSET))
            else:
                fields.append((rule.name, reduce(or_, sorted(native, key=_NATIVE_ORDER.index)), msgspec.NODEFAULT))
                self.declared[rule.name] = native
        fields += [(name, object, msgspec.UNSET) for name in _CONTRACT_FIELDS if name not in schema]
        fields += [(name, object, msgspec.UNSET) for name in extra]
        self.names = tuple(name for name, _, _ in fields)
        self.optional = [j for j, (name, _, _) in enumerate(fields) if name not in self.declared]
        attrs = [f"f{j}" for j in range(len(fields))]  # field names need not be Python identifiers
        struct = msgspec.defstruct(  # kw_only: a required field may follow an optional one (an ignored field)
            "FlatEvent", [(a, kind, default) for a, (_, kind, default) in zip(attrs, fields, strict=True)],
            rename=dict(zip(attrs, self.names, strict=True)), forbid_unknown_fields=True, kw_only=True)
        self.decode = msgspec.json.Decoder(struct).decode
        self.misses = 0
        self.skip = 0

    def missed(self) -> None:
        self.misses = min(self.misses + 1, 7)
        self.skip = min(2 ** self.misses - 1, _MAX_SKIP)

    def learned(self, error: msgspec.DecodeError) -> _FlatReader | None:
        """This reader and what ``error`` shows the stream's events to have: a key the schema does
        not name (msgspec: "Object contains unknown field `NAME`") or a field of the schema left
        out ("Object missing required field `NAME`"), at the top of the object; None for any
        other error, a name msgspec cannot take (``_UNNAMEABLE``) or past ``_MAX_LEARNED`` names."""
        message = str(error)
        if not message.endswith("`") or len(self.extra) + len(self.lenient) >= _MAX_LEARNED:
            return None
        for prefix, unknown in (("Object contains unknown field `", True), ("Object missing required field `", False)):
            if not message.startswith(prefix):
                continue
            name = message[len(prefix):-1]  # a top-level field: no " - at `$...`" path follows the name
            if _UNNAMEABLE.search(name) or (name in self.names if unknown else name not in self.declared):
                return None
            reader = (_FlatReader(self.schema, (*self.extra, name), self.lenient) if unknown
                      else _FlatReader(self.schema, self.extra, self.lenient | {name}))
            reader.misses, reader.skip = self.misses, self.skip
            return reader
        return None


# by id(schema); the schema kept so that its id stays its own
_READERS: dict[int, tuple[FieldSchema, _FlatReader | None]] = {}
_UNNAMEABLE = re.compile(r'["\\\x00-\x1f]')  # msgspec cannot rename a field to a name holding these


def _reader(schema: FieldSchema) -> _FlatReader | None:
    """The schema's flat reader, made once; None where msgspec cannot name its fields (a field
    name holding ``"``, ``\\`` or a control character: legal JSON keys, read the usual way)."""
    got = _READERS.get(id(schema))
    if got is not None and got[0] is schema:
        return got[1]
    if len(_READERS) >= 16:  # a worker holds a champion and a challenger; tests make many
        _READERS.clear()
    reader = None
    if not any(_UNNAMEABLE.search(rule.name) for rule in schema.fields):
        try:
            reader = _FlatReader(schema)
        except (TypeError, ValueError):  # a schema msgspec cannot make a struct of: the usual path, still right
            log.warning("the decode step's flat reading is off for this model's field schema", exc_info=True)
    _READERS[id(schema)] = (schema, reader)
    return reader


def _decode_flat(values: Sequence[bytes | None], max_bytes: int, first: int, schema: FieldSchema) -> Decoded | None:
    """``decode_batch`` for a batch in which every record is a valid event that ``schema``
    leaves as it is, read without one dict per event; None for any other batch (the caller
    decodes it the usual way, which names each problem). Measured: about half the time of the
    usual decode of the benchmark's 30-field events (``benchmarks/RESULTS.md``, *the decode step
    read flat*).

    Each text is read into a ``_FlatReader`` struct (msgspec, C: no dict, no value object for
    nothing), the structs transposed into one tuple per field, and ``decode_batch``'s rules
    checked on those: the text pre-checks of ``_batch_checks`` with each text's distinct keys
    counted from its struct (a repeated key, a nested value: None); an integer beyond 64 bits
    (orjson reads it as a float, the usual path re-reads it exactly): None, so those rules stay in
    one place; the event contract column by column (``_all_valid``'s rules); the schema's
    conversions (``FieldSchema.unconverted``). A text msgspec refuses (not JSON, not an object, a
    key the schema does not name, a number out of range, bad UTF-8, too deep): None."""
    reader = _reader(schema)
    if reader is None:
        return None
    if reader.skip:
        reader.skip -= 1
        return None
    n = len(values)
    if not n or not _BYTES.issuperset(map(type, values)) or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
        return None
    texts: Sequence[bytes] = values  # type: ignore[assignment]  # bytes only, checked above
    for attempt in range(_RELEARN + 1):
        try:
            structs = list(map(reader.decode, texts))
            break
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            wiser = reader.learned(exc) if attempt < _RELEARN else None
            if wiser is None:
                reader.missed()
                return None
            reader = wiser
            _READERS[id(schema)] = (schema, reader)
        except RecursionError:  # too deep
            reader.missed()
            return None
    names = reader.names
    columns: list[Sequence[Any]] = list(zip(*map(msgspec.structs.astuple, structs), strict=True))
    kinds: dict[str, frozenset[type] | set[type]] = dict(reader.declared)
    keys = np.full(n, len(names), np.intp)
    for j in reader.optional:  # an ignored or contract field: some events may lack it, read as None
        kinds[names[j]] = kind = set(map(type, columns[j]))
        if _UNSET_TYPE in kind:
            keys -= np.fromiter((value is msgspec.UNSET for value in columns[j]), np.bool_, n)
            columns[j] = [None if value is msgspec.UNSET else value for value in columns[j]]
            kind.discard(_UNSET_TYPE)
            kind.add(type(None))
    checks = _batch_checks(texts, None, keys)
    if checks.refused or not checks.flat or _beyond_64_bits(texts, structs, checks.digits):
        reader.missed()
        return None
    read = dict(zip(names, columns, strict=True))
    kinds["event_id"] = set(map(type, read["event_id"]))  # text, not null: an identifier field may be null
    if not _valid_columns(read, kinds, "timestamp" not in schema):
        reader.missed()
        return None
    kept = schema.unconverted(read, n, kinds)
    if kept is None:
        reader.missed()
        return None
    reader.misses = 0
    events = LazyEvents(texts)
    return Decoded(events, list(range(first, first + n)), [], events, kept)


def _beyond_64_bits(texts: Sequence[bytes], structs: Sequence[Any], digits: Iterable[int]) -> bool:
    """Whether a struct holds an integer orjson would not read exactly (below -2**63 or from
    2**64). Such an integer has 19 digits in a row, so only the texts ``digits`` (16 in a row,
    ``_batch_checks``) and of those the ones with 19 (``_may_hold_big_int``'s pass) can; their
    values are then looked at."""
    for k in digits:
        if _NINETEEN in texts[k].translate(_DIGITS_TO_NINE):
            for value in msgspec.structs.astuple(structs[k]):
                if type(value) is int and not _INT64_MIN <= value < _UINT64_END:
                    return True
    return False


def _valid_columns(read: Mapping[str, Sequence[Any]], kinds: Mapping[str, Iterable[type]],
                   check_timestamp: bool) -> bool:
    """The event contract's rules a column at a time (``_all_valid``'s and the flat reading's; no
    nested value: checked before): an ``event_id`` that is text of 1 to 512 characters; an ``account_id`` that is
    missing, text or an integer; a known ``schema_version`` or none; with ``check_timestamp``,
    a ``timestamp`` that is missing or a number."""
    ids = read["event_id"]
    if not _TEXT.issuperset(kinds["event_id"]) or min(map(len, ids)) == 0 or max(map(len, ids)) > 512:
        return False
    if not _ACCOUNT_TYPES.issuperset(kinds["account_id"]):
        return False
    if not _VERSION_TYPES.issuperset(kinds["schema_version"]) or not _VERSIONS.issuperset(read["schema_version"]):
        return False
    return not check_timestamp or _NUMBER_TYPES.issuperset(kinds["timestamp"])


class LazyEvents(Sequence[dict[str, Any]]):
    """The events of a batch the flat reading took (``_decode_flat``), each parsed to its dict
    the first time it is read: the worker reads the alerted ones and a sample (about 1%), not
    the rest. ``events[i]`` is what the usual decode gives for that text (``parse_record``: orjson,
    integers beyond 64 bits exact, keys in the text's order); a slice or ``take`` is another
    ``LazyEvents`` over the same texts. Read from one thread (the worker's)."""

    __slots__ = ("_texts", "_parsed")

    def __init__(self, texts: Sequence[bytes]) -> None:
        self._texts = texts
        self._parsed: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> LazyEvents: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | LazyEvents:
        if isinstance(index, slice):
            return LazyEvents(self._texts[index])
        if index < 0:
            index += len(self._texts)
            if index < 0:
                raise IndexError("LazyEvents index out of range")
        event = self._parsed.get(index)
        if event is None:
            obj, problem = parse_record(self._texts[index])  # raises IndexError past the end
            if problem is not None or not isinstance(obj, dict):  # msgspec took a text orjson refuses: a bug
                raise RuntimeError(f"the flat reading took a record the usual decode refuses: {problem}")
            event = self._parsed[index] = obj
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self.__getitem__, range(len(self._texts)))

    def take(self, rows: Iterable[int]) -> LazyEvents:
        """The events at ``rows`` (in that order), still unparsed."""
        texts = self._texts
        return LazyEvents([texts[row] for row in rows])

    @staticmethod
    def concat(parts: Sequence[LazyEvents]) -> LazyEvents:
        """One ``LazyEvents`` of ``parts`` in order."""
        return LazyEvents(list(chain.from_iterable(part._texts for part in parts)))
