"""Reading events from files (CSV with a header, or JSON Lines; optionally gzip-compressed).

A CSV row and the JSON object of the same row are the same event: empty cells and ``nan`` are
missing values, cells that parse as numbers are numbers, everything else is a string. The id
column (``event_id`` unless told otherwise) and ``account_id`` always stay strings. The label
column, when given, is removed from the event and returned beside it (labels are never features).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from .errors import InputError

_INT = re.compile(r"^[+-]?\d{1,18}$")
_MISSING = {"", "nan", "NaN", "NAN", "null", "None", "NA"}
_KEEP_STRING = {"event_id", "account_id"}


@dataclass
class LabelledEvents:
    events: list[dict[str, Any]]
    labels: list[str] | None


def _open(path: Path) -> TextIO:
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8", newline="")


def _is_jsonl(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith((".jsonl", ".ndjson", ".json"))


def parse_cell(value: str) -> Any:
    """CSV cell → None, int, float or str (see module docstring)."""
    if value in _MISSING:
        return None
    if _INT.match(value):
        return int(value)
    try:
        number = float(value)
    except ValueError:
        return value
    return number if number == number and abs(number) != float("inf") else value


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Raw rows of a CSV or JSON Lines file, typed as described above."""
    with _open(path) as handle:
        if _is_jsonl(path):
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: invalid JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object per line")
                yield row
        else:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise InputError(f"{path}: empty CSV (a header row is required)")
            for row in reader:
                yield {k: (v if k in _KEEP_STRING else parse_cell(v)) for k, v in row.items()
                       if k is not None and v is not None}


def read_events(path: Path, id_column: str | None = None, label_column: str | None = None,
                limit: int | None = None) -> LabelledEvents:
    """Events (with a string ``event_id``) and, when ``label_column`` is given, their labels."""
    events: list[dict[str, Any]] = []
    labels: list[str] | None = [] if label_column else None
    id_col = id_column or "event_id"
    for n, row in enumerate(iter_rows(path)):
        if limit is not None and n >= limit:
            break
        if labels is not None:
            if label_column not in row:
                raise InputError(f"{path}: row {n + 1} has no label column {label_column!r}")
            labels.append(_label_text(row.pop(label_column)))
        ident = row.pop(id_col, None) if id_col != "event_id" else row.get("event_id")
        row["event_id"] = str(ident) if ident not in (None, "") else f"{path.name.split('.')[0]}-{n}"
        if row.get("account_id") is not None:
            row["account_id"] = str(row["account_id"])
        events.append(row)
    if not events:
        raise InputError(f"{path}: no rows")
    return LabelledEvents(events, labels)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(names))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
