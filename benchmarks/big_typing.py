"""Big history, pass 1 (read + type + shard + statistics): columns vs the row-wise reference.

``train --streamed`` types CSV and Parquet chunks as columns (``stream_detector/big/columnar.py``).
The baseline, in the same run on the same files, is the row-wise reference the columnar path is
tested against (``prepare_chunk`` → ``decode.type_events`` → ``derive_events``: one dict per row),
which is what pass 1 did before. JSON Lines always takes the reference (the worker's decoder), so
it is measured once, as the third row of the table.

The history: ``stream-detector simulate --out`` (raw card transactions), written as Parquet, CSV
and gzip JSON Lines. Pass 1 runs with the big-history benchmark's entity spec (account and
terminal history, two distinct fields) and label column; its outputs are compared byte for byte
between the two paths (cache and shard inputs), so a speed-up that changed a value would fail here.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.big_history import cli, run
from benchmarks.results import write_section
from stream_detector.big import columnar, prepare
from stream_detector.big.source import input_files
from stream_detector.entity_spec import EntitySpec
from stream_detector.events_io import ReaderOptions
from stream_detector.fieldschema import InferenceOptions

ENTITY = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400, 604_800, 2_592_000),
                    distinct_fields=("merchant_category", "channel"))


def say(msg: str) -> None:
    print(f"[big-typing] {msg}", file=sys.stderr, flush=True)


def pass_one(path: Path, work: Path) -> tuple[float, dict[str, bytes]]:
    """Seconds of pass 1 on ``path``, and its output files' bytes (for the equality check)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    prepare.pass_one(input_files(str(path)), reader=ReaderOptions(), inference=InferenceOptions(), entity=ENTITY,
                     id_column=None, label_column="label", normal_label="legit", exclude=["pattern"],
                     time_of_day=True, seed=0, validation_fraction=0.1,
                     options=prepare.BigOptions(work_dir=work, shards=4), say=lambda _: None)
    seconds = time.perf_counter() - started
    return seconds, {p.name: p.read_bytes() for p in sorted(work.glob("*.arrow"))}


def reference_only() -> Callable[[], None]:
    """Send every CSV / Parquet chunk through the row-wise reference; returns the undo."""
    real = columnar.covers
    columnar.covers = lambda *_: False

    def undo() -> None:
        columnar.covers = real

    return undo


def write_inputs(rows: int, root: Path) -> dict[str, Path]:
    """``simulate --out`` Parquet (the big-history benchmark's proportions), then the same rows as CSV and
    gzip JSON Lines, batch by batch."""
    paths = {"Parquet": root / "h.parquet", "CSV": root / "h.csv", "JSON Lines (gzip)": root / "h.jsonl.gz"}
    run(cli("simulate", "--out", str(paths["Parquet"]), "--count", str(rows), "--span-days", "60",
            "--accounts", str(max(1000, rows // 120)), "--terminals", str(max(2000, rows // 1000))),
        root / "simulate.log")
    source = pq.ParquetFile(str(paths["Parquet"]))
    with pacsv.CSVWriter(str(paths["CSV"]), source.schema_arrow) as csv_out, \
            gzip.open(paths["JSON Lines (gzip)"], "wb", compresslevel=1) as json_out:
        for batch in source.iter_batches(100_000):
            csv_out.write_batch(batch)
            json_out.write(b"".join(orjson.dumps(r) + b"\n" for r in batch.to_pylist()))
    return paths


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks big-typing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--write", action="store_true", help="write the big-typing section of RESULTS.md")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="sd-typing-"))
    try:
        say(f"simulating {args.rows:,} rows")
        paths = write_inputs(args.rows, root)
        figures: dict[str, dict[str, Any]] = {}
        for kind, path in paths.items():
            mine: dict[str, Any] = {"MB": path.stat().st_size / 1e6}
            undo = reference_only()
            try:
                mine["reference"], ref_files = pass_one(path, root / "work")
            finally:
                undo()
            if kind != "JSON Lines (gzip)":
                mine["columnar"], col_files = pass_one(path, root / "work")
                mine["equal"] = col_files == ref_files
            figures[kind] = mine
            say(f"{kind}: {mine}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = args.rows
    lines = [f"{n:,} simulated raw card transactions (`simulate --out`, the big-history benchmark's proportions), pass 1 of `train --streamed` "
             "(read, type, cache, shard by account and terminal into 4 shards, statistics; the field schema "
             "inferred from the first 100,000 rows, which are typed row by row for inference in both runs), "
             "one process.", "",
             "| input | MB | row-wise reference s | columnar s | reference M rows/s | columnar M rows/s | speed-up | "
             "outputs equal |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for kind, f in figures.items():
        ref, col = f["reference"], f.get("columnar")
        cells = ["", "", "", ""] if col is None else [
            f"{col:.1f}", f"{n / col / 1e6:.2f}", f"{ref / col:.1f}×", "byte for byte" if f["equal"] else "NO"]
        lines.append(f"| {kind} | {f['MB']:.0f} | {ref:.1f} | {cells[0]} | {n / ref / 1e6:.2f} | {cells[1]} | "
                     f"{cells[2]} | {cells[3]} |")
    lines += ["", "JSON Lines has no columnar row: its lines are decoded by the worker's own decoder "
              "(repeated keys, non-finite numbers and nesting are that decoder's verdicts), then typed row by row."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("big-typing", "Big history: pass 1 typed as columns vs row by row "
                      "(`python -m benchmarks big-typing`)", body)
    return 0 if all(f.get("equal", True) for f in figures.values()) else 1
