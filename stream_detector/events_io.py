"""Reading events from files: CSV (with a header), JSON Lines, Parquet; plain or compressed.

Reading is *untyped*: a CSV cell stays the text that was written (or ``None`` when it is one of
the missing-value markers), a JSON Lines row is parsed by the worker's own record decoder
(``pipeline.decode.parse_record``: the same invalid-JSON, non-finite and duplicate-key rules as a
Kafka record), a Parquet value is its column's value. Types are the field schema's job
(``fieldschema.py``): ``train`` fits it on these rows, ``score`` applies the bundle's — so the
same event from CSV, JSON Lines, Parquet or Kafka becomes the same typed event.

Files are read with pyarrow (chosen by measurement, ``benchmarks/RESULTS.md`` "File readers":
pyarrow and polars both parse a 200k-row CSV ~12× faster than the stdlib reader; pyarrow also
reads Parquet and streams CSV in record batches, one library for every format). What the reader
handles for CSV: a UTF-8 byte-order mark, the delimiter (sniffed among ``, ; TAB |`` from the
header line, or ``--delimiter``), quoted fields with newlines, missing-value markers
(``--na-values``), and ``.gz``/``.bz2``/``.zst`` compression. The number format of text cells
(``--decimal``, ``--thousands``; ``auto`` by default: ``;``-separated files whose numbers are
written ``12,50`` have a decimal comma) travels with the rows to the converter.

A row that cannot be an event (invalid JSON, a repeated key, ...) is kept as a rejection with its
reason and row number; it never aborts the file. A file that cannot be read at all (missing, no
header, a header naming one column twice, a CSV row with the wrong number of cells) is an
``InputError`` naming the problem.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import InputError
from .fieldschema import JSON_TEXT, TextFormat
from .pipeline.decode import parse_record
from .schema import RejectReason, json_type

DEFAULT_NA = ("", "NA", "N/A", "null", "NULL", "None", "nan", "NaN")
_DELIMITERS = ",;\t|"
_COMMA_DECIMAL = re.compile(r"^[+-]?\d+,\d+$")
_DOT_DECIMAL = re.compile(r"^[+-]?\d+\.\d+$")
_DOT_GROUPED = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+$")  # 1.500: one and a half, or fifteen hundred
_SAMPLE_BYTES = 1 << 16


@dataclass(frozen=True)
class ReaderOptions:
    """How to read a file; ``None`` / ``"auto"`` values are detected (see the module docstring)."""

    delimiter: str | None = None
    decimal: str = "auto"
    thousands: str = "auto"
    na_values: tuple[str, ...] = DEFAULT_NA
    block_size: int = 1 << 22
    id_column: str = "event_id"  # the column whose value a rejected row is still named by, when readable


@dataclass
class RowRejection:
    """A row that is not an event: its position in the file (0-based), reason and message, and the
    ``event_id`` the row still names when a reader can tell (a CSV row whose error is in another
    cell), so a rejection names the event rather than a made-up id."""

    index: int
    reason: RejectReason
    message: str
    event_id: str | None = None


@dataclass
class RawRows:
    """Every row of a file in order: ``rows[i]`` is ``None`` for a row in ``rejected``."""

    rows: list[dict[str, Any] | None]
    rejected: list[RowRejection]
    text: TextFormat  # number format of text values (JSON_TEXT for JSON Lines and Parquet)
    kind: str  # "csv", "jsonl" or "parquet"
    rejected_ids: dict[int, str] = field(default_factory=dict)  # event_id read from a rejected line
    warnings: list[str] = field(default_factory=list)  # what the reader could not decide for sure


def _plain_name(path: Path) -> str:
    """The lower-case file name without a compression suffix."""
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    return name


def file_kind(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` by the name (a compression suffix aside); CSV when the name says none."""
    name = _plain_name(path)
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def names_a_format(path: Path) -> bool:
    """Whether the name (a compression suffix aside) ends in an extension ``file_kind`` knows."""
    return _plain_name(path).endswith((".csv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq"))


_SNIFF_BYTES = 1 << 16
_SNIFF_LINES = 5
_NAMES = {"csv": "CSV", "jsonl": "JSON Lines", "parquet": "Parquet"}


def checked_kind(path: Path) -> str:
    """``file_kind`` (by the name), checked against the file's first bytes (decompressed): a
    Parquet file named as text, JSON Lines named ``.csv``, CSV (or one JSON array) named
    ``.jsonl`` would otherwise be read as the wrong format — every row alerted or rejected, exit
    0. Raises ``InputError`` naming what the file looks like; an empty or unreadable file is left
    to the reader. The rules: Parquet starts with ``PAR1``; a ZIP archive (an .xlsx workbook) is
    refused as one; UTF-16 text (a byte order mark, or NUL
    bytes) is refused; a CSV file whose first line starts with ``{`` or ``[`` is JSON; a JSON Lines
    file whose first line starts with ``[`` is one JSON document, and one none of whose first 5
    lines is an object while the first holds a delimiter is CSV. Other bad lines stay each line's
    own rejection."""
    kind = file_kind(path)
    try:
        with _open_binary(path) as stream:
            head = bytes(stream.read(_SNIFF_BYTES))
    except (OSError, pa.ArrowInvalid):
        return kind
    named = f"{path}: named as {_NAMES[kind]}"
    if head.startswith(b"PAR1"):
        with path.open("rb") as raw:
            if not raw.read(4).startswith(b"PAR1"):  # gzip (etc.) around a Parquet file
                raise InputError(f"{path}: a compressed Parquet file: Parquet compresses inside (its own codecs); "
                                 "decompress the file (e.g. gunzip)")
        if kind != "parquet":
            raise InputError(f"{named}, but it is a Parquet file (it starts with PAR1): name it .parquet")
        return kind
    if kind == "parquet":
        if head:
            raise InputError(f"{named}, but it is not one (a Parquet file starts with PAR1): CSV or JSON Lines? "
                             "name it .csv or .jsonl")
        return kind
    if head.startswith(b"PK\x03\x04"):  # an .xlsx / .ods workbook is a ZIP archive (a new-user trial)
        raise InputError(f"{path}: a ZIP archive, such as an Excel (.xlsx) or OpenDocument workbook: save the "
                         "sheet as CSV (UTF-8), or unzip the archive")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or _utf16_like(head[:4096]):
        raise InputError(f"{path}: UTF-16 (or other non-UTF-8) text, as Excel's \"Unicode text\" writes: "
                         "re-encode it as UTF-8")
    if b"\x00" in head[:4096]:  # NUL bytes, but not in UTF-16's pattern (a new-user trial: random bytes were "UTF-16")
        raise InputError(f"{path}: binary data, not text (it holds NUL bytes): not a CSV, JSON Lines or Parquet file")
    text = head.removeprefix(b"\xef\xbb\xbf")
    lines = [line.strip() for line in text.split(b"\n")]  # the last one maybe cut short: its start is enough
    first = [line for line in lines if line][:_SNIFF_LINES]
    if not first:
        return kind
    if kind == "csv" and first[0].startswith((b"{", b"[")):
        what = "a JSON object: JSON Lines? name it .jsonl" if first[0].startswith(b"{") else "a JSON array"
        raise InputError(f"{named}, but its first line is {what}")
    if kind == "jsonl" and first[0].startswith(b"["):
        raise InputError(f"{named}, but it starts with '[': one JSON document (an array), not one object per "
                         "line; write one object per line")
    if kind == "jsonl" and len(first) > 1 and first[0].startswith(b"{") and not first[0].endswith(b"}") \
            and not first[1].startswith(b"{"):  # a trial: a pretty-printed object read as 5 rows of invalid_json
        raise InputError(f"{named}, but its first object spans several lines (a pretty-printed JSON document?): "
                         "JSON Lines has one whole object per line")
    if kind == "jsonl" and not any(line.startswith(b"{") for line in first) \
            and any(sep in first[0] for sep in (b",", b";", b"\t", b"|")):
        which = "its first line is not" if len(first) == 1 else f"none of its first {len(first)} lines is"
        raise InputError(f"{named}, but {which} a JSON object and it looks like CSV: name it .csv")
    return kind


def read_rows(path: Path, options: ReaderOptions = ReaderOptions(), limit: int | None = None) -> RawRows:
    """Read ``path`` (CSV, JSON Lines or Parquet by its name, checked against its first bytes:
    ``checked_kind``) into raw rows; see the module docstring.

    Raises ``InputError`` when the file cannot be read at all, or is not in the format its name says.
    """
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    kind = checked_kind(path)
    try:
        if kind == "jsonl":
            return _read_jsonl(path, limit, options.id_column)
        if kind == "parquet":
            return _read_parquet(path, limit)
        return _read_csv(path, options, limit)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\x28\xb5\x2f\xfd", "zstd"))


def spool_stream(given: str) -> Path | None:
    """``-`` (standard input), or a pipe, FIFO, socket or device named as an input file, copied once
    into a temporary file (removed at exit) named by the format its first bytes show, decompressed
    as the readers do (``_open_binary``): ``.parquet`` from ``PAR1``, ``.jsonl`` from ``{`` or ``[``
    (``checked_kind`` then says what a JSON array is), else ``.csv``. None for anything else (a
    regular file, a folder, a pattern, a missing path: the command says what is wrong with it).
    The readers seek and sniff, and the big-history path reads a file twice, which a stream cannot
    do (a trial: `simulate --out - | produce --input /dev/stdin` said "lseek failed"; a FIFO hung)."""
    import atexit
    import shutil
    import stat
    import tempfile

    if given != "-":
        try:
            mode = Path(given).stat().st_mode
        except OSError:
            return None
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)):
            return None
    folder = Path(tempfile.mkdtemp(prefix="sd-stdin-"))
    atexit.register(shutil.rmtree, folder, True)
    spool = folder / "stream"
    with contextlib.ExitStack() as stack:
        source = sys.stdin.buffer if given == "-" else stack.enter_context(open(given, "rb"))  # noqa: SIM115
        with spool.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    with _open_binary(spool) as stream:
        head = bytes(stream.read(4096))
    kind = "parquet" if head.startswith(b"PAR1") else "jsonl" if head.lstrip().startswith((b"{", b"[")) else "csv"
    named = folder / f"{'stdin' if given == '-' else Path(given).name}.{kind}"
    spool.rename(named)
    return named


class Consumed:
    """How far a reader has got in a file: bytes of the file as stored (compressed bytes for a
    compressed file), for the time left of a long read. Call it for the count (the file's size once
    its reader has closed it)."""

    def __init__(self) -> None:
        self.raw: Any = None
        self.size = 0

    def __call__(self) -> int:
        if self.raw is None:
            return 0
        return self.size if self.raw.closed else int(self.raw.tell())


def _utf16_like(head: bytes) -> bool:
    """Whether ``head`` reads as UTF-16 text without a BOM: text in a Latin script has a NUL in
    every other byte (the high byte of each character), so most of one byte position (even or odd)
    is NUL; random binary data has NULs in about 1 byte of 256 at either."""
    if len(head) < 4:
        return False
    even, odd = head[0::2], head[1::2]
    return max(even.count(0) / len(even), odd.count(0) / max(1, len(odd))) > 0.5


def _open_binary(path: Path, consumed: Consumed | None = None) -> Any:
    """The file's bytes, decompressed when its first bytes say gzip, bzip2 or zstd (whatever its name).
    ``consumed`` is pointed at the stored file, to say how far the stream has read."""
    with path.open("rb") as handle:
        head = handle.read(4)
    codec = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    raw = pa.OSFile(str(path), "rb")
    if consumed is not None:
        consumed.raw, consumed.size = raw, path.stat().st_size
    return raw if codec is None else pa.CompressedInputStream(raw, codec)


# ---- JSON Lines: the worker's record decoder, one line at a time -----------------------------------


def jsonl_records(stream: Any, id_column: str = "event_id") -> Iterator[
        tuple[dict[str, Any] | None, tuple[RejectReason, str] | None, str | None]]:
    """The rows of a JSON Lines stream (blank lines are not rows), each ``(object, None, None)`` or
    ``(None, (reason, message), salvaged id or None)`` (the line's ``id_column``): the worker's record decoder
    (``decode.parse_record``), plus ``not_an_object`` for a line that is JSON but not an object.
    A UTF-8 byte order mark at the start of the stream (Windows tools write one) is not part of
    the first line, as the CSV reader does not take it into the first column's name."""
    first = True
    for line in io.BufferedReader(stream):
        raw = line.rstrip(b"\r\n")
        if first:
            raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False
        if not raw.strip():
            continue
        obj, problem = parse_record(raw)
        if problem is None and not isinstance(obj, dict):
            hint = " (a JSON array file: write one object per line)" if isinstance(obj, list) else ""
            problem = (RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {json_type(obj)}{hint}")
        if problem is not None:
            yield None, problem, _salvage_id(raw, id_column)
        else:
            yield obj, None, None


def _read_jsonl(path: Path, limit: int | None, id_column: str = "event_id") -> RawRows:
    rows: list[dict[str, Any] | None] = []
    rejected: list[RowRejection] = []
    ids: dict[int, str] = {}
    with _open_binary(path) as stream:
        for obj, problem, ident in jsonl_records(stream, id_column):
            if limit is not None and len(rows) >= limit:
                break
            if problem is not None:
                rejected.append(RowRejection(len(rows), problem[0], problem[1]))
                if ident is not None:
                    ids[len(rows)] = ident
            rows.append(obj)
    return RawRows(rows, rejected, JSON_TEXT, "jsonl", rejected_ids=ids)


def _salvage_id(raw: bytes, id_column: str = "event_id") -> str | None:
    """The id (``id_column``, text) of a rejected line when the lenient stdlib parser can still read it (NaN
    literals, repeated keys), so the rejection names the event; ``None`` otherwise."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    ident = obj.get(id_column) if isinstance(obj, dict) else None
    return ident if isinstance(ident, str) and ident else None


# ---- Parquet: columns in their own types; times as epoch ms ------------------------------------------


def _read_parquet(path: Path, limit: int | None) -> RawRows:
    rows: list[dict[str, Any] | None] = []
    for batch in pq.ParquetFile(str(path)).iter_batches():
        table = pa.Table.from_batches([batch])
        columns = {name: _plain_column(table.column(name)).to_pylist() for name in table.column_names}
        names = list(columns)
        rows.extend(dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True))
        if limit is not None and len(rows) >= limit:
            del rows[limit:]
            break
    return RawRows(rows, [], JSON_TEXT, "parquet")


def _plain_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Arrow times → epoch milliseconds (int64; a float64 where µs or ns have a sub-millisecond part),
    durations → milliseconds (float64), decimals → float64, bytes → their hex text: the values a JSON
    event has."""
    kind = column.type
    if pa.types.is_dictionary(kind):  # a pandas categorical: its values (the columnar typing then applies)
        return _plain_column(column.cast(kind.value_type))
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        try:
            return column.cast(pa.timestamp("ms", tz=getattr(kind, "tz", None))).cast(pa.int64())
        except pa.ArrowInvalid:  # µs / ns with a sub-millisecond part: epoch ms as a float, nothing cut off
            per_ms = {"us": 1e3, "ns": 1e6}[kind.unit]
            return pc.divide(column.cast(pa.int64()).cast(pa.float64()), per_ms)
    if pa.types.is_decimal(kind):
        return column.cast(pa.float64())
    if pa.types.is_duration(kind):  # a length of time: milliseconds, as a number
        per_ms = {"s": 1e-3, "ms": 1.0, "us": 1e3, "ns": 1e6}[kind.unit]
        return pc.divide(column.cast(pa.int64()).cast(pa.float64()), per_ms)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        # raw bytes (a hashed card, a token): their hex text, an identifier or category like any text
        return pa.chunked_array([pa.array([None if v is None else v.hex() for v in chunk.to_pylist()], pa.string())
                                 for chunk in column.chunks], pa.string())
    return column


# ---- CSV: text cells, sniffed dialect --------------------------------------------------------------


@dataclass(frozen=True)
class CsvDialect:
    """What was detected (or given) for one CSV file; ``train`` prints it."""

    delimiter: str
    text: TextFormat
    names: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    # cells quoted after a space (``"a", "b"``, as some exporters write): read with the csv module's
    # skipinitialspace (``_spaced_csv_batches``), where pyarrow would keep the quotes in the value
    spaced_quotes: bool = False


# a header cell that is a value, not a name: a signed or fractional number (``-0.11252183``, ``0.00``,
# ``1e-3``). Plain whole numbers can name columns (a table written with numbered ones, 0, 1, 2, …):
# a header is warned of when at least half its cells are numbers and one of them is such a value, or
# its whole numbers, sorted, do not step evenly (``983,1,760,txn0,GB,0``; not 0,1,2 nor 1990,2000,2010)
_DATA_CELL = re.compile(r"[+-]\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+")


def _uneven(whole: list[int]) -> bool:
    """Sorted whole numbers that do not step evenly: values, not column numbers (0, 1, 2) or years
    (1990, 2000, 2010)."""
    return len({b - a for a, b in itertools.pairwise(whole)}) > 1


def _spaced_quotes(path: Path, delimiter: str, sample: str) -> bool:
    """Whether a cell of ``path`` is quoted after a space (``delimiter``, spaces or tabs, ``"``)
    anywhere in the file, not only in the sniffed start (a trial: a file whose first quoted cell came
    on line 1,052, or whose rows turned quoted after 1,000 plain ones, kept the quotes in the values
    again). One pass over the bytes: ~390 MB/s here (35 MB in 0.09 s; gzip 0.2 s), about a tenth of
    what reading the rows into events takes; once per file version (``_scanned``: the streamed
    trainer reads a file's first chunk, then the file, and sniffs it each time). ``sample``: the
    file's sniffed start, part of the version's key with its size, inode and modification time (a
    file rewritten within the clock's tick keeps its mtime)."""
    stat = path.stat()
    return _scanned(str(path.resolve()), (stat.st_size, stat.st_ino, stat.st_mtime_ns, hash(sample)), delimiter)


@functools.lru_cache(maxsize=256)
def _scanned(path: str, version: tuple[int, int, int, int], delimiter: str) -> bool:
    """``_spaced_quotes``' pass over the file (``version`` keys what it read)."""
    pattern = re.compile(re.escape(delimiter.encode()) + rb'[ \t]+"')
    stream = _open_binary(Path(path))
    try:
        tail = b""
        while block := stream.read(_SCAN_BYTES):
            if pattern.search(tail + block):
                return True
            tail = block[-64:]
        return False
    finally:
        stream.close()


_SCAN_BYTES = 1 << 23


def sniff_csv(path: Path, options: ReaderOptions) -> CsvDialect:
    """Header names, delimiter and number format from the start of the file."""
    with _open_binary(path) as stream:
        sample = stream.read(_SAMPLE_BYTES).decode("utf-8", "replace").removeprefix("\ufeff")
    lines = sample.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: empty CSV (a header row is required)")
    header = lines[0]
    delimiter = options.delimiter or max(_DELIMITERS, key=header.count)
    # spreadsheet headers: surrounding spaces are not part of a name; an empty cell (a trailing
    # delimiter) names a column that inference ignores when it holds no values
    # an empty FIRST cell is how pandas writes its index (``df.to_csv()``): named as pandas reads it back,
    # ``Unnamed: 0``, an identifier by that name (a trial: a file sorted normal-first had its index as a feature)
    cells = [c.strip() for c in next(csv.reader([header], delimiter=delimiter, skipinitialspace=True))]
    # a file saved twice by pandas has an Unnamed: 0 column already: its empty first cell is then Unnamed: 0.1
    index = next(name for name in itertools.chain(["Unnamed: 0"], (f"Unnamed: 0.{k}" for k in itertools.count(1)))
                 if name not in cells)
    names = tuple(n or (index if i == 0 and len(cells) > 1 else f"column_{i + 1}") for i, n in enumerate(cells))
    spaced_quotes = _spaced_quotes(path, delimiter, sample)
    if options.delimiter and len(names) == 1 and any(d in header for d in _DELIMITERS if d != delimiter):
        raise InputError(f"{path}: the header has one column with --delimiter {delimiter!r}; is the file "
                         f"separated by another character?")
    # a trial: ECG5000's headerless TSV trained on its first row's values as column names (the class
    # label among them); NSL-KDD's was refused as "names '0' more than once", no hint at the cause. A
    # warning, not a refusal: a spectrum's header of wavelengths (400.5, 401.0, …) is a real one
    numbers = [n for n in names if (n.isascii() and n.isdigit()) or _DATA_CELL.fullmatch(n)]
    data_like = len(numbers) >= 0.5 * len(names) and (
        any(_DATA_CELL.fullmatch(n) for n in numbers) or _uneven(sorted(int(n) for n in numbers)))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        hint = " (is the first line data? a CSV file needs a header row naming its columns)" if data_like else ""
        raise InputError(f"{path}: the header names column(s) {', '.join(map(repr, dupes))} more than once{hint}")
    decimal = options.decimal
    warnings: list[str] = []
    if data_like:
        warnings.append(f"the first line of {path.name} looks like data, not a header ({len(numbers)} of its "
                        f"{len(names)} names are numbers, such as {numbers[0]!r}): a CSV file needs a header row "
                        "naming its columns, and without one the first row's values name them")
    if decimal == "auto":
        cells = [c.strip() for line in lines[1:200]
                 for c in next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])]
        comma = sum(1 for c in cells if _COMMA_DECIMAL.match(c))
        dot = [c for c in cells if _DOT_DECIMAL.match(c)]
        decimal = "," if delimiter != "," and comma > len(dot) else "."
        if decimal == "." and delimiter != "," and dot and all(_DOT_GROUPED.match(c) for c in dot):
            warnings.append(f"numbers such as {dot[0]!r} can be read two ways in a {delimiter!r}-separated file; "
                            f"read with decimal '.' ({dot[0]} = {float(dot[0])}): set --decimal ',' if "
                            f"'.' groups thousands here")
    elif decimal.isalnum() or len(decimal) != 1:
        raise InputError(f"--decimal must be one punctuation character (or auto), got {decimal!r}")
    thousands: str | None = options.thousands
    if thousands == "auto":
        thousands = "." if decimal == "," else ","
    elif thousands in ("", "none"):
        thousands = None
    # a trial: --thousands x was taken where --decimal x is refused
    elif thousands is not None and (thousands.isalnum() or len(thousands) != 1 or thousands in "+-"):
        raise InputError(f"--thousands must be one punctuation or space character other than a sign (or auto, none), "
                         f"got {thousands!r}")
    try:
        text = TextFormat(decimal, thousands)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return CsvDialect(delimiter, text, names, tuple(warnings), spaced_quotes)


def _read_csv(path: Path, options: ReaderOptions, limit: int | None) -> RawRows:
    dialect = sniff_csv(path, options)
    good: list[dict[str, Any]] = []
    ragged: dict[int, RowRejection] = {}
    for batch in _csv_batches(path, dialect, options, ragged):
        columns = [column.to_pylist() for column in batch.columns]
        good.extend(dict(zip(dialect.names, values, strict=True)) for values in zip(*columns, strict=True))
        if limit is not None and len(good) >= limit:
            break
    rows: list[dict[str, Any] | None] = []
    taken = iter(good)
    while len(rows) < len(good) + len(ragged):
        rows.append(None if len(rows) in ragged else next(taken))
    if limit is not None:
        del rows[limit:]
    rejected = [r for i, r in sorted(ragged.items()) if i < len(rows)]
    return RawRows(rows, rejected, dialect.text, "csv", warnings=list(dialect.warnings),
                   rejected_ids={r.index: r.event_id for r in rejected if r.event_id})


def ragged_rows(ragged: dict[int, RowRejection], dialect: CsvDialect | None = None,
                id_column: str = "event_id") -> Any:
    """pyarrow's ``invalid_row_handler``: a row with the wrong number of cells becomes that row's
    ``invalid_row`` rejection in ``ragged`` (by 0-based row number) and is skipped. With
    ``dialect``, the rejection keeps the row's id (cell ``id_column``) when the row has that cell
    (``_cell_of``)."""

    def invalid_row(row: Any) -> str:
        index = (row.number or 0) - 2  # pyarrow counts the header as row 1
        ragged[index] = RowRejection(index, RejectReason.INVALID_ROW,
                                     f"{row.actual_columns} cells where the header has {row.expected_columns}",
                                     None if dialect is None else _cell_of(row.text, dialect, id_column))
        return "skip"

    return invalid_row


def _cell_of(text: str | None, dialect: CsvDialect, name: str = "event_id") -> str | None:
    """Cell ``name`` of one CSV row's ``text`` (Python's csv rules with the file's delimiter), or
    None when the header has no such column, the row is too short for it, or the cell is empty."""
    if text is None or name not in dialect.names:
        return None
    try:
        cells = next(csv.reader([text], delimiter=dialect.delimiter), [])
    except csv.Error:
        return None
    at = list(dialect.names).index(name)
    return cells[at] if at < len(cells) and cells[at] else None


def _header_only(path: Path) -> bool:
    """A CSV file of one line with no newline after it: its header alone (pyarrow refuses to skip
    it: "Could not skip initial 1 rows from CSV file, either file is too short or header is larger
    than block size"; the same header with a newline reads as no rows)."""
    with _open_binary(path) as stream:
        while chunk := stream.read(1 << 16):
            if b"\n" in chunk or b"\r" in chunk:
                return False
    return True


def _csv_batches(path: Path, dialect: CsvDialect, options: ReaderOptions,
                 ragged: dict[int, RowRejection], consumed: Consumed | None = None) -> Iterator[pa.RecordBatch]:
    """The good rows of a CSV file in record batches of string columns. Rows that are not events
    go to ``ragged`` (by 0-based row number) and not into a batch: a row with the wrong number of
    cells (``ragged_rows``), and a row with a cell that is not UTF-8 text (``invalid_row`` too: its
    bytes are not decoded or replaced; a Latin-1 export's one bad cell is that row's rejection,
    as a bad line is in JSON Lines). A batch's rows are the next good rows: the rows pyarrow reports
    as ragged, which it parses ahead, never count among them. A file whose cells are quoted after
    a space (``CsvDialect.spaced_quotes``) is read by ``_spaced_csv_batches`` instead."""
    if dialect.spaced_quotes:
        yield from _spaced_csv_batches(path, dialect, options, ragged, consumed)
        return
    start = 0  # the file row of the next good row
    if _header_only(path):  # pyarrow cannot skip the header of a file without a newline (trial O): no rows
        return
    with _undecodable_ragged_rows(path):
        reader = pacsv.open_csv(
            _open_binary(path, consumed),
            read_options=pacsv.ReadOptions(block_size=options.block_size, use_threads=False,
                                           column_names=list(dialect.names), skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=True,
                                             invalid_row_handler=ragged_rows(ragged, dialect, options.id_column)),
            convert_options=pacsv.ConvertOptions(  # binary: cast to text below, row by row where a cell is not UTF-8
                column_types={name: pa.binary() for name in dialect.names},
                null_values=list(options.na_values), strings_can_be_null=True, quoted_strings_can_be_null=True),
        )
        for batch in reader:
            later = np.array(sorted(i for i in ragged if i >= start), dtype=np.int64)
            span = np.arange(start, start + batch.num_rows + len(later), dtype=np.int64)
            rows = span[~np.isin(span, later)][:batch.num_rows]  # each row's place in the file
            start = int(rows[-1]) + 1 if len(rows) else start
            yield _as_text(batch, rows, ragged, options.id_column, options.na_values)


def _trimmed(column: pa.Array, na_values: tuple[str, ...]) -> pa.Array:
    """A string column's cells without surrounding white space (``1, US, 12.5`` is ``US``, as a
    header's names are: a category or an id written after a ``, `` would otherwise differ from the
    same value in JSON, and an account's history split in two); a cell that is white space around
    an ``na_values`` entry (`` NA``, a blank cell) is missing, as the bare entry is; so is a quoted
    one (``""``, ``"NA"``: the reader's ``quoted_strings_can_be_null``): a file written with every
    cell quoted (QUOTE_ALL) means what the same file unquoted does (a trial: its empty amounts were
    empty text, 200 rows rejected, and training made ``amount`` an identifier)."""
    trimmed = pc.utf8_trim_whitespace(column)
    changed = pc.not_equal(trimmed, column)
    if not pc.any(changed).as_py():
        return column
    missing = pc.and_(changed, pc.is_in(trimmed, value_set=pa.array(na_values, pa.string())))
    return pc.if_else(missing, pa.scalar(None, pa.string()), trimmed)


SPACED_BATCH_ROWS = 65_536


def _spaced_csv_batches(path: Path, dialect: CsvDialect, options: ReaderOptions, ragged: dict[int, RowRejection],
                        consumed: Consumed | None = None) -> Iterator[pa.RecordBatch]:
    """``_csv_batches`` for a file whose cells are quoted after a space (``"e1", "card 7", 12.5``):
    pyarrow has no skipinitialspace and read the quotes into the values (a trial: ``"grocery"`` was
    a category no event has, ``"card-00893"`` another account, and ``produce`` sent them so), so
    such a file is read with the csv module's ``skipinitialspace`` (slower: about 1 µs a cell).
    The same rules as the pyarrow path: cells without surrounding white space, a cell that is an
    ``na_values`` entry missing (quoted or not, as there), a row with the wrong number of cells or a
    cell that is not UTF-8 that row's ``invalid_row`` (by 0-based row number in ``ragged``), empty lines skipped."""
    names, width = dialect.names, len(dialect.names)
    na = frozenset(options.na_values)
    at = names.index(options.id_column) if options.id_column in names else None
    stream = io.TextIOWrapper(_open_binary(path, consumed), encoding="utf-8-sig", errors="surrogateescape",
                              newline="")
    columns: list[list[str | None]] = [[] for _ in names]
    row = 0
    reader = csv.reader(stream, delimiter=dialect.delimiter, skipinitialspace=True)
    next(reader, None)  # the header: dialect.names
    for cells in reader:
        if not cells:
            continue
        index, row = row, row + 1
        ident = cells[at] if at is not None and at < len(cells) and cells[at] else None
        if ident is not None and not _encodable(ident):
            ident = None
        if len(cells) != width:
            ragged[index] = RowRejection(index, RejectReason.INVALID_ROW,
                                         f"{len(cells)} cells where the header has {width}", ident)
            continue
        bad = next((n for n, c in zip(names, cells, strict=True) if not _encodable(c)), None)
        if bad is not None:
            ragged[index] = RowRejection(index, RejectReason.INVALID_ROW,
                                         f"cell {bad!r} is not UTF-8 text: re-encode the file as UTF-8", ident)
            continue
        for column, cell in zip(columns, cells, strict=True):
            value = cell.strip()
            column.append(None if value in na else value)
        if len(columns[0]) >= SPACED_BATCH_ROWS:
            yield pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in columns], names=list(names))
            columns = [[] for _ in names]
    if columns[0]:
        yield pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in columns], names=list(names))


def _encodable(text: str) -> bool:
    """Whether ``text`` holds no byte that was not UTF-8 (read with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_text(batch: pa.RecordBatch, rows: np.ndarray, ragged: dict[int, RowRejection],
             id_column: str = "event_id", na_values: tuple[str, ...] = DEFAULT_NA) -> pa.RecordBatch:
    """``batch`` (binary columns) with string columns, each cell without surrounding white space
    (``_trimmed``); a row with a cell that is not UTF-8 becomes ``ragged[rows[k]]`` and leaves the
    batch."""
    try:
        return pa.RecordBatch.from_arrays([_trimmed(c.cast(pa.string()), na_values) for c in batch.columns],
                                          names=batch.schema.names)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    bad: dict[int, str] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        for k, cell in enumerate(column.to_pylist()):
            if cell is None or k in bad:
                continue
            try:
                cell.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad[k] = (f"cell {name!r} is not UTF-8 text (byte 0x{cell[exc.start]:02x} at {exc.start}): "
                          "re-encode the file as UTF-8")
    names = batch.schema.names
    ids = batch.column(names.index(id_column)).to_pylist() if id_column in names else []
    for k, message in bad.items():
        index = int(rows[k])
        ident = _utf8(ids[k]) if k < len(ids) else None
        ragged[index] = RowRejection(index, RejectReason.INVALID_ROW, message, ident)
    keep = pa.array(np.isin(np.arange(batch.num_rows), list(bad), invert=True))
    kept = batch.filter(keep)
    return pa.RecordBatch.from_arrays([_trimmed(c.cast(pa.string()), na_values) for c in kept.columns],
                                      names=kept.schema.names)


def _utf8(cell: bytes | None) -> str | None:
    try:
        return cell.decode("utf-8") or None if cell else None
    except UnicodeDecodeError:
        return None


@contextlib.contextmanager
def _undecodable_ragged_rows(path: Path) -> Iterator[None]:
    """pyarrow decodes a ragged row's text before it calls ``ragged_rows``; when that row is not
    UTF-8 either, the decode fails inside pyarrow's callback, Python prints "Exception ignored …"
    with a traceback, and the read stops with pyarrow's parse error. The traceback is kept out of
    the user's terminal here (the parse error that follows names the row) and the error says why."""
    failed: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, UnicodeDecodeError):
            failed.append(unraisable.exc_value)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except pa.ArrowInvalid as exc:
        if failed:
            raise InputError(f"{path}: {str(exc).splitlines()[0]} — a row with the wrong number of cells that is "
                             "not UTF-8 text either (re-encode the file as UTF-8)") from None
        raise
    finally:
        sys.unraisablehook = previous


def missing_id_column(path: Path, id_column: str, names: Iterable[str] = ()) -> str:
    """The one-line refusal of an ``--id-column`` no row of ``path`` has: ids made up in its place
    would replace the file's own (a new-user trial: a misspelled ``--id-column`` sent ``x-49`` for
    ``sim-20049`` to Kafka, and joined no label). ``names``: the file's columns, for the one it
    likely meant (trial E: ``transaction_ID`` for ``TRANSACTION_ID``, not pointed at)."""
    import difflib

    choices = sorted(set(names) - {id_column})
    close = ([c for c in choices if c.lower() == id_column.lower()]
             or difflib.get_close_matches(id_column, choices, n=1, cutoff=0.6))
    meant = f"; did you mean {close[0]!r}?" if close else ""
    return (f"{path}: --id-column {id_column}: no row has a value in this column; check its spelling{meant} "
            "(without --id-column, ids are read from event_id, or made up where the file has none)")


# ---- writing --------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """CSV with a header; booleans written ``true``/``false`` and missing values as empty cells,
    so that the field schema reads back what was written."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(names), lineterminator="\n")  # not \r\n (grep, a trial)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_scores(path: Path, rows: Sequence[tuple[str, float, str | None, str | None]], threshold: float,
                 probability: Sequence[float] | None = None, head: float | None = None) -> None:
    """``stream-detector score``'s output: one CSV line per input row, in input order, from
    ``(event_id, score, rejection reason or None, message or None)``. Columns: ``event_id``,
    ``score`` (repr: round-trips exactly), ``is_anomaly`` (score > ``threshold``: 1/0),
    ``rejected``, ``message`` (empty score and verdict where rejected); with a supervised head,
    also ``probability`` (one per row), and ``is_anomaly`` is the worker's rule: score above
    ``threshold`` or probability above ``head``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = ScoresCsv(handle, probability is not None)
        out.write(rows, threshold, probability, head)


class ScoresCsv:
    """``write_scores``'s format written part by part (``score`` on a big input, ``big/score.py``)."""

    def __init__(self, handle: Any, with_probability: bool) -> None:
        self.writer = csv.writer(handle, lineterminator="\n")
        self.writer.writerow(["event_id", "score", "is_anomaly", "rejected", "message",
                              *(["probability"] if with_probability else [])])

    def write(self, rows: Sequence[tuple[str, float, str | None, str | None]], threshold: float,
              probability: Sequence[float] | None = None, head: float | None = None) -> None:
        writer = self.writer
        for k, (event_id, score, reason, message) in enumerate(rows):
            p = [] if probability is None else [repr(probability[k]) if reason is None else ""]
            if reason is None:
                flagged = score > threshold or (probability is not None and head is not None and probability[k] > head)
                writer.writerow([event_id, repr(score), int(flagged), "", "", *p])
            else:
                writer.writerow([event_id, "", "", reason, message or "", *p])
