"""Big-history training, passes 1-3: read and type in chunks, enrich sharded by key, fit, featurise to disk.

Pass 1 streams the input (``big/source.py``), types each chunk with a schema inferred from the
first rows, and writes three things, never holding more than a chunk: a columnar cache of the
feature inputs (Arrow IPC: numbers as float64, categories as strings), the entity inputs split
into shards by key (``big/shards.py``), and the mergeable statistics of the raw fields over the
training rows (``big/sketches.py``). Pass 2 enriches the shards (a process pool or a Dask
cluster); each task returns its features' statistics. The spec is fitted from the merged
statistics. Pass 3 reads the cache back with the entity features in row order and writes the
feature matrix (float32, row-major) of the training and the validation rows to two files.

Which rows train: those with the normal label (all rows without a label column); of those, the
validation split is a hash of the row number and the seed (``validation_rows``), so it does not
depend on the chunk size, the shard count or the order the shards finish in.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..entity.columns import late_rows, unsorted_error, unsorted_warning
from ..entity_spec import EntitySpec
from ..errors import ConfigError, InputError
from ..events_io import ReaderOptions, RowRejection
from ..features import FeatureSpec
from ..fieldschema import FieldSchema, FieldType, InferenceOptions, infer_schema
from ..schema import RESERVED_FIELDS
from .columnar import Derived, Layout, derive_events, derive_table
from .shards import ShardCursor, ShardResult, ShardWriter, run_shards
from .source import GeneratedIds, Prepared, RawChunk, prepare_chunk, raw_chunks, type_prepared

Say = Callable[[str], None]


@dataclass(frozen=True)
class BigOptions:
    """How the big path runs (``train --streamed``): chunk sizes, shards, where the work goes."""

    work_dir: Path
    chunk_rows: int = 65_536
    sample_rows: int = 100_000  # rows the field schema is inferred from
    shards: int = 16
    cluster: str | None = None  # a Dask scheduler address; None: a local process pool
    workers: int | None = None  # local pool size (default: the machine's cores)
    file_order: bool = False  # --file-order: a history out of time order altogether applied as it is


@dataclass
class Prepared3:
    """What passes 1-3 leave for training: the spec, the schema, the matrices on disk, the counts."""

    spec: FeatureSpec
    schema: FieldSchema
    width: int
    train_file: Path
    val_file: Path
    n_train: int
    n_val: int
    facts: dict[str, Any] = field(default_factory=dict)


def validation_rows(rows: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """bool[n]: which global row numbers are validation rows (splitmix64 of row and seed < fraction)."""
    offset = np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF)  # wraps in Python: no overflow warning
    z = (rows.astype(np.uint64) + offset) * np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.asarray((z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction)


class _Plan:
    """The feature inputs: numeric (number/boolean) and categorical fields of the schema, in order."""

    def __init__(self, schema: FieldSchema, exclude: Sequence[str], time_of_day: bool) -> None:
        skip = set(RESERVED_FIELDS) | set(exclude)
        rules = [r for r in schema.feature_fields if r.name not in skip]
        self.order = [r.name for r in rules]  # fit_spec's field order (its ``dropped`` keeps it)
        self.numeric = [r.name for r in rules if r.type is not FieldType.CATEGORY]
        self.categorical = [r.name for r in rules if r.type is FieldType.CATEGORY]
        self.time_of_day = time_of_day

    def table(self, got: Derived, normal: np.ndarray, val: np.ndarray) -> pa.Table:
        """The cache's record batch of one chunk: row, normal, val, ``n:`` numbers, ``c:`` categories."""
        data: dict[str, Any] = {"row": got.rows, "normal": normal, "val": val}
        for name in self.numeric:
            data[f"n:{name}"] = got.numeric[name]
        for name in self.categorical:
            data[f"c:{name}"] = got.categorical[name]
        if self.time_of_day:
            data["timestamp"] = pa.array(got.ts, pa.float64(), mask=np.isnan(got.ts))
        return pa.table(data)


def pass_one(files: Sequence[Path], *, reader: ReaderOptions, inference: InferenceOptions, entity: EntitySpec | None,
             id_column: str | None, label_column: str | None, normal_label: str, exclude: Sequence[str],
             time_of_day: bool, seed: int, validation_fraction: float, options: BigOptions,
             say: Say, keep: Sequence[str] = ()) -> tuple[FieldSchema, _Plan, Any, list[tuple[str, int]],
                                                          dict[str, Any]]:
    """Read, type, cache, shard, gather the raw fields' statistics (see the module docstring)."""
    started = last = time.monotonic()
    total = known_rows(files)
    chunks = raw_chunks(files, reader, options.chunk_rows)
    files_seen = GeneratedIds(id_column, reader, options.chunk_rows)  # file → whether its event ids are generated
    head, schema, warnings = _head(chunks, options.sample_rows, id_column, label_column, inference, files_seen)
    for warning in [w for p in head for w in p.chunk.warnings] + warnings:
        say(f"warning: {warning}")
    for p in head:
        p.chunk.warnings = []  # said
    say(f"field schema, inferred from the first {min(sum(p.chunk.n for p in head), options.sample_rows):,} rows "
        f"(--schema FILE / --field NAME=TYPE to change; README \"Field schema\"):")
    for line in schema.describe(id_column, label_column):
        say(line)
    from . import sketches

    plan = _Plan(schema, exclude, time_of_day)
    times = [r.name for r in schema.fields if r.type is FieldType.TIMESTAMP]
    layout = Layout(plan.numeric, plan.categorical, entity, times)
    stats = sketches.SpecStats(plan.numeric, plan.categorical)
    writer = ShardWriter(entity, options.work_dir, options.shards) if entity is not None else None
    cache_sink = pa.OSFile(str(options.work_dir / "cache.arrow"), "wb")
    cache: Any = None
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    example: RowRejection | None = None
    order = _Order(times)
    labels_seen: Counter[str] = Counter()  # rows per label, for the lines on the labels
    flags = [r.name for r in schema.fields if r.type is FieldType.BOOLEAN and r.name in plan.numeric]
    leaks = _LeakCounts([n for n in plan.categorical if n not in keep] if label_column is not None else [],
                        [n for n in flags if n not in keep] if label_column is not None else [])
    progress = _ReadProgress(files, total)
    for got, chunk_path, chunk_bytes in _derived(head, chunks, schema, layout, id_column, label_column, files_seen,
                                                      say):
        order.add(got.ts, got.times)
        if got.labels is not None:
            counted = pc.value_counts(got.labels)
            labels_seen.update({label: n for label, n in zip(counted.field("values").to_pylist(),
                                                             counted.field("counts").to_pylist(), strict=True)
                                if label is not None})
        counts["rows"] += got.total
        for r in got.rejected:
            reasons[r.reason.value] += 1
            example = example or r
        if len(got):
            rows = got.rows
            normal = (pc.equal(got.labels, normal_label).to_numpy(zero_copy_only=False) if got.labels is not None
                      else np.ones(len(rows), dtype=bool))
            leaks.add({**got.categorical, **{n: got.numeric[n] for n in leaks.flags}}, ~normal)
            val = validation_rows(rows, seed, validation_fraction)
            table = plan.table(got, normal, val)
            if cache is None:
                cache = pa.ipc.new_file(cache_sink, table.schema)
            cache.write_table(table)
            train = normal & ~val
            with_ts = int((train & ~np.isnan(got.ts)).sum())
            stats.update(int(train.sum()), {name: got.numeric[name][train] for name in plan.numeric},
                         {name: got.categorical[name].filter(pa.array(train)) for name in plan.categorical},
                         with_timestamp=with_ts, rows_of=rows[train])
            counts["events"] += len(rows)
            counts["normal"] += int(normal.sum())
            counts["train"] += int(train.sum())
            counts["with_ts"] += with_ts
            if writer is not None:
                writer.append(rows, got.entity, got.ts, got.amount, got.distinct, train)
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            say(f"read: {progress.line(counts['rows'], chunk_path, chunk_bytes, last - started)} "
                f"({len(files_seen)}/{len(files)} files)")
    if cache is None:
        raise InputError(f"{files[0] if len(files) == 1 else 'the input'}: no row is a valid event")
    if label_column is not None and not counts["normal"]:
        raise ConfigError(f"no rows with {label_column}={normal_label!r} (labels seen: {sorted(labels_seen)[:10]})")
    cache.close()
    cache_sink.close()
    tasks = writer.close() if writer is not None else []
    seconds = time.monotonic() - started
    say(f"read: {counts['rows']:,} rows in {seconds:.0f} s ({counts['rows'] / max(seconds, 1e-9):,.0f} rows/s), "
        f"{counts['events']:,} events, {sum(reasons.values()):,} rejected"
        + (f" ({', '.join(f'{k} {v}' for k, v in reasons.most_common())}; e.g. row {example.index + 1}: "
           f"{example.message})" if example is not None else ""))
    if label_column is not None:
        from ..inputs import minority_normal_warning

        swapped = minority_normal_warning(f"{label_column}={normal_label}", counts["normal"], counts["events"],
                                          labels_seen.most_common(5))
        if swapped is not None:
            say(f"warning: {swapped}")
        else:  # the check assumes anomalies are the few (as in memory)
            leaks.refuse()
        say(f"{counts['events']:,} events; training on {counts['normal']:,} with {label_column}={normal_label}")
    if entity is not None:
        hint = "; is the input in time order? files are read in path order" if order.late else ""
        say(f"entity features: {len(entity.output_fields)} fields per event from keys {', '.join(entity.keys)}; "
            f"{order.late:,} rows earlier than a previous row (applied in input order, time clamped: "
            f"docs/entity-features.md{hint})")
        refused = None if options.file_order else unsorted_error(order.late, counts["events"])
        if refused:  # before the history is enriched and trained on (pass two)
            raise ConfigError(refused)
        unsorted = unsorted_warning(order.late, counts["events"])
        if unsorted:
            say(unsorted)
    schema = order.schema(schema)
    facts = {"rows": counts["rows"], "events": counts["events"], "normal": counts["normal"], "late_rows": order.late,
             "train_rows": counts["train"], "with_ts": counts["with_ts"], "rejected": dict(reasons),
             "read_seconds": round(seconds, 1)}
    return schema, plan, stats, tasks, facts


class _LeakCounts:
    """Per category field of ``fields`` and boolean field of ``flags`` (the in-memory check's two
    kinds), each value's (normal rows, anomalous rows) over the first pass, for the ground-truth
    check (``inputs.leak_problem``); a field with more than ``MAX_VALUES`` distinct values is
    dropped from it (bounded memory: an id-like category is no ground truth of a few values)."""

    MAX_VALUES = 100_000

    def __init__(self, fields: Sequence[str], flags: Sequence[str] = ()) -> None:
        self.flags = list(flags)
        self.counts: dict[str, dict[Any, list[int]]] = {name: {} for name in [*fields, *flags]}

    def add(self, columns: dict[str, Any], anomalous: np.ndarray) -> None:
        """One chunk: ``columns`` its category columns (pyarrow arrays) and boolean ones (float64
        numpy arrays, 1/0, NaN: none), ``anomalous`` bool[n]."""
        if not self.counts:
            return
        flags = pa.array(anomalous.astype(np.int64))
        for name in list(self.counts):
            grouped = pa.table({"v": columns[name], "a": flags}).group_by("v").aggregate([("a", "sum"),
                                                                                         ("a", "count")])
            seen = self.counts[name]
            for value, bad, n in zip(grouped["v"].to_pylist(), grouped["a_sum"].to_pylist(),
                                     grouped["a_count"].to_pylist(), strict=True):
                pair = seen.setdefault(value, [0, 0])
                pair[0] += n - bad
                pair[1] += bad
            if len(seen) > self.MAX_VALUES:
                del self.counts[name]

    def refuse(self) -> None:
        """Raises ``ConfigError`` (``inputs.leak_problem``'s line) for the first field that gives the
        labels away."""
        from ..inputs import leak_problem

        for name, counts in self.counts.items():
            problem = leak_problem(name, counts)
            if problem is not None:
                raise ConfigError(problem)


class _Order:
    """Rows earlier than a row before them (late, or files out of time order), and the time range."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.latest = -np.inf
        self.late = 0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, ts: np.ndarray, times: dict[str, np.ndarray]) -> None:
        """``ts`` float64[n] event times (NaN: none), ``times`` each timestamp field's epoch ms."""
        if not len(ts):
            return
        late, self.latest = late_rows(ts, self.latest)
        self.late += late
        for name in self.fields:
            values = times[name]
            if np.isfinite(values).any():
                self.lo, self.hi = min(self.lo, float(np.nanmin(values))), max(self.hi, float(np.nanmax(values)))

    def schema(self, schema: FieldSchema) -> FieldSchema:
        """``schema`` with the time range of every row (inference saw the first rows only)."""
        if schema.time_range_ms is None or self.lo > self.hi:
            return schema
        return dataclasses.replace(schema, time_range_ms=(min(self.lo, schema.time_range_ms[0]),
                                                          max(self.hi, schema.time_range_ms[1])))


def known_rows(files: Sequence[Path]) -> int | None:
    """The input's row count when the files say it (Parquet footers), for the time left; else None."""
    import pyarrow.parquet as pq

    from ..events_io import file_kind

    if any(file_kind(f) != "parquet" for f in files):
        return None
    try:
        return sum(int(pq.ParquetFile(str(f)).metadata.num_rows) for f in files)
    except (OSError, pa.ArrowInvalid):
        return None  # the reader says what is wrong with the file


def _head(chunks: Iterator[Any], sample_rows: int, id_column: str | None, label_column: str | None,
          inference: InferenceOptions, seen_files: GeneratedIds) -> tuple[list[Prepared], FieldSchema, list[str]]:
    """The first chunks (at least ``sample_rows`` rows, or all) prepared; the schema inferred from
    exactly the first ``sample_rows`` rows (whatever the chunk size), and inference's warnings."""
    head: list[Prepared] = []
    for chunk in chunks:
        head.append(_prepare(chunk, id_column, label_column, seen_files))
        if sum(p.chunk.n for p in head) >= sample_rows:
            break
    present = [row for p in head for row, n in zip(p.present, p.positions, strict=True) if n < sample_rows]
    if not present:
        where = ", ".join(sorted({str(p.chunk.path) for p in head})) or "the input"
        raise InputError(f"{where}: no rows in its first {sample_rows:,} rows")
    text = head[0].chunk.text
    inferred = infer_schema(present, InferenceOptions(
        identifiers=inference.identifiers | {"event_id"}, ignored=inference.ignored, overrides=inference.overrides,
        max_categories=inference.max_categories, text=text, inputs=inference.inputs))
    return head, inferred.schema, list(inferred.warnings)


def _prepare(chunk: Any, id_column: str | None, label_column: str | None, files: GeneratedIds) -> Prepared:
    return prepare_chunk(chunk, id_column=id_column, label_column=label_column, generate_ids=files.of(chunk))


class _ReadProgress:
    """The read's progress line: rows, rows/s and the time left — from the row count when the files
    give it (Parquet), else from the bytes of the files read so far (CSV, JSON Lines; compressed bytes
    for a compressed file, which is how far its reader has got)."""

    def __init__(self, files: Sequence[Path], rows: int | None) -> None:
        self.rows = rows
        sizes = [f.stat().st_size for f in files]
        self.before = dict(zip(files, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        self.bytes = sum(sizes)

    def line(self, done: int, path: Path, bytes_read: int, seconds: float) -> str:
        rate = done / max(seconds, 1e-9)
        if self.rows:
            return f"{done:,} rows of {self.rows:,}, {rate:,.0f} rows/s, ~{(self.rows - done) / rate:.0f} s left"
        fraction = (self.before.get(path, 0) + bytes_read) / max(self.bytes, 1)
        left = f", ~{seconds * (1 - fraction) / fraction:.0f} s left" if 0 < fraction <= 1 else ""
        return f"{done:,} rows ({fraction:.0%} of {self.bytes / 1e6:,.0f} MB), {rate:,.0f} rows/s{left}"


def _derived(head: list[Prepared], chunks: Iterator[Any], schema: FieldSchema, layout: Layout,
             id_column: str | None, label_column: str | None,
             files: GeneratedIds, say: Say) -> Iterator[tuple[Derived, Path, int]]:
    """Every chunk typed — CSV and Parquet as columns (``big/columnar.py``), JSON Lines by the
    reference — with its file and how many of the file's bytes were read after it."""

    def derive(chunk: RawChunk, prepared: Prepared | None) -> Derived:
        if chunk.table is not None:
            return derive_table(chunk, schema, layout, id_column=id_column, label_column=label_column,
                                generate_ids=files.of(chunk))
        prepared = prepared or _prepare(chunk, id_column, label_column, files)
        return derive_events(type_prepared(prepared, schema, label_column is not None), layout)

    while head:
        first = head.pop(0)  # the head's dicts go as they are used
        yield derive(first.chunk, None if first.chunk.table is not None else first), first.chunk.path, \
            first.chunk.bytes_read
    for chunk in chunks:
        for warning in chunk.warnings:  # a later file's dialect
            say(f"warning: {chunk.path}: {warning}")
        yield derive(chunk, None), chunk.path, chunk.bytes_read


def pass_two(entity: EntitySpec, tasks: Sequence[tuple[str, int]], options: BigOptions,
             say: Say) -> tuple[Any, dict[str, Any]]:
    """Enrich the shards; the merged statistics of the entity features' training rows."""
    from . import sketches

    started = time.monotonic()
    per_key: dict[str, Any] = {}  # a key's shards merge as they arrive (the row sample is the same in any order)

    def absorb(result: ShardResult) -> None:
        mine = per_key.get(result.key)
        per_key[result.key] = result.stats if mine is None else mine.merge(result.stats)

    results = run_shards(entity, options.work_dir, tasks, cluster=options.cluster, workers=options.workers,
                         stats_factory=sketches.numeric_stats, progress=say, absorb=absorb)
    merged = sketches.combine(per_key[key] for key in entity.keys if key in per_key)  # the keys' fields join
    seconds = time.monotonic() - started
    rows = sum(r.rows for r in results) // max(1, len(entity.keys))
    where = f"Dask {options.cluster}" if options.cluster else "local pool"
    say(f"enrich: {rows:,} events × {len(entity.keys)} key(s) in {len(results)} shard tasks, {seconds:.0f} s "
        f"({rows / max(seconds, 1e-9):,.0f} events/s, {where})")
    return merged, {"enrich_seconds": round(seconds, 1), "shards": len(results),
                    "shard_cpu_seconds": round(sum(r.seconds for r in results), 1)}


def pass_three(spec: FeatureSpec, plan: _Plan, entity: EntitySpec | None, tasks: Sequence[tuple[str, int]],
               options: BigOptions, say: Say) -> tuple[int, int, dict[str, Any]]:
    """Featurise the cached rows into ``train.f32`` and ``val.f32`` (float32, ``spec.width`` per row)."""
    started = last = time.monotonic()
    cursor = ShardCursor(entity, options.work_dir, tasks) if entity is not None else None
    names = plan.numeric + (list(entity.output_fields) if entity is not None else [])
    n_train = n_val = bad_rows = done = 0
    with pa.memory_map(str(options.work_dir / "cache.arrow"), "r") as source, \
            (options.work_dir / "train.f32").open("wb") as train_out, \
            (options.work_dir / "val.f32").open("wb") as val_out:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            rows = batch.column("row").to_numpy()
            normal = batch.column("normal").to_numpy(zero_copy_only=False)
            val = batch.column("val").to_numpy(zero_copy_only=False)
            numbers = [batch.column(f"n:{name}").to_numpy(zero_copy_only=False) for name in plan.numeric]
            if cursor is not None:
                numbers_e = cursor.take(rows)
                values = np.column_stack([*numbers, numbers_e]) if numbers else numbers_e
            else:
                values = np.column_stack(numbers) if numbers else np.zeros((len(rows), 0))
            columns: dict[str, Any] = {c: batch.column(f"c:{c}") for c in plan.categorical}
            if plan.time_of_day:
                columns["timestamp"] = batch.column("timestamp").to_numpy(zero_copy_only=False)
            x, bad = spec.transform([{}] * len(rows), (names, values), columns)  # no dict per row
            keep = np.ones(len(rows), dtype=bool)
            keep[list(bad)] = False
            bad_rows += len(bad)
            np.ascontiguousarray(x[keep & normal & ~val]).tofile(train_out)
            np.ascontiguousarray(x[keep & normal & val]).tofile(val_out)
            n_train += int((keep & normal & ~val).sum())
            n_val += int((keep & normal & val).sum())
            done += len(rows)
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                left = (last - started) / (i + 1) * (reader.num_record_batches - i - 1)
                say(f"features: {done:,} rows, {done / (last - started):,.0f} rows/s, ~{left:.0f} s left")
    if cursor is not None:
        cursor.close()
    seconds = time.monotonic() - started
    say(f"features: {done:,} rows in {seconds:.0f} s ({done / max(seconds, 1e-9):,.0f} rows/s)"
        + (f"; {bad_rows} rows left out (a value the features reject)" if bad_rows else ""))
    return n_train, n_val, {"features_seconds": round(seconds, 1), "rows_left_out": bad_rows}
