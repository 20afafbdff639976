"""Entity enrichment of a big history, sharded by entity key: exact, bounded memory, any number of shards.

An entity's features depend only on that entity's own earlier events (``entity.history.enrich_key``),
so the history split by ``crc32(entity id) % shards`` — each shard holding its entities' rows in
arrival order — gives every row exactly the features of the whole history, however many shards and
whichever process runs them. A second key is a second sharded pass over its own shard files.

Layout (``work_dir``): pass 1 writes ``<key>.<shard>.in.arrow`` (Arrow IPC: global row number,
entity id, event time ms, amount, the key's distinct-field labels, whether the row trains the
spec); each task writes ``<key>.<shard>.rows`` (int64) and ``<key>.<shard>.values`` (float64,
row-major, ``len(spec.fields_for(key))`` per row) in row order, and returns the mergeable
statistics of its training rows' features (``big/sketches.py``). ``ShardCursor`` then reads the
outputs back in row order with plain file reads (no memory maps: resident memory stays bounded).

Runs on a local process pool (``concurrent.futures``) or, given an address, on a **Dask
distributed** cluster (``distributed.Client``): the tasks read and write ``work_dir``, which must
then be a directory every Dask worker sees (a shared filesystem).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..entity.columns import Columns
from ..entity.compute import label_code
from ..entity.history import enrich_rows
from ..entity_spec import EntitySpec


def shard_of(entities: Sequence[str | None] | pa.Array, shards: int) -> np.ndarray:
    """int64[n]: the shard of each entity id (``crc32(id) % shards``; keyless rows go to shard 0).
    A pyarrow string array is hashed once per distinct id."""
    if isinstance(entities, (pa.Array, pa.ChunkedArray)):
        encoded = pc.dictionary_encode(entities)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        per_id = [zlib.crc32(e.encode()) % shards for e in encoded.dictionary.to_pylist()]
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        out: np.ndarray = np.asarray([*per_id, 0], dtype=np.int64)[codes]  # code -1 (null) → the last: shard 0
        return out
    return np.fromiter((0 if e is None else zlib.crc32(e.encode()) % shards for e in entities), np.int64,
                       len(entities))


def _input_schema(spec: EntitySpec, key: str) -> pa.Schema:
    return pa.schema([("row", pa.int64()), ("entity", pa.string()), ("ts", pa.float64()), ("amount", pa.float64()),
                      *((f"d:{f}", pa.string()) for f in spec.distinct_for(key)), ("train", pa.bool_())])


class ShardWriter:
    """Pass 1's side output: each key's inputs, appended chunk by chunk to its shards' files."""

    def __init__(self, spec: EntitySpec, work_dir: Path, shards: int) -> None:
        self.spec, self.dir, self.shards = spec, work_dir, shards
        self._writers: dict[tuple[str, int], Any] = {}
        self.rows = 0

    def path(self, key: str, shard: int) -> Path:
        return self.dir / f"{key}.{shard}.in.arrow"

    def append(self, rows: np.ndarray, entities: dict[str, pa.Array], ts: np.ndarray, amount: np.ndarray,
               distinct: dict[str, pa.Array], train: np.ndarray) -> None:
        """One chunk: ``rows`` int64[n] global row numbers, ``entities[key]`` the entity id of each
        (string, null: keyless or invalid), ``ts`` / ``amount`` float64[n] and ``distinct[field]``
        (string) their event inputs (``entity.columns.Columns``' values), ``train`` bool[n]."""
        for key in self.spec.keys:
            ids = entities[key]
            shard = shard_of(ids, self.shards)
            table = pa.table({"row": rows, "entity": ids, "ts": ts, "amount": amount,
                              **{f"d:{f}": distinct[f] for f in self.spec.distinct_for(key)},
                              "train": train}, schema=_input_schema(self.spec, key))
            for s in range(self.shards):
                part = table.filter(pa.array(shard == s))
                if part.num_rows:
                    self._writer(key, s).write_table(part)
        self.rows += len(rows)

    def _writer(self, key: str, shard: int) -> Any:
        if (key, shard) not in self._writers:
            sink = pa.OSFile(str(self.path(key, shard)), "wb")
            self._writers[key, shard] = (sink, pa.ipc.new_file(sink, _input_schema(self.spec, key)))
        return self._writers[key, shard][1]

    def close(self) -> list[tuple[str, int]]:
        """Close every file; the (key, shard) pairs that have rows (the tasks to run)."""
        for sink, writer in self._writers.values():
            writer.close()
            sink.close()
        return sorted(self._writers)


@dataclass
class ShardResult:
    key: str
    shard: int
    rows: int
    seconds: float
    stats: Any  # big.sketches stats of the training rows' features (None without a stats factory)


def enrich_shard(spec_json: bytes, key: str, shard: int, work_dir: str,
                 stats_factory: Callable[[Sequence[str]], Any] | None = None) -> ShardResult:
    """The task: one key's features for one shard's rows (see the module docstring). Picklable
    arguments only, so a pool process or a Dask worker can run it."""
    started = time.process_time()
    spec = EntitySpec.from_json(spec_json)
    base = Path(work_dir) / f"{key}.{shard}"
    with pa.memory_map(str(base) + ".in.arrow", "r") as source:
        table = pa.ipc.open_file(source).read_all()
    n = table.num_rows
    values = enrich_arrow(spec, key, table.column("entity"), table.column("ts").to_numpy(),
                          table.column("amount").to_numpy(),
                          {f: table.column(f"d:{f}") for f in spec.distinct_for(key)})
    rows = table.column("row").to_numpy()
    rows.astype(np.int64).tofile(str(base) + ".rows")
    np.ascontiguousarray(values, dtype=np.float64).tofile(str(base) + ".values")
    stats = None
    if stats_factory is not None:
        stats = stats_factory(spec.fields_for(key))
        train = table.column("train").to_numpy(zero_copy_only=False)
        stats.update_numeric(values[train], rows[train])
    del table
    return ShardResult(key, shard, n, time.process_time() - started, stats)


def enrich_arrow(spec: EntitySpec, key: str, entity: pa.Array | pa.ChunkedArray, ts: np.ndarray,
                 amount: np.ndarray, distinct: dict[str, pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """Offline enrichment of one key from Arrow columns, in arrival order: ``entity`` (string, null:
    keyless) the entity id of each of n events, ``ts`` / ``amount`` float64[n] (``Columns``' values),
    ``distinct[field]`` (string) the labels of the key's distinct fields. Returns float64[n,
    len(spec.fields_for(key))], equal to ``enrich_columns``' columns for the key; no Python object
    per event (pyarrow's dictionary encoding numbers the entities; labels are coded once each)."""
    cols = Columns(ts, amount, {}, {f: _label_codes(distinct[f]) for f in spec.distinct_for(key)})
    entities, count = _entity_rows(entity)
    return enrich_rows(spec, key, cols, entities, count)


def _encoded(column: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    encoded = pc.dictionary_encode(column)
    return encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded


def _entity_rows(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Each row's entity numbered 0..E-1 in order of appearance (-1: none), and E — no Python strings."""
    encoded = _encoded(column)
    rows = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, len(encoded.dictionary)


def _label_codes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``columns.label_codes`` of a label column: int64 codes, -1 for none; one Python string per
    distinct label only."""
    encoded = _encoded(column)
    codes = np.fromiter((label_code(v) if v else -1 for v in encoded.dictionary.to_pylist()), np.int64,
                        len(encoded.dictionary))  # "": missing, as null
    codes = np.append(codes, -1)  # index -1 (a null) → code -1
    out: np.ndarray = codes[pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)]
    return out


def run_shards(spec: EntitySpec, work_dir: Path, tasks: Sequence[tuple[str, int]], *, cluster: str | None = None,
               workers: int | None = None, stats_factory: Callable[[Sequence[str]], Any] | None = None,
               progress: Callable[[str], None] | None = None,
               absorb: Callable[[ShardResult], None] | None = None) -> list[ShardResult]:
    """Run ``enrich_shard`` for every (key, shard) on a local process pool of ``workers`` (default:
    the machine's cores) or on the Dask cluster at ``cluster`` (``tcp://host:port``). ``absorb``
    takes each result's statistics as it arrives (they are then dropped from the result, so the
    caller never holds every shard's at once)."""
    say = progress or (lambda _m: None)

    def arrived(result: ShardResult) -> None:
        if absorb is not None:
            absorb(result)
            result.stats = None
        done.append(result)
        _report(say, done, len(tasks), started)

    payload = spec.to_json()
    started = time.monotonic()
    done: list[ShardResult] = []
    if cluster is not None:
        from distributed import Client, as_completed

        with Client(cluster, timeout="30s") as client:  # type: ignore[no-untyped-call]
            futures = [client.submit(enrich_shard, payload, key, shard, str(work_dir), stats_factory,
                                     key=f"enrich-{key}-{shard}-{os.getpid()}-{time.time_ns()}", pure=False)
                       for key, shard in tasks]
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                arrived(future.result())
        return done
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import as_completed as completed
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        pending = [pool.submit(enrich_shard, payload, key, shard, str(work_dir), stats_factory) for key, shard in tasks]
        for fut in completed(pending):
            arrived(fut.result())
    return done


def _report(say: Callable[[str], None], done: list[ShardResult], total: int, started: float) -> None:
    rows = sum(r.rows for r in done)
    elapsed = max(time.monotonic() - started, 1e-9)
    left = elapsed / len(done) * (total - len(done))
    say(f"enrich: {len(done)}/{total} shard tasks (a key's shard each), {rows:,} event-keys, "
        f"{rows / elapsed:,.0f}/s, ~{left:.0f} s left")


class ShardCursor:
    """Reads the shards' outputs of every key back in global row order, a range of rows at a time."""

    def __init__(self, spec: EntitySpec, work_dir: Path, tasks: Sequence[tuple[str, int]]) -> None:
        self.spec = spec
        self.parts = []
        for key, shard in tasks:
            base = work_dir / f"{key}.{shard}"
            rows = np.fromfile(str(base) + ".rows", dtype=np.int64)  # 8 bytes a row: small beside the values
            self.parts.append((key, rows, open(str(base) + ".values", "rb"), len(spec.fields_for(key)), [0]))
        self.offsets: dict[str, int] = {}
        col = 0
        for key in spec.keys:
            self.offsets[key] = col
            col += len(spec.fields_for(key))
        self.width = col

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float64[len(rows), width]: the features of ``rows`` (increasing global row numbers, each
        at or after every row asked before). A row no shard holds (not an event) gets NaN."""
        out = np.full((len(rows), self.width), np.nan)
        if not len(rows):
            return out
        lo, hi = int(rows[0]), int(rows[-1])
        for key, shard_rows, handle, width, cursor in self.parts:
            start = cursor[0]
            stop = int(np.searchsorted(shard_rows, hi, side="right"))
            if stop <= start:
                continue
            handle.seek(start * width * 8)
            values = np.fromfile(handle, dtype=np.float64, count=(stop - start) * width).reshape(-1, width)
            mine = shard_rows[start:stop]
            where = np.searchsorted(rows, mine)
            hit = (where < len(rows)) & (rows[np.minimum(where, len(rows) - 1)] == mine) & (mine >= lo)
            col = self.offsets[key]
            out[where[hit], col:col + width] = values[hit]
            cursor[0] = stop
        return out

    def close(self) -> None:
        for part in self.parts:
            part[2].close()
