"""Big-history training: passes 1-3 (``big/prepare.py``), then the autoencoder from a stream of minibatches.

The same bundle as ``model.train.train``: the same architecture rule, optimiser, loss, minibatch
and epochs (up to 2M training rows: ``streamed_batch_size``), early stopping on a validation split,
error weights and threshold calibration — only the rows come from the feature files on disk,
``block_rows`` at a time, never all at once:

* an epoch visits the training file's blocks in a seeded random order; ``shuffle_blocks`` blocks
  are read together and their rows shuffled (a shuffle buffer of 32 × 8,192 rows), then cut into
  minibatches;
* the validation loss after each epoch and the validation errors the threshold is calibrated on
  are computed over the whole validation file, streamed; the error weights over the training and
  validation files (``model.train.error_weights``, one more forward pass over the training rows);
* the share of training rows above the threshold (the self-flag refusal) is measured on
  ``flag_sample_rows`` rows of random blocks of the training file (stated in the calibration). Not
  the first rows: a history's first days have little entity history and look unlike the rest
  (at 20M rows they flagged 23 % where the validation rows flagged 3 %).

Memory: one shuffle buffer of float32 rows plus the model; the validation errors (8 bytes a
validation row) are the only thing that grows with the history.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..entity_spec import EntitySpec
from ..errors import ConfigError, TrainingError
from ..events_io import ReaderOptions
from ..fieldschema import InferenceOptions
from ..model.autoencoder import Architecture, Autoencoder, ErrorHead
from ..model.train import (
    BATCH_SIZE,
    MIN_EPOCHS,
    TYPICAL_SAMPLE_ROWS,
    EarlyStopping,
    TrainConfig,
    TrainResult,
    _refuse_unusable,
    architecture,
    calibrate,
    default_epochs,
    error_rule,
    error_weights,
    threshold_lines,
    typical_columns,
)
from . import sketches
from .prepare import BigOptions, Say, pass_one, pass_three, pass_two

BIG_BATCH_SIZE = 1024  # the streamed minibatch on a big history: ~2.5x train's rows/s on a 2-core CPU


def streamed_batch_size(n_train: int) -> int:
    """The minibatch of ``train --streamed`` without ``--batch-size``: ``train``'s 256, and so ``train``'s
    epochs and optimiser steps, unless the epoch rule is at its floor of 10 epochs with 1,024-row
    minibatches too (from 2,046,977 training rows). There ``BIG_BATCH_SIZE`` changes only the step size:
    the same 10 passes over the history, at least the 20,000 steps the rule aims at, about 2.5x the rows/s.

    1,024 on every input made small files' models undertrained (docs/big-history.md, "Training"): under
    the 300-epoch cap, a quarter of ``train``'s steps (4,800 instead of 18,900 at 15,887 training rows);
    and 20,000 steps of 1,024 rows are not 20,000 of 256 (at 80,000 training rows the validation loss was
    55x ``train``'s, and the model was refused for flagging 24 % of its own rows)."""
    return BIG_BATCH_SIZE if default_epochs(n_train, BIG_BATCH_SIZE) == MIN_EPOCHS else BATCH_SIZE


@dataclass(frozen=True)
class StreamOptions:
    """The minibatch stream: a shuffle buffer of ``shuffle_blocks`` random blocks of ``block_rows``
    rows (262,144 rows, 80 MB at 78 columns). Many small blocks, not a few big ones: the feature
    files are in time order, so a buffer of a few long blocks covers a few stretches of time and
    the validation loss swings from one buffer to the next (seen at 20M rows with 4 × 65,536)."""

    block_rows: int = 8_192
    shuffle_blocks: int = 32
    flag_sample_rows: int = 1_000_000


def train_big(files: Sequence[Path], config: TrainConfig, options: BigOptions, *, reader: ReaderOptions,
              inference: InferenceOptions, entity: EntitySpec | None = None, id_column: str | None = None,
              label_column: str | None = None, normal_label: str = "0", stream: StreamOptions = StreamOptions(),
              keep: Sequence[str] = (), say: Say = lambda _m: None) -> TrainResult:
    """Train a bundle's model from ``files`` (``big/source.py``'s input) with bounded memory.

    Rows with ``label_column`` equal to ``normal_label`` train (all rows without a label column);
    every event is the entity history. With labels, a category or boolean field that gives them away is
    refused after the first pass (``inputs.leak_problem``, as ``train`` in memory; ``keep``: fields
    let through). ``options.work_dir`` (created here; ``ConfigError`` when it
    exists) holds the intermediate files (about ``rows × (fields + entity features) × 8`` bytes) and
    is removed at the end, also on failure.

    Raises ``InputError`` (unreadable input, no event), ``TrainingError`` (as ``train``: too few
    rows, no usable feature, an unusable threshold).
    """
    started = time.monotonic()
    options.work_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        options.work_dir.mkdir()  # a fresh directory of its own: only it is removed at the end
    except FileExistsError:
        raise ConfigError(f"work directory {options.work_dir} already exists (another run?)") from None
    try:
        schema, plan, stats, tasks, facts = pass_one(
            files, reader=reader, inference=inference, entity=entity, id_column=id_column,
            label_column=label_column, normal_label=normal_label, exclude=config.exclude, keep=keep,
            time_of_day=config.time_of_day, seed=config.seed, validation_fraction=config.validation_fraction,
            options=options, say=say)
        if facts["normal"] < config.min_rows:
            raise TrainingError(f"{facts['normal']} normal rows: at least {config.min_rows} are needed to train "
                                f"and calibrate a threshold")
        entity_stats = None
        if entity is not None:
            entity_stats, more = pass_two(entity, tasks, options, say)
            facts.update(more)
        spec = sketches.fit_spec_from_stats(
            stats.join(entity_stats) if entity_stats is not None else stats,
            numeric=plan.numeric + (list(entity.output_fields) if entity is not None else []),
            categorical=plan.categorical, order=plan.order + (list(entity.output_fields) if entity is not None else []),
            time_of_day=config.time_of_day)
        if spec.width == 0:
            raise TrainingError("no usable feature in the input")
        n_train, n_val, more = pass_three(spec, plan, entity, tasks, options, say)
        facts.update(more)
        arch = architecture(spec, n_train, n_val, config, say)
        data = _Files(options.work_dir / "train.f32", n_train, options.work_dir / "val.f32", n_val, spec.width,
                      stream)
        fit_started = time.monotonic()
        model, history, batch_size = _fit(data, arch, config, say)
        facts["fit_seconds"] = round(time.monotonic() - fit_started, 1)
        result = _calibrate(model, data, config, say)
        result.spec, result.arch, result.entity, result.schema = spec, arch, entity, schema
        result.metrics.update({"train_rows": n_train, "validation_rows": n_val, "batch_size": batch_size,
                               "epochs_run": len(history),
                               "best_validation_loss": float(min(history)),
                               "train_seconds": round(time.monotonic() - started, 2), "streamed": facts})
        return result
    finally:
        shutil.rmtree(options.work_dir, ignore_errors=True)


@dataclass
class _Files:
    train: Path
    n_train: int
    val: Path
    n_val: int
    width: int
    stream: StreamOptions

    def blocks(self, path: Path, n: int, order: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """float32[rows, width] blocks of ``path`` (in ``order`` of block numbers, else file order)."""
        rows = self.stream.block_rows
        count = math.ceil(n / rows)
        with path.open("rb") as handle:
            for b in (order if order is not None else range(count)):
                handle.seek(b * rows * self.width * 4)
                take = min(rows, n - b * rows)
                yield np.fromfile(handle, dtype=np.float32, count=take * self.width).reshape(take, self.width)


def _fit(data: _Files, arch: Architecture, config: TrainConfig, say: Say) -> tuple[Autoencoder, list[float], int]:
    torch.manual_seed(config.seed)
    model = Autoencoder(arch)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.MSELoss()
    batch_size = config.batch_size or streamed_batch_size(data.n_train)
    epochs = config.epochs or default_epochs(data.n_train, batch_size)
    say(f"minibatches of {batch_size:,} rows" + ("" if config.batch_size else f" (the default for "
        f"{data.n_train:,} training rows)") + f", {epochs} epochs at most")
    rng = np.random.default_rng(config.seed)
    stopping = EarlyStopping(config.patience)
    count = math.ceil(data.n_train / data.stream.block_rows)
    for epoch in range(1, epochs + 1):
        started, seen = time.monotonic(), 0
        model.train()
        order = rng.permutation(count)
        for start in range(0, count, data.stream.shuffle_blocks):
            picked = order[start:start + data.stream.shuffle_blocks].tolist()
            buffer = np.concatenate(list(data.blocks(data.train, data.n_train, picked)))
            xt = torch.from_numpy(buffer[rng.permutation(len(buffer))])
            for batch in torch.split(xt, batch_size):
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(model(batch), batch)
                loss.backward()
                optimiser.step()
            seen += len(buffer)
        val_loss = _val_loss(model, data)
        stop = stopping.epoch(val_loss, model)
        elapsed = time.monotonic() - started
        say(f"epoch {epoch}/{epochs}: validation loss {val_loss:.5f} (best {stopping.best:.5f}); "
            f"{seen / elapsed:,.0f} rows/s, ~{elapsed * (epochs - epoch):.0f} s left at most")
        if stop:
            say(f"early stop at epoch {epoch}: no improvement for {config.patience} epochs")
            break
    return stopping.restore(model), stopping.history, batch_size


def _val_loss(model: nn.Module, data: _Files) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for block in data.blocks(data.val, data.n_val):
            x = torch.from_numpy(block)
            total += float((model(x) - x).pow(2).sum())
    return total / (data.n_val * data.width)


def _calibrate(model: Autoencoder, data: _Files, config: TrainConfig, say: Say) -> TrainResult:
    if config.error_norm == "mean":  # train's rule: over the training and the validation rows, streamed
        say("error weights over the training and validation files")
        weights = error_weights(model, chain(data.blocks(data.train, data.n_train), data.blocks(data.val, data.n_val)))
    else:
        weights = np.ones(data.width)
    head = ErrorHead(model, torch.as_tensor(weights, dtype=torch.float32)).eval()
    sums, rows, parts, sample = np.zeros(data.width), 0, [], []
    stride = max(1, math.ceil(data.n_val / TYPICAL_SAMPLE_ROWS))  # the medians: every stride-th validation row
    with torch.no_grad():
        for b in data.blocks(data.val, data.n_val):
            parts.append(head(torch.from_numpy(b)).mean(dim=1).numpy().astype(np.float64))
            sums += b.sum(axis=0, dtype=np.float64)
            sample.append(b[(-rows) % stride::stride])  # the history's whole span, not its first rows
            rows += len(b)
        val_errors = np.concatenate(parts)
        threshold = calibrate(val_errors, config.threshold_method, config.target_fpr, config.k_std, config.k_fence,
                              config.max_alert_rate)
        flags = sampled = 0
        count = math.ceil(data.n_train / data.stream.block_rows)
        spread = np.random.default_rng(config.seed).permutation(count).tolist()  # blocks from the whole span:
        for block in data.blocks(data.train, data.n_train, spread):  # the first rows (little history) are unlike
            flags += int((head(torch.from_numpy(block)).mean(dim=1).numpy() > threshold).sum())
            sampled += len(block)
            if sampled >= data.stream.flag_sample_rows:
                break
    flag_rate = float((val_errors > threshold).mean())
    train_flag_rate = flags / max(1, sampled)
    _refuse_unusable(threshold, flag_rate, train_flag_rate, config.max_self_flag_rate)
    calibration: dict[str, Any] = {
        "method": config.threshold_method, "target_fpr": config.target_fpr, "k_std": config.k_std,
        "k_fence": config.k_fence, "max_alert_rate": config.max_alert_rate, "threshold": threshold,
        **error_rule(config),
        "validation_rows": int(len(val_errors)),
        "validation_error_quantiles": {str(q): float(np.quantile(val_errors, q))
                                       for q in (0.5, 0.9, 0.95, 0.99, 0.999)},
        "validation_flag_rate": flag_rate, "train_flag_rate": train_flag_rate,
        "train_flag_rate_rows": sampled,
        # as train's: the validation rows' column means, and medians of a sample of them
        **typical_columns(np.concatenate(sample) if sample else np.zeros((0, data.width)), sums / max(rows, 1)),
    }
    for line in threshold_lines(val_errors, threshold, config):
        say(line)
    return TrainResult(None, head, None, threshold, calibration, {"rows_left_out": 0})  # type: ignore[arg-type]


def work_dir_for(out: Path, parent: Path | None = None) -> Path:
    """``.OUT.work-<pid>`` beside the bundle directory, or in ``parent`` (``--work-dir``): a new
    directory of this run's own, removed when training ends (never the directory the user named)."""
    return (parent if parent is not None else out.parent) / f".{out.name}.work-{os.getpid()}"
