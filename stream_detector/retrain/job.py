"""One training job: clean window events → train → calibrate → gate → a candidate bundle.

The newest ``SD_RETRAIN_HOLDOUT_FRACTION`` of the clean events (by record time) are held back:
never trained on, they are what the gate compares candidate and active model on, and what the
candidate's drift reference (score quantiles, stored in its ``calibration.json``) is taken from.
Training itself is ``model.train.train`` with the settings' epochs and target alert rate, and the
bundle is ``model.bundle.build_bundle`` — the same code as ``stream-detector train``.

The bundle metadata records what went in: counts per exclusion reason and the sha256 of the
sorted ids of the clean events and of the training events (so an audit can prove that no alerted
or fraud-labelled event was trained on without storing every id), plus the gate decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from ..model.bundle import Bundle, build_bundle
from ..model.reference import REFERENCE_KEY, reference_from_scores
from ..model.train import TrainConfig, train
from ..offline import score_events
from ..settings import Settings
from .gate import GateDecision, GatePolicy, decide, evaluate
from .window import FRAUD, Selection, WindowEntry

Progress = Callable[[str], None]


@dataclass
class Candidate:
    """A trained, gated bundle — or why there is none (``bundle is None``)."""

    bundle: Bundle | None
    decision: GateDecision | None
    counts: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the sorted ids, one per line: equal sets give equal digests."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode()).hexdigest()


def split_holdout(clean: list[WindowEntry], fraction: float) -> tuple[list[WindowEntry], list[WindowEntry]]:
    """(train, holdout): the newest ``fraction`` of the entries (by record time) are held back."""
    ordered = sorted(clean, key=lambda e: (e.timestamp_s, e.partition, e.offset))
    n_hold = max(1, int(len(ordered) * fraction))
    return ordered[:-n_hold], ordered[-n_hold:]


def build_candidate(selection: Selection, settings: Settings, active: Bundle | None, reason: str,
                    progress: Progress | None = None) -> Candidate:
    say = progress or (lambda _m: None)
    counts: dict[str, Any] = {"clean": len(selection.clean), "labelled": len(selection.labelled),
                              **{f"left_out_{k}": v for k, v in sorted(selection.left_out.items())}}
    if active is not None and active.entity is not None:
        # its features need per-entity history the window cannot rebuild point-in-time yet; a
        # candidate without them would silently lose the model's strongest signals
        return Candidate(None, None, counts, "the active model uses entity features, which the retrainer "
                                             "cannot rebuild yet: retrain it with `stream-detector train "
                                             "--entity-key` (docs/retraining.md)")
    if active is not None and active.supervised is not None:
        # an autoencoder-only candidate would drop the supervised head (and its threshold) unseen
        return Candidate(None, None, counts, "the active model has a supervised head, which the retrainer "
                                             "cannot retrain yet: retrain it with `stream-detector train "
                                             "--supervised` (docs/retraining.md)")
    if len(selection.clean) < settings.retrain_min_events:
        return Candidate(None, None, counts, f"only {len(selection.clean)} clean events in the window, "
                                             f"need {settings.retrain_min_events} (SD_RETRAIN_MIN_EVENTS)")
    train_entries, holdout_entries = split_holdout(selection.clean, settings.retrain_holdout_fraction)
    # the deployment's alert budget (the gate below enforces it), not the train command's fence
    config = TrainConfig(epochs=settings.retrain_epochs or None, threshold_method="quantile",
                         target_fpr=settings.retrain_target_fpr)
    say(f"training on {len(train_entries)} events ({reason}); {len(holdout_entries)} held back")
    # the active model's field schema: a type a user set (``train --field``) survives retraining
    result = train(_events(train_entries), config, progress=say,
                   schema=active.schema if active is not None else None)
    draft = build_bundle(result)
    holdout = _events(holdout_entries)
    labelled = [orjson.loads(e.raw) for e, _ in selection.labelled]
    is_fraud = np.array([label == FRAUD for _, label in selection.labelled], dtype=bool)
    policy = GatePolicy(settings.retrain_target_fpr, settings.gate_max_alert_rate_ratio,
                        settings.gate_recall_tolerance, settings.gate_min_labels)
    decision = decide(evaluate(draft, holdout, labelled, is_fraud),
                      evaluate(active, holdout, labelled, is_fraud) if active is not None else None, policy)
    if decision.active is not None and active is not None:
        decision.active["version"] = active.version
    scores = score_events(draft, holdout).scores
    reference = reference_from_scores(scores[~np.isnan(scores)])
    counts.update(train_events=len(train_entries), holdout_events=len(holdout_entries),
                  clean_ids_sha256=ids_digest(e.event_id for e in selection.clean),
                  train_ids_sha256=ids_digest(e.event_id for e in train_entries),
                  oldest_timestamp_s=train_entries[0].timestamp_s if train_entries else None,
                  newest_timestamp_s=holdout_entries[-1].timestamp_s)
    final = replace(result, calibration={**result.calibration, REFERENCE_KEY: reference})
    bundle = build_bundle(final, {"trained_by": "retrainer", "retrain_reason": reason, "training": counts,
                                  "gate": decision.to_dict()})
    return Candidate(bundle, decision, counts, "passed" if decision.passed else "; ".join(decision.reasons))


def _events(entries: list[WindowEntry]) -> list[dict[str, Any]]:
    return [orjson.loads(e.raw) for e in entries]
