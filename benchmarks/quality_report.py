"""Detection-quality benchmark, report side: the RESULTS.md section and the PNG plots."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import quality_data as qd
from . import quality_detectors as qdet

ECG_TARGETS = {"accuracy": 0.97, "auc_roc": 0.98}
LOSS_MARGIN = 0.02  # a "loss": the best peer's mean AUC-ROC is above ours by more than this

NOTES = """\
**Why we lose where we lose.** The autoencoder scores a row by how badly it reconstructs it, so it
finds rows that break the correlations of normal rows. It loses to the isolation forest mostly on
low-dimensional tables (d ≤ 21: annthyroid, thyroid, cardio, Cardiotocography, mammography, breastw,
WBC, Pima) whose anomalies are *extreme values of single features*: a few axis-aligned cuts isolate
them, while a small autoencoder reconstructs a 6-feature row almost linearly, extremes included.
The second cause is the feature scaling: robust scaling divides by the IQR, so a feature that is
nearly constant with a tail (cardio's 3rd column: IQR-scaled mean square 122 against ~1 for the
others) dominates the training loss and early stopping fires after ~10 epochs. Scaling by the
standard deviation instead (or weighting the loss by 1/variance) fixes exactly those tables in
exploratory runs (seed 0: annthyroid 0.75 → 0.88-0.90, smtp 0.77 → 0.91, mammography 0.83 → 0.85-0.87,
WBC 0.88 → 0.94) but breaks others as badly (cover 0.89 → 0.62-0.64, Wilt 0.88 → 0.55, glass 0.85 →
0.71-0.72), and the ADBench average did not improve (0.830 → 0.827 on the 21 tables run), so robust
scaling stays the default. Tiny tables (≤ 400 rows: 60 % of the normals is 100-200 rows) are noisy
for every detector; the ± column shows the seed spread.

**The threshold rule, and the ECG5000 accuracy target.** Every detector's threshold is the
`train` command's default rule, a robust outlier fence on the calib scores: `exp(median + 3 ·
1.4826 · MAD)` of their logarithm ("more than three robust standard deviations above the typical
error"). It replaced the 99 % quantile (a fixed 1 % alert budget) as the default because of what this
benchmark showed: ECG5000's normal class holds a 2-4 % tail of beats that reconstruct as badly as
the anomalies (KDD99 has a similar tail), so a quantile or mean + k·std rule is dragged up into the
anomalies' range (ECG5000 accuracy 0.71 at the 99 % quantile, recall ~0.6; KDD99 0.52), while the
median and MAD ignore the tail. The fence's share of normal rows flagged follows the data: see the
FPR column and the summary under Targets. Where the normal errors are light-tailed, the fence sits
above nearly all of them and flags fewer than 1 % (recall drops on breastw, glass, mammography,
vowels, whose anomalies are close to the normal range). Fraud streams have heavy-tailed normal errors
(the simulated transactions: ~6 % of normal events beyond the fence), so the worker docs, the demo
and the retrainer set an explicit alert budget (`--threshold-method quantile --target-fpr`, or
`--max-alert-rate` on top of the fence). The same rule applies to every dataset; none is tuned.

**Peers.** River's HalfSpaceTrees needs one full window (250 rows by default) before it scores
anything: on tables whose fit split is smaller it returns 0 for every row (AUC 0.5). PyOD's
AutoEncoder (standardised inputs, batch norm, dropout 0.2, 10 epochs) is the strongest peer on the
low-dimensional tables, consistent with the scaling analysis above. HST and IForest are orders of
magnitude faster to fit.
"""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def averages(results: Sequence[Any], group: str, key: str = "auc_roc") -> dict[str, float]:
    rows = [r for r in results if r.group == group]
    names = list(rows[0].cells) if rows else []
    return {n: float(np.mean([r.cells[n].mean(key) for r in rows])) for n in names}


def losses(results: Sequence[Any], ours: str = "ours") -> list[tuple[Any, str, float]]:
    out = []
    for r in results:
        if ours not in r.cells:
            continue
        peers = {n: c.mean("auc_roc") for n, c in r.cells.items() if n != ours}
        if not peers:
            continue
        best = max(peers, key=lambda n: peers[n])
        if peers[best] > r.cells[ours].mean("auc_roc") + LOSS_MARGIN:
            out.append((r, best, peers[best]))
    return out


def summary_lines(results: Sequence[Any]) -> list[str]:
    lines = []
    for group in ("headline", "adbench"):
        avg = averages(results, group)
        if avg:
            lines.append(f"average AUC-ROC over {group} tables: " +
                         ", ".join(f"{n} {v:.3f}" for n, v in avg.items()))
    ecg = next((r for r in results if r.name == "ECG5000"), None)
    if ecg and "ours" in ecg.cells:
        c = ecg.cells["ours"]
        lines.append(f"ECG5000 ours: accuracy {c.mean('accuracy'):.3f} (target ≥ {ECG_TARGETS['accuracy']}), "
                     f"AUC-ROC {c.mean('auc_roc'):.3f} (target ≥ {ECG_TARGETS['auc_roc']})")
    return lines


def _detail_table(r: Any) -> list[str]:
    head = ("| detector | AUC-ROC | AUC-PR | precision | recall | F1 | accuracy | FPR | recall@1% "
            "| fit s |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in r.cells.items():
        auc = f"{c.mean('auc_roc'):.3f}" + (f" ± {c.std('auc_roc'):.3f}" if len(c.runs) > 1 else "")
        lines.append(f"| {name} | {auc} | {c.mean('auc_pr'):.3f} | {c.mean('precision'):.3f} | "
                     f"{c.mean('recall'):.3f} | {c.mean('f1'):.3f} | {c.mean('accuracy'):.3f} | "
                     f"{_fmt(c.mean('fpr'))} | {_fmt(c.mean('recall_at_budget'))} | "
                     f"{c.mean('fit_seconds'):.1f} |")
    return lines


def _matrix(results: Sequence[Any], key: str, title: str) -> list[str]:
    names = list(results[0].cells)
    lines = [f"**{title}**", "", "| table | rows | d | anomalies | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for r in results:
        vals = [r.cells[n].mean(key) for n in names]
        best = max(vals)
        cells = [(f"**{v:.3f}**" if v == best else f"{v:.3f}") for v in vals]
        note = " †" if r.note else ""
        lines.append(f"| {r.name}{note} | {r.rows:,} | {r.width} | {r.anomaly_ratio:.1%} | " + " | ".join(cells) + " |")
    avg = [float(np.mean([r.cells[n].mean(key) for r in results])) for n in names]
    lines.append("| **average** | | | | " + " | ".join(f"**{v:.3f}**" if v == max(avg) else f"{v:.3f}"
                                                   for v in avg) + " |")
    return lines


def render(results: Sequence[Any], seeds: Sequence[int], elapsed: float, plots: Sequence[Path],
           skipped: Sequence[str]) -> str:
    protocol = (
        "**Protocol (novelty setting).** Per seed, the normal rows are shuffled and cut 60 % *fit* / "
        "15 % *calib* / 25 % *test*; test = those normals + every anomaly; anomalies never reach fit or "
        "calib. NSL-KDD: fit/calib = the normal rows of KDDTrain+_20Percent (80/20), test = KDDTest+. "
        f"Tables are first subsampled (seed {qd.CAP_SEED}) to at most {qd.MAX_NORMAL:,} normal and "
        f"{qd.MAX_ANOMALY:,} anomalous rows († below; this moves AUC-PR, not AUC-ROC). Thresholds are "
        "set on the calib rows only. *recall@1%* = recall when the 1 % highest-scored test events are "
        "flagged (it cannot exceed 1 % × test rows / anomalies)."
    )
    run = (
        f"`python -m benchmarks quality`: {len(results)} tables, seeds {list(seeds)} (tables over "
        f"{qd.MULTI_SEED_MAX_ROWS:,} rows after the cap: first seed only), {elapsed / 60:.1f} min wall clock, "
        f"{time.process_time() / 60:.1f} min CPU in the process (5-minute load average "
        f"{os.getloadavg()[1]:.1f} on the 2-core machine at the end: wall times and train seconds grow with "
        "it; the metrics do not). Metrics are means over seeds."
    )
    out: list[str] = [run, "", protocol, "", "**Detectors.**", ""] + _detectors_markdown()
    if skipped:
        out += ["Skipped: " + "; ".join(skipped) + ".", ""]
    out += _targets(results)
    for r in [r for r in results if r.group == "headline"]:
        out += [f"### {r.name}", "", f"{r.rows:,} rows, {r.width} fields, {r.anomaly_ratio:.1%} anomalous; "
                f"{r.test_rows:,} test rows; seeds {r.seeds}." + (f" {r.note}." if r.note else ""), ""]
        out += _detail_table(r) + [""]
    adb = [r for r in results if r.group == "adbench"]
    if adb:
        out += ["### ADBench / ODDS classical tables", ""]
        out += _matrix(adb, "auc_roc", "AUC-ROC") + [""]
        out += _matrix(adb, "auc_pr", "AUC-PR (average precision)") + [""]
        out += _matrix(adb, "f1", "F1 at the calibrated threshold") + [""]
        out += _matrix(adb, "recall_at_budget", "Recall at a 1 % alert budget") + [""]
        capped = [f"{r.name}: {r.note}" for r in adb if r.note]
        if capped:
            out += ["† " + "; ".join(capped) + ".", ""]
        secs = [r.cells["ours"].mean("fit_seconds") for r in adb if "ours" in r.cells]
        if secs:
            out += [(f"Our train seconds per table (fit + export, mean over seeds): median "
                     f"{np.median(secs):.1f} s, max {max(secs):.1f} s, total {sum(secs):.0f} s."), ""]
    out += _losses(results) + ["", NOTES]
    if plots:
        out += ["Plots (ours, first seed): " + ", ".join(f"[{p.name}](plots/{p.name})" for p in plots), ""]
    return "\n".join(out)


def _detectors_markdown() -> list[str]:
    """The detectors' docstring (everything after its first paragraph) as markdown."""
    out: list[str] = []
    for para in (qdet.__doc__ or "").replace("``", "`").split("\n\n")[1:]:
        if para.lstrip().startswith("* "):
            out += ["- " + " ".join(item.split()) for item in para.strip()[2:].split("\n* ")]
        else:
            out.append(" ".join(para.split()))
        out.append("")
    return out


def _targets(results: Sequence[Any]) -> list[str]:
    out = ["### Targets", ""]
    ecg = next((r for r in results if r.name == "ECG5000"), None)
    if ecg and "ours" in ecg.cells:
        c = ecg.cells["ours"]
        for key, goal in ECG_TARGETS.items():
            ok = "met" if c.mean(key) >= goal else "**not met**"
            out.append(f"- ECG5000 {key} ≥ {goal}: {c.mean(key):.3f} — {ok}")
        out.append(
            "- ECG5000 accuracy of ours at other label-free rules on the same calib scores: "
            f"99 % quantile (a 1 % alert budget) {c.mean('accuracy@q99'):.3f}, "
            f"mean + 1·std (the seeds' rule) {c.mean('accuracy@meanstd'):.3f}, 95 % quantile "
            f"{c.mean('accuracy@q95'):.3f}; the seed recipe itself (mean + 1·std): "
            + (f"{ecg.cells['seed-AE'].mean('accuracy'):.3f}" if "seed-AE" in ecg.cells else "not run")
        )
    fprs = [r.cells["ours"].mean("fpr") for r in results if "ours" in r.cells]
    q99 = [r.cells["ours"].mean("fpr@q99") for r in results if "ours" in r.cells]
    if fprs:
        out.append(f"- share of normal test rows flagged by ours over the {len(fprs)} datasets (FPR): default fence "
                   f"median {np.median(fprs):.3f}, mean {np.mean(fprs):.3f}, max {np.max(fprs):.3f}; at the 99 % "
                   f"quantile median {np.median(q99):.3f}, mean {np.mean(q99):.3f}, max {np.max(q99):.3f}")
    avg = averages(results, "adbench")
    if "ours" in avg and "IForest" in avg:
        ok = "met" if avg["ours"] > avg["IForest"] else "**not met**"
        out.append(f"- ADBench/ODDS average AUC-ROC above IsolationForest's: ours {avg['ours']:.3f} vs "
                   f"IForest {avg['IForest']:.3f} — {ok}")
        wins = sum(r.cells["ours"].mean("auc_roc") > r.cells["IForest"].mean("auc_roc")
                   for r in results if r.group == "adbench")
        out.append(f"- ours beats IForest on {wins} of {sum(r.group == 'adbench' for r in results)} ADBench tables")
    return out + [""]


def _losses(results: Sequence[Any]) -> list[str]:
    lost = losses(results)
    if not lost:
        return [f"**Where we lose** (best peer AUC-ROC > ours + {LOSS_MARGIN}): nowhere."]
    out = [f"**Where we lose** (best peer AUC-ROC > ours + {LOSS_MARGIN}):", ""]
    for r, best, value in lost:
        out.append(f"- {r.name} (n={r.rows:,}, d={r.width}, {r.anomaly_ratio:.1%} anomalous): ours "
                   f"{r.cells['ours'].mean('auc_roc'):.3f}, {best} {value:.3f}")
    return out


def write_plots(results: Sequence[Any], folder: Path, plotted: Sequence[str]) -> list[Path]:
    """Score distribution + ROC/PR curves (ours, first seed) for ``plotted`` tables, one summary chart."""
    from stream_detector.report import plot_curves, plot_scores

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for r in results:
        if r.name not in plotted or "ours" not in r.cells or r.cells["ours"].example is None:
            continue
        scores, y, threshold = r.cells["ours"].example
        slug = r.name.lower().replace("%", "pct").replace("+", "plus")
        paths.append(plot_scores(scores, y, threshold, folder / f"quality_{slug}_scores.png", f"{r.name} — ours"))
        paths.append(plot_curves(scores, y, threshold, folder / f"quality_{slug}_curves.png", r.name))
    if results:
        paths.append(_summary_chart(results, folder / "quality_auc_summary.png"))
    return paths


def _summary_chart(results: Sequence[Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("ours", "IForest", "HST", "PyOD-AE", "seed-AE") if n in results[0].cells]
    labels = [r.name for r in results]
    fig, ax = plt.subplots(figsize=(8, max(4.0, 0.22 * len(results) * len(names) / 2)))
    step = 0.8 / len(names)
    pos = np.arange(len(results))
    for i, name in enumerate(names):
        ax.barh(pos + i * step, [r.cells[name].mean("auc_roc") for r in results], height=step, label=name)
    ax.set_yticks(pos + 0.4 - step / 2, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("AUC-ROC (mean over seeds)")
    ax.set_title("Detection quality per table")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
