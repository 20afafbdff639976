"""Delayed labels on the labelled tables of ../shared/data: the supervised head against the
autoencoder alone (``python -m benchmarks labels-tables``; issue 17's "Measured", second half;
the Handbook-like half is ``benchmarks/labels.py``).

Data (``quality_data``'s loaders, read in place; a folder that is absent is skipped with a line
saying so): the ULB credit-card subsamples combined (Time, V1..V28, Amount; Class 1 = fraud),
NSL-KDD (KDDTrain+_20Percent for training, KDDTest+ as the test file) and KDD Cup '99 10 %
(38 numeric + 3 categorical fields; anomaly = any attack). Each table is first capped as
``benchmarks/quality.py`` caps it (``quality_data.cap``: at most 5,000 normal and 2,500 anomalous
rows, seed 12345; the NSL-KDD test file is never capped). The tables carry no entity keys (no
card, no terminal), so the label *features* of ``benchmarks/labels.py`` (a terminal's known frauds)
do not apply here: only the supervised head does.

Protocol, per seed, consistent with ``quality.py``'s novelty split:

* normals: ``quality_data.split`` (60 % fit + 15 % calib = the training part's normals, 25 % test);
  NSL-KDD: ``split_fixed`` (every normal row of the training file; the test part is KDDTest+);
* anomalies (``quality.py`` puts them all in test): a seeded half goes to the training part as
  labelled frauds, the other half to the test part (NSL-KDD: the training file's anomalies train,
  KDDTest+'s are tested on).

Variants, same seed, same test rows:

1. **autoencoder alone**: ``train()`` with its defaults on the training part's normal rows (its
   own 80/20 split and fence threshold), ``build_bundle``, scored by ``offline.score_events``;
2. **+ supervised head, all training labels**: ``train_head`` on every labelled training row
   (``rows_for_head``: the normals as legit, the training anomalies as fraud), ``HeadConfig``
   defaults (``target_fpr`` 0.01); it ranks by its calibrated probability; its alerts are the
   worker's union decision (reconstruction error above the autoencoder's threshold **or**
   probability above the head's);
3. **+ head, ``--some`` frauds** (default 150; only when the training part has more): the same,
   with the training frauds subsampled (seeded) to that many, every legit row kept;
4. **scarce labels, ``--scarce`` frauds** (default 50, under ``supervised.MIN_FRAUDS`` = 100): the
   head refuses (``train_head`` raises ``TrainingError``) and the product does what
   ``train --supervised`` does (``cli._supervised``): the bundle keeps the autoencoder alone.
   The row is that bundle scored again, so its figures equal row 1's; the run checks that the
   scores are identical and says so.

Metrics on the test part: AUC-ROC, average precision, precision@k with k = the number of test
anomalies (R-precision) and with k = 100 (a fixed alert budget), and the precision, recall and
count of the alerts at the thresholds. Results: the ``labels-tables`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from stream_detector.errors import TrainingError
from stream_detector.model.bundle import build_bundle
from stream_detector.model.supervised import MIN_FRAUDS, HeadConfig, rows_for_head, train_head
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import OfflineScores, score_events

from . import quality_data as qd

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("creditcard-ULB-sub", "NSL-KDD", "KDD99-10%")
FIXED_K = 100
SCARCE, SOME = 50, 150
AE, HEAD_ALL, HEAD_SOME, FALLBACK = "autoencoder alone", "+ head, all labels", "+ head, some labels", "scarce labels"


def say(msg: str) -> None:
    print(f"[labels-tables] {msg}", flush=True)


@dataclass(frozen=True)
class LabelSplit:
    """Row positions (int64, ascending) into ``table`` for the training part's ``normal`` and
    ``fraud`` rows, and the ``test`` table (the protocol's test rows, or the fixed test file)."""

    normal: np.ndarray
    fraud: np.ndarray
    test: qd.Table


def label_split(table: qd.Table, seed: int, train_share: float = 0.5) -> LabelSplit:
    """``quality_data.split`` for the normals (fit + calib train, the rest tests); the anomalies
    cut ``train_share`` / rest with a seeded permutation. With a fixed test file (NSL-KDD):
    every training-file row trains, the test file tests."""
    if table.test is not None:
        parts = qd.split_fixed(table.y, seed)
        test = table.test.take(np.arange(len(table.test)))
        return LabelSplit(np.sort(np.concatenate([parts.fit, parts.calib])), np.flatnonzero(table.y), test)
    parts = qd.split(table.y, seed)
    anomalies = np.random.default_rng([seed, 17]).permutation(np.flatnonzero(table.y))
    cut = round(train_share * anomalies.size)
    test_normal = parts.test[~table.y[parts.test]]
    test = table.take(np.sort(np.concatenate([test_normal, anomalies[cut:]])))
    return LabelSplit(np.sort(np.concatenate([parts.fit, parts.calib])), np.sort(anomalies[:cut]), test)


def precision_at_k(scores: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of anomalies among the ``k`` highest ``scores`` (ties broken by order)."""
    top = np.argsort(-scores, kind="stable")[:k]
    return float(y[top].mean()) if top.size else float("nan")


def measure(rank: np.ndarray, flagged: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``rank`` float64 (n,) (higher = more suspicious; NaN = rejected, ranked first as quality.py
    does), ``flagged`` bool (n,) the alerts, ``y`` bool (n,) the truth."""
    rank = np.nan_to_num(rank, nan=np.inf, posinf=np.inf)
    alerts, hits = int(flagged.sum()), int((flagged & y).sum())
    return {"auc_roc": float(roc_auc_score(y, rank)), "average_precision": float(average_precision_score(y, rank)),
            "precision_at_anomalies": precision_at_k(rank, y, int(y.sum())),
            "precision_at_fixed": precision_at_k(rank, y, FIXED_K),
            "alert_precision": hits / alerts if alerts else float("nan"),
            "alert_recall": hits / max(1, int(y.sum())), "alerts": float(alerts)}


def run_split(table: qd.Table, seed: int, scarce: int = SCARCE, some: int = SOME, epochs: int | None = None,
              progress: Callable[[str], None] = say) -> list[dict[str, Any]]:
    """One table, one seed: the variants' rows (``variant``, ``frauds`` = labelled training frauds
    the head was given, the metrics of ``measure``, ``head`` = whether the bundle has a head,
    ``note``). ``epochs``: the autoencoder's (None = ``train()``'s default, as quality.py)."""
    parts = label_split(table, seed)
    normal_events = table.events(parts.normal, prefix="n")
    fraud_events = table.events(parts.fraud, prefix="f")
    test_events = parts.test.events(prefix="t")
    y = parts.test.y
    result = train(normal_events, TrainConfig(epochs=epochs, seed=seed))
    ae_bundle = build_bundle(result)
    ae = score_events(ae_bundle, test_events)
    rows = [{"variant": AE, "frauds": 0, "head": False, "note": "",
             **measure(ae.scores, ae.flagged(ae_bundle.threshold), y)}]
    x, labels = rows_for_head(result.spec, result.schema, normal_events + fraud_events,
                              [False] * len(normal_events) + [True] * len(fraud_events))
    fraud_at = np.flatnonzero(labels)
    rng = np.random.default_rng([seed, 100])
    wanted: list[tuple[str, int]] = [(HEAD_ALL, fraud_at.size)]
    if some < fraud_at.size:
        wanted.append((HEAD_SOME, some))
    wanted.append((FALLBACK, min(scarce, fraud_at.size)))
    for name, n in wanted:
        keep = np.sort(np.concatenate([np.flatnonzero(~labels), rng.choice(fraud_at, n, replace=False)]))
        t0 = time.perf_counter()
        try:
            module, entry = train_head(result.head, x[keep], labels[keep], HeadConfig(seed=seed), progress)
        except TrainingError as exc:  # the product's rule (cli._supervised): no head, the autoencoder alone
            progress(f"{table.name} seed {seed}, {n} frauds: TrainingError: {exc}")
            fallback = score_events(build_bundle(result), test_events)
            same = bool(np.array_equal(fallback.scores, ae.scores, equal_nan=True))
            rows.append({"variant": name, "frauds": n, "head": False, "same_as_ae": same,
                         "note": f"TrainingError: {exc}",
                         **measure(fallback.scores, fallback.flagged(ae_bundle.threshold), y)})
            continue
        bundle = build_bundle(replace(result, head=module, calibration={**result.calibration, "supervised": entry}))
        scored: OfflineScores = score_events(bundle, test_events)
        assert scored.probability is not None
        rows.append({"variant": name, "frauds": n, "head": True, "note": "",
                     "head_seconds": time.perf_counter() - t0,
                     "ae_scores_unchanged": bool(np.allclose(scored.scores, ae.scores, rtol=1e-5, equal_nan=True)),
                     **measure(scored.probability, scored.flagged(bundle.threshold, bundle.head_threshold), y)})
    return rows


@dataclass
class TableResult:
    name: str
    note: str
    train_normal: int
    train_fraud: int
    test_rows: int
    test_anomalies: int
    seeds: list[int]
    runs: list[list[dict[str, Any]]]  # per seed, the rows of ``run_split``
    seconds: float

    def variants(self) -> list[str]:
        return [r["variant"] for r in self.runs[0]]

    def cell(self, variant: str, key: str) -> list[Any]:
        return [r[key] for run in self.runs for r in run if r["variant"] == variant]


def run_table(source: qd.Source, seeds: Sequence[int], scarce: int, some: int) -> TableResult:
    started = time.perf_counter()
    table = qd.cap(source.loader(source.path))
    parts = label_split(table, seeds[0])
    runs = []
    for seed in seeds:
        runs.append(run_split(table, seed, scarce, some))
        ae, head = runs[-1][0], runs[-1][1]
        say(f"{table.name} seed {seed}: AE AUC {ae['auc_roc']:.3f} AP {ae['average_precision']:.3f} | "
            f"head ({head['frauds']} frauds) AUC {head['auc_roc']:.3f} AP {head['average_precision']:.3f}")
    return TableResult(table.name, table.note, parts.normal.size, parts.fraud.size, len(parts.test),
                       int(parts.test.y.sum()), list(seeds), runs, time.perf_counter() - started)


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")


def markdown(results: list[TableResult], seeds: Sequence[int], scarce: int, some: int, elapsed: float,
             missing: list[str]) -> str:
    lines = [
        f"`python -m benchmarks labels-tables --write`: {len(results)} labelled tables, seeds {list(seeds)}, "
        f"{elapsed / 60:.1f} min wall clock on the 2-core machine (torch on one thread). Figures are means over "
        "the seeds (± the standard deviation across seeds for AUC-ROC and average precision).",
        "",
        "**Protocol.** Each table is capped as in the quality section (at most 5,000 normal and 2,500 anomalous "
        "rows, seed 12345). Normals are split exactly as there (60 % fit + 15 % calib = the training part, 25 % "
        "test; NSL-KDD: the training file's normals train, KDDTest+ tests, uncapped); the anomalies, which the "
        "quality section keeps for test only, are cut in two per seed: half are the training part's labelled "
        "frauds, half are tested on (NSL-KDD: the training file's anomalies vs KDDTest+'s). The autoencoder "
        "is `train()` with its defaults on the training normals (the quality section's `ours`), its fence "
        "threshold set on its own 20 % validation rows and shipped in the bundle (the quality section instead recalibrates the fence on its separate calib rows, so alert figures differ from its table; AUC does not depend on it). The head is `train_head` (`HeadConfig` defaults: "
        "MLP 64-32 on the feature row and the autoencoder's per-feature errors, Platt-calibrated, threshold at "
        "a 1 % false-positive rate on its held-back legit rows) on the labelled training rows: the normals as "
        "legit plus the frauds given (a seeded subsample where fewer); frauds not given are left out, not "
        "relabelled. It ranks by its probability; its alerts are the worker's union decision (error above the "
        "autoencoder's threshold **or** probability above the head's). Scored through `offline.score_events`, "
        "the worker's path. precision@k: k = the test anomalies (R-precision) and k = 100.",
        "",
        "**No label features here.** These tables have no entity keys (no card, no terminal, no account), "
        "so the label features of the Handbook-like section (a terminal's or card's known frauds) cannot be "
        "computed: the variants are the autoencoder alone and the autoencoder + supervised head. Nor is there a "
        "delay: every training label is known when the head is trained (the tables carry no label times).",
        "",
        f"**The fallback.** With fewer than {MIN_FRAUDS} labelled frauds (`supervised.MIN_FRAUDS`) "
        "`train_head` raises `TrainingError` and `train --supervised` keeps the autoencoder alone (it says so "
        f"on stderr). The *scarce labels* rows give the head {scarce} frauds: it refuses, the bundle has no head "
        "and is scored again; its figures are the autoencoder's by construction, and the run checks that "
        "every test score is identical.",
        "",
        "| table | variant | training frauds given | AUC-ROC | average precision | precision@anomalies | "
        f"precision@{FIXED_K} | alert precision | alert recall | alerts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for v in r.variants():
            frauds = int(np.mean(r.cell(v, "frauds")))
            label = v
            if v == HEAD_SOME:
                label = f"+ head, {frauds} frauds"
            elif v == HEAD_ALL:
                label = f"+ head, all {frauds} frauds"
            elif v == FALLBACK:
                same = all(r.cell(v, "same_as_ae")) if not any(r.cell(v, "head")) else False
                label = (f"scarce: {frauds} frauds → no head (fallback), " +
                         ("scores identical to the autoencoder's" if same else "HEAD TRAINED or scores differ"))
            lines.append(
                f"| {r.name} | {label} | {frauds if v != AE else '0 (normals only)'} | "
                f"{_mean(r.cell(v, 'auc_roc'))} | {_mean(r.cell(v, 'average_precision'))} | "
                f"{np.mean(r.cell(v, 'precision_at_anomalies')):.3f} | {np.mean(r.cell(v, 'precision_at_fixed')):.3f} | "
                f"{np.nanmean(r.cell(v, 'alert_precision')):.3f} | {np.mean(r.cell(v, 'alert_recall')):.3f} | "
                f"{np.mean(r.cell(v, 'alerts')):,.0f} |")
    lines += ["", "Per table (first seed's split): " + "; ".join(
        f"{r.name}: {r.train_normal:,} training normals, {r.train_fraud:,} training frauds, {r.test_rows:,} test rows "
        f"of which {r.test_anomalies:,} anomalies, {r.seconds:.0f} s" + (f" ({r.note})" if r.note else "")
        for r in results) + "."]
    if missing:
        lines += ["", "Skipped: " + "; ".join(missing) + "."]
    lines += ["", "**Reading it.** " + reading(results, scarce)]
    return "\n".join(lines)


def reading(results: list[TableResult], scarce: int) -> str:
    """The summary sentences, computed from the figures (so a rerun cannot contradict them)."""
    parts = []
    for r in results:
        ae_auc, ae_ap = np.mean(r.cell(AE, "auc_roc")), np.mean(r.cell(AE, "average_precision"))
        h_auc, h_ap = np.mean(r.cell(HEAD_ALL, "auc_roc")), np.mean(r.cell(HEAD_ALL, "average_precision"))
        ae_rec, h_rec = np.mean(r.cell(AE, "alert_recall")), np.mean(r.cell(HEAD_ALL, "alert_recall"))
        ae_pre, h_pre = np.nanmean(r.cell(AE, "alert_precision")), np.nanmean(r.cell(HEAD_ALL, "alert_precision"))
        text = (f"*{r.name}*: ranking by the head's probability (all {int(np.mean(r.cell(HEAD_ALL, 'frauds')))} "
                f"training frauds) {'beats' if h_auc > ae_auc else 'is worse than'} the autoencoder on AUC "
                f"({ae_auc:.3f} → {h_auc:.3f}) and {'beats' if h_ap > ae_ap else 'is worse than'} it on average "
                f"precision ({ae_ap:.3f} → {h_ap:.3f})")
        if HEAD_SOME in r.variants():
            text += (f"; with {int(np.mean(r.cell(HEAD_SOME, 'frauds')))} frauds AUC "
                     f"{np.mean(r.cell(HEAD_SOME, 'auc_roc')):.3f}, AP {np.mean(r.cell(HEAD_SOME, 'average_precision')):.3f}")
        if r.name == "NSL-KDD" and h_auc < ae_auc:
            text += (". KDDTest+ holds attack types that the training file lacks (38 vs 22): a head trained on the "
                     "known attacks ranks them low, the label-free autoencoder does not, so on such data rank by "
                     "the autoencoder's score and let the head add alerts")
        spread = r.cell(AE, "alert_recall")
        text += (f". The union decision keeps every autoencoder alert, so alert recall can only rise "
                 f"({ae_rec:.3f} → {h_rec:.3f}); alert precision {ae_pre:.3f} → {h_pre:.3f}. The autoencoder's "
                 f"own alert recall at its shipped threshold ranges {min(spread):.3f}-{max(spread):.3f} over the "
                 "seeds")
        parts.append(text + ".")
    worse = [r.name for r in results if any(np.mean(r.cell(v, "auc_roc")) < np.mean(r.cell(AE, "auc_roc"))
                                            for v in (HEAD_ALL, HEAD_SOME) if v in r.variants())]
    same = all(all(r.cell(FALLBACK, "same_as_ae")) and not any(r.cell(FALLBACK, "head")) for r in results)
    kept = all(all(r.cell(v, "ae_scores_unchanged")) for r in results for v in (HEAD_ALL, HEAD_SOME)
               if v in r.variants())
    return (" ".join(parts) + " " +
            (f"With {scarce} labelled frauds (under {MIN_FRAUDS}) the head is refused on every table and seed and "
             "the product falls back to the autoencoder alone, so scarce labels cost nothing against the "
             "autoencoder: the figures are equal, not merely close (every test score identical). Above "
             f"{MIN_FRAUDS} frauds the head is trained and nothing guarantees that its ranking beats the "
             "autoencoder's" + (f" (it does not on {', '.join(worse)})." if worse else ".") if same else
             "WARNING: a scarce-labels run did not fall back to the autoencoder alone.") +
            (" In every bundle with a head the autoencoder's own scores are unchanged (within float32 precision)."
             if kept else " WARNING: a head changed the autoencoder's scores."))


def main(argv: Sequence[str]) -> int:
    default_dir = os.environ.get("SD_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    p = argparse.ArgumentParser(prog="python -m benchmarks labels-tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(default_dir),
                   help="folder with the datasets (default: ../shared/data from the repo root, or $SD_DATA_DIR)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--scarce", type=int, default=SCARCE,
                   help=f"frauds given in the scarce-labels variant (default {SCARCE}; under {MIN_FRAUDS}: fallback)")
    p.add_argument("--some", type=int, default=SOME, help=f"frauds given in the middle variant (default {SOME})")
    p.add_argument("--write", action="store_true", help="also write the section of benchmarks/RESULTS.md")
    args = p.parse_args(list(argv))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as quality.py: one thread on the small shared machine, and repeatable
    started = time.perf_counter()
    try:
        sources, missing = qd.discover(args.data_dir, TABLES)
        sources = [s for s in sources if s.name in TABLES]
        missing = [m for m in missing if m.split(":")[0] in TABLES]
        for line in missing:
            say(f"skip: {line}")
        if not sources:
            print(f"no labelled table found under {args.data_dir}", file=sys.stderr)
            return 1
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        results = [run_table(s, seeds, args.scarce, args.some) for s in sources]
    finally:
        torch.set_num_threads(threads)
    body = markdown(results, seeds, args.scarce, args.some, time.perf_counter() - started, missing)
    print(body)
    if args.write:
        from .results import write_section

        path = write_section("labels-tables", "Delayed labels: labelled tables (supervised head vs autoencoder)",
                             body)
        print(f"wrote {path}")
    return 0
