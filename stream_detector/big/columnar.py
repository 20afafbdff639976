"""A chunk of rows typed as columns: the worker's rules without a Python dict per row.

``train --streamed`` reads CSV and Parquet as Arrow tables (``big/source.py``). This module gives
each chunk what passes 1-3 need — the feature inputs, the event time, the entity inputs, the labels
and the rejections — computed on the table's columns with pyarrow compute and numpy, with the same
verdicts and values as the row-wise reference (``source.prepare_chunk`` → ``decode.type_events`` →
``derive_events``: one event, one meaning).

How parity is kept, by construction rather than by re-implementing every rule:

* the vectorised path accepts a value only where it can prove the reference's outcome — a text
  number that matches the ``TextFormat`` grammar exactly (ASCII digits, no spaces), a finite float,
  an integer, a string category. Anything else (a space around a number, a Unicode digit, an
  implausible timestamp, a missing event id, a ``schema_version``, a nested value, ``NaN``) makes
  its row *suspect*;
* per-value conversions with few distinct values (labels, booleans written as text, RFC 3339
  times, floats used as categories) run the reference's own converter once per distinct value
  (``pyarrow.compute.dictionary_encode``) and are taken back by index;
* suspect rows — the rare ones — are made into dicts and go through the reference itself, which
  gives their typed values or their rejection with its reason and message; a row with a value in
  none of the model's input fields (``FieldSchema.input_fields``, null or absent in every one) is
  suspect too, so its ``no_features`` rejection (or an earlier reason) is the reference's own;
* a schema this module does not cover (an entity key, ``account_id`` or distinct field typed as a
  number, the amount as a category, a column of an Arrow type it does not know) sends the whole
  chunk through the reference: slower, never different.

``tests/unit/test_big_columnar.py`` compares the two on generated tables (hypothesis) value for
value, rejection for rejection. JSON Lines is decoded line by line by the worker's own decoder
(``decode.parse_record``: repeated keys, non-finite numbers, nesting are its verdicts), so its
chunks take the reference path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..entity.columns import entity_value, label_value, timestamp_value
from ..entity.compute import amount_value
from ..entity_spec import EntitySpec
from ..errors import InputError
from ..events_io import RowRejection
from ..fieldschema import (
    _UNIT_MS,
    ConversionError,
    FieldRule,
    FieldSchema,
    FieldType,
    TextFormat,
    _to_boolean,
    _to_category,
    _to_identifier,
    _to_number,
    _to_timestamp,
)
from ..schema import validate_event
from .source import RawChunk, TypedChunk, prepare_chunk, type_prepared

NAN = float("nan")


@dataclass
class Derived:
    """What passes 1-3 take from a chunk's events, ``n`` of them in row order.

    ``rows`` int64[n] global row numbers; ``labels`` their label text (with a label column);
    ``numeric`` float64[n] per number/boolean feature field (NaN: missing; booleans 0/1);
    ``categorical`` a string array per category feature field (null: missing); ``ts`` float64[n]
    event time in epoch ms (NaN: none); ``times`` float64[n] per timestamp field (for the time range);
    ``entity`` the key fields' entity ids (null: no state), ``amount`` float64[n] (NaN when unusable)
    and ``distinct`` the distinct fields' labels, as ``entity.columns.Columns`` reads them;
    ``rejected`` the chunk's rows that are not events; ``total`` rows of the chunk."""

    rows: np.ndarray
    labels: pa.Array | None
    numeric: dict[str, np.ndarray]
    categorical: dict[str, pa.Array]
    ts: np.ndarray
    times: dict[str, np.ndarray]
    entity: dict[str, pa.Array]
    amount: np.ndarray
    distinct: dict[str, pa.Array]
    rejected: list[RowRejection]
    total: int

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, order: np.ndarray) -> Derived:
        idx = pa.array(order, pa.int64())
        return Derived(self.rows[order], None if self.labels is None else self.labels.take(idx),
                       {k: v[order] for k, v in self.numeric.items()},
                       {k: v.take(idx) for k, v in self.categorical.items()}, self.ts[order],
                       {k: v[order] for k, v in self.times.items()}, {k: v.take(idx) for k, v in self.entity.items()},
                       self.amount[order], {k: v.take(idx) for k, v in self.distinct.items()}, self.rejected,
                       self.total)


class Layout:
    """Which fields a chunk is derived into: the plan's feature fields and the entity spec's inputs."""

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str], entity: EntitySpec | None,
                 time_fields: Sequence[str]) -> None:
        self.numeric, self.categorical, self.entity = list(numeric), list(categorical), entity
        self.time_fields = list(time_fields)


# ---- the reference: from typed event dicts ---------------------------------------------------------


def derive_events(typed: TypedChunk, layout: Layout) -> Derived:
    """The row-wise reference: ``typed.events`` (dicts typed by ``decode.type_events``) → ``Derived``."""
    events = typed.events
    n = len(events)
    numeric = {name: np.fromiter((NAN if e.get(name) is None else float(e[name]) for e in events), np.float64, n)
               for name in layout.numeric}
    categorical = {name: pa.array([e.get(name) for e in events], pa.string()) for name in layout.categorical}
    ts = np.fromiter((timestamp_value(e.get("timestamp")) for e in events), np.float64, n)
    times = {name: np.array([e.get(name) for e in events], dtype=np.float64) for name in layout.time_fields}
    entity: dict[str, pa.Array] = {}
    distinct: dict[str, pa.Array] = {}
    amount = np.zeros(n)
    spec = layout.entity
    if spec is not None:
        valid = [validate_event(e) is None for e in events]
        entity = {k: pa.array([entity_value(e.get(k)) if ok else None for e, ok in zip(events, valid, strict=True)],
                              pa.string()) for k in spec.keys}
        amount = np.fromiter((amount_value(e.get(spec.amount_field)) for e in events), np.float64, n)
        distinct = {f: pa.array([label_value(e.get(f)) for e in events], pa.string()) for f in spec.distinct_fields}
    labels = pa.array(typed.labels, pa.string()) if typed.labels is not None else None
    return Derived(np.asarray(typed.rows, dtype=np.int64), labels, numeric, categorical, ts, times, entity, amount,
                   distinct, list(typed.rejected), typed.total)


def _reference(chunk: RawChunk, positions: np.ndarray, schema: FieldSchema, layout: Layout, *,
               id_column: str | None, label_column: str | None, generate_ids: bool, with_rejected: bool) -> Derived:
    """Rows ``positions`` (indices into the chunk) through the row-wise reference."""
    rows: list[dict[str, Any] | None] = [None] * chunk.n
    table = chunk.table
    assert table is not None
    for pos, row in zip(positions.tolist(), table.take(pa.array(chunk.table_index(positions))).to_pylist(),
                        strict=True):
        rows[pos] = row
    mini = replace(chunk, rejected=list(chunk.rejected) if with_rejected else [], _rows=rows)
    prepared = prepare_chunk(mini, id_column=id_column, label_column=label_column, generate_ids=generate_ids)
    return derive_events(type_prepared(prepared, schema, label_column is not None), layout)


# ---- the columnar path ---------------------------------------------------------------------------


_STRING = (pa.types.is_string, pa.types.is_large_string)
_INTEGER = pa.types.is_integer
_FLOAT = pa.types.is_floating
_NESTED = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_struct,
           pa.types.is_map)


def _is(kind: pa.DataType, *tests: Callable[[pa.DataType], bool]) -> bool:
    return any(test(kind) for test in tests)


def _known(kind: pa.DataType) -> bool:
    return _is(kind, *_STRING, _INTEGER, _FLOAT, pa.types.is_boolean, pa.types.is_null, *_NESTED)


def covers(schema: FieldSchema, entity: EntitySpec | None) -> bool:
    """Whether the columnar path covers this schema and entity spec (else chunks take the reference)."""

    def kind(name: str) -> FieldType | None:
        return schema[name].type if name in schema else None

    if kind("account_id") not in (None, FieldType.IDENTIFIER, FieldType.CATEGORY, FieldType.IGNORED):
        return False
    if kind("timestamp") not in (None, FieldType.TIMESTAMP) or kind("event_id") not in (None, FieldType.IDENTIFIER):
        return False
    if entity is None:
        return True
    strings = (None, FieldType.IDENTIFIER, FieldType.CATEGORY)
    return (all(kind(k) in strings for k in entity.keys) and all(kind(f) in strings for f in entity.distinct_fields)
            and kind(entity.amount_field) in (None, FieldType.NUMBER))


class _Rows:
    """Per-row bookkeeping of one chunk's table: which rows are suspect (go to the reference)."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.suspect = np.zeros(m, dtype=bool)

    def mark(self, mask: Any) -> None:
        """Rows where ``mask`` (bool array, nulls = False) is true are suspect."""
        if isinstance(mask, (pa.Array, pa.ChunkedArray)):
            mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        self.suspect |= np.asarray(mask, dtype=bool)


def _valid(column: pa.Array) -> np.ndarray:
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _per_unique(column: pa.Array, convert: Callable[[Any], Any], rows: _Rows, out_type: pa.DataType) -> pa.Array:
    """``convert`` (a reference converter) applied once per distinct value and taken back per row;
    a value it refuses (``ConversionError``) makes its rows suspect (their output null)."""
    encoded = pc.dictionary_encode(column)
    uniques = encoded.dictionary.to_pylist()
    results: list[Any] = []
    refused = np.zeros(len(uniques) + 1, dtype=bool)
    for j, value in enumerate(uniques):
        try:
            results.append(convert(value))
        except ConversionError:
            results.append(None)
            refused[j] = True
    idx = np.asarray(pc.fill_null(encoded.indices, len(uniques)).to_numpy(zero_copy_only=False), dtype=np.int64)
    rows.mark(refused[idx])
    return pa.array(results + [None], out_type).take(pa.array(idx))


def _floats(column: pa.Array) -> np.ndarray:
    """float64[m] of a numeric Arrow column (NaN for null), as Python's ``float(value)``."""
    return np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)


def _plain_numbers(column: pa.Array, text: TextFormat) -> pa.Array:
    """bool[m]: cells that match ``text``'s number grammar exactly (RE2's ASCII ``\\d``: a subset of
    what Python's ``re`` matches, so every such cell parses the same in both)."""
    pattern = text._pattern.pattern  # type: ignore[attr-defined]
    return pc.fill_null(pc.match_substring_regex(column, pattern), False)


def _text_numbers(column: pa.Array, text: TextFormat, convert: Callable[[Any], Any],
                  rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """(float64[m], bool[m]): text cells written as plain numbers in ``text``'s format, cast in one
    pass, and which cells those were; other cells through ``convert`` (the reference, once per
    distinct value)."""
    plain = _plain_numbers(column, text)
    out = np.full(len(column), NAN)
    mask = plain.to_numpy(zero_copy_only=False)
    if mask.any():
        cells = column.filter(plain)
        if text.thousands:
            cells = pc.replace_substring(cells, text.thousands, "")
        if text.decimal != ".":
            cells = pc.replace_substring(cells, text.decimal, ".")
        try:
            values = _floats(pc.cast(cells, pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            mask = np.zeros(len(column), dtype=bool)  # all through the reference
        else:
            out[mask] = values
            rows.mark(np.where(mask, ~np.isfinite(out), False))
    rest = _valid(column) & ~mask
    if rest.any():
        converted = _per_unique(column.filter(pa.array(rest)), convert, rows_of(rest, rows), pa.float64())
        out[rest] = _floats(converted)
    return out, mask


class _Sub(_Rows):
    """The rows of ``parent`` selected by ``where``: marks land on the parent's rows."""

    def __init__(self, where: np.ndarray, parent: _Rows) -> None:
        super().__init__(int(where.sum()))
        self.where, self.parent = np.flatnonzero(where), parent

    def mark(self, mask: Any) -> None:
        if isinstance(mask, (pa.Array, pa.ChunkedArray)):
            mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        self.parent.suspect[self.where[np.asarray(mask, dtype=bool)]] = True


def rows_of(where: np.ndarray, rows: _Rows) -> _Rows:
    return _Sub(where, rows)


def _epoch_ms(values: np.ndarray, unit: str) -> np.ndarray:
    """``fieldschema.epoch_to_ms`` on an array (NaN stays NaN)."""
    if unit != "auto":
        return values * _UNIT_MS[unit]
    size = np.abs(values)
    factor = np.where(size < 1e11, 1000.0, np.where(size < 1e14, 1.0, np.where(size < 1e17, 1e-3, 1e-6)))
    return values * factor


class _Typer:
    """Type one chunk's columns by the schema (``FieldSchema.convert``'s rules), marking rows it cannot prove."""

    def __init__(self, schema: FieldSchema, text: TextFormat, rows: _Rows) -> None:
        self.schema, self.text, self.rows = schema, text, rows
        self.lo, self.hi = schema.plausible_ms

    def number(self, rule: FieldRule, column: pa.Array) -> np.ndarray:
        kind = column.type
        if _is(kind, _INTEGER, _FLOAT, pa.types.is_null):
            return _floats(column)  # non-finite floats are already suspect (validate_event)
        if _is(kind, *_STRING):
            return _text_numbers(column, self.text, lambda v: _to_number(rule.name, v, self.text), self.rows)[0]
        self.rows.mark(_valid(column))  # a boolean is not a number: the reference says so
        return np.full(len(column), NAN)

    def boolean(self, rule: FieldRule, column: pa.Array) -> np.ndarray:
        kind = column.type
        if pa.types.is_boolean(kind) or pa.types.is_null(kind):
            return _floats(column)
        if _is(kind, _INTEGER, _FLOAT):
            values = _floats(column)
            self.rows.mark(~np.isnan(values) & (values != 0.0) & (values != 1.0))
            return np.where(np.isnan(values), NAN, (values == 1.0).astype(np.float64))  # -0.0 is False: 0.0
        if _is(kind, *_STRING):
            flags = _per_unique(column, lambda v: _to_boolean(rule.name, v), self.rows, pa.bool_())
            return _floats(flags)
        self.rows.mark(_valid(column))
        return np.full(len(column), NAN)

    def text_value(self, rule: FieldRule, column: pa.Array) -> pa.Array:
        """Category and identifier fields: a string array."""
        kind = column.type
        if _is(kind, *_STRING):
            return pc.cast(column, pa.string())
        if pa.types.is_null(kind):
            return pa.nulls(len(column), pa.string())
        if _INTEGER(kind):
            return pc.cast(column, pa.string())
        if rule.type is FieldType.CATEGORY:
            return _per_unique(column, _to_category, self.rows, pa.string())
        return _per_unique(column, lambda v: _to_identifier(rule.name, v), self.rows, pa.string())

    def timestamp(self, rule: FieldRule, column: pa.Array) -> np.ndarray:
        kind = column.type
        plausible = (self.lo, self.hi)
        if _is(kind, _INTEGER, _FLOAT, pa.types.is_null):
            ms = _epoch_ms(_floats(column), rule.unit)
        elif _is(kind, *_STRING):
            def convert(v: Any) -> float:
                return _to_timestamp(rule.name, v, rule.unit, plausible, self.text)

            # plain text numbers are epochs in the rule's unit; the converter gives ms for the rest
            numbers, plain = _text_numbers(column, self.text, convert, self.rows)
            ms = np.where(plain, _epoch_ms(numbers, rule.unit), numbers)
        else:
            self.rows.mark(_valid(column))
            return np.full(len(column), NAN)
        self.rows.mark(~np.isnan(ms) & ((ms < self.lo) | (ms > self.hi)))
        return ms


def _empty_as_null(column: pa.Array) -> pa.Array:
    """``column`` with every empty string null: an empty entity id or distinct value is missing, as
    null (``entity.columns.entity_value``, ``label_value``)."""
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def derive_table(chunk: RawChunk, schema: FieldSchema, layout: Layout, *, id_column: str | None,
                 label_column: str | None, generate_ids: bool) -> Derived:
    """``chunk`` (a CSV or Parquet chunk: ``chunk.table``) → ``Derived``, equal to ``derive_events`` of
    the reference's typed events. Raises ``InputError`` for rows without a label (as
    ``prepare_chunk``)."""
    table = chunk.table
    if table is None or not covers(schema, layout.entity) or any(not _known(t) for t in table.schema.types):
        return _reference(chunk, np.arange(chunk.n), schema, layout, id_column=id_column,
                          label_column=label_column, generate_ids=generate_ids, with_rejected=True)
    m = table.num_rows
    rows = _Rows(m)
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    id_col = id_column or "event_id"
    labels: pa.Array | None = None
    if label_column is not None:
        from ..inputs import _label_text, unlabelled_rows

        if label_column not in columns:
            bare = np.arange(m)
        else:
            raw = columns.pop(label_column)
            labels = pc.fill_null(_per_unique(raw, _label_text, rows, pa.string()), "")
            bare = np.flatnonzero(pc.equal(labels, "").to_numpy(zero_copy_only=False))
        if bare.size:  # absent, null, empty or blank (``inputs.take_label``): training needs every label
            raise InputError(unlabelled_rows(chunk.path, label_column,
                                             (chunk.file_row + chunk.present[bare] + 1).tolist(), whole=False))
    # event ids (prepare_chunk's rules): a missing id is generated, or the row goes to the reference
    ident = columns.pop(id_col) if id_col != "event_id" else columns.get("event_id")
    if ident is None:
        missing = np.ones(m, dtype=bool)
    elif _is(ident.type, *_STRING):
        missing = pc.fill_null(pc.equal(ident, ""), True).to_numpy(zero_copy_only=False)
        rows.mark(pc.greater(pc.utf8_length(ident), 512))
    else:
        missing = ~_valid(ident)
        if not _INTEGER(ident.type):
            rows.mark(~missing)  # a float or boolean id: the reference's text of it
    if not generate_ids:
        rows.mark(missing)
    # validate_event on the raw values
    for column in columns.values():
        kind = column.type
        if _is(kind, *_NESTED):
            rows.mark(_valid(column))
        elif _FLOAT(kind):
            rows.mark(pc.invert(pc.is_finite(column)))
    # no_features (FieldSchema.convert_columns): no value in any input field; an Arrow null is the
    # reference's None (a CSV missing-value marker, a Parquet null)
    if schema.input_fields:
        filled = np.zeros(m, dtype=bool)
        for name in schema.input_fields:
            if name in columns:
                filled |= _valid(columns[name])
        rows.mark(~filled)
    account = columns.get("account_id")
    if account is not None and not _is(account.type, *_STRING, _INTEGER, pa.types.is_null):
        rows.mark(_valid(account))
    if "schema_version" in columns:
        rows.mark(_valid(columns["schema_version"]))
    if "timestamp" in columns and "timestamp" not in schema:
        rows.mark(_valid(columns["timestamp"]))
    # the schema's conversions
    typer = _Typer(schema, chunk.text, rows)
    numbers: dict[str, np.ndarray] = {}
    texts: dict[str, pa.Array] = {}
    for rule in schema.fields:
        column = columns.get(rule.name)
        if column is None or rule.type is FieldType.IGNORED or rule.name == "event_id":
            continue
        if _is(column.type, *_NESTED):  # its values are rejections (validate_event): no conversion to try
            rows.mark(_valid(column))
            continue
        if rule.type is FieldType.NUMBER:
            numbers[rule.name] = typer.number(rule, column)
        elif rule.type is FieldType.BOOLEAN:
            numbers[rule.name] = typer.boolean(rule, column)
        elif rule.type is FieldType.TIMESTAMP:
            numbers[rule.name] = typer.timestamp(rule, column)
        else:
            texts[rule.name] = typer.text_value(rule, column)

    def number(name: str) -> np.ndarray:
        if name in numbers:
            return numbers[name]
        if name in columns:  # a raw value read as a number: the reference's rules
            rows.mark(_valid(columns[name]))
        return np.full(m, NAN)

    def text(name: str) -> pa.Array:
        if name in texts:
            return texts[name]
        column = columns.get(name)  # absent, outside the schema or ignored: the raw value
        return pa.nulls(m, pa.string()) if column is None else _raw_text(column, rows)

    spec = layout.entity
    entity: dict[str, pa.Array] = {}
    distinct: dict[str, pa.Array] = {}
    amount = np.zeros(m)
    if spec is not None:
        for key in spec.keys:
            ids = text(key)
            entity[key] = _empty_as_null(ids)
        amount = number(spec.amount_field).astype(np.float64, copy=True)
        amount[~np.isfinite(amount)] = np.nan  # none: counted at the entity's mean (entity/compute.py)
        distinct = {f: _empty_as_null(text(f)) for f in spec.distinct_fields}
    fast = Derived(
        rows=(chunk.first_row + chunk.present).astype(np.int64), labels=labels,
        numeric={name: number(name) for name in layout.numeric},
        categorical={name: text(name) for name in layout.categorical},
        ts=number("timestamp"), times={name: number(name) for name in layout.time_fields},
        entity=entity, amount=amount, distinct=distinct, rejected=[], total=chunk.n)
    suspect = rows.suspect
    keep = np.flatnonzero(~suspect)
    good = fast.take(keep) if suspect.any() else fast
    if not suspect.any():
        good.rejected = sorted(chunk.rejected, key=lambda r: r.index)
        return good
    ref = _reference(chunk, chunk.present[suspect], schema, layout, id_column=id_column, label_column=label_column,
                     generate_ids=generate_ids, with_rejected=True)
    return _merge(good, ref)


def _raw_text(column: pa.Array, rows: _Rows) -> pa.Array:
    """A field outside the schema read as text by ``entity_value`` / ``label_value``: strings as
    they are, integers as decimal text; any other type makes its rows suspect."""
    if _is(column.type, *_STRING, _INTEGER):
        return pc.cast(column, pa.string())
    if not pa.types.is_null(column.type):
        rows.mark(_valid(column))
    return pa.nulls(len(column), pa.string())


def _merge(a: Derived, b: Derived) -> Derived:
    """Two row-disjoint ``Derived`` of one chunk, in row order."""
    rows = np.concatenate([a.rows, b.rows])
    order = np.argsort(rows, kind="stable")

    def cat(x: pa.Array, y: pa.Array) -> pa.Array:
        return pa.concat_arrays([x.cast(pa.string()), y.cast(pa.string())])

    both = Derived(
        rows, None if a.labels is None or b.labels is None else cat(a.labels, b.labels),
        {k: np.concatenate([a.numeric[k], b.numeric[k]]) for k in a.numeric},
        {k: cat(a.categorical[k], b.categorical[k]) for k in a.categorical},
        np.concatenate([a.ts, b.ts]), {k: np.concatenate([a.times[k], b.times[k]]) for k in a.times},
        {k: cat(a.entity[k], b.entity[k]) for k in a.entity}, np.concatenate([a.amount, b.amount]),
        {k: cat(a.distinct[k], b.distinct[k]) for k in a.distinct}, [], a.total)
    out = both.take(order)
    out.rejected = sorted([*a.rejected, *b.rejected], key=lambda r: r.index)
    return out

