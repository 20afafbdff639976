"""Files → typed events: the offline twin of step 2 (decode), for ``train``, ``score`` and ``produce``.

``events_io.read_rows`` reads a file untyped; here each row gets its ``event_id`` (the id column,
else ``event_id``, else ``<file>-<row>``), its label is set aside, and the rows go through the
worker's own ``decode.type_events`` with a field schema — the bundle's when scoring, one inferred
from these rows when training. Every row ends up either as an event or as a rejection with its
reason, exactly as the same record would in a worker.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .events_io import RawRows, ReaderOptions, RowRejection, read_rows
from .fieldschema import FieldSchema, InferenceOptions, infer_schema
from .pipeline.decode import type_events


@dataclass
class FileEvents:
    """A file's rows as typed events, with the rows that are not events and why.

    ``events[k]`` came from file row ``rows[k]`` (0-based, file order); ``labels[k]`` is its label
    (when a label column was named). ``ids[i]`` is the event id of file row ``i`` (every row).
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
        counts = Counter(r.reason.value for r in self.rejected)
        first = self.rejected[0]
        return (f"{len(self.rejected)} of {self.total} rows rejected "
                f"({', '.join(f'{k} {v}' for k, v in counts.most_common())}; "
                f"e.g. row {first.index + 1}: {first.message})")


def load_events(path: Path, *, options: ReaderOptions | None = None, id_column: str | None = None,
                label_column: str | None = None, schema: FieldSchema | None = None,
                inference: InferenceOptions | None = None, limit: int | None = None) -> FileEvents:
    """Read and type ``path``. With ``schema`` (scoring) values are converted by it; without, one is
    inferred from the rows (``inference`` adds ids, keys, exclusions and overrides).

    Raises ``InputError`` when the file cannot be read, has no rows, or lacks the label column.
    """
    raw = read_rows(path, options or ReaderOptions(), limit)
    if not raw.rows:
        raise InputError(f"{path}: no rows")
    stem = path.name.split(".")[0]
    id_col = id_column or "event_id"
    ids: list[str] = []
    labels: list[str] | None = [] if label_column else None
    row_labels: list[str | None] = []
    for n, row in enumerate(raw.rows):
        if row is None:
            ids.append(raw.rejected_ids.get(n, f"{stem}-{n}"))
            row_labels.append(None)
            continue
        if label_column is not None:
            if label_column not in row:
                raise InputError(f"{path}: row {n + 1} has no label column {label_column!r}")
            row_labels.append(_label_text(row.pop(label_column)))
        ident = row.pop(id_col, None) if id_col != "event_id" else row.get("event_id")
        if ident is None or ident == "":
            row["event_id"] = f"{stem}-{n}"
        elif id_col != "event_id":
            row["event_id"] = _id_text(ident)
        ids.append(str(row["event_id"]))
    present = [row for row in raw.rows if row is not None]
    warnings: list[str] = []
    if schema is None:
        base = inference or InferenceOptions()
        inferred = infer_schema(present, InferenceOptions(
            identifiers=base.identifiers | {"event_id"}, ignored=base.ignored, overrides=base.overrides,
            max_categories=base.max_categories, text=raw.text))
        schema, warnings = inferred.schema, inferred.warnings
    positions = [n for n, row in enumerate(raw.rows) if row is not None]
    rejected_rows: list[Any] = []
    typed = type_events(present, positions, schema, raw.text, rejected_rows, from_json=raw.kind == "jsonl")
    rejected = sorted([*raw.rejected, *(RowRejection(r.index, r.reason, r.message) for r in rejected_rows)],
                      key=lambda r: r.index)
    if labels is not None:
        labels.extend(str(row_labels[n]) for n in typed.indices)
    return FileEvents(typed.events, typed.indices, labels, rejected, ids, schema, raw, warnings)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
