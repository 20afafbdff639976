"""Per-feature error weights: over the training and validation rows vs the validation rows alone.

``ErrorHead`` divides each feature's squared reconstruction error by a weight fixed at training
time (``model/train.py::error_weights``). The baseline, in the same run and on the *same trained
model*, is the rule used before: the mean squared error per feature over the validation rows
only. For each weighting the threshold is calibrated on the same validation rows with the same
method, then measured:

* **self-flag rate**: the share of the model's own training rows above its threshold (``train``
  refuses a model above 20 %; a CI run of the retrainer's integration test did, at 600 events);
* **fresh flag rate**: the share of 3,000 new normal events (another seed) above the threshold,
  i.e. the alert rate a deployment would see, against the target;
* **fraud recall**: the share of the simulator's fraud events (its four patterns, 300 among 3,000 events
  of another seed) above the threshold.

Each trial is one window of simulated normal card events (``Simulator``, 300 accounts), shuffled
with the trial's seed as the retrainer's record-time order shuffles it, trained as the retrainer
trains (quantile threshold at the target rate, 8 epochs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from benchmarks.results import write_section
from stream_detector.model import train as train_module
from stream_detector.model.autoencoder import ErrorHead
from stream_detector.model.bundle import build_bundle
from stream_detector.offline import score_events
from stream_detector.simulate import Simulator


def say(msg: str) -> None:
    print(f"[error-weights] {msg}", file=sys.stderr, flush=True)


def trial(events: list[dict[str, Any]], seed: int, target: float, fresh: list[dict[str, Any]],
          frauds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Both weightings on one trained model: {"pooled" | "validation only": {self, fresh, caught}}."""
    captured: dict[str, Any] = {}
    real = train_module.error_weights

    def capture(model: torch.nn.Module, blocks: Iterable[np.ndarray]) -> np.ndarray:
        captured["model"], captured["blocks"] = model, list(blocks)
        return real(model, captured["blocks"])

    order = np.random.default_rng(seed).permutation(len(events))
    rows = [events[i] for i in order]
    train_module.error_weights = capture
    try:
        config = train_module.TrainConfig(epochs=8, threshold_method="quantile", target_fpr=target,
                                          max_self_flag_rate=1.0)
        result = train_module.train(rows, config)
    finally:
        train_module.error_weights = real
    model, (x_train, x_val) = captured["model"], captured["blocks"]
    out: dict[str, dict[str, float]] = {}
    for name, weights in (("pooled", real(model, (x_train, x_val))), ("validation only", real(model, (x_val,)))):
        head = ErrorHead(model, torch.as_tensor(weights, dtype=torch.float32)).eval()
        with torch.no_grad():
            val = head(torch.from_numpy(x_val)).mean(dim=1).numpy().astype(np.float64)
            threshold = train_module.calibrate(val, "quantile", target, config.k_std, config.k_fence,
                                               config.max_alert_rate)
            own = float((head(torch.from_numpy(x_train)).mean(dim=1).numpy() > threshold).mean())
        result.head, result.threshold = head, threshold
        bundle = build_bundle(result)
        out[name] = {"self": own,
                     "fresh": float((score_events(bundle, fresh).scores > threshold).mean()),
                     "caught": float((score_events(bundle, frauds).scores > threshold).mean())}
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks error-weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, nargs="+", default=[600, 3000], help="events per window")
    p.add_argument("--trials", type=int, default=30, help="trials (seeds) per window size")
    p.add_argument("--target", type=float, default=0.05, help="target alert rate of the quantile threshold")
    p.add_argument("--write", action="store_true", help="write the error-weights section of RESULTS.md")
    args = p.parse_args(argv)
    fresh, _ = Simulator(seed=77, accounts=300, run_id="fresh").batch(3000, 0.0)
    mixed, patterns = Simulator(seed=78, accounts=300, run_id="fraud").batch(3000, 0.1)
    frauds = [e for e, pattern in zip(mixed, patterns, strict=True) if pattern != "legit"]
    lines = [f"Windows of simulated normal card events (300 accounts), {args.trials} trials each (the window's "
             f"order shuffled by the trial's seed), trained as the retrainer trains: quantile threshold at a "
             f"{args.target:.0%} target, 8 epochs. Both weightings on the same trained model; the threshold "
             "calibrated on the same validation rows. Fresh: 3,000 new normal events.", "",
             "| window | weights | self-flag mean | self-flag max | trials > 20 % (refused) | fresh flag mean | "
             "fresh flag max | fraud recall (lowest) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n in args.windows:
        events, _ = Simulator(seed=43, accounts=300, run_id=f"w{n}").batch(n, 0.0)
        runs = []
        for seed in range(args.trials):
            runs.append(trial(events, seed, args.target, fresh, frauds))
            say(f"window {n}, trial {seed}: {runs[-1]}")
        for name in ("validation only", "pooled"):
            own = np.array([r[name]["self"] for r in runs])
            new = np.array([r[name]["fresh"] for r in runs])
            caught = np.array([r[name]["caught"] for r in runs])
            label = "training + validation rows" if name == "pooled" else "validation rows only (before)"
            lines.append(f"| {n:,} | {label} | {own.mean():.1%} | {own.max():.1%} | {int((own > 0.2).sum())} | "
                         f"{new.mean():.1%} | {new.max():.1%} | {caught.min():.0%} |")
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("error-weights", "Per-feature error weights (`python -m benchmarks error-weights`)", body)
    return 0
