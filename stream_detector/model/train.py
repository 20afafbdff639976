"""Training: fit features, train the autoencoder on normal rows with early stopping, calibrate.

Defaults come from the data, not from labels (documented rules): architecture from the feature
width (``Architecture.for_width``), epochs from the row count (enough optimiser steps to
converge on small data, one pass budget on large data), early stopping on a held-out split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..entity_spec import EntitySpec
from ..errors import TrainingError
from ..features import FeatureSpec, fit_spec
from ..fieldschema import FieldSchema, InferenceOptions, infer_schema
from .autoencoder import Architecture, Autoencoder, ErrorHead
from .bundle import COLUMN_MEANS, COLUMN_MEDIANS

Progress = Callable[[str], None]

ThresholdMethod = Literal["fence", "quantile", "meanstd"]
THRESHOLD_METHODS: tuple[str, ...] = ("fence", "quantile", "meanstd")
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution × this = its standard deviation
# Refusal rules (README "Training refuses"): below these a threshold is calibrated on noise.
MIN_TRAIN_ROWS = 100  # normal rows after the schema's rejections: 80 to fit, 20 to calibrate
MIN_VALIDATION_ROWS = 20
MAX_SELF_FLAG_RATE = 0.2  # a model flagging more of its own normal rows than this is refused
STEPS_TARGET = 20_000  # optimiser steps default_epochs aims at, within MIN_EPOCHS..MAX_EPOCHS
MIN_EPOCHS, MAX_EPOCHS = 10, 300
BATCH_SIZE = 256  # train's minibatch (train --streamed: big.train.streamed_batch_size)


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; ``None`` means "derive from the data"."""

    epochs: int | None = None
    batch_size: int | None = None  # train: BATCH_SIZE; train --streamed: big.train.streamed_batch_size
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    dropout: float = 0.0
    hidden: tuple[int, ...] | None = None
    bottleneck: int | None = None
    validation_fraction: float = 0.2
    patience: int = 10
    seed: int = 0
    threshold_method: ThresholdMethod = "fence"
    target_fpr: float = 0.01
    k_std: float = 3.0
    k_fence: float = 3.0
    max_alert_rate: float | None = None
    error_norm: Literal["none", "mean"] = "mean"
    time_of_day: bool = False
    exclude: tuple[str, ...] = field(default_factory=tuple)
    min_rows: int = MIN_TRAIN_ROWS
    max_self_flag_rate: float = MAX_SELF_FLAG_RATE


@dataclass
class TrainResult:
    spec: FeatureSpec
    head: nn.Module  # ErrorHead, or ScoringModule with a supervised head (model/supervised.py)
    arch: Architecture
    threshold: float
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    entity: EntitySpec | None = None
    schema: FieldSchema | None = None
    # the validation rows' mean errors (float64[n]), the ones ``threshold`` was calibrated on; not saved
    validation_errors: np.ndarray | None = None
    training_errors: np.ndarray | None = None  # the training rows' (float64[m]); not saved


def default_epochs(n_rows: int, batch_size: int) -> int:
    """About ``STEPS_TARGET`` (20k) optimiser steps on small data, at least 10 and at most 300 epochs."""
    steps_per_epoch = max(1, math.ceil(n_rows / batch_size))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(STEPS_TARGET / steps_per_epoch))))


def default_steps(n_rows: int, batch_size: int) -> int:
    """The optimiser steps of ``default_epochs`` epochs over ``n_rows`` rows in minibatches of ``batch_size``
    (early stopping may end sooner)."""
    return default_epochs(n_rows, batch_size) * max(1, math.ceil(n_rows / batch_size))


def calibrate(errors: np.ndarray, method: str, target_fpr: float, k_std: float, k_fence: float = 3.0,
              max_alert_rate: float | None = None) -> float:
    """Threshold from validation errors of normal rows (documented in the README, "Threshold").

    ``fence`` (default): a robust outlier fence on the log of the errors,
    ``exp(median + k_fence · 1.4826 · MAD)``, i.e. "more than ``k_fence`` robust standard deviations
    above the typical error". Reconstruction errors are skewed and roughly log-normal; median and
    MAD ignore the tail, so normal rows that reconstruct as badly as anomalies (a contaminated or
    heavy-tailed normal class) do not drag the threshold up to the anomalies' level, as a quantile
    or mean + k·std does. The share of normal rows flagged follows the data (median 1.1 % over the
    46 tables of the quality benchmark, at most 5.6 %); when the errors have no spread (MAD 0) it
    falls back to ``quantile``.
    ``quantile``: a fixed alert budget on normal traffic: the smallest error with at most
    ``floor(target_fpr · n)`` of the n validation rows above it (an interpolated (1 - target_fpr)
    quantile let one more row through: a trial's 0.002 flagged 0.26 %, its 0.01 on 113 rows 1.77 %).
    ``meanstd``: mean + k_std·std (the seeds' recipe, kept as an option).
    ``max_alert_rate`` (any method): raise the threshold to at least the smallest error with at
    most ``floor(max_alert_rate · n)`` of the n validation rows above it, so no more than that share
    is flagged (an alert budget cap).
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no validation errors to calibrate on")
    if method == "quantile":
        threshold = at_most_above(errors, target_fpr)
    elif method == "meanstd":
        threshold = float(errors.mean() + k_std * errors.std())
    elif method == "fence":
        logs = np.log(np.maximum(errors, np.finfo(np.float64).tiny))
        median = float(np.median(logs))
        spread = MAD_TO_SIGMA * float(np.median(np.abs(logs - median)))
        if spread > 0 and np.isfinite(spread):
            threshold = float(np.exp(median + k_fence * spread))
        else:
            threshold = at_most_above(errors, target_fpr)
    else:
        raise ValueError(f"unknown threshold method {method!r} (one of {', '.join(THRESHOLD_METHODS)})")
    if max_alert_rate is not None:
        threshold = max(threshold, at_most_above(errors, max_alert_rate))
    return threshold


def at_most_above(errors: np.ndarray, share: float) -> float:
    """The smallest of ``errors`` (float64[n]) with at most ``floor(share · n)`` of them strictly above it (an
    interpolated quantile let one more through: a trial's --max-alert-rate 0.02 flagged 16 of 789
    rows, 2.03 %). ``-inf`` when every row may be above (share 1)."""
    allowed = int(np.floor(share * errors.size + 1e-9))  # rows that may be above it
    if allowed >= errors.size:
        return -math.inf
    return float(np.partition(errors, errors.size - allowed - 1)[errors.size - allowed - 1])


def train(events: Sequence[dict[str, Any]], config: TrainConfig, progress: Progress | None = None,
          entity: EntitySpec | None = None, schema: FieldSchema | None = None) -> TrainResult:
    """Fit spec, train, early-stop, calibrate. ``events`` are normal rows only.

    ``schema``: the field schema the events were typed with (``inputs.load_events``); without one
    it is inferred from ``events`` (JSON values) and they are converted by it. Either way it is
    stored in the result, so the bundle's workers type live records the same way.
    With ``entity``, the rows must already carry its fields, computed point-in-time over the whole
    time-ordered history (``entity.enrich_history`` before selecting the normal rows), and the spec
    is stored in the result so the bundle's workers compute the same fields.

    Raises ``TrainingError`` (no bundle is made) when the rows cannot make a usable model: fewer
    than ``config.min_rows`` normal rows, fewer than ``MIN_VALIDATION_ROWS`` to calibrate on, no
    usable feature, a threshold that is not finite, or more than ``config.max_self_flag_rate`` of
    the model's own training or validation rows above its threshold.
    """
    say = progress or (lambda _msg: None)
    if entity is not None and events and any(f not in events[0] for f in entity.all_fields):
        raise ValueError("events lack the entity fields: run entity.enrich_history on the history first")
    started = time.monotonic()
    entity_fields = tuple(entity.all_fields) if entity is not None else ()
    if schema is None:
        schema = _infer(events, config, entity)
    events, dropped = _typed(events, schema)
    if dropped:
        say(f"{dropped} rows left out of training: a value does not fit its field's type")
    if len(events) < config.min_rows:
        raise TrainingError(f"{len(events)} normal rows: at least {config.min_rows} are needed to train "
                            f"and calibrate a threshold")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(events))
    n_val = max(MIN_VALIDATION_ROWS, int(len(events) * config.validation_fraction))
    train_events = [events[i] for i in order[n_val:]]
    val_events = [events[i] for i in order[:n_val]]
    spec = fit_spec(train_events, exclude=config.exclude, time_of_day=config.time_of_day, schema=schema,
                    numeric_extra=entity_fields)
    if spec.width == 0:
        raise TrainingError("no usable feature: " + ("; ".join(
            f"{r.name} is {r.type.value}" + (f" ({r.note})" if r.note else "") for r in schema.fields)
            or "the rows have no fields"))
    x_train, bad_train = spec.transform(train_events)
    x_val, bad_val = spec.transform(val_events)
    x_train = np.delete(x_train, sorted(bad_train), axis=0)
    x_val = np.delete(x_val, sorted(bad_val), axis=0)
    arch = architecture(spec, len(x_train), len(x_val), config, say)
    model, history = _fit(x_train, x_val, arch, config, say)
    weights = error_weights(model, (x_train, x_val)) if config.error_norm == "mean" else np.ones(spec.width, np.float32)
    head = ErrorHead(model, torch.as_tensor(weights, dtype=torch.float32)).eval()
    with torch.no_grad():
        val_errors = head(torch.from_numpy(x_val)).mean(dim=1).numpy().astype(np.float64)
    threshold = calibrate(val_errors, config.threshold_method, config.target_fpr, config.k_std, config.k_fence,
                          config.max_alert_rate)
    flag_rate = float((val_errors > threshold).mean())
    with torch.no_grad():
        train_errors = head(torch.from_numpy(x_train)).mean(dim=1).numpy().astype(np.float64)
    train_flag_rate = float((train_errors > threshold).mean())
    _refuse_unusable(threshold, flag_rate, train_flag_rate, config.max_self_flag_rate)
    calibration: dict[str, Any] = {
        "method": config.threshold_method,
        "target_fpr": config.target_fpr,
        "k_std": config.k_std,
        "k_fence": config.k_fence,
        "max_alert_rate": config.max_alert_rate,
        "threshold": threshold,
        **error_rule(config),
        "validation_rows": int(len(val_errors)),
        "validation_error_quantiles": {
            str(q): float(np.quantile(val_errors, q)) for q in (0.5, 0.9, 0.95, 0.99, 0.999)
        },
        "validation_flag_rate": flag_rate,
        "train_flag_rate": train_flag_rate,
        # each feature column's mean and median over the validation rows (normal events the model was not fitted
        # on): the typical values an alert's fields take when their part in its score is measured (Scorer.why)
        **typical_columns(x_val),
    }
    metrics = {
        "train_rows": int(len(x_train)),
        "validation_rows": int(len(x_val)),
        "batch_size": config.batch_size or BATCH_SIZE,
        "epochs_run": len(history),
        "best_validation_loss": float(min(history)),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    for line in threshold_lines(val_errors, threshold, config):
        say(line)
    metrics["rows_left_out"] = dropped
    return TrainResult(spec, head, arch, threshold, calibration, metrics, entity, schema, val_errors, train_errors)


TYPICAL_SAMPLE_ROWS = 65_536  # the streamed path's medians: over at most this many validation rows


def typical_columns(x: np.ndarray, means: np.ndarray | None = None) -> dict[str, list[float]]:
    """``calibration.json``'s ``column_means`` and ``column_medians``: each column's mean and median
    over the feature rows ``x`` (float32, n × width; the validation rows), as JSON floats.
    ``means``: the means when they were taken over more rows than ``x`` (the streamed path's
    medians are those of a sample). Empty when ``x`` has no row."""
    if not len(x):
        return {}
    rows = np.asarray(x, dtype=np.float64)
    mean = rows.mean(axis=0) if means is None else np.asarray(means, dtype=np.float64)
    return {COLUMN_MEANS: [float(v) for v in mean], COLUMN_MEDIANS: [float(v) for v in np.median(rows, axis=0)]}


def row_errors(result: TrainResult, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """The mean reconstruction error (float64[k], the score the threshold is compared with) of each
    of ``rows`` that the result's schema types and its spec transforms, by ``result.head`` (an
    ``ErrorHead``: call before a supervised head is added); ``k`` ≤ ``len(rows)``: rows that do
    not fit are left out, as ``train`` leaves them out of its own rows."""
    if not rows:
        return np.zeros(0)
    typed = _typed(rows, result.schema)[0] if result.schema is not None else list(rows)
    x, bad = result.spec.transform(typed)
    x = np.delete(x, sorted(bad), axis=0)
    with torch.no_grad():
        errors: np.ndarray = result.head(torch.from_numpy(x)).mean(dim=1).numpy().astype(np.float64)
    return errors


def at_most_weighted_above(errors: np.ndarray, weights: np.ndarray, share: float) -> float:
    """``at_most_above`` with a weight per error: the smallest of ``errors`` (float64[n]) whose
    weights strictly above it sum to at most ``share`` of all the weights (``weights``: float64[n],
    > 0). With every weight 1 it equals ``at_most_above``. ``-inf`` when every row may be above.
    Used to calibrate on a sample that stands for a larger population in parts (the retrainer's
    validation rows, each one of ``clean / validation`` clean events, and the alerted events, each
    one)."""
    errors = np.asarray(errors, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no errors to calibrate on")
    order = np.argsort(errors, kind="stable")
    ordered, cum = errors[order], np.cumsum(weights[order])
    total = cum[-1]
    allowed = share * total * (1 + 1e-12)
    # weight strictly above each ordered value: total less the weight up to its last tie
    above = total - cum[np.searchsorted(ordered, ordered, side="right") - 1]
    ok = np.flatnonzero(above <= allowed)
    if ok.size == 0 or share >= 1:
        return -math.inf
    first = int(ok[0])
    return -math.inf if first == 0 and allowed >= total else float(ordered[first])


def traffic_threshold(rows: np.ndarray, stands_for: float, extra: np.ndarray, extra_weight: np.ndarray,
                      share: float, floor: float) -> float:
    """The retrainer's threshold on traffic (autoencoder errors or head probabilities, float64):
    the smallest value with at most ``share`` of the weight above it, where each of ``rows`` (held
    back from fitting) stands for ``stands_for`` events and each of ``extra`` (traffic the rows
    leave out: alerted events) for its ``extra_weight``; never below ``floor``, the rows' own
    threshold (``at_most_weighted_above``; ``retrain/job.py``, ``supervised.train_head``)."""
    weights = np.concatenate([np.full(rows.size, stands_for), extra_weight])
    return max(floor, at_most_weighted_above(np.concatenate([rows, extra]), weights, share))


def architecture(spec: FeatureSpec, n_train: int, n_val: int, config: TrainConfig, say: Progress) -> Architecture:
    """The network for ``spec`` (``Architecture.for_width`` unless ``config`` sets hidden/bottleneck),
    after refusing (``TrainingError``) fewer than ``MIN_VALIDATION_ROWS`` validation rows."""
    if n_val < MIN_VALIDATION_ROWS:
        raise TrainingError(f"{n_val} validation rows: at least {MIN_VALIDATION_ROWS} are needed to "
                            f"calibrate the threshold")
    say(f"features: {spec.width} columns from {len(spec.numeric)} numeric and "
        f"{len(spec.categorical)} categorical fields; {n_train:,} train / {n_val:,} validation rows")
    arch = Architecture.for_width(spec.width, config.dropout)
    if config.hidden is not None or config.bottleneck is not None:
        arch = Architecture(spec.width, config.hidden or arch.hidden, config.bottleneck or arch.bottleneck,
                            config.dropout)
    return arch


def _infer(events: Sequence[dict[str, Any]], config: TrainConfig, entity: EntitySpec | None) -> FieldSchema:
    """The schema of JSON-valued rows (API callers); entity output fields are features, not inputs."""
    keys = frozenset(entity.keys) if entity is not None else frozenset()
    schema = infer_schema(events, InferenceOptions(identifiers=keys, ignored=frozenset(config.exclude))).schema
    outputs = set(entity.all_fields) if entity is not None else set()
    inputs = FieldSchema(tuple(r for r in schema.fields if r.name not in outputs), schema.time_range_ms)
    return inputs.reading([*inputs.input_fields, *(entity.input_fields if entity is not None else ())])


def _typed(events: Sequence[dict[str, Any]], schema: FieldSchema) -> tuple[list[dict[str, Any]], int]:
    typed, problems = schema.convert(events)
    if not problems:
        return typed, 0
    return [e for i, e in enumerate(typed) if i not in problems], len(problems)


def error_rule(config: TrainConfig) -> dict[str, str]:
    """How the score weighs the features' errors, for ``calibration.json`` (the weights themselves
    are a buffer of the TorchScript module): ``error_norm`` ``mean`` (``error_weights``, and the
    rows they were taken over) or ``none`` (all ones)."""
    if config.error_norm == "mean":
        return {"error_norm": "mean", "error_weights": "mean squared error per feature over the training "
                                                       "and validation rows, plus 1e-6"}
    return {"error_norm": "none", "error_weights": "ones"}


def error_weights(model: nn.Module, blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Per-feature error weights (float64, shape (d,)): the mean squared reconstruction error of each
    feature over every row of ``blocks`` (float32 arrays, n × d; training and validation rows), plus
    1e-6. ``ErrorHead`` divides each feature's squared error by its weight, so every field weighs
    alike in the score.

    Over the training *and* validation rows, not the validation rows alone (the rule before): a
    rare value (a new device, 1 % of events) can be absent from a small validation split; its
    feature's weight then falls to a small fraction of the others', and every training row that
    has it scores far above the threshold. On windows of 600 events the self-flag rate reached
    19.4 % (a retrainer CI run crossed the 20 % refusal) and the threshold flagged 7.7 % of fresh
    normal events for a 5 % target; over both, 13.3 % at most and 5.4 %. At 3,000 events the two
    rules agree (benchmarks/RESULTS.md, *Per-feature error weights*).

    Raises ``TrainingError`` when ``blocks`` hold no row."""
    total: np.ndarray | None = None
    rows = 0
    model.eval()
    with torch.no_grad():
        for block in blocks:
            x = torch.from_numpy(block)
            sq = (model(x) - x).pow(2).sum(dim=0).numpy().astype(np.float64)
            total = sq if total is None else total + sq
            rows += len(block)
    if total is None or rows == 0:
        raise TrainingError("no rows to weigh the features' errors on")
    return total / rows + 1e-6


FAR_ABOVE = 4.0  # threshold_lines: a threshold this many times every normal validation row's error is warned of


def threshold_lines(val_errors: np.ndarray, threshold: float, config: TrainConfig) -> list[str]:
    """``train``'s lines on its threshold (in memory and ``--streamed``): the value, its rule (and,
    where ``--max-alert-rate`` raised it, from what: a trial saw "(fence)" for a threshold the cap
    had raised 4x) and the share of ``val_errors`` (float64[n], the validation rows' mean errors)
    above it; then a warning when that share passes 2 % under a rule whose share follows the data
    (not ``quantile``: its ``--target-fpr`` is the share asked for; not with a cap), or when the
    threshold is more than ``FAR_ABOVE`` times the largest validation error (on 42 quality tables at
    5 epochs: glass 12.9x, Pima 5.0x, the rest under 3.1x; the trial's mammography split 13x)."""
    flag_rate = float((val_errors > threshold).mean())
    rule: str = config.threshold_method
    if config.max_alert_rate is not None:
        before = calibrate(val_errors, rule, config.target_fpr, config.k_std, config.k_fence)
        if threshold > before:
            rule += f" {before:.6g}, raised by --max-alert-rate {config.max_alert_rate:g}"
    lines = [f"threshold {threshold:.6g} ({rule}); flags {flag_rate:.2%} of validation rows"]
    if config.max_alert_rate is None and config.threshold_method != "quantile" and flag_rate > 0.02:
        lines.append("warning: more than 2% of normal validation rows are above the threshold (the normal errors "
                     "have a heavy tail, or --k-fence / --k-std is low); for a fixed alert budget use "
                     "--max-alert-rate or --threshold-method quantile")
    largest = float(val_errors.max()) if val_errors.size else 0.0
    if (config.max_alert_rate is None and config.threshold_method != "quantile" and largest > 0
            and threshold > FAR_ABOVE * largest):
        # a trial: ADBench mammography's fence, 685, was 13x every normal validation error: the model
        # flagged none of the test's anomalies (largest score 125), and nothing said it
        lines.append(f"warning: the threshold is {threshold / largest:.0f}x the largest error of any normal validation "
                     f"row ({largest:.6g}): anomalies scored between the two are not flagged (the errors' quartiles "
                     "are far apart); for an alert budget use --threshold-method quantile --target-fpr or "
                     "--max-alert-rate")
    return lines


def _refuse_unusable(threshold: float, val_rate: float, train_rate: float, limit: float) -> None:
    if not math.isfinite(threshold):
        raise TrainingError(f"the calibrated threshold is not finite ({threshold}): the validation errors "
                            f"are degenerate")
    if max(val_rate, train_rate) > limit:
        raise TrainingError(f"the model flags {train_rate:.0%} of its own normal training rows and "
                            f"{val_rate:.0%} of its validation rows (limit {limit:.0%}): too few or too "
                            f"varied rows to learn what normal looks like, or a threshold rule set low "
                            f"(--k-fence, --k-std, --target-fpr)")


def _fit(
    x_train: np.ndarray, x_val: np.ndarray, arch: Architecture, config: TrainConfig, say: Progress
) -> tuple[Autoencoder, list[float]]:
    torch.manual_seed(config.seed)
    model = Autoencoder(arch)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.MSELoss()
    xt = torch.from_numpy(x_train)
    xv = torch.from_numpy(x_val)
    batch_size = config.batch_size or BATCH_SIZE
    epochs = config.epochs or default_epochs(len(x_train), batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    stopping = EarlyStopping(config.patience)
    report_every = max(1, epochs // 10)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.split(torch.randperm(len(xt), generator=generator), batch_size):
            batch = xt[idx]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch), batch)
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(xv), xv))
        stop = stopping.epoch(val_loss, model)
        if epoch % report_every == 0 or epoch == epochs:
            say(f"epoch {epoch}/{epochs}: validation loss {val_loss:.5f} (best {stopping.best:.5f})")
        if stop:
            say(f"early stop at epoch {epoch}: no improvement for {config.patience} epochs")
            break
    return stopping.restore(model), stopping.history


class EarlyStopping:
    """Early stopping on the validation loss: the best weights kept (an improvement is a loss lower
    by more than 1e-7), training stops after ``patience`` epochs without one; shared by ``train``
    and ``train --streamed``."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.stale = 0
        self.history: list[float] = []
        self._state: dict[str, torch.Tensor] | None = None

    def epoch(self, val_loss: float, model: nn.Module) -> bool:
        """Record one epoch's validation loss; True when training should stop."""
        self.history.append(val_loss)
        if val_loss < self.best - 1e-7:
            self.best, self.stale = val_loss, 0
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1
        return self.stale >= self.patience

    def restore(self, model: Autoencoder) -> Autoencoder:
        """``model`` with the best epoch's weights, in eval mode."""
        if self._state is not None:
            model.load_state_dict(self._state)
        return model.eval()
