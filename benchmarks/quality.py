"""Detection quality on real data, side by side with the peers: ``python -m benchmarks quality``.

For each dataset under ``--data-dir`` (ECG5000, NSL-KDD, KDD Cup '99 10 %, the ULB credit-card
subsamples, every ADBench/ODDS ``.npz``): cap the size (``quality_data.cap``), split in the
novelty setting (fit/calib on normal rows only, test = the other normals + every anomaly), run
every detector of ``quality_detectors`` with each seed, and report AUC-ROC, AUC-PR, precision /
recall / F1 / accuracy at the calibrated threshold and recall at a 1 % alert budget. A full run
rewrites the ``quality`` section of ``benchmarks/RESULTS.md`` and the plots in
``benchmarks/plots/``; ``--quick`` (a few datasets, one seed, smaller caps) only prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import quality_data as qd
from . import quality_detectors as qdet

ROOT = Path(__file__).resolve().parent.parent
PLOTS = Path(__file__).resolve().parent / "plots"
ALERT_BUDGET = 0.01

PLOTTED = ("ECG5000", "NSL-KDD", "KDD99-10%", "creditcard-ULB-sub")
QUICK_SETS = ("ECG5000", "creditcard", "NSL-KDD", "thyroid", "cardio", "Pima", "WBC", "vowels", "satimage")


def recall_at_budget(scores: np.ndarray, is_anomaly: np.ndarray, budget: float = ALERT_BUDGET) -> float:
    """Recall when the ``budget`` fraction of test events with the highest scores is flagged
    (at least one event). Ties at the cut are broken by order, so exactly k events are flagged."""
    y = np.asarray(is_anomaly, dtype=bool)
    if not y.any():
        return float("nan")
    k = max(1, int(np.ceil(budget * y.size)))
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(y[top].sum() / y.sum())


def metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    from stream_detector.report import evaluate

    out = {k: float(v) for k, v in evaluate(scores, y, threshold).items() if isinstance(v, (int, float))}
    out["recall_at_budget"] = recall_at_budget(scores, y)
    normal = ~np.asarray(y, dtype=bool)
    out["fpr"] = float((scores[normal] > threshold).mean()) if normal.any() else float("nan")
    return out


def alternative_thresholds(calib: np.ndarray, scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 at other label-free rules on the same calib scores: the seeds'
    mean + 1·std, the 95 % quantile (a 5 % target false-positive rate) and the 99 % quantile
    (a 1 % alert budget, the worker's `--threshold-method quantile` default)."""
    calib = calib[np.isfinite(calib)]
    rules = {"meanstd": float(calib.mean() + calib.std()), "q95": float(np.quantile(calib, 0.95)),
             "q99": float(np.quantile(calib, 0.99))}
    out: dict[str, float] = {}
    for name, threshold in rules.items():
        pred = scores > threshold
        out[f"accuracy@{name}"] = float((pred == y).mean())
        tp = float((pred & y).sum())
        out[f"f1@{name}"] = 2 * tp / max(1.0, float(pred.sum() + y.sum()))
        out[f"fpr@{name}"] = float((pred & ~y).sum() / max(1, int((~y).sum())))
    return out


@dataclass
class Cell:
    """One dataset × detector: per-seed metrics and the seed-0 scores kept for plots."""

    runs: list[dict[str, float]] = field(default_factory=list)
    example: tuple[np.ndarray, np.ndarray, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        return float(np.mean([r[key] for r in self.runs]))

    def std(self, key: str) -> float:
        return float(np.std([r[key] for r in self.runs]))


@dataclass
class DatasetResult:
    name: str
    group: str
    rows: int
    width: int
    anomaly_ratio: float
    test_rows: int
    seeds: list[int]
    note: str
    cells: dict[str, Cell]


def run_dataset(source: qd.Source, detectors: dict[str, Any], seeds: Sequence[int], quick: bool,
                say: Any = print) -> DatasetResult:
    table = source.loader(source.path)
    caps = (3_000, 1_000) if quick else (qd.MAX_NORMAL, qd.MAX_ANOMALY)
    table = qd.cap(table, *caps)
    use = list(seeds) if len(table) <= qd.MULTI_SEED_MAX_ROWS else list(seeds[:1])
    cells = {name: Cell() for name in detectors}
    test_rows = 0
    for seed in use:
        parts = qd.split_fixed(table.y, seed) if table.test is not None else qd.split(table.y, seed)
        fit, calib, test = qdet.tables_for(table, parts)
        assert not fit.y.any() and not calib.y.any(), "an anomaly reached the training rows"
        test_rows = len(test)
        for name, make in detectors.items():
            out = make(seed)(fit, calib, test)
            run = metrics(out.test_scores, test.y, out.threshold)
            run.update(fit_seconds=out.fit_seconds, score_seconds=out.score_seconds)
            run.update(alternative_thresholds(out.calib_scores, out.test_scores, test.y))
            cells[name].runs.append(run)
            if cells[name].example is None:
                cells[name].example = (out.test_scores, test.y, out.threshold)
                cells[name].info = out.info
    full_y = table.y if table.test is None else np.concatenate([table.y, table.test.y])
    result = DatasetResult(source.name, source.group, int(full_y.size), table.x.shape[1] + (
        0 if table.cats is None else table.cats.shape[1]), float(full_y.mean()), test_rows, use, table.note, cells)
    say(progress_line(result))
    return result


def progress_line(r: DatasetResult) -> str:
    parts = [f"{r.name:<22} n={r.rows:>7,} d={r.width:>4} anomalies={r.anomaly_ratio:6.1%} seeds={len(r.seeds)}"]
    for name, cell in r.cells.items():
        parts.append(f"{name} AUC {cell.mean('auc_roc'):.3f} ({cell.mean('fit_seconds'):.1f}s)")
    return " | ".join(parts)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    default_dir = os.environ.get("SD_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    p = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(default_dir),
                   help="folder with the datasets (default: ../shared/data from the repo root, or $SD_DATA_DIR)")
    p.add_argument("--datasets", default="",
                   help="comma-separated, case-insensitive name filters (e.g. 'ECG,thyroid' or 'adbench')")
    p.add_argument("--seeds", default="0,1,2",
                   help=f"comma-separated seeds (default 0,1,2; tables over {qd.MULTI_SEED_MAX_ROWS:,} rows "
                        "after the cap use the first seed only)")
    p.add_argument("--detectors", default="", help="comma-separated subset of: ours, seed-AE, IForest, HST, PyOD-AE")
    p.add_argument("--quick", action="store_true",
                   help="a few datasets, the first seed, caps 3,000/1,000 rows; prints only (about 1-2 minutes)")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md or the plots")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    # One intra-op thread: on a small shared machine, two threads per process oversubscribe the
    # cores and made a training step ~50x slower in measurement; one thread is also repeatable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args, started)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, started: float) -> int:
    only = [s.strip() for s in args.datasets.split(",") if s.strip()]
    if args.quick and not only:
        only = list(QUICK_SETS)
    sources, missing = qd.discover(args.data_dir, only)
    for line in missing + qdet.missing():
        print(f"skip: {line}", flush=True)
    if not sources:
        print(f"no dataset found under {args.data_dir} (filter {only or 'none'})", file=sys.stderr)
        return 1
    detectors = qdet.available()
    if args.detectors:
        wanted = {d.strip() for d in args.detectors.split(",")}
        detectors = {k: v for k, v in detectors.items() if k in wanted}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.quick:
        seeds = seeds[:1]
    print(f"{len(sources)} datasets × {len(detectors)} detectors ({', '.join(detectors)}), seeds {seeds}",
          flush=True)
    results = [run_dataset(s, detectors, seeds, args.quick, lambda m: print(m, flush=True)) for s in sources]
    elapsed = time.perf_counter() - started
    from .quality_report import render, summary_lines, write_plots

    for line in summary_lines(results):
        print(line)
    print(f"total {elapsed:.0f} s")
    if not (args.quick or args.no_write):
        from .results import write_section

        plots = write_plots(results, PLOTS, PLOTTED)
        path = write_section("quality", "Detection quality", render(results, seeds, elapsed, plots,
                                                                    missing + qdet.missing()))
        print(f"wrote {path} and {len(plots)} plots under {PLOTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
