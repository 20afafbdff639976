"""Training on a big history (``python -m benchmarks big-history``; issue 19's figures).

In one run, on one simulated history (``stream-detector simulate --out history.parquet``: raw card
transactions of ``rows / 120`` cards at ``rows / 1000`` terminals over 60 days):

1. **baseline**: today's in-memory ``train`` (every row a dict) on the first ``--baseline-rows``
   rows, and ``train --streamed`` on the same rows — wall time and peak memory of each;
2. ``train --streamed`` on all ``--rows`` rows: wall time, seconds per million rows of each phase
   (from the bundle's ``metrics.streamed``), peak memory;
3. **1 shard vs 4 shards** on the first ``--shard-rows`` rows: the two specs (largest difference of a
   numeric column's center and scale, in units of the 1-shard scale; categories equal?) and the rank
   correlation of the two models' scores on those rows (``score --streamed``);
4. from 2., on paper: nodes and hours for a billion rows.

Every model: keys ``account_id`` and ``terminal_id``, windows 1h/1d/7d/30d, distinct
``merchant_category`` and ``channel``, labels from the simulator's ``label`` column (legit rows
train). Memory is sampled every 0.2 s over the whole process tree (the pool's workers included):
"peak tree RSS" is the largest sum seen, "peak main RSS" the training process alone.
Intermediate files go to ``--data-dir`` (default: a temporary directory; removed at the end).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq

from .results import write_section

ENTITY = ["--entity-key", "account_id", "--entity-key", "terminal_id", "--entity-windows", "1h,1d,7d,30d",
          "--entity-distinct", "merchant_category,channel"]
LABELS = ["--label-column", "label", "--normal-label", "legit", "--exclude", "pattern"]


def say(msg: str) -> None:
    print(f"[big-history] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd``; wall seconds and peak RSS (GiB) of the process and of its whole tree."""
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peak = {"main": 0, "tree": 0}
        stop = threading.Event()

        def sample() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.NoSuchProcess:
                return
            while not stop.is_set():
                try:
                    main = root.memory_info().rss
                    tree = main + sum(c.memory_info().rss for c in root.children(recursive=True))
                except psutil.Error:
                    tree = main = 0
                peak["main"], peak["tree"] = max(peak["main"], main), max(peak["tree"], tree)
                stop.wait(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        stop.set()
        thread.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … exited {code}; see {log}:\n{log.read_text()[-2000:]}")
    return {"seconds": time.monotonic() - started, "main_gib": peak["main"] / 2**30, "tree_gib": peak["tree"] / 2**30}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream_detector.cli", *args]


def head(source: Path, rows: int, out: Path) -> Path:
    """The first ``rows`` rows of a Parquet file as another Parquet file (row groups, bounded memory)."""
    reader = pq.ParquetFile(str(source))
    writer, done = None, 0
    for batch in reader.iter_batches(batch_size=100_000):
        batch = batch.slice(0, min(batch.num_rows, rows - done))
        writer = writer or pq.ParquetWriter(str(out), batch.schema)
        writer.write_batch(batch)
        done += batch.num_rows
        if done >= rows:
            break
    if writer is not None:
        writer.close()
    return out


def train(data: Path, out: Path, logs: Path, streamed: bool, *extra: str) -> dict[str, Any]:
    cmd = cli("train", "--input", str(data), "--out", str(out), *ENTITY, *LABELS, *extra,
              *(["--streamed"] if streamed else []))
    figures = run(cmd, logs / f"{out.name}.log")
    meta = json.loads((out / "metadata.json").read_text())
    return {**figures, "meta": meta}


def spec_difference(a: Path, b: Path) -> tuple[float, float, bool]:
    sa, sb = (json.loads((p / "spec.json").read_text()) for p in (a, b))
    by = {c["name"]: c for c in sb["numeric"]}
    center = max(abs(c["center"] - by[c["name"]]["center"]) / c["scale"] for c in sa["numeric"])
    scale = max(abs(c["scale"] - by[c["name"]]["scale"]) / c["scale"] for c in sa["numeric"])
    return center, scale, sa["categorical"] == sb["categorical"]


def scores(path: Path) -> np.ndarray:
    with path.open() as handle:
        return np.array([float(r["score"]) if r["score"] else np.nan for r in csv.DictReader(handle)])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks big-history", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--baseline-rows", type=int, default=500_000)
    p.add_argument("--shard-rows", type=int, default=1_000_000)
    p.add_argument("--data-dir", help="where the history and the work go (default: a temporary directory)")
    p.add_argument("--write", action="store_true", help="write the big-history section of RESULTS.md")
    p.add_argument("--shards-only", action="store_true",
                   help="only the 1 vs 4 shards comparison, on --data-dir's history.parquet (simulated if absent); "
                        "its own section of RESULTS.md")
    args = p.parse_args(argv)
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="sd-big-"))
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    try:
        return _run(args, root, logs)
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)


def _shards(args: argparse.Namespace, root: Path, logs: Path, history: Path) -> tuple[dict[str, Any], ...]:
    """Train on the first ``--shard-rows`` rows with 1 and 4 shards; score both; compare."""
    shard_in = head(history, args.shard_rows, root / "shards.parquet")
    one = train(shard_in, root / "m-1shard", logs, True, "--shards", "1")
    four = train(shard_in, root / "m-4shards", logs, True, "--shards", "4")
    for name in ("m-1shard", "m-4shards"):
        run(cli("score", "--model", str(root / name), "--input", str(shard_in), "--out", str(root / f"{name}.csv"),
                "--label-column", "label", "--streamed"), logs / f"score-{name}.log")
    from scipy.stats import spearmanr

    a, b = scores(root / "m-1shard.csv"), scores(root / "m-4shards.csv")
    ok = ~np.isnan(a) & ~np.isnan(b)
    center, scale, cats = spec_difference(root / "m-1shard", root / "m-4shards")
    return one, four, {"rho": float(spearmanr(a[ok], b[ok]).statistic), "center": center, "scale": scale,
                       "cats": cats, "equal_scores": bool(np.array_equal(a[ok], b[ok]))}


def _shards_only(args: argparse.Namespace, root: Path, logs: Path) -> int:
    history = root / "history.parquet"
    if not history.exists():
        run(cli("simulate", "--out", str(history), "--count", str(args.rows), "--span-days", "60",
                "--accounts", str(max(1000, args.rows // 120)), "--terminals", str(max(2000, args.rows // 1000))),
            logs / "simulate.log")
    for old in ("m-1shard", "m-4shards"):  # a reused data directory: the previous run's models
        shutil.rmtree(root / old, ignore_errors=True)
    one, four, cmp = _shards(args, root, logs, history)
    body = (f"The first {args.shard_rows:,} rows of the big-history benchmark's history (`--rows {args.rows:,}`), "
            f"`train --streamed` with `--shards 1` and `--shards 4`, defaults otherwise "
            f"({one['meta']['metrics']['epochs_run']} and {four['meta']['metrics']['epochs_run']} epochs), "
            f"each model scoring the same rows (`score --streamed`).\n\n"
            f"| | 1 shard | 4 shards |\n|---|---:|---:|\n"
            f"| wall s | {one['seconds']:.0f} | {four['seconds']:.0f} |\n"
            f"| peak tree RSS GiB | {one['tree_gib']:.2f} | {four['tree_gib']:.2f} |\n\n"
            f"Largest difference of a numeric column's center {cmp['center']:.4g} and scale {cmp['scale']:.4g} "
            f"(units of the 1-shard scale); categories {'equal' if cmp['cats'] else 'DIFFERENT'}; Spearman rank "
            f"correlation of the scores {cmp['rho']:.4f}; scores {'identical' if cmp['equal_scores'] else 'not identical'}.")
    print(body)
    if args.write:
        write_section("big-history-shards", "Big history: 1 shard vs 4 shards (`python -m benchmarks big-history "
                      "--shards-only`)", body)
    return 0


def _run(args: argparse.Namespace, root: Path, logs: Path) -> int:
    if args.shards_only:
        return _shards_only(args, root, logs)
    n = args.rows
    history = root / "history.parquet"
    say(f"simulating {n:,} rows → {history}")
    sim = run(cli("simulate", "--out", str(history), "--count", str(n), "--span-days", "60",
                  "--accounts", str(max(1000, n // 120)), "--terminals", str(max(2000, n // 1000))),
              logs / "simulate.log")
    say(f"simulate: {sim['seconds']:.0f} s, peak {sim['tree_gib']:.2f} GiB")
    base_in = head(history, args.baseline_rows, root / "baseline.parquet")
    say("baseline: in-memory train vs streamed on the same rows")
    mem = train(base_in, root / "m-memory", logs, False, "--epochs", "10")
    streamed_small = train(base_in, root / "m-streamed-small", logs, True, "--epochs", "10")
    say(f"baseline: in-memory {mem['seconds']:.0f} s / {mem['tree_gib']:.2f} GiB; streamed "
        f"{streamed_small['seconds']:.0f} s / {streamed_small['tree_gib']:.2f} GiB")
    say(f"streamed train on all {n:,} rows")
    big = train(history, root / "m-big", logs, True)
    say(f"big: {big['seconds']:.0f} s, peak tree {big['tree_gib']:.2f} GiB")
    one, four, cmp = _shards(args, root, logs, history)
    body = _report(args, sim, mem, streamed_small, big, one, four, cmp["rho"], cmp["center"], cmp["scale"],
                   cmp["cats"])
    print(body)
    if args.write:
        write_section("big-history", "Training on a big history (`python -m benchmarks big-history`)", body)
    return 0


def _phases(meta: dict[str, Any]) -> dict[str, float]:
    s = meta["metrics"]["streamed"]
    return {"read + type": s["read_seconds"], "enrich": s.get("enrich_seconds", 0.0),
            "features": s["features_seconds"], "fit": s["fit_seconds"]}


def _report(args: argparse.Namespace, sim: dict[str, float], mem: dict[str, Any], small: dict[str, Any],
            big: dict[str, Any], one: dict[str, Any], four: dict[str, Any], rho: float, center: float, scale: float,
            cats: bool) -> str:
    n, m = args.rows, args.baseline_rows
    phases = _phases(big["meta"])
    per_m = {k: v / (n / 1e6) for k, v in phases.items()}
    epochs = big["meta"]["metrics"]["epochs_run"]
    lines = [
        f"History: `simulate --out history.parquet --count {n:,} --span-days 60` ({max(1000, n // 120):,} cards, "
        f"{max(2000, n // 1000):,} terminals); model: account + terminal history (1h/1d/7d/30d, distinct "
        "merchant_category, channel), legit rows train. Memory sampled every 0.2 s over the process tree.",
        "",
        "| run | rows | wall s | peak main RSS GiB | peak tree RSS GiB |",
        "|---|---:|---:|---:|---:|",
        f"| simulate --out (Parquet) | {n:,} | {sim['seconds']:.0f} | {sim['main_gib']:.2f} | {sim['tree_gib']:.2f} |",
        f"| baseline: in-memory train, 10 epochs | {m:,} | {mem['seconds']:.0f} | {mem['main_gib']:.2f} | "
        f"{mem['tree_gib']:.2f} |",
        f"| train --streamed, 10 epochs | {m:,} | {small['seconds']:.0f} | {small['main_gib']:.2f} | "
        f"{small['tree_gib']:.2f} |",
        f"| **train --streamed, defaults ({epochs} epochs)** | {n:,} | {big['seconds']:.0f} | {big['main_gib']:.2f} | "
        f"**{big['tree_gib']:.2f}** |",
        "",
        "Seconds per million rows of each phase (the full run): " + ", ".join(
            f"{k} {v:.1f}" for k, v in per_m.items()) + f" (fit: {epochs} epochs).",
        "",
        f"1 shard vs 4 shards on the first {args.shard_rows:,} rows (defaults: "
        f"{one['meta']['metrics']['epochs_run']} and {four['meta']['metrics']['epochs_run']} epochs): largest difference of a "
        f"numeric column's center {center:.4f} and scale {scale:.4f} (in units of the 1-shard scale); categories "
        f"{'equal' if cats else 'DIFFERENT'}; Spearman rank correlation of the scores {rho:.4f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
