"""Big inputs read in chunks type every row exactly as the in-memory reader does; entity shards are exact."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_detector.big.prepare import validation_rows
from stream_detector.big.shards import ShardCursor, ShardWriter, run_shards
from stream_detector.big.source import generates_ids, input_files, prepare_chunk, raw_chunks, type_prepared
from stream_detector.entity import EntitySpec
from stream_detector.entity.columns import Columns, entity_value
from stream_detector.entity.history import enrich_columns
from stream_detector.errors import InputError
from stream_detector.fieldschema import InferenceOptions, infer_schema
from stream_detector.inputs import load_events
from stream_detector.schema import validate_event
from stream_detector.simulate import HandbookSimulator

CSV = """event_id,account_id,amount,merchant_category,label
e1,a1,12.5,grocery,0
e2,a2,13,fuel,0
e3,a1,x,grocery,1
e4,a3,7.25,grocery
e5,a2,,fuel,0
e6,a1,8,"gro
cery",0
e7,a3,9.5,fuel,0
"""


def _streamed(path: str, chunk_rows: int, label_column: str | None = None) -> tuple[list, list, list]:
    files = input_files(path)
    loaded = load_events(Path(path), label_column=label_column)  # the in-memory reader's schema, applied streamed
    events, rows, rejected = [], [], []
    seen: dict[Path, bool] = {}
    for chunk in raw_chunks(files, chunk_rows=chunk_rows):
        seen.setdefault(chunk.path, generates_ids(chunk, None))
        prepared = prepare_chunk(chunk, id_column=None, label_column=label_column, generate_ids=seen[chunk.path])
        typed = type_prepared(prepared, loaded.schema, label_column is not None)
        events += typed.events
        rows += typed.rows
        rejected += [(r.index, r.reason) for r in typed.rejected]
    return events, rows, rejected


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 1000])
def test_csv_chunks_type_like_the_file_reader(tmp_path: Path, chunk_rows: int) -> None:
    path = tmp_path / "t.csv"
    path.write_text(CSV)
    whole = load_events(path)
    events, rows, rejected = _streamed(str(path), chunk_rows)
    assert events == whole.events
    assert rows == whole.rows
    assert rejected == [(r.index, r.reason) for r in whole.rejected]
    assert rejected  # the ragged row (e4) is a rejection in both


@pytest.mark.parametrize("chunk_rows", [2, 1000])
def test_jsonl_gzip_and_parquet_chunks_type_like_the_file_reader(tmp_path: Path, chunk_rows: int) -> None:
    rows = [{"event_id": f"e{i}", "account_id": f"a{i % 3}", "amount": float(i), "channel": "pos" if i % 2 else "web"}
            for i in range(9)]
    text = "\n".join(orjson.dumps(r).decode() for r in rows[:4]) + "\nnot json\n" + "\n".join(
        orjson.dumps(r).decode() for r in rows[4:]) + "\n"
    jsonl = tmp_path / "t.jsonl.gz"
    jsonl.write_bytes(gzip.compress(text.encode()))
    whole = load_events(jsonl)
    events, got_rows, rejected = _streamed(str(jsonl), chunk_rows)
    assert events == whole.events and got_rows == whole.rows
    assert rejected == [(r.index, r.reason) for r in whole.rejected] and len(rejected) == 1
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=4)
    whole = load_events(parquet)
    events, got_rows, _ = _streamed(str(parquet), chunk_rows)
    assert events == whole.events and got_rows == whole.rows


def test_a_directory_is_its_files_in_path_order(tmp_path: Path) -> None:
    day = tmp_path / "days"
    (day / "2026-01-02").mkdir(parents=True)
    (day / "2026-01-01").mkdir()
    (day / "2026-01-01" / "part.csv").write_text("event_id,amount\na,1\nb,2\n")
    (day / "2026-01-02" / "part.csv").write_text("event_id,amount\nc,3\n")
    (day / "_SUCCESS").write_text("")
    (day / "README.md").write_text("# not rows\n")
    for staging in ("_temporary/0/task_1", ".hive-staging_1"):  # Spark / Hive work in progress: not the table
        (day / staging).mkdir(parents=True)
        (day / staging / "part.csv").write_text("event_id,amount\nz,9\n")
    files = input_files(str(day))
    assert [f.parent.name for f in files] == ["2026-01-01", "2026-01-02"]
    assert input_files(str(day / "*" / "*.csv")) == files
    assert input_files(str(day / "**" / "*")) == files  # a glob: the same rules below its fixed part
    with pytest.raises(InputError, match="no CSV, JSON Lines or Parquet file among the 2 files"):
        input_files(str(day / "*"))  # _SUCCESS and README.md
    chunks = list(raw_chunks(files, chunk_rows=10))
    assert [c.first_row for c in chunks] == [0, 2]
    with pytest.raises(InputError, match="input not found"):
        input_files(str(tmp_path / "nothing-*.csv"))


def test_validation_split_is_a_function_of_row_and_seed() -> None:
    rows = np.arange(200_000)
    val = validation_rows(rows, 0, 0.2)
    assert abs(val.mean() - 0.2) < 0.005
    assert np.array_equal(validation_rows(rows[5000:6000], 0, 0.2), val[5000:6000])
    assert not np.array_equal(validation_rows(rows, 1, 0.2), val)


@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_enrichment_equals_the_whole_history(tmp_path: Path, shards: int) -> None:
    sim = HandbookSimulator(seed=3, customers=200, terminals=300)
    events = sim.generate(6000, now_ms=1_700_000_000_000, span_ms=10 * 86_400_000).events()
    events[10]["account_id"] = None  # keyless rows: empty history, no state
    events[11]["timestamp"] = "not a time"
    schema = infer_schema(events, InferenceOptions(identifiers=frozenset({"event_id", "account_id", "terminal_id"}))).schema
    typed, _ = schema.convert(events)
    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400, 7 * 86_400),
                      distinct_fields=("merchant_category", "channel"))
    valid = [validate_event(e) is None for e in typed]
    expected = enrich_columns(spec, typed, valid=valid)
    writer = ShardWriter(spec, tmp_path, shards)
    for start in range(0, len(typed), 1000):  # pass 1 appends chunk by chunk
        part = typed[start:start + 1000]
        ok = valid[start:start + 1000]
        ids = {k: pa.array([entity_value(e.get(k)) if v else None for e, v in zip(part, ok, strict=True)], pa.string())
               for k in spec.keys}
        cols = Columns.of(spec, part)
        writer.append(np.arange(start, start + len(part)), ids, cols.ts, cols.amount,
                      {f: pa.array(v, pa.string()) for f, v in cols.labels.items()}, np.ones(len(part), bool))
    tasks = writer.close()
    results = run_shards(spec, tmp_path, tasks, workers=2)
    assert sum(r.rows for r in results) == len(typed) * len(spec.keys)
    cursor = ShardCursor(spec, tmp_path, tasks)
    got = np.vstack([cursor.take(np.arange(s, min(s + 777, len(typed)))) for s in range(0, len(typed), 777)])
    cursor.close()
    np.testing.assert_array_equal(got, expected)


def test_csv_and_jsonl_chunks_say_how_far_the_file_is_read(tmp_path: Path) -> None:
    """The read's time left for inputs without a row count comes from the stored bytes read so far."""
    from stream_detector.big.prepare import _ReadProgress

    notes = np.random.default_rng(0).integers(0, 16**12, 20_000)  # little to compress: many gzip blocks
    rows = [{"event_id": f"e{i}", "amount": i * 1.5, "note": f"{n:012x}" * 4} for i, n in enumerate(notes.tolist())]
    plain = tmp_path / "a.csv"
    plain.write_text("event_id,amount,note\n" + "".join(f"{r['event_id']},{r['amount']},{r['note']}\n" for r in rows))
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows)))
    for path in (plain, packed):  # pyarrow's CSV reader reads some blocks ahead: its count leads the rows
        read = [c.bytes_read for c in raw_chunks([path], chunk_rows=4096)]
        assert read == sorted(read) and read[-1] == path.stat().st_size, path  # compressed bytes for .gz
    gz = [c.bytes_read for c in raw_chunks([packed], chunk_rows=4096)]
    assert 0 < gz[0] < gz[len(gz) // 2] < packed.stat().st_size
    progress = _ReadProgress([plain, packed], None)
    half = progress.line(10_000, packed, packed.stat().st_size // 2, 30.0)
    whole = plain.stat().st_size + packed.stat().st_size
    fraction = (plain.stat().st_size + packed.stat().st_size // 2) / whole
    assert f"{fraction:.0%} of" in half and f"~{30 * (1 - fraction) / fraction:.0f} s left" in half
    assert "of 40,000, 1,000 rows/s, ~30 s left" in _ReadProgress([plain], 40_000).line(10_000, plain, 0, 10.0)


@pytest.mark.parametrize("chunk_rows", [1, 100, 65_536])
def test_ragged_csv_rows_are_counted_in_their_own_chunk(tmp_path: Path, chunk_rows: int) -> None:
    """pyarrow parses CSV blocks ahead: a ragged row of a later block must not be counted in the
    chunk being handed over (it made chunks' row counts, positions and tables disagree)."""
    lines = ["event_id,amount,channel,note"] + [f"e{i},{i % 97}.5,pos," + "x" * 80 for i in range(3000)]
    lines[10], lines[2501], lines[3000] = "e9,1.5", "e2500,1.5,pos", "e2999,1,2,3,4"  # the first, a middle, the last
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(lines) + "\n")
    rows: list[int] = []
    rejected: list[int] = []
    total = 0
    for chunk in raw_chunks([path], chunk_rows=chunk_rows):
        assert chunk.table is not None and chunk.table.num_rows == len(chunk.present)
        assert chunk.n == len(chunk.present) + len(chunk.rejected)
        rows += (chunk.first_row + chunk.present).tolist()
        rejected += [r.index for r in chunk.rejected]
        total += chunk.n
    assert total == 3000 and rejected == [9, 2500, 2999]
    assert rows == [i for i in range(3000) if i not in (9, 2500, 2999)]
    assert [r.index for r in load_events(path).rejected] == rejected


@pytest.mark.parametrize("chunk_rows", [1, 100, 65_536])
def test_csv_rows_that_are_not_utf8_are_counted_in_their_own_chunk(tmp_path: Path, chunk_rows: int) -> None:
    """Cells that are not UTF-8 text make their rows rejections at their place in the file, among
    ragged rows, whatever the block and chunk sizes; the streamed path and the in-memory one agree."""
    lines = [b"event_id,amount,channel,note"] + [f"e{i},{i % 97}.5,pos,".encode() + b"x" * 80 for i in range(3000)]
    lines[10], lines[2501] = b"e9,1.5", b"e2500,1.5,pos"  # ragged
    lines[5], lines[1200], lines[3000] = b"e4,1.5,caf\xe9,n", b"e1199,2.5,pos,\xff", b"e2999,3.5,\xe9t\xe9,n"  # Latin-1
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows: list[int] = []
    rejected: list[tuple[int, str]] = []
    total = 0
    for chunk in raw_chunks([path], chunk_rows=chunk_rows):
        assert chunk.table is not None and chunk.table.num_rows == len(chunk.present)
        assert chunk.n == len(chunk.present) + len(chunk.rejected)
        rows += (chunk.first_row + chunk.present).tolist()
        rejected += [(r.index, r.message.split(" ")[0]) for r in chunk.rejected]
        total += chunk.n
    bad = [4, 9, 1199, 2500, 2999]
    assert total == 3000 and [i for i, _ in rejected] == bad
    assert [m for _, m in rejected] == ["cell", "2", "cell", "3", "cell"]  # not UTF-8; cells where the header has 4
    assert rows == [i for i in range(3000) if i not in bad]
    assert [r.index for r in load_events(path).rejected] == bad


@pytest.mark.parametrize("chunk_rows", [100, 65_536])
def test_ids_are_generated_by_the_whole_files_rule_whatever_the_chunk_size(tmp_path: Path, chunk_rows: int) -> None:
    """A file whose first rows have no id but later ones do: ids are not generated (the in-memory rule),
    so the rows without one are missing_event_id rejections at any chunk size."""
    from stream_detector.big.source import GeneratedIds

    lines = ["event_id,amount"] + [f"{'' if i < 300 or i % 10 == 0 else f'id{i}'},{i}.5" for i in range(1000)]
    path = tmp_path / "late-ids.csv"
    path.write_text("\n".join(lines) + "\n")
    whole = load_events(path)
    generated = GeneratedIds(None, chunk_rows=chunk_rows)
    assert generated[path] is False
    missing = 0
    for chunk in raw_chunks([path], chunk_rows=chunk_rows):
        typed = type_prepared(prepare_chunk(chunk, id_column=None, label_column=None, generate_ids=generated[path]),
                              whole.schema, False)
        missing += sum(1 for r in typed.rejected if r.reason.value == "missing_event_id")
    assert missing == len(whole.rejected) == 370
    no_ids = tmp_path / "no-ids.csv"
    no_ids.write_text("amount\n1\n2\n")
    assert GeneratedIds(None)[no_ids] is True


def test_parquet_microsecond_times_are_read_without_cutting_them(tmp_path: Path) -> None:
    """µs / ns timestamps with a sub-millisecond part were refused (a safe cast to ms); now epoch ms as a float."""
    path = tmp_path / "us.parquet"
    pq.write_table(pa.table({"event_id": ["a", "b"], "amount": [1.0, 2.0],
                             "timestamp": pa.array([1795273487907793, 1795273487908000], pa.timestamp("us", tz="UTC"))}),
                   path)
    data = load_events(path)
    assert [e["timestamp"] for e in data.events] == [1795273487907.793, 1795273487908.0]
    chunk = next(raw_chunks([path]))
    assert chunk.table is not None and chunk.table.column("timestamp").to_pylist() == [1795273487907.793,
                                                                                       1795273487908.0]


def test_parquet_bytes_and_durations_are_read_as_text_and_milliseconds(tmp_path: Path) -> None:
    """Binary and duration columns crashed inference (bytes and timedelta are not JSON values)."""
    path = tmp_path / "odd.parquet"
    n = 300
    pq.write_table(pa.table({"event_id": [f"e{i}" for i in range(n)], "amount": [float(i) for i in range(n)],
                             "token": pa.array([bytes([i % 7, 255]) for i in range(n)], pa.binary()),
                             "wait": pa.array([1500 * (i % 5) for i in range(n)], pa.duration("us"))}), path)
    data = load_events(path)
    assert not data.rejected and data.events[1]["token"] == "01ff" and data.events[1]["wait"] == 1.5
    typed = _streamed(str(path), 128)
    assert typed[0] == data.events


def test_a_csv_schema_version_column_is_read_as_the_integer_it_spells(tmp_path: Path) -> None:
    """A CSV cell is text: schema_version 1 written in a CSV was every row's unknown_schema rejection."""
    path = tmp_path / "sv.csv"
    path.write_text("event_id,schema_version,amount\n" + "".join(f"e{i},1,{i}.5\n" for i in range(50)) + "e50,7,1\n")
    data = load_events(path)
    assert len(data.events) == 50 and [r.reason.value for r in data.rejected] == ["unknown_schema"]
    events, _rows, rejected = _streamed(str(path), 16)
    assert events == data.events and [r for _, r in rejected] == [r.reason for r in data.rejected]


def test_a_dictionary_column_is_read_as_its_values(tmp_path: Path) -> None:
    """A pandas categorical (Arrow dictionary) column: its values, so the chunk stays on the columnar path."""
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"event_id": ["a", "b", "c"], "amount": [1.0, 2.0, 3.0],
                             "channel": pa.array(["pos", "web", "pos"]).dictionary_encode()}), path)
    chunk = next(raw_chunks([path]))
    assert chunk.table is not None and chunk.table.column("channel").type == pa.string()
    assert [e["channel"] for e in load_events(path).events] == ["pos", "web", "pos"]
