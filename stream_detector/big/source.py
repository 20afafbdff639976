"""Big inputs, streamed: a file, a directory or a glob of files read in chunks of rows, typed chunk by chunk.

The same rules as ``events_io`` / ``inputs.load_events`` (one event, one meaning), without ever
holding the whole input: CSV is read in pyarrow record batches (``events_io._csv_batches``: the
same dialect sniffing, missing-value markers, ragged-row rejections), Parquet in its row groups
(``ParquetFile.iter_batches``), JSON Lines line by line through the worker's record decoder. Plain
or gzip / bzip2 / zstd compressed. CSV and Parquet chunks stay Arrow tables (``big/columnar.py``
types them as columns); ``RawChunk.rows`` makes dicts of a chunk only where the row-wise reference
needs them.

Differences from the in-memory reader, said plainly:
* the field schema is inferred from the first ``sample_rows`` rows (the in-memory reader uses
  every row), then applied to every chunk; a value that does not fit it is that row's rejection;
* whether event ids are generated (``<file>-<row>``) follows the in-memory rule over the whole
  file (``GeneratedIds``: the file is read up to its first id, so a file without ids is read twice).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..events_io import (
    Consumed,
    ReaderOptions,
    RowRejection,
    _csv_batches,
    _open_binary,
    _plain_column,
    checked_kind,
    file_kind,
    jsonl_records,
    missing_id_column,
    sniff_csv,
)
from ..fieldschema import JSON_TEXT, FieldSchema, TextFormat
from ..pipeline.decode import Rejected, type_events

DEFAULT_CHUNK_ROWS = 65_536


def input_files(spec: str) -> list[Path]:
    """The files of ``spec``: one file, every file of a directory (recursively, e.g. partitioned by
    day), or a glob pattern; sorted by path, which is the order their rows are read in (name day
    partitions so that it is time order). Names and folders starting with ``.`` or ``_`` (markers,
    Spark / Hive staging) and files that are not CSV, JSON Lines or Parquet are left out.

    Raises ``InputError`` when nothing matches.
    """
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        files = [p for p in found if _is_data(p)]  # README.txt, *.crc, … beside the partitions are not rows
        if not files:
            raise InputError(f"{spec}: no CSV, JSON Lines or Parquet file in the directory"
                             + (f" ({len(found)} other files, e.g. {found[0].name})" if found else ""))
    else:
        matched = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        fixed = Path(*[part for part in itertools.takewhile(lambda q: not any(c in q for c in "*?["), path.parts)])
        files = [p for p in matched if not _hidden(p.relative_to(fixed)) and _is_data(p)]
        if matched and not files:
            raise InputError(f"{spec}: no CSV, JSON Lines or Parquet file among the {len(matched)} files it matches "
                             f"(e.g. {matched[0].name})")
    if not files:
        raise InputError(f"input not found: {spec} (a file, a directory of files or a glob pattern)")
    kinds: dict[str, Path] = {}
    for p in files:
        kinds.setdefault(file_kind(p), p)
    if len(kinds) > 1:
        named = ", ".join(f"{kind}: {example}" for kind, example in sorted(kinds.items()))
        raise InputError(f"{spec}: files of different kinds ({named}); give one kind per input")
    return files


_DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")


def _hidden(relative: Path) -> bool:
    """A name or folder below the input that starts with ``.`` or ``_``: markers (``_SUCCESS``),
    and the staging folders of Spark and Hive (``_temporary/``, ``.hive-staging…/``), whose files are
    not (yet) the table's rows."""
    return any(part.startswith((".", "_")) for part in relative.parts)


def _is_data(path: Path) -> bool:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    return name.endswith(_DATA_SUFFIXES)


def stems(files: Sequence[Path]) -> dict[Path, str]:
    """The prefix of each file's generated event ids (``<stem>-<row>``): its name up to the first dot
    for one file (as the in-memory reader), its path below the files' common folder for several —
    ``day=2026-11-01/part-0`` — so that partitions with the same file name get different ids."""
    if len(files) == 1:
        return {files[0]: files[0].name.split(".")[0]}
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    return {p: str(p.relative_to(root).with_name(p.name.split(".")[0])) for p in files}


@dataclass
class RawChunk:
    """Rows ``first_row .. first_row + n - 1`` of the input (0-based, across files), untyped.

    CSV and Parquet chunks hold the rows that were read as an Arrow ``table`` (CSV: text cells;
    Parquet: its types, times as epoch ms), ``present[j]`` the chunk position of table row ``j``
    (a ragged CSV row is a rejection, not a table row). JSON Lines chunks hold the decoded objects.
    ``rows`` gives every chunk as a list of dicts (None: not an event; built on first use, for the
    row-wise reference and the schema inference of the first rows)."""

    path: Path
    first_row: int  # global row number of the chunk's first row
    file_row: int  # row number of the chunk's first row within its file
    n: int  # rows of the chunk, events and rejections
    rejected: list[RowRejection]
    text: TextFormat
    kind: str
    table: pa.Table | None = None
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rejected_ids: dict[int, str] = field(default_factory=dict)  # global row → id salvaged from a bad line
    warnings: list[str] = field(default_factory=list)
    stem: str = ""  # prefix of generated ids (``stems``)
    bytes_read: int = 0  # of the file as stored, after this chunk (CSV, JSON Lines: for the time left)
    _rows: list[dict[str, Any] | None] | None = None

    @property
    def rows(self) -> list[dict[str, Any] | None]:
        if self._rows is None:
            rows: list[dict[str, Any] | None] = [None] * self.n
            if self.table is not None:
                for pos, row in zip(self.present.tolist(), self.table.to_pylist(), strict=True):
                    rows[pos] = row
            self._rows = rows
        return self._rows

    def table_index(self, positions: np.ndarray) -> np.ndarray:
        """The table rows of chunk ``positions`` (each a present row)."""
        return np.searchsorted(self.present, positions)


def raw_chunks(files: Sequence[Path], options: ReaderOptions | None = None,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[RawChunk]:
    """Every row of ``files`` in order, ``chunk_rows`` at a time (a chunk never spans two files).

    Raises ``InputError`` for a file that cannot be read at all (as ``events_io.read_rows``).
    """
    options = options or ReaderOptions()
    first = 0
    prefix = stems(files)
    for path in files:
        kind = checked_kind(path)
        in_file = 0
        try:
            reader = {"jsonl": _jsonl, "parquet": _parquet}.get(kind)
            chunks = (reader(path, chunk_rows, options.id_column) if reader is not None
                      else _csv(path, options, chunk_rows))
            for chunk in chunks:
                chunk.first_row = first + chunk.file_row
                chunk.stem = prefix[path]
                for r in chunk.rejected:
                    r.index += first
                chunk.rejected_ids = {k + first: v for k, v in chunk.rejected_ids.items()}
                yield chunk
                in_file = chunk.file_row + chunk.n
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
            text = str(exc).strip()
            raise InputError(f"{path}: {text.splitlines()[0] if text else type(exc).__name__}") from None
        first += in_file


def _jsonl(path: Path, chunk_rows: int, id_column: str = "event_id") -> Iterator[RawChunk]:
    rows: list[dict[str, Any] | None] = []
    rejected: list[RowRejection] = []
    ids: dict[int, str] = {}
    start = 0
    consumed = Consumed()
    with _open_binary(path, consumed) as stream:
        for obj, problem, ident in jsonl_records(stream, id_column):
            if problem is not None:
                rejected.append(RowRejection(start + len(rows), problem[0], problem[1]))
                if ident is not None:
                    ids[start + len(rows)] = ident
            rows.append(obj)
            if len(rows) >= chunk_rows:
                yield RawChunk(path, 0, start, len(rows), rejected, JSON_TEXT, "jsonl", rejected_ids=ids, _rows=rows,
                               bytes_read=consumed())
                start += len(rows)
                rows, rejected, ids = [], [], {}
        if rows:
            yield RawChunk(path, 0, start, len(rows), rejected, JSON_TEXT, "jsonl", rejected_ids=ids, _rows=rows,
                           bytes_read=consumed())


def _parquet(path: Path, chunk_rows: int, id_column: str = "event_id") -> Iterator[RawChunk]:
    start = 0
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=chunk_rows):
        table = pa.Table.from_batches([batch])
        table = pa.table({name: _plain_column(table.column(name)) for name in table.column_names})
        n = table.num_rows
        yield RawChunk(path, 0, start, n, [], JSON_TEXT, "parquet", table, np.arange(n, dtype=np.int64))
        start += n


def _csv(path: Path, options: ReaderOptions, chunk_rows: int) -> Iterator[RawChunk]:
    dialect = sniff_csv(path, options)
    ragged: dict[int, RowRejection] = {}
    start = 0
    warnings = list(dialect.warnings)
    block = max(1 << 16, min(options.block_size, chunk_rows * 128))  # ~chunk_rows rows of ~100 bytes
    sized = replace(options, block_size=block)
    consumed = Consumed()
    for batch in _csv_batches(path, dialect, sized, ragged, consumed):
        # the batch's rows are the next good rows; ragged rows between them are this chunk's. pyarrow
        # parses blocks ahead, so ``ragged`` may already hold rows of later batches: never count those
        later = np.array(sorted(i for i in ragged if i >= start), dtype=np.int64)
        span = np.arange(start, start + batch.num_rows + len(later), dtype=np.int64)
        good = span[~np.isin(span, later)][:batch.num_rows]
        pos = int(good[-1]) + 1 if len(good) else start
        total = pos - start
        mine = [ragged.pop(i) for i in sorted(i for i in ragged if i < pos)]
        yield RawChunk(path, 0, start, total, mine, dialect.text, "csv", pa.Table.from_batches([batch]),
                       good - start, warnings=warnings, bytes_read=consumed(), rejected_ids=_ids_of(mine))
        warnings = []
        start += total
    if ragged:  # ragged rows after the last good row
        end = max(ragged) + 1
        mine = [ragged.pop(i) for i in sorted(ragged)]
        yield RawChunk(path, 0, start, end - start, mine, dialect.text, "csv",
                       pa.table({name: pa.array([], pa.string()) for name in dialect.names}),
                       np.zeros(0, dtype=np.int64), warnings=warnings, bytes_read=consumed(),
                       rejected_ids=_ids_of(mine))


def _ids_of(rejected: Sequence[RowRejection]) -> dict[int, str]:
    """File row → the ``event_id`` a rejected CSV row still names (``RowRejection.event_id``)."""
    return {r.index: r.event_id for r in rejected if r.event_id}


@dataclass
class TypedChunk:
    """A chunk's events typed by the schema: ``events[k]`` is global row ``rows[k]``; ``labels[k]``
    its label text (with a label column); rows that are not events are in ``rejected``."""

    events: list[dict[str, Any]]
    rows: list[int]
    labels: list[str] | None
    rejected: list[RowRejection]
    total: int  # rows of the chunk, events and rejections


@dataclass
class Prepared:
    """A chunk's rows ready to type: ids set, labels set aside (``inputs.load_events``'s rules)."""

    chunk: RawChunk
    present: list[dict[str, Any]]
    positions: list[int]  # global row number of each present row
    labels: dict[int, str]  # global row → label text (with a label column)


def prepare_chunk(chunk: RawChunk, *, id_column: str | None, label_column: str | None,
                  generate_ids: bool, require_labels: bool = True) -> Prepared:
    """Ids from ``id_column`` (else ``event_id``; ``<file>-<row>`` when ``generate_ids``) and the
    label set aside, in place, as ``inputs.load_events`` does. Raises ``InputError`` for rows
    without a label (``inputs.take_label``) when ``require_labels`` (training; scoring only sets
    the label aside)."""
    from ..inputs import _id_text, csv_schema_version, take_label, unlabelled_rows

    stem = chunk.stem or chunk.path.name.split(".")[0]
    id_col = id_column or "event_id"
    present: list[dict[str, Any]] = []
    positions: list[int] = []
    labels: dict[int, str] = {}  # "": the row has no label (``inputs.take_label``)
    unlabelled: list[int] = []
    for i, row in enumerate(chunk.rows):
        if row is None:
            continue
        n = chunk.first_row + i
        if label_column is not None:
            label = take_label(row, label_column)
            if label is None:
                unlabelled.append(chunk.file_row + i + 1)
            labels[n] = label or ""
        if chunk.kind == "csv":
            csv_schema_version(row)
        ident = row.pop(id_col, None) if id_col != "event_id" else row.get("event_id")
        if ident is None or ident == "":
            if generate_ids:
                row["event_id"] = f"{stem}-{chunk.file_row + i + 1}"
        elif id_col != "event_id" or not isinstance(ident, str):
            row["event_id"] = _id_text(ident)
        present.append(row)
        positions.append(n)
    if unlabelled and require_labels:
        raise InputError(unlabelled_rows(chunk.path, label_column or "", unlabelled, whole=False))
    return Prepared(chunk, present, positions, labels)


def type_prepared(prepared: Prepared, schema: FieldSchema, with_labels: bool) -> TypedChunk:
    """The prepared rows typed by ``schema`` with the worker's ``decode.type_events``."""
    chunk = prepared.chunk
    rejected: list[Rejected] = []
    typed = type_events(prepared.present, prepared.positions, schema, chunk.text, rejected,
                        from_json=chunk.kind == "jsonl")
    problems = [*chunk.rejected, *(RowRejection(r.index, r.reason, r.message) for r in rejected)]
    assert isinstance(typed.events, list)  # type_events gives lists (only decode_batch's lazy reading does not)
    labels = [prepared.labels[n] for n in typed.indices] if with_labels else None
    return TypedChunk(typed.events, list(typed.indices), labels, sorted(problems, key=lambda r: r.index),
                      chunk.n)


def generates_ids(chunk: RawChunk, id_column: str | None) -> bool:
    """``inputs.load_events``'s rule on a file's first chunk: ids are generated only when no row has one."""
    col = id_column or "event_id"
    if chunk.table is not None:
        if col not in chunk.table.column_names:
            return True
        ids = chunk.table.column(col)
        if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
            return not bool(pc.any(pc.not_equal(ids, "")).as_py())
        return bool(ids.null_count == len(ids))
    return not any(row is not None and row.get(col) not in (None, "") for row in chunk.rows)


class GeneratedIds(dict[Path, bool]):
    """File → whether its event ids are generated: ``inputs.load_events``' rule over the whole file
    (only when no row of it has an id), decided on first use by reading the file up to its first
    row with an id — usually its first row; a file without ids is read through once more. An
    explicit ``id_column`` no row has raises ``InputError`` (``missing_id_column``)."""

    def __init__(self, id_column: str | None, options: ReaderOptions | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        self.id_column, self.options, self.chunk_rows = id_column, options, chunk_rows

    def of(self, chunk: RawChunk) -> bool:
        """The decision for ``chunk``'s file; a file's first chunk with an id decides it without
        reading the file again."""
        if chunk.path not in self and chunk.file_row == 0 and not generates_ids(chunk, self.id_column):
            self[chunk.path] = False
        return self[chunk.path]

    def __missing__(self, path: Path) -> bool:
        value = all(generates_ids(chunk, self.id_column)
                    for chunk in raw_chunks([path], self.options, self.chunk_rows))
        if value and self.id_column:
            raise InputError(missing_id_column(path, self.id_column))
        self[path] = value
        return value

