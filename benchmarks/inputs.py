"""Input benchmarks (``python -m benchmarks inputs``): the file readers, and what the field
schema costs the worker's step 2 — each against its baseline in the same run.

1. **File readers** (the choice behind ``events_io.py``): a simulated CSV read into one dict per row
   with pyarrow, polars and the stdlib ``csv`` module (baseline), plus the columnar parse alone.
2. **Step 2 with the schema**: ``decode_batch`` on 8,192 JSON records without a schema (the
   baseline: what a bundle without one does) and with the schema inferred from those events —
   native JSON values (the converter only checks column types) and RFC 3339 timestamps (every
   timestamp converted, every row copied: the worst case).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from stream_detector.events_io import read_rows, write_csv
from stream_detector.fieldschema import infer_schema
from stream_detector.inputs import load_events
from stream_detector.pipeline.decode import decode_batch
from stream_detector.simulate import Simulator

from .results import write_section


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _readers(rows: int, repeats: int) -> list[tuple[str, float]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    events, _ = Simulator(seed=1, run_id="bench").batch(rows, 0.01)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.csv"
        write_csv(path, events)
        names = list(events[0])
        string_types = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})

        def arrow_dicts() -> None:
            table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                                   convert_options=string_types)
            columns = [c.to_pylist() for c in table.columns]
            [dict(zip(names, r, strict=True)) for r in zip(*columns, strict=True)]

        def stdlib_dicts() -> None:
            with path.open(newline="") as handle:
                list(csv.DictReader(handle))

        timings = [
            ("stdlib csv.DictReader → dicts (baseline)", _best(stdlib_dicts, repeats)),
            ("pyarrow read_csv (strings) → dicts", _best(arrow_dicts, repeats)),
            ("pyarrow read_csv, columnar only", _best(lambda: pacsv.read_csv(
                path, read_options=pacsv.ReadOptions(use_threads=False), convert_options=string_types), repeats)),
        ]
        try:
            import polars as pl

            def polars_dicts() -> None:
                frame = pl.read_csv(path, infer_schema=False)
                columns = [frame[c].to_list() for c in frame.columns]
                [dict(zip(names, r, strict=True)) for r in zip(*columns, strict=True)]

            timings.append(("polars read_csv (strings) → dicts", _best(polars_dicts, repeats)))
            timings.append(("polars read_csv, columnar only",
                            _best(lambda: pl.read_csv(path, infer_schema=False), repeats)))
        except ImportError:
            timings.append(("polars (not installed: pip install -e '.[bench]')", float("nan")))
        spaced = Path(tmp) / "spaced.csv"  # the same rows as some exporters write them: "e1", "card 7", 12.5
        with spaced.open("w", encoding="utf-8") as handle:
            handle.write(", ".join(f'"{n}"' for n in names) + "\n")
            for event in events:
                handle.write(", ".join(f'"{v}"' if isinstance(v, str) else "" if v is None else
                                       str(v).lower() if isinstance(v, bool) else str(v)
                                       for v in (event.get(n) for n in names)) + "\n")
        timings.append(("stream-detector read_rows → dicts (pyarrow, cells trimmed)",
                        _best(lambda: read_rows(path), repeats)))
        timings.append(("stream-detector read_rows → dicts, cells quoted after a space (csv module, "
                        "skipinitialspace)", _best(lambda: read_rows(spaced), repeats)))
        timings.append(("stream-detector load_events: read + type (inferred schema)",
                        _best(lambda: load_events(path), repeats)))
    return [(name, rows / seconds) for name, seconds in timings]


def _rfc3339(epoch_ms: Any) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_ms) / 1000))


def _decode(batch: int, repeats: int) -> list[tuple[str, float]]:
    events, _ = Simulator(seed=2, run_id="bench").batch(batch, 0.01)
    schema = infer_schema(events).schema
    native = [orjson.dumps(e) for e in events]
    rfc = [orjson.dumps({**e, "timestamp": _rfc3339(e["timestamp"])}) for e in events]
    out = [
        ("decode_batch, no schema (baseline: a bundle without one)", _best(lambda: decode_batch(native, 1 << 20),
                                                                          repeats)),
        ("decode_batch + schema, native JSON values", _best(lambda: decode_batch(native, 1 << 20, schema=schema),
                                                             repeats)),
        ("decode_batch, no schema, RFC 3339 timestamps", _best(lambda: decode_batch(rfc, 1 << 20), repeats)),
        ("decode_batch + schema, RFC 3339 timestamps (each converted, rows copied)",
         _best(lambda: decode_batch(rfc, 1 << 20, schema=schema), repeats)),
    ]
    return [(name, batch / seconds) for name, seconds in out]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks inputs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="CSV rows for the reader comparison")
    parser.add_argument("--batch", type=int, default=8192, help="records per decode batch")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per figure")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    readers = _readers(args.rows, args.repeats)
    decode = _decode(args.batch, max(args.repeats, 5))
    base_read, base_decode = readers[0][1], decode[0][1]
    lines = [f"Simulated card events (15 fields), {args.rows:,} CSV rows; decode batches of {args.batch:,} "
             f"JSON records; best of {args.repeats}+ runs, one thread.", "",
             "### File readers (rows/s)", "", "| reader | rows/s | vs stdlib |", "|---|---|---|"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base_read:.1f}× |" for name, rate in readers]
    lines += ["", "### Step 2 with the field schema (records/s, one thread)", "",
              "| decode | records/s | vs no schema |", "|---|---|---|"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base_decode:.2f}× |" for name, rate in decode]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section("inputs", "File readers and the field schema", body)
    return 0
