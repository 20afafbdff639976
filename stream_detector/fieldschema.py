"""The field schema: one type per input field, fitted at training, stored in the bundle, applied by
ONE converter to CSV cells, JSON Lines values, Parquet values and Kafka records alike.

Why: a reader that guesses types on its own turns the same event into different features — a
CSV ``True`` learnt as a category string and a JSON ``true`` scored as an unseen value flags every
live event. Here a field's type is decided once, from the training rows, by the rules below
(printed by ``train``, overridable with ``--schema FILE`` / ``--field NAME=TYPE``), and every value
of every input is converted by the rule of its field's type — or rejected with a reason.

Types and conversion rules (``convert``):

=============  =========================================================  ==============================
type           accepted (→ converted to)                                   anything else
=============  =========================================================  ==============================
``number``     JSON numbers; text written as a number in the reader's      ``wrong_type`` (a boolean is
               format (decimal mark, thousands groups of three) → float    not a number); ``1e400`` →
                                                                           ``non_finite_number``
``boolean``    ``true``/``false``; ``1``/``0`` as numbers or text; text    ``wrong_type``
               ``true``/``false`` in any case → bool (a 0/1 feature)
``category``   text; numbers → their JSON text; booleans → ``true``/      —
               ``false`` (so CSV ``5`` and JSON ``5`` are one category)
``identifier`` text (kept exactly, leading zeros included); integers →     ``wrong_type``; never a feature
               their digits (exact, 19+ digits too)
``timestamp``  RFC 3339 text (naive = UTC); epoch numbers (or numeric      ``invalid_timestamp``;
               text) in the field's ``unit`` — ``auto``: by magnitude,    outside the plausible range →
               < 1e11 seconds, < 1e14 ms, < 1e17 µs, else ns → epoch ms   ``implausible_timestamp``
``ignored``    any flat value, untouched; never a feature                  —
=============  =========================================================  ==============================

Missing values (JSON ``null``, a CSV cell that is one of the reader's missing-value markers) stay
missing for every type; features impute them (``features.py``). A field the schema does not know
(new in live traffic) is passed through untouched and is not a feature.

**No input field, no score** (``no_features``): an event in which none of the model's input fields
(``FieldSchema.input_fields``: the fields its features are computed from) has a value is rejected,
never scored on imputed values alone — a producer writing ``amt`` to a model trained on ``amount``
gets dead letters saying so, not quiet scores. A field present with a null value (or a CSV
missing-value marker) counts as absent, as it is missing to the features; an event with at least one
input field holding a value is converted and imputed as before. The check comes after the values'
conversion: a row with a value that does not convert keeps that reason.

**Plausible timestamps**: within ``plausible_years`` (10) of the training rows' time range; when
training saw no timestamps, 1990-01-01 .. 2100-01-01; and never more than ``FUTURE_MS`` (a day)
ahead of the reading machine's clock. A value outside is dead-lettered, never scored as a date in
1970 nor allowed to move an entity's history clock years ahead.

Inference rules (``infer_schema``), first match wins, each printed with its reason:

1. ``event_id``, the ``--id-column``, ``account_id``, entity keys, and names like an id (``id``,
   ``*_id``, ``*-id``, camel-case ``TransactionID`` / ``customerId``) → ``identifier``;
   ``timestamp`` → ``timestamp``; ``schema_version``, the label column and ``--exclude`` fields →
   ``ignored``.
2. no value present → ``ignored`` ("no values").
3. every value a boolean (``true``/``false`` in any case, or ``0``/``1`` beside at least one of
   those) → ``boolean``; a column of only 0 and 1 is a ``number`` (a count can be 0 or 1 in training).
4. every value a number: integers with a leading zero (``007``) or more than 15 digits →
   ``identifier`` (digits that a float cannot hold are a code, not an amount); (4b) epoch seconds or
   ms of 2001-2099 under a name ending in a time word → ``ignored``, with a warning; (4c) a run of
   ``COUNTER_MIN_ROWS`` increasing distinct integers is warned of (``_number_rule``); (4d) under a
   name ending in a time word (after unit words, days and hours among them), values that never
   decrease over the file's rows (at least ``COUNTER_MIN_ROWS``, ``CLOCK_MIN_DISTINCT`` distinct):
   a clock such as the Handbook's ``TX_TIME_SECONDS`` and ``TX_TIME_DAYS`` → ``ignored``, with a
   warning (a trial: kept as features, a model trained on two weeks flagged 17.5 % of the third);
   else ``number``.
5. at least 98 % numbers and the rest text → ``number``; the text values' rows are reported (field,
   count, examples) and left out of training, as a live event with them is rejected. Likewise at
   least 98 % true/false (or 0/1 beside them) and the rest text → ``boolean``.

Nested values (JSON objects and arrays) do not count: their rows are rejected whatever the type.
6. every value RFC 3339 text → ``timestamp`` (not a feature).
7. otherwise ``category`` — unless more than half the values are distinct and there are more than
   ``max_categories`` of them: ``identifier`` (one-hot would only memorise ids).

The converter works on batches: per field, one C-level pass finds the set of value types in the
column, and only a column whose types do not already match its field's type is converted value by
value (native JSON from Kafka usually matches: no per-value work on the hot path).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .schema import RESERVED_FIELDS, RejectReason, json_type, parse_timestamp_ms

SCHEMA_FORMAT = 1
NUMERIC_SHARE = 0.98  # rule 5
PLAUSIBLE_YEARS = 10.0
_YEAR_MS = 365.25 * 86_400_000.0
# An event time more than this ahead of the reading machine's clock is implausible whatever the
# training range (Kafka's brokers refuse records more than an hour ahead by default,
# ``message.timestamp.after.max.ms``; a day leaves room for skewed clocks upstream). Accepted, one
# such event moved its account's history clock years ahead, and the late-event rule then clamped
# every later event of the account to it.
FUTURE_MS = 86_400_000.0
_DEFAULT_RANGE_MS = (631_152_000_000.0, 4_102_444_800_000.0)  # 1990-01-01 .. 2100-01-01 UTC
_MAX_EXACT_INT = 2**53
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TEXT_OR_NONE = frozenset({str, type(None)})
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}
_UNIT_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
TIMESTAMP_UNITS = ("auto", *_UNIT_MS)


class FieldType(StrEnum):
    NUMBER = "number"
    BOOLEAN = "boolean"
    CATEGORY = "category"
    TIMESTAMP = "timestamp"
    IDENTIFIER = "identifier"
    IGNORED = "ignored"


FEATURE_TYPES = frozenset({FieldType.NUMBER, FieldType.BOOLEAN, FieldType.CATEGORY})
_NUMERIC_TEXT = frozenset({FieldType.NUMBER, FieldType.TIMESTAMP})  # types a plain-number text column may hold
# value types that already are what the field's type converts to: such a column is left as it is
NATIVE_TYPES: dict[FieldType, frozenset[type]] = {
    FieldType.NUMBER: frozenset({int, float, type(None)}),
    FieldType.BOOLEAN: frozenset({bool, type(None)}),
    FieldType.CATEGORY: frozenset({str, type(None)}),
    FieldType.IDENTIFIER: frozenset({str, type(None)}),
}


class ConversionError(ValueError):
    """One value does not fit its field's type; ``reason`` is the dead-letter reason."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TextFormat:
    """How numbers are written in text: the decimal mark and the thousands separator (``None``:
    none accepted). A grouped number must have groups of exactly three digits (``1,234.56``), so
    ``1,5`` is never read as fifteen. JSON strings use ``JSON_TEXT``."""

    decimal: str = "."
    thousands: str | None = ","

    def __post_init__(self) -> None:
        if len(self.decimal) != 1 or self.decimal.isdigit() or self.decimal in "+-":
            raise ValueError(f"decimal mark must be one non-digit character, got {self.decimal!r}")
        if self.thousands is not None and (self.thousands == self.decimal or self.thousands.isdigit()
                                           or len(self.thousands) != 1):
            raise ValueError(f"thousands separator must be one character other than the decimal mark, "
                             f"got {self.thousands!r}")
        dec, sep = re.escape(self.decimal), re.escape(self.thousands or "")
        grouped = rf"|\d{{1,3}}(?:{sep}\d{{3}})+" if self.thousands else ""
        object.__setattr__(self, "_pattern", re.compile(
            rf"^[+-]?(?:(?:\d+{grouped})(?:{dec}\d*)?|{dec}\d+)(?:[eE][+-]?\d+)?$"))

    def parse(self, text: str) -> float | None:
        """The number written in ``text`` (surrounding spaces ignored), or ``None`` when it is not one."""
        stripped = text.strip()
        if not self._pattern.match(stripped):  # type: ignore[attr-defined]
            return None
        if self.thousands:
            stripped = stripped.replace(self.thousands, "")
        return float(stripped.replace(self.decimal, ".")) if self.decimal != "." else float(stripped)


JSON_TEXT = TextFormat(".", ",")


@dataclass(frozen=True)
class FieldRule:
    """One field's type (and, for timestamps, its unit); ``note`` says why it was chosen."""

    name: str
    type: FieldType
    unit: str = "auto"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.type is FieldType.TIMESTAMP:
            out["unit"] = self.unit
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class FieldSchema:
    """The fitted schema: ordered field rules plus the training rows' time range (epoch ms), and the
    model's input fields when they are not the default (``input_fields``; not saved in
    ``schema.json``: a bundle derives them from its feature and entity specs, ``model/bundle.py``)."""

    fields: tuple[FieldRule, ...]
    time_range_ms: tuple[float, float] | None = None
    plausible_years: float = PLAUSIBLE_YEARS
    _by_name: dict[str, FieldRule] = field(default_factory=dict, compare=False, repr=False)
    inputs: tuple[str, ...] | None = None  # None: input_fields' default

    def __post_init__(self) -> None:
        self._by_name.update({rule.name: rule for rule in self.fields})
        if len(self._by_name) != len(self.fields):
            raise ValueError("a field appears twice in the schema")

    def __getitem__(self, name: str) -> FieldRule:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def feature_fields(self) -> list[FieldRule]:
        """Number, boolean and category fields, in schema order: the inputs of the feature spec."""
        return [rule for rule in self.fields if rule.type in FEATURE_TYPES]

    @property
    def input_fields(self) -> tuple[str, ...]:
        """The model's input fields: an event with a value in none of them is ``no_features``.

        By default the feature fields (number, boolean, category) other than the reserved ones
        (``event_id``, ``account_id``, ``timestamp``, ``schema_version``, never features): what
        ``fit_spec`` reads. ``reading`` sets them otherwise: ``train`` adds an entity spec's keys,
        amount and distinct fields (``InferenceOptions.inputs``), a bundle names exactly the fields
        its features and entity features are computed from. Empty (a schema with no feature field,
        built by hand): the rule does not apply."""
        if self.inputs is not None:
            return self.inputs
        return tuple(rule.name for rule in self.feature_fields if rule.name not in RESERVED_FIELDS)

    def reading(self, names: Iterable[str]) -> FieldSchema:
        """This schema with ``names`` (in order, once each) as its input fields."""
        return replace(self, inputs=tuple(dict.fromkeys(names)))

    @property
    def plausible_ms(self) -> tuple[float, float]:
        """Timestamps outside this range (epoch ms) are ``implausible_timestamp``: ``range_ms``,
        and at most ``FUTURE_MS`` ahead of this machine's clock (read now: a range kept by a
        long-running reader would go stale)."""
        lo, hi = self.range_ms
        return lo, min(hi, future_limit_ms())

    @property
    def range_ms(self) -> tuple[float, float]:
        """The plausible range from the training rows alone (``plausible_years`` either side),
        1990-01-01 .. 2100-01-01 without them; ``plausible_ms`` adds the clock's limit."""
        if self.time_range_ms is None:
            return _DEFAULT_RANGE_MS
        margin = self.plausible_years * _YEAR_MS
        return self.time_range_ms[0] - margin, self.time_range_ms[1] + margin

    # ---- the converter ---------------------------------------------------------------------
    def convert(self, events: Sequence[dict[str, Any]], text: TextFormat = JSON_TEXT,
                ) -> tuple[list[dict[str, Any]], dict[int, ConversionError]]:
        """Events → (typed events, {row: problem}); never raises on data.

        A row whose values already have their types is returned as the same dict; a row with a
        value converted is a shallow copy (callers that keep events "as received" keep the input
        list). A row with a problem keeps its input dict and is listed once, with its first problem.
        ``text`` is the number format of text values (a CSV's ``--decimal``/``--thousands``).
        """
        typed, problems, _ = self.convert_columns(events, text)
        return typed, problems

    def convert_columns(self, events: Sequence[dict[str, Any]], text: TextFormat = JSON_TEXT,
                        ) -> tuple[list[dict[str, Any]], dict[int, ConversionError], dict[str, Sequence[Any]]]:
        """``convert``, plus the columns it read that needed no conversion: {field: one value per
        event, as ``typed[i].get(field)`` reads it} (a tuple or list of N values; a field the
        events lack reads None). Every field whose values all had their type already is there
        (the usual case for JSON from Kafka); a field with a value converted is not. The decode
        step hands them to enrich and features (``Decoded.columns``), which would otherwise read
        the same fields from the dicts again. Never raises on data.

        A row in which no input field (``input_fields``) has a value — absent, or null — and whose
        values all convert is ``no_features`` (the module docstring)."""
        out = list(events)
        problems: dict[int, ConversionError] = {}
        rules = [rule for rule in self.fields if rule.type is not FieldType.IGNORED]
        columns = _columns(events, [rule.name for rule in rules])
        read = dict(zip((rule.name for rule in rules), columns, strict=True))  # as read, before conversion
        kept: dict[str, Sequence[Any]] = {}
        for rule, column in zip(rules, columns, strict=True):
            if self._left_as_is(rule, column):
                kept[rule.name] = column
                continue
            fast = _text_numbers(column, text) if rule.type in _NUMERIC_TEXT else None
            if fast is not None:  # every text value a plain number: parsed in one vectorised cast
                if rule.type is FieldType.NUMBER or _already_ms(fast, rule.unit, self.plausible_ms):
                    _assign(out, events, rule.name, fast)
                    continue
                column = fast
            convert = _converter(rule, text, self.plausible_ms)
            for i, value in enumerate(column):
                if value is None or i in problems:
                    continue
                try:
                    new = convert(value)
                except ConversionError as exc:
                    problems[i] = exc
                    continue
                if new is not events[i].get(rule.name):
                    if out[i] is events[i]:
                        out[i] = dict(events[i])
                    out[i][rule.name] = new
        for i in _without_inputs(events, self.input_fields, read):
            if i not in problems:
                problems[i] = ConversionError(RejectReason.NO_FEATURES, _no_features_message(
                    events[i], self.input_fields, self._by_name))
        for i in problems:
            out[i] = events[i]
        return out, problems, kept

    def unconverted(self, read: Mapping[str, Sequence[Any]], n: int,
                    types: Mapping[str, Iterable[type]] | None = None) -> dict[str, Sequence[Any]] | None:
        """``convert_columns``' verdict from columns alone, for a batch it would leave as it is: the
        columns it would keep (every field but the ignored ones), or None when a value needs
        converting or a row has no input field (``convert_columns`` then decides, with its
        messages). ``read``: n values per field of the schema, each what ``event.get(field)`` is;
        ``types``: each column's set of value types, where the caller has it (one pass saved)."""
        kept: dict[str, Sequence[Any]] = {}
        for rule in self.fields:
            if rule.type is FieldType.IGNORED:
                continue
            column = read[rule.name]
            if not self._left_as_is(rule, column, types[rule.name] if types is not None else None):
                return None
            kept[rule.name] = column
        if _without_inputs([{}] * n, self.input_fields, read):
            return None
        return kept

    def _left_as_is(self, rule: FieldRule, column: Sequence[Any], types: Iterable[type] | None = None) -> bool:
        """Whether the converter returns every value of ``column`` unchanged: each already of the
        field's type (``NATIVE_TYPES``; ``types``: the column's value types, where the caller has
        them), or a timestamp column of epoch milliseconds in the plausible range."""
        native = NATIVE_TYPES.get(rule.type)
        if native is not None and native.issuperset(types if types is not None else map(type, column)):
            return True
        return rule.type is FieldType.TIMESTAMP and _already_ms(column, rule.unit, self.plausible_ms)

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": SCHEMA_FORMAT, "fields": [rule.to_dict() for rule in self.fields],
                "time_range_ms": list(self.time_range_ms) if self.time_range_ms else None,
                "plausible_years": self.plausible_years}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldSchema:
        """Raises ``ValueError`` naming the problem (unknown type or unit, bad format)."""
        if data.get("format", SCHEMA_FORMAT) != SCHEMA_FORMAT:
            raise ValueError(f"unsupported field schema format {data.get('format')!r}")
        rules = tuple(rule_from_dict(item) for item in data.get("fields", ()))
        span = data.get("time_range_ms")
        return cls(rules, (float(span[0]), float(span[1])) if span else None,
                   float(data.get("plausible_years", PLAUSIBLE_YEARS)))

    @classmethod
    def from_json(cls, raw: bytes) -> FieldSchema:
        return cls.from_dict(orjson.loads(raw))

    def describe(self, id_column: str | None = None, label_column: str | None = None,
                 timestamp_column: str | None = None) -> list[str]:
        """One line per field for ``train``'s output: name, type, why. A name that would not read
        as itself in a column (empty, with spaces around it, or with a control character: a field
        ``"event_id "`` looked like ``event_id``, a new-user trial) is shown quoted. ``id_column``
        (``--id-column``) is shown as the file's column it reads the event id from, and
        ``label_column`` (``--label-column``, never in the schema) gets a line of its own (a trial:
        the table listed ``event_id`` for a file without one and left the label out)."""
        rows = []
        for rule in self.fields:
            name = _shown_name(rule.name)
            if rule.name == "event_id" and id_column and id_column != "event_id":
                name = f"{_shown_name(id_column)} (as event_id)"
            elif rule.name == "timestamp" and timestamp_column and timestamp_column != "timestamp":
                name = f"{_shown_name(timestamp_column)} (as timestamp)"
            kind = f"{rule.type.value} ({rule.unit})" if rule.type is FieldType.TIMESTAMP else rule.type.value
            role = "feature" if rule.type in FEATURE_TYPES else "not a feature"
            note = rule.note if name == _shown_name(rule.name) else (
                "the event id (--id-column)" if rule.name == "event_id" else "the event time (--timestamp-column)")
            rows.append((name, kind, role, note))
        if label_column:
            rows.append((_shown_name(label_column), "label", "not a feature",
                         "--label-column: the labels, out of the events"))
        width = max((len(row[0]) for row in rows), default=5)
        return [f"  {name:<{width}}  {kind:<16} {role:<14} {note}".rstrip() for name, kind, role, note in rows]


def _shown_name(name: str) -> str:
    """``name`` as ``describe`` shows it: itself, or quoted when it would not read as itself."""
    if name and name == name.strip() and name.isprintable():
        return name
    return repr(name)


def rule_from_dict(item: Mapping[str, Any]) -> FieldRule:
    try:
        kind = FieldType(item["type"])
    except (KeyError, ValueError):
        raise ValueError(f"field {item.get('name')!r}: type must be one of "
                         f"{', '.join(t.value for t in FieldType)}, got {item.get('type')!r}") from None
    unit = str(item.get("unit", "auto"))
    if unit not in TIMESTAMP_UNITS:
        raise ValueError(f"field {item.get('name')!r}: unit must be one of {', '.join(TIMESTAMP_UNITS)}")
    return FieldRule(str(item["name"]), kind, unit, str(item.get("note", "")))


# ---- conversion of one value ----------------------------------------------------------------------


def _columns(events: Sequence[dict[str, Any]], names: list[str]) -> list[Sequence[Any]]:
    """One sequence of values per name: itemgetter + a C-level transpose when every event has every
    field, else one ``.get`` pass per field."""
    if not names or not events:
        return [[None] * len(events) for _ in names]
    if len(names) > 1:
        try:
            return list(zip(*map(itemgetter(*names), events), strict=True))
        except KeyError:
            pass
    return [[e.get(name) for e in events] for name in names]


def _without_inputs(events: Sequence[dict[str, Any]], names: Sequence[str],
                    read: Mapping[str, Sequence[Any]]) -> list[int]:
    """The rows in which none of ``names`` has a value (absent or None), from the columns already
    ``read`` where there are (else one ``.get`` pass). One C-level ``None in column`` per field
    until a field has a value in every row still open: a batch whose first input field is never
    missing costs one pass."""
    if not names or not events:
        return []
    open_rows: list[int] | None = None  # rows with no value so far; None: every row
    for name in names:
        column = read.get(name)
        if column is None:
            column = [e.get(name) for e in events]
        if open_rows is None:
            if None not in column:
                return []
            open_rows = [i for i, value in enumerate(column) if value is None]
        else:
            open_rows = [i for i in open_rows if column[i] is None]
        if not open_rows:
            return []
    return open_rows if open_rows is not None else []


def _no_features_message(event: Mapping[str, Any], inputs: Sequence[str], known: Container[str],
                         shown: int = 3) -> str:
    """Which input fields were expected and which fields the event has (names only, each cut to 40
    characters, never a value): those the schema does not know first — a producer's misnamed or
    camelCase fields show at a glance — then the others, each group in name order (so a CSV row
    and a JSON object with their fields in another order read alike)."""

    def names(items: Sequence[str]) -> str:
        cut = [repr(n if len(n) <= 40 else n[:39] + "…") for n in items[:shown]]
        return ", ".join(cut + (["..."] if len(items) > shown else []))

    has = sorted((k in known, str(k)) for k, v in event.items() if v is not None and k != "event_id")
    has_names = [name for _, name in has]
    null = [n for n in inputs if n in event]  # present, but null
    what = f"the event has {names(has_names)}" if has else "the event has no field with a value but event_id"
    if null:
        what += f"; {names(null)} {'is' if len(null) == 1 else 'are'} null"
    count = f"none of the model's {len(inputs)} input fields is" if len(inputs) > 1 else \
        "the model's input field is not"
    return f"{count} present (expected {'e.g. ' if len(inputs) > shown else ''}{names(inputs)}; {what})"


def _assign(out: list[dict[str, Any]], events: Sequence[dict[str, Any]], name: str, values: list[Any]) -> None:
    """Set ``name`` to the converted ``values`` row by row (copying each row once)."""
    for i, value in enumerate(values):
        if value is not None:
            if out[i] is events[i]:
                out[i] = dict(events[i])
            out[i][name] = value


def _text_numbers(column: Sequence[Any], text: TextFormat) -> list[Any] | None:
    """A column of text (and missing) values as floats in one Arrow cast, when every value is a
    plain finite number with a ``.`` decimal mark; ``None`` (convert value by value) otherwise."""
    if text.decimal != "." or not _TEXT_OR_NONE.issuperset(map(type, column)):
        return None
    try:
        values = pc.cast(pa.array(column, pa.string()), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if pc.any(pc.is_nan(values)).as_py() or pc.any(pc.is_inf(values)).as_py():
        return None
    return values.to_pylist()  # type: ignore[no-any-return]


def _converter(rule: FieldRule, text: TextFormat, plausible: tuple[float, float]) -> Any:
    name = rule.name
    if rule.type is FieldType.NUMBER:
        return lambda v: _to_number(name, v, text)
    if rule.type is FieldType.BOOLEAN:
        return lambda v: _to_boolean(name, v)
    if rule.type is FieldType.CATEGORY:
        return _to_category
    if rule.type is FieldType.IDENTIFIER:
        return lambda v: _to_identifier(name, v)
    return lambda v: _to_timestamp(name, v, rule.unit, plausible, text)


def _shape(value: Any) -> str:
    """What a value is, never the value itself (a card number in a wrong field must not reach a
    dead letter's headers or a log): its type, and a text's length."""
    if isinstance(value, str):
        if not value.strip():
            return "blank text" if value else "empty text"
        return f"text of {len(value)} character{'s' if len(value) != 1 else ''}"
    return json_type(value)


_LOCAL_DATE = re.compile(r"\s*\d{1,2}([./-])\d{1,2}\1\d{2,4}(?:[ T,]+\d{1,2}[:.]\d{2}(?:[:.]\d{2}(?:[.,]\d+)?)?"
                         r"(?:\s*[AaPp][Mm])?)?\s*")


def _local_date_hint(value: str) -> str:
    """For a date written the local way (``10/1/2026 0:05``, ``01.10.2026 00:05``: a spreadsheet's
    display format), what to write instead; its shape with every digit as 0, never its digits. A
    trial: such dates were refused with the text's length alone. Which number is the month is not
    guessed (10/1 is the 1st of October in the US, the 10th of January elsewhere)."""
    if not _LOCAL_DATE.fullmatch(value):
        return ""
    shape = re.sub(r"\d", "0", value.strip())
    return (f"; shaped {shape}, a date written the local way, whose day and month order is not guessed: write it as "
            "RFC 3339 (2026-10-01T00:05:00Z, or without the Z for UTC) or as epoch milliseconds (in a spreadsheet, "
            "format the column as yyyy-mm-ddThh:mm:ss before saving)")


def _wrong(name: str, value: Any, expected: str) -> ConversionError:
    return ConversionError(RejectReason.WRONG_TYPE, f"field {name!r} must be {expected}, got {_shape(value)}")


def _to_number(name: str, value: Any, text: TextFormat) -> float | int:
    if isinstance(value, bool):
        raise _wrong(name, value, "a number")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConversionError(RejectReason.NON_FINITE_NUMBER, f"field {name!r} is not finite")
        return value
    if isinstance(value, str):
        number = text.parse(value)
        if number is None:
            raise _wrong(name, value, "a number")
        if not math.isfinite(number):
            raise ConversionError(RejectReason.NON_FINITE_NUMBER, f"field {name!r} is not finite (it overflows)")
        return number
    raise _wrong(name, value, "a number")


def _to_boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        flag = _BOOL_TEXT.get(value.strip().lower())
        if flag is not None:
            return flag
    raise _wrong(name, value, "a boolean (true/false or 1/0)")


def _to_category(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return orjson.dumps(value).decode()


def _to_identifier(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        if abs(value) < _MAX_EXACT_INT:
            return str(int(value))
        raise ConversionError(RejectReason.WRONG_TYPE, f"field {name!r}: an id written as a float beyond 2^53 "
                              f"names no one id exactly (write it as text or an integer)")
    raise _wrong(name, value, "an identifier (text or integer)")


def _already_ms(column: Sequence[Any], unit: str, plausible: tuple[float, float]) -> bool:
    """True when every value is an epoch-milliseconds number inside the plausible range: the
    converter would return each unchanged (one numpy pass instead of one call per value)."""
    if unit not in ("auto", "ms") or not NATIVE_TYPES[FieldType.NUMBER].issuperset(map(type, column)):
        return False
    values = np.array(column, dtype=np.float64)
    values = values[~np.isnan(values)]
    if unit == "auto" and not ((np.abs(values) >= 1e11) & (np.abs(values) < 1e14)).all():
        return False
    return bool(((values >= plausible[0]) & (values <= plausible[1])).all())


def epoch_to_ms(value: float, unit: str) -> float:
    """Epoch number → epoch milliseconds; ``auto`` picks the unit by magnitude (< 1e11 seconds,
    < 1e14 milliseconds, < 1e17 microseconds, else nanoseconds: each covers 1973..5138)."""
    if unit == "auto":
        size = abs(value)
        unit = "s" if size < 1e11 else "ms" if size < 1e14 else "us" if size < 1e17 else "ns"
    return value * _UNIT_MS[unit]


def _to_timestamp(name: str, value: Any, unit: str, plausible: tuple[float, float], text: TextFormat) -> float:
    if isinstance(value, bool):
        raise ConversionError(RejectReason.INVALID_TIMESTAMP, f"field {name!r}: a boolean is not a timestamp")
    if isinstance(value, str):
        number = text.parse(value)
        if number is not None:
            value = number
        else:
            ms = _rfc3339_ms(value)
            if ms is None:
                raise ConversionError(RejectReason.INVALID_TIMESTAMP,
                                      f"field {name!r} is neither RFC 3339 nor an epoch number ({_shape(value)})"
                                      + _local_date_hint(value))
            return _plausible(name, ms, plausible, value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConversionError(RejectReason.INVALID_TIMESTAMP, f"field {name!r} is not a timestamp ({_shape(value)})")
    return _plausible(name, epoch_to_ms(float(value), unit), plausible, value)


def future_limit_ms() -> float:
    """The latest plausible event time now (epoch ms): this machine's clock plus ``FUTURE_MS``."""
    return time.time() * 1000.0 + FUTURE_MS


def _plausible(name: str, ms: float, plausible: tuple[float, float], raw: Any) -> float:
    """``ms`` when inside the plausible range; the message says the year read (not ``raw``), or
    how far ahead of this machine's clock it is."""
    if not plausible[0] <= ms <= plausible[1]:
        ahead_days = (ms - time.time() * 1000.0) / 86_400_000.0
        if ms > plausible[1] and ms - future_limit_ms() > -1.0 and ahead_days < 3_650_000:
            raise ConversionError(RejectReason.IMPLAUSIBLE_TIMESTAMP,
                                  f"field {name!r} reads as a time {ahead_days:,.1f} days ahead of this machine's "
                                  f"clock (from {'a number' if isinstance(raw, (int, float)) else _shape(raw)}); "
                                  f"more than {FUTURE_MS / 86_400_000.0:g} day ahead is not plausible")
        raise ConversionError(RejectReason.IMPLAUSIBLE_TIMESTAMP,
                              f"field {name!r} reads as a time in {_shown_year(ms)} "
                              f"(from {'a number' if isinstance(raw, (int, float)) else _shape(raw)}), "
                              f"outside the plausible range of this model ({_shown_year(plausible[0])} to "
                              f"{_shown_year(min(plausible[1], future_limit_ms()))}: {PLAUSIBLE_YEARS:g} years around "
                              "its training rows' times; a model for another period is trained on rows of it)")
    return ms


def _shown_year(ms: float) -> str:
    """The year of epoch ms (not the time: a number read as a time must not be recoverable from the
    message) where Python's calendar has one (years 1..9999), else "no calendar year"."""
    if abs(ms) >= 2.5e14:
        return "no calendar year"
    try:
        return str(datetime.fromtimestamp(ms / 1000.0, timezone.utc).year)
    except (ValueError, OverflowError, OSError):  # before year 1 or after 9999
        return "no calendar year"


def _rfc3339_ms(text: str) -> float | None:
    stripped = text.strip()
    if stripped.endswith(("Z", "z")):
        stripped = stripped[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    delta = parsed - _EPOCH  # integer arithmetic: an RFC 3339 time and its epoch ms agree exactly
    return (delta.days * 86_400 + delta.seconds) * 1000.0 + delta.microseconds / 1000.0


# ---- inference ------------------------------------------------------------------------------------

_RESERVED_IDS = ("event_id", "account_id")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")


@dataclass(frozen=True)
class InferenceOptions:
    """What ``train`` knows beyond the rows: ids, keys, exclusions, overrides (rules 1 and the CLI)."""

    identifiers: frozenset[str] = frozenset()
    ignored: frozenset[str] = frozenset()
    overrides: Mapping[str, FieldRule] = field(default_factory=dict)
    max_categories: int = 32
    text: TextFormat = JSON_TEXT
    inputs: tuple[str, ...] = ()  # input fields besides the feature fields: an entity spec's (input_fields)


@dataclass
class Inferred:
    """The schema and what ``train`` must report: per field, rows whose value will not convert."""

    schema: FieldSchema
    warnings: list[str]


def infer_schema(rows: Sequence[Mapping[str, Any]], options: InferenceOptions = InferenceOptions()) -> Inferred:
    """Fit a ``FieldSchema`` on raw training rows (text cells or JSON values) by the module's rules."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    rules: list[FieldRule] = []
    warnings: list[str] = []
    for name in names:
        override = options.overrides.get(name) if name not in options.ignored else None
        if override is not None:
            rules.append(replace(override, note=override.note or "set by --schema/--field"))
            continue
        by_name = _rule_by_name(name, options)
        if by_name is not None and by_name.note == _ID_NOTE:  # a name like an id over true/false values is a
            values = [r.get(name) for r in rows]  # boolean feature (a trial: has_valid_id, photo_matches_id)
            present = [v for v in values if v is not None and not isinstance(v, (dict, list))]
            if present and all(_is_boolean(v) or _is_bit(v) for v in present):  # has_id: a flag (0/1 too)
                by_name = None
        if by_name is not None:
            rules.append(by_name)
            continue
        rules.append(_rule_by_values(name, [r.get(name) for r in rows], options, warnings))
    for name, override in options.overrides.items():
        if name not in names and name not in options.ignored:
            rules.append(replace(override, note=override.note or "set by --schema/--field (not in the data)"))
    if "timestamp" not in names and "timestamp" not in options.overrides:  # live records may carry one
        rules.append(FieldRule("timestamp", FieldType.TIMESTAMP, note="reserved: event time (not in these rows)"))
    provisional = FieldSchema(tuple(rules))
    schema = FieldSchema(tuple(rules), _time_range(rows, provisional, options.text))
    if options.inputs:
        schema = schema.reading([*schema.input_fields, *options.inputs])
    return Inferred(schema, warnings)


def _rule_by_name(name: str, options: InferenceOptions) -> FieldRule | None:
    if name in options.ignored:
        return FieldRule(name, FieldType.IGNORED, note="label or --exclude")
    if name == "schema_version":
        return FieldRule(name, FieldType.IGNORED, note="reserved: event schema version")
    if name == "timestamp":
        return FieldRule(name, FieldType.TIMESTAMP, note="reserved: event time")
    if name in options.identifiers or name in _RESERVED_IDS:
        return FieldRule(name, FieldType.IDENTIFIER, note="id column or entity key")
    if _ID_NAME.search(name) or _CAMEL_ID.search(name):
        return FieldRule(name, FieldType.IDENTIFIER, note=_ID_NOTE)
    if _PANDAS_INDEX.fullmatch(name):
        return FieldRule(name, FieldType.IDENTIFIER, note="a pandas index written out (its name)")
    return None


# what pandas names a written-out index column when reading it back (``Unnamed: 0``; ``Unnamed: 0.1`` for a
# second one: a file saved twice), and what it writes for a named or non-range index into Parquet
# (``__index_level_0__``; a trial: a number feature there, an identifier in the same rows as CSV)
_PANDAS_INDEX = re.compile(r"Unnamed: \d+(?:\.\d+)?|__index_level_\d+__")


_ID_NOTE = "named like an id (*_id, *ID, *Id)"


# rule 1's id names: ``id``, ``*_id``, ``*-id``, ``*.id``, ``* id`` in any case, and a camel-case
# ``TransactionID`` / ``customerId`` (a trial: IEEE-CIS's ``TransactionID`` became a number feature,
# and next month's ids flagged every event); ``paid``, ``valid``, ``PAID`` are not ids.
_ID_NAME = re.compile(r"(?:^|[_\-.\s])id$", re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z0-9](?:ID|Id)$")
# rule 4b: a time-like name with every value an epoch number of 2001-09-09 .. 2099 in seconds or
# milliseconds. The name is split into words (``_``, ``-``, ``.``, spaces, camel case, digits), and one
# word must be a time word: ``txn_time``, ``created_at``, ``createdAt``, ``event-ts``, ``epoch``,
# ``TransactionDate`` — not ``mandate_amount``, ``uptime_ms`` or ``runtime`` (a trial: a substring
# match took those for times and dropped them)
_TIME_WORDS = frozenset({"time", "times", "date", "dates", "datetime", "ts", "at", "epoch", "timestamp", "dt",
                         "created", "updated", "modified"})
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


_UNIT_WORDS = frozenset({"ms", "s", "sec", "secs", "seconds", "millis", "utc", "epoch", "unix", "local", "gmt",
                         "minutes", "hours", "days"})  # the Handbook's TX_TIME_DAYS: a time in days


def _time_named(name: str) -> bool:
    """The name's last word (after unit words: ``txn_time_ms``, ``created_at_utc``) is a time word;
    ``amount_at_risk``, ``ts_count`` and ``time_on_site_ms`` are not times (a trial: a time word
    anywhere in the name dropped amounts in cents that happened to lie in the epoch range)."""
    words = [w.lower() for w in _WORD.findall(name)]
    while len(words) > 1 and words[-1] in _UNIT_WORDS:
        words.pop()
    return bool(words) and words[-1] in _TIME_WORDS
_EPOCH_S, _EPOCH_MS = (1e9, 4.1e9), (1e12, 4.1e12)
EPOCH_MIN_ROWS = 20  # rule 4b's warning for a name that is not time-like: this many values, half of them distinct
CLOCK_MIN_DISTINCT = 3  # rule 4d: a time-named column never decreasing over the file, with this many values, is a clock
COUNTER_MIN_ROWS = 100  # rule 4c: a run of increasing distinct integers this long is warned of (a counter, or
# a file sorted by it). Two trials: typing such runs as identifiers dropped real features — a file sorted by
# balance_cents (AUC 0.90 -> 0.35), then account_age_days in a one-row-per-day file and a setpoint sweep


def _number_rule(name: str, values: np.ndarray, warnings: list[str]) -> FieldRule | None:
    """Rules 4b and 4c on a column whose every value is a number (``values``, float64, in row
    order): an epoch time under a time-like name → ``ignored`` (a feature of absolute time would
    put every later event outside training: a trial's ``txn_time``, epoch seconds, flagged all of
    next month's events, where the same times as RFC 3339 text were read as a timestamp), said in
    ``warnings`` too; at least ``COUNTER_MIN_ROWS`` distinct integers increasing row after row (a
    counter, or a feature the file is sorted by) stay a number, with a warning; a time-like name over
    values that never decrease (rule 4d: time since a start) → ``ignored``, said in ``warnings``.
    None: rule 4's ``number``. A pandas index written out is an identifier by its name (``Unnamed: 0``, rule 1)."""
    if values.size == 0 or not np.isfinite(values).all():
        return None
    low, high = float(values.min()), float(values.max())
    if _time_named(name):
        for unit, (a, b) in (("seconds", _EPOCH_S), ("milliseconds", _EPOCH_MS)):
            if a <= low and high <= b:
                warnings.append(f"field {name!r}: epoch {unit} under a time-like name, not a feature (absolute time "
                                f"would put every later event outside training); --field {name}=number keeps it")
                return FieldRule(name, FieldType.IGNORED,
                                 note=f"epoch {unit} named like a time (absolute time); "
                                      f"--field {name}=number to keep it")
        if (values.size >= COUNTER_MIN_ROWS and bool((np.diff(values) >= 0).all())
                and np.unique(values).size >= CLOCK_MIN_DISTINCT):  # rule 4d: time since a start, not epoch time
            warnings.append(f"field {name!r}: named like a time, its values never decrease over the file "
                            f"({low:,.10g} .. {high:,.10g}): a clock (time since some start), not a feature (every "
                            f"later event would lie past training's range); --field {name}=number keeps it")
            return FieldRule(name, FieldType.IGNORED,
                             note=f"a clock: named like a time, never decreasing; --field {name}=number to keep it")
    elif values.size >= EPOCH_MIN_ROWS and np.unique(values).size * 2 >= values.size:
        for unit, (a, b), per_s in (("s", _EPOCH_S, 1.0), ("ms", _EPOCH_MS, 1000.0)):
            if a <= low and high <= b:  # a trial: an unnamed epoch column stayed a feature, said nowhere
                first, last = (time.strftime("%Y-%m-%d", time.gmtime(v / per_s)) for v in (low, high))
                warnings.append(f"field {name!r}: every value lies in the epoch-{unit} range (read as times: {first} "
                                f".. {last}); if it is a time, absolute time as a feature puts every later event "
                                f"outside training: --field {name}=timestamp:{unit} reads it as a time (not a "
                                f"feature), --exclude {name} leaves it out")
    if values.size >= COUNTER_MIN_ROWS and (values == np.round(values)).all():
        steps = np.diff(values)
        rising = bool((steps > 0).all())
        if rising or bool((steps < 0).all()):  # a counter (up or down), or a feature the file is sorted by: said
            warnings.append(f"field {name!r}: its {values.size} values are distinct integers, "
                            f"{'increasing' if rising else 'decreasing'} row after row — a row number or sequence "
                            f"number, or a file sorted by it? Kept as a number feature; --field {name}=identifier "
                            "if it counts rows or events")
    return None


def _rule_by_values(name: str, values: list[Any], options: InferenceOptions, warnings: list[str]) -> FieldRule:
    # a nested value's row is rejected whatever the field's type (validate_event): it does not vote
    # (one such row turned a JSON Lines file's numbers into text on every other row)
    present = [v for v in values if v is not None and not isinstance(v, (dict, list))]
    if not present:
        return FieldRule(name, FieldType.IGNORED, note="no values")
    if any(_is_boolean(v) for v in present):
        odd = [v for v in present if not (_is_boolean(v) or _is_bit(v))]
        if not odd:
            return FieldRule(name, FieldType.BOOLEAN, note="true/false values")
        if len(odd) <= (1.0 - NUMERIC_SHARE) * len(present):  # rule 5's share, for true/false
            warnings.append(_odd_rows(name, len(odd), len(present), list(dict.fromkeys(map(str, odd))), "true/false"))
            return FieldRule(name, FieldType.BOOLEAN, note=f"true/false values ({_not_count(len(odd))})")
    fast = _text_numbers(present, options.text)
    numbers = present if fast is not None else [v for v in present if _is_number(v, options.text)]
    if len(numbers) == len(present):
        coded = _codes(present)
        if coded:
            return FieldRule(name, FieldType.IDENTIFIER,
                             note="numeric codes (a leading zero or more than 15 digits)")
        floats = np.asarray(fast if fast is not None else
                            [v if isinstance(v, (int, float)) else options.text.parse(v) for v in present],
                            dtype=np.float64)
        return _number_rule(name, floats, warnings) or FieldRule(name, FieldType.NUMBER, note="numbers")
    if len(numbers) >= 0.5 * len(present):
        odd = list(dict.fromkeys(str(v) for v in present if not _is_number(v, options.text)))
        odd_rows = len(present) - len(numbers)
    if len(numbers) >= NUMERIC_SHARE * len(present):
        warnings.append(_odd_rows(name, odd_rows, len(present), odd, "numbers"))
        return FieldRule(name, FieldType.NUMBER, note=f"numbers ({_not_count(odd_rows)})")
    if len(numbers) >= 0.5 * len(present):
        warnings.append(f"field {name!r}: {len(numbers)} of {len(present)} values are numbers but {odd_rows} are "
                        f"not (e.g. {', '.join(map(repr, odd[:3]))}), so it is not a number field: set "
                        f"--field {name}=number (those rows then rejected) or name the text in --na-values")
    if all(isinstance(v, str) and _rfc3339_ms(v) is not None for v in present):
        return FieldRule(name, FieldType.TIMESTAMP, note="RFC 3339 times")
    elsewhere = _numbers_written_otherwise(name, present, options.text)
    if elsewhere:
        warnings.append(elsewhere)
    distinct = len({_to_category(v) for v in present})
    if distinct > 0.5 * len(present) and distinct > options.max_categories:
        return FieldRule(name, FieldType.IDENTIFIER,
                         note=f"{distinct} distinct values in {len(present)} rows: an id, not a category")
    return FieldRule(name, FieldType.CATEGORY, note="text")


# numbers as another export writes them: a decimal comma (``1234,56``, ``1.234,56``), a currency sign
# before or after (``$1,234.56``, ``12,50 €``), a percent sign
_DECIMAL_COMMA = re.compile(r"[+-]?(?:\d{1,3}(?:[.\s]\d{3})+|\d+),\d+")
_SIGN = r"(?:[$€£¥₹₩₽₺₪฿¢]|[A-Z]{3}\b)"  # a currency sign or an ISO 4217 code (USD 45.68)
_MONEY = re.compile(rf"[+-]?{_SIGN}\s?[+-]?[\d.,\s]*\d|[+-]?[\d.,\s]*\d\s?(?:{_SIGN}|%)|\(\s?{_SIGN}?\s?[\d.,\s]*\d\)")
_SPACE_GROUPS = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:[.,]\d+)?")  # 45 680.00: a space between thousands


def _numbers_written_otherwise(name: str, values: list[Any], text: TextFormat) -> str | None:
    """The warning for a text column most of whose values are numbers written in a way ``text`` does
    not read — a decimal comma under a ``.`` decimal mark, a currency or percent sign — so that the
    field becomes a category or an identifier, not a number feature (a trial: quoted ``"1234,56"``
    in a comma-separated file and ``"$1,234.56"`` each made ``amount`` an identifier, AUC 0.80 →
    0.47, nothing said). None when fewer than half are."""
    cells = [v.strip() for v in values if isinstance(v, str)]
    if not cells:
        return None
    half = 0.5 * len(values)
    money = [c for c in cells if _MONEY.fullmatch(c)]
    if len(money) >= half:
        return (f"field {name!r}: {len(money)} of {len(values)} values are numbers with a currency or percent sign "
                f"or in parentheses (e.g. {money[0]!r}), read as text, so the field is not a number feature: export "
                f"the numbers without the sign (--field {name}=number would reject those rows)")
    spaced = [c for c in cells if _SPACE_GROUPS.fullmatch(c)]
    if len(spaced) >= half and text.thousands != " ":
        return (f"field {name!r}: {len(spaced)} of {len(values)} values are numbers with spaces between thousands "
                f"(e.g. {spaced[0]!r}), read as text, so the field is not a number feature: --thousands ' ' "
                "reads them as numbers")
    if text.decimal == ".":
        comma = [c for c in cells if _DECIMAL_COMMA.fullmatch(c)]
        if len(comma) >= half:
            return (f"field {name!r}: {len(comma)} of {len(values)} values are numbers with a decimal comma (e.g. "
                    f"{comma[0]!r}), read as text under the decimal mark '.', so the field is not a number "
                    "feature: --decimal , reads them as numbers")
    return None


def _odd_rows(name: str, odd: int, present: int, examples: list[str], kind: str) -> str:
    """The warning of a field typed by its majority (rules 3 and 5): how many values are not
    ``kind``, examples, and what happens to their rows (the same words for train, score, produce)."""
    return (f"field {name!r}: {odd} of {present} values are not {kind} (e.g. {', '.join(map(repr, examples[:3]))}); "
            "those rows are rejected as a worker rejects such an event: not trained on, not scored, not produced "
            f"(name the text in --na-values to read it as missing, or --field {name}=category)")


def _not_count(n: int) -> str:
    return f"{n} value is not" if n == 1 else f"{n} values are not"


def _is_boolean(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false"))


def _is_bit(value: Any) -> bool:
    """0 or 1, as a number or text: a boolean's other spelling (rule 3 needs one true/false too)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1)) or (
        isinstance(value, str) and value.strip() in ("0", "1"))


def _is_number(value: Any, text: TextFormat) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and text.parse(value) is not None


def _codes(values: list[Any]) -> list[Any]:
    """The values that look like codes (rule 4), vectorised over text with Arrow."""
    if not _TEXT_OR_NONE.issuperset(map(type, values)):
        return [v for v in values if _looks_like_code(v)]
    arr = pc.utf8_trim_whitespace(pa.array(values, pa.string()))
    digits = pc.replace_substring_regex(arr, r"^[+-]", "")
    mask = pc.or_(pc.match_substring_regex(arr, r"^[+-]?0\d"),
                  pc.and_(pc.match_substring_regex(digits, r"^\d+$"), pc.greater(pc.utf8_length(digits), 15)))
    return [v for v, hit in zip(values, mask.to_pylist(), strict=True) if hit]


def _looks_like_code(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) >= 10**15
    if isinstance(value, str):
        digits = value.strip()
        return bool(_LEADING_ZERO.match(digits)) or (digits.lstrip("+-").isdigit() and len(digits.lstrip("+-")) > 15)
    return False


def _time_range(rows: Sequence[Mapping[str, Any]], schema: FieldSchema, text: TextFormat) -> tuple[float, float] | None:
    """Training time range (epoch ms) over every timestamp field's convertible values."""
    lo, hi = math.inf, -math.inf
    wide = (-math.inf, math.inf)
    for rule in schema.fields:
        if rule.type is not FieldType.TIMESTAMP:
            continue
        for row in rows:
            value = row.get(rule.name)
            if value is None:
                continue
            try:
                ms = _to_timestamp(rule.name, value, rule.unit, wide, text)
            except ConversionError:
                continue
            lo, hi = min(lo, ms), max(hi, ms)
    return (lo, hi) if lo <= hi else None


def parse_overrides(specs: Iterable[str]) -> dict[str, FieldRule]:
    """``--field NAME=TYPE`` or ``NAME=timestamp:UNIT`` options → rules; ``ValueError`` names a bad one."""
    out: dict[str, FieldRule] = {}
    for spec in specs:
        name, sep, kind = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--field takes NAME=TYPE, got {spec!r}")
        kind, _, unit = kind.partition(":")
        if unit and kind != FieldType.TIMESTAMP.value:
            raise ValueError(f"--field {spec!r}: only a timestamp takes a unit (NAME=timestamp:UNIT)")
        out[name] = rule_from_dict({"name": name, "type": kind, "unit": unit or "auto"})
    return out


@dataclass(frozen=True)
class EventTime:
    """The event time (epoch ms) a model's worker reads from a raw ``timestamp`` value, for the
    alignment step (``pipeline/align.py``), which sorts records before they are decoded: the
    schema's rule (unit, plausible range; ``_to_timestamp``) when the schema types ``timestamp``,
    NaN wherever the converter would reject the value — such a record is dead-lettered at decode
    and must not move its partition's clock (a year-2076 or a seconds-as-ms value would hold the
    partition back behind the others). ``rule`` None: numbers are epoch ms, strings RFC 3339
    (``schema.parse_timestamp_ms``), no range (a model without a field schema)."""

    rule: FieldRule | None = None
    plausible: tuple[float, float] = _DEFAULT_RANGE_MS

    @classmethod
    def of(cls, schema: FieldSchema | None) -> EventTime:
        if schema is None or "timestamp" not in schema or schema["timestamp"].type is not FieldType.TIMESTAMP:
            return cls()
        return cls(schema["timestamp"], schema.range_ms)  # the clock's limit is applied at each read

    def _now(self) -> tuple[float, float]:
        """``plausible`` with the clock's limit of this moment (``FieldSchema.plausible_ms``)."""
        return self.plausible[0], min(self.plausible[1], future_limit_ms())

    def __call__(self, value: object) -> float:
        """One raw value → epoch ms, NaN when missing or rejected."""
        if value is None:
            return math.nan
        try:
            if self.rule is None:
                return float(parse_timestamp_ms(value))
            return _to_timestamp("timestamp", value, self.rule.unit, self._now(), JSON_TEXT)
        except (ValueError, TypeError, OverflowError):  # ConversionError is a ValueError
            return math.nan

    def batch(self, raw: list[Any]) -> np.ndarray:
        """float64[N] of ``self`` on each value; a batch of ints and floats only in a few numpy
        operations (the same float multiply and range test as ``_to_timestamp``)."""
        values = float_array(raw)
        if values is None:
            return np.fromiter(map(self, raw), np.float64, len(raw))
        if self.rule is None:
            values[~np.isfinite(values)] = np.nan
            return values
        if self.rule.unit == "auto":
            size = np.abs(values)
            scale = np.select([size < 1e11, size < 1e14, size < 1e17],
                              [_UNIT_MS["s"], _UNIT_MS["ms"], _UNIT_MS["us"]], _UNIT_MS["ns"])
        else:
            scale = np.full(values.size, _UNIT_MS[self.rule.unit])
        ms: np.ndarray = values * scale
        lo, hi = self._now()
        ms[~((ms >= lo) & (ms <= hi))] = np.nan  # NaN, inf included
        return ms


def float_array(raw: Sequence[Any]) -> np.ndarray | None:
    """float64[N] of ``raw`` when every value is an int or a float (one ``fromiter``, C speed), each
    as ``float(value)``; None otherwise, or when an int is past the float range."""
    if not set(map(type, raw)) <= {int, float}:
        return None
    try:
        return np.fromiter(raw, np.float64, len(raw))
    except OverflowError:
        return None
