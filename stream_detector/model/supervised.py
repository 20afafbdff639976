"""The supervised head (issue 17): labelled history → a calibrated fraud probability, beside the
autoencoder, in the same TorchScript call.

Input per event: its feature row ``x`` (the autoencoder's input: raw, entity and label features)
and ``log1p`` of the autoencoder's per-feature errors — what is unusual about the event, and the
history that makes it risky (a terminal's known frauds). Model: an MLP (64, 32) trained with
class-weighted binary cross-entropy (``pos_weight`` = legit / fraud rows, at most 100: fraud is rare)
on a stratified 75 % of the labelled rows, early-stopped on the average precision of the other 25 %.

**Calibration** (Platt, 1999): a logistic regression of the labels on the head's logit, fitted on the
held-back 25 %, is folded into the module (``SupervisedHead.platt``), so its output reads as a
probability. Checked on those rows: expected calibration error over 10 bins and the Brier score,
stored in the bundle (``calibration.json`` → ``supervised``).

**Threshold**: like the autoencoder's ``quantile`` rule, the probability above which at most
``target_fpr`` of the held-back legit rows fall (a fixed alert budget on legit traffic). The
decision (``pipeline/threshold.py``): an event is alerted when its reconstruction error is above
the autoencoder's threshold **or** its probability is above the head's; the alert says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from ..errors import TrainingError
from .autoencoder import ScoringModule, SupervisedHead

MIN_FRAUDS = 100  # fewer labelled frauds: no head, the autoencoder alone (as without labels)


@dataclass(frozen=True)
class HeadConfig:
    epochs: int = 40
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    hidden: tuple[int, ...] = (64, 32)
    validation_fraction: float = 0.25
    patience: int = 6
    max_pos_weight: float = 100.0
    target_fpr: float = 0.01
    seed: int = 0
    min_frauds: int = MIN_FRAUDS


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Σ_b |b| / n · |mean(p in b) − share of frauds in b| over ``bins`` equal-width bins."""
    edges = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = edges == b
        if mask.any():
            total += mask.mean() * abs(float(p[mask].mean()) - float(y[mask].mean()))
    return float(total)


def too_few_labels(n_fraud: int, n_legit: int, config: HeadConfig) -> str:
    """Why the head cannot be trained on ``n_fraud`` fraud and ``n_legit`` legit rows ("" when it can):
    fewer than ``config.min_frauds`` of either (``train_head`` raises it; the retrainer asks first, so
    that it does not train an autoencoder it then throws away)."""
    if n_fraud < config.min_frauds or n_legit < config.min_frauds:
        return (f"{n_fraud} fraud and {n_legit} legit labelled rows: the supervised head needs at least "
                f"{config.min_frauds} of each (without it the autoencoder decides alone)")
    return ""


def train_head(head: nn.Module, x: np.ndarray, fraud: np.ndarray, config: HeadConfig,
               say: Callable[[str], None], traffic: np.ndarray | None = None,
               traffic_legit: np.ndarray | None = None) -> tuple[ScoringModule, dict[str, Any]]:
    """Train the head on feature rows ``x`` (float32, n × d) labelled ``fraud`` (bool, n); returns the
    exported module (errors and probability in one call) and the ``supervised`` calibration entry.
    Raises ``TrainingError`` with fewer than ``config.min_frauds`` frauds or legit rows.

    ``traffic`` (float32, k × d): traffic the rows leave out — the retrainer's alerted events nobody
    labelled (``retrain/job.py``). The threshold is then raised to the ``target_fpr`` weighted
    quantile of the held-back legit rows (each standing for its share of the legit rows) and these,
    each weighted by 1 − its probability (the head's calibrated estimate that it is legit: many are
    frauds whose chargeback has not arrived), as the autoencoder's is (``_calibrate_on_traffic``):
    calibrated on the labelled and clean rows alone, each retraining's head alerted again on what
    the one before had alerted (benchmarks retrain-budget --supervised). Kept in the entry's
    ``traffic``. ``traffic_legit`` (bool, k): rows of ``traffic`` known to be legit (alerts older
    than the retrainer's label delay that nobody labelled, ``SD_RETRAIN_LABEL_DELAY_S``): they
    weigh 1 whatever the head's estimate."""
    fraud = np.asarray(fraud, dtype=bool)
    n_fraud, n_legit = int(fraud.sum()), int((~fraud).sum())
    problem = too_few_labels(n_fraud, n_legit, config)
    if problem:
        raise TrainingError(problem)
    rng = np.random.default_rng(config.seed)
    val_idx, fit_idx = [], []
    for cls in (True, False):  # stratified: both classes in both parts
        rows = rng.permutation(np.flatnonzero(fraud == cls))
        cut = max(1, int(len(rows) * config.validation_fraction))
        val_idx.append(rows[:cut])
        fit_idx.append(rows[cut:])
    vi, fi = np.concatenate(val_idx), np.concatenate(fit_idx)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        errors = head(xt)
    yt = torch.from_numpy(fraud.astype(np.float32))
    torch.manual_seed(config.seed)
    model = SupervisedHead(x.shape[1], config.hidden)
    pos_weight = min(config.max_pos_weight, float((~fraud[fi]).sum()) / max(1.0, float(fraud[fi].sum())))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    fit_t = torch.from_numpy(fi)
    best, best_state, stale, epochs_run = -math.inf, None, 0, 0
    for epoch in range(1, config.epochs + 1):
        epochs_run = epoch
        model.train()
        for idx in torch.split(fit_t[torch.randperm(len(fit_t), generator=generator)], config.batch_size):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model.logit(xt[idx], errors[idx]), yt[idx])
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            logits = model.logit(xt[vi], errors[vi]).numpy()
        ap = float(average_precision_score(fraud[vi], logits))
        if ap > best + 1e-6:
            best, stale = ap, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        logits = model.logit(xt[vi], errors[vi]).numpy().astype(np.float64)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(logits.reshape(-1, 1), fraud[vi])
    with torch.no_grad():
        model.platt.copy_(torch.tensor([float(platt.coef_[0][0]), float(platt.intercept_[0])]))
    with torch.no_grad():
        p_val = model(xt[vi], errors[vi]).numpy().astype(np.float64)
    y_val = fraud[vi]
    # at most --target-fpr of the held-back legit rows above it, as the autoencoder's quantile rule
    # (an interpolated quantile let one more row through)
    from .train import at_most_above

    threshold = at_most_above(p_val[~y_val], config.target_fpr)
    on_traffic: dict[str, Any] | None = None
    if traffic is not None and len(traffic):
        from .train import traffic_threshold

        xx = torch.from_numpy(np.ascontiguousarray(traffic, dtype=np.float32))
        with torch.no_grad():
            p_traffic = model(xx, head(xx)).numpy().astype(np.float64)
        legit_val = p_val[~y_val]
        # each counts as legit as far as the head's own (calibrated) probability says it is: an alerted event
        # nobody labelled may be a fraud whose chargeback is on its way (1 - p), not a false positive (1)
        weights = np.clip(1.0 - p_traffic, 1e-6, 1.0)
        if traffic_legit is not None:
            weights[np.asarray(traffic_legit, dtype=bool)] = 1.0
        raised = traffic_threshold(legit_val, n_legit / max(1, legit_val.size), p_traffic, weights,
                                   config.target_fpr, threshold)
        on_traffic = {"alerted_events": int(p_traffic.size), "threshold_on_rows": threshold, "threshold": raised,
                      "alerted_above_rows_threshold": int((p_traffic > threshold).sum()),
                      "alerted_above_threshold": int((p_traffic > raised).sum()),
                      "known_legit": int(np.sum(traffic_legit)) if traffic_legit is not None else 0}
        threshold = raised
    validation: dict[str, float] = {
        "average_precision": float(average_precision_score(y_val, p_val)),
        "auc_roc": float(roc_auc_score(y_val, p_val)),
        "expected_calibration_error": expected_calibration_error(p_val, y_val),
        "brier": float(np.mean((p_val - y_val) ** 2)),
        "mean_probability": float(p_val.mean()),
        "fraud_share": float(y_val.mean()),
        "flag_rate_legit": float((p_val[~y_val] > threshold).mean()),
        "recall": float((p_val[y_val] > threshold).mean()),
    }
    entry: dict[str, Any] = {
        "threshold": threshold,
        "target_fpr": config.target_fpr,
        "platt": [float(platt.coef_[0][0]), float(platt.intercept_[0])],
        "pos_weight": pos_weight,
        "epochs_run": epochs_run,
        "rows": {"fit": int(len(fi)), "validation": int(len(vi)), "fraud": n_fraud, "legit": n_legit},
        "validation": validation,
        **({"traffic": on_traffic} if on_traffic is not None else {}),
    }
    v = validation
    say(f"supervised head: {n_fraud} fraud / {n_legit} legit labelled rows, {epochs_run} epochs; held-back rows: "
        f"AP {v['average_precision']:.3f}, AUC {v['auc_roc']:.3f}, "
        f"calibration error {v['expected_calibration_error']:.4f}, "
        f"Brier {v['brier']:.4f}; threshold p > {threshold:.4g} flags {v['flag_rate_legit']:.2%} of legit and "
        f"{v['recall']:.1%} of fraud rows")
    return ScoringModule(head, model).eval(), entry


def rows_for_head(spec: Any, schema: Any, events: Sequence[dict[str, Any]], fraud: Sequence[bool]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The feature rows of labelled events (typed by ``schema`` as ``train`` types them; rows the
    schema or the feature step refuses are left out) and their labels."""
    typed, problems = schema.convert(events) if schema is not None else (list(events), {})
    keep = [i for i in range(len(typed)) if i not in problems]
    x, bad = spec.transform([typed[i] for i in keep])
    labels = np.asarray([fraud[i] for i in keep], dtype=bool)
    if bad:
        x, labels = np.delete(x, sorted(bad), axis=0), np.delete(labels, sorted(bad))
    return x, labels
