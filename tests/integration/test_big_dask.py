"""Entity enrichment of a big history on a real local Dask cluster (scheduler + worker processes, no mock):
the same features as the local process pool, and ``train --cluster`` makes a working bundle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stream_detector.big.shards import ShardCursor, ShardWriter, run_shards
from stream_detector.entity import EntitySpec
from stream_detector.entity.columns import Columns, entity_value
from stream_detector.events_io import write_csv
from stream_detector.fieldschema import InferenceOptions, infer_schema
from stream_detector.simulate import HANDBOOK_PATTERNS, HandbookSimulator

SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400), distinct_fields=("merchant_category",))


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    # worker processes, one thread each: the tasks run in other interpreters, as on a real cluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as local:
        yield local.scheduler_address


def _features(tmp: Path, events: list[dict], cluster: str | None) -> np.ndarray:
    writer = ShardWriter(SPEC, tmp, 4)
    ids = {k: pa.array([entity_value(e.get(k)) for e in events], pa.string()) for k in SPEC.keys}
    cols = Columns.of(SPEC, events)
    writer.append(np.arange(len(events)), ids, cols.ts, cols.amount,
                  {f: pa.array(v, pa.string()) for f, v in cols.labels.items()}, np.ones(len(events), bool))
    tasks = writer.close()
    results = run_shards(SPEC, tmp, tasks, cluster=cluster, workers=2)
    assert sorted((r.key, r.shard) for r in results) == tasks
    cursor = ShardCursor(SPEC, tmp, tasks)
    try:
        return cursor.take(np.arange(len(events)))
    finally:
        cursor.close()


def test_dask_cluster_enriches_like_the_local_pool(cluster: str, tmp_path: Path) -> None:
    events = HandbookSimulator(seed=9, customers=150, terminals=200).generate(
        5000, now_ms=1_700_000_000_000, span_ms=7 * 86_400_000).events()
    schema = infer_schema(events, InferenceOptions(identifiers=frozenset({"event_id", "account_id", "terminal_id"})))
    typed, _ = schema.schema.convert(events)
    (tmp_path / "dask").mkdir()
    (tmp_path / "pool").mkdir()
    on_dask = _features(tmp_path / "dask", typed, cluster)
    on_pool = _features(tmp_path / "pool", typed, None)
    assert not np.isnan(on_dask).any()
    np.testing.assert_array_equal(on_dask, on_pool)


def test_train_cluster_writes_a_bundle(cluster: str, tmp_path: Path) -> None:
    batch = HandbookSimulator(seed=2, customers=200, terminals=300).generate(
        6000, now_ms=1_700_000_000_000, span_ms=10 * 86_400_000)
    rows = [{**e, "label": "fraud" if p else "legit", "pattern": HANDBOOK_PATTERNS[p]}
            for e, p in zip(batch.events(), batch.pattern.tolist(), strict=True)]
    days = tmp_path / "days"
    for day in range(3):  # a directory of files is one input, read in path order
        (days / f"day={day}").mkdir(parents=True)
        write_csv(days / f"day={day}" / "part.csv", rows[day * 2000:(day + 1) * 2000])
    out = tmp_path / "model"
    (tmp_path / "work").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "stream_detector.cli", "train", "--input", str(days), "--out", str(out),
         "--cluster", cluster, "--work-dir", str(tmp_path / "work"), "--label-column", "label",
         "--normal-label", "legit", "--exclude", "pattern", "--entity-key", "account_id",
         "--entity-key", "terminal_id", "--epochs", "2", "--shards", "3"],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Dask {cluster}" in done.stderr
    assert "read: 6,000 rows" in done.stderr
    assert (out / "model.pt").exists() and (out / "entity.json").exists()
    assert list((tmp_path / "work").iterdir()) == []  # its own directory in --work-dir, removed
