"""Files → typed events: the offline twin of step 2 (decode), for ``train``, ``score`` and ``produce``.

``events_io.read_rows`` reads a file untyped; here each row gets its ``event_id`` (the id column,
else ``event_id``, else ``<file>-<row>``), its label is set aside, and the rows go through the
worker's own ``decode.type_events`` with a field schema — the bundle's when scoring, one inferred
from these rows when training. Every row ends up either as an event or as a rejection with its
reason, exactly as the same record would in a worker.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .entity_spec import EntitySpec
from .errors import InputError
from .events_io import RawRows, ReaderOptions, RowRejection, missing_id_column, read_rows
from .features import OTHER, CategoricalColumn, FeatureSpec
from .feedback import Label, Verdicts, parse_label
from .fieldschema import FieldSchema, InferenceOptions, infer_schema
from .pipeline.decode import Rejected, type_events


@dataclass
class FileEvents:
    """A file's rows as typed events, with the rows that are not events and why.

    ``events[k]`` came from file row ``rows[k]`` (0-based, file order); ``labels[k]`` is its label
    (when a label column was named; ``""``: the row has none, ``take_label``). ``ids[i]`` is the
    event id of file row ``i`` (every row).
    """

    events: list[dict[str, Any]]
    rows: list[int]
    labels: list[str] | None
    rejected: list[RowRejection]
    ids: list[str]
    schema: FieldSchema
    raw: RawRows
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.ids)

    def rejection_summary(self) -> str:
        """``"3 rows rejected (wrong_type 2, duplicate_key 1; e.g. row 7: ...)"`` or ``""``."""
        if not self.rejected:
            return ""
        first = self.rejected[0]
        return rejection_line(len(self.rejected), self.total, Counter(r.reason.value for r in self.rejected),
                              f"row {first.index + 1}: {first.message}")


def rejection_line(rejected: int, total: int, reasons: Counter[str], example: str) -> str:
    """``"3 of 7 rows rejected (wrong_type 2, duplicate_key 1; e.g. row 7: ...)"``: ``score``'s and
    ``train``'s summary, in memory and ``--streamed``."""
    return (f"{rejected} of {total} rows rejected ({', '.join(f'{k} {v}' for k, v in reasons.most_common())}; "
            f"e.g. {example})")


def load_events(path: Path, *, options: ReaderOptions | None = None, id_column: str | None = None,
                label_column: str | None = None, schema: FieldSchema | None = None,
                inference: InferenceOptions | None = None, limit: int | None = None,
                require_labels: bool = True, keep_json: bool = False,
                timestamp_column: str | None = None) -> FileEvents:
    """Read and type ``path``. With ``schema`` (scoring) values are converted by it; without, one is
    inferred from the rows (``inference`` adds ids, keys, exclusions and overrides).
    ``keep_json`` (``produce``): a JSON Lines file's rows are checked against the event contract
    only and kept as the file has them, every value of its own JSON type (the schema is still
    inferred, and said); the consumer types them by its model's schema. Other formats are typed.

    ``timestamp_column`` (``--timestamp-column``): the column that holds the event time, read as
    the ``timestamp`` field (a row's own ``timestamp`` gives way to it, said).

    Raises ``InputError`` when the file cannot be read, has no rows, a named column is in no row,
    or (``require_labels``, as training does) rows have no label (``take_label``: the column
    absent, null or empty); when
    scoring or producing, the label is only set aside (``""`` in ``labels`` where a row has none).
    """
    id_col = id_column or "event_id"
    raw = read_rows(path, replace(options or ReaderOptions(), id_column=id_col), limit)
    if not raw.rows:
        raise InputError(f"{path}: no rows")
    stem = path.name.split(".")[0]
    # ids are generated (<file>-<row>, rows counted from 1) only for a file without an id column;
    # in a file with one, a row without an id is that row's missing_event_id rejection
    generate = not any(row is not None and row.get(id_col) not in (None, "") for row in raw.rows)
    if generate and id_column:
        seen = {k for row in raw.rows[:1000] if row is not None for k in row}
        raise InputError(missing_id_column(path, id_column, seen))
    if label_column is not None and not any(row is not None and label_column in row for row in raw.rows):
        # scoring set the label aside where present and ignored a misspelled one (a new-user trial)
        names = {name for row in raw.rows[:1000] if row is not None for name in row}
        raise InputError(f"{path}: --label-column {label_column}: no row has this column; check its spelling"
                         + did_you_mean(label_column, names))
    renamed_times = _event_time_column(path, raw.rows, timestamp_column)
    ids: list[str] = []
    row_labels: list[str | None] = []
    unlabelled: list[int] = []
    replaced_ids = 0  # rows whose own event_id gives way to --id-column's value
    for n, row in enumerate(raw.rows):
        if row is None:
            ids.append(raw.rejected_ids.get(n, f"{stem}-{n + 1}"))
            row_labels.append(None)
            continue
        if label_column is not None:
            label = take_label(row, label_column)
            row_labels.append(label)
            if label is None:
                unlabelled.append(n)
        if id_col != "event_id" and row.get("event_id") not in (None, "") and row.get(id_col) not in (None, ""):
            replaced_ids += 1
        if raw.kind == "csv":
            csv_schema_version(row)
        ident = row.pop(id_col, None) if id_col != "event_id" else row.get("event_id")
        if ident is None or ident == "":
            if generate:
                row["event_id"] = f"{stem}-{n + 1}"
        elif isinstance(ident, (bool, dict, list)):  # not an id: left as it is, the event contract refuses it
            if id_col != "event_id":
                row["event_id"] = ident
        elif id_col != "event_id" or not isinstance(ident, str):
            row["event_id"] = _id_text(ident)  # files: an integer id column is its digits (Parquet int64)
        ids.append(str(row.get("event_id") or f"{stem}-{n + 1}"))
    if unlabelled and require_labels:
        raise InputError(unlabelled_rows(path, label_column or "", [n + 1 for n in unlabelled]))
    present = [row for row in raw.rows if row is not None]
    warnings: list[str] = []
    if schema is None:
        base = inference or InferenceOptions()
        inferred = infer_schema(present, InferenceOptions(
            identifiers=base.identifiers | {"event_id"}, ignored=base.ignored, overrides=base.overrides,
            max_categories=base.max_categories, text=raw.text, inputs=base.inputs))
        schema, warnings = inferred.schema, inferred.warnings
    if generate and id_column is None:  # a trial: an `Event_ID` column was typed, and the ids made up
        named = id_like_columns(present)
        if named:
            warnings.append(f"no event_id column, so the rows get generated ids ({stem}-1, {stem}-2, …); column "
                            f"{named[0]!r} looks like one: --id-column {named[0]} takes the ids from it")
    positions = [n for n, row in enumerate(raw.rows) if row is not None]
    rejected_rows: list[Any] = []
    as_in_file = keep_json and raw.kind == "jsonl"
    if as_in_file:  # nothing is typed: the inference's advice (--field …) does not apply; the consumer's schema
        # types the timestamp too (an epoch in a string is one for a model that reads it so)
        warnings = []
        present, positions = _sendable(present, positions, rejected_rows)
    typed = type_events(present, positions, None if as_in_file else schema, raw.text, rejected_rows,
                        from_json=raw.kind == "jsonl", check_timestamp=False if as_in_file else None)
    rejected = sorted([*raw.rejected, *(RowRejection(r.index, r.reason, r.message) for r in rejected_rows)],
                      key=lambda r: r.index)
    labels: list[str] | None = None
    if label_column is not None:
        labels = [str(row_labels[n]) if row_labels[n] is not None else "" for n in typed.indices]
    # only ids the file holds: a rejected row's made-up id (<file>-<row>) may equal a real one
    real = [ident for n, ident in enumerate(ids) if raw.rows[n] is not None or n in raw.rejected_ids]
    repeated = len(real) - len(set(real))
    if repeated:
        warnings.append(f"{repeated} rows repeat an event_id of an earlier row (ids should be unique)")
    if renamed_times:
        warnings.append(f"--timestamp-column {timestamp_column}: {renamed_times} rows have a timestamp column of "
                        f"their own; their event time is {timestamp_column}'s value, the file's timestamp is not kept")
    if replaced_ids:
        warnings.append(f"--id-column {id_col}: {replaced_ids} rows have an event_id column of their own; "
                        f"their event_id is {id_col}'s value, the file's event_id is not kept (rows without a "
                        f"{id_col} keep theirs)")
    assert isinstance(typed.events, list)  # type_events gives lists (only decode_batch's lazy reading does not)
    return FileEvents(typed.events, typed.indices, labels, rejected, ids, schema, raw, [*raw.warnings, *warnings])


def _event_time_column(path: Path, rows: list[dict[str, Any] | None], column: str | None) -> int:
    """``--timestamp-column``: each row's ``column`` moved to ``timestamp`` (in place, before typing);
    returns how many rows had a ``timestamp`` of their own that gave way. Raises ``InputError`` when
    no row has the column (a misspelling, said with the nearest name)."""
    if not column or column == "timestamp":
        return 0
    if not any(row is not None and row.get(column) not in (None, "") for row in rows):
        names = {name for row in rows[:1000] if row is not None for name in row}
        raise InputError(f"{path}: --timestamp-column {column}: no row has a value in this column; check its "
                         "spelling" + did_you_mean(column, names))
    replaced = 0
    for row in rows:
        if row is None or column not in row:
            continue
        value = row.pop(column)
        if value in (None, ""):
            continue
        if row.get("timestamp") not in (None, ""):
            replaced += 1
        row["timestamp"] = value
    return replaced


_EVENT_WORDS = ("event", "transaction", "trans", "txn", "tx", "trx", "payment", "order", "record")
_ENTITY_WORDS = ("account", "acct", "customer", "cust", "card", "terminal", "merchant", "user", "device", "client",
                 "member", "session", "pos", "atm", "shop", "store", "country")


def id_like_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Columns of ``rows`` that look like the events' own id where the file has no ``event_id``:
    one named so in another spelling (``Event_ID``), then ``id`` and any named ``<word>id``/``<word>_id``
    whose word names an event (``transaction_id``, ``TxnID``, ``order_id``: ``_EVENT_WORDS``), whose
    values are present and unique in every row. Never one naming an entity (``account_id``,
    ``terminal_id``: ``_ENTITY_WORDS``). A trial: a file keyed by ``transaction_id`` was produced with
    generated ids, without a word, and its labels, keyed by that id, joined nothing."""
    names = dict.fromkeys(k for row in rows[:1000] for k in row if k != "event_id")
    flat = {k: re.sub(r"[^a-z0-9]", "", k.lower()) for k in names}
    spelled = [k for k, f in flat.items() if f == "eventid"]
    if spelled:
        return spelled
    found = []
    for k, f in flat.items():
        word = f[:-2]
        if (not f.endswith("id") or (word and not word.startswith(_EVENT_WORDS))
                or any(w in word for w in _ENTITY_WORDS)):
            continue
        values = [row.get(k) for row in rows]
        if all(v not in (None, "") and not isinstance(v, (dict, list, bool)) for v in values) \
                and len(set(map(str, values))) == len(values):
            found.append(k)
    return found


def take_label(row: dict[str, Any], label_column: str) -> str | None:
    """The row's label, taken out of the row (labels never stay in an event), as text
    (``_label_text``); None when the row has none: the column absent, null, or an empty or blank
    cell. The same for every format (before, a JSON Lines row without the key stopped training
    while an empty CSV cell was trained on as the label ``""``, i.e. not normal)."""
    label = row.pop(label_column, None)
    if label is None:
        return None
    text = _label_text(label)
    return text or None


def unlabelled_rows(path: Path | str, label_column: str, rows: list[int], whole: bool = True) -> str:
    """The one-line refusal of rows without a label where every row needs one (training):
    ``rows`` are 1-based data rows (the header not counted). ``whole``: ``rows`` are all of the
    file's, else those of the chunk read so far (a streamed read stops at the first chunk)."""
    first = ", ".join(str(n) for n in rows[:5]) + (", …" if len(rows) > 5 else "")
    count = f"{len(rows)} row(s)" if whole else f"at least {len(rows)} row(s)"
    return (f"{path}: {count} have no label in column {label_column!r} (data rows {first}): training "
            "needs one on every row; fill them in or leave those rows out")


def _label_text(value: Any) -> str:
    """Labels as text, one spelling per value: ``1``, ``1.0`` and ``"1.0"`` are ``"1"``; booleans
    and the words true/false in any case are ``true``/``false``; a list or object its JSON text
    (keys sorted); NaN (a Parquet float column's missing value, or the text ``nan``) is ``""``, no
    label, as a CSV's ``nan`` cell is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):  # JSON text, not Python's repr (a trial: the header "['x']")
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    if number != number:
        return ""
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else text


def csv_schema_version(row: dict[str, Any]) -> None:
    """A CSV cell is text: the event contract's integer ``schema_version`` written as digits is that
    integer (every row of a CSV export with the column was ``unknown_schema`` before); in place."""
    version = row.get("schema_version")
    if isinstance(version, str) and version.strip().isdecimal():
        row["schema_version"] = int(version)


def _sendable(rows: list[dict[str, Any]], positions: list[int],
              rejected: list[Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows JSON can carry as they are: an integer beyond 64 bits has no JSON form any Kafka
    consumer here reads (orjson refuses it; ``produce`` crashed half-way through a file, a trial),
    so its row is rejected (``wrong_type``), said and not sent."""
    from .schema import RejectReason

    keep_rows, keep_positions = [], []
    for row, n in zip(rows, positions, strict=True):
        big = next((name for name, v in row.items() if type(v) is int and not -2**63 <= v < 2**64), None)
        if big is None:
            keep_rows.append(row)
            keep_positions.append(n)
        else:
            rejected.append(Rejected(n, RejectReason.WRONG_TYPE, f"field {big!r} is an integer beyond 64 bits"))
    return keep_rows, keep_positions


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class FeedbackFile:
    """A feedback file: its labels and the rows that are not labels, with why."""

    verdicts: Verdicts
    rejected: list[RowRejection]
    rows: int

    def summary(self) -> str:
        frauds = len(self.verdicts.frauds())
        text = (f"{self.verdicts.count} labels on {len(self.verdicts)} events "
                f"({frauds} fraud, {len(self.verdicts) - frauds} legit by the winning label)")
        if self.rejected:  # every reason counted (a trial: two rows of two reasons, only the first said)
            first = self.rejected[0]
            reasons = Counter(r.reason.value for r in self.rejected)
            text += "; " + rejection_line(len(self.rejected), self.rows, reasons,
                                          f"row {first.index + 1}: {first.reason.value}: {first.message}")
        return text


def events_file_hint(rows: Sequence[dict[str, Any] | None]) -> str:
    """For a file refused as feedback: ``"; its rows have no label field (fields: …): an events
    file? …"`` when its rows have no ``label`` and more than four fields, else ``""``. Trials G and
    I: an events file given as the feedback file was refused for "without labelled_at"."""
    present = [row for row in rows[:100] if row is not None]
    names = dict.fromkeys(k for row in present for k in row)
    if not present or any("label" in row for row in present) or len(names) <= 4:
        return ""
    shown = ", ".join(list(names)[:6]) + (", …" if len(names) > 6 else "")
    return (f"; its rows have no label field (fields: {shown}): an events file? A feedback file holds event_id, "
            "label (fraud or legit), source, labelled_at (docs/feedback.md)")


def read_feedback(path: Path, options: ReaderOptions | None = None) -> FeedbackFile:
    """The labels of a feedback file (CSV, JSON Lines or Parquet, as for events).

    Raises ``InputError`` when the file cannot be read, or when none of its rows is a label.
    """
    raw = read_rows(path, options or ReaderOptions())
    rejected = list(raw.rejected)
    verdicts = Verdicts()
    for index, row in enumerate(raw.rows):
        if row is None:
            continue
        parsed = parse_label(row)
        if isinstance(parsed, Label):
            verdicts.add(parsed)
        else:
            rejected.append(RowRejection(index, parsed[0], parsed[1]))
    rejected.sort(key=lambda r: r.index)
    if not verdicts.count:
        first = rejected[0] if rejected else None
        detail = f" (row {first.index + 1}: {first.reason.value}: {first.message})" if first else ""
        raise InputError(f"{path}: no feedback records{detail}{events_file_hint(raw.rows)}")
    return FeedbackFile(verdicts, rejected, len(raw.rows))


MISSING_GAP, MISSING_FACTOR = 0.02, 2.0  # missing_share_warning: how much more often than in training
NOVEL_SHARE, NOVEL_FACTOR = 0.01, 5.0  # novel_values_warning: how much more often than in training
FIELDS_AT = "the model folder's spec.json"  # score's warnings: where a bundle's fields and training shares are


class DriftCounts:
    """What the missing- and new-value warnings are decided on, counted in one pass over the events
    added (typed: a category's values are text): per field of ``fields``, how many lack it (absent,
    null or empty); per category field of ``columns`` (``novel_fields``), how often each value
    training did not keep occurs (a missing value is not one). ``trained``: training's missing
    shares (``FeatureSpec.missing_shares``). The worker counts a model's first events
    (``worker.MissingShares``, ``worker.NovelValues``), ``score`` a file or a sample of its chunks."""

    def __init__(self, trained: Mapping[str, float] | None = None, fields: Sequence[str] = (),
                 columns: Sequence[CategoricalColumn] = ()) -> None:
        self.trained = dict(trained or {})
        self.fields = tuple(fields)
        self.columns = list(columns)
        self.missing = dict.fromkeys(self.fields, 0)
        self.novel: dict[str, Counter[str]] = {c.name: Counter() for c in self.columns}
        self.looked = 0
        self._kept = [(c.name, frozenset(c.categories)) for c in self.columns]

    @classmethod
    def of(cls, spec: FeatureSpec, schema: FieldSchema | None, missing: bool = True, novel: bool = True
           ) -> DriftCounts:
        """Counts for a model: its input fields whose training share the spec records (``missing``),
        its ``novel_fields`` (``novel``)."""
        trained = spec.missing_shares() if missing else {}
        inputs = schema.input_fields if schema is not None else ()
        return cls(trained, [name for name in inputs if name in trained],
                   novel_fields(spec.categorical) if novel else ())

    def add(self, events: Iterable[Mapping[str, Any]]) -> None:
        missing, novel, fields, kept = self.missing, self.novel, self.fields, self._kept
        for event in events:
            self.looked += 1
            for name in fields:
                value = event.get(name)
                if value is None or value == "":
                    missing[name] += 1
            for name, categories in kept:
                value = event.get(name)
                if value is not None and value != "" and value not in categories:
                    novel[name][str(value)] += 1

    def everywhere(self) -> set[str]:
        """The fields missing from every event added (the absent-field warnings say those)."""
        return {name for name, count in self.missing.items() if count == self.looked}

    def missing_warning(self, of: str, skip: Container[str] = (), fields_at: str = "") -> str | None:
        return missing_share_warning(self.trained, self.missing, self.looked, of, skip, fields_at)

    def novel_warning(self, of: str, redacted: Container[str] = ()) -> str | None:
        return novel_values_warning(self.columns, self.novel, self.looked, of, redacted)


LEAK_MIN_ROWS, LEAK_VALUE_SHARE, LEAK_COVERED = 5, 0.95, 0.8  # train's ground-truth check (below)


def leak_problem(name: str, counts: Mapping[Any, Sequence[int]]) -> str | None:
    """``train``'s ground-truth check of one category or boolean field (in memory and ``--streamed``), from
    its values' (normal rows, anomalous rows) ``counts``: the one-line refusal when values that are
    (nearly) only ever seen on anomalous rows (each with at least ``LEAK_MIN_ROWS`` rows, at least
    ``LEAK_VALUE_SHARE`` of them anomalous) cover at least ``LEAK_COVERED`` of the anomalous rows —
    a ground-truth column left in the file, like the simulator's ``label`` and ``pattern``; else
    None. Not run with fewer than 10 rows of either kind. (Delayed labels disagree with such a
    column now and then: analysts err, so the rule is not "exactly".)"""
    anomalous = sum(c[1] for c in counts.values())
    if min(anomalous, sum(c[0] for c in counts.values())) < 10:
        return None
    covered = sum(c[1] for c in counts.values() if sum(c) >= LEAK_MIN_ROWS and c[1] >= LEAK_VALUE_SHARE * sum(c))
    if covered < LEAK_COVERED * anomalous:
        return None
    return (f"field {name!r} gives the label away: {covered} of the {anomalous} anomalous rows have a value seen "
            f"(almost) only on anomalous rows (a ground-truth column?); --exclude {name}, or --keep {name} if it is a "
            "real feature")


def minority_normal_warning(source: str, normal: int, total: int, labels: Sequence[tuple[str, int]]) -> str | None:
    """``train``'s warning (in memory and ``--streamed``) when the normal label matches fewer than
    half the ``total`` labelled rows (``normal`` of them; ``labels``: the most common (label, count)
    pairs): swapped labels, most often (a trial trained on the simulator's frauds with
    ``--normal-label fraud``). None otherwise. ``source``: "label=fraud"
    as the lines name it. The share is rounded down, so that 49.96 % does not read "50.0 %"."""
    if 2 * normal >= total:
        return None
    share = int(1000 * normal / max(1, total)) / 10
    seen = ", ".join(f"{lab} {n:,}" for lab, n in labels)
    return (f"{source} matches {normal:,} of {total:,} rows ({share:.1f}%): the model learns from those and takes the "
            f"other {total - normal:,} for anomalies (labels: {seen}); --normal-label names the normal rows' label "
            "(the check for a ground-truth column, which assumes anomalies are the few, is skipped)")


def share_text(count: int, looked: int) -> str:
    """``count`` of ``looked`` as a percentage with one decimal, or two where one would round a
    share that is neither 0 nor all to 0.0 % or 100.0 % (a trial: 2,999 of 3,000 read "100.0%")."""
    share = count / looked if looked else 0.0
    text = f"{share:.1%}"
    if 0 < count < looked and text in ("0.0%", "100.0%"):
        finer = f"{share:.2%}"
        text = finer if finer not in ("0.00%", "100.00%") else ("<0.01%" if share < 0.5 else ">99.99%")
    return text


def missing_share_warning(trained: Mapping[str, float], missing: Mapping[str, int], looked: int, of: str,
                          skip: Container[str] = (), fields_at: str = "") -> str | None:
    """One line naming the fields of ``missing`` (field → how many of ``looked`` events lacked it:
    absent, null or empty) that are missing far more often than in the model's training
    (``trained``: ``FeatureSpec.missing_shares``, field → training's share): a share at least
    ``MISSING_GAP`` above training's and at least ``MISSING_FACTOR`` times it (for 1,024 events,
    ≥ 4.5 binomial standard deviations above training's share at any share: no false alarm from
    chance). ``of``: what the events are (``"the first 1,024 events it scored"``); ``skip``: fields
    said elsewhere (absent from every event); ``fields_at``: where the user finds the model's fields
    (``model show VERSION``, a bundle's ``spec.json``). None when none is, or the spec predates the
    shares.

    Why: a field training saw missing in 5 % of rows and a stream left out entirely raised 1.9
    times the alerts (a new-user trial, 2026-12-05), and a field missing in one event in 20 where
    training never saw it missing is scored at its training median (or most frequent value), which
    hides an anomaly in it; neither was said."""
    said = []
    for name, count in missing.items():
        before = trained.get(name)
        if before is None or name in skip or looked <= 0:
            continue
        share = count / looked
        if share >= before + MISSING_GAP and share >= MISSING_FACTOR * before:
            said.append(f"{name!r} in {share_text(count, looked)} ({before:.1%} in training)")
    if not said:
        return None
    advice = f" ({fields_at} lists the model's fields and how often training saw each missing)" if fields_at else ""
    return (f"of {of}, {len(said)} of the model's input fields {'is' if len(said) == 1 else 'are'} missing (absent, "
            f"null or empty) far more often than in its training: {'; '.join(said[:10])}"
            f"{f' and {len(said) - 10} more' if len(said) > 10 else ''}. Each missing value is scored as a number's "
            "training median, a category's most frequent value, or the missing-value column where training saw it "
            "missing: the model may alert more than its threshold was calibrated for, or miss an anomaly in those "
            f"fields. A change in the producer?{advice}")


FAR_SAMPLE = 100_000  # far_values_warning: rows looked at, at most
FAR_Z, FAR_SHARE = 50.0, 0.5  # far_values_warning: robust standard deviations, share of the rows (half:
# an evaluation file of mostly attacks, KDD99's 80 %, had two serror rates far out in 18 % of its rows)


def far_values_warning(spec: FeatureSpec, events: Sequence[Mapping[str, Any]], of: str) -> str | None:
    """One line naming each number feature of ``spec`` whose value, as the model scales it (signed
    ``log1p`` where the column takes it, then ``(x - center) / scale``: ``features.NumericColumn``),
    lies more than ``FAR_Z`` robust standard deviations from training's center in at least
    ``FAR_SHARE`` of ``events`` (typed; a missing value is not far); None when none does. Training
    rows sit within a few such deviations (heavy tails are logged first), so this is a column that
    moved, not a tail: an id or an absolute time the inference took for a number (a trial's
    ``TransactionID`` and epoch ``txn_time``: next month's file flagged 600 of 600 rows, nothing
    said), a unit or a producer that changed. A file of more than ``FAR_SAMPLE`` rows is judged on
    every k-th row (``FAR_SAMPLE`` of them): the share, not every row, decides."""
    if len(events) > FAR_SAMPLE:
        events = events[::len(events) // FAR_SAMPLE][:FAR_SAMPLE]
    n = len(events)
    said = []
    for column in spec.numeric if n else ():
        if not column.scale > 0:
            continue
        values = np.fromiter((v if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan
                              for v in (event.get(column.name) for event in events)), dtype=np.float64, count=n)
        if column.log:
            values = np.sign(values) * np.log1p(np.abs(values))
        far = int(np.count_nonzero(np.abs(values - column.center) > FAR_Z * column.scale))  # NaN: not far
        if far >= FAR_SHARE * n:
            said.append(f"{column.name!r} in {share_text(far, n)}")
    if not said:
        return None
    return (f"of {of}, {len(said)} number feature{'s are' if len(said) > 1 else ' is'} far outside anything its "
            f"training saw (more than {FAR_Z:g} robust standard deviations from training's median): "
            f"{'; '.join(said)}. Such values dominate the reconstruction error: expect alerts on most of those rows. "
            "An id, a row number or an absolute time taken for a number (train again with --field NAME=ignored, "
            "or --exclude NAME), or a unit or producer that changed?")


def file_warnings(spec: FeatureSpec, schema: FieldSchema | None, events: Sequence[Mapping[str, Any]], what: str,
                  redacted: Container[str] = (), fields_at: str = "") -> tuple[str | None, str | None, str | None]:
    """The missing-value, new-value and far-value warnings (None: nothing to say) for the valid (typed) events
    of a file ``score`` reads, counted as the worker counts the events it scores (a trial: rows
    rejected as ``wrong_type`` were counted as missing values "scored as the training median");
    fields missing in every event are left to ``absent_warnings``. ``what``: the rows, as in "the
    3,000 ``valid rows``"; ``redacted``: fields whose values are not shown (``SD_ALERT_REDACT_FIELDS``);
    ``fields_at``: ``missing_share_warning``'s."""
    counts = DriftCounts.of(spec, schema)
    counts.add(events)
    of = f"the {counts.looked:,} {what}"
    return (counts.missing_warning(of, counts.everywhere(), fields_at), counts.novel_warning(of, redacted),
            far_values_warning(spec, events, of))


def novel_fields(columns: Sequence[CategoricalColumn]) -> list[CategoricalColumn]:
    """The category fields whose new values ``novel_values_warning`` watches: those with a training
    share of values it did not keep (``other_share``) and an imputed value. Where training saw the
    field missing (no imputed value), ``__other__`` is its missing-value column and a new value
    reads as missing, not as novel (a trial: the warning said "very unusual" where the scores
    equalled those of null); a spec from before 2026-12-05 says neither."""
    return [c for c in columns if c.other_share is not None and c.impute is not None]


def novel_values_warning(columns: Sequence[CategoricalColumn], novel: Mapping[str, Counter[str]], looked: int,
                         of: str, redacted: Container[str] = ()) -> str | None:
    """One line naming each field of ``columns`` (``novel_fields``) whose share of values training
    did not keep, among ``looked`` events (``novel``: ``DriftCounts.novel``), is at least ``NOVEL_SHARE``
    and more than ``NOVEL_FACTOR`` times its training share (``CategoricalColumn.other_share``),
    with its commonest such values (not those of a ``redacted`` field); ``of``: what the events are.
    None when none is. Each such event is scored as the field's ``__other__`` column, which a model
    that never saw it on may read as very unusual: two new-user trials sent a new ``channel``
    value, one model alerted on every such event and another on few, and nothing was said."""
    said = []
    for column in columns:
        counts = novel.get(column.name)
        if counts is None or column.other_share is None or looked <= 0:
            continue
        share = sum(counts.values()) / looked
        if share >= NOVEL_SHARE and share > NOVEL_FACTOR * column.other_share:
            shown = "" if column.name in redacted else " (e.g. " + ", ".join(
                repr(v) for v, _ in counts.most_common(3)) + ")"
            said.append(f"{column.name!r}: {share:.1%} of them{shown}, against {column.other_share:.1%} in training")
    if not said:
        return None
    return (f"of {of}, many carry category values the model's training did not keep — {'; '.join(said)}. Each is "
            f"scored as a value it never saw (the field's {OTHER} column), which the model may read as very "
            "unusual: expect more alerts than its threshold was calibrated for. New values can be the anomaly "
            "itself (a fraud pattern's merchant or country: check the alerts that name the field). A legitimate "
            "new value? Retrain on legit events that carry it")


def model_fields(spec: FeatureSpec, schema: FieldSchema | None) -> list[dict[str, Any]]:
    """``model show``'s ``fields``: each input field of the model (``FieldSchema.input_fields``,
    in schema order) with its type and what training saw of it — for a number feature its training
    median (a missing value's) and whether a missing indicator was learned; for a category its
    kept values, the one a missing value reads as (``imputed``; null: the ``__other__`` column) and
    the share of training rows with a value it did not keep; for both, the share of training rows
    it was missing in (null in a spec of format 1-2). A field that is no feature (an entity key)
    has ``"feature": null``. The warnings about missing and new values point here (a trial: they
    named ``model show``, which listed no field)."""
    if schema is None:
        return []
    numeric = {c.name: c for c in spec.numeric}
    categorical = {c.name: c for c in spec.categorical}
    out: list[dict[str, Any]] = []
    for name in schema.input_fields:
        item: dict[str, Any] = {"name": name, "type": schema[name].type.value, "feature": None}
        if name in numeric:
            num = numeric[name]
            item.update(feature="number", median=num.median, missing_indicator=num.missing_indicator,
                        missing_share=num.missing_share)
        elif name in categorical:
            cat = categorical[name]
            item.update(feature="category", categories=list(cat.categories), imputed=cat.impute,
                        other_share=cat.other_share, missing_share=cat.missing_share)
        out.append(item)
    return out


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the name in ``names`` closest to a mistyped ``name`` (difflib, or
    the same name in another case), or ``""``."""
    import difflib

    choices = sorted(set(names) - {name})
    close = (difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
             or [c for c in choices if c.lower() == name.lower()])
    return f" (did you mean {close[0]!r}?)" if close else ""


def absent_warnings(schema: FieldSchema | None, entity: EntitySpec | None, seen: set[str]) -> list[str]:
    """What a file (whose rows have a value in the fields ``seen``) lacks that a model reads, one warning
    each: feature fields (every row gets the training median or an unseen category; none of the
    model's input fields at all: every row is ``no_features``), entity keys (every row gets the
    features of an entity with no history) and, for a model with history, the ``timestamp``
    (windows cannot advance: each entity's last time is used, docs/entity-features.md).
    ``score`` (in memory and ``--streamed``) says them before scoring."""
    out: list[str] = []
    absent = [r.name for r in schema.feature_fields if r.name not in seen] if schema is not None else []
    inputs = schema.input_fields if schema is not None else ()
    others = seen - {r.name for r in schema.fields} if schema is not None else seen

    def hinted(names: Sequence[str]) -> str:  # a trial: a renamed column (amt) scored every row, exit 0, no hint
        return ", ".join(name + did_you_mean(name, others) for name in names[:10])

    if inputs and not seen.intersection(inputs):
        out.append(f"none of the model's {len(inputs)} input fields is in this file (or each is empty in every "
                   f"row), so every row is rejected as no_features: {hinted(inputs)}")
    elif absent:
        verb = "is" if len(absent) == 1 else "are"
        out.append(f"{len(absent)} of the model's feature fields {verb} not in this file (or empty in every row), "
                   "so every row gets a missing value for them (a number's training median; a category's most "
                   "frequent value, or the missing-value column where training saw it missing): "
                   + hinted(absent))
    if entity is not None:
        keys = [k for k in (*entity.keys, *entity.label_keys) if k not in seen]
        if keys:
            out.append(f"the model keeps history per {', '.join(dict.fromkeys(keys))}, which this file does not "
                       "have (or leaves empty in every row): every row gets the features of an entity with no "
                       "history")
        if "timestamp" not in seen:
            # a trial: the handbook's TX_DATETIME scored 95 % of its rows as anomalies, the column unnamed
            timely = sorted(n for n in seen if re.search(r"time|date|created|(^|[^a-z])ts($|[^a-z])", n.lower()))
            rename = (f"; {', '.join(timely[:3])} {'looks' if len(timely) == 1 else 'look'} like it: "
                      f"--timestamp-column {timely[0]} reads it as the event time" if timely else "")
            out.append("the model's history windows run on event time, and this file has no timestamp values "
                       "(no such field, or empty in every row): every row is taken at its entity's last time"
                       f"{rename} (docs/entity-features.md)")
    return out
