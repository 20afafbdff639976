"""What each console view asks for, as plain dicts (the HTTP layer only routes and serializes).

Live numbers come from the workers' recent-scores stream (``pipeline/score_feed.py``). Where it
is empty (workers of an older release) the histogram falls back to the retrainer's binned score
summaries when those exist, and the alert list still comes from the alerts topic. Threshold and
rollback go through ``ControlPlane`` — the same calls as ``stream-detector threshold set`` and
``stream-detector model rollback`` — so the audit history and the workers' change notices are
the usual ones.

A model with a supervised head (``model/supervised.py``) is decided by two thresholds: the
autoencoder's and the head's probability threshold (``Threshold.head``). The overview and the
what-if say whether the active model has a head (``has_head``) and its head threshold in force;
the what-if and the threshold change take a head threshold too, and then follow the worker's
union rule (``whatif.py``).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError, NoActiveModel, StreamDetectorError
from ..feedback import Label, decode_label, prefer
from ..offline import score_events
from ..pipeline.publish import unit_fields
from ..pipeline.score import Scorer
from ..pipeline.shadow import BIN_EDGES
from ..settings import Settings
from ..store import ControlPlane, Threshold
from ..store.thresholds import KEEP
from . import whatif
from .sources import FeedEntry, TopicTail, read_feed, read_summaries, sample_of

RATE_WINDOW_S = 30.0
SERIES_BUCKET_S = 10.0
SERIES_BUCKETS = 60
FEED_CACHE_S = 1.0


class BadRequest(ConfigError):
    """A request the console cannot answer as asked (the HTTP layer's 400), e.g. a head threshold
    for a model without a supervised head."""


def check_head(head: float) -> float:
    """``head`` if it is a probability strictly between 0 and 1, else ``BadRequest``."""
    if not (math.isfinite(head) and 0.0 < head < 1.0):
        raise BadRequest(f"head threshold must be a probability in (0, 1), got {head!r}")
    return head


class ConsoleService:
    def __init__(self, settings: Settings, control: ControlPlane | None = None) -> None:
        self.settings = settings
        self.control = control or ControlPlane.from_settings(settings)
        self.feedback_topic = str(getattr(settings, "feedback_topic", "feedback"))
        self.alerts = TopicTail(settings, settings.alerts_topic, keep=500, start_back=200)
        self.feedback = TopicTail(settings, self.feedback_topic, keep=200_000, start_back=None,
                                  decode_record=decode_label)  # a Label, or why the record is not one
        self._feed: tuple[float, list[FeedEntry]] = (0.0, [])
        self._scorer: Scorer | None = None
        self._heads: dict[str, bool] = {}  # model version → has a supervised head (versions never change)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.alerts.close()
        self.feedback.close()

    # ---- live ----------------------------------------------------------------------------------
    def feed(self) -> list[FeedEntry]:
        with self._lock:
            at, entries = self._feed
            if time.monotonic() - at > FEED_CACHE_S:
                entries = read_feed(self.control, self.settings.score_feed_max)
                self._feed = (time.monotonic(), entries)
            return entries

    def overview(self) -> dict[str, Any]:
        snap = self.control.snapshot()
        threshold = snap.threshold
        entries = self.feed()
        now = time.time()
        sample = sample_of(entries, snap.active_model)
        out: dict[str, Any] = {
            "active_model": snap.active_model,
            "has_head": self._overview_has_head(snap.active_model, threshold),
            "threshold": None if threshold is None else {"value": threshold.value, "version": threshold.version,
                                                         "model_version": threshold.model_version,
                                                         "head": threshold.head},
            "rates": _rates(entries, now), "series": _series(entries, now),
            "workers": _workers(entries, now, self._summary_workers()),
            "histogram": whatif.histogram(sample.scores, sample.weights, threshold.value if threshold else None),
            "source": "recent-scores" if sample.scores.size else "none",
            "sampled": int(sample.scores.size), "span_s": sample.span_s,
        }
        if not sample.scores.size and threshold is not None:
            fallback = self._summary_histogram(snap.active_model, threshold.value)
            if fallback is not None:
                out["histogram"], out["source"] = fallback, "score-summaries"
        return out

    def has_head(self, version: str | None) -> bool:
        """Whether model ``version`` has a supervised head (False for None). Raises ``ModelError``
        (``NoActiveModel``) when the version is not in the registry or its bundle is unusable."""
        if version is None:
            return False
        with self._lock:
            known = self._heads.get(version)
        if known is None:
            known = self.control.fetch_bundle(version).supervised is not None
            with self._lock:
                self._heads[version] = known
        return known

    def _overview_has_head(self, version: str | None, threshold: Threshold | None) -> bool:
        """``has_head``, or, where the bundle cannot be read, whether a head threshold is in force
        (the live view does not fail on a bundle; the what-if and explain say what is wrong)."""
        try:
            return self.has_head(version)
        except StreamDetectorError:
            return threshold is not None and threshold.head is not None

    def _summary_workers(self) -> list[dict[str, str]]:
        try:
            return read_summaries(self.control, limit=500)
        except StreamDetectorError:
            return []

    def _summary_histogram(self, model: str | None, threshold: float) -> dict[str, Any] | None:
        """Binned counts of the retrainer's score summaries (inner bins only; open ends dropped)."""
        import orjson

        rows = [s for s in self._summary_workers() if s.get("model_version") == model]
        if not rows:
            return None
        edges = np.asarray(orjson.loads(rows[-1]["edges"]), dtype=np.float64)
        counts = np.sum([orjson.loads(r["counts"]) for r in rows if len(orjson.loads(r["edges"])) == edges.size],
                        axis=0)
        if edges.size < 2:
            return None
        return {"edges": np.log10(np.maximum(edges, whatif.LOG_FLOOR)).tolist(),
                "counts": [float(c) for c in counts[1:-1]], "threshold": threshold,
                "log_threshold": math.log10(max(threshold, whatif.LOG_FLOOR)), "binned": True}

    # ---- what-if -------------------------------------------------------------------------------
    def what_if(self, value: float, head: float | None = None) -> dict[str, Any]:
        """The what-if at threshold ``value`` (and head threshold ``head``) on the active model's
        recent traffic (``whatif.what_if``), plus ``has_head``, ``current_confusion`` and
        ``feedback_topic``. For a model with a head, ``head`` None means the head threshold in
        force. Raises ``BadRequest`` for a ``head`` outside (0, 1) or on a model without a head."""
        snap = self.control.snapshot()
        model = snap.active_model
        has_head = self.has_head(model)
        if head is not None:
            check_head(head)
            if not has_head:
                raise _no_head(model)
        sample = sample_of(self.feed(), model)
        scores, probs, fraud = self._labelled(sample, model)
        current = snap.threshold.value if snap.threshold else None
        current_head = snap.threshold.head if snap.threshold and has_head else None
        if has_head and head is None:
            head = current_head  # None too when no head threshold is set: the autoencoder alone
        out = whatif.what_if(sample, value, scores, fraud, current, head=head, current_head=current_head,
                             labelled_probs=probs)  # head None: the autoencoder's alone, as before heads
        if current is not None and scores.size:
            out["current_confusion"] = whatif.confusion(scores, fraud, current, probs, current_head).to_dict()
        out["has_head"] = has_head
        out["feedback_topic"] = self.feedback_topic
        return out

    def _labelled(self, sample: whatif.Sample, model: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labelled events known to the console: (scores float64 (m,), head probabilities float64
        (m,), NaN where unknown or without a head, fraud bool (m,)). Score and probability come from
        the sample, else from an alert of the same model."""
        winners: dict[str, Label] = {}
        for record in self.feedback.read():
            if isinstance(record, Label):  # the contract's rule when an event has several labels
                winners[record.event_id] = prefer(winners.get(record.event_id), record)
        labels = {event_id: label.fraud for event_id, label in winners.items()}
        if not labels:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool)
        known: dict[str, tuple[float, float]] = {}
        for alert in self.recent_alerts(limit=500):
            if alert.get("model_version") == model:
                probability = alert.get("probability")
                known[str(alert["event_id"])] = (float(alert["score"]),
                                                 math.nan if probability is None else float(probability))
        probs = sample.probs if sample.probs is not None else np.full(sample.scores.size, math.nan)
        known.update(zip(sample.ids, zip(sample.scores.tolist(), probs.tolist(), strict=True), strict=True))
        ids = [i for i in labels if i in known]
        return (np.asarray([known[i][0] for i in ids], dtype=np.float64),
                np.asarray([known[i][1] for i in ids], dtype=np.float64),
                np.asarray([labels[i] for i in ids], dtype=bool))

    # ---- alerts and explain --------------------------------------------------------------------
    def recent_alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        alerts = [a for a in self.alerts.read() if isinstance(a, dict) and "event_id" in a and "score" in a]
        return alerts[::-1][:limit]

    def explain(self, event: Any) -> dict[str, Any]:
        """Score one event exactly as ``score_events`` does, plus its per-field errors and, as an
        alert has them, the fields whose typical values would bring its score under the threshold
        (``why``: ``Scorer.why``; null without a threshold or for a model without typical values)."""
        if not isinstance(event, dict):
            raise ConfigError("the event must be one JSON object")
        snap = self.control.snapshot()
        scorer = self._scorer_for(snap.active_model)
        scored = score_events(scorer.bundle, [event], scorer=scorer, keep_errors=True)  # the offline core
        out: dict[str, Any] = {"event_id": event.get("event_id"), "model_version": scorer.version,
                               "threshold": snap.threshold.value if snap.threshold else None,
                               "threshold_version": snap.threshold.version if snap.threshold else None,
                               "rejected": scored.rejected[0]}
        if scored.rejected[0] is not None:
            return out
        score = float(scored.scores[0])
        # a bundle with entity features enriches from this event alone (no live state), as offline
        out["entity_features"] = scorer.bundle.entity is not None
        assert scored.per_feature is not None
        per_field = scorer.field_errors(scored.per_feature[:1])[0]
        total = float(per_field.sum()) or 1.0
        order = np.argsort(-per_field, kind="stable").tolist()
        out.update(score=score, alert=out["threshold"] is not None and score > out["threshold"],
                   fields=[{"feature": scorer.fields[j], "error": float(per_field[j]),
                            "share": float(per_field[j]) / total} for j in order])
        why = None
        # why the autoencoder would alert: nothing to say of a score under the threshold (trial N: one field
        # "cleared" a score of 0.28 against 72.7, as alerts did before they listed none then)
        if out["alert"] and scored.features is not None and self.settings.why_candidates:
            found = scorer.why(scored.features[:1], scored.scores[:1], float(out["threshold"]),
                               self.settings.top_features, scored.per_feature[:1], self.settings.why_candidates)
            if found is not None:
                named = [j for j in found.named[0].tolist() if j >= 0]
                inside = unit_fields(found, [named], per_field[None, :], scorer.fields, self.settings.top_features)[0]
                why = [{"feature": found.units[j], "contribution": float(found.parts[0, t]),
                        "score_after": float(found.after[0, t]), "fields": f}  # as an alert's top_features
                       for t, (j, f) in enumerate(zip(named, inside, strict=True))]
        out["why"] = why
        return out

    def _scorer_for(self, version: str | None) -> Scorer:
        if version is None:
            raise NoActiveModel("no active model: publish one first")
        with self._lock:
            if self._scorer is None or self._scorer.version != version:
                self._scorer = Scorer(self.control.fetch_bundle(version), "cpu")
            return self._scorer

    # ---- models and writes ---------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        active = self.control.active_model()
        previous = self.control.previous_model() if hasattr(self.control, "previous_model") else None
        versions = []
        for version in reversed(self.control.model_versions()):
            try:
                info = self.control.model_info(version) if hasattr(self.control, "model_info") else {}
            except ModelError:
                info = {}
            metadata = info.get("metadata") or {}
            versions.append({"version": version, "active": version == active, "previous": version == previous,
                             "threshold": info.get("threshold"),  # None until the version has been active
                             "calibrated_threshold": info.get("calibrated_threshold"),  # its bundle's own
                             "head_threshold": info.get("head_threshold"),  # the supervised head's, as threshold
                             "calibrated_head_threshold": info.get("calibrated_head_threshold"),
                             "stored_at": info.get("stored_at"),
                             "metrics": metadata.get("metrics"), "gate": info.get("gate"),
                             "created_at": metadata.get("created_at")})
        return {"active": active, "previous": previous, "versions": versions, "refused": self._refused(),
                "can_roll_back": previous is not None and hasattr(self.control, "rollback"),
                "shadow": self._shadow()}

    def _shadow(self) -> dict[str, Any]:
        """The challenger in shadow beside the champion (``store/shadow.py``): its live figures
        (alert rates, agreement, score distributions relative to each model's threshold, and the
        retrainer's last judgement with precision on the labels arrived) and the last decisions."""
        if not hasattr(self.control, "challenger"):
            return {"challenger": None, "figures": None, "decisions": []}
        return {"challenger": self.control.challenger(), "figures": self.control.shadow_figures(),
                "decisions": self.control.shadow_decisions(10), "bin_edges": BIN_EDGES.tolist()}

    def _refused(self, limit: int = 20) -> list[dict[str, Any]]:
        """Gate decisions of candidates the retrainer did not promote (newest first), where recorded."""
        return self.control.telemetry.rejections(limit)

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.control.threshold_history(limit)

    def set_threshold(self, value: float, set_by: str, note: str, head: float | None = None) -> dict[str, Any]:
        """A new threshold version for the active model, through ``ControlPlane.set_threshold`` (as
        ``stream-detector threshold set [--head P]``): ``value`` (finite, >= 0), and the head
        threshold ``head`` (a probability in (0, 1); None: the one in force is kept). Returns the
        version, old and new values (``old_head``/``head`` too) and the audit line. Raises
        ``ConfigError`` for a bad value or no active model, ``BadRequest`` for a bad ``head`` or a
        ``head`` on a model without a supervised head."""
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"threshold must be a finite number >= 0, got {value!r}")
        if head is not None:
            check_head(head)
        model = self.control.active_model()
        if model is None:
            raise ConfigError("no active model: publish one before setting its threshold")
        if head is not None and not self.has_head(model):
            raise _no_head(model)
        old = self.control.threshold()
        version = self.control.set_threshold(value, model, set_by, note, head=KEEP if head is None else head)
        audit = self.control.threshold_history(1)[0]
        return {"version": version, "model_version": model, "old": old.value if old else None, "new": value,
                "old_head": old.head if old else None, "head": audit.get("head"), "audit": audit}

    def rollback(self, set_by: str) -> dict[str, Any]:
        if not hasattr(self.control, "rollback"):
            raise ConfigError("this release has no model registry to roll back with")
        before = self.control.active_model()
        target = self.control.rollback(set_by)
        return {"from": before, "to": target, "audit": self.control.threshold_history(1)[0]}


def _no_head(model: str | None) -> BadRequest:
    if model is None:
        return BadRequest("no active model: a head threshold does not apply")
    return BadRequest(f"model {model} has no supervised head: a head threshold does not apply")


def _rates(entries: list[FeedEntry], now: float) -> dict[str, float]:
    recent = [e for e in entries if e.at >= now - RATE_WINDOW_S]
    if not recent:
        return {"events_per_s": 0.0, "alerts_per_s": 0.0, "window_s": RATE_WINDOW_S}
    span = max(now - min(e.since for e in recent), 1.0)
    return {"events_per_s": sum(e.n for e in recent) / span, "alerts_per_s": sum(e.alerts for e in recent) / span,
            "window_s": span}


def _series(entries: list[FeedEntry], now: float) -> list[dict[str, float]]:
    """Events and alerts per second in 10 s buckets over the last 10 minutes (oldest first)."""
    start = now - SERIES_BUCKET_S * SERIES_BUCKETS
    events = np.zeros(SERIES_BUCKETS)
    alerts = np.zeros(SERIES_BUCKETS)
    for e in entries:
        if e.at >= start:
            k = min(int((e.at - start) // SERIES_BUCKET_S), SERIES_BUCKETS - 1)
            events[k] += e.n
            alerts[k] += e.alerts
    return [{"t": start + (k + 1) * SERIES_BUCKET_S, "events_per_s": events[k] / SERIES_BUCKET_S,
             "alerts_per_s": alerts[k] / SERIES_BUCKET_S} for k in range(SERIES_BUCKETS)]


def _workers(entries: list[FeedEntry], now: float, summaries: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Latest word from each worker: its feed entries, else its drift summaries."""
    out: dict[str, dict[str, Any]] = {}
    for s in summaries:
        try:
            out[s["worker_id"]] = {"worker": s["worker_id"], "model_version": s.get("model_version"),
                                   "threshold_version": None, "last_seen_s": now - float(s["at"]),
                                   "events_per_s": None, "source": "score-summaries"}
        except (KeyError, ValueError):
            continue
    latest: dict[str, FeedEntry] = {}
    for e in entries:
        latest[e.worker] = e
    for worker, e in latest.items():
        rate = _rates([x for x in entries if x.worker == worker], now)["events_per_s"]
        out[worker] = {"worker": worker, "model_version": e.model_version,
                       "threshold_version": e.threshold_version, "last_seen_s": now - e.at,
                       "events_per_s": rate, "source": "recent-scores"}
    return sorted(out.values(), key=lambda w: str(w["worker"]))
