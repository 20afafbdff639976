"""A challenger in shadow: what a worker does with the second model's scores of a batch.

The retrainer (or an operator: ``stream-detector model shadow VERSION``) names a **challenger**
beside the active model, the **champion** (``store/shadow.py``). Each worker loads it and scores
every batch with it too, on the same decoded events and the same entity and label features (a
challenger must have the champion's field schema and entity spec: the retrainer's candidates do).
Nobody is alerted from the challenger. Per batch the worker

* publishes a **shadow record** to ``SD_SHADOW_TOPIC`` for every event that either model would
  alert on, with both models' score, probability, thresholds and verdicts — in the same
  transaction / acknowledgement wait as the batch's alerts, so a shadow record is neither lost nor
  duplicated where the alerts are not;
* adds the batch's **counts** to the challenger's figures in Redis (``shadow_counts``): events,
  each model's would-be alerts, both, and each model's score distribution relative to its own
  threshold.

The gate (``retrain/gate.decide_shadow``) reads both to promote, refuse or keep the challenger in
shadow. Each model is judged at its own thresholds: the challenger at its bundle's calibrated ones
(it has no Redis threshold until it is promoted), the champion at the live Redis thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from ..transport.base import Batch, OutMessage
from .keys import fallback_key

# score / threshold distributions: bins of log10(score / threshold) from 1/100 to 100 times the
# threshold, a quarter decade wide; bin 0 is below, the last above (counts kept per bin in Redis)
BIN_EDGES = np.round(np.arange(-2.0, 2.0001, 0.25), 2)
N_BINS = len(BIN_EDGES) + 1


@dataclass(frozen=True)
class ModelVerdicts:
    """One model's view of a batch's scored events (n of them, batch order).

    ``scores``: reconstruction errors, float64 (n,), NaN where the model could not score the row;
    ``probability``: the supervised head's, float64 (n,) or None; ``threshold`` / ``head``: the
    thresholds it is judged at; ``flagged``: bool (n,), what it alerts (error above ``threshold`` or
    probability above ``head``; never on NaN)."""

    version: str
    scores: np.ndarray
    probability: np.ndarray | None
    threshold: float
    head: float | None
    flagged: np.ndarray

    @classmethod
    def of(cls, version: str, scores: np.ndarray, probability: np.ndarray | None, threshold: float,
           head: float | None) -> ModelVerdicts:
        with np.errstate(invalid="ignore"):
            flagged = scores > threshold
            if probability is not None and head is not None:
                flagged = flagged | (probability > head)
        return cls(version, scores, probability, threshold, head, np.asarray(flagged, dtype=bool))

    def row(self, i: int) -> dict[str, Any]:
        score = float(self.scores[i])
        return {"model_version": self.version, "score": score if np.isfinite(score) else None,
                "threshold": self.threshold,
                "probability": None if self.probability is None else float(self.probability[i]),
                "head_threshold": self.head, "alert": bool(self.flagged[i])}


def score_bins(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Counts (int64, ``N_BINS``) of ``scores`` (finite ones) per bin of log10(score / threshold)."""
    finite = scores[np.isfinite(scores)]
    if not finite.size or threshold <= 0:
        return np.zeros(N_BINS, dtype=np.int64)
    with np.errstate(divide="ignore"):
        ratio = np.log10(np.maximum(finite, 1e-300) / threshold)
    return np.bincount(np.searchsorted(BIN_EDGES, ratio, side="right"), minlength=N_BINS).astype(np.int64)


def shadow_counts(champion: ModelVerdicts, challenger: ModelVerdicts) -> dict[str, int]:
    """The batch's contribution to the challenger's figures (summed in Redis by ``HINCRBY``):
    ``events`` scored by the champion, ``challenger_scored`` (finite challenger scores),
    ``champion_alerts``, ``challenger_alerts``, ``both_alerts``, and ``champion_bin_i`` /
    ``challenger_bin_i`` score distributions (``score_bins``)."""
    out = {"events": int(champion.scores.size),
           "challenger_scored": int(np.isfinite(challenger.scores).sum()),
           "champion_alerts": int(champion.flagged.sum()), "challenger_alerts": int(challenger.flagged.sum()),
           "both_alerts": int((champion.flagged & challenger.flagged).sum())}
    for name, model in (("champion", champion), ("challenger", challenger)):
        for i, n in enumerate(score_bins(model.scores, model.threshold).tolist()):
            if n:
                out[f"{name}_bin_{i}"] = n
    return out


def build_shadow_records(batch: Batch, events: Sequence[dict[str, Any]], indices: Sequence[int],
                         champion: ModelVerdicts, challenger: ModelVerdicts, topic: str,
                         redact: frozenset[str] = frozenset()) -> list[OutMessage]:
    """One shadow record per event either model alerts (``events``/``indices``: the scored events,
    aligned with both verdicts), keyed like its alert; JSON with ``event_id``, the event's
    ``event_time_ms`` and ``topic``/``partition``/``offset``, and ``champion`` / ``challenger``
    (``ModelVerdicts.row``). ``redact`` (``SD_ALERT_REDACT_FIELDS``) hides what the alerts hide:
    ``event_id`` as ``"[redacted]"``, and an ``account_id`` fallback key."""
    rows = np.flatnonzero(champion.flagged | challenger.flagged)
    if not rows.size:
        return []
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out = []
    header = [("sd.challenger", challenger.version.encode())]
    for row in rows.tolist():
        event, i = events[row], indices[row]
        account = event.get("account_id")
        record = {"event_id": "[redacted]" if "event_id" in redact else event.get("event_id"),
                  "event_time_ms": batch.timestamps[i], "detected_at": now,
                  "topic": batch.topic, "partition": batch.partitions[i], "offset": batch.offsets[i],
                  "champion": champion.row(row), "challenger": challenger.row(row)}
        out.append(OutMessage(topic, batch.keys[i] or fallback_key(account, redact), orjson.dumps(record), header))
    return out
