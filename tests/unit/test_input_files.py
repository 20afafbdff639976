"""Files as people have them (found by trying the CLI as a new user): every bad row is that row's
rejection, never the file's; what the reader cannot decide for sure is said."""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_detector.big.source import input_files, prepare_chunk, raw_chunks
from stream_detector.cli import main
from stream_detector.errors import InputError
from stream_detector.events_io import ReaderOptions, write_csv, write_scores
from stream_detector.fieldschema import InferenceOptions, infer_schema, parse_overrides
from stream_detector.inputs import load_events


def _rejections(path: Path, **kwargs: object) -> list[tuple[int, str]]:
    return [(r.index, r.reason.value) for r in load_events(path, **kwargs).rejected]  # type: ignore[arg-type]


def _zipped(name: str, data: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def test_json_lines_that_are_not_objects_are_rows_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"event_id":"a","amount":3}\n[1,2,3]\n"text"\n5\nnull\n{"event_id":"b","amount":4}\n')
    data = load_events(tmp_path / "a.jsonl")
    assert [e["event_id"] for e in data.events] == ["a", "b"]
    assert _rejections(tmp_path / "a.jsonl") == [(i, "not_an_object") for i in (1, 2, 3, 4)]


def test_a_ragged_csv_row_is_that_rows_rejection(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text('id,amt,cat\nr1,20,a\nr2,20,a,EXTRA\nr3,20\nr5,20,a\n')
    data = load_events(tmp_path / "r.csv", id_column="id")
    assert [e["event_id"] for e in data.events] == ["r1", "r5"] and data.rows == [0, 3]
    assert _rejections(tmp_path / "r.csv", id_column="id") == [(1, "invalid_row"), (2, "invalid_row")]


def test_a_csv_cell_that_is_not_utf8_is_that_rows_rejection_as_in_json_lines(tmp_path: Path) -> None:
    """A Latin-1 export's one bad cell (found by a new-user trial: it failed the whole file): the row
    is rejected with the column named, its bytes neither decoded nor replaced; the other rows are read."""
    (tmp_path / "l.csv").write_bytes(b"id,amt,cat\nr1,20,shop\nr2,21,caf\xe9\nr3,22,bar\nr4,23,\xff\xfe\n")
    data = load_events(tmp_path / "l.csv", id_column="id")
    assert [e["event_id"] for e in data.events] == ["r1", "r3"] and data.rows == [0, 2]
    assert [(r.index, r.reason.value) for r in data.rejected] == [(1, "invalid_row"), (3, "invalid_row")]
    assert "cell 'cat' is not UTF-8 text (byte 0xe9" in data.rejected[0].message
    (tmp_path / "l.jsonl").write_bytes(b'{"id":"r1","amt":20,"cat":"shop"}\n{"id":"r2","amt":21,"cat":"caf\xe9"}\n')
    assert _rejections(tmp_path / "l.jsonl", id_column="id") == [(1, "invalid_json")]


def test_a_rejected_rows_made_up_id_is_not_a_repeated_id(tmp_path: Path) -> None:
    """A row rejected before its id could be read gets the id <file>-<row> in reports; it equalled a
    real id of the file and `produce` warned "1 rows repeat an event_id" (a new-user trial)."""
    (tmp_path / "l.csv").write_bytes(b"id,amt,cat\nl-2,20,shop\nr\xe9,21,caf\xe9\nr3,22,bar\n")  # no id to read
    data = load_events(tmp_path / "l.csv", id_column="id")
    assert [r.index for r in data.rejected] == [1] and data.ids[1] == "l-2"
    assert not any("repeat an event_id" in w for w in data.warnings), data.warnings
    (tmp_path / "l.csv").write_bytes(b"id,amt,cat\nl-2,20,shop\nr\xe9,21,caf\xe9\nl-2,22,bar\n")
    assert any(w.startswith("1 rows repeat an event_id") for w in load_events(tmp_path / "l.csv", id_column="id").warnings)


@pytest.mark.parametrize("id_column", [None, "id"])
def test_a_csv_row_bad_in_another_cell_is_named_by_its_own_id(tmp_path: Path, id_column: str | None) -> None:
    """A CSV row rejected for a later cell (one cell too many, a Latin-1 byte) still names its event:
    `score`'s output gave it a made-up id <file>-<row> (a new-user trial), while JSON Lines named
    its bad lines. In memory and streamed (`raw_chunks`, `score` of a big file) alike; a row whose id
    cell itself is unreadable keeps the made-up id."""
    name = id_column or "event_id"
    (tmp_path / "d.csv").write_bytes(f"{name},amt,cat\n".encode() + b'e1,20,shop\ne2,"2,5",shop,x\n'
                                     b"e3,21,caf\xe9\n\xe9,22,bar\ne5,23,bar\n")
    data = load_events(tmp_path / "d.csv", id_column=id_column)
    assert [r.index for r in data.rejected] == [1, 2, 3]
    assert data.ids == ["e1", "e2", "e3", "d-4", "e5"]
    streamed = {k: v for chunk in raw_chunks([tmp_path / "d.csv"], ReaderOptions(id_column=name), 2)
                for k, v in chunk.rejected_ids.items()}
    assert streamed == {1: "e2", 2: "e3"}
    (tmp_path / "d.jsonl").write_text(f'{{"{name}":"j1","amt":NaN}}\n{{"{name}":"j2","amt":2}}\n')
    assert load_events(tmp_path / "d.jsonl", id_column=id_column).ids == ["j1", "j2"]


def test_a_ragged_row_that_is_not_utf8_either_is_one_line_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pyarrow cannot hand such a row to the ragged-row handler (it decodes it first): the file is
    refused, in one line that says why, and no "Exception ignored" traceback reaches the terminal."""
    (tmp_path / "g.csv").write_bytes(b"id,amt,cat\nr1,20,shop\nr2,caf\xe9\nr3,22,bar\n")
    assert main(["train", "--input", str(tmp_path / "g.csv"), "--out", str(tmp_path / "m"), "--id-column", "id"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text either" in err and "Traceback" not in err and "Exception ignored" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("compress", [False, True])
def test_cells_quoted_after_a_space_are_read_as_json_has_them(tmp_path: Path, compress: bool) -> None:
    """A trial: an export written `"e1", "card-00893", 68.26, "grocery"` (quotes after ", ", a BOM, CRLF)
    kept the quote marks in the values — `score` flagged 745 of 7,000 events where the same events
    as JSON Lines flagged 84, and `produce` sent `"\"card-00893\""` as the account; with a quoted
    header too, `--label-column label` was "no row has this column". Both readers now read such a
    file as the csv module's skipinitialspace does; its bad rows are still each that row's own."""
    rows = [{"event_id": "e1", "account_id": "card 7", "amount": 68.26, "merchant": "grocery, fresh", "label": "legit"},
            {"event_id": "e2", "account_id": "card 8", "amount": 1250.0, "merchant": "jewel", "label": "fraud"}]
    (tmp_path / "s.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    text = ('\ufeff"event_id", "account_id", "amount", "merchant", "label"\r\n'
            '"e1", "card 7", 68.26, "grocery, fresh", "legit"\r\n'
            '"e2", "card 8", "1,250.00", "jewel", "fraud"\r\n\r\n'
            '"e3", "card 9", 3.5\r\n').encode() + b'"e4", "caf\xe9", 1.0, "x", "legit"\r\n'
    path = tmp_path / "s.csv"
    path.write_bytes(gzip.compress(text) if compress else text)
    options = InferenceOptions(overrides=parse_overrides(["account_id=identifier", "merchant=category"]))
    from_csv = load_events(path, label_column="label", inference=options, require_labels=False)
    from_json = load_events(tmp_path / "s.jsonl", label_column="label", inference=options)
    assert from_csv.events[:2] == from_json.events and from_csv.labels[:2] == ["legit", "fraud"]
    assert [(r.index, r.reason.value, r.event_id) for r in from_csv.rejected] == [
        (2, "invalid_row", "e3"), (3, "invalid_row", "e4")]
    assert "not UTF-8" in from_csv.rejected[1].message
    chunk = next(raw_chunks(input_files(str(path)), chunk_rows=1000))  # the big-history reader
    assert chunk.table.column("account_id").to_pylist() == ["card 7", "card 8"]
    assert chunk.table.column("merchant").to_pylist() == ["grocery, fresh", "jewel"]


def test_a_pandas_index_written_with_an_empty_header_cell_is_an_identifier(tmp_path: Path) -> None:
    """A trial: `df.to_csv()` writes its index under an empty first header cell; it was `column_1`, a
    number feature (the file sorted normal-first: the index told the label). Now `Unnamed: 0`, as
    pandas reads it back, and rule 1's identifier; a later empty cell stays `column_N`."""
    (tmp_path / "p.csv").write_text(",amt,cat,\n" + "".join(f"{i},{i % 7 + 0.5},{'ab'[i % 2]},\n" for i in range(150)))
    schema = load_events(tmp_path / "p.csv").schema
    assert schema["Unnamed: 0"].type.value == "identifier" and schema["column_4"].type.value == "ignored"
    assert schema["amt"].type.value == "number"
    (tmp_path / "twice.csv").write_text(",Unnamed: 0,amt\n" + "".join(f"{i},{i},{i % 7 + 0.5}\n" for i in range(150)))
    twice = load_events(tmp_path / "twice.csv").schema  # a third trial: "names 'Unnamed: 0' more than once"
    assert twice["Unnamed: 0.1"].type.value == "identifier" and twice["Unnamed: 0"].type.value == "identifier"
    pq.write_table(pa.table({"amt": [i % 7 + 0.5 for i in range(150)], "__index_level_0__": list(range(150))}),
                   tmp_path / "p.parquet")  # pandas' index in Parquet: a number feature before (a third trial)
    assert load_events(tmp_path / "p.parquet").schema["__index_level_0__"].type.value == "identifier"


def test_integer_ids_in_files_are_their_digits(tmp_path: Path) -> None:
    pq.write_table(pa.table({"event_id": pa.array([10, 7_340_000_000_000_000_001], pa.int64()), "amt": [1.0, 2.0]}),
                   tmp_path / "i.parquet")
    (tmp_path / "i.jsonl").write_text('{"event_id": 10, "amt": 1.0}\n{"event_id": 7340000000000000001, "amt": 2.0}\n')
    for name in ("i.parquet", "i.jsonl"):
        assert [e["event_id"] for e in load_events(tmp_path / name).events] == ["10", "7340000000000000001"]


def test_headers_spaces_empty_cells_labels_and_compression_by_content(tmp_path: Path) -> None:
    text = " event_id ; amt ;cat;\ne1;1,5;a;\ne2;2,5;b;\n"
    (tmp_path / "x.dat").write_bytes(gzip.compress(text.encode()))  # gzip, whatever the name
    data = load_events(tmp_path / "x.dat")
    assert set(data.events[0]) == {"event_id", "amt", "cat", "column_4"} and data.events[1]["amt"] == 2.5
    assert data.schema["column_4"].type == "ignored"
    (tmp_path / "l.csv").write_text("event_id,amt,Class\na,1,0.0\nb,2,1.0\n")
    assert load_events(tmp_path / "l.csv", label_column="Class").labels == ["0", "1"]


def test_csv_cells_lose_surrounding_spaces_so_a_category_or_id_means_what_it_does_in_json(tmp_path: Path) -> None:
    """Found by a trial: a CSV written with ``, `` between cells kept the space in text cells, so
    the country `` US`` a model learnt from the CSV was a category the same event from Kafka (JSON
    ``"US"``) never has (every streamed event scored as an unseen category), and the account
    `` 12`` had a history apart from ``12``. A cell that is spaces around a missing-value marker
    (`` NA ``, a blank cell) is missing, as the bare marker is, and so is a quoted empty cell (a
    second trial: a QUOTE_ALL file's empty amounts were empty text, its rows rejected)."""
    (tmp_path / "s.csv").write_text('event_id, account_id, amount, country, note\n'
                                    'e1, 12, 12.5, US ,x\n'
                                    'e2, 12, 13.0,US,  \n'
                                    'e3,13, NA , FR,""\n')
    rows = [{"event_id": "e1", "account_id": "12", "amount": 12.5, "country": "US", "note": "x"},
            {"event_id": "e2", "account_id": "12", "amount": 13.0, "country": "US", "note": None},
            {"event_id": "e3", "account_id": "13", "amount": None, "country": "FR", "note": None}]
    (tmp_path / "s.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    options = InferenceOptions(overrides=parse_overrides(["account_id=identifier", "country=category",
                                                          "note=category"]))
    from_csv, from_json = (load_events(tmp_path / name, inference=options) for name in ("s.csv", "s.jsonl"))
    assert from_csv.events == from_json.events
    assert [e["country"] for e in from_csv.events] == ["US", "US", "FR"]
    assert [e.get("note") for e in from_csv.events] == ["x", None, None]
    chunk = next(raw_chunks(input_files(str(tmp_path / "s.csv")), chunk_rows=1000))  # the big-history reader
    assert chunk.table.column("country").to_pylist() == ["US", "US", "FR"]
    assert chunk.table.column("account_id").to_pylist() == ["12", "12", "13"]


def test_what_cannot_be_decided_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eu.csv").write_text("event_id;amt;cat\nr1;1.500;a\nr2;2.000;a\nr3;750;a\n")
    assert any("'1.500' can be read two ways" in w for w in load_events(tmp_path / "eu.csv").warnings)
    rows = [{"amount": str(i)} for i in range(95)] + [{"amount": "unknown"}] * 5
    warnings = infer_schema(rows).warnings
    assert len(warnings) == 1 and "95 of 100 values are numbers" in warnings[0] and "'unknown'" in warnings[0]
    with pytest.raises(ValueError, match="only a timestamp takes a unit"):
        parse_overrides(["amount=number:s"])
    schema = infer_schema([{"label": "1", "x": 1}], InferenceOptions(
        ignored=frozenset({"label"}), overrides=parse_overrides(["label=number"]))).schema
    assert schema["label"].type == "ignored"  # the label column is never a feature, whatever --field says
    (tmp_path / "c.csv").write_text("event_id,amt\na,1\n")
    code = main(["train", "--input", str(tmp_path / "c.csv"), "--out", str(tmp_path / "m"), "--delimiter", ";"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "one column with --delimiter ';'" in err[-1]


def test_a_file_in_another_format_than_its_name_says_is_refused_by_what_it_looks_like(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: files were read by their names only — JSON Lines named .csv was
    scored as a one-column CSV (every row alerted, exit 0), CSV named .jsonl had every row
    rejected (exit 0), Parquet named .csv failed as "not UTF-8". Each is one line, exit 2, naming
    what the file looks like, on the in-memory and the streamed path; a byte order mark before the
    first line of JSON Lines is not part of it."""
    from stream_detector.errors import InputError
    from stream_detector.events_io import checked_kind

    lines = '{"event_id": "e1", "amount": 1.5}\n{"event_id": "e2", "amount": 2.5}\n'
    cases = {"jsonl.csv": (lines.encode(), "its first line is a JSON object: JSON Lines? name it .jsonl"),
             "csv.jsonl": (b"event_id,amount\ne1,1.5\ne2,2.5\n", "it looks like CSV: name it .csv"),
             "array.json": (b'[{"event_id": "e1"}]\n', "it starts with '[': one JSON document"),
             "long-array.json": (("[" + ", ".join([lines.splitlines()[0]] * 4000) + "]").encode(),  # one line > 64 KB
                                 "it starts with '[': one JSON document"),
             "pretty.json": (b'[\n  {"event_id": "e1"},\n  {"event_id": "e2"}\n]\n', "it starts with '['"),
             # one object over several lines (a trial: read as 5 rows of invalid_json, ../shared/cases)
             "pretty-object.json": (b'{"event_id":"d8",\n "amount"\n :1.00}\n',
                                    "its first object spans several lines (a pretty-printed JSON document?)"),
             "utf16.csv": ("event_id,amount\ne1,1.5\n".encode("utf-16"), "UTF-16 (or other non-UTF-8) text"),
             "utf16-no-bom.csv": ("event_id,amount\ne1,1.5\n".encode("utf-16-be"), "UTF-16 (or other non-UTF-8) text"),
             # random bytes were called UTF-16 text (a new-user trial)
             "random.jsonl": (random.Random(3).randbytes(8192), "binary data, not text (it holds NUL bytes)"),
             "text.parquet": (b"event_id,amount\ne1,1.5\n", "it is not one (a Parquet file starts with PAR1)"),
             "jsonl.csv.gz": (gzip.compress(lines.encode()), "its first line is a JSON object"),
             # a workbook is a ZIP archive: it was called UTF-16 text (a new-user trial)
             "book.xlsx": (_zipped("xl/workbook.xml", b"<workbook/>"), "an Excel (.xlsx) or OpenDocument workbook"),
             "zipped.csv": (_zipped("data.csv", b"event_id,amount\ne1,1.5\n"), "a ZIP archive")}
    for name, (data, said) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=re.escape(said)):
            checked_kind(tmp_path / name)
        for streamed in ([], ["--streamed"]):
            assert main(["train", "--input", str(tmp_path / name), "--out",
                         str(tmp_path / f"m-{name}"), *streamed]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            errors = [line for line in err if "error:" in line]  # (the streamed path says first what it reads)
            assert len(errors) == 1 and said in errors[0] and errors[0] == err[-1], err
    pq.write_table(pa.table({"event_id": ["e1"], "amount": [1.5]}), tmp_path / "parquet.csv")
    (tmp_path / "p.parquet.gz").write_bytes(gzip.compress((tmp_path / "parquet.csv").read_bytes()))
    with pytest.raises(InputError, match="a compressed Parquet file"):
        checked_kind(tmp_path / "p.parquet.gz")
    with pytest.raises(InputError, match="it is a Parquet file .it starts with PAR1.: name it .parquet"):
        checked_kind(tmp_path / "parquet.csv")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())
    (tmp_path / "plain.jsonl").write_bytes(lines.encode())
    assert checked_kind(tmp_path / "bom.jsonl") == "jsonl"
    bom, plain = load_events(tmp_path / "bom.jsonl"), load_events(tmp_path / "plain.jsonl")
    assert bom.events == plain.events and not bom.rejected
    (tmp_path / "empty.csv").write_bytes(b"")
    assert checked_kind(tmp_path / "empty.csv") == "csv"  # left to the reader ("no rows")
    junk = tmp_path / "junk-first.jsonl"  # bad lines first are each their row's rejection, not the file's
    junk.write_bytes(b"oops\n1\n2\n3\n4\n5\n" + lines.encode())
    assert checked_kind(junk) == "jsonl" and len(load_events(junk).events) == 2


def test_an_id_column_no_row_has_is_refused_not_replaced_by_made_up_ids(tmp_path: Path, capsys) -> None:
    """Found by a new-user trial: `produce --id-column evnt_id` (misspelled) sent every event with a
    made-up id (`x-49` for `sim-20049`), `score` wrote them, and `train --feedback` joined no label;
    all exit 0. An explicit --id-column that no row has is one line, exit 2, on every path."""
    from stream_detector.big.source import GeneratedIds
    from stream_detector.errors import InputError

    path = tmp_path / "x.csv"
    path.write_text("event_id,amount\nsim-1,3.5\nsim-2,4.5\n")
    with pytest.raises(InputError, match="--id-column evnt_id: no row has a value in this column"):
        load_events(path, id_column="evnt_id")
    with pytest.raises(InputError, match="--id-column evnt_id"):
        GeneratedIds("evnt_id")[path]
    assert load_events(path).ids == ["sim-1", "sim-2"]  # without the option: event_id, as before
    assert main(["produce", "--input", str(path), "--id-column", "evnt_id"]) == 2  # before any Kafka call
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("stream-detector produce: error: ") and "evnt_id" in err, err


def test_a_label_column_no_row_has_is_refused_when_scoring_too(tmp_path: Path) -> None:
    """Found by a new-user trial: `score --label-column labl` (misspelled) was silently ignored,
    so no evaluation was made; training already refused it. Now every reader refuses it."""
    from stream_detector.errors import InputError

    path = tmp_path / "s.csv"
    path.write_text("event_id,amount,label\ne1,3.5,legit\n")
    with pytest.raises(InputError, match=r"--label-column labl: no row has this column; check its spelling "
                                         r"\(did you mean 'label'\?\)"):
        load_events(path, label_column="labl", require_labels=False)
    assert load_events(path, label_column="label", require_labels=False).labels == ["legit"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_row_without_a_label_means_the_same_in_every_format(tmp_path: Path, fmt: str) -> None:
    """Found by a trial: a JSON Lines row without the label key stopped `produce --label-column`
    for the whole file, while an empty CSV cell was trained on as the label "" (not normal: a
    positive in the evaluation). Now a row has no label when the column is absent, null or empty,
    whatever the format: training refuses such rows (one line naming them), producing and scoring
    set the label aside as "" (produce sends no sd.label header for it)."""
    rows = [{"event_id": "e1", "amount": 1.5, "label": "0"}, {"event_id": "e2", "amount": 2.5},
            {"event_id": "e3", "amount": 3.5, "label": None}, {"event_id": "e4", "amount": 4.5, "label": " "},
            {"event_id": "e5", "amount": 5.5, "label": 1}]
    path = tmp_path / f"l.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    elif fmt == "csv":
        path.write_text("event_id,amount,label\n" + "".join(
            f"{r['event_id']},{r['amount']},{'' if r.get('label') is None else r['label']}\n" for r in rows))
    else:
        pq.write_table(pa.table({"event_id": [r["event_id"] for r in rows], "amount": [r["amount"] for r in rows],
                                 "label": [None if r.get("label") is None else str(r["label"]) for r in rows]}), path)
    loaded = load_events(path, label_column="label", require_labels=False)
    assert loaded.labels == ["0", "", "", "", "1"]
    assert all("label" not in e for e in loaded.events)
    with pytest.raises(InputError, match=r"3 row\(s\) have no label in column 'label' \(data rows 2, 3, 4\)"):
        load_events(path, label_column="label")
    for chunk_rows in (2, 1000):  # the big-history reader, chunk by chunk: the same rule
        found: list[str] = []
        for chunk in raw_chunks(input_files(str(path)), chunk_rows=chunk_rows):
            found += prepare_chunk(chunk, id_column=None, label_column="label", generate_ids=False,
                                   require_labels=False).labels.values()
            if chunk.first_row == 0:
                with pytest.raises(InputError, match="have no label in column 'label'"):
                    prepare_chunk(next(raw_chunks(input_files(str(path)), chunk_rows=chunk_rows)), id_column=None,
                                  label_column="label", generate_ids=False)
        assert found == ["0", "", "", "", "1"]


def test_labels_are_spelled_one_way_whatever_the_format_and_nan_is_no_label(tmp_path: Path) -> None:
    """A second trial: a Parquet float label column's NaN was the label "nan" (trained on as a
    positive; produced as an sd.label header "nan"), while a CSV's nan cell is missing; and the
    words True/False were "True" in a CSV but "false" as JSON booleans. ``--normal-label`` is
    spelled the same way (`0.0`, ` legit `, `False` found no rows)."""
    from stream_detector.inputs import _label_text

    pq.write_table(pa.table({"event_id": ["a", "b", "c"], "amount": [1.0, 2.0, 3.0],
                             "label": pa.array([0.0, float("nan"), 1.0], pa.float64())}), tmp_path / "f.parquet")
    assert load_events(tmp_path / "f.parquet", label_column="label", require_labels=False).labels == ["0", "", "1"]
    with pytest.raises(InputError, match=r"1 row\(s\) have no label"):
        load_events(tmp_path / "f.parquet", label_column="label")
    (tmp_path / "b.csv").write_text("event_id,amount,label\na,1,True\nb,2,FALSE\n")
    (tmp_path / "b.jsonl").write_text('{"event_id":"a","amount":1,"label":true}\n{"event_id":"b","amount":2,"label":false}\n')
    for name in ("b.csv", "b.jsonl"):
        assert load_events(tmp_path / name, label_column="label").labels == ["true", "false"]
    assert [_label_text(v) for v in ("0.0", " legit ", "False", "nan", 1.0, "1e3")] == ["0", "legit", "false", "", "1",
                                                                                         "1000"]
    assert [_label_text(v) for v in (["x"], {"v": 1, "a": None})] == ['["x"]', '{"a":null,"v":1}']


@pytest.mark.parametrize("first", ["1,-0.11252183,-2.8272038,0.5\n", "1.0\t-0.5\t3.25\n",
                                   "983,1,760,txn0,GB,0\n"])
def test_a_first_line_of_data_is_warned_of_as_a_header(first: str, tmp_path: Path) -> None:
    """A trial: ECG5000's headerless TSV trained on its first row's values as column names (its
    class label among the features), and a headerless all-integer file the same, without a word."""
    path = tmp_path / "headerless.csv"
    path.write_text(first + first.replace("txn0", "txn1"))
    warned = [w for w in load_events(path).warnings if "looks like data, not a header" in w]
    assert len(warned) == 1 and "a CSV file needs a header row" in warned[0], load_events(path).warnings


def test_a_first_line_of_data_with_repeats_is_refused_with_the_hint(tmp_path: Path) -> None:
    """NSL-KDD's first row names '0' and '0.00' several times: refused, now saying why."""
    path = tmp_path / "kdd.csv"
    path.write_text("0,tcp,0.00,0.00,2,2,normal\n" * 2)
    with pytest.raises(InputError, match=r"more than once \(is the first line data\? a CSV file needs a header row"):
        load_events(path)


@pytest.mark.parametrize("header", ["0,1,2,label", "400.5,401.0,401.5,label", "-1,0,1,label"])
def test_headers_of_numbered_or_measured_columns_still_read(header: str, tmp_path: Path) -> None:
    """Numbered columns are a header; so are a spectrum's wavelengths or offsets (a trial: refused
    by the first version of the rule above, with no way round it): those are warned of only."""
    path = tmp_path / "numbered.csv"
    path.write_text(f"{header}\n1.5,-2,3e2,x\n")
    loaded = load_events(path)
    names = header.split(",")
    assert loaded.events[0] == {"event_id": "numbered-1", names[0]: 1.5, names[1]: -2.0, names[2]: 300.0, "label": "x"}
    assert any("looks like data" in w for w in loaded.warnings) is (header != "0,1,2,label")


def test_an_event_id_column_spelt_otherwise_is_pointed_at(tmp_path: Path) -> None:
    """A trial: a file's `Event_ID` was listed as an identifier while `score` wrote generated ids
    (`caps-1`, …), without saying why."""
    path = tmp_path / "caps.csv"
    path.write_text("Event_ID,amount\nA1,3.5\nA2,4.5\n")
    loaded = load_events(path)
    assert loaded.ids == ["caps-1", "caps-2"]
    assert any("column 'Event_ID' looks like one: --id-column Event_ID" in w for w in loaded.warnings)
    assert load_events(path, id_column="Event_ID").ids == ["A1", "A2"]
    (tmp_path / "plain.csv").write_text("ref,amount\nA1,3.5\n")
    assert not any("looks like one" in w for w in load_events(tmp_path / "plain.csv").warnings)


def test_csv_written_here_ends_lines_with_newline_only(tmp_path: Path) -> None:
    """A trial: `simulate --out x.csv` wrote CRLF line ends, so `grep ',legit$'` matched nothing."""
    write_csv(tmp_path / "w.csv", [{"event_id": "e1", "label": "legit"}, {"event_id": "e2", "label": "fraud"}])
    write_scores(tmp_path / "s.csv", [("e1", 0.5, None, None)], 1.0)
    for name in ("w.csv", "s.csv"):
        assert b"\r" not in (tmp_path / name).read_bytes()
    assert (tmp_path / "w.csv").read_text().splitlines()[1].endswith(",legit")


def test_a_file_with_every_cell_quoted_means_what_it_does_unquoted(tmp_path: Path) -> None:
    """A trial: the same rows written with csv.QUOTE_ALL (and QUOTE_NONNUMERIC) read an empty amount
    as empty text — 200 of 2,000 rows rejected, and `train` made `amount` an identifier — where the
    QUOTE_MINIMAL file read it as missing."""
    import csv

    rows = [{"event_id": f"e{i}", "amount": "" if i % 10 == 0 else f"{i}.5", "channel": "web"} for i in range(60)]
    for name, quoting in (("min", csv.QUOTE_MINIMAL), ("all", csv.QUOTE_ALL), ("nonnum", csv.QUOTE_NONNUMERIC)):
        with (tmp_path / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["event_id", "amount", "channel"], quoting=quoting)
            writer.writeheader()
            writer.writerows(rows)
    loaded = {name: load_events(tmp_path / f"{name}.csv") for name in ("min", "all", "nonnum")}
    assert loaded["min"].events == loaded["all"].events == loaded["nonnum"].events
    assert loaded["all"].schema["amount"].type.value == "number" and not loaded["all"].rejected
    assert loaded["all"].events[0].get("amount") is None


def test_a_cell_quoted_after_a_space_far_into_the_file_is_read_as_such(tmp_path: Path) -> None:
    """A third trial: the choice of reader was made from the first 64 KB, so a `, ` export whose
    first quoted cell (`"travel, air"`) came on line 1,052 split it into two cells (a ragged row),
    and rows quoted after a space after 1,000 plain ones kept their quotes (`produce` sent them)."""
    lines = ["event_id, account_id, amount, merchant"]
    quoted = '"travel, air"'
    lines += [f"e{i}, card {i % 50}, {i}.25, {quoted if i == 2500 else 'grocery'}" for i in range(3000)]
    lines += ['"e3000", "card 7", 1.5, "shoes"']
    (tmp_path / "late.csv").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "late.csv").stat().st_size > 1 << 16
    loaded = load_events(tmp_path / "late.csv")
    assert not loaded.rejected and len(loaded.events) == 3001
    assert loaded.events[2500]["merchant"] == "travel, air" and loaded.events[3000]["account_id"] == "card 7"
    chunks = list(raw_chunks(input_files(str(tmp_path / "late.csv")), chunk_rows=1000))
    assert [m for c in chunks for m in c.table.column("merchant").to_pylist()][2500] == "travel, air"


@pytest.mark.parametrize(("header", "named"), [
    ("transaction_id,account_id,amount", "transaction_id"),
    ("TRANSACTION_ID,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT", "TRANSACTION_ID"),
    ("TxnID,card_id,amount", "TxnID"),
    ("id,account_id,amount", "id"),
])
def test_a_transaction_id_column_is_pointed_at(header: str, named: str, tmp_path: Path) -> None:
    """A trial: a file keyed by `transaction_id` was produced with generated ids, without a word,
    so labels keyed by that id joined nothing. Entity ids (accounts, customers, terminals, cards)
    are never taken for the event's id, even where every row has its own."""
    path = tmp_path / "tx.csv"
    path.write_text(f"{header}\nT1,A1,3.5\nT2,A2,4.5\n" if header.count(",") == 2 else f"{header}\nT1,C1,X1,3.5\nT2,C2,X2,4.5\n")
    loaded = load_events(path)
    assert loaded.ids == ["tx-1", "tx-2"]
    hints = [w for w in loaded.warnings if "looks like one" in w]
    assert len(hints) == 1 and f"column {named!r} looks like one: --id-column {named} takes" in hints[0]
    assert load_events(path, id_column=named).ids == ["T1", "T2"]


@pytest.mark.parametrize("header", ["account_id,terminal_id,amount", "transaction_id,account_id,amount"])
def test_no_id_column_is_pointed_at_where_none_is_an_events_own(header: str, tmp_path: Path) -> None:
    """Unique account and terminal ids are entities, not event ids; a transaction id that repeats
    (or is missing in a row) is not one either."""
    path = tmp_path / "plain.csv"
    path.write_text(f"{header}\nA1,T1,3.5\nA1,T2,4.5\n" if header.startswith("account") else f"{header}\nT1,A1,3.5\nT1,A2,4.5\n")
    assert not any("looks like one" in w for w in load_events(path).warnings)


@pytest.mark.parametrize(("cell", "shape"), [("10/1/2026 0:05", "00/0/0000 0:00"), ("01.10.2026 00:05", "00.00.0000 00:00"),
                                             ("12-31-2026 11:59 PM", "00-00-0000 00:00 PM"), ("1/10/26", "0/00/00")])
def test_a_date_written_the_local_way_is_refused_with_what_to_write(cell: str, shape: str, tmp_path: Path) -> None:
    """A trial: a spreadsheet's `10/1/2026 0:05` was refused with the text's length alone. The
    refusal now gives its shape (digits as 0: never the value, which may be anything) and what to
    write; day and month order is not guessed."""
    path = tmp_path / "local.csv"
    path.write_text(f"event_id,amount,timestamp\ne1,3.5,{cell}\ne2,4.5,2026-10-01T00:05:00Z\n")
    loaded = load_events(path)
    assert [r.index for r in loaded.rejected] == [0]
    message = loaded.rejected[0].message
    assert f"shaped {shape}, a date written the local way" in message and "RFC 3339 (2026-10-01T00:05:00Z" in message
    assert cell not in message
    (tmp_path / "iso.csv").write_text("event_id,amount,timestamp\ne1,3.5,2026/10/01 x\n")
    assert "written the local way" not in load_events(tmp_path / "iso.csv").rejected[0].message


def test_a_misspelt_id_column_names_the_one_meant(tmp_path: Path) -> None:
    """Trial E: `--id-column transaction_ID` for a file's `TRANSACTION_ID` was refused without the
    name it meant (`--entity-key` had it)."""
    path = tmp_path / "t.csv"
    path.write_text("TRANSACTION_ID,amount\nT1,3.5\nT2,4.5\n")
    with pytest.raises(InputError, match=r"--id-column transaction_ID: no row has a value in this column; check its "
                                         r"spelling; did you mean 'TRANSACTION_ID'\?"):
        load_events(path, id_column="transaction_ID")
    with pytest.raises(InputError, match=r"check its spelling \(without"):
        load_events(path, id_column="zzz")


def test_a_header_without_a_newline_is_a_file_of_no_rows(tmp_path: Path) -> None:
    """Trial O: a CSV of its header alone, with no newline after it, gave pyarrow's "Could not skip
    initial 1 rows from CSV file, either file is too short or header is larger than block size";
    with a newline it read as no rows. Both read as no rows, compressed too."""
    from stream_detector.events_io import read_rows

    for name, body in (("bare.csv", b"a,b,c"), ("ended.csv", b"a,b,c\n"), ("bare.csv.gz", gzip.compress(b"a,b,c"))):
        (tmp_path / name).write_bytes(body)
        assert read_rows(tmp_path / name).rows == [], name
    (tmp_path / "one.csv").write_bytes(b"a,b,c\n1,2,3")  # a last row without its newline still reads
    assert read_rows(tmp_path / "one.csv").rows == [{"a": "1", "b": "2", "c": "3"}]
