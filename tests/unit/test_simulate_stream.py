"""History files in chunks (docs/simulator.md "Big history files"): ``HandbookSimulator.history`` and
``simulate --out`` written chunk by chunk — independent of the chunk size, exactly N time-ordered
events, the same typed events from CSV, JSON Lines and Parquet, feedback consistent with the events."""

from __future__ import annotations

import csv
import gzip
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from stream_detector import cli, history_files, simulate
from stream_detector.cli import main
from stream_detector.events_io import write_csv, write_jsonl
from stream_detector.inputs import load_events, read_feedback
from stream_detector.simulate import DAY_MS, HANDBOOK_PATTERNS, HOUR_MS, HandbookBatch, HandbookSimulator, LabelDelays

NOW = 1_750_000_000_000  # 2025-06-15
COLUMNS = ["event_id", "account_id", "terminal_id", "timestamp", "amount", "merchant_category", "channel",
           "card_present", "label", "pattern"]
WORLD = ["--accounts", "300", "--terminals", "600", "--seed", "4"]


class _FixedNow(datetime):
    @classmethod
    def now(cls, tz: object = None) -> datetime:
        return datetime.fromtimestamp(NOW / 1000, timezone.utc)


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "datetime", _FixedNow)


def _sim(**kw: object) -> HandbookSimulator:
    return HandbookSimulator(**{"seed": 4, "customers": 300, "terminals": 600, **kw})  # type: ignore[arg-type]


def _whole(chunks: list[HandbookBatch]) -> HandbookBatch:
    return HandbookBatch.concat(chunks)


def _same(a: HandbookBatch, b: HandbookBatch) -> bool:
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) if isinstance(getattr(a, f.name), np.ndarray)
               else getattr(a, f.name) == getattr(b, f.name) for f in fields(HandbookBatch))


def _simulate(tmp_path: Path, name: str, count: int, *extra: str) -> Path:
    out = tmp_path / name
    assert main(["simulate", "--out", str(out), "--count", str(count), *WORLD, *extra]) == 0
    return out


# ---- the generator -------------------------------------------------------------------------------


def test_history_does_not_depend_on_the_chunk_size() -> None:
    small = list(_sim().history(30_000, 14 * DAY_MS, NOW, chunk=1000))
    large = list(_sim().history(30_000, 14 * DAY_MS, NOW, chunk=7000))
    assert [len(c) for c in small] == [1000] * 30
    assert [len(c) for c in large] == [7000] * 4 + [2000]
    assert _same(_whole(small), _whole(large))
    assert not _same(_whole(small), _whole(list(_sim(seed=5).history(30_000, 14 * DAY_MS, NOW, chunk=1000))))


def test_history_has_exactly_n_time_ordered_events_in_the_span_with_consecutive_ids() -> None:
    sim = _sim(run_id="h")
    sim.counter = 41
    whole = _whole(list(sim.history(12_345, 3 * DAY_MS, NOW, chunk=5000)))
    assert len(whole) == 12_345 and sim.counter == 41 + 12_345
    assert whole.event_ids()[:2] == ["h-42", "h-43"] and whole.event_ids()[-1] == f"h-{41 + 12_345}"
    assert np.all(np.diff(whole.timestamp) >= 0)
    assert NOW - 3 * DAY_MS < whole.timestamp[0] and whole.timestamp[-1] <= NOW
    assert whole.draws.shape == (12_345, 4) and whole.timestamp.dtype == np.int64
    again = _whole(list(sim.history(100, 3 * DAY_MS, NOW)))  # another call: other events, ids go on
    assert again.first == 41 + 12_345 + 1 and not np.array_equal(again.account, whole.account[:100])


def test_history_edge_cases() -> None:
    assert list(_sim().history(0, DAY_MS, NOW)) == []
    flat = _whole(list(_sim().history(70_000, 0, NOW, chunk=30_000)))  # span 0: every event at end_ms
    assert len(flat) == 70_000 and set(flat.timestamp.tolist()) == {NOW}
    for bad in ({"n": -1, "span_ms": 1}, {"n": 1, "span_ms": -1}, {"n": 1, "span_ms": 1, "chunk": 0}):
        with pytest.raises(ValueError):
            _sim().history(**bad)


def test_history_follows_generates_distributions_and_scenarios() -> None:
    sim = _sim()
    whole = _whole(list(sim.history(40_000, 28 * DAY_MS, NOW, chunk=9000)))
    reference = _sim().generate(40_000, NOW, 28 * DAY_MS)
    hours = (whole.timestamp % DAY_MS) // HOUR_MS
    assert np.mean((hours >= 6) & (hours < 18)) > 0.6 and np.mean(hours < 2) < 0.05
    expected = np.bincount((reference.timestamp % DAY_MS) // HOUR_MS, minlength=24) / len(reference)
    assert np.abs(np.bincount(hours, minlength=24) / len(whole) - expected).max() < 0.01
    assert abs(whole.amount.mean() - reference.amount.mean()) < 0.05 * reference.amount.mean()
    counts = {p: int(np.sum(whole.pattern == k)) for k, p in enumerate(HANDBOOK_PATTERNS)}
    assert all(counts[p] > 0 for p in HANDBOOK_PATTERNS), counts  # every scenario, in a small world
    day = whole.timestamp // DAY_MS
    for d in np.unique(day).tolist():  # every event at a terminal compromised in its window is fraud
        window = np.concatenate([sim.compromised_terminals(x) for x in range(d - 27, d + 1)])
        at = (day == d) & np.isin(whole.terminal, window)
        assert np.all(whole.fraud[at])
    assert np.all(whole.fraud[whole.amount > 220])


def test_sorted_labels_over_chunks_are_the_whole_historys_labels() -> None:
    delays = LabelDelays(scale=0.3)
    chunks = list(_sim().history(20_000, 10 * DAY_MS, NOW, chunk=1500))
    sorter = history_files.SortedLabels(delays)
    got: dict[str, list[object]] = {"event_id": [], "label": [], "source": [], "labelled_at": []}
    for part in [*(sorter.add(c) for c in chunks), sorter.finish()]:
        for k, v in part.items():
            got[k].extend(v)
    records = [dict(zip(got, row, strict=True)) for row in zip(*got.values(), strict=True)]
    assert records == _whole(chunks).labels(delays)


# ---- live runs on the world's clock ------------------------------------------------------------------


def _median_gap_ms(batch: HandbookBatch) -> float:
    """The median time between a card's consecutive payments, over every card."""
    order = np.lexsort((batch.timestamp, batch.account))
    account, times = batch.account[order], batch.timestamp[order]
    same = account[1:] == account[:-1]
    return float(np.median(np.diff(times)[same]))


def test_a_world_clock_run_pays_at_the_history_files_pace_not_the_senders() -> None:
    """Live runs used to stamp each event with the wall clock: at 100 events/s a card of a 300-card
    world paid every few seconds instead of a few times a day, and a model with per-card history
    flagged most of a live run. On the world's clock a card's payments are as far apart as in a
    history file of the same world (docs/simulator.md, *Live runs*)."""
    sim = _sim()
    world = history_files.WorldClockStream(sim, 20_000, NOW, 700, LabelDelays())
    live = _whole([batch for batch, _ in world])
    assert world.span_ms == round(20_000 / sim.events_per_day * DAY_MS)
    assert len(live) == 20_000 and np.all(np.diff(live.timestamp) >= 0)
    assert NOW - world.span_ms < live.timestamp[0] and live.timestamp[-1] <= NOW
    file_gap = _median_gap_ms(_whole(list(_sim().history(20_000, 30 * DAY_MS, NOW))))
    assert file_gap > 3 * HOUR_MS  # a few payments a day
    assert 0.8 < _median_gap_ms(live) / file_gap < 1.25
    wall = _sim().generate(20_000, now_ms=NOW, span_ms=200_000)  # the same events in 200 s: --rate 100
    assert _median_gap_ms(wall) < file_gap / 1_000


def test_a_world_clock_run_publishes_each_label_once_its_clock_has_passed_it() -> None:
    delays = LabelDelays(scale=0.5)
    world = history_files.WorldClockStream(_sim(), 12_000, NOW, 1_000, delays)
    batches, published = [], []
    for batch, due in world:
        batches.append(batch)
        assert all(at < batch.timestamp[-1] for at in due["labelled_at"])  # due on the run's clock
        published += [dict(zip(due, row, strict=True)) for row in zip(*due.values(), strict=True)]
    pending = world.pending()
    every = _whole(batches).labels(delays)
    last = batches[-1].timestamp[-1]
    assert published == [label for label in every if label["labelled_at"] < last]  # in order, none twice
    assert pending == len(every) - len(published) > 0  # the last chargebacks are not due yet
    assert {label["source"] for label in published} == {"analyst", "chargeback"}


# ---- the files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h.csv", "h.jsonl", "h.parquet", "h.csv.gz"])
def test_out_files_do_not_depend_on_chunk_rows(name: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _simulate(tmp_path / "a", name, 9000, "--chunk-rows", "1000", "--feedback-out", str(tmp_path / f"la-{name}"))
    b = _simulate(tmp_path / "b", name, 9000, "--chunk-rows", "7000", "--feedback-out", str(tmp_path / f"lb-{name}"))
    if name.endswith(".parquet"):
        assert pq.read_table(a).equals(pq.read_table(b))
        assert pq.ParquetFile(a).metadata.num_row_groups == 9  # one row group per chunk
        assert pq.read_table(tmp_path / f"la-{name}").equals(pq.read_table(tmp_path / f"lb-{name}"))
    else:  # byte for byte, gzip included (no name or time in its header)
        assert a.read_bytes() == b.read_bytes()
        assert (tmp_path / f"la-{name}").read_bytes() == (tmp_path / f"lb-{name}").read_bytes()
        if name.endswith(".gz"):
            assert gzip.decompress(a.read_bytes()).startswith(b"event_id,account_id,")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_csv_and_jsonl_rows_are_what_write_csv_and_write_jsonl_write(suffix: str, tmp_path: Path) -> None:
    out = _simulate(tmp_path, f"h{suffix}", 5000, "--chunk-rows", "2000", "--run-id", "sim")  # _sim()'s ids
    whole = _whole(list(_sim().history(5000, 7 * DAY_MS, NOW)))
    rows = [{**e, "label": "legit" if p == "legit" else "fraud", "pattern": p}
            for e, p in zip(whole.events(), whole.patterns(), strict=True)]
    expected = tmp_path / f"expected{suffix}"
    (write_csv if suffix == ".csv" else write_jsonl)(expected, rows)
    assert out.read_bytes() == expected.read_bytes()
    head = out.read_bytes().split(b"\n")[0]
    first = head.decode().strip().split(",") if suffix == ".csv" else list(orjson.loads(head))
    assert first == COLUMNS


def test_the_same_typed_events_from_every_format(tmp_path: Path) -> None:
    """One event, one meaning: the Parquet, CSV, gzipped CSV and JSON Lines files load as the same events."""
    loaded = {}
    for name in ("h.parquet", "h.csv", "h.csv.gz", "h.jsonl"):
        out = _simulate(tmp_path, name, 3000, "--chunk-rows", "1000")
        loaded[name] = load_events(out, label_column="label")
    schema = pq.read_schema(tmp_path / "h.parquet")
    assert schema.names == COLUMNS
    assert [str(t) for t in schema.types] == ["string", "string", "string", "int64", "double", "string", "string",
                                              "bool", "string", "string"]
    reference = loaded.pop("h.parquet")
    assert len(reference.events) == 3000 and not reference.rejected
    assert reference.labels is not None and {"fraud", "legit"} == set(reference.labels)
    for name, data in loaded.items():
        assert data.events == reference.events, name
        assert data.labels == reference.labels, name
        assert data.schema.to_dict() == reference.schema.to_dict(), name


def test_feedback_file_is_consistent_with_the_events(tmp_path: Path) -> None:
    feedback = tmp_path / "labels.parquet"
    out = _simulate(tmp_path, "h.csv", 8000, "--chunk-rows", "1500", "--feedback-out", str(feedback),
                    "--label-delay-scale", "2")
    with out.open() as handle:
        events = {r["event_id"]: r for r in csv.DictReader(handle)}
    file = read_feedback(feedback)
    assert not file.rejected and file.rows == file.verdicts.count
    labels = file.verdicts.labels()
    assert all(label.event_id in events for label in labels)
    assert {x.event_id for x in labels if x.source == "chargeback"} == {
        e for e, r in events.items() if r["label"] == "fraud"}
    assert all(x.labelled_at >= int(events[x.event_id]["timestamp"]) for x in labels)
    at = pq.read_table(feedback).column("labelled_at").to_pylist()
    assert at == sorted(at)  # the whole file sorted by labelled_at, though written chunk by chunk


def test_velocity_profile_writes_parquet(tmp_path: Path) -> None:
    out = tmp_path / "v.parquet"
    assert main(["simulate", "--profile", "velocity", "--out", str(out), "--count", "2500", "--chunk-rows", "1000",
                 "--fraud-rate", "0.05", "--accounts", "300"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 2500 and pq.ParquetFile(out).metadata.num_row_groups == 3
    assert {"label", "pattern", "tx_count_1h"} <= set(table.column_names)
    assert str(table.schema.field("card_present").type) == "bool"


def test_progress_lines_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    clock = iter(range(0, 10_000, 6))  # every reading 6 s later: a progress line after every chunk
    monkeypatch.setattr(cli, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    _simulate(tmp_path, "h.jsonl", 3000, "--chunk-rows", "1000")
    err = capsys.readouterr().err
    assert "simulate: 1,000 of 3,000 rows written" in err and "rows/s" in err and "s left" in err
    assert "wrote 3000 events" in err
    assert main(["simulate", "--out", str(tmp_path / "x.parquet.gz"), "--count", "10"]) == 2
    assert main(["simulate", "--out", str(tmp_path / "x.csv"), "--chunk-rows", "0"]) == 2
