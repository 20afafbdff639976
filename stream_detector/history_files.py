"""History files of any size: the handbook simulator's events in chunks, and their files.

``history`` (``HandbookSimulator.history``) generates a time-ordered history chunk by chunk, its
memory bounded by the chunk: the span is cut into slices of at most an hour, aligned on the day
(narrower when the events are dense: a slice expects at most ~8,000); the slices' event counts are
one multinomial draw whose weights are the daily profile's mass in each slice; each slice's times
(sorted, the profile within the slice by rejection sampling) and every other draw of its events come
from an rng seeded by ``(seed, 6, call, slice)``. The chunks only cut that sequence, so the events do
not depend on the chunk size. Fraud follows the same scenarios as ``generate`` (a function of the
seed and the day).

``ChunkWriter`` writes columns chunk by chunk to CSV, JSON Lines (each plain, or compressed by a
``.gz``/``.bz2``/``.zst`` suffix) or Parquet (one row group per chunk, typed columns), the rows as
``events_io.write_csv``/``write_jsonl`` write them. ``SortedLabels`` turns the chunks' delayed labels
into one stream sorted as ``HandbookBatch.labels`` sorts a batch's, holding only the labels not yet
due (those within the longest delay of the last event).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from .simulate import HandbookBatch, HandbookSimulator, LabelDelays

DAY_MS = 86_400_000
_SLICE_WIDTHS = (3_600_000, 1_800_000, 900_000, 600_000, 300_000, 60_000, 30_000, 10_000, 5_000, 1_000,
                 100, 10, 1)  # each divides the day: no slice crosses midnight
_SLICE_EVENTS = 8192  # expected events in a slice at the profile's peak (~1.8 × the mean), at most
_MAX_DRAW = 65_536  # events drawn at once in a one-millisecond slice (all of one time)
_MU, _SIGMA = 43_200.0, 20_000.0  # the daily profile: time of day ~ N(noon, 20,000 s), in seconds

EVENT_SCHEMA = pa.schema([("event_id", pa.string()), ("account_id", pa.string()), ("terminal_id", pa.string()),
                          ("timestamp", pa.int64()), ("amount", pa.float64()), ("merchant_category", pa.string()),
                          ("channel", pa.string()), ("card_present", pa.bool_()), ("label", pa.string()),
                          ("pattern", pa.string())])
LABEL_SCHEMA = pa.schema([("event_id", pa.string()), ("label", pa.string()), ("source", pa.string()),
                          ("labelled_at", pa.int64())])
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}


# ---- generating ------------------------------------------------------------------------------------


def history(sim: HandbookSimulator, n: int, span_ms: int, end_ms: int,
            chunk: int = 100_000) -> Iterator[HandbookBatch]:
    """``sim.history``: see ``HandbookSimulator.history`` and the module docstring.

    Raises ``ValueError`` for ``n < 0``, ``span_ms < 0`` or ``chunk < 1`` (at the call, not at the
    first chunk).
    """
    if n < 0 or span_ms < 0 or chunk < 1:
        raise ValueError(f"history needs n >= 0, span_ms >= 0 and chunk >= 1, got {n}, {span_ms}, {chunk}")
    end = int(end_ms)
    span = max(int(span_ms), 1)
    edges = slice_edges(end - span + 1, end + 1, n)
    call, first = sim.histories, sim.counter + 1
    sim.histories += 1
    sim.counter += n
    weights = profile_mass(edges)
    counts = np.random.default_rng([sim.seed, 5, call]).multinomial(n, weights / weights.sum())
    return _chunks(sim, call, edges, counts, first, chunk)


def _chunks(sim: HandbookSimulator, call: int, edges: np.ndarray, counts: np.ndarray, first: int,
            chunk: int) -> Iterator[HandbookBatch]:
    from .simulate import HandbookBatch

    starts = first + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pending: list[HandbookBatch] = []
    have = 0
    for k in np.flatnonzero(counts).tolist():
        lo, hi, m = int(edges[k]), int(edges[k + 1]), int(counts[k])
        step = _MAX_DRAW if hi - lo == 1 else m  # one millisecond: one time, drawn in parts
        for part, start in enumerate(range(0, m, step)):
            size = min(step, m - start)
            rng = np.random.default_rng([sim.seed, 6, call, k, part])
            pending.append(sim.events_at(rng, profile_times(rng, lo, hi, size), int(starts[k]) + start))
            have += size
            if have >= chunk:
                merged, pos = HandbookBatch.concat(pending), 0
                while have - pos >= chunk:
                    yield merged.rows(pos, pos + chunk)
                    pos += chunk
                pending = [merged.rows(pos, have)] if pos < have else []
                have -= pos
    if have:
        yield HandbookBatch.concat(pending)


def slice_edges(lo: int, hi: int, n: int) -> np.ndarray:
    """Edges (int64 epoch ms, ascending, ``lo`` first and ``hi`` last) of the slices of ``[lo, hi)`` for
    ``n`` events: inner edges on multiples of the widest ``_SLICE_WIDTHS`` width whose slices expect
    at most ``_SLICE_EVENTS`` events."""
    target = (hi - lo) * _SLICE_EVENTS / (1.8 * max(n, 1))
    width = next((w for w in _SLICE_WIDTHS if w <= target), 1)
    inner = np.arange((lo // width + 1) * width, hi, width, dtype=np.int64)
    return np.concatenate([np.array([lo], dtype=np.int64), inner, np.array([hi], dtype=np.int64)])


def profile(tod_s: np.ndarray | float) -> np.ndarray:
    """The daily profile's density at times of day (seconds, float64), 1.0 at noon."""
    return np.exp(-0.5 * ((np.asarray(tod_s, dtype=np.float64) - _MU) / _SIGMA) ** 2)


def profile_mass(edges: np.ndarray) -> np.ndarray:
    """The profile's integral over each slice ``[edges[i], edges[i + 1])`` (float64, len(edges) - 1
    values, up to a common factor); no slice may cross midnight."""
    a = (edges[:-1] % DAY_MS) / 1000.0
    b = a + np.diff(edges) / 1000.0
    erf = np.frompyfunc(math.erf, 1, 1)
    scale = _SIGMA * math.sqrt(2)
    return np.asarray(erf((b - _MU) / scale) - erf((a - _MU) / scale), dtype=np.float64)


def profile_times(rng: np.random.Generator, lo: int, hi: int, m: int) -> np.ndarray:
    """``m`` sorted int64 times in ``[lo, hi)`` (within one day), density ∝ the profile: rejection
    sampling under the slice's maximum (over 70 % accepted in any hour-wide slice)."""
    a = (lo % DAY_MS) / 1000.0
    b = a + (hi - lo) / 1000.0
    peak = 1.0 if a <= _MU <= b else float(max(profile(a), profile(b)))
    parts, got = [], 0
    while got < m:
        t = rng.integers(lo, hi, 2 * (m - got) + 16)
        keep = rng.random(t.size) * peak < profile((t % DAY_MS) / 1000.0)
        parts.append(t[keep])
        got += int(keep.sum())
    return np.sort(np.concatenate(parts)[:m]) if parts else np.empty(0, dtype=np.int64)


# ---- columns -----------------------------------------------------------------------------------------


def event_columns(batch: HandbookBatch) -> dict[str, Any]:
    """A batch as the ``--out`` file's columns (``EVENT_SCHEMA`` order): ``HandbookBatch.events()``'s
    fields, then ``label`` (``fraud``/``legit``) and ``pattern``; strings as object arrays."""
    from .simulate import HANDBOOK_PATTERNS

    def named(prefix: str, ids: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(ids, return_inverse=True)
        return np.array([f"{prefix}-{k:05d}" for k in unique.tolist()], dtype=object)[inverse]

    patterns = np.array(HANDBOOK_PATTERNS, dtype=object)
    return {"event_id": batch.event_ids(), "account_id": named("card", batch.account),
            "terminal_id": named("term", batch.terminal), "timestamp": batch.timestamp, "amount": batch.amount,
            "merchant_category": batch.category.astype(object), "channel": batch.channel.astype(object),
            "card_present": batch.card_present,
            "label": np.where(batch.pattern > 0, "fraud", "legit").astype(object),
            "pattern": patterns[batch.pattern]}


class SortedLabels:
    """The delayed labels of a time-ordered sequence of batches, sorted over all of them as
    ``HandbookBatch.labels`` sorts one batch's: by ``labelled_at``, chargebacks after analyst verdicts
    at the same millisecond, then event order. ``add`` returns the labels that are due (earlier than
    any label a later batch can have: its events are not earlier than this batch's last); ``finish``
    the rest. Memory: the labels within the longest delay of the last event (numpy, ~20 B each)."""

    def __init__(self, delays: LabelDelays) -> None:
        self.delays = delays
        self.run_id = ""
        self._number = np.empty(0, dtype=np.int64)  # event id numbers
        self._fraud = np.empty(0, dtype=bool)
        self._chargeback = np.empty(0, dtype=bool)
        self._at = np.empty(0, dtype=np.int64)

    def add(self, batch: HandbookBatch) -> dict[str, list[Any]]:
        """Columns ``event_id``, ``label``, ``source``, ``labelled_at`` (``LABEL_SCHEMA``) of the due labels."""
        if not len(batch):
            return self._take(np.zeros(self._at.size, dtype=bool))
        self.run_id = batch.run_id
        row, fraud, chargeback, at = batch.label_columns(self.delays)
        self._number = np.concatenate([self._number, batch.first + row])
        self._fraud = np.concatenate([self._fraud, fraud])
        self._chargeback = np.concatenate([self._chargeback, chargeback])
        self._at = np.concatenate([self._at, at])
        return self._take(self._at < batch.timestamp[-1])

    def finish(self) -> dict[str, list[Any]]:
        """The labels still pending, as ``add`` returns them."""
        return self._take(np.ones(self._at.size, dtype=bool))

    def _take(self, due: np.ndarray) -> dict[str, list[Any]]:
        order = np.flatnonzero(due)
        order = order[np.lexsort((self._number[order], self._chargeback[order], self._at[order]))]
        out = {"event_id": [f"{self.run_id}-{k}" for k in self._number[order].tolist()],
               "label": np.where(self._fraud[order], "fraud", "legit").tolist(),
               "source": np.where(self._chargeback[order], "chargeback", "analyst").tolist(),
               "labelled_at": self._at[order].tolist()}
        keep = ~due
        self._number, self._fraud = self._number[keep], self._fraud[keep]
        self._chargeback, self._at = self._chargeback[keep], self._at[keep]
        return out


class WorldClockStream:
    """A live run's events on the simulated world's clock: ``sim.history`` of ``total`` events over
    ``sim.world_span_ms(total)`` ending at ``end_ms`` (epoch ms), so each card and terminal pays as
    often per simulated day as in a history file however fast the events are sent; and their delayed
    labels as the simulated clock (the last event's time) passes them.

    Iterating yields ``(batch, labels)`` per ``chunk`` events (the last batch shorter): a
    time-ordered ``HandbookBatch`` and the columns of the labels now due (``SortedLabels.add``).
    ``pending()`` is then the number of labels the run's clock never reached (not yet due).
    Memory: one chunk and the labels within the longest delay of the last event.

    Why: stamped with the wall clock at ``--rate`` events per second, a 2,000-card world pays
    ~2,000 times faster than its own pace (at 100/s), and one worker with an account + terminal
    model trained on a history file (0.9 % flagged) alerted on 8.6 % of a 2-minute run, 20 % in its
    last 30 s; on this clock, 0.61 % (docs/simulator.md, *Live runs*, measured 2026-12-07).
    Raises ``ValueError`` for ``total < 0`` or ``chunk < 1``.
    """

    def __init__(self, sim: HandbookSimulator, total: int, end_ms: int, chunk: int, delays: LabelDelays) -> None:
        self.span_ms = sim.world_span_ms(total)
        self.end_ms = int(end_ms)
        self._chunks = history(sim, total, self.span_ms, self.end_ms, chunk)
        self._labels = SortedLabels(delays)

    def __iter__(self) -> Iterator[tuple[HandbookBatch, dict[str, list[Any]]]]:
        for batch in self._chunks:
            yield batch, self._labels.add(batch)

    def pending(self) -> int:
        """Labels not yet due at the last event (their ``labelled_at`` is past the run's clock)."""
        return len(self._labels.finish()["event_id"])


# ---- writing -----------------------------------------------------------------------------------------


STDOUT = "-"  # ChunkWriter's path for standard output (``simulate --out -``)


class ChunkWriter:
    """Writes a file chunk by chunk: ``kind`` ``csv``, ``jsonl`` or ``parquet`` (``events_io.file_kind``
    of the name, as the readers read it); CSV and JSON Lines compressed when the name ends ``.gz``,
    ``.bz2`` or ``.zst``. Every chunk has the
    same columns: a mapping name → values (a list, or a 1-d numpy array: int64, float64, bool, or
    strings as objects). CSV: a header, then rows as ``events_io.write_csv`` writes them (booleans
    ``true``/``false``, missing values empty); JSON Lines as ``write_jsonl``; Parquet: typed columns
    (``schema`` if given, else inferred from the first chunk), one row group per chunk.

    The path ``-`` (``STDOUT``) is standard output, uncompressed, left open at ``close``; Parquet
    cannot go there.

    Raises ``ValueError`` for another kind or a compressed Parquet name, ``OSError`` when the file
    cannot be written.
    """

    def __init__(self, path: Path, kind: str, schema: pa.Schema | None = None) -> None:
        if kind not in ("csv", "jsonl", "parquet"):
            raise ValueError(f"{path}: cannot write files of kind {kind!r}")
        self.path, self.kind, self.schema, self.rows = path, kind, schema, 0
        self._parquet: pq.ParquetWriter | None = None
        self._file: BinaryIO | None = None
        self._sink: BinaryIO | gzip.GzipFile | pa.NativeFile | None = None
        self._stdout = str(path) == STDOUT
        if self._stdout:
            if kind == "parquet":
                raise ValueError("Parquet cannot be written to standard output: name a .parquet file")
            self._sink = sys.stdout.buffer
            return
        codec = _COMPRESSION.get(path.suffix.lower())
        if self.kind == "parquet" and codec:
            raise ValueError(f"{path}: Parquet compresses its own columns; drop the {path.suffix} suffix")
        if self.kind != "parquet" and codec == "gzip":  # level 6 (pyarrow's gzip is level 9: 2.6× slower,
            self._file = path.open("wb")                # 1 % smaller); no name or time: the same bytes every run
            self._sink = gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=self._file, mtime=0)
        elif self.kind != "parquet":
            self._sink = pa.output_stream(str(path), compression=codec) if codec else path.open("wb")

    def write(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        """Append one chunk (columns of equal length; none: nothing)."""
        names = list(columns)
        size = len(next(iter(columns.values()))) if columns else 0
        if not size:
            return
        if self.kind == "parquet":
            table = pa.table({k: pa.array(v) for k, v in columns.items()})
            table = table.cast(self.schema) if self.schema is not None else table
            if self._parquet is None:
                self.schema = table.schema
                self._parquet = pq.ParquetWriter(str(self.path), table.schema)
            self._parquet.write_table(table, row_group_size=size)
        else:
            assert self._sink is not None
            lists = [_plain(columns[k], self.kind == "csv") for k in names]
            if self.kind == "csv":
                text = io.StringIO()
                writer = csv.writer(text, lineterminator="\n")
                if not self.rows:
                    writer.writerow(names)
                writer.writerows(zip(*lists, strict=True))
                self._put(text.getvalue().encode("utf-8"))
            else:  # into one buffer: orjson's results hold ~3 KB each while they live
                lines = bytearray()
                for row in zip(*lists, strict=True):
                    lines += orjson.dumps(dict(zip(names, row, strict=True)), option=orjson.OPT_APPEND_NEWLINE)
                self._put(lines)
        self.rows += size

    def _put(self, data: bytes | bytearray) -> None:
        assert self._sink is not None
        if not self._stdout:
            self._sink.write(data)
            return
        view = memoryview(data)  # a pipe whose reader left takes part of a big write without an error:
        while view:              # the next write raises BrokenPipeError (the CLI exits 141, as Unix tools do)
            view = view[self._sink.write(view) or 0:]

    def close(self) -> None:
        """Finish the file (a Parquet file with no chunk gets ``schema``'s columns and no rows)."""
        if self.kind == "parquet":
            if self._parquet is None and self.schema is not None:
                self._parquet = pq.ParquetWriter(str(self.path), self.schema)
            if self._parquet is not None:
                self._parquet.close()
        elif self._stdout:
            sys.stdout.buffer.flush()
        elif self._sink is not None:
            self._sink.close()
            if self._file is not None:
                self._file.close()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _plain(values: Sequence[Any] | np.ndarray, csv_cells: bool) -> list[Any]:
    """Python values of a column; for CSV, booleans as ``true``/``false`` and None as an empty cell."""
    if isinstance(values, np.ndarray):
        plain: list[Any] = (np.where(values, "true", "false") if values.dtype == bool and csv_cells
                            else values).tolist()
        return plain
    if not csv_cells:
        return list(values)
    return ["" if v is None else ("true" if v else "false") if isinstance(v, bool) else v for v in values]
